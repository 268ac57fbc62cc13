"""Ablations: which levers make the demo's models learn more per CPU-second.

Every arm is a set of config overrides on a fixed starting point (the demo's settings before
this study: ``BASE_PRIOR`` / ``BASE_AUTOENCODER``), trained through the library's own
``train_prior`` / ``train_autoencoder`` (so what is measured is what ``bld demo`` runs) and
evaluated on the project's Fashion-MNIST classifier at N samples (default 1000), S = 16:

* prior arms: FD (with the real-vs-real floor and the autoencoder's reconstruction FD at the
  same N), class accuracy, precision / recall, for each sampler setting of the arm
  (evidence weight lambda, guidance), plus training seconds and latents/s;
* autoencoder arms: PSNR (one definition everywhere: 10 log10(4 / MSE) with the MSE over the
  whole 10k test set, images in [-1, 1]), SSIM, the classifier's accuracy on reconstructions,
  reconstruction FD / recall at N, bit usage, training seconds.

Prior arms train on the latent cache of ``RUN_DIR`` (a `bld demo` folder: its autoencoder,
``latents_train.safetensors`` and FD classifier), unless the arm names an autoencoder arm,
whose latents are then encoded once. Results go to ``<out>/ablations.json`` keyed by arm and
seed; finished arms are skipped on the next call, so the study can be run an arm at a time.

    python benchmarks/ablations.py --run runs/demo --arms prior/base prior/adaln --threads 1
    python benchmarks/ablations.py --list
    python benchmarks/ablations.py --report-only          # rewrite the table from the JSON
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common  # noqa: I001  (benchmarks/common.py; first, so the path fix applies)
import torch

log = logging.getLogger("bench")

# The demo's settings before this study (issue 10's "before" column), spelled out so that
# the arms keep their meaning when the shipped presets change.
BASE_PRIOR = ["model.width=256", "model.depth=6", "model.heads=4", "model.conditioning=tokens",
              "model.mlp_ratio=4.0", "diffusion.timesteps=64", "diffusion.schedule=cosine",
              "diffusion.loss_type=mean", "cond_drop=0.1", "optim.steps=1000",
              "optim.batch_size=128", "optim.lr=0.0015", "optim.warmup=100",
              "optim.weight_decay=0.0", "optim.ema_decay=0.995", "run.precision=auto"]
BASE_AUTOENCODER = ["model.channels=32", "model.channel_mult=[1,2,2]", "model.num_res_blocks=1",
                    "model.attention=true", "model.hidden=64", "model.bits=16",
                    "loss.l1_weight=1.0", "loss.mse_weight=1.0", "loss.disc_weight=0.0",
                    "optim.steps=1500", "optim.batch_size=64", "optim.lr=0.002",
                    "optim.warmup=50", "optim.ema_decay=0.995", "run.precision=auto"]

# sampler settings measured for every prior arm: (evidence weight lambda, guidance w)
DEFAULT_SAMPLERS = [(0.0, 1.0), (1.0, 1.0)]


@dataclass
class Arm:
    kind: str  # "prior" | "autoencoder" | "preset" (the shipped demo presets, both stages)
    overrides: list[str] = field(default_factory=list)
    note: str = ""
    samplers: list[tuple[float, float]] = field(default_factory=lambda: list(DEFAULT_SAMPLERS))
    autoencoder: str = ""  # prior arms: an autoencoder arm whose latents to train on
    adopt: str = ""  # seed 0: reuse this sub-folder of RUN_DIR (trained with these settings)


ADALN = ["model.conditioning=adaln"]
# the shipped autoencoder preset's choices that differ from BASE_AUTOENCODER (but its size)
AE_NOW = ["model.bits=32", "model.train_bits=threshold", "loss.l1_weight=0.0", "optim.lr=0.003"]
# the shipped fashion-mnist autoencoder preset, as overrides of BASE_AUTOENCODER
AE_PRESET = AE_NOW + ["model.channels=16", "model.channel_mult=[1,2,4]", "optim.steps=2500"]
B64 = ADALN + ["optim.batch_size=64", "optim.steps=2000"]
B32 = ADALN + ["optim.batch_size=32", "optim.steps=4000"]
ARMS: dict[str, Arm] = {
    # ---- prior: conditioning, optimisation, shape, process, loss (on the RUN_DIR latents)
    "prior/base": Arm("prior", [], "the demo prior before this study (seed 0: trained by "
                      "bld demo with 2 threads)", samplers=[
        (1.0, 1.0), (0.5, 1.0), (0.0, 1.0), (-0.5, 1.0), (0.0, 0.0), (1.0, 0.0)],
        adopt="prior"),
    "prior/adaln": Arm("prior", ADALN, "adaLN-Zero conditioning (DiT) instead of tokens"),
    "prior/bs64x2000": Arm("prior", ["optim.batch_size=64", "optim.steps=2000"],
                           "same latents seen, twice the optimiser steps"),
    "prior/adaln-bs64x2000": Arm("prior", ADALN + ["optim.batch_size=64", "optim.steps=2000"],
                                 "adaLN-Zero, batch 64 x 2000"),
    "prior/adaln-bs32x4000": Arm("prior", ADALN + ["optim.batch_size=32", "optim.steps=4000"],
                                 "adaLN-Zero, batch 32 x 4000"),
    "prior/adaln-lr3e-3": Arm("prior", ADALN + ["optim.lr=0.003"], "adaLN-Zero, lr 3e-3"),
    "prior/adaln-linear": Arm("prior", ADALN + ["diffusion.schedule=linear"],
                              "adaLN-Zero, linear schedule"),
    "prior/adaln-balanced": Arm("prior", ADALN + ["diffusion.loss_type=balanced"],
                                "adaLN-Zero, class-balanced loss (network outputs l')"),
    "prior/adaln-192x6": Arm("prior", ADALN + ["model.width=192", "model.heads=3"],
                             "adaLN-Zero, width 192"),
    "prior/adaln-256x4": Arm("prior", ADALN + ["model.depth=4"], "adaLN-Zero, depth 4"),
    "prior/adaln-cls1": Arm("prior", ADALN + ["model.class_embed_std=1.0"],
                            "adaLN-Zero, class embeddings initialised with std 1 (not 0.02)"),
    "prior/adaln-drop0.2": Arm("prior", ADALN + ["cond_drop=0.2"], "adaLN-Zero, label drop 0.2"),
    "prior/adaln-on-ae-threshold": Arm("prior", ADALN, "adaLN-Zero prior on the latents of "
                                       "ae/threshold", autoencoder="ae/threshold"),
    "prior/b64-lr3e-3": Arm("prior", B64 + ["optim.lr=0.003"],
                            "adaLN-Zero, batch 64 x 2000, lr 3e-3"),
    "prior/b64-on-ae-bits32-threshold": Arm(
        "prior", B64, "adaLN-Zero, batch 64 x 2000, on the latents of ae/bits32-threshold",
        autoencoder="ae/bits32-threshold"),
    "prior/b32-cls1": Arm("prior", B32 + ["model.class_embed_std=1.0"],
                          "adaLN-Zero, batch 32 x 4000, class embeddings initialised with std 1"),
    "prior/b32-linear": Arm("prior", B32 + ["diffusion.schedule=linear"],
                            "adaLN-Zero, batch 32 x 4000, linear schedule"),
    "prior/b32-balanced": Arm("prior", B32 + ["diffusion.loss_type=balanced"],
                              "adaLN-Zero, batch 32 x 4000, class-balanced loss"),
    "prior/b32-drop0.05": Arm("prior", B32 + ["cond_drop=0.05"],
                              "adaLN-Zero, batch 32 x 4000, label drop 0.05"),
    "prior/b32-256x4": Arm("prior", B32 + ["model.depth=4"],
                           "adaLN-Zero, batch 32 x 4000, depth 4 (2/3 of the compute)"),
    "prior/b32-192x6": Arm("prior", B32 + ["model.width=192", "model.heads=3"],
                           "adaLN-Zero, batch 32 x 4000, width 192 (0.6 of the compute)"),
    "prior/b32-cls1-on-ae-c16-b32-mse": Arm(
        "prior", B32 + ["model.class_embed_std=1.0"], "adaLN-Zero, batch 32 x 4000, class std "
        "1, on the latents of ae/c16-b32-thr-2500-mse", autoencoder="ae/c16-b32-thr-2500-mse",
        samplers=[(1.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (-1.0, 0.5), (0.0, 0.5)]),
    "prior/b32-cls1-lr2.5e-3": Arm("prior", B32 + ["model.class_embed_std=1.0", "optim.lr=0.0025"],
                                   "adaLN-Zero, batch 32 x 4000, class std 1, lr 2.5e-3"),
    "prior/b32-cls1-drop0.05": Arm("prior", B32 + ["model.class_embed_std=1.0", "cond_drop=0.05"],
                                   "adaLN-Zero, batch 32 x 4000, class std 1, label drop 0.05"),
    "prior/b32-cls1-balanced-on-ae-c16-b32-mse": Arm(
        "prior", B32 + ["model.class_embed_std=1.0", "diffusion.loss_type=balanced"],
        "adaLN-Zero, batch 32 x 4000, class std 1, class-balanced loss, on the latents of "
        "ae/c16-b32-thr-2500-mse", autoencoder="ae/c16-b32-thr-2500-mse",
        samplers=[(1.0, 1.0), (0.0, 1.0), (0.5, 1.0), (1.0, 0.5)]),
    "prior/b32-cls1-balanced": Arm(
        "prior", B32 + ["model.class_embed_std=1.0", "diffusion.loss_type=balanced"],
        "adaLN-Zero, batch 32 x 4000, class std 1, class-balanced loss"),
    "prior/3x-steps": Arm("prior", ["optim.steps=3000"], "the base prior trained 3x longer",
                          samplers=[(1.0, 1.0), (0.0, 1.0)]),
    # ---- autoencoder
    "ae/base": Arm("autoencoder", [], "the demo autoencoder before this study"),
    "ae/bits32": Arm("autoencoder", ["model.bits=32"], "32 bits per position"),
    "ae/bits24": Arm("autoencoder", ["model.bits=24"], "24 bits per position"),
    "ae/lr4e-3": Arm("autoencoder", ["optim.lr=0.004"], "lr 4e-3"),
    "ae/threshold": Arm("autoencoder", ["model.train_bits=threshold"],
                        "bits [p > 0.5] in training too (no Bernoulli draws)"),
    "ae/saturation": Arm("autoencoder", ["loss.saturation_weight=0.1"],
                         "p(1 - p) term, weight 0.1"),
    "ae/bits32-threshold": Arm("autoencoder", ["model.bits=32", "model.train_bits=threshold"],
                               "32 bits, [p > 0.5] in training"),
    "ae/bits32-1000": Arm("autoencoder", ["model.bits=32", "optim.steps=1000", "optim.lr=0.003"],
                          "32 bits, 1000 steps at lr 3e-3"),
    "ae/bs32x3000": Arm("autoencoder", ["optim.batch_size=32", "optim.steps=3000"],
                        "batch 32 x 3000 steps (same images seen)"),
    "ae/ch16x124": Arm("autoencoder", ["model.channels=16", "model.channel_mult=[1,2,4]"],
                       "widths 16/32/64 instead of 32/64/64 (1.7x cheaper steps)"),
    "ae/ch16x124-threshold-2500": Arm(
        "autoencoder", ["model.channels=16", "model.channel_mult=[1,2,4]",
                        "model.train_bits=threshold", "optim.steps=2500"],
        "widths 16/32/64, [p > 0.5] in training, 2500 steps (about the base's time)"),
    "ae/c16-b32-thr-2500": Arm(
        "autoencoder", ["model.channels=16", "model.channel_mult=[1,2,4]", "model.bits=32",
                        "model.train_bits=threshold", "optim.steps=2500"],
        "widths 16/32/64, 32 bits, [p > 0.5] in training, 2500 steps"),
    "ae/c16-b32-thr-2500-mse": Arm(
        "autoencoder", ["model.channels=16", "model.channel_mult=[1,2,4]", "model.bits=32",
                        "model.train_bits=threshold", "optim.steps=2500", "loss.l1_weight=0.0"],
        "as ae/c16-b32-thr-2500 with MSE only (no L1 term)"),
    "ae/c16-b32-thr-3000-mse-lr3e-3": Arm(
        "autoencoder", ["model.channels=16", "model.channel_mult=[1,2,4]", "model.bits=32",
                        "model.train_bits=threshold", "optim.steps=3000", "loss.l1_weight=0.0",
                        "optim.lr=0.003"],
        "widths 16/32/64, 32 bits, [p > 0.5] in training, MSE only, 3000 steps at lr 3e-3"),
    # the fashion-mnist autoencoder preset, and with the edge term faces64 trains with
    "ae/preset": Arm("autoencoder", AE_PRESET, "the fashion-mnist autoencoder preset"),
    "ae/preset-edge2": Arm("autoencoder", AE_PRESET + ["loss.edge_weight=2.0"],
                           "the preset with an edge (gradient) term of weight 2, as faces64"),
    "ae/bits32-ch24": Arm("autoencoder", ["model.bits=32", "model.channels=24"],
                          "32 bits, first-level width 24"),
    # ---- the compact demo's autoencoder (1500 steps) against pixel-unshuffle at its input,
    # which takes the convolutions off the 28 px level; steps chosen for about the same
    # training seconds in fp32 (run these under the AVX2 restriction, see `--name`)
    "ae/compact-1500": Arm("autoencoder", AE_NOW + ["model.channels=16",
                                                   "model.channel_mult=[1,2,4]",
                                                   "optim.steps=1500"],
                           "the compact demo's autoencoder: widths 16/32/64, 1500 steps"),
    "ae/patch2-c32-2300": Arm("autoencoder", AE_NOW + ["model.patch=2", "model.channels=32",
                                                      "model.channel_mult=[1,2]",
                                                      "optim.steps=2300"],
                              "pixel-unshuffle 2, widths 32/64 at 14 / 7 px, 2300 steps"),
    "ae/patch2-c24-3200": Arm("autoencoder", AE_NOW + ["model.patch=2", "model.channels=24",
                                                      "model.channel_mult=[1,2]",
                                                      "optim.steps=3200"],
                              "pixel-unshuffle 2, widths 24/48 at 14 / 7 px, 3200 steps"),
    # ---- the shipped presets, both stages (what `bld demo` trains)
    "preset": Arm("preset", [], "the shipped fashion-mnist presets"),
}


# ------------------------------------------------------------------------------ helpers
def _ae_eval(ae, clf, ref: common.FDReference, test_x: torch.Tensor, test_y: torch.Tensor
             ) -> dict[str, Any]:
    """The autoencoder's figures on the whole test set (PSNR over the dataset MSE)."""
    from bld.core.metrics import bit_usage, ssim
    from bld.evaluation.classifier import accuracy
    from bld.inference.generate import reconstruct
    rec = reconstruct(ae, test_x)
    with torch.no_grad():
        probs = torch.cat([ae(test_x[i:i + 500], deterministic=True).probs.float()
                           for i in range(0, 2000, 500)])
    usage = bit_usage(probs)
    floor_rec = rec.recon[ref.floor_index]
    fr = ref.evaluate(floor_rec)
    return {"psnr": rec.psnr, "ssim": ssim(rec.recon, test_x), "l1": rec.l1,
            "recon_class_accuracy": accuracy(clf, rec.recon, test_y),
            "fd_recon": fr["fd"], "recon_recall": fr["recall"], "recon_precision": fr["precision"],
            "bit_entropy": usage.bit_entropy, "dead_bit_fraction": usage.dead_fraction}


def _load_cfg(kind: str, overrides: list[str]):
    from bld.core.config import config_from_dict, load_config_dict
    return config_from_dict(kind, load_config_dict(kind, "fashion-mnist", overrides))


# --------------------------------------------------------------------------- the study
class Study:
    def __init__(self, bench: common.Bench, run_dir: Path, work: Path, n: int, threads: int):
        self.bench, self.run_dir, self.work, self.n = bench, run_dir, work, n
        self.threads = threads
        self.json_path = bench.path(".json")
        self.rows: dict[str, Any] = {}
        if self.json_path.exists():  # earlier arms: `save` and `write_report` both keep them
            saved = json.loads(self.json_path.read_text())
            self.rows = saved.get("results", saved)["rows"]
        self._ref = None

    # shared measuring tools, made once
    def ref(self):
        if self._ref is None:
            clf, meta = common.get_classifier(self.bench, self.run_dir)
            x, y = common.fashion_mnist("test")
            self._ref = (clf, meta, common.FDReference(clf, x, y, self.n, seed=0), x, y)
        return self._ref

    def save(self) -> None:
        """Merge this run's rows into the JSON file (other runs may be adding arms too)."""
        import fcntl
        with open(self.json_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.json_path.exists():
                saved = json.loads(self.json_path.read_text())
                self.rows = {**saved.get("results", saved)["rows"], **self.rows}
            self.bench.results = {"rows": self.rows, "n": self.n, "base_prior": BASE_PRIOR,
                                  "base_autoencoder": BASE_AUTOENCODER,
                                  "environment": common.environment()}
            tmp = self.json_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(common._jsonable({"benchmark": "ablations",
                                                        "results": self.bench.results}),
                                      indent=2))
            tmp.replace(self.json_path)

    def _run_flags(self, seed: int) -> list[str]:
        return [f"run.seed={seed}", f"run.threads={self.threads}", "run.device=cpu",
                "run.sample_every=0", "run.ckpt_every=0"]

    def autoencoder(self, name: str, seed: int) -> tuple[Path, dict[str, Any]]:
        """Train (or reuse) an autoencoder arm; returns its run folder and figures."""
        from bld.core.loading import load_autoencoder
        from bld.training.loop import train_autoencoder
        arm = ARMS[name]
        key = f"{name}|{seed}"
        out = self.work / f"{name.replace('/', '_')}-s{seed}"
        if key not in self.rows:
            base = [] if arm.kind == "preset" else BASE_AUTOENCODER
            cfg = _load_cfg("autoencoder", base + arm.overrides + self._run_flags(seed))
            t0 = time.perf_counter()
            if not (out / "done").exists():
                import shutil
                shutil.rmtree(out, ignore_errors=True)
                train_autoencoder(cfg, out)
                (out / "done").write_text(str(time.perf_counter() - t0))
            seconds = float((out / "done").read_text())
            clf, meta, ref, x, y = self.ref()
            ae = load_autoencoder(out, "cpu")
            figs = _ae_eval(ae, clf, ref, x, y)
            self.rows[key] = {"arm": name, "kind": "autoencoder", "seed": seed,
                              "note": arm.note, "overrides": arm.overrides,
                              "train_s": seconds, "steps": cfg.optim.steps,
                              "batch_size": cfg.optim.batch_size,
                              "params_M": sum(p.numel() for p in ae.parameters()) / 1e6,
                              "bits_per_image": math.prod(ae.config.latent_shape), **figs}
            self.save()
            log.info("%s: %s", key, {k: v for k, v in self.rows[key].items()
                                     if isinstance(v, float)})
        return out, self.rows[key]

    def latents(self, ae_dir: Path) -> Path:
        from bld.core.loading import load_autoencoder
        from bld.data import build_dataset
        from bld.inference.generate import encode_dataset
        cache = ae_dir / "latents_train.safetensors"
        if not cache.exists():
            ae = load_autoencoder(ae_dir, "cpu")
            encode_dataset(ae, build_dataset("fashion-mnist", "train"), cache)
        return cache

    def prior(self, name: str, seed: int) -> None:
        from bld.core.loading import load_autoencoder, load_prior
        from bld.evaluation.evaluate import evaluate_prior
        from bld.training.loop import train_prior
        arm = ARMS[name]
        if arm.kind == "preset":
            ae_dir, _ = self.autoencoder(name, seed)
            cache = self.latents(ae_dir)
            base = []
        elif arm.autoencoder:
            ae_dir, _ = self.autoencoder(arm.autoencoder, seed)
            cache = self.latents(ae_dir)
            base = BASE_PRIOR
        else:
            ae_dir, cache = self.run_dir / "autoencoder", self.run_dir / "latents_train.safetensors"
            base = BASE_PRIOR
        out = self.work / f"{name.replace('/', '_')}-prior-s{seed}"
        cfg = _load_cfg("prior", base + arm.overrides + self._run_flags(seed)
                        + [f"autoencoder={ae_dir}", f"latents={cache}"])
        if arm.adopt and seed == 0:  # trained by `bld demo` with these settings
            out = self.run_dir / arm.adopt
            seconds = json.loads((out / "done.json").read_text())["seconds"]
        elif not (out / "done").exists():
            import shutil
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            train_prior(cfg, out)
            (out / "done").write_text(str(time.perf_counter() - t0))
        if not (arm.adopt and seed == 0):
            seconds = float((out / "done").read_text())
        clf, meta, ref, x, y = self.ref()
        prior = load_prior(out, "cpu")
        ae = load_autoencoder(ae_dir, "cpu")
        recon_key = f"recon|{ae_dir}"
        if recon_key not in self.rows:
            with torch.no_grad():
                rec = ref.evaluate(torch.cat([ae(ref.floor[i:i + 500], deterministic=True).recon
                                              .float().clamp(-1, 1)
                                              for i in range(0, self.n, 500)]))
            self.rows[recon_key] = {"kind": "recon", "fd_recon": rec["fd"],
                                    "recon_recall": rec["recall"], "floor": rec["fd_floor_real_vs_real"]}
        recon = self.rows[recon_key]
        for lam, w in arm.samplers:
            key = f"{name}|{seed}|lambda={lam:g}|w={w:g}"
            if key in self.rows:
                continue
            ev = evaluate_prior(prior, ae, clf, x, n=self.n, steps=16, guidance=w,
                                evidence_weight=lam, seed=0)
            smp = ev["samples"]
            self.rows[key] = {
                "arm": name, "kind": "prior", "seed": seed, "note": arm.note,
                "overrides": arm.overrides, "evidence_weight": lam, "guidance": w,
                "train_s": seconds, "steps": cfg.optim.steps, "batch_size": cfg.optim.batch_size,
                "latents_per_s": cfg.optim.steps * cfg.optim.batch_size / seconds,
                "params_M": sum(p.numel() for p in prior.model.parameters()) / 1e6,
                "fd": smp["fd"], "fd_floor": smp["fd_floor_real_vs_real"],
                "fd_recon": recon["fd_recon"], "fd_ratio": smp["fd"] / recon["fd_recon"],
                "class_accuracy": smp["class_accuracy"], "precision": smp["precision"],
                "recall": smp["recall"], "recon_recall": recon["recon_recall"],
                "sample_s_per_image": ev["seconds_per_image"]}
            self.save()
            log.info("%s: FD %.1f (ratio %.2f), class acc %.3f, recall %.3f, %.0f s", key,
                     smp["fd"], smp["fd"] / recon["fd_recon"], smp["class_accuracy"],
                     smp["recall"], seconds)


# ------------------------------------------------------------------------------ report
def report(bench: common.Bench, rows: dict[str, Any]) -> None:
    prior_rows = [r for r in rows.values() if r.get("kind") == "prior"]
    ae_rows = [r for r in rows.values() if r.get("kind") == "autoencoder"]
    pcols = ["arm", "seed", "evidence_weight", "guidance", "fd", "fd_ratio", "class_accuracy",
             "precision", "recall", "recon_recall", "train_s", "latents_per_s", "params_M", "note"]
    acols = ["arm", "seed", "psnr", "ssim", "recon_class_accuracy", "fd_recon", "recon_recall",
             "bit_entropy", "train_s", "bits_per_image", "params_M", "note"]
    sections = [
        "Each arm changes the settings named in its note from the demo's settings before this "
        f"study (prior: `{' '.join(BASE_PRIOR)}`; autoencoder: `{' '.join(BASE_AUTOENCODER)}`). "
        "Samples: S = 16, seed 0; FD, precision/recall on the project classifier at N = "
        f"{bench.results.get('n', '?')}; `fd_ratio` = sample FD / reconstruction FD at the same "
        "N. `train_s`: training wall time of the arm (each arm's run folder records its "
        "`run.threads`). The rows merge arms measured in separate calls of this script; the "
        "date, thread count and load in the header below are those of the call that wrote "
        "this file, not of every arm.",
        "", "## Prior arms", "", common.markdown_table(sorted(prior_rows, key=lambda r: (
            r["arm"], r["seed"], -r["evidence_weight"], r["guidance"])), pcols),
        "", "## Autoencoder arms", "", common.markdown_table(
            sorted(ae_rows, key=lambda r: (r["arm"], r["seed"])), acols),
    ]
    common.write_report(bench, "Ablations: learning per CPU-second", sections)


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"),
                   help="a `bld demo` folder: its autoencoder, latent cache and classifier")
    p.add_argument("--arms", nargs="+", default=[], help="arms to run (see --list)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("-n", type=int, default=1000, help="samples per FD")
    p.add_argument("--work", type=Path, default=Path("runs/ablations"),
                   help="where the arms' run folders go")
    p.add_argument("--list", action="store_true", help="print the arms and exit")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--name", default="ablations",
                   help="file name of the results (e.g. ablations_avx2 for arms trained under "
                        "the AVX2 restriction, whose seconds differ from this CPU's)")
    args = p.parse_args()
    if args.list:
        for k, a in ARMS.items():
            print(f"{k:28s} {a.kind:12s} {' '.join(a.overrides) or '-':60s} {a.note}")
        return
    bench = common.setup(args.name, args, "~8-12 min per prior arm, ~6-9 per autoencoder arm "
                         "(1 thread)")
    study = Study(bench, args.run, args.work, args.n, args.threads)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; see --list")
    for name in args.arms:
        for seed in args.seeds:
            if ARMS[name].kind == "autoencoder":
                study.autoencoder(name, seed)
            else:
                study.prior(name, seed)
    study.save()
    report(bench, study.rows)


if __name__ == "__main__":
    main()
