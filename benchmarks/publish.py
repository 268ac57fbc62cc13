"""Publish measured figures: a `bld demo` run into docs/, and every results table from JSON.

No figure in README.md or docs/ is typed by hand. This script

* with ``--run RUN_DIR``: copies a Fashion-MNIST demo run's ``report.json`` to
  ``docs/demo_report.json`` and its pictures (samples, reconstructions, loss curve, class rows,
  trajectory) to ``docs/demo_*``, and writes the ``demo_*`` keys of
  ``benchmarks/results/headline.json``; ``--native-run`` does the same for a Fashion-MNIST
  demo on a CPU that is AVX2-only itself (``docs/demo_native_*``, ``demo_*_native`` keys),
  ``--colour-native-run`` for the faces demo on such a CPU (``docs/colour_demo_native_*``,
  ``colour_demo_*_native``), ``--colour-six-run`` for the faces demo at the presets' full steps
  on such a CPU (``docs/colour_demo_six_*``, ``colour_demo_*_native_presets``) and
  ``--emoji-run`` for ``bld demo --dataset emoji`` (``docs/emoji_demo_*``, ``emoji_demo_*``).
  One headline key set per CPU kind: no suffix for the AVX-512 host with native bf16,
  ``_native`` for a CPU that is AVX2-only itself (a faster CPU restricted to AVX2 is refused:
  those runs were superseded, see docs/history/README.md), ``_native_presets`` for the faces
  demo there at the presets' full steps;
* always rewrites the generated blocks (between ``<!-- NAME:start -->`` and ``<!-- NAME:end
  -->``): in README.md the one results table (``results-table``: the fastest and the slowest
  CPU measured, Fashion-MNIST and faces); in docs/results.md each published demo's full
  table and the 256 / 1024 px runs (``benchmarks/results/highres_*.json``); in
  docs/benchmarks.md the headline table (``headline.json``), the cost growth
  (``scale.json``) and the ablations (``ablations.json``);
* with ``--check``: changes nothing and exits 1 when a generated block is not what the JSON
  files give (the test suite runs this).

    python benchmarks/publish.py --run runs/demo
    python benchmarks/publish.py --check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bld.app.demo_report import schedule_name, steps_trained
from bld.data import DICEBEAR_DEFAULT_STYLES
from bld.models.sampling import describe_guidance_interval

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HEADLINE = ROOT / "benchmarks" / "results" / "headline.json"

# the demo's targets (issue "make the method deliver inside the demo's 15 minutes")
DEMO_TARGETS = {"demo_minutes": ("<=", 15.0), "demo_class_accuracy": (">=", 0.85),
                "demo_fd_ratio_to_recon": ("<=", 2.0), "demo_recall": (">=", 0.25),
                "demo_recon_psnr_db": (">=", 25.0), "demo_recon_class_accuracy": (">=", 0.87)}


# `bld demo --dataset emoji`: the budget; the other figures are reported, not targeted
EMOJI_TARGETS = {"emoji_demo_minutes": ("<=", 20.0)}
# the colour demo (`bld demo --dataset faces`) on a 2-core AVX2-only CPU (issue "colour images
# that look like something"): class accuracy as a share of the FD classifier's own
COLOUR_TARGETS = {"colour_demo_minutes": ("<=", 20.0), "colour_demo_recon_psnr_db": (">=", 26.0),
                  "colour_demo_class_accuracy_ratio": (">=", 0.95),
                  "colour_demo_fd_ratio_to_recon": ("<=", 2.0),
                  "colour_demo_recall": (">=", 0.35)}
COLOUR_DATASETS = ("faces", "emoji")
# the six DiceBear styles `bld prepare-dicebear` draws by default, as class names
SIX_STYLES = tuple(s.replace("-", "_") for s in DICEBEAR_DEFAULT_STYLES)


def demo_headline(report: dict[str, Any], prefix: str = "demo", suffix: str = "") -> dict[str, Any]:
    """The <prefix>_*<suffix> headline keys (demo_*, emoji_demo_*, demo_*_native) from a demo
    run's report.json."""
    return {k.replace("demo_", f"{prefix}_", 1) + suffix: v for k, v in _demo_keys(report).items()}


def _demo_keys(report: dict[str, Any]) -> dict[str, Any]:
    f, t = report["figures"], report["times"]
    return {"demo_minutes": t["total_s"] / 60,
            "demo_class_accuracy": f["sample_class_accuracy"],
            "demo_class_accuracy_ratio": f["sample_class_accuracy"] / f["classifier_test_accuracy"],
            "demo_fd": f["sample_fd"], "demo_recon_fd": f["reconstruction_fd"],
            "demo_fd_ratio_to_recon": f["fd_ratio_samples_to_recon"],
            "demo_recall": f["sample_recall"], "demo_precision": f["sample_precision"],
            "demo_recon_recall": f["reconstruction_recall"],
            "demo_recon_psnr_db": f["reconstruction_psnr_db"],
            "demo_recon_class_accuracy": f["reconstruction_class_accuracy"],
            "demo_eval_n": f["eval_n"]}


def _verdict(value: float, target: tuple[str, float]) -> str:
    op, bound = target
    ok = value <= bound if op == "<=" else value >= bound
    return "met" if ok else "**missed**"


def _target(targets: dict[str, tuple[str, float]], key: str, unit: str = "",
            fmt: str = "{:g}") -> str:
    if key not in targets:
        return ""
    op, bound = targets[key]
    return f"{op} {fmt.format(bound)}{unit}"


def demo_table(report: dict[str, Any], targets: dict[str, tuple[str, float]] = DEMO_TARGETS,
               prefix: str = "demo") -> str:
    """The full table of a demo run: figures, targets, verdicts, then the models, stage
    times, precision, time plan and machine (with any instruction-set restriction)."""
    f, t, s = report["figures"], report["times"], report["settings"]
    h = _demo_keys(report)
    targets = {k.replace(f"{prefix}_", "demo_", 1): v for k, v in targets.items()}
    n_test = f["test_images"]
    n_test = f"{n_test // 1000}k" if n_test % 1000 == 0 else str(n_test)
    rows = [
        ("wall time (2-core CPU)", f"{h['demo_minutes']:.1f} min", "demo_minutes",
         _target(targets, "demo_minutes", " min")),
        (f"reconstruction PSNR / SSIM ({n_test} test images)",
         f"{f['reconstruction_psnr_db']:.2f} dB / {f['reconstruction_ssim']:.3f}",
         "demo_recon_psnr_db", _target(targets, "demo_recon_psnr_db", " dB")),
        (f"reconstructions classified as their class ({n_test})",
         f"{f['reconstruction_class_accuracy']:.3f}", "demo_recon_class_accuracy",
         _target(targets, "demo_recon_class_accuracy")),
        (f"samples classified as the asked class / the classifier's test accuracy "
         f"(N = {f['eval_n']})", f"{f['sample_class_accuracy']:.3f} / "
         f"{f['classifier_test_accuracy']:.3f} = {h['demo_class_accuracy_ratio']:.3f}",
         "demo_class_accuracy_ratio", _target(targets, "demo_class_accuracy_ratio"))
        if "demo_class_accuracy_ratio" in targets else
        (f"samples classified as the asked class (N = {f['eval_n']})",
         f"{f['sample_class_accuracy']:.3f}", "demo_class_accuracy",
         _target(targets, "demo_class_accuracy")),
        ("sample FD / reconstruction FD, same N",
         f"{f['sample_fd']:.1f} / {f['reconstruction_fd']:.1f} = "
         f"{f['fd_ratio_samples_to_recon']:.2f}", "demo_fd_ratio_to_recon",
         _target(targets, "demo_fd_ratio_to_recon", fmt="{:.1f}")),
        ("real-vs-real FD floor, same N", f"{f['fd_floor_real_vs_real']:.1f}", None, ""),
        ("sample precision / recall", f"{f['sample_precision']:.3f} / {f['sample_recall']:.3f}",
         "demo_recall", ("recall " + _target(targets, "demo_recall")).strip()
         if "demo_recall" in targets else ""),
        ("reconstructions' precision / recall, same reference",
         f"{f['reconstruction_precision']:.3f} / {f['reconstruction_recall']:.3f}", None, ""),
        ("sampling, 16 steps with guidance", f"{f['sampling_seconds_per_image'] * 1000:.1f} "
         "ms per image", None, ""),
    ]
    lines = ["| figure | value | target | verdict |", "|---|---|---|---|"]
    for name, value, key, target in rows:
        verdict = _verdict(h[key], targets[key]) if key in targets else ""
        lines.append(f"| {name} | {value} | {target} | {verdict} |")
    times = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items()
                      if k not in ("total_s", "cpu_s"))
    if "cpu_s" in t:  # older reports lack it
        load = report.get("load_average_1min_start_end") or [None, None]
        times += (f" (the process used {t['cpu_s'] / 60:.1f} CPU-minutes; 1-minute load average "
                  f"{load[0]:.1f} at the start, {load[1]:.1f} at the end, on "
                  f"{report['machine'].split(', ')[1]})") if None not in load else ""
    a, p = report["autoencoder"], report["prior"]
    trained = (f"the shipped {a['adopted']['from']} model's, {a['trained_steps']} steps, not "
               "trained in this run" if a.get("adopted") else
               f"{steps_trained(a)} x {a['batch_size']}")
    lines += ["", f"Models: a {a['params_M']:.2f}M-parameter autoencoder ({a['latent_shape'][1]}"
              f"x{a['latent_shape'][2]} grid of {a['latent_shape'][0]} bits, {trained}) and a {p['params_M']:.2f}M-parameter prior ({p['width']} wide x "
              f"{p['depth']} deep, {p.get('conditioning', 'tokens')} conditioning, T = "
              f"{p['timesteps']} {schedule_name(p)}, {steps_trained(p)} x {p['batch_size']}). "
              f"Stage times: {times}. Sampling: {s['sample_steps']} steps, guidance "
              f"{s['guidance']}" + describe_guidance_interval(s.get("guidance_interval")) +
              f", evidence weight {s['evidence_weight']}, temperature "
              f"{s['temperature']}, seed {s['seed']}. Machine: {report['machine']}, torch "
              f"{report['torch']}" + _cpu_note(report) + "."]
    if report.get("precision_reason"):
        lines[-1] += f" Precision: {report['precision_reason']}."
    if report.get("plan"):
        from bld.app.budget import Plan
        lines[-1] += f" Time plan: {Plan.from_dict(report['plan']).describe()}."
    return "\n".join(lines)


def _cpu_note(report: dict[str, Any]) -> str:
    cpu = report.get("cpu")
    if not cpu:
        return ""
    limits = ", ".join(f"{k}={v}" for k, v in cpu["restricted_by"].items())
    return (f", CPU capability {cpu['capability']}, native bf16 "
            f"{'yes' if cpu['native_bf16'] else 'no'}"
            + (f" (EMULATED: this CPU restricted by {limits})" if limits else ""))


def _colour_rows(suffix: str, minutes: str, where: str) -> list[tuple]:
    """The headline rows of one published faces demo run (keys colour_demo_*<suffix>):
    ``minutes`` labels its wall time, ``where`` ends the other labels."""
    return [
        (f"colour_demo_minutes{suffix}", minutes, "{:.1f} min", "<= 20 min", "<=", 20.0),
        (f"colour_demo_recon_psnr_db{suffix}", f"faces demo autoencoder PSNR{where}",
         "{:.2f} dB", ">= 26 dB", ">=", 26.0),
        (f"colour_demo_class_accuracy_ratio{suffix}", "faces demo class accuracy / the "
         f"classifier's{where}", "{:.3f}", ">= 0.95", ">=", 0.95),
        (f"colour_demo_fd_ratio_to_recon{suffix}", "faces demo sample FD / reconstruction "
         f"FD{where}", "{:.2f}", "<= 2.0", "<=", 2.0),
        (f"colour_demo_recall{suffix}", f"faces demo sample recall{where}", "{:.3f}",
         ">= 0.35", ">=", 0.35)]


# headline.json keys shown in docs/benchmarks.md: (key, label, format, target, op, bound).
# One key set per CPU kind measured: no suffix = the AVX-512 host with native bf16, _native = a
# CPU that is AVX2-only itself; _native_presets = the faces demo at the presets' full steps there.
HEADLINE_ROWS = [
    ("demo_minutes", "demo wall time (defaults, AVX-512 + native bf16)", "{:.1f} min",
     "<= 15 min", "<=", 15.0),
    ("demo_class_accuracy", "demo samples classified as the asked class", "{:.3f}", ">= 0.85",
     ">=", 0.85),
    ("demo_fd_ratio_to_recon", "demo sample FD / reconstruction FD", "{:.2f}", "<= 2.0", "<=", 2.0),
    ("demo_recall", "demo sample recall (reconstructions: `demo_recon_recall`)", "{:.3f}",
     ">= 0.25", ">=", 0.25),
    ("demo_recon_recall", "demo reconstructions' recall", "{:.3f}", "-", None, None),
    ("demo_recon_psnr_db", "demo autoencoder PSNR (10k test images)", "{:.2f} dB", ">= 25 dB",
     ">=", 25.0),
    ("demo_recon_class_accuracy", "demo reconstructions classified right", "{:.3f}", ">= 0.87",
     ">=", 0.87),
    ("demo_minutes_native", "demo wall time on a CPU that is AVX2-only itself (fp32)",
     "{:.1f} min", "<= 15 min", "<=", 15.0),
    ("demo_recon_psnr_db_native", "demo autoencoder PSNR, that CPU", "{:.2f} dB", ">= 25 dB",
     ">=", 25.0),
    ("demo_class_accuracy_native", "demo samples classified as the asked class, that CPU",
     "{:.3f}", ">= 0.85", ">=", 0.85),
    ("demo_fd_ratio_to_recon_native", "demo sample FD / reconstruction FD, that CPU", "{:.2f}",
     "<= 2.0", "<=", 2.0),
    ("demo_recall_native", "demo sample recall, that CPU", "{:.3f}", ">= 0.25", ">=", 0.25),
    *_colour_rows("_native", "faces demo wall time (`--minutes 20`) on a CPU that is AVX2-only "
                  "itself", ", that CPU"),
    *_colour_rows("_native_presets", "faces demo at the presets' full steps, wall time on that "
                  "CPU", ", the presets' steps"),
    ("emoji_demo_minutes", "emoji demo wall time (`bld demo --dataset emoji`)", "{:.1f} min",
     "<= 20 min", "<=", 20.0),
    ("emoji_demo_recon_psnr_db", "emoji demo autoencoder PSNR (test split)", "{:.2f} dB", "-",
     None, None),
    ("emoji_demo_class_accuracy", "emoji demo samples classified as the asked category",
     "{:.3f}", "-", None, None),
    ("emoji_demo_fd_ratio_to_recon", "emoji demo sample FD / reconstruction FD", "{:.2f}", "-",
     None, None),
    ("bld_fd_s16", "BLD FD at S = 16, matched compute (mean of 2 training seeds)", "{:.1f}",
     "<= Gaussian", None, None),
    ("gaussian_fd_s16", "Gaussian + DDIM FD at S = 16, matched compute", "{:.1f}", "-", None, None),
    ("bld_fd_s16_matched_recon", "BLD FD at S = 16, matched reconstruction quality", "{:.1f}",
     "<= Gaussian", None, None),
    ("gaussian_fd_s16_matched_recon", "Gaussian FD at S = 16, matched reconstruction quality",
     "{:.1f}", "-", None, None),
    ("bld_fd_s16_dicebear", "faces (ten styles): BLD FD at S = 16, matched compute (64 bits, "
     "mean of 2 training seeds)", "{:.1f}", "<= Gaussian", None, None),
    ("gaussian_fd_s16_dicebear", "faces (ten styles): Gaussian + DDIM FD at S = 16, matched "
     "compute", "{:.1f}", "-", None, None),
    ("bld32_fd_s16_dicebear", "faces (ten styles): BLD FD at S = 16 with 32 bits, the same "
     "prior", "{:.1f}", "-", None, None),
    ("bld128_fd_s16_dicebear", "faces (ten styles): BLD FD at S = 16 with 128 bits, the same "
     "prior", "{:.1f}", "-", None, None),
    ("fd16_over_fd64", "FD(16) / FD(64), improved prior", "{:.3f}", "<= 1.10", "<=", 1.10),
    ("fd8_over_fd64", "FD(8) / FD(64), improved prior", "{:.3f}", "<= 1.20", "<=", 1.20),
    ("tokenizer_psnr_gap_db", "best of LFQ / FSQ / VQ minus Bernoulli PSNR, equal bits",
     "{:+.2f} dB", "<= 0.3 dB", "<=", 0.3),
    ("tokenizer_psnr_gap_db_dicebear", "faces (ten styles): best of LFQ / FSQ minus Bernoulli "
     "PSNR, 64 bits", "{:+.2f} dB", "<= 0.3 dB", "<=", 0.3),
    ("latent_bytes_1024px", "bytes per 1024 px image in its binary latent", "{:d}", "-", None,
     None),
    ("ae_train_step_s_1024px", "1024 px autoencoder training step, batch 1, CPU", "{:.1f} s",
     "-", None, None),
    ("ae_train_peak_mb_1024px", "1024 px autoencoder step, peak memory, CPU", "{:.0f} MB", "-",
     None, None),
    ("prior_train_step_s_1024px", "1024 px prior (768 x 24) training step, batch 1, CPU",
     "{:.1f} s", "-", None, None),
    ("sample16_s_1024px", "1024 px sample, 16 steps + decode, CPU", "{:.1f} s", "-", None, None),
    ("mfu_bf16", "MFU of demo-prior training, bf16", "{:.1%}", "-", None, None),
    ("train_images_per_s", "demo-prior training throughput (latents/s)", "{:.0f}", "-", None,
     None),
]


def headline_table(h: dict[str, Any]) -> str:
    lines = ["| figure | value | target | verdict | from |", "|---|---|---|---|---|"]
    for key, label, fmt, target, op, bound in HEADLINE_ROWS:
        if key not in h:
            lines.append(f"| {label} | not measured | {target} | | |")
            continue
        v = h[key]
        verdict = ""
        if op is not None:
            verdict = _verdict(v, (op, bound))
        elif key.startswith("bld_fd_s16") and key.replace("bld_", "gaussian_", 1) in h:
            verdict = "met" if v <= h[key.replace("bld_", "gaussian_", 1)] else "**missed**"
        source = h.get(f"{key}__source", "").split(",")[0].replace("benchmarks/", "")
        lines.append(f"| {label} | {fmt.format(v)} | {target} | {verdict} | `{source}` |")
    return "\n".join(lines)


def ablation_table(rows: dict[str, Any]) -> str:
    """Compact tables of benchmarks/results/ablations.json: prior arms at the sampler settings
    measured for every arm, then autoencoder arms (means over the seeds run)."""
    from collections import defaultdict
    prior, ae = defaultdict(list), defaultdict(list)
    for r in rows.values():
        if r.get("kind") == "prior":
            prior[(r["arm"], r["evidence_weight"], r["guidance"])].append(r)
        elif r.get("kind") == "autoencoder":
            ae[r["arm"]].append(r)

    def mean(rs, k):
        return sum(r[k] for r in rs) / len(rs)

    lines = ["| prior arm | lambda, w | seeds | FD | FD / recon FD | class acc | recall | "
             "train s (1 thread) | what changes |", "|---|---|---|---|---|---|---|---|---|"]
    for (arm, lam, w), rs in sorted(prior.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        if (lam, w) not in ((0.0, 1.0), (1.0, 1.0)):
            continue
        lines.append(f"| `{arm}` | {lam:g}, {w:g} | {len(rs)} | {mean(rs, 'fd'):.1f} | "
                     f"{mean(rs, 'fd_ratio'):.2f} | {mean(rs, 'class_accuracy'):.3f} | "
                     f"{mean(rs, 'recall'):.3f} | {mean(rs, 'train_s'):.0f} | {rs[0]['note']} |")
    lines += ["", "| autoencoder arm | seeds | PSNR | recon class acc | recon FD | recon recall | "
              "train s (1 thread) | what changes |", "|---|---|---|---|---|---|---|---|"]
    for arm, rs in sorted(ae.items()):
        lines.append(f"| `{arm}` | {len(rs)} | {mean(rs, 'psnr'):.2f} | "
                     f"{mean(rs, 'recon_class_accuracy'):.3f} | {mean(rs, 'fd_recon'):.1f} | "
                     f"{mean(rs, 'recon_recall'):.3f} | {mean(rs, 'train_s'):.0f} | {rs[0]['note']} |")
    return "\n".join(lines)


RESULTS = ROOT / "benchmarks" / "results"


def highres_table() -> str:
    """The 256 px / 1024 px OpenMoji runs (benchmarks/highres.py) as one table."""
    lines = ["| resolution | latent (bits per position x grid) | bytes / image | autoencoder | "
             "PSNR (test images) | prior | sample size |", "|---|---|---|---|---|---|---|"]
    for size in (256, 1024):
        path = RESULTS / f"highres_{size}.json"
        if not path.exists():
            lines.append(f"| {size} px | not run yet: `python benchmarks/highres.py --size {size}` "
                         "| | | | | |")
            continue
        r = json.loads(path.read_text())["results"]
        b, rec = r["budget"], r["reconstruction"]
        C, h, w = rec["latent_shape"]
        lines.append(
            f"| {size} px | {C} x {h}x{w} | {C * h * w // 8} | {rec['params_M']:.2f}M params "
            f"({', '.join(b['ae'])}), {b['ae_steps']} steps x {b['ae_batch']}, "
            f"{r['autoencoder']['seconds'] / 60:.0f} min | {rec['psnr_db']:.2f} dB "
            f"({rec['test_images']}) | `{b['prior_preset']}`, {b['prior_steps']} steps x "
            f"{b['prior_batch']}, {r['prior']['seconds'] / 60:.0f} min | "
            f"{r['sample']['image_size'][0]} x {r['sample']['image_size'][1]} |")
    return "\n".join(lines)


def scale_table() -> str:
    path = RESULTS / "scale.json"
    if not path.exists():
        return "Not measured yet: `python benchmarks/scale.py`."
    data = json.loads(path.read_text())
    env = data["environment"]
    return (data["results"]["table_md"] + f"\n\nMeasured {env['date']} on {env['cpu']} "
            f"({env['torch_threads']} torch threads, load average {env['load_average'][0]:.1f}).")


def _replace_block(text: str, name: str, body: str, path: Path) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def _publish_run(run: Path, name: str, prefix: str, suffix: str = "") -> None:
    """Copy a demo run's report and pictures into docs/<name>_*; write its headline keys."""
    report_path = run / "report.json"
    if not report_path.exists():
        raise SystemExit(f"{report_path} is missing: is {run} a finished `bld demo` run?")
    report = json.loads(report_path.read_text())
    f = report["figures"]
    if f.get("eval_n", 0) < min(1000, f.get("test_images", 0) // 2):
        raise SystemExit("the demo run was evaluated on fewer than 1000 samples (or half its "
                         "test split, where that is smaller); the headline figures need more")
    DOCS.mkdir(exist_ok=True)
    shutil.copyfile(report_path, DOCS / f"{name}_report.json")
    for src in ("samples.png", "reconstructions.png", "loss_prior.png", "class_rows.png",
                "trajectory.png"):
        if (run / src).exists():
            shutil.copyfile(run / src, DOCS / f"{name}_{src}")
    head = json.loads(HEADLINE.read_text()) if HEADLINE.exists() else {}
    stamp = f"benchmarks/publish.py, {time.strftime('%Y-%m-%d %H:%M')}"
    for k, v in demo_headline(report, prefix, suffix).items():
        head[k], head[f"{k}__source"] = v, stamp
    HEADLINE.parent.mkdir(parents=True, exist_ok=True)
    HEADLINE.write_text(json.dumps(dict(sorted(head.items())), indent=2) + "\n")


def _report_table(name: str, targets: dict[str, tuple[str, float]], prefix: str,
                  how: str) -> str:
    """The docs/results.md table of docs/<name>_report.json, or how to make it where it is
    missing."""
    path = DOCS / f"{name}_report.json"
    if not path.exists():
        return f"Not run yet: {how}."
    return demo_table(json.loads(path.read_text()), targets, prefix)


# the tables of docs/results.md, one per published demo run: (docs/<name>_report.json, targets,
# headline prefix, how to make the run where it is missing); block "<name with dashes>-table"
REPORT_TABLES = [
    ("demo", DEMO_TARGETS, "demo", "`bld demo`, then `python benchmarks/publish.py --run "
     "runs/demo`"),
    ("demo_native", DEMO_TARGETS, "demo", "`bld demo --out runs/demo-native` on a CPU that is "
     "AVX2-only itself, then `python benchmarks/publish.py --native-run runs/demo-native`"),
    ("colour_demo_native", COLOUR_TARGETS, "colour_demo", "`bld demo --dataset faces "
     "--minutes 20` on a CPU that is AVX2-only itself, then `python benchmarks/publish.py "
     "--colour-native-run runs/demo-faces`"),
    ("colour_demo_six", COLOUR_TARGETS, "colour_demo", "`bld demo --dataset faces --minutes N` "
     "with the N that trains every preset step on a CPU that is AVX2-only itself (the plan's "
     "note names it), then `python benchmarks/publish.py --colour-six-run runs/demo-faces`"),
    ("emoji_demo", EMOJI_TARGETS, "emoji_demo", "`bld demo --dataset emoji`, then `python "
     "benchmarks/publish.py --emoji-run runs/demo-emoji`"),
]

# the README's one results table: the fastest and the slowest CPU measured, per dataset
# (docs/<name>_report.json, its targets)
# the slowest CPU measured first, the fastest beside it
RESULTS_ROWS = [("demo_native", DEMO_TARGETS), ("demo", DEMO_TARGETS),
                ("colour_demo_native", COLOUR_TARGETS), ("colour_demo_six", COLOUR_TARGETS)]
# demo names and dataset sources, as the tables name them
DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "faces": "DiceBear faces",
                 "dicebear": "DiceBear faces", "emoji": "emoji"}


def _machine(report: dict[str, Any]) -> str:
    """'2-core AMD EPYC, AVX-512 + native bf16' from a demo report's machine and cpu fields."""
    parts = report["machine"].split(", ")
    cores = parts[1].split()[0] if len(parts) > 1 else "?"
    cpu = report.get("cpu") or {}
    kind = {"AVX512": "AVX-512"}.get(cpu.get("capability"), cpu.get("capability", "?"))
    if cpu.get("native_bf16"):
        kind += " + native bf16"
    elif cpu.get("capability") == "AVX2":
        kind += " only"
    return f"{cores}-core {parts[0]}, {kind}"


def _default_minutes() -> float:
    from bld.app.cli import build_parser
    return build_parser().parse_args(["demo"]).minutes


def results_table() -> str:
    """README.md's one table: each demo on the slowest and the fastest CPU measured (the
    slowest first), with how many of its targets it met."""
    lines = ["| demo | command | machine (precision) | wall time | PSNR | class accuracy | "
             "sample FD / recon FD | recall | targets met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, targets in RESULTS_ROWS:
        path = DOCS / f"{name}_report.json"
        if not path.exists():
            lines.append(f"| `docs/{name}_report.json` missing | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        f, s = r["figures"], r["settings"]
        prefix = next(t for n, _, t, _ in REPORT_TABLES if n == name)
        h = _demo_keys(r)
        wanted = {k.replace(f"{prefix}_", "demo_", 1): v for k, v in targets.items()}
        met = sum(_verdict(h[k], v) == "met" for k, v in wanted.items())
        cmd = "bld demo" + (f" --dataset {r['dataset']}" if r["dataset"] != "fashion-mnist"
                            else "")
        cmd += f" --minutes {s['minutes']:g}" if s["minutes"] != _default_minutes() else ""
        # the autoencoder the demo adopted (by default where the plan would cut the presets
        # hard, or by --autoencoder): said, as the command alone would not
        adopted = (f" (the shipped {r['autoencoder']['adopted']['from']} autoencoder, prior "
                   "trained)" if r["autoencoder"].get("adopted") else "")
        data = f"{DATASET_NAMES.get(r['dataset'], r['dataset'])}, {len(r['classes'])} classes"
        lines.append(
            f"| {data} | `{cmd}`{adopted} | {_machine(r)} ({r.get('precision', '?')}) | "
            f"{h['demo_minutes']:.1f} min | {f['reconstruction_psnr_db']:.2f} dB | "
            f"{f['sample_class_accuracy']:.3f} | "
            f"{f['sample_fd']:.1f} / {f['reconstruction_fd']:.1f} = "
            f"{f['fd_ratio_samples_to_recon']:.2f} | {f['sample_recall']:.3f} | "
            f"{met} of {len(wanted)} |")
    lines += _shipped_rows()
    return "\n".join(lines)


def _shipped_rows() -> list[str]:
    """A row per shipped model with measured figures (src/bld/zoo/NAME/eval.json): what the
    method gives at full length, beside what each machine's demo run bought."""
    from bld.inference import zoo
    rows = []
    for m in zoo.list_models():
        f = m.figures
        if not f:
            continue
        prov = json.loads((m.path / "provenance.json").read_text())
        data = DATASET_NAMES.get(m.dataset, m.dataset)
        rows.append(
            f"| {data}, {len(m.classes)} classes | shipped model `{m.name}`: `bld eval --model "
            f"{m.name} -n {f['n']}` | trained on {prov.get('machine')} "
            f"({prov.get('precision')}), {prov.get('minutes')} min | - | "
            f"{f['psnr']:.2f} dB | {f['sample_class_accuracy']:.3f} | {f['sample_fd']:.1f} / "
            f"{f['reconstruction_fd']:.1f} = {f['fd_ratio_to_recon']:.2f} | "
            f"{f['sample_recall']:.3f} | see its card |")
    return rows


def _native_cpu(run: Path, report: dict[str, Any], flag: str) -> None:
    """Refuse a run whose CPU was not AVX2-only itself (another capability, or a faster CPU
    restricted to AVX2 by the environment)."""
    cpu = report.get("cpu", {})
    if cpu.get("capability") != "AVX2" or cpu.get("restricted_by"):
        raise SystemExit(f"{flag} {run}: it did not run on a CPU that is AVX2-only itself (its "
                         f"report: capability {cpu.get('capability')}, restricted by "
                         f"{cpu.get('restricted_by') or 'nothing'})")


def _colour_report(run: Path) -> dict[str, Any]:
    """A demo run's report, refused unless the run is of a colour dataset."""
    report = json.loads((run / "report.json").read_text())
    if report.get("dataset") not in COLOUR_DATASETS:
        raise SystemExit(f"{run} is a demo of {report.get('dataset')!r}, not of a colour "
                         f"dataset ({', '.join(COLOUR_DATASETS)})")
    return report


def _check_presets_run(run: Path, report: dict[str, Any]) -> None:
    """Refuse a --colour-six-run whose time plan cut the presets' steps."""
    scale = (report.get("plan") or {}).get("scale", 1.0)
    if scale < 1.0:
        raise SystemExit(f"--colour-six-run {run}: its plan trained {scale:.0%} of the presets' "
                         "steps; rerun with the --minutes its note names")


def generated_blocks() -> list[tuple[Path, str, str]]:
    """(file, block name, body) of every generated block."""
    head = json.loads(HEADLINE.read_text()) if HEADLINE.exists() else {}
    blocks = [(ROOT / "README.md", "results-table", results_table())]
    blocks += [(DOCS / "results.md", f"{name.replace('_', '-')}-table",
                _report_table(name, targets, prefix, how))
               for name, targets, prefix, how in REPORT_TABLES]
    blocks += [(DOCS / "results.md", "highres", highres_table()),
               (DOCS / "benchmarks.md", "headline", headline_table(head)),
               (DOCS / "benchmarks.md", "scale", scale_table())]
    abl = RESULTS / "ablations.json"
    if abl.exists():
        saved = json.loads(abl.read_text())
        blocks.append((DOCS / "benchmarks.md", "ablations",
                       ablation_table(saved.get("results", saved)["rows"])))
    return blocks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path,
                   help="a finished Fashion-MNIST `bld demo` folder (docs/demo_*, demo_* keys)")
    p.add_argument("--emoji-run", type=Path,
                   help="a finished `bld demo --dataset emoji` folder (docs/emoji_demo_*)")
    p.add_argument("--native-run", type=Path,
                   help="a finished Fashion-MNIST `bld demo` folder run on a CPU that is "
                        "AVX2-only itself, not restricted to it (docs/demo_native_*, "
                        "demo_*_native keys)")
    p.add_argument("--colour-native-run", type=Path,
                   help="a finished `bld demo --dataset faces` folder run on a CPU that is "
                        "AVX2-only itself, not restricted to it (docs/colour_demo_native_*, "
                        "colour_demo_*_native keys)")
    p.add_argument("--colour-six-run", type=Path,
                   help="a finished `bld demo --dataset faces` folder whose classes are the six "
                        "default styles (SIX_STYLES), trained at the presets' full steps on a "
                        "CPU that is AVX2-only itself (docs/colour_demo_six_*, "
                        "colour_demo_*_native_presets keys)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a generated block differs from the JSON files; change "
                        "nothing")
    args = p.parse_args()
    runs = (args.run, args.emoji_run, args.native_run, args.colour_native_run,
            args.colour_six_run)
    if args.check and any(r is not None for r in runs):
        raise SystemExit("--check and the --*-run options exclude each other")
    if args.run is not None:
        _publish_run(args.run, "demo", "demo")
    if args.emoji_run is not None:
        _publish_run(args.emoji_run, "emoji_demo", "emoji_demo")
    if args.native_run is not None:
        report = json.loads((args.native_run / "report.json").read_text())
        if report.get("dataset") != "fashion-mnist":
            raise SystemExit(f"--native-run {args.native_run}: a demo of "
                             f"{report.get('dataset')!r}, not of fashion-mnist (a colour run "
                             "goes with --colour-native-run)")
        _native_cpu(args.native_run, report, "--native-run")
        _publish_run(args.native_run, "demo_native", "demo", "_native")
    if args.colour_native_run is not None:
        _native_cpu(args.colour_native_run, _colour_report(args.colour_native_run),
                    "--colour-native-run")
        _publish_run(args.colour_native_run, "colour_demo_native", "colour_demo", "_native")
    if args.colour_six_run is not None:
        report = _colour_report(args.colour_six_run)
        classes = tuple(report.get("classes", ()))
        if classes != SIX_STYLES:
            raise SystemExit(f"--colour-six-run {args.colour_six_run}: its classes are "
                             f"{list(classes)}, not the six styles {list(SIX_STYLES)}")
        _native_cpu(args.colour_six_run, report, "--colour-six-run")
        _check_presets_run(args.colour_six_run, report)
        _publish_run(args.colour_six_run, "colour_demo_six", "colour_demo", "_native_presets")
    stale = []
    for path, name, body in generated_blocks():
        text = path.read_text()
        new = _replace_block(text, name, body, path)
        if new != text:
            if args.check:
                stale.append(f"{path.relative_to(ROOT)} ({name})")
            else:
                path.write_text(new)
    if stale:
        print(f"generated tables out of date with the JSON files: {', '.join(stale)}; run "
              "`python benchmarks/publish.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
