"""Speed of the denoiser presets: training steps/s, sampling images/s, model FLOPs utilisation.

For each preset (tiny, small, base; large and original at batch 8 only when their
measurement is estimated to take under a minute, otherwise skipped with a note), at the
Fashion-MNIST latent shape (16 bits on 7 x 7) and at the 256 px shape (64 bits on 16 x 16),
in fp32 and in bf16 autocast:

* training: one step = Bernoulli-diffusion loss, backward, gradient clipping, AdamW step
  (class-conditional, as `bld train-prior`); steps/s at the stated batch;
* sampling: `bld.models.sampling.sample` with S = 16 steps, whole batches, without guidance and
  with classifier-free guidance (w = 1: two network evaluations per step), images/s;
* MFU = achieved matmul FLOP/s / peak, where the achieved figure counts
  `Denoiser.flops_per_forward()` per sample (x 3 for a training step: forward + backward,
  x steps x (2 with guidance) for sampling) and the peak is a large square matmul measured
  in this run (warm-up, best of several) in fp32 and in bf16; fp32 runs are set against the
  fp32 peak, bf16 autocast runs against the bf16 peak.

Also the demo prior's training throughput (latents/s) and MFU: the shipped `fashion-mnist`
prior preset (as `bld demo` trains it: its width, depth, conditioning and batch) against the
demo's settings before the learning-speed study (256 x 6, condition tokens, batch 128), in
fp32, bf16 autocast and bf16 under `torch.compile` (CPU inductor; its compile time is
reported). Writes ``mfu_bf16`` and ``train_images_per_s`` (the preset, bf16, eager) to
headline.json.
Warm-up precedes every timing (method.md §5). Nothing is asserted; figures depend on the machine
and on other load (the load average is recorded in the report).

    python benchmarks/speed.py            # ~8-12 min on 1 thread of a 2-core CPU
    python benchmarks/speed.py --quick

``--cpu-kinds`` measures instead one table per CPU capability this machine can present
(AVX2; AVX-512 without bf16; AVX-512-BF16; AMX where the CPU has it; each by restricting
oneDNN / ATen / MKL with their environment variables, in a fresh process) x precision: the
1024^2 matmul rate on 1 thread, the demo presets' autoencoder training images/s and prior
training latents/s, and sampling images/s at 16 steps with guidance, with what precision
`auto` picks there and why (results/speed_cpu_kinds.md; ~5 min).

    python benchmarks/speed.py --cpu-kinds
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import common
import torch
from tqdm.auto import tqdm

log = logging.getLogger("bench")

SHAPES = {"fashion-mnist 7x7x16": (16, 7), "256px 16x16x64": (64, 16)}


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "base", "large", "original"])
    p.add_argument("--batch-small", type=int, default=64,
                   help="train and sampling batch at the Fashion-MNIST shape")
    p.add_argument("--batch-256", type=int, default=8, help="train and sampling batch at 256 px")
    p.add_argument("--big-batch", type=int, default=8, help="batch for large / original")
    p.add_argument("--big-limit-s", type=float, default=60.0,
                   help="skip large / original where their measurement would take longer")
    p.add_argument("--sample-steps", type=int, default=16)
    p.add_argument("--matmul-size", type=int, default=2048, help="peak matmul size n (n x n)")
    p.add_argument("--cpu-kinds", action="store_true",
                   help="the table per CPU capability x precision instead (see above)")
    p.add_argument("--cpu-kind-worker", default=None, help=argparse_hidden())
    return p.parse_args()


def argparse_hidden() -> str:
    import argparse
    return argparse.SUPPRESS


# CPU capability -> the restriction that presents it (None: this CPU as it is)
CPU_KINDS = {
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "AVX-512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512",
                "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "AVX-512-BF16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "ATEN_CPU_CAPABILITY": "avx512"},
    "AMX": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "avx512"},
}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kinds_present() -> list[str]:
    """The capabilities this CPU can present: each needs its instructions."""
    f = _cpu_flags()
    have = {"AVX2": "avx2" in f, "AVX-512": "avx512f" in f,
            "AVX-512-BF16": "avx512_bf16" in f, "AMX": "amx_bf16" in f}
    return [k for k in CPU_KINDS if have[k]]


def kind_worker(quick: bool) -> dict:
    """In a process restricted to one capability: rates of the demo presets per precision."""
    from bld.core.config import config_from_dict, load_config_dict
    from bld.core.device import Precision, cpu_bf16_facts, resolve_precision
    from bld.models.autoencoder import AutoencoderLoss, BinaryAutoencoder
    from bld.models.denoiser import Denoiser
    from bld.models.diffusion import BernoulliDiffusion
    from bld.models.sampling import sample
    from bld.training.prior import resolve_prior_config
    cap, native = cpu_bf16_facts()
    auto = resolve_precision("auto", "cpu")
    ae_cfg = config_from_dict("autoencoder", load_config_dict("autoencoder", "fashion-mnist", []))
    pr_cfg = resolve_prior_config(config_from_dict("prior", load_config_dict(
        "prior", "fashion-mnist", [])), ae_cfg.model, 10)
    m = pr_cfg.model
    g = torch.Generator().manual_seed(0)
    out = {"capability": cap, "native_bf16": native, "auto": auto.name, "auto_reason": auto.reason,
           "threads": torch.get_num_threads(), "rows": []}
    x = torch.rand(ae_cfg.optim.batch_size, 1, 28, 28, generator=g) * 2 - 1
    z0 = (torch.rand(pr_cfg.optim.batch_size, m.bits, m.grid, m.grid, generator=g) < 0.5).float()
    y = torch.randint(0, 10, (pr_cfg.optim.batch_size,), generator=g)
    n_sample = 8 if quick else 50
    for name in ("fp32", "bf16"):
        p = Precision(name, name)
        slow = name == "bf16" and not native  # minutes per measurement: time it once
        reps = dict(warmup=1, repeats=1) if (slow or quick) else dict(warmup=2, repeats=3)
        torch.set_num_threads(1)
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        with p.autocast("cpu"):
            mm = common.time_fn(lambda: a @ b, **reps)
        torch.set_num_threads(out["threads"])
        torch.manual_seed(0)
        ae = BinaryAutoencoder(ae_cfg.model)
        loss_fn = AutoencoderLoss(ae_cfg.loss, 1)
        opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)

        def ae_step():
            with p.autocast("cpu"):
                o = ae(x)
            loss = loss_fn.generator_loss(x, o, 0, ae.last_layer).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t_ae = common.time_fn(ae_step, **reps)
        prior = Denoiser(m)
        diffusion = BernoulliDiffusion(pr_cfg.diffusion)
        popt = torch.optim.AdamW(prior.parameters(), lr=1e-4)

        def prior_step():
            with p.autocast("cpu"):
                loss = diffusion.training_losses(prior, z0, y, generator=g).loss
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()
        t_pr = common.time_fn(prior_step, **reps)
        prior.eval()
        ys = torch.arange(n_sample) % 10

        @torch.no_grad()
        def two_steps():  # 2 of the 16 steps, guided; the rate per step is the same
            with p.autocast("cpu"):
                sample(prior, diffusion, (n_sample, m.bits, m.grid, m.grid), steps=2, y=ys,
                       guidance=pr_cfg.sample_guidance, null_label=prior.null_label,
                       generator=torch.Generator().manual_seed(0))
        t_s = common.time_fn(two_steps, **reps)
        out["rows"].append({
            "precision": name, "matmul_1024_gflop_s_1thread": 2 * 1024 ** 3 / mm.best / 1e9,
            "ae_train_images_s": ae_cfg.optim.batch_size / t_ae.best,
            "prior_train_latents_s": pr_cfg.optim.batch_size / t_pr.best,
            "sample16_guided_images_s": n_sample / (t_s.best * 8)})
        log.info("%s %s: %s", cap, name, out["rows"][-1])
    return out


def cpu_kinds(args) -> None:
    bench = common.setup("speed_cpu_kinds", args, expected_full="~5 min (bf16 on a CPU without "
                         "native bf16 is most of it)")
    present = kinds_present()
    rows, facts = [], {}
    for kind in present:
        env = {**os.environ, **CPU_KINDS[kind]}
        for k in [k for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                              "MKL_ENABLE_INSTRUCTIONS") if k not in CPU_KINDS[kind]]:
            env.pop(k, None)
        cmd = [sys.executable, __file__, "--cpu-kind-worker", kind, "--threads",
               str(args.threads), *(["--quick"] if args.quick else []), "--out", str(bench.out)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"the {kind} worker failed:\n{res.stderr[-2000:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        facts[kind] = {k: v for k, v in got.items() if k != "rows"}
        rows += [{"cpu kind": kind, "torch capability": got["capability"],
                  "native bf16": got["native_bf16"], **r,
                  "auto picks": "yes" if r["precision"] == got["auto"] else ""}
                 for r in got["rows"]]
    bench.results = {"kinds": facts, "rows": rows}
    sections = [
        "Each CPU kind is this machine restricted by environment variables (`ONEDNN_MAX_CPU_ISA`, "
        "`ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`) in a fresh process: the instruction "
        "set is the kind's, the clock and caches stay this CPU's, so compare the ratios between "
        "precisions more than the raw rates with another machine of that kind.", "",
        "Models: the `fashion-mnist` presets as `bld demo` trains them (autoencoder batch, prior "
        "batch); sampling: the demo prior, 16 steps with guidance (both passes in one batch), "
        "batches of 50. `auto picks`: the precision `--precision auto` resolves to on that "
        "kind.", "",
        common.markdown_table(rows), "",
        "Why `auto` picked what it did:", "",
        *[f"- {k}: {v['auto_reason']}" for k, v in facts.items()], ""]
    common.write_report(bench, "Speed per CPU kind and precision", sections)


def main() -> None:
    args = parse_args()
    if args.cpu_kind_worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(kind_worker(args.quick)))
        return
    if args.cpu_kinds:
        return cpu_kinds(args)
    _presets(args)


def matmul_peak(n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n @ n x n matmul in ``dtype`` (after warm-up)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    t = common.time_fn(lambda: a @ b, warmup=2, repeats=repeats)
    return 2 * n ** 3 / t.best


def build(preset: str, bits: int, grid: int):
    from bld.models.denoiser import Denoiser, preset_config
    from bld.models.diffusion import BernoulliDiffusion, DiffusionConfig
    torch.manual_seed(0)
    model = Denoiser(preset_config(preset, bits=bits, grid=grid, num_classes=10))
    return model, BernoulliDiffusion(DiffusionConfig(timesteps=64))


def time_training(model, diffusion, batch: int, bits: int, grid: int, bf16: bool,
                  min_time: float, repeats: int) -> common.Timing:
    g = torch.Generator().manual_seed(0)
    z0 = (torch.rand(batch, bits, grid, grid, generator=g) < 0.5).float()
    y = torch.randint(0, 10, (batch,), generator=g)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_losses(model, z0, y, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return common.time_fn(step, warmup=1, repeats=repeats, min_time=min_time)


def time_sampling(model, diffusion, batch: int, bits: int, grid: int, bf16: bool, steps: int,
                  guidance: float, min_time: float, repeats: int) -> common.Timing:
    from bld.models.sampling import sample
    model.eval()
    y = torch.arange(batch) % 10

    def run(s: int):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            sample(model, diffusion, (batch, bits, grid, grid), steps=s, y=y, guidance=guidance,
                   null_label=model.null_label, generator=torch.Generator().manual_seed(0))

    run(2)  # warm-up: the same shapes, fewer steps
    return common.time_fn(lambda: run(steps), warmup=0, repeats=repeats, min_time=min_time)


def _presets(args) -> None:
    q = args.quick
    if q:
        args.presets = ["tiny", "small", "large"]
        args.batch_small, args.batch_256, args.big_batch = 16, 2, 2
        args.matmul_size, args.sample_steps, args.big_limit_s = 512, 4, 2.0
    bench = common.setup("speed", args,
                         expected_full="~8-12 min with 1 thread (fp32 is the slow half)")
    # at least one timed run after warm-up, more while the timed total is under 2 s
    min_time, repeats = (0.0, 1) if q else (2.0, 1)

    peaks = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = matmul_peak(args.matmul_size, dt, repeats=2 if q else 5)
        log.info("peak %s matmul (%d^2): %.1f GFLOP/s", name, args.matmul_size, peaks[name] / 1e9)

    rows, notes = [], []
    rate: dict[tuple[str, str], float] = {}  # (shape, dtype) -> achieved FLOP/s of the last preset
    jobs = [(p, s) for s in SHAPES for p in args.presets]
    for preset, shape_name in tqdm(jobs, desc="presets"):
        bits, grid = SHAPES[shape_name]
        if q and shape_name.startswith("256px") and preset != "tiny":
            continue
        big = preset in ("large", "original")
        batch = args.big_batch if big else (args.batch_small if grid == 7 else args.batch_256)
        model, diffusion = build(preset, bits, grid)
        fpf = model.flops_per_forward()
        params = sum(p.numel() for p in model.parameters())
        for dtype in ("fp32", "bf16"):
            bf16 = dtype == "bf16"
            if big:
                # work of the whole measurement, in forward-passes-per-sample, at the rate
                # the previous preset reached (skip when it would pass the limit)
                # training: warm-up + one step, 3 forwards each; sampling: a 2-step warm-up
                # and one S-step run, plain (1 evaluation per step) and guided (2)
                work = fpf * batch * (3 * 2 + (2 + args.sample_steps) * 3)
                known = rate.get((shape_name, dtype))
                est = work / known if known else float("inf")
                if est > args.big_limit_s:
                    notes.append(f"- {preset} at {shape_name}, {dtype}, batch {batch}: skipped, "
                                 f"estimated {est:.0f} s of measurement (> {args.big_limit_s:.0f} s)"
                                 f" at the rate the previous preset reached")
                    log.info("skip %s %s %s (estimated %.0f s)", preset, shape_name, dtype, est)
                    continue
            tr = time_training(model, diffusion, batch, bits, grid, bf16, min_time, repeats)
            train_flops = 3 * fpf * batch / tr.best
            row = {"preset": preset, "latent": shape_name, "params_M": params / 1e6,
                   "dtype": dtype, "batch": batch, "gflop_per_fwd_sample": fpf / 1e9,
                   "train_steps_s": 1 / tr.best, "train_mfu": train_flops / peaks[dtype]}
            for w in (0.0, 1.0):
                ts = time_sampling(model, diffusion, batch, bits, grid, bf16, args.sample_steps,
                                   w, min_time, repeats)
                evals = args.sample_steps * (2 if w else 1)
                key = "guided" if w else "plain"
                row[f"sample_img_s_{key}"] = batch / ts.best
                row[f"sample_mfu_{key}"] = fpf * batch * evals / ts.best / peaks[dtype]
            rate[(shape_name, dtype)] = train_flops
            rows.append(row)
            log.info("%s %s %s b%d: %.2f train steps/s (MFU %.1f%%), %.1f img/s sampling "
                     "(%.1f guided)", preset, shape_name, dtype, batch, row["train_steps_s"],
                     100 * row["train_mfu"], row["sample_img_s_plain"], row["sample_img_s_guided"])

    # the demo prior's training: the shipped preset against the settings before the study
    from bld.core.config import config_from_dict, load_config_dict
    from bld.models.denoiser import Denoiser, DenoiserConfig
    from bld.models.diffusion import BernoulliDiffusion
    pcfg = config_from_dict("prior", load_config_dict("prior", "fashion-mnist", []))
    ae_cfg = config_from_dict("autoencoder", load_config_dict("autoencoder", "fashion-mnist", []))
    bits, grid = ae_cfg.model.bits, ae_cfg.model.grid
    variants = [
        ("before the study (256 x 6, tokens)", DenoiserConfig(
            bits=16, grid=7, width=256, depth=6, heads=4, num_classes=10, conditioning="tokens"),
         128, ("fp32", "bf16")),
        (f"shipped preset ({pcfg.model.width} x {pcfg.model.depth}, {pcfg.model.conditioning})",
         DenoiserConfig(**{**vars(pcfg.model), "bits": bits, "grid": grid, "num_classes": 10}),
         pcfg.optim.batch_size, ("fp32", "bf16", "bf16 + torch.compile")),
    ]
    demo_rows, headline = [], {}
    for label, dcfg, demo_batch, dtypes in variants:
        if q:
            demo_batch = 16
        diffusion = BernoulliDiffusion(pcfg.diffusion)
        for dtype in dtypes:
            torch.manual_seed(0)
            demo = Denoiser(dcfg)
            net, compile_s = demo, 0.0
            if "compile" in dtype:
                if q:
                    continue  # compiling takes minutes on 2 cores
                net = torch.compile(demo)
                t0 = time.perf_counter()
                time_training(net, diffusion, demo_batch, dcfg.bits, dcfg.grid, True, 0.0, 1)
                compile_s = time.perf_counter() - t0
            t = time_training(net, diffusion, demo_batch, dcfg.bits, dcfg.grid,
                              dtype != "fp32", min_time, repeats)
            achieved = 3 * demo.flops_per_forward() * demo_batch / t.best
            peak = peaks["fp32" if dtype == "fp32" else "bf16"]
            demo_rows.append({"model": label, "dtype": dtype, "batch": demo_batch,
                              "step_s": t.best, "steps_s": 1 / t.best,
                              "latents_s": demo_batch / t.best,
                              "achieved_gflop_s": achieved / 1e9, "peak_gflop_s": peak / 1e9,
                              "mfu": achieved / peak, "compile_s": compile_s})
            log.info("demo prior %s %s: %.3f s/step, %.0f latents/s, MFU %.1f%%", label, dtype,
                     t.best, demo_batch / t.best, 100 * achieved / peak)
            if label.startswith("shipped") and dtype == "bf16":
                headline = {"mfu_bf16": achieved / peak, "train_images_per_s": demo_batch / t.best}
    if headline and not q:
        common.update_headline(bench, headline)

    # ------------------------------------------------------------------------ report
    bench.results = {"peaks_flop_s": peaks, "rows": rows, "demo_prior": demo_rows,
                     "skipped": notes, "sample_steps": args.sample_steps}
    for metric, ylabel in (("train_steps_s", "training steps/s"),
                           ("sample_img_s_plain", f"images/s ({args.sample_steps} steps, w = 0)")):
        series = {}
        for shape_name in SHAPES:
            for dtype in ("fp32", "bf16"):
                pts = [(r["gflop_per_fwd_sample"], r[metric]) for r in rows
                       if r["latent"] == shape_name and r["dtype"] == dtype]
                if pts:
                    series[f"{shape_name} {dtype}"] = ([a for a, _ in pts], [b for _, b in pts])
        common.plot_lines(bench.path(f"_{metric}.png"), series,
                          xlabel="GFLOP per forward per sample (presets)", ylabel=ylabel,
                          logx=True, logy=True, title="denoiser presets")
    cols = ["preset", "latent", "params_M", "dtype", "batch", "gflop_per_fwd_sample",
            "train_steps_s", "train_mfu", "sample_img_s_plain", "sample_img_s_guided",
            "sample_mfu_plain", "sample_mfu_guided"]
    sections = [
        "## Peaks (this run)", "",
        f"- fp32 matmul {args.matmul_size}^2: {peaks['fp32'] / 1e9:.1f} GFLOP/s",
        f"- bf16 matmul {args.matmul_size}^2: {peaks['bf16'] / 1e9:.1f} GFLOP/s", "",
        "MFU of fp32 runs is against the fp32 peak, of bf16-autocast runs against the bf16 "
        "peak. FLOPs count matmuls only (`Denoiser.flops_per_forward`), x 3 for training.", "",
        f"## Presets (class-conditional; sampling S = {args.sample_steps}, whole batches)", "",
        common.markdown_table(rows, cols), "",
        "Batch: training and sampling use the same batch (the `batch` column); guided "
        "sampling (w = 1) evaluates the network twice per step.", "",
        *(["Skipped:", "", *notes, ""] if notes else []),
        f"![train]({bench.path('_train_steps_s.png').name}) "
        f"![sample]({bench.path('_sample_img_s_plain.png').name})", "",
        f"## Demo prior training ({bits} bits on {grid} x {grid}; torch threads "
        f"{torch.get_num_threads()})", "",
        common.markdown_table(demo_rows), "",
        "`compile_s`: the first (compiling) step of the compiled model; it pays off only when "
        "the steps saved exceed it.", "",
    ]
    common.write_report(bench, "Denoiser speed and MFU", sections)


if __name__ == "__main__":
    main()
