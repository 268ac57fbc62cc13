"""`bld doctor`: what this machine is to the project, on one screen (or as JSON).

The machine (CPU, ISA kind, native bf16, matmul GFLOP/s, the precision ``auto`` picks and why,
threads, versions, GPUs), datasets (where, or how to install), models shipped in ``bld/zoo``,
and what ``bld demo --minutes 15`` / ``20`` would train: the demo's plan (bld.app.budget, its
compact setting included) at its calibration's units timed now, once each (the demo: best of
3 to 6), a training step on a quarter batch, scaled (its update not): small batches run less
well, so the forecast leans long. No demo is timed past ``TIME_LIMIT_S`` unless asked for."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..core.config import config_from_dict, load_config_dict
from ..evaluation.evaluate import shipped_classifier
from ..core.device import (ISA_LIMITS, Precision, cpu_bf16_facts, cpu_name, matmul_rates,
                           resolve_device, resolve_precision)
from . import budget
from .demo import (CLASSIFIER_STEPS, COMPACT_BELOW, DEMO_DATASETS, RETIME_WITHIN, DemoSettings,
                   compact_overrides)

MINUTES = (15, 20)  # the budgets forecast
BATCH_SHARE = 0.25  # of a training batch timed, scaled to the whole
# the doctor's own seconds for timing: with the interpreter's start (about 2.5 s) and a
# unit already running at the limit, the whole command stays under 10 s
TIME_LIMIT_S = 5.0
ISA_FLAGS = (("amx_bf16", "amx-bf16"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"),
             ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse4.2"), ("asimd", "neon"))
_deadline = [math.inf, 0.0]  # no timed call starts past [0] less the slowest call yet, [1]
DEMO_DATA = {"fashion-mnist": "fashion-mnist", "faces": "faces", "emoji": "emoji-twitter"}


def machine(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """ISA kind: torch's capability (ATEN_CPU_CAPABILITY lowers it), ``-bf16`` where oneDNN has
    native bf16 (ONEDNN_MAX_CPU_ISA takes it away); the CPU's: the best its flags name."""
    cap, native = cpu_bf16_facts()
    text = Path(cpuinfo).read_text() if Path(cpuinfo).is_file() else ""
    flags = next((set(x.split(":", 1)[1].split()) for x in text.splitlines()
                  if x.startswith(("flags", "Features"))), set())
    f32, b16 = matmul_rates(n=256, seconds=0.15)  # 512: a quarter second without native bf16
    auto, cuda = resolve_precision("auto", "cpu"), torch.cuda
    gpus = [{"index": i, "name": cuda.get_device_name(i), "bf16": cuda.get_device_capability(i)
             >= (8, 0), "memory_gib": cuda.get_device_properties(i).total_memory / 2 ** 30}
            for i in range(cuda.device_count() if cuda.is_available() else 0)]
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch_capability": cap, "native_bf16": native,
            "isa_kind": cap.lower() + ("-bf16" if native else ""), "hardware_isa": next(
                (kind for flag, kind in ISA_FLAGS if flag in flags), "unknown"),
            "restricted_by": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ},
            "matmul_n": 256, "matmul_gflops_fp32": f32, "matmul_gflops_bf16": b16,
            "precision_auto": auto.name, "precision_reason": auto.reason,
            "torch": torch.__version__, "bld": __version__, "gpus": gpus}


def datasets() -> list[dict[str, Any]]:
    """Each dataset's folder (its default place), whether it is there, and how to install it."""
    from ..data import (DatasetNotFoundError, default_dicebear_dir, default_emoji_dir,
                        default_openmoji_dir, fashion_mnist, find_fashion_mnist)
    try:
        fm, found = find_fashion_mnist(), True
    except DatasetNotFoundError:
        fm = Path(os.environ.get("BLD_FASHION_MNIST") or fashion_mnist.FASHION_MNIST_DIRS[0])
        found = False
    return [{"name": name, "path": str(folder), "install": install,
             "present": found if folder is fm else folder.is_dir() and any(folder.iterdir())}
            for name, folder, install in (  # a folder's test: build_dataset's own
                ("fashion-mnist", fm, "sudo apt-get install dataset-fashion-mnist"),
                ("faces", default_dicebear_dir(64), "bld prepare-dicebear"),
                ("emoji-twitter", default_emoji_dir("twitter"), "bld prepare-emoji"),
                ("emoji-google", default_emoji_dir("google"), "bld prepare-emoji --vendor google"),
                ("openmoji", default_openmoji_dir(256), "bld prepare-openmoji"))]


def shipped() -> dict[str, Any]:
    """The model zoo (bld.inference.zoo): its folder, each model (name, dataset, size,
    measured figures) and the datasets whose FD classifier ships."""
    from ..inference import zoo
    models = [{"name": m.name, "dataset": m.dataset, "size_mb": m.size_mb,
               "figures": m.figures, "summary": m.summary()} for m in zoo.list_models()]
    return {"folder": str(zoo.ZOO_DIR), "models": models, "classifiers": zoo.classifier_names()}


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    if (t0 := time.perf_counter()) + _deadline[1] > _deadline[0]:
        raise TimeoutError
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _deadline[1] = max(_deadline[1], (seconds := time.perf_counter() - t0))
    return seconds


def _step_s(model, loss: Callable[[int], torch.Tensor], batch: int, device, ema=True) -> float:
    """A step at ``batch``: ``loss(n)``'s backward on a share, scaled, + the update (``ema``)."""
    opt, shadow = torch.optim.AdamW(model.parameters()), copy.deepcopy(model)
    n = max(1, round(batch * BATCH_SHARE))

    def grads():
        opt.zero_grad(set_to_none=True)
        loss(n).backward()
    update = (lambda: budget._optimizer_step(model, shadow, opt)) if ema else opt.step
    _seconds(grads, device), _seconds(update, device)  # warm-up
    return _seconds(grads, device) * batch / n + _seconds(update, device)


def quick_rates(ae_cfg, pr_cfg, train_set, num_classes: int, device: torch.device,
                precision: Precision, units=("autoencoder", "prior", "classifier")
                ) -> budget.Rates:
    """budget.calibrate's units of ``units`` (others 0) timed once each, on a batch share."""
    from ..evaluation.classifier import Classifier, ClassifierConfig
    from ..models.autoencoder import AutoencoderLoss, BinaryAutoencoder
    from ..models.denoiser import Denoiser
    from ..models.diffusion import BernoulliDiffusion
    from ..models.sampling import sample
    t_start, amp, g = time.perf_counter(), precision.autocast(device), torch.Generator()
    torch.manual_seed(0), g.manual_seed(0)
    ae_step = prior_step = encode = recon = sample_step = clf_step = 0.0
    if "autoencoder" in units:
        b = min(ae_cfg.optim.batch_size, len(train_set))
        ae = BinaryAutoencoder(ae_cfg.model).to(device)
        loss_fn = AutoencoderLoss(ae_cfg.loss, ae_cfg.model.in_channels).to(device)

        def ae_loss(n):
            xb = torch.stack([train_set[i][0] for i in range(n)]).to(device)
            with amp:
                out = ae(xb)
            return loss_fn.generator_loss(xb, out, 0, ae.last_layer, adaptive=True).loss
        ae_step = _step_s(ae, ae_loss, b, device)
        share = max(1, round(b * BATCH_SHARE))
        x = torch.stack([train_set[i][0] for i in range(share)]).to(device)
        with torch.no_grad():
            with amp:
                encode = _seconds(lambda: ae.eval().encode(x, deterministic=True), device) / len(x)
            recon = _seconds(lambda: ae(x, deterministic=True), device) / len(x)
    if "prior" in units:
        m, b = pr_cfg.model, pr_cfg.optim.batch_size
        prior, diffusion = Denoiser(m).to(device), BernoulliDiffusion(pr_cfg.diffusion).to(device)
        shape = (m.bits, m.grid, m.grid)

        def prior_loss(n):  # random bits (unpacking the cache's bytes costs microseconds)
            z0 = torch.randint(0, 2, (n, *shape), generator=g).float().to(device)
            y = torch.arange(n, device=device) % num_classes if num_classes else None
            with amp:
                return diffusion.training_losses(prior, z0, y, generator=g).loss
        prior_step = _step_s(prior, prior_loss, b, device)
        n = max(1, round(b * BATCH_SHARE) // (2 if num_classes else 1))
        ys = torch.arange(n, device=device) % num_classes if num_classes else None

        def two_steps():
            with amp:
                sample(prior.eval(), diffusion, (n, *shape), steps=2, y=ys,
                       guidance=float(ys is not None), null_label=prior.null_label,
                       device=device, generator=torch.Generator(device).manual_seed(0))
        sample_step = _seconds(two_steps, device) / (2 * n)
    if "classifier" in units:  # budget's: batch 128, fp32
        x = torch.stack([train_set[i][0] for i in range(min(128, len(train_set)))]).to(device)
        net = Classifier(ClassifierConfig(x.shape[1], x.shape[-1], max(num_classes, 2))).to(device)
        y = torch.arange(len(x), device=device) % 2
        clf_step = _step_s(net, lambda n: torch.nn.functional.cross_entropy(net(x[:n]), y[:n]),
                           len(x), device, ema=False)
    return budget.Rates(ae_step, prior_step, encode, recon, sample_step, clf_step,
                        time.perf_counter() - t_start)


def forecast(name: str, present: bool, device: torch.device, precision: Precision,
             time_units: Callable = quick_rates) -> dict[str, Any]:
    """Demo ``name``'s plans for ``MINUTES`` as bld.app.demo makes them, at rates timed now."""
    from ..data import FASHION_MNIST_CLASSES, TensorImageDataset, build_dataset
    from ..data.dicebear import DICEBEAR_DEFAULT_STYLES, DICEBEAR_PER_STYLE, is_test_seed
    from ..training.prior import resolve_prior_config
    source, preset, _ = DEMO_DATASETS[name]
    sty, t = len(DICEBEAR_DEFAULT_STYLES), sum(map(is_test_seed, range(DICEBEAR_PER_STYLE)))
    known = {"fashion-mnist": (60000, 10000, len(FASHION_MNIST_CLASSES)),  # before installed;
             "faces": (2 * sty * (DICEBEAR_PER_STYLE - t), sty * t, sty)}  # faces twice: hflip
    if present:
        train, test = (build_dataset(source, split) for split in ("train", "test"))
        n_train, n_test, classes, data = len(train), len(test), len(train.classes), "installed"
    elif name not in known:
        return {"skipped": "not installed, so its size is not known"}
    else:
        (n_train, n_test, classes), data = known[name], "random images (not installed)"

    def configs(over):  # the demo's configs of both models
        ae, pr = (config_from_dict(k, load_config_dict(k, preset, [f"data.source={source}",
                                                                    *over.get(k, [])]))
                  for k in ("autoencoder", "prior"))
        return ae, resolve_prior_config(pr, ae.model, classes)

    def demo_calibration_s(r, ae=True, classifier=True):  # budget.calibrate's: each step 6
        return (ae * (6 * r.ae_step_s + 768 * (r.encode_image_s + r.recon_image_s))  # times,
                + 6 * r.prior_step_s + 1500 * r.sample_image_step_s  # 256 images coded and
                + classifier * 6 * r.classifier_step_s)  # 250 sampled x 2 steps, 3 times
    ae_cfg, pr_cfg = configs({})
    if not present:
        m = ae_cfg.model
        train = TensorImageDataset(torch.randint(0, 256, (128, m.in_channels, m.image_size,
                                   m.image_size), dtype=torch.uint8), torch.arange(128) % classes)
    r = time_units(ae_cfg, pr_cfg, train, pr_cfg.model.num_classes, device, precision)
    timing_s, r = r.calibration_s, replace(r, calibration_s=demo_calibration_s(r))
    s, nc, ps = DemoSettings(), max(pr_cfg.model.num_classes, 1), pr_cfg.optim.steps
    work = dict(n_train=n_train, n_test=n_test, eval_samples=min(s.eval_samples, n_test // 2),
                figure_samples=(s.samples_per_class + 6) * nc + 4,
                snapshot_samples=8 * min(nc, 10) * (1 + ps // max(pr_cfg.run.sample_every, 1)),
                sample_steps=s.sample_steps,
                # a shipped FD classifier is not trained: the demo's plan spends nothing on it
                classifier_steps=0 if shipped_classifier(DEMO_DATASETS[name][0])
                else CLASSIFIER_STEPS[name],
                guided_share=budget.guided_share(s.sample_steps, pr_cfg.diffusion.timesteps,
                                                 pr_cfg.sample_guidance,
                                                 tuple(pr_cfg.sample_guidance_interval)))
    every = budget.predict(r, ae_steps=ae_cfg.optim.steps, prior_steps=ps, **work)["total"]
    plans, rc = {}, None
    for minutes in MINUTES:
        plan = budget.make_plan(r, minutes, preset_ae_steps=ae_cfg.optim.steps,
                                preset_prior_steps=ps, precision=precision.name, **work)
        full = plan.full_minutes
        if plan.scale < COMPACT_BELOW:  # the demo times the compact models and plans them
            if rc is None:
                ae_c, pr_c = configs(compact_overrides(name, ae_cfg.optim.steps))
                new_ae = ae_c.model != ae_cfg.model
                rc = time_units(ae_c, pr_c, train, pr_c.model.num_classes, device, precision,
                                ("autoencoder", "prior") if new_ae else ("prior",))
                timing_s, extra = timing_s + rc.calibration_s, demo_calibration_s(
                    rc, ae=new_ae, classifier=False)
                rc = replace(r, **{k: v for k, v in asdict(rc).items() if v})
            retimed = plan.scale >= RETIME_WITHIN * COMPACT_BELOW  # the demo calibrates twice
            plan = budget.make_plan(replace(rc, calibration_s=r.calibration_s * (1 + retimed)
                                            + extra), minutes, preset_ae_steps=ae_c.optim.steps,
                                    preset_prior_steps=pr_c.optim.steps, say_full=False,
                                    precision=precision.name, **work)
            plan.variant = "compact"
        plans[str(minutes)] = {k: getattr(plan, k) for k in (
            "variant", "scale", "ae_steps", "preset_ae_steps", "prior_steps",
            "preset_prior_steps")} | {"predicted_minutes": plan.predicted_s["total"] / 60}
    return {"data": data, "n_train": n_train, "n_test": n_test, "classes": classes,
            "rates": asdict(r), "timing_s": timing_s, "presets_minutes": every / 60,
            "full_minutes": full, "plans": plans}


def collect(demos: list[str] | None = None, *, time_units: Callable | None = None,
            limit_s: float = TIME_LIMIT_S) -> dict[str, Any]:
    """The report; forecasts of ``demos`` (no time limit), else of each that fits ``limit_s``."""
    t_start, report = time.perf_counter(), {"machine": machine(), "datasets": datasets()}
    report["zoo"] = shipped()
    precision = resolve_precision("auto", device := resolve_device("auto"))
    present, out = {d["name"]: d["present"] for d in report["datasets"]}, {}
    _deadline[:] = [t_start + limit_s if demos is None else math.inf, 0.0]
    try:
        for name in demos or DEMO_DATA:
            try:
                out[name] = forecast(name, present[DEMO_DATA[name]], device, precision,
                                     time_units or quick_rates)
            except TimeoutError:  # from `_seconds`
                out[name] = {"skipped": f"not timed in the doctor's {limit_s:g} s (a busy or "
                                        f"slow machine): bld doctor --dataset {name}"}
    finally:
        _deadline[:] = [math.inf, 0.0]
    return report | {"demos": {"device": str(device), "precision": precision.name,
                               "forecasts": out}, "seconds": time.perf_counter() - t_start}


def render(r: dict[str, Any]) -> str:
    """The report as plain aligned text, one screen."""
    m, d, load = r["machine"], r["demos"], r["machine"]["load_average_1min"]
    limits = ", ".join(f"{k}={v}" for k, v in m["restricted_by"].items())
    lines = [f"bld {m['bld']} doctor, torch {m['torch']}", "machine",
             f"  {'cpu':<16}{m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['threads']}"
             + ("" if load is None else f", load {load:.1f}"
                + (" (busy: timings slow down)" if load > 0.5 * m["cpu_count"] else "")),
             f"  {'isa kind':<16}{m['isa_kind']} (torch {m['torch_capability']}, oneDNN bf16 "
             f"{'native' if m['native_bf16'] else 'not native'}; CPU flags: {m['hardware_isa']}"
             + (f"; restricted by {limits}" if limits else "") + ")",
             f"  {'matmul ' + str(m['matmul_n']):<16}fp32 {m['matmul_gflops_fp32']:.1f} GFLOP/s, "
             + f"bf16 {m['matmul_gflops_bf16']:.1f} GFLOP/s",
             f"  {'precision auto':<16}{m['precision_reason']}"]
    lines += [f"  {'gpu ' + str(g['index']):<16}{g['name']}, {g['memory_gib']:.0f} GiB, bf16 "
              f"{'yes' if g['bf16'] else 'no'}" for g in m["gpus"]] or [f"  {'gpu':<16}none"]
    lines += ["datasets"] + [f"  {s['name']:<16}" + (s["path"] if s["present"] else
                             f"missing ({s['path']}): {s['install']}") for s in r["datasets"]]
    lines += [f"shipped models ({r['zoo']['folder']})"] + (
        [f"  {z['summary']}" for z in r["zoo"]["models"]] or ["  none shipped yet"])
    lines.append(f"  {'FD classifiers':<16}"
                 + (", ".join(r["zoo"]["classifiers"]) or "none (each demo trains its own)"))
    lines.append(f"demo forecasts on {d['device']} in {d['precision']} (quick timing: leans long)")
    for name, f in d["forecasts"].items():
        lines.append(f"  {name:<16}" + (f["skipped"] if "skipped" in f else
                     f"all presets' steps {f['presets_minutes']:.0f} min: --minutes "
                     f"{f['full_minutes']} (timed in {f['timing_s']:.1f} s"
                     + ("" if f["data"] == "installed" else "; on " + f["data"]) + ")"))
        lines += [f"    --minutes {minutes:<4}{p['variant']}: autoencoder {p['ae_steps']}/"
                  f"{p['preset_ae_steps']}, prior {p['prior_steps']}/{p['preset_prior_steps']}"
                  f" steps (scale {p['scale']:.2f}), ~{p['predicted_minutes']:.1f} min"
                  for minutes, p in f.get("plans", {}).items()]
    return "\n".join(lines + [f"({r['seconds']:.1f} s)"])
