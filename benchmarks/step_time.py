"""Seconds per training step of the demo's models on this CPU, and what else a training loop
spends: eager against `channels_last` and `torch.compile` (inductor), AdamW against Muon
(`optim.optimizer=muon`), one thread against two; then the loop's own overhead (reading a
batch, a snapshot, a checkpoint) beside the step it comes with.

The models are those `bld demo` trains on a slow CPU: Fashion-MNIST's compact setting (the
autoencoder at 24 / 48 channels after a pixel-unshuffle, the 192 x 4 prior) and the faces'
presets (16x16 grid of 32 bits, the 192 x 4 prior). A step is the demo calibration's step
(bld.app.budget): read the batch item by item, forward, loss, backward, clip, optimizer
step, EMA, in fp32 (what `auto` picks on a CPU without native bf16). Every figure is the
fewest seconds over repeats after a warm-up (compiling happens in the warm-up; its seconds
are reported apart). Quality does not enter here: channels_last and compile compute the same
step; whether Muon learns more per second is measured by
`benchmarks/grouped_head.py --arms muon ...` on a demo run.

    python benchmarks/step_time.py --name step_time_avx2_epyc     # ~6-10 min on 2 cores
    python benchmarks/step_time.py --quick
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path

import common  # noqa: I001  (benchmarks/common.py; first, so the path fix applies)
import torch

log = logging.getLogger("bench")


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--name", default="step_time", help="file name of the report")
    p.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile arms")
    return p.parse_args()


def _configs(dataset: str, quick: bool):
    """(autoencoder config, prior config resolved to its latents, training images) of the
    demo's slow-CPU setting of ``dataset``."""
    from bld.app.demo import DemoSettings, _config, compact_overrides
    from bld.data import build_dataset
    from bld.training.prior import resolve_prior_config
    s = DemoSettings(dataset=dataset, device="cpu", precision="fp32")
    common_flags = [f"data.source={'fashion-mnist' if dataset == 'fashion-mnist' else 'dicebear'}",
                    "run.precision=fp32", "run.device=cpu"]
    ae_steps = _config("autoencoder", s, common_flags).optim.steps
    over = compact_overrides(dataset, ae_steps) if dataset == "fashion-mnist" else \
        {"autoencoder": [], "prior": []}
    ae = _config("autoencoder", s, common_flags + over["autoencoder"])
    pr = _config("prior", s, common_flags + over["prior"])
    train = build_dataset(ae.data.source, split="train")
    pr = resolve_prior_config(pr, ae.model, len(getattr(train, "classes", ())))
    if quick:
        ae.optim.batch_size = pr.optim.batch_size = 8
    return ae, pr, train


def _fewest(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """(seconds of the warm-up calls, fewest seconds of one call after them)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warm = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return warm, best


def _ae_step(cfg, train, layout: str, compiled: bool):
    from bld.models.autoencoder import AutoencoderLoss, BinaryAutoencoder
    torch.manual_seed(0)
    ae = BinaryAutoencoder(cfg.model)
    loss_fn = AutoencoderLoss(cfg.loss, cfg.model.in_channels)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    ae = ae.to(memory_format=fmt)
    ema = copy.deepcopy(ae).requires_grad_(False)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    fwd = torch.compile(ae) if compiled else ae
    b = cfg.optim.batch_size

    def step():
        x = torch.stack([train[i][0] for i in range(b)]).contiguous(memory_format=fmt)
        out = fwd(x)
        losses = loss_fn.generator_loss(x, out, 0, ae.last_layer, adaptive=True)
        opt.zero_grad(set_to_none=True)
        losses.loss.backward()
        _after(ae, ema, opt)
    return step


def _prior_step(cfg, optimizer: str, compiled: bool):
    from bld.models.denoiser import Denoiser
    from bld.models.diffusion import BernoulliDiffusion
    from bld.training.optim import model_optimizer
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    net = Denoiser(m)
    ema = copy.deepcopy(net).requires_grad_(False)
    diffusion = BernoulliDiffusion(cfg.diffusion)
    opt = model_optimizer(net, dataclasses.replace(cfg.optim, optimizer=optimizer))
    fwd = torch.compile(net) if compiled else net
    b = cfg.optim.batch_size
    z0 = torch.randint(0, 2, (b, m.bits, m.grid, m.grid), generator=g).float()
    y = torch.randint(0, max(m.num_classes, 1), (b,), generator=g) if m.num_classes else None

    def step():
        out = diffusion.training_losses(fwd, z0, y, generator=g)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        _after(net, ema, opt)
    return step


def _after(model, ema, opt) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 0.005)


def _overhead(ae_cfg, pr_cfg, train, quick: bool) -> list[dict]:
    """Seconds of the loop's other work, once each: reading one batch through the loader's
    dataset, one prior snapshot's sampling (8 images per class row, as `PriorTask.snapshot`),
    one checkpoint write of each model (weights, EMA, optimizer state; atomic)."""
    from bld.core import checkpoint as ckpt
    from bld.core.config import to_dict
    from bld.models.autoencoder import BinaryAutoencoder
    from bld.models.denoiser import Denoiser
    from bld.models.diffusion import BernoulliDiffusion
    from bld.models.sampling import sample
    rows = []
    b = ae_cfg.optim.batch_size
    _, s = _fewest(lambda: torch.stack([train[i][0] for i in range(b)]), 1, 3)
    rows.append({"work": f"read one autoencoder batch ({b} images, item by item)", "s": s})
    m = pr_cfg.model
    net = Denoiser(m).eval()
    diffusion = BernoulliDiffusion(pr_cfg.diffusion)
    n = 8 * min(max(m.num_classes, 1), 10)
    y = torch.arange(n) % m.num_classes if m.num_classes else None

    def snap():
        with torch.no_grad():
            sample(net, diffusion, (n, m.bits, m.grid, m.grid), steps=4 if quick else 16, y=y,
                   guidance=pr_cfg.sample_guidance if y is not None else 0.0,
                   null_label=net.null_label, generator=torch.Generator().manual_seed(0),
                   device=torch.device("cpu"))
    _, s = _fewest(snap, 0, 1)
    rows.append({"work": f"one prior snapshot's sampling ({n} latents, 16 steps, "
                         f"every {pr_cfg.run.sample_every} steps)", "s": s})
    for kind, model, cfg in (("autoencoder", BinaryAutoencoder(ae_cfg.model), ae_cfg),
                             ("prior", net, pr_cfg)):
        opt = torch.optim.AdamW(model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            def write():
                ckpt.save_checkpoint(Path(tmp) / f"c{time.perf_counter_ns()}", kind=kind,
                                     config=to_dict(cfg), model=model, ema=model,
                                     trainer_state={"optimizer": opt.state_dict()}, step=1)
            _, s = _fewest(write, 1, 2)
        rows.append({"work": f"one {kind} checkpoint (every {cfg.run.ckpt_every} steps)",
                     "s": s})
    return rows


def main() -> None:
    args = parse_args()
    bench = common.setup(args.name, args, expected_full="6-10 min")
    warm, reps = (1, 1) if args.quick else (3, 5)
    cwarm = 2 if args.quick else 4
    rows, over_rows = [], []
    for dataset in ("fashion-mnist", "faces"):
        ae_cfg, pr_cfg, train = _configs(dataset, args.quick)
        for threads in args.thread_counts:
            torch.set_num_threads(threads)
            arms = [("autoencoder", "eager", lambda: _ae_step(ae_cfg, train, "contiguous", False)),
                    ("autoencoder", "channels_last",
                     lambda: _ae_step(ae_cfg, train, "channels_last", False)),
                    ("prior", "eager, AdamW", lambda: _prior_step(pr_cfg, "adamw", False)),
                    ("prior", "eager, Muon", lambda: _prior_step(pr_cfg, "muon", False))]
            if not args.no_compile and threads == max(args.thread_counts):  # compiling is slow
                arms += [("autoencoder", "compile",
                          lambda: _ae_step(ae_cfg, train, "contiguous", True)),
                         ("prior", "compile, AdamW", lambda: _prior_step(pr_cfg, "adamw", True))]
            base = {}
            for model, arm, make in arms:
                step = make()
                compiling = "compile" in arm
                first, s = _fewest(step, cwarm if compiling else warm, reps)
                key = (model, threads)
                base.setdefault(key, s)
                row = {"dataset": dataset, "model": model, "arm": arm, "threads": threads,
                       "batch": (ae_cfg if model == "autoencoder" else pr_cfg).optim.batch_size,
                       "step_s": s, "vs_eager": base[key] / s,
                       "warmup_s": first if compiling else None}
                log.info("%s", row)
                rows.append(row)
        torch.set_num_threads(max(args.thread_counts))
        for r in _overhead(ae_cfg, pr_cfg, train, args.quick):
            over_rows.append({"dataset": dataset, **r,
                              "threads": torch.get_num_threads()})
        torch._dynamo.reset()  # the next dataset's models compile afresh
    bench.results = {"rows": rows, "overhead": over_rows}
    sections = [
        "## Seconds per training step", "",
        "`vs_eager`: the eager step's seconds over the arm's, same model and threads (above 1 "
        "is faster). `warmup_s`: the seconds of the first calls, compiling included.", "",
        common.markdown_table(rows, ["dataset", "model", "arm", "threads", "batch", "step_s",
                                     "vs_eager", "warmup_s"]), "",
        "## The loop's other work", "",
        common.markdown_table(over_rows, ["dataset", "work", "threads", "s"]), ""]
    common.write_report(bench, "Training step time and loop overhead on this CPU", sections)


if __name__ == "__main__":
    main()
