"""`bld demo`: the main job on the built-in default dataset (Fashion-MNIST), or on colour emoji.

Trains a binary autoencoder and a class-conditional Bernoulli prior, then writes a sample
grid (one row per class, 16 steps), a reconstruction grid, loss curves and a report
(Markdown + JSON) with the settings, times and figures. Each stage is checkpointed, so
``--resume`` picks up after the last finished stage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..core.config import ConfigError, load_config_dict, to_dict
from ..core.device import cpu_facts, cpu_name, cpu_seconds, load_average, resolve_precision
from ..core.plots import image_grid, save_image
from ..data import build_dataset
from ..models.sampling import DEFAULT_EVIDENCE_WEIGHT
from .demo_shipped import adopt_autoencoder, adopted_before, shipped_autoencoder
from .demo_report import (colour_figures, describe_plan, evaluate_demo, fd_classifier,
                          report_markdown, shipped_model_for, trained_facts)

log = logging.getLogger("bld")

# demo name -> (dataset source, preset name of both models, default output folder)
DEMO_DATASETS: dict[str, tuple[str, str, str]] = {
    "fashion-mnist": ("fashion-mnist", "fashion-mnist", "runs/demo"),
    "emoji": ("emoji-twitter", "emoji64", "runs/demo-emoji"),
    "faces": ("dicebear", "faces64", "runs/demo-faces"),
}
# FD classifier steps per demo dataset (1692 emoji training images need fewer than 60k; the
# faces' classifier names the style of all 2,000 test faces of the ten styles after 400
# steps, benchmarks/results/colour_datasets.md, and 0.999 of the six styles' 1,998)
CLASSIFIER_STEPS = {"fashion-mnist": 1200, "emoji": 600, "faces": 400}
# ... and on a folder of the user's (bld train): the emoji's count, chosen without a
# measurement on other folders
FOLDER_CLASSIFIER_STEPS = 600
# Where the budget would cut the presets' steps below this share, the demo trains a compact
# setting instead: a smaller prior (192 x 4, 0.37 of the preset's work per step) at a higher
# learning rate for its full steps, and a cheaper autoencoder. At the same compute it learns
# more than the presets cut short (benchmarks/budget_sweep.py, results/budget_sweep.md,
# N = 1000, one seed each: the compact prior reached class accuracy 0.874 / recall 0.286 /
# FD 77.3; 256 x 6 for 1000 steps, as much prior compute, 0.78-0.81 / 0.13-0.18).
COMPACT_BELOW = 0.75
# A first timing that would cut the presets to between this share of COMPACT_BELOW and
# COMPACT_BELOW is timed once more before the compact setting is chosen: a burst of other
# work can make one timing slow. A machine that times at under half the threshold would
# need a timing off by more than 2x to have deserved the presets, and gets the compact
# setting at once (a second timing takes as long as the first: 34 s of the Fashion-MNIST
# demo's 15 minutes on a 2-core AVX2-only CPU that cut the presets to 11%).
RETIME_WITHIN = 0.5
# The compact autoencoder for Fashion-MNIST: pixel-unshuffle 2 at the input (no convolution
# at 28 px) and widths 24 / 48, so 3200 steps take the time 1500 of the preset's widths took.
# In fp32 under the AVX2 restriction (benchmarks/ablations.py --name ablations_avx2, one
# seed): 268 s, PSNR 25.03 dB, reconstruction FD 25.0, recall 0.774, against 278 s, 24.16 dB,
# 33.1, 0.703 for 1500 steps of the preset's architecture. The faces keep their
# autoencoder's steps: their presets' prior is the compact size already, and (on the 16x16
# grid of 16 bits) a run whose compact setting cut the autoencoder to 60% (1537 steps) for
# 3125 prior steps reconstructed at 24.29 dB against 25.56 and sampled FD 349 / class
# accuracy 0.871 against 226 / 0.908 for the presets' 2680 + 2500 steps at the same sampler
# (AVX2, one seed each; results/guidance_faces_g16_strong_avx2.md). Other datasets keep
# their preset's architecture for 60% of its steps.
# demo dataset -> (architecture overrides, share of the preset's steps)
COMPACT_AUTOENCODER: dict[str, tuple[list[str], float]] = {
    "fashion-mnist": (["model.patch=2", "model.channels=24", "model.channel_mult=[1,2]"], 1.28),
    "faces": ([], 1.0)}
# The compact prior samples at temperature 1.3: on the two AVX2 demo runs' compact priors it
# lowered FD (89.1 -> 85.1, 79.6 -> 75.2) and raised recall (0.225 -> 0.238, 0.243 -> 0.300)
# at the same class accuracy; on the presets' better-trained prior it did not help (FD 57.5
# -> 58.1, 60.0 -> 59.3), so the presets keep 1 (benchmarks/guidance.py,
# results/guidance_temperature_*.md).
COMPACT_TEMPERATURE = 1.3
# The refit after the autoencoder may train the prior up to this share of its steps where
# the budget has room (the presets' or the compact one's). On the faces, 1.25 x the prior's
# steps lowered FD 205.3 -> 192.7 and raised class accuracy 0.925 -> 0.939 and recall 0.085
# -> 0.119 (benchmarks/grouped_head.py, arm `longer`, results/prior_arms_faces_avx2.md, N =
# 1000, one seed).
PRIOR_GROWTH = 1.25
# ... and up to this share with an autoencoder trained before (adopted or --autoencoder):
# all the seconds are the prior's, and the shipped faces64 prior, trained for 2 x the
# presets' 2500 steps, sampled at recall 0.377 (its card) where the 20-minute demo's
# 1570 steps gave 0.236 (docs/results.md).
ADOPTED_PRIOR_GROWTH = 2.0
# A plan that cannot train all the presets' steps adopts the shipped autoencoder of a
# built-in dataset (bld.app.demo_shipped): below 1.0, not only below COMPACT_BELOW. At 76% of
# the faces presets both stages were cut (autoencoder 1620 of 2040 steps, prior 1570 of
# 1815) and recall reached 0.236 (docs/results.md).
ADOPT_BELOW = 1.0


def compact_overrides(dataset: str, ae_steps: int) -> dict[str, list[str]]:
    """The compact setting of demo ``dataset``, as overrides on its presets (``ae_steps``:
    the autoencoder preset's steps)."""
    architecture, share = COMPACT_AUTOENCODER.get(dataset, ([], 0.6))
    # the faces' prior preset is the compact size already, with its own measured recipe
    prior = [] if dataset == "faces" else [
        "model.width=192", "model.heads=3", "model.depth=4", "optim.lr=0.0025",
        f"sample_temperature={COMPACT_TEMPERATURE}"]
    return {"autoencoder": architecture + [f"optim.steps={round(share * ae_steps)}"],
            "prior": prior}


@dataclass
class DemoSettings:
    out: Path = Path("runs/demo")
    dataset: str = "fashion-mnist"  # a key of DEMO_DATASETS
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (bld.core.device)
    minutes: float = 15.0  # time budget the plan fits the training steps to (0: no plan)
    seed: int = 0
    limit: int = 0
    data_dir: str = ""
    autoencoder: str = ""  # a trained autoencoder (shipped name or folder): train the prior only
    train_autoencoder: bool = False  # train one even where the plan would adopt the shipped one
    # another source than the demo dataset's (bld train: a prepared folder), with the presets
    # both models start from, its image size and colours (0: the source's own), overrides
    # per model (kind -> KEY=VALUE, before the plan's) and the demo dataset whose compact
    # setting applies ("": ``dataset``'s)
    source: str = ""
    preset: str = ""
    image_size: int = 0
    channels: int = 0
    overrides: dict[str, list[str]] = field(default_factory=dict)
    compact: str = ""
    ae_steps: int | None = None  # None: the preset's
    prior_steps: int | None = None
    sample_steps: int = 16
    guidance: float | None = None  # None: the prior preset's sample_guidance
    guidance_interval: tuple[float, float] | None = None  # None: the preset's
    temperature: float | None = None  # None: the preset's sample_temperature
    evidence_weight: float = DEFAULT_EVIDENCE_WEIGHT
    samples_per_class: int = 10
    eval_samples: int = 1000
    classifier_steps: int | None = None  # None: CLASSIFIER_STEPS[dataset]
    # the FD classifier: a folder (--classifier); "" = the one that ships for the dataset,
    # else (another data folder, or classifier_steps given) one trained first
    classifier: str = ""
    resume: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    reused_s: float = 0.0  # recorded seconds of stages a --resume reused (counted in total_s)
    plan: dict[str, Any] | None = None  # the time plan (bld.app.budget), kept in plan.json
    started: float | None = None  # perf_counter() when the job began (None: in run_demo)


def demo_source(s: DemoSettings) -> str:
    """The data source the demo trains on: ``s.source``, else its demo dataset's."""
    return s.source or DEMO_DATASETS[s.dataset][0]


def _common(s: DemoSettings) -> list[str]:
    """The overrides both models' presets get from the demo's settings."""
    common = [f"run.seed={s.seed}", f"run.device={s.device}", f"data.limit={s.limit}",
              f"run.precision={s.precision}", f"data.source={demo_source(s)}"]
    return common + ([f"data.data_dir={s.data_dir}"] if s.data_dir else [])


def stage_config(s: DemoSettings, kind: str, extra: list[str] = ()):
    """The training config the demo gives stage ``kind`` (autoencoder | prior) under the
    settings ``s`` and its plan (``extra``: the prior's autoencoder and latents)."""
    return _config(kind, s, _common(s) + list(extra) + _planned(s, kind))


def _stage_done(run_dir: Path) -> bool:
    from ..core.runfolder import find_latest
    if not (run_dir / "done.json").exists():
        return False
    return find_latest(run_dir) is not None


def _mark_done(run_dir: Path, info: dict[str, Any]) -> None:
    (run_dir / "done.json").write_text(json.dumps(info, indent=2))


def _config(kind: str, s: DemoSettings, overrides: list[str]):
    from ..core.config import config_from_dict
    preset = s.preset or DEMO_DATASETS[s.dataset][1]
    return config_from_dict(kind, load_config_dict(kind, preset,
                                                   s.overrides.get(kind, []) + overrides))


def _train_stage(kind: str, extra: list[str], out: Path, s: DemoSettings, what: str,
                 train_fn) -> tuple[Any, Path]:
    """Train one model from the demo dataset's preset (its config: `stage_config`, the one a
    model card's command is replayed through) unless a finished run is there."""
    cfg = stage_config(s, kind, extra)
    run_dir = out / kind
    t0 = time.perf_counter()
    reused = _stage_done(run_dir)
    before_s, longer = _longer_run(s, kind, cfg, run_dir) if reused else (0.0, False)
    if not reused or longer:
        log.info("%s (%d steps)", what, cfg.optim.steps)
        train_fn(cfg, run_dir, resume=s.resume and (run_dir / "latest").exists(),
                 allow_config_change=longer)
        _mark_done(run_dir, {"seconds": before_s + time.perf_counter() - t0})
        reused, s.reused_s = False, s.reused_s + before_s  # the earlier steps' seconds
    s.timings[f"{kind}_s"] = json.loads((run_dir / "done.json").read_text())["seconds"]
    s.reused_s += s.timings[f"{kind}_s"] if reused else 0.0
    return cfg, run_dir


def _longer_run(s: DemoSettings, kind: str, cfg, run_dir: Path) -> tuple[float, bool]:
    """(the finished stage's seconds, whether to train it on): ``--resume --prior-steps N``
    above the steps a finished prior reached continues it from its last checkpoint, its lr
    schedule recomputed over N (a warm restart). Any other change of its config is refused
    as a resumed run refuses it. (Not the autoencoder: the latents and the prior were made
    from its bits.)"""
    from types import SimpleNamespace

    from ..core import checkpoint as ckpt
    from ..core.config import config_from_dict
    from ..training.prior import resolve_prior_config
    from ..training.resume import config_differences
    asked = s.prior_steps if kind == "prior" else None
    if not s.resume or asked is None:
        return 0.0, False
    ck = ckpt.load_checkpoint(run_dir, kind=kind)
    if ck.step >= asked:
        return 0.0, False
    before = config_from_dict(kind, ck.config)  # settings added since take their defaults
    # what training fills in from the (same) autoencoder and data
    now = resolve_prior_config(cfg, SimpleNamespace(bits=before.model.bits,
                                                    grid=before.model.grid),
                               before.model.num_classes)
    diffs = [d for d in config_differences(to_dict(before), to_dict(now))
             if not d.startswith(("optim.steps:", "run.max_seconds:", "autoencoder:",
                                  "latents:"))]  # the last two: where the folder is now
    if diffs:
        raise ConfigError(f"--resume: the finished {kind} ({ck.step} steps) can only train on "
                          f"to more steps with the same settings; these differ: "
                          f"{'; '.join(diffs)}")
    log.info("--resume: the %s trained %d steps; training on to %d (its lr schedule recomputed "
             "over %d steps)", kind, ck.step, asked, asked)
    return json.loads((run_dir / "done.json").read_text())["seconds"], True


def _plan_steps(s: DemoSettings, out: Path, common: list[str], train_set, n_test: int,
                device, precision, spent_s: float = 0.0, rates=None) -> None:
    """Fit the training steps to ``s.minutes`` (bld.app.budget): calibrate and plan, counting the
    ``spent_s`` seconds already taken (the FD classifier, trained first). The plan is kept in
    ``plan.json``, so a --resume trains to the counts the interrupted run planned."""
    from ..training.prior import resolve_prior_config
    from .budget import (calibrate, calibrate_autoencoder, calibrate_prior, fastest, guided_share,
                         make_plan)
    record = out / "plan.json"
    if s.resume and record.exists():
        s.plan = json.loads(record.read_text())
    elif s.minutes > 0:
        ae_cfg, pr_cfg = _config("autoencoder", s, common), _config("prior", s, common)
        classes = len(getattr(train_set, "classes", ()))
        pr_cfg = resolve_prior_config(pr_cfg, ae_cfg.model, classes)
        log.info("calibrating: timing each stage's work on this machine (%s)", precision.reason)
        rates = rates or calibrate(ae_cfg, pr_cfg, train_set, pr_cfg.model.num_classes,
                                   device, precision)
        nc = max(pr_cfg.model.num_classes, 1)
        work = dict(n_train=len(train_set), n_test=n_test,
                    eval_samples=min(s.eval_samples, n_test // 2),
                    figure_samples=(s.samples_per_class + 6) * nc + 4,
                    snapshot_samples=8 * min(nc, 10) * (1 + pr_cfg.optim.steps //
                                                       max(pr_cfg.run.sample_every, 1)),
                    sample_steps=s.sample_steps,
                    classifier_steps=0,  # trained before the plan: counted in spent_s
                    guided_share=guided_share(
                        s.sample_steps, pr_cfg.diffusion.timesteps,
                        pr_cfg.sample_guidance if s.guidance is None else s.guidance,
                        s.guidance_interval or tuple(pr_cfg.sample_guidance_interval)))
        def plan_presets(rates):
            return make_plan(rates, s.minutes, preset_ae_steps=ae_cfg.optim.steps,
                             preset_prior_steps=pr_cfg.optim.steps, precision=precision.name,
                             ae_steps=s.ae_steps, prior_steps=s.prior_steps,
                             spent_s=spent_s, **work)
        plan = plan_presets(rates)
        # no step counts from the user (an adopted autoencoder's 0 is not the user's)
        free = (s.ae_steps is None or bool(s.autoencoder)) and s.prior_steps is None
        if RETIME_WITHIN * COMPACT_BELOW <= plan.scale < COMPACT_BELOW and free:
            # one noisy timing must not switch the variant: time again, keep the faster
            log.info("the presets would be cut to %.0f%% of their steps: timing once more "
                     "before switching to the compact setting", 100 * plan.scale)
            rates = fastest(rates, calibrate(ae_cfg, pr_cfg, train_set,
                                             pr_cfg.model.num_classes, device, precision))
            plan = plan_presets(rates)
        shipped = shipped_autoencoder(s, DEMO_DATASETS)
        if plan.scale < ADOPT_BELOW and free and not s.autoencoder and shipped:
            adopt_autoencoder(s, out, demo_source(s), stage_config, shipped)  # seconds: prior
            return _plan_steps(s, out, common, train_set, n_test, device, precision, spent_s, rates)
        if plan.scale < COMPACT_BELOW and free:
            over = compact_overrides(s.compact or s.dataset, ae_cfg.optim.steps)
            over["autoencoder"] = [] if s.autoencoder else over["autoencoder"]
            cut = plan.scale
            compact_ae = _config("autoencoder", s, common + over["autoencoder"])
            if compact_ae.model != ae_cfg.model:  # another architecture: time it too
                rates = calibrate_autoencoder(rates, compact_ae, train_set, device, precision)
            pr_c = resolve_prior_config(_config("prior", s, common + over["prior"]),
                                        compact_ae.model, classes)
            rates = calibrate_prior(rates, pr_c, pr_c.model.num_classes, device, precision)
            full = plan.full_minutes
            plan = make_plan(rates, s.minutes, preset_ae_steps=compact_ae.optim.steps,
                             preset_prior_steps=pr_c.optim.steps, precision=precision.name,
                             ae_steps=s.ae_steps, spent_s=spent_s, say_full=False, **work)
            plan.variant, plan.overrides, plan.full_minutes = "compact", over, full
            plan.max_prior_steps = round(PRIOR_GROWTH * pr_c.optim.steps)
            plan.note = (f"the presets would be cut to {cut:.0%} of their steps (all of them "
                         f"need --minutes {full:g}), so the compact setting trains instead"
                         + (f"; {plan.note}" if plan.note else ""))
        elif free:
            growth = ADOPTED_PRIOR_GROWTH if s.autoencoder else PRIOR_GROWTH
            plan.max_prior_steps = round(growth * plan.preset_prior_steps)
        s.plan = plan.as_dict()
        record.write_text(json.dumps(s.plan, indent=2))
    if s.plan is not None:
        log.info("%s", describe_plan(s.plan))


def _replan_prior(s: DemoSettings, out: Path, elapsed_s: float) -> None:
    """Fit the prior's steps again to what is left of the budget (once, before it trains)."""
    from .budget import Plan, replan_prior
    if s.plan is None or s.plan.get("replanned_after_s") is not None or \
            s.prior_steps is not None or (out / "prior" / "latest").exists():
        return
    s.plan = replan_prior(Plan.from_dict(s.plan), elapsed_s).as_dict()
    (out / "plan.json").write_text(json.dumps(s.plan, indent=2))
    log.info("%s", describe_plan(s.plan))


def _planned(s: DemoSettings, kind: str) -> list[str]:
    """The plan's overrides of ``kind`` (autoencoder | prior) and its step count (the
    user's, where given). A planned count comes with the stage's predicted seconds as its
    ``run.max_seconds``: the stage re-estimates its count as it runs and keeps to its share
    of the budget, however the machine's speed moves (bld.training.timebox)."""
    key = "ae_steps" if kind == "autoencoder" else "prior_steps"
    plan = s.plan or {}
    steps = getattr(s, key) or plan.get(key)
    seconds = plan.get("predicted_s", {}).get(kind) if getattr(s, key) is None else None
    return plan.get("overrides", {}).get(kind, []) + \
        ([f"optim.steps={steps}"] if steps else []) + \
        ([f"run.max_seconds={seconds:.1f}"] if seconds else [])


def run_demo(s: DemoSettings, before_plan=None) -> dict[str, Any]:
    """Run the demo under settings ``s``; ``before_plan(train_set, test_set, classifier,
    device, precision)``, where given, runs after the FD classifier and before the time
    plan, whose budget counts its seconds (bld train probes the autoencoder's capacity
    there and sets ``s.overrides``). -> the report."""
    from ..core.device import resolve_device
    from ..core.loading import load_autoencoder, load_prior
    from ..data import LimitedDataset
    from ..inference.generate import encode_dataset, reconstruct
    from ..inference.pipeline import BinaryLatentDiffusionPipeline
    from ..training.loop import train_autoencoder, train_prior

    if s.dataset not in DEMO_DATASETS and not s.source:
        raise ConfigError(f"unknown demo dataset {s.dataset!r}; choose one of {sorted(DEMO_DATASETS)}")
    source = demo_source(s)
    out = s.out
    if out.exists() and any(out.iterdir()) and not s.resume:
        raise ConfigError(f"{out} is not empty; pass --resume to reuse its finished stages "
                          "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    t_start = s.started or time.perf_counter()
    cpu_start, load_start = cpu_seconds(), load_average()
    common = _common(s)
    size = dict(image_size=s.image_size or None, channels=s.channels or None,
                data_dir=s.data_dir or None)
    test_set = build_dataset(source, split="test", **size)  # fail early
    train_set = build_dataset(source, split="train", **size)
    if s.limit:
        train_set = LimitedDataset(train_set, s.limit)
    clf = (fd_classifier(s, out, device, source,
                         CLASSIFIER_STEPS.get(s.dataset, FOLDER_CLASSIFIER_STEPS))
           if s.eval_samples > 0 else None)
    if before_plan is not None:
        before_plan(train_set, test_set, clf, device, precision)
    s.autoencoder = s.autoencoder or adopted_before(out, s.resume)
    if s.autoencoder:  # trained before: a finished stage 1, its seconds go to the prior
        adopt_autoencoder(s, out, source, stage_config)
    _plan_steps(s, out, common, train_set, len(test_set), device, precision,
                spent_s=time.perf_counter() - t_start + s.reused_s)

    # 1. binary autoencoder
    ae_cfg, ae_dir = _train_stage("autoencoder", [], out, s, "[1/4] training the binary "
                                  "autoencoder", train_autoencoder)
    ae = load_autoencoder(ae_dir, device)

    # 2. latent cache
    cache = out / "latents_train.safetensors"
    t0 = time.perf_counter()
    encode_record = out / "encode.json"
    if cache.exists() and encode_record.exists():
        s.timings["encode_s"] = json.loads(encode_record.read_text())["seconds"]
        s.reused_s += s.timings["encode_s"]
    else:
        log.info("[2/4] encoding %d training images to packed bits", len(train_set))
        encode_dataset(ae, train_set, cache, device=device, precision=s.precision,
                       metadata={"source": source})
        s.timings["encode_s"] = time.perf_counter() - t0
        encode_record.write_text(json.dumps({"seconds": s.timings["encode_s"]}))

    # 3. class-conditional prior
    _replan_prior(s, out, time.perf_counter() - t_start + s.reused_s)
    pr_cfg, pr_dir = _train_stage("prior", [f"autoencoder={ae_dir}", f"latents={cache}"], out,
                                  s, "[3/4] training the class-conditional prior", train_prior)
    prior = load_prior(pr_dir, device)
    nc = prior.config.model.num_classes  # 0: unconditional (a folder without classes)
    if s.guidance is None:
        s.guidance = pr_cfg.sample_guidance if nc else 0.0
    if s.guidance_interval is None:
        s.guidance_interval = tuple(pr_cfg.sample_guidance_interval)
    if s.temperature is None:
        s.temperature = pr_cfg.sample_temperature

    # 4. figures
    log.info("[4/4] sampling and writing the report")
    pipe = BinaryLatentDiffusionPipeline(ae, prior, asdict(ae_cfg.data), s.precision)
    k = s.samples_per_class
    sampling = dict(steps=s.sample_steps, guidance=s.guidance, temperature=s.temperature,
                    guidance_interval=s.guidance_interval, evidence_weight=s.evidence_weight,
                    seed=s.seed)
    res = pipe(class_labels=torch.arange(nc).repeat_interleave(k) if nc else None,
               n=k * (nc or 4), output_type="pt", **sampling)
    save_image(image_grid(res.images, nrow=k), out / "samples.png", scale=2)
    from ..data import dataset_tensors
    from .figures import class_rows_figure, trajectory_figure
    xt, yt = dataset_tensors(test_set)
    trajectory_figure(pipe, out / "trajectory.png", **sampling)
    if nc:
        class_rows_figure(pipe, xt, yt, out / "class_rows.png", **sampling)
    rec = reconstruct(ae, xt)
    save_image(image_grid(torch.cat([xt[:16], rec.recon[:16]]), nrow=16), out / "reconstructions.png",
               scale=2)
    for name in ("autoencoder", "prior"):
        src = out / name / "loss_curves.png"
        if src.exists():
            shutil.copyfile(src, out / f"loss_{name}.png")

    figures: dict[str, Any] = {
        "reconstruction_l1": rec.l1, "reconstruction_mse": rec.mse,
        "reconstruction_psnr_db": rec.psnr, "test_images": len(xt),
        **colour_figures(rec.recon, xt),
        "sampling_seconds_per_image": res.seconds / len(res.images),
    }
    classes = list(prior.classes) or list(test_set.classes)
    per_class = None
    if s.eval_samples > 0:
        evaluated, per_class = evaluate_demo(prior, ae, clf, xt, yt, rec.recon, s, classes)
        figures.update(evaluated)
    # a --resume run counts the recorded times of the stages it reused; its CPU seconds
    # would cover only this process, so they are left out then
    s.timings["total_s"] = time.perf_counter() - t_start + s.reused_s
    if s.reused_s == 0:
        s.timings["cpu_s"] = cpu_seconds() - cpu_start
    report = {
        "bld_version": __version__, "torch": torch.__version__,
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads",
        # other work on the machine stretches the wall time: the load average says how much
        "load_average_1min_start_end": [load_start, load_average()],
        "device": str(device),
        "cpu": cpu_facts(),
        **precision.as_dict(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()
                     if k not in ("timings", "reused_s", "plan", "started")},
        "plan": s.plan,
        "resumed_stages_s": s.reused_s,
        "autoencoder": {"params_M": sum(p.numel() for p in ae.parameters()) / 1e6,
                        "latent_shape": list(ae.config.latent_shape),
                        "steps": ae_cfg.optim.steps, "batch_size": ae_cfg.optim.batch_size,
                        **trained_facts(ae_dir),
                        "config": to_dict(ae_cfg)},  # the whole training config, as trained
        "prior": {"params_M": sum(p.numel() for p in prior.model.parameters()) / 1e6,
                  "width": prior.config.model.width, "depth": prior.config.model.depth,
                  "conditioning": prior.config.model.conditioning,
                  "timesteps": prior.config.diffusion.timesteps,
                  "schedule": prior.config.diffusion.schedule,
                  "schedule_shift": prior.config.diffusion.schedule_shift,
                  "steps": pr_cfg.optim.steps, "batch_size": pr_cfg.optim.batch_size,
                  **trained_facts(pr_dir),
                  "config": to_dict(pr_cfg)},
        "times": s.timings, "figures": figures,
        "classifier": None if clf is None else clf[1],  # the FD instrument the figures use
        "shipped_model": shipped_model_for(source),  # its figures, beside this run's
        **({"per_class": per_class} if per_class else {}),
        "dataset": s.dataset, "source": source, "classes": classes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report))
    log.info("demo finished in %.1f min: %s", s.timings["total_s"] / 60, out / "report.md")
    return report
