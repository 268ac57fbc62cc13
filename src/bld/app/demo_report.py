"""The demo's figures and its report: the FD classifier they are measured with, what `bld
demo` measures once both models are trained (FD, precision / recall, class accuracy of
samples and reconstructions, per class), and the Markdown it writes beside report.json.

Imports bld's evaluation and models packages (on first use for evaluation).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..models.sampling import describe_guidance_interval

log = logging.getLogger("bld")


def describe_plan(plan: dict[str, Any]) -> str:
    from .budget import Plan
    return Plan.from_dict(plan).describe()


def fd_classifier(s, out: Path, device, source: str, default_steps: int
                  ) -> tuple[Any, dict[str, Any]]:
    """The FD classifier -> (classifier, its metadata with its ``path`` and whether it
    ``shipped``): ``--classifier``'s; else the one that ships for the demo's dataset, a
    fixed instrument whose FD figures compare across runs and machines (as Inception's
    fixed weights do for FID); else, for another folder of images or with
    ``--classifier-steps``, one trained first (or the one a --resume finds), so that the
    time plan counts the seconds it really took."""
    from ..evaluation.evaluate import (load_classifier, shipped_classifier,
                                       train_and_save_classifier)
    given = Path(s.classifier) if s.classifier else None
    if given is None and s.classifier_steps is None:
        given = shipped_classifier(source, s.data_dir or None)
    if given is not None:
        clf, meta = load_classifier(given, device)
        s.timings["classifier_s"] = 0.0
        return clf, {**meta, "path": str(given), "shipped": not s.classifier}
    cls_dir = out / "classifier"
    t0 = time.perf_counter()
    if s.classifier_steps is None:
        s.classifier_steps = default_steps
    reused = (cls_dir / "config.json").exists()
    if not reused:
        log.info("training the FD classifier (%d steps) first: the time plan counts its "
                 "seconds", s.classifier_steps)
        train_and_save_classifier(source, cls_dir, steps=s.classifier_steps, seed=s.seed,
                                  data_dir=s.data_dir or None, image_size=s.image_size or None,
                                  channels=s.channels or None)
    clf, meta = load_classifier(cls_dir, device)
    s.timings["classifier_s"] = time.perf_counter() - t0
    if reused and meta.get("train_seconds") is not None:
        s.timings["classifier_s"] = meta["train_seconds"]
        s.reused_s += meta["train_seconds"]
    return clf, {**meta, "path": str(cls_dir), "shipped": False}


def evaluate_demo(prior, ae, clf_meta, xt, yt, recon, s, classes: list[str]
                  ) -> tuple[dict, dict[str, dict[str, float | None]] | None]:
    """FD, precision/recall and class accuracy of samples on the project's own classifier
    (``clf_meta``: `fd_classifier`'s; ``s``: its `DemoSettings`); the classifier's
    accuracy on the reconstructions of every test image beside it. -> (figures, per class:
    the share of its samples classified as it and of its test images' reconstructions
    classified as it; None unconditional)."""
    from ..evaluation.classifier import class_shares, predict, prediction_accuracy
    from ..evaluation.evaluate import evaluate_prior
    clf, meta = clf_meta
    # FD's real-vs-real floor needs two disjoint halves of the test set of N images each
    n = min(s.eval_samples, len(xt) // 2)
    if n < s.eval_samples:
        log.warning("evaluating %d samples, not %d: the test split has %d images and the FD "
                    "floor needs two disjoint halves", n, s.eval_samples, len(xt))
    t0 = time.perf_counter()
    ev = evaluate_prior(prior, ae, clf, xt, n=n, steps=s.sample_steps,
                        temperature=s.temperature, guidance=s.guidance, seed=s.seed,
                        guidance_interval=s.guidance_interval,
                        evidence_weight=s.evidence_weight, precision=s.precision)
    s.timings["evaluation_s"] = time.perf_counter() - t0
    smp, rec = ev["samples"], ev["autoencoder"]
    recon_pred = predict(clf, recon)  # every test image's reconstruction, classified once
    per_class = None
    if ev["labels"] is not None:
        nc = len(classes)
        by_sample, by_recon = ev["samples_per_class"], class_shares(recon_pred, yt, nc)
        per_class = {c: {"samples": a, "reconstructions": b}
                     for c, a, b in zip(classes, by_sample, by_recon)}
    return {"classifier_test_accuracy": meta["test_accuracy"],
            "reconstruction_class_accuracy": prediction_accuracy(recon_pred, yt),
            "eval_n": smp["n"],
            "sample_fd": smp["fd"], "fd_floor_real_vs_real": smp["fd_floor_real_vs_real"],
            "reconstruction_fd": rec["fd_recon"], "fd_ratio_samples_to_recon": ev["fd_ratio_to_recon"],
            "reconstruction_precision": rec["recon_precision"],
            "reconstruction_recall": rec["recon_recall"],
            "sample_precision": smp["precision"], "sample_recall": smp["recall"],
            "sample_class_accuracy": smp["class_accuracy"], "reconstruction_ssim": rec["ssim"],
            "dead_bit_fraction": rec["dead_bit_fraction"], "bit_entropy": rec["bit_entropy"]
            }, per_class


def colour_figures(recon, images) -> dict[str, float]:
    """The reconstructions' colour error (bld.core.metrics.colour_error), in CIE76 delta E."""
    from ..core.metrics import colour_error
    e = colour_error(recon, images)
    return {"reconstruction_delta_e": e.delta_e,
            "reconstruction_mean_colour_delta_e": e.mean_colour_delta_e}


def _classifier_words(c: dict[str, Any]) -> str:
    """Which FD classifier a report's figures were measured with."""
    kind = "the shipped one" if c.get("shipped") else "trained for this run"
    return f"{kind}, {c.get('path')} (test accuracy {c.get('test_accuracy', 0):.4f})"


# (label, the demo report's figure, the zoo's eval.json figure)
BESIDE = [("class accuracy", "sample_class_accuracy", "sample_class_accuracy"),
          ("recall", "sample_recall", "sample_recall"),
          ("sample FD", "sample_fd", "sample_fd"),
          ("reconstruction FD", "reconstruction_fd", "reconstruction_fd"),
          ("FD / reconstruction FD", "fd_ratio_samples_to_recon", "fd_ratio_to_recon"),
          ("PSNR (dB)", "reconstruction_psnr_db", "psnr")]


def shipped_model_for(source: str) -> dict[str, Any] | None:
    """The shipped model trained on dataset ``source`` whose figures were measured (its
    name and `bld eval` figures), to stand beside a demo run's; None where none ships."""
    from ..inference.zoo import list_models
    for m in list_models():
        if m.dataset == source and m.figures:
            return {"name": m.name, "figures": m.figures}
    return None


def _beside_shipped(f: dict[str, Any], shipped: dict[str, Any] | None) -> list[str]:
    """The run's figures beside the shipped model's, as Markdown lines ([] without one)."""
    if not shipped:
        return []
    g = shipped["figures"]
    lines = ["", "## This run beside the shipped model", "",
             f"What this machine's run reached, and what the method gives at full length: "
             f"`{shipped['name']}` (`bld models`), measured by `bld eval --model "
             f"{shipped['name']} -n {g.get('n')}` with the same shipped FD classifier.", "",
             f"| figure | this run (N = {f.get('eval_n')}) | {shipped['name']} |", "|---|---|---|"]
    for label, mine, theirs in BESIDE:
        a, b = f.get(mine), g.get(theirs)
        lines.append(f"| {label} | {'-' if a is None else f'{a:.4g}'} | "
                     f"{'-' if b is None else f'{b:.4g}'} |")
    return lines


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def schedule_name(prior: dict[str, Any]) -> str:
    """A report's noise schedule in words: "cosine", or "cosine shifted x2" (reports from
    before ``schedule_shift`` lack the key: no shift)."""
    shift = prior.get("schedule_shift", 1.0)
    return prior["schedule"] + ("" if shift == 1.0 else f" shifted x{shift:g}")


def report_markdown(r: dict[str, Any], sections: list[str] = ()) -> str:
    """The report as Markdown (``sections``: more lines, after the precision and the plan)."""
    f, t = r["figures"], r["times"]
    rows = (f"one row per class ({', '.join(r['classes'])})" if r["classes"]
            else "unconditional")
    lines = [
        f"# bld {r.get('command', 'demo')} report", "",
        f"bld {r['bld_version']}, torch {r['torch']}, {r['machine']}, device {r['device']}", "",
        f"Precision: {r['precision_reason']}.", "",
        *([f"FD classifier: {_classifier_words(r['classifier'])}.", ""]
          if r.get("classifier") else []),
        *([f"Time plan: {describe_plan(r['plan'])}.", ""] if r.get("plan") else []),
        *sections,
        "![samples](samples.png)", "",
        f"Samples: {rows}, "
        f"{r['settings']['sample_steps']} steps, guidance {r['settings']['guidance']}"
        + describe_guidance_interval(r['settings'].get('guidance_interval')) + ", "
        f"temperature {r['settings']['temperature']}, evidence weight "
        f"{r['settings']['evidence_weight']}, seed {r['settings']['seed']}.", "",
        "![reconstructions](reconstructions.png)", "",
        "Test images (top) and their reconstructions through the binary latent (bottom).", "",
        "![denoising trajectory](trajectory.png)", "",
        "The denoising trajectory: the decoded z_t after each sampling step, and how many "
        "bits each step flipped.", "",
        *(["![per-class rows](class_rows.png)", "",
           "Per class: real test images (left) and samples (right).", ""] if r["classes"] else []),
        "## Figures", "", "| figure | value |", "|---|---|",
    ]
    for k, v in f.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if r.get("per_class"):
        lines += ["", "## Per class", "",
                  "Share of the class's samples (N = "
                  f"{f.get('eval_n')}, classes cycled) the FD classifier assigns to it, and of its "
                  "test images' reconstructions.", "",
                  "| class | samples | reconstructions |", "|---|---|---|"]
        lines += [f"| {c} | {_share(v['samples'])} | {_share(v['reconstructions'])} |"
                  for c, v in r["per_class"].items()]
    lines += _beside_shipped(f, r.get("shipped_model"))
    lines += ["", "## Times (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    lines += ["", "## Models", "",
              f"- autoencoder: {r['autoencoder']['params_M']:.2f}M parameters, latent "
              f"{r['autoencoder']['latent_shape']} bits, " + (
                  f"not trained here: {r['autoencoder']['adopted']['from']}'s "
                  f"({r['autoencoder']['trained_steps']} steps)"
                  if r["autoencoder"].get("adopted") else
                  f"{steps_trained(r['autoencoder'])} x batch {r['autoencoder']['batch_size']}"),
              f"- prior: {r['prior']['params_M']:.2f}M parameters (width {r['prior']['width']}, "
              f"depth {r['prior']['depth']}), T = {r['prior']['timesteps']} "
              f"({schedule_name(r['prior'])}), {steps_trained(r['prior'])} x batch "
              f"{r['prior']['batch_size']}", "",
              "![autoencoder loss](loss_autoencoder.png)", "", "![prior loss](loss_prior.png)", ""]
    return "\n".join(lines)


def steps_trained(stage: dict[str, Any]) -> str:
    """'N steps', or 'N of M planned steps' where the stage's time box stopped it early (a
    report's ``trained_steps`` against its configured ``steps``)."""
    done, planned = stage.get("trained_steps", stage["steps"]), stage["steps"]
    return f"{done} steps" if done == planned else f"{done} of {planned} planned steps"


def trained_facts(run_dir: Path) -> dict[str, Any]:
    """The steps a stage really trained and, where it had a time budget, how its count
    moved (``timebox``: its seconds, the configured and final counts, the estimates); an
    autoencoder the demo did not train says where it came from (``adopted``)."""
    from ..core.checkpoint import load_checkpoint
    ck = load_checkpoint(run_dir)
    return {"trained_steps": ck.step, **{k: ck.metadata[k] for k in ("timebox", "adopted")
                                         if k in ck.metadata}}
