"""`bld train`'s choice of the autoencoder's capacity: its latent grid and bits per
position, for the training size, and a short probe of two or three of them on the user's
own images.

Each setting trains for the same seconds (``run.max_seconds``, bld.training.timebox: its
step count follows the rate measured as it runs, so a slower setting trains fewer steps),
then reconstructs held-out test images; the table records PSNR, the colour error (CIE76
delta E, per pixel and of each image's mean colour) and, where the folder's FD classifier
is trained, how often it names the class of a reconstruction. `pick` applies one stated
rule. A short probe ranks how fast each setting learns in its first seconds, which need
not be how it ranks at the end of a long run.

Imports the demo's stage configs, the training loop and the measures.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("bld")

# The probe's share of --minutes, split evenly between the settings, and the fewest seconds
# each gets: chosen without a measurement of how the ranking settles with more seconds.
PROBE_SHARE = 0.08
PROBE_MIN_SECONDS = 20.0
# Test images each setting reconstructs (all where fewer); chosen without a measurement.
PROBE_TEST_IMAGES = 500
# The rule's tolerances: a setting within these of the best counts as good as the best
# (about one test image in 50, and half a dB; chosen without a measurement of the probe's
# noise), and of those the fewest bits per image wins: the prior has fewer bits to learn
# (on the faces, 32 bits per position sampled better than 64 in the same prior seconds
# although 64 reconstructed better: configs/autoencoder/faces64.yaml).
ACCURACY_TOLERANCE = 0.02
PSNR_TOLERANCE_DB = 0.5
RULE = (f"the reconstructions' class accuracy within {ACCURACY_TOLERANCE} of the best (where "
        f"the FD classifier is trained), then PSNR within {PSNR_TOLERANCE_DB} dB of the best "
        "of those, then the fewest bits per image (the prior has fewer to learn)")


@dataclass(frozen=True)
class Capacity:
    """An autoencoder's latent: a ``grid`` x ``grid`` grid of ``bits`` bits."""
    grid: int
    bits: int

    @property
    def name(self) -> str:
        return f"{self.grid}x{self.grid}x{self.bits}"

    @property
    def bits_per_image(self) -> int:
        return self.grid * self.grid * self.bits


def preset_for(size: int) -> str:
    """The presets both models start from at training size ``size``: fashion-mnist's at
    28 px, else faces64's (scaled to the size by `capacity_overrides`; measured at 64 px
    only)."""
    return "fashion-mnist" if size == 28 else "faces64"


def capacities(size: int) -> list[Capacity]:
    """The settings the probe compares at ``size``, the presets' own first: at 64 px the
    faces64 grid of 32 bits, the same grid with 64 bits, and faces64-grid8's 8x8 of 64."""
    if size == 28:
        return [Capacity(7, 32), Capacity(7, 64), Capacity(14, 16)]
    if size == 32:
        return [Capacity(8, 32), Capacity(8, 64), Capacity(16, 16)]
    return [Capacity(16, 32), Capacity(16, 64), Capacity(8, 64)]


def capacity_overrides(size: int, channels: int, cap: Capacity) -> dict[str, list[str]]:
    """Both models' config overrides (on `preset_for`'s presets) that train at ``size`` px in
    ``channels`` colours with latent ``cap``: the autoencoder's pixel-unshuffle patch and
    levels give the grid; the prior takes 2x2 grid positions per token on a grid of 14 or
    more (as the faces64 prior on its 16x16 grid), one on smaller grids."""
    data = [f"data.image_size={size}", f"data.channels={channels}"]
    ae = data + [f"model.image_size={size}", f"model.in_channels={channels}",
                 f"model.bits={cap.bits}"]
    if size == 28:  # the fashion-mnist autoencoder: factor 4 (7x7) from three levels
        if cap.grid == 14:
            ae.append("model.channel_mult=[1,2]")
    else:
        patch = min(4, size // cap.grid)
        levels = (size // (patch * cap.grid)).bit_length()
        ae += [f"model.patch={patch}",
               f"model.channel_mult=[{','.join(['1'] + ['2'] * (levels - 1))}]"]
    return {"autoencoder": ae, "prior": data + [f"model.patch={2 if cap.grid >= 14 else 1}"]}


def probe_seconds(minutes: float, n: int) -> float:
    """Seconds each of ``n`` settings trains: ``PROBE_SHARE`` of the budget split evenly,
    at least ``PROBE_MIN_SECONDS`` (and that where there is no budget)."""
    return max(PROBE_MIN_SECONDS, PROBE_SHARE * minutes * 60 / n)


def pick(rows: list[dict[str, Any]]) -> int:
    """The index of the row `RULE` picks."""
    pool = list(range(len(rows)))
    if all(r.get("class_accuracy") is not None for r in rows):
        best = max(r["class_accuracy"] for r in rows)
        pool = [i for i in pool if rows[i]["class_accuracy"] >= best - ACCURACY_TOLERANCE]
    best = max(rows[i]["psnr_db"] for i in pool)
    pool = [i for i in pool if rows[i]["psnr_db"] >= best - PSNR_TOLERANCE_DB]
    return min(pool, key=lambda i: (rows[i]["bits_per_image"], -rows[i]["psnr_db"]))


def _measure(run_dir: Path, cap: Capacity, xt, yt, clf, device, seconds: float
             ) -> dict[str, Any]:
    """One probed setting's row: its reconstructions of the test images, measured
    (``seconds``: the wall seconds of its run; ``trained_s``: of its training steps)."""
    from ..core.checkpoint import load_checkpoint
    from ..core.loading import load_autoencoder
    from ..core.metrics import colour_error
    from ..inference.generate import reconstruct
    ae = load_autoencoder(run_dir, device)
    rec = reconstruct(ae, xt)
    colour = colour_error(rec.recon, xt)
    ck = load_checkpoint(run_dir)
    accuracy = None
    if clf is not None:
        from ..evaluation.classifier import predict, prediction_accuracy
        accuracy = prediction_accuracy(predict(clf[0], rec.recon), yt)
    return {"setting": cap.name, "grid": cap.grid, "bits": cap.bits,
            "bits_per_image": cap.bits_per_image, "seconds": seconds,
            "trained_s": ck.metadata.get("timebox", {}).get("trained_seconds"),
            "steps": ck.step, "psnr_db": rec.psnr,
            "delta_e": colour.delta_e, "mean_colour_delta_e": colour.mean_colour_delta_e,
            "class_accuracy": accuracy}


def run_probe(s, out: Path, caps: list[Capacity], overrides_for, seconds: float, train_set,
              test_set, clf, device, precision) -> dict[str, Any]:
    """Train and measure each of ``caps`` for ``seconds`` under the demo settings ``s`` (the
    stage configs of bld.app.demo) with ``overrides_for(cap)`` as ``s.overrides``; reuse a
    finished probe (``out``/probe.json) or setting (its row.json) under --resume. -> the
    probe's record: its rows, the one picked and the rule."""
    from ..data import dataset_tensors
    from ..training.loop import train_autoencoder
    from .budget import Rates, calibrate_autoencoder
    from .demo import stage_config
    record = out / "probe.json"
    if s.resume and record.exists():
        done = json.loads(record.read_text())
        s.reused_s += done["total_s"]
        log.info("reusing the probe of %s: %s", out, done["picked"])
        return done
    t0 = time.perf_counter()
    xt, yt = dataset_tensors(test_set, PROBE_TEST_IMAGES)
    log.info("probing %d autoencoder settings (%s) for %.0f s each on %d training images, "
             "measured on %d test images", len(caps), ", ".join(c.name for c in caps),
             seconds, len(train_set), len(xt))
    rows, base = [], s.overrides
    for cap in caps:
        run_dir = out / "probe" / cap.name
        row_file = run_dir / "row.json"
        if s.resume and row_file.exists():
            rows.append(json.loads(row_file.read_text()))
            continue
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished one starts again
        s.overrides = overrides_for(cap)
        extra = [f"run.max_seconds={seconds:.1f}", "run.sample_every=0", "run.ckpt_every=0"]
        cfg = stage_config(s, "autoencoder", extra)
        if s.ae_steps is None:
            # steps for about 1.25x the seconds at a quick timing: the time box re-estimates
            # its count every 4% of the steps, so a tight count makes the seconds even
            rate = calibrate_autoencoder(Rates(*[0.0] * 6), cfg, train_set, device, precision)
            steps = min(cfg.optim.steps, max(20, math.ceil(1.25 * seconds / rate.ae_step_s)))
            cfg = stage_config(s, "autoencoder", extra + [f"optim.steps={steps}"])
        log.info("probe %s: up to %d steps in %.0f s", cap.name, cfg.optim.steps, seconds)
        t = time.perf_counter()
        train_autoencoder(cfg, run_dir)
        row = _measure(run_dir, cap, xt, yt, clf, device, time.perf_counter() - t)
        row_file.write_text(json.dumps(row, indent=2))
        rows.append(row)
    s.overrides = base
    best = pick(rows)
    for r in rows:
        acc = r["class_accuracy"]
        log.info("probe %s: %d steps in %.0f s, PSNR %.2f dB, delta E %.2f (mean colour "
                 "%.2f)%s", r["setting"], r["steps"], r["seconds"], r["psnr_db"], r["delta_e"],
                 r["mean_colour_delta_e"], "" if acc is None else f", class accuracy {acc:.3f}")
    done = {"seconds_each": seconds, "rows": rows, "picked": rows[best]["setting"],
            "grid": rows[best]["grid"], "bits": rows[best]["bits"], "rule": RULE,
            "with_classifier": clf is not None, "total_s": time.perf_counter() - t0}
    log.info("the probe picks %s (%s)", done["picked"], RULE)
    record.write_text(json.dumps(done, indent=2))
    return done


def probe_markdown(p: dict[str, Any]) -> list[str]:
    """The probe's table, as Markdown lines."""
    lines = ["## Autoencoder probe", "",
             f"Each setting trained for {p['seconds_each']:.0f} s on this machine, then "
             "reconstructed the test images. Picked: "
             f"**{p['picked']}** (grid x grid x bits), by the rule: {p['rule']}.", "",
             "| setting | bits / image | steps | training s | PSNR (dB) | delta E | mean colour "
             "delta E | class accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        acc = "-" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        mark = " (picked)" if r["setting"] == p["picked"] else ""
        seconds = r.get("trained_s") or r["seconds"]
        lines.append(f"| {r['setting']}{mark} | {r['bits_per_image']} | {r['steps']} | "
                     f"{seconds:.0f} | {r['psnr_db']:.2f} | {r['delta_e']:.2f} | "
                     f"{r['mean_colour_delta_e']:.2f} | {acc} |")
    return lines + [""]
