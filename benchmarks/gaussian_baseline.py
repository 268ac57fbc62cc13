"""Binary latent diffusion (BLD) against Gaussian latent diffusion, side by side in one run.

Every pipeline is trained here from scratch at the demo's size, with the settings of the
shipped presets (``--preset``, default ``fashion-mnist``; ``faces64`` for the colour demo's
DiceBear faces, ``faces64-grid8`` for its first 8 x 8 x 64 autoencoder, which the published
faces results used on the ten styles earlier versions drew into the default folder, today's
holding the six; autoencoder and prior: architecture, steps x batch, learning rate, warm-up,
weight decay, EMA), on all training images of the presets' dataset (``data.source``), then
sampled at S in {4, 8, 16, 32} steps (and S = 16 with a second sampling seed):

* ``bld``: the binary autoencoder and the Bernoulli prior exactly as the presets say
  (the library's `BinaryAutoencoder`, `Denoiser`, `BernoulliDiffusion`, `sample`), sampled
  with the prior preset's guidance interval and temperature.
* ``bld-B`` (e.g. ``bld-32 bld-64 bld-128``): the same with B bits per position instead of
  the preset's; the prior (width, depth, steps x batch) is the same for every B, only its
  input and output projections follow B. The seed's claim that more bits cost a binary
  prior almost nothing is measured by this sweep.
* ``gaussian``: the same Encoder / Decoder without binarisation (continuous latents
  z = tanh(encoder output), the same 7 x 7 x C shape, no KL term), the same Denoiser
  (width, depth, conditioning, init seed) trained with the same optimiser settings on
  epsilon prediction (DDPM linear betas 1e-4 .. 0.02 over 1000 steps, latents normalised to
  unit variance as LDM's scale factor), sampled with diffusers' DDIM (eta 0, trailing
  spacing). **Matched compute**: identical steps x batch and backbone.
* ``gaussian-matched``: the Gaussian pipeline with fewer latent channels
  (``--matched-channels``, default 2), so that its reconstructions are about as good as the
  binary autoencoder's: a continuous channel carries far more than one bit, so at equal
  shape the Gaussian decoder starts far ahead. **Matched reconstruction quality.**

All are class-conditional with 10% per-sample label dropout and sampled with classifier-free
guidance of the same w (default: the prior preset's) inside the prior preset's guidance
interval (t / T, the same for DDIM's t / 1000). Reported per pipeline and training seed
(``--train-seeds``, default 2): the autoencoder's PSNR / reconstruction FD / recall (the bound
on its prior), FD (project classifier, N samples, real-vs-real floor at that N), precision /
recall, class accuracy and seconds per image (sampling + decoding) per S, and the FD-vs-
seconds-per-image curves, and FD at S = 16 against reconstruction PSNR and against
training seconds (one point per pipeline, means over training seeds). Writes ``bld_fd_s16``,
``gaussian_fd_s16`` (matched compute) and the ``*_matched_recon`` pair (means over training
seeds) to headline.json; for a dataset other than Fashion-MNIST the keys end in
``_<source>`` (``bld_fd_s16_dicebear``), and every ``bld-B`` adds ``bld<B>_fd_s16[_<source>]``.

    python benchmarks/gaussian_baseline.py --threads 1    # ~2 h on 1 thread (6 trainings)
    python benchmarks/gaussian_baseline.py --preset faces64-grid8 --name gaussian_baseline_dicebear \
        --classifier runs/demo-faces/classifier --steps 16 \
        --pipelines bld-32 bld-64 bld-128 gaussian
    python benchmarks/gaussian_baseline.py --quick
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger("bench")


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32],
                   help="sampling steps S for every prior (BLD: of its T)")
    p.add_argument("--n", type=int, default=None, help="samples per setting (default 1000)")
    p.add_argument("--guidance", type=float, default=None,
                   help="the same CFG w for all (default: the prior preset's sample_guidance)")
    p.add_argument("--preset", default="fashion-mnist",
                   help="autoencoder and prior preset (or YAML files via --ae-config/--prior-config)")
    p.add_argument("--ae-config", default=None, help="autoencoder preset or YAML (default --preset)")
    p.add_argument("--prior-config", default=None, help="prior preset or YAML (default --preset)")
    p.add_argument("--train-images", type=int, default=None,
                   help="training images used (default: all of the dataset's train split)")
    p.add_argument("--matched-channels", type=int, default=2,
                   help="latent channels of the gaussian-matched pipeline")
    p.add_argument("--pipelines", nargs="+", default=["bld", "gaussian", "gaussian-matched"],
                   type=_pipeline,
                   help="bld, bld-B (B bits per position), gaussian, gaussian-matched")
    p.add_argument("--train-seeds", type=int, default=2,
                   help="train each pipeline this many times (seeds seed, seed+1, ...)")
    p.add_argument("--matched-train-seeds", type=int, default=None,
                   help="training seeds of the gaussian-matched pipeline (default: "
                        "--train-seeds); the matched-compute pair is the one the targets name")
    p.add_argument("--batch-size", type=int, default=500, help="sampling batch")
    p.add_argument("--samplers", nargs="+", default=[], type=_sampler,
                   help="more sampler settings W:LO:HI[:TEMPERATURE] measured at S = 16 for "
                        "every pipeline (guidance w at LO <= t / T <= HI; the temperature is "
                        "BLD's, DDIM has none), to check that a comparison does not hang on "
                        "the presets' sampler")
    p.add_argument("--no-headline", action="store_true",
                   help="leave headline.json alone (a side check, e.g. of --samplers)")
    p.add_argument("--work", type=Path, default=None,
                   help="where each finished (pipeline, training seed) is kept, so a rerun "
                        "or a crash loses nothing (default runs/<name>)")
    p.add_argument("--only-train-seed", type=int, default=None,
                   help="train and measure only this training seed and write no report: two "
                        "processes with one thread each can share the seeds, then a run "
                        "without it reports from what they kept in --work")
    p.add_argument("--name", default=None,
                   help="results file stem (default gaussian_baseline, or "
                        "gaussian_baseline_<source> for a dataset other than Fashion-MNIST)")
    return p.parse_args()


def _pipeline(name: str) -> str:
    """argparse type of --pipelines: bld, bld-B (B >= 1 bits), gaussian, gaussian-matched."""
    if name in NAMES or (name.startswith("bld-") and name[4:].isdigit() and int(name[4:]) > 0):
        return name
    import argparse
    raise argparse.ArgumentTypeError(
        f"unknown pipeline {name!r}: use bld, bld-B (B bits per position, e.g. bld-64), "
        "gaussian or gaussian-matched")


def _sampler(text: str) -> tuple[float, float, float, float]:
    """argparse type of --samplers: W:LO:HI or W:LO:HI:TEMPERATURE."""
    import argparse
    try:
        return common.sampler_setting(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pipeline_name(pipe: str) -> str:
    """The report's name of a pipeline."""
    return NAMES.get(pipe) or f"BLD (Bernoulli), {pipe[4:]} bits"


NAMES = {"bld": "BLD (Bernoulli)", "gaussian": "Gaussian (DDIM)",
         "gaussian-matched": "Gaussian, matched recon (DDIM)"}


class GaussianAutoencoder(nn.Module):
    """The binary autoencoder's encoder and decoder without binarisation: z = tanh(enc(x))."""

    def __init__(self, config) -> None:
        super().__init__()
        from bld.models.autoencoder import Decoder, Encoder
        self.config = replace(config, norm_bits=False)
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B, C, h, w) in (-1, 1)
        return torch.tanh(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, c, H, W)
        return self.decoder(z.to(self.decoder.from_bits.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def make_ddim(num_steps: int):
    try:
        from diffusers import DDIMScheduler
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("gaussian_baseline.py needs diffusers for its DDIM sampler: "
                         "pip install 'diffusers>=0.25' (or pip install -e '.[bench]')") from e
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                      beta_end=0.02, clip_sample=False, prediction_type="epsilon",
                      timestep_spacing="trailing")
    s.set_timesteps(num_steps)
    return s


@torch.no_grad()
def encode_all(encode, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(x), batch), desc="encode", mininterval=2.0):
        with common.autocast():
            out.append(encode(x[i:i + batch]).float())
    return torch.cat(out)


@torch.no_grad()
def decode_all(decode, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(z), batch):
        with common.autocast():
            out.append(decode(z[i:i + batch]).float().clamp(-1, 1))
    return torch.cat(out)


def cond_drop(y: torch.Tensor, null: int, g: torch.Generator, p: float = 0.1) -> torch.Tensor:
    """Per-sample label dropout to the learned null label (docs/method.md §2)."""
    return torch.where(torch.rand(y.shape, generator=g) < p, torch.full_like(y, null), y)


@torch.no_grad()
def sample_gaussian(model, sched_steps: int, n: int, shape, labels, guidance: float,
                    mean: float, std: float, seed: int, batch: int,
                    interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """DDIM (eta 0) with CFG on epsilon, guided where lo <= t / 1000 <= hi; returns latents
    in the autoencoder's scale."""
    g = torch.Generator().manual_seed(seed)
    sched = make_ddim(sched_steps)
    out = []
    for start, b in common.batches(n, batch):
        x = torch.randn((b, *shape), generator=g)
        y = labels[start:start + b]
        y_null = torch.full_like(y, model.null_label)
        for t in sched.timesteps:
            tt = torch.full((b,), float(t) / 1000.0)
            with common.autocast():
                if guidance and interval[0] <= float(t) / 1000.0 <= interval[1]:
                    eps_c, eps_u = model(torch.cat([x, x]), torch.cat([tt, tt]),
                                         torch.cat([y, y_null])).float().chunk(2)
                    eps = (1 + guidance) * eps_c - guidance * eps_u
                else:
                    eps = model(x, tt, y).float()
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(x * std + mean)
    return torch.cat(out)


@torch.no_grad()
def sample_bld(model, diffusion, steps: int, n: int, shape, labels, guidance: float, seed: int,
               batch: int, interval: tuple[float, float] = (0.0, 1.0),
               temperature: float = 1.0) -> torch.Tensor:
    from bld.models.sampling import sample
    g = torch.Generator().manual_seed(seed)
    out = []
    for start, b in common.batches(n, batch):
        with common.autocast():
            out.append(sample(model, diffusion, (b, *shape), steps=steps,
                              y=labels[start:start + b], guidance=guidance,
                              guidance_interval=interval, temperature=temperature,
                              null_label=model.null_label, generator=g).z0)
    return torch.cat(out)


def train_side(kind: str, seed: int, x_train, y_train, ae_train, pr_train, den_cfg) -> dict:
    """Train one pipeline's autoencoder and prior with the presets' optimiser settings;
    returns the EMA models, latent scale and times."""
    from bld.models.autoencoder import AutoencoderLoss, BinaryAutoencoder
    from bld.models.denoiser import Denoiser
    from bld.models.diffusion import BernoulliDiffusion

    ae_cfg = ae_train.model
    torch.manual_seed(seed)
    ae = BinaryAutoencoder(ae_cfg) if kind == "bld" else GaussianAutoencoder(ae_cfg)
    loss_cfg = ae_train.loss
    bld_loss = AutoencoderLoss(loss_cfg, ae_cfg.in_channels) if kind == "bld" else None

    def ae_loss(idx, g):
        x = x_train[idx]
        if kind == "bld":  # the library's loss (L1, MSE and any bit terms the preset sets)
            return bld_loss.generator_loss(x, ae(x, generator=g), 0, ae.last_layer).loss
        recon = ae(x).float()
        return loss_cfg.l1_weight * (recon - x).abs().mean() + loss_cfg.mse_weight * F.mse_loss(
            recon, x)

    o = ae_train.optim
    r_ae = common.train_model(ae, ae_loss, n_items=len(x_train), steps=o.steps,
                              batch_size=o.batch_size, lr=o.lr, seed=seed, warmup=o.warmup,
                              weight_decay=o.weight_decay, ema_decay=o.ema_decay,
                              desc=f"{kind} autoencoder")
    ae_ema = r_ae.model
    t0 = time.perf_counter()
    if kind == "bld":
        z = encode_all(lambda x: ae_ema.encode(x, deterministic=True), x_train)
        mean, std = 0.0, 1.0
        diffusion = BernoulliDiffusion(pr_train.diffusion)
    else:
        z = encode_all(ae_ema.encode, x_train)
        mean, std = z.mean().item(), z.std().item()  # one scalar each, as LDM's scale factor
        z = (z - mean) / std
        diffusion = make_ddim(1000)  # for add_noise with the training schedule
        acp = diffusion.alphas_cumprod
    encode_s = time.perf_counter() - t0

    torch.manual_seed(seed + 1000)  # the same initial prior weights for every pipeline
    model = Denoiser(replace(den_cfg, bits=z.shape[1]))
    null = model.null_label

    def prior_loss(idx, g):
        z0, y = z[idx], cond_drop(y_train[idx], null, g, pr_train.cond_drop)
        if kind == "bld":
            return diffusion.training_losses(model, z0, y, generator=g).loss
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise  # q(x_t | x_0), DDPM
        return F.mse_loss(model(x_t, t.float() / 1000.0, y).float(), noise)  # epsilon loss

    o = pr_train.optim
    r_pr = common.train_model(model, prior_loss, n_items=len(z), steps=o.steps,
                              batch_size=o.batch_size, lr=o.lr, seed=seed, warmup=o.warmup,
                              weight_decay=o.weight_decay, ema_decay=o.ema_decay,
                              desc=f"{kind} prior")
    return {"ae": ae_ema, "prior": r_pr.model, "diffusion": diffusion, "mean": mean,
            "std": std, "ae_seconds": r_ae.seconds, "prior_seconds": r_pr.seconds,
            "encode_seconds": encode_s, "ae_final_loss": sum(r_ae.losses[-10:]) / 10,
            "prior_final_loss": sum(r_pr.losses[-10:]) / 10, "latent_std_raw": std,
            "latent_shape": tuple(z.shape[1:])}


def main() -> None:
    args = parse_args()
    q = args.quick
    from bld.core.config import config_from_dict, load_config_dict
    from bld.core.metrics import psnr
    from bld.training.prior import resolve_prior_config

    small = ["optim.steps=4", "optim.batch_size=16", "model.channels=8", "model.hidden=16"]
    ae_train = config_from_dict("autoencoder", load_config_dict(
        "autoencoder", args.ae_config or args.preset, small if q else []))
    pr_train = config_from_dict("prior", load_config_dict(
        "prior", args.prior_config or args.preset,
        ["optim.steps=4", "optim.batch_size=32", "model.width=32", "model.depth=1",
         "model.heads=2"] if q else []))
    source = ae_train.data.source
    if pr_train.data.source != source:
        raise SystemExit(f"the autoencoder preset trains on {source} but the prior preset on "
                         f"{pr_train.data.source}: give presets of one dataset")
    suffix = "" if source == "fashion-mnist" else f"_{source}"
    bench = common.setup(args.name or f"gaussian_baseline{suffix}", args,
                         expected_full="~2 h with 1 thread for 3 pipelines x 2 training seeds "
                                       "(each: autoencoder ~8 min, prior ~8 min, sampling ~3 min)")
    guidance = args.guidance if args.guidance is not None else pr_train.sample_guidance
    interval = tuple(pr_train.sample_guidance_interval)
    temperature = pr_train.sample_temperature
    n = args.n or (64 if q else 1000)
    if q:
        args.steps = [s for s in args.steps if s in (4, 16)]
    x_train, y_train = common.dataset_split(source, "train",
                                            args.train_images or (512 if q else None))
    xt, yt = common.dataset_split(source, "test")
    num_classes = int(max(y_train.max(), yt.max())) + 1
    den_cfg = resolve_prior_config(pr_train, ae_train.model, num_classes).model
    clf, clf_meta = common.get_classifier(bench, None, source)
    ref = common.FDReference(clf, xt, yt, n, seed=0)
    labels = common.cycled_labels(n, num_classes)

    matched_seeds = args.train_seeds if args.matched_train_seeds is None else \
        args.matched_train_seeds
    work = args.work or Path("runs") / bench.name
    work.mkdir(parents=True, exist_ok=True)
    # what a kept result must have been measured with to be reused
    signature = {"ae": load_config_dict("autoencoder", args.ae_config or args.preset,
                                        small if q else []),
                 "prior": load_config_dict("prior", args.prior_config or args.preset, []),
                 "quick": q, "n": n, "steps": args.steps, "seed": args.seed,
                 "guidance": guidance, "interval": list(interval), "temperature": temperature,
                 "train_images": len(x_train), "matched_channels": args.matched_channels,
                 "classifier": clf_meta.get("path")}
    if args.samplers:  # (only then: results kept before --samplers existed stay valid)
        signature["samplers"] = [list(v) for v in args.samplers]
    rows, recon_rows, train_rows = [], [], []
    seeds = range(args.seed, args.seed + args.train_seeds)
    if args.only_train_seed is not None:
        if args.only_train_seed not in seeds:
            raise SystemExit(f"--only-train-seed {args.only_train_seed} is not one of the "
                             f"training seeds {list(seeds)} (--seed, --train-seeds)")
        seeds = [args.only_train_seed]
    for tseed in seeds:
        for pipe in args.pipelines:
            if pipe == "gaussian-matched" and tseed >= args.seed + matched_seeds:
                continue
            kept = work / f"{pipe}-seed{tseed}.json"
            saved = common.kept_result(kept, signature)
            if saved is not None:
                log.info("%s, training seed %d: kept in %s", pipe, tseed, kept)
                train_rows.append(saved["train"])
                recon_rows.append(saved["recon"])
                rows.extend({"sampler": "preset", **r} for r in saved["rows"])
                continue
            first_row = len(rows)
            kind = "bld" if pipe.startswith("bld") else "gaussian"
            ae_t = ae_train
            if pipe == "gaussian-matched":
                ae_t = replace(ae_train, model=replace(ae_train.model, bits=args.matched_channels))
            elif pipe.startswith("bld-"):
                ae_t = replace(ae_train, model=replace(ae_train.model, bits=int(pipe[4:])))
            side = train_side(kind, tseed, x_train, y_train, ae_t, pr_train, den_cfg)
            name = pipeline_name(pipe)
            train_rows.append({"pipeline": name, "train_seed": tseed, "bits": ae_t.model.bits,
                               "latent": "x".join(map(str, side["latent_shape"])),
                               "ae_s": side["ae_seconds"], "encode_s": side["encode_seconds"],
                               "prior_s": side["prior_seconds"],
                               "ae_loss_end": side["ae_final_loss"],
                               "prior_loss_end": side["prior_final_loss"]})
            ae = side["ae"]
            shape = side["latent_shape"]
            enc = ((lambda x: ae.encode(x, deterministic=True)) if kind == "bld" else ae.encode)
            rec = decode_all(ae.decode, encode_all(enc, ref.floor))
            m = ref.evaluate(rec, ref.floor_labels)
            recon_rows.append({"pipeline": name, "train_seed": tseed, "n": n,
                               "fd_recon": m["fd"], "fd_floor": m["fd_floor_real_vs_real"],
                               "psnr": psnr(rec, ref.floor), "precision": m["precision"],
                               "recall": m["recall"], "class_accuracy": m["class_accuracy"]})
            preset = (guidance, *interval, temperature, "preset")
            settings = [(s, args.seed, *preset) for s in args.steps]
            if 16 in args.steps:
                settings.append((16, args.seed + 1, *preset))
            settings += [(16, args.seed, w, lo, hi, temp,
                          f"w {w:g} at [{lo:g}, {hi:g}]" + (f", T {temp:g}" if kind == "bld"
                                                             else ""))
                         for w, lo, hi, temp in args.samplers]
            warm = labels[:8]  # warm-up before timing (docs/method.md §5)
            if kind == "bld":
                sample_bld(side["prior"], side["diffusion"], 2, 8, shape, warm, guidance, 0, 8,
                           interval, temperature)
            else:
                sample_gaussian(side["prior"], 2, 8, shape, warm, guidance, 0.0, 1.0, 0, 8,
                                interval)
            for s, seed, w, lo, hi, temp, sampler in tqdm(settings, desc=f"{pipe} sampling"):
                t0 = time.perf_counter()
                if kind == "bld":
                    z = sample_bld(side["prior"], side["diffusion"], s, n, shape, labels,
                                   w, seed, args.batch_size, (lo, hi), temp)
                else:
                    z = sample_gaussian(side["prior"], s, n, shape, labels, w,
                                        side["mean"], side["std"], seed, args.batch_size,
                                        (lo, hi))
                images = decode_all(ae.decode, z)
                sec = (time.perf_counter() - t0) / n
                m = ref.evaluate(images, labels)
                rows.append({"pipeline": name, "train_seed": tseed, "sampler": sampler,
                             "steps": s, "seed": seed,
                             "n": n, "fd": m["fd"], "fd_floor": m["fd_floor_real_vs_real"],
                             "fd_recon": recon_rows[-1]["fd_recon"],
                             "precision": m["precision"], "recall": m["recall"],
                             "class_accuracy": m["class_accuracy"], "s_per_image": sec})
                log.info("%s (train seed %d, sampler %s) S=%d seed %d: FD %.3f (floor %.3f, "
                         "recon %.3f), %.4f s/image", name, tseed, sampler, s, seed, m["fd"],
                         m["fd_floor_real_vs_real"], recon_rows[-1]["fd_recon"], sec)
            common.keep_result(kept, signature, train=train_rows[-1], recon=recon_rows[-1],
                               rows=rows[first_row:])
    if args.only_train_seed is not None:
        log.info("training seed %d done and kept in %s; run without --only-train-seed to "
                 "write the report", args.only_train_seed, work)
        return

    # ------------------------------------------------------------------------ report
    def mean_over_train_seeds(pipe_name: str, key: str, steps: int) -> float:
        vals = [r[key] for r in rows if r["pipeline"] == pipe_name and r["steps"] == steps
                and r["seed"] == args.seed and r.get("sampler", "preset") == "preset"]
        return sum(vals) / len(vals)

    names = [pipeline_name(p) for p in args.pipelines]
    fd_series = {m: (args.steps, [mean_over_train_seeds(m, "fd", s) for s in args.steps])
                 for m in names}
    time_series = {m: ([mean_over_train_seeds(m, "s_per_image", s) for s in args.steps],
                       [mean_over_train_seeds(m, "fd", s) for s in args.steps]) for m in names}
    floor = rows[0]["fd_floor"]
    common.plot_lines(bench.path("_fd_vs_steps.png"), fd_series, xlabel="sampling steps S",
                      ylabel=f"FD (N = {n}), mean over training seeds",
                      logx=True, title=f"BLD vs Gaussian LDM, w = {guidance}",
                      hlines={f"real-vs-real floor {floor:.3g}": floor})
    common.plot_lines(bench.path("_fd_vs_time.png"), time_series,
                      xlabel="seconds per image (sampling + decoding)",
                      ylabel=f"FD (N = {n})", logx=False,
                      title="FD vs wall time per image (points: S = " +
                      ", ".join(map(str, args.steps)) + ")",
                      hlines={f"real-vs-real floor {floor:.3g}": floor})
    # FD at S = 16 against what each pipeline's autoencoder reconstructs and what it cost to
    # train (one point per pipeline, means over training seeds; the bld-B sweep is one line)
    if 16 in args.steps:
        def mean_of(pipe_name: str, table: list[dict], key: str) -> float:
            vals = [r[key] for r in table if r["pipeline"] == pipe_name]
            return sum(vals) / len(vals)

        sweep = sorted((p for p in args.pipelines if p.startswith("bld-")),
                       key=lambda p: int(p[4:]))
        groups = ([("BLD, " + "/".join(p[4:] for p in sweep) + " bits", sweep)] if sweep else []) \
            + [(pipeline_name(p), [p]) for p in args.pipelines if not p.startswith("bld-")]
        psnr_series, cost_series = {}, {}
        for label, pipes in groups:
            ms = [pipeline_name(p) for p in pipes]
            fds = [mean_over_train_seeds(m, "fd", 16) for m in ms]
            psnr_series[label] = ([mean_of(m, recon_rows, "psnr") for m in ms], fds)
            cost_series[label] = ([mean_of(m, train_rows, "ae_s") + mean_of(m, train_rows, "prior_s")
                                   for m in ms], fds)
        common.plot_lines(bench.path("_fd_vs_psnr.png"), psnr_series,
                          xlabel="reconstruction PSNR (dB)", ylabel=f"FD at S = 16 (N = {n})",
                          title="FD against what the autoencoder reconstructs",
                          hlines={f"real-vs-real floor {floor:.3g}": floor})
        common.plot_lines(bench.path("_fd_vs_train_s.png"), cost_series,
                          xlabel="training seconds (autoencoder + prior)",
                          ylabel=f"FD at S = 16 (N = {n})",
                          title="FD against training cost",
                          hlines={f"real-vs-real floor {floor:.3g}": floor})
    notes = []
    for m in names:
        at16 = [r for r in rows if r["pipeline"] == m and r["steps"] == 16
                and r.get("sampler", "preset") == "preset"]
        if at16:
            vals = ", ".join(f"{r['fd']:.4g} (train seed {r['train_seed']}, sampling seed "
                             f"{r['seed']})" for r in at16)
            notes.append(f"- {m}: FD at S = 16: {vals}.")
    headline = {}
    if 16 in args.steps and not q and not args.no_headline:
        # the preset's bits: "bld", or the sweep's point at the preset's B
        bld_pipe = "bld" if "bld" in args.pipelines else f"bld-{ae_train.model.bits}"
        for key, pipe in [("bld_fd_s16", bld_pipe), ("gaussian_fd_s16", "gaussian"),
                          ("gaussian_fd_s16_matched_recon", "gaussian-matched")]:
            if pipe in args.pipelines:
                headline[key + suffix] = mean_over_train_seeds(pipeline_name(pipe), "fd", 16)
        if bld_pipe in args.pipelines and "gaussian-matched" in args.pipelines:
            headline["bld_fd_s16_matched_recon" + suffix] = headline["bld_fd_s16" + suffix]
        for pipe in args.pipelines:
            if pipe.startswith("bld-"):
                headline[f"bld{pipe[4:]}_fd_s16{suffix}"] = mean_over_train_seeds(
                    pipeline_name(pipe), "fd", 16)
        common.update_headline(bench, headline)
    bench.results = {"n": n, "source": source, "guidance": guidance,
                     "guidance_interval": list(interval), "bld_temperature": temperature,
                     "autoencoder": common._jsonable(vars(ae_train.model)),
                     "denoiser": vars(den_cfg), "classifier": clf_meta,
                     "matched_channels": args.matched_channels, "training": train_rows,
                     "reconstruction": recon_rows, "rows": rows, "headline": headline}
    cols = ["pipeline", "train_seed", "sampler", "steps", "seed", "n", "fd", "fd_floor", "fd_recon",
            "precision", "recall", "class_accuracy", "s_per_image"]
    o_ae, o_pr = ae_train.optim, pr_train.optim
    sweep_bits = [int(p[4:]) for p in args.pipelines if p.startswith("bld-")]
    bits_text = " / ".join(map(str, sorted(set(sweep_bits + (
        [ae_train.model.bits] if "bld" in args.pipelines else []))))) or str(ae_train.model.bits)
    sections = [
        "## Design", "",
        f"Every pipeline trained in this run from scratch with the `{args.preset}` presets' "
        f"settings: autoencoders {o_ae.steps} steps x batch {o_ae.batch_size} (lr {o_ae.lr}, "
        f"the same Encoder/Decoder, {ae_train.model.channels} channels, hidden "
        f"{ae_train.model.hidden}), priors {o_pr.steps} steps x batch {o_pr.batch_size} (lr "
        f"{o_pr.lr}; the same Denoiser: width {den_cfg.width}, depth {den_cfg.depth}, "
        f"{den_cfg.conditioning} conditioning, same init seed), on {len(x_train)} {source} "
        f"training images. BLD: {bits_text} Bernoulli bits per position, T = "
        f"{pr_train.diffusion.timesteps} {pr_train.diffusion.schedule}. Gaussian: tanh-bounded "
        f"continuous latents ({ae_train.model.bits} channels for matched compute"
        + (f", {args.matched_channels} for matched reconstruction quality"
           if "gaussian-matched" in args.pipelines else "") + ") normalised to unit "
        "variance, epsilon prediction, linear betas 1e-4..0.02 over 1000 steps, diffusers DDIM "
        f"(eta 0, trailing spacing). All class-conditional ({pr_train.cond_drop:.0%} per-sample "
        f"label dropout), sampled with classifier-free guidance w = {guidance} at "
        f"{interval[0]:g} <= t / T <= {interval[1]:g} (BLD also at the prior preset's "
        f"temperature {temperature:g}). FD: project "
        f"classifier (test accuracy {common.fmt(clf_meta.get('test_accuracy'))}), N = {n} "
        f"against half the test set; the floor is {n} other real test images. Seconds per "
        f"image: sampling + decoding, {common.precision_name()}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads.", "",
        "## Training", "", common.markdown_table(train_rows), "",
        "## Autoencoder bound (reconstructions of the floor images)", "",
        common.markdown_table(recon_rows), "",
        "## FD vs steps and time", "", common.markdown_table(rows, cols), "",
        f"![FD vs steps]({bench.path('_fd_vs_steps.png').name}) "
        f"![FD vs time]({bench.path('_fd_vs_time.png').name})", "",
        *([f"![FD vs PSNR]({bench.path('_fd_vs_psnr.png').name}) "
           f"![FD vs training seconds]({bench.path('_fd_vs_train_s.png').name})", ""]
          if 16 in args.steps else []),
        "## Spread at S = 16 (training seeds and a second sampling seed)", "", *notes, "",
        "Differences between pipelines smaller than the spread between training seeds are "
        "noise.",
    ]
    common.write_report(bench, "BLD vs Gaussian latent diffusion", sections)


if __name__ == "__main__":
    main()
