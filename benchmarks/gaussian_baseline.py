"""Binary latent diffusion (BLD) against Gaussian latent diffusion, side by side in one run.

Both pipelines are trained here from scratch with identical budgets and backbones, on
Fashion-MNIST, then sampled at S in {4, 8, 16, 32, 64} steps:

* autoencoders: the same `bld.autoencoder.Encoder` / `Decoder` architecture (the
  fashion-mnist preset: 28 px -> 7 x 7 x 16), the same steps x batch, L1 + MSE loss.
  BLD: Bernoulli bits (stochastic in training, [p > 0.5] when encoding), as `BinaryAutoencoder`.
  Gaussian: no binarisation, continuous latents z = tanh(encoder output) (tanh-bounded, no KL
  term), decoder without bit normalisation; latents are normalised to zero mean and unit
  variance (one scalar each, measured on the encoded training set) before diffusion, as
  LDM's scale factor does.
* priors: the same `bld.denoiser.Denoiser` backbone (width x depth x heads), the same init
  seed, steps x batch, optimiser, EMA, label dropout (10%, per sample) and bf16 autocast.
  BLD: Bernoulli diffusion (T = 64, cosine, flip parameterisation, BCE).
  Gaussian: epsilon prediction (the head's C outputs per position), DDPM linear betas
  1e-4 .. 0.02 over 1000 training steps, MSE; sampled with diffusers' `DDIMScheduler`
  (eta = 0, "trailing" timestep spacing so that every S starts from pure noise).
* both class-conditional, sampled with classifier-free guidance of the same w (default 1):
  logits (BLD) or epsilon (Gaussian) = (1 + w) cond - w uncond.

Reported: FD (project classifier, N samples, real-vs-real floor at that N), precision/recall,
class accuracy and seconds per image (sampling + decoding) per S for both, the autoencoders'
own reconstruction FD (the bound on each prior), and S = 16 with a second sampling seed
(run-to-run spread of sampling; training is run once per side: a training-seed spread would
double the cost; use --train-seeds 2 for it).

    python benchmarks/gaussian_baseline.py            # ~10-12 min on 1 thread
    python benchmarks/gaussian_baseline.py --quick
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import common

log = logging.getLogger("bench")


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64],
                   help="sampling steps S for both priors (BLD: of its T = 64)")
    p.add_argument("--n", type=int, default=None, help="samples per setting (default 500)")
    p.add_argument("--guidance", type=float, default=1.0, help="the same CFG w for both")
    p.add_argument("--train-images", type=int, default=None,
                   help="Fashion-MNIST training images used (default 12000)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps (default 250)")
    p.add_argument("--ae-batch", type=int, default=64)
    p.add_argument("--prior-steps", type=int, default=None, help="prior steps (default 500)")
    p.add_argument("--prior-batch", type=int, default=128)
    p.add_argument("--width", type=int, default=128, help="denoiser width (both priors)")
    p.add_argument("--depth", type=int, default=4, help="denoiser depth (both priors)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--train-seeds", type=int, default=1,
                   help="train each side this many times (seeds seed, seed+1, ...)")
    p.add_argument("--batch-size", type=int, default=500, help="sampling batch")
    return p.parse_args()


class GaussianAutoencoder(nn.Module):
    """The binary autoencoder's encoder and decoder without binarisation: z = tanh(enc(x))."""

    def __init__(self, config) -> None:
        super().__init__()
        from bld.autoencoder import Decoder, Encoder
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
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(encode(x[i:i + batch]).float())
    return torch.cat(out)


@torch.no_grad()
def decode_all(decode, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(z), batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(decode(z[i:i + batch]).float().clamp(-1, 1))
    return torch.cat(out)


def cond_drop(y: torch.Tensor, null: int, g: torch.Generator, p: float = 0.1) -> torch.Tensor:
    """Per-sample label dropout to the learned null label (SPEC 2)."""
    return torch.where(torch.rand(y.shape, generator=g) < p, torch.full_like(y, null), y)


@torch.no_grad()
def sample_gaussian(model, sched_steps: int, n: int, shape, labels, guidance: float,
                    mean: float, std: float, seed: int, batch: int) -> torch.Tensor:
    """DDIM (eta 0) with CFG on epsilon; returns latents in the autoencoder's scale."""
    g = torch.Generator().manual_seed(seed)
    sched = make_ddim(sched_steps)
    out = []
    for start, b in common.batches(n, batch):
        x = torch.randn((b, *shape), generator=g)
        y = labels[start:start + b]
        y_null = torch.full_like(y, model.null_label)
        for t in sched.timesteps:
            tt = torch.full((b,), float(t) / 1000.0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if guidance:
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
               batch: int) -> torch.Tensor:
    from bld.sampling import sample
    g = torch.Generator().manual_seed(seed)
    out = []
    for start, b in common.batches(n, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(sample(model, diffusion, (b, *shape), steps=steps,
                              y=labels[start:start + b], guidance=guidance,
                              null_label=model.null_label, generator=g).z0)
    return torch.cat(out)


def train_side(kind: str, args, seed: int, x_train, y_train, ae_cfg, den_cfg, sizes) -> dict:
    """Train one side's autoencoder and prior; returns models, latent scale and times."""
    from bld.autoencoder import BinaryAutoencoder
    from bld.denoiser import Denoiser
    from bld.diffusion import BernoulliDiffusion, DiffusionConfig

    torch.manual_seed(seed)
    ae = BinaryAutoencoder(ae_cfg) if kind == "bld" else GaussianAutoencoder(ae_cfg)

    def ae_loss(idx, g):
        x = x_train[idx]
        recon = ae(x, deterministic=False, generator=g).recon if kind == "bld" else ae(x)
        recon = recon.float()
        return (recon - x).abs().mean() + F.mse_loss(recon, x)  # L1 + MSE (the preset's)

    r_ae = common.train_model(ae, ae_loss, n_items=len(x_train), steps=sizes["ae_steps"],
                              batch_size=args.ae_batch, lr=2e-3, seed=seed, ema_decay=0.995,
                              desc=f"{kind} autoencoder")
    ae_ema = r_ae.model
    t0 = time.perf_counter()
    if kind == "bld":
        z = encode_all(lambda x: ae_ema.encode(x, deterministic=True), x_train)
        mean, std = 0.0, 1.0
        diffusion = BernoulliDiffusion(DiffusionConfig(timesteps=64, schedule="cosine"))
    else:
        z = encode_all(ae_ema.encode, x_train)
        mean, std = z.mean().item(), z.std().item()  # one scalar each, as LDM's scale factor
        z = (z - mean) / std
        diffusion = make_ddim(1000)  # for add_noise with the training schedule
        acp = diffusion.alphas_cumprod
    encode_s = time.perf_counter() - t0

    torch.manual_seed(seed + 1000)  # the same initial prior weights for both sides
    model = Denoiser(den_cfg)
    null = model.null_label

    def prior_loss(idx, g):
        z0, y = z[idx], cond_drop(y_train[idx], null, g)
        if kind == "bld":
            return diffusion.training_losses(model, z0, y, generator=g).loss
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise  # q(x_t | x_0), DDPM
        return F.mse_loss(model(x_t, t.float() / 1000.0, y).float(), noise)  # epsilon loss

    r_pr = common.train_model(model, prior_loss, n_items=len(z), steps=sizes["prior_steps"],
                              batch_size=args.prior_batch, lr=1.5e-3, seed=seed,
                              ema_decay=0.995, desc=f"{kind} prior")
    return {"ae": ae_ema, "prior": r_pr.model, "diffusion": diffusion, "mean": mean,
            "std": std, "ae_seconds": r_ae.seconds, "prior_seconds": r_pr.seconds,
            "encode_seconds": encode_s, "ae_final_loss": sum(r_ae.losses[-10:]) / 10,
            "prior_final_loss": sum(r_pr.losses[-10:]) / 10, "latent_std_raw": std}


def main() -> None:
    args = parse_args()
    q = args.quick
    sizes = {"n": args.n or (64 if q else 500),
             "train_images": args.train_images or (512 if q else 12000),
             "ae_steps": args.ae_steps or (4 if q else 250),
             "prior_steps": args.prior_steps or (4 if q else 500)}
    if q:
        args.steps = [s for s in args.steps if s in (4, 16)]
        args.width, args.depth, args.ae_batch, args.prior_batch = 32, 1, 16, 32
    bench = common.setup("gaussian_baseline", args,
                         expected_full="~10-12 min with 1 thread (autoencoders ~3, encoding ~0.5, "
                                       "priors ~3.5, sampling + FD ~3.5)")
    from bld.autoencoder import AutoencoderConfig
    from bld.denoiser import DenoiserConfig
    from bld.evaluation import psnr

    ae_cfg = AutoencoderConfig(in_channels=1, image_size=28, channels=8 if q else 32,
                               channel_mult=(1, 2, 2), num_res_blocks=1, attention=True,
                               hidden=16 if q else 64, bits=16)
    den_cfg = DenoiserConfig(bits=ae_cfg.bits, grid=ae_cfg.grid, width=args.width,
                             depth=args.depth, heads=min(args.heads, args.width // 16),
                             num_classes=10)
    shape = ae_cfg.latent_shape
    x_train, y_train = common.fashion_mnist("train", sizes["train_images"])
    xt, yt = common.fashion_mnist("test")
    clf, clf_meta = common.get_classifier(bench)
    n = sizes["n"]
    ref = common.FDReference(clf, xt, yt, n, seed=0)
    labels = common.cycled_labels(n, 10)

    rows, recon_rows, train_rows = [], [], []
    for tseed in range(args.seed, args.seed + args.train_seeds):
        for kind in ("bld", "gaussian"):
            side = train_side(kind, args, tseed, x_train, y_train, ae_cfg, den_cfg, sizes)
            name = "BLD (Bernoulli)" if kind == "bld" else "Gaussian (DDIM)"
            train_rows.append({"method": name, "train_seed": tseed,
                               "ae_s": side["ae_seconds"], "encode_s": side["encode_seconds"],
                               "prior_s": side["prior_seconds"],
                               "ae_loss_end": side["ae_final_loss"],
                               "prior_loss_end": side["prior_final_loss"]})
            ae = side["ae"]
            enc = ((lambda x: ae.encode(x, deterministic=True)) if kind == "bld" else ae.encode)
            rec = decode_all(ae.decode, encode_all(enc, ref.floor))
            m = ref.evaluate(rec, ref.floor_labels)
            recon_rows.append({"method": name, "train_seed": tseed, "n": n, "fd_recon": m["fd"],
                               "fd_floor": m["fd_floor_real_vs_real"], "psnr": psnr(rec, ref.floor),
                               "precision": m["precision"], "recall": m["recall"],
                               "class_accuracy": m["class_accuracy"]})
            settings = [(s, args.seed) for s in args.steps]
            if 16 in args.steps:
                settings.append((16, args.seed + 1))
            warm = labels[:8]  # warm-up before timing (SPEC 5)
            if kind == "bld":
                sample_bld(side["prior"], side["diffusion"], 2, 8, shape, warm, args.guidance, 0, 8)
            else:
                sample_gaussian(side["prior"], 2, 8, shape, warm, args.guidance, 0.0, 1.0, 0, 8)
            for s, seed in tqdm(settings, desc=f"{kind} sampling"):
                t0 = time.perf_counter()
                if kind == "bld":
                    z = sample_bld(side["prior"], side["diffusion"], s, n, shape, labels,
                                   args.guidance, seed, args.batch_size)
                else:
                    z = sample_gaussian(side["prior"], s, n, shape, labels, args.guidance,
                                        side["mean"], side["std"], seed, args.batch_size)
                images = decode_all(ae.decode, z)
                sec = (time.perf_counter() - t0) / n
                m = ref.evaluate(images, labels)
                rows.append({"method": name, "train_seed": tseed, "steps": s, "seed": seed,
                             "n": n, "fd": m["fd"], "fd_floor": m["fd_floor_real_vs_real"],
                             "fd_recon": recon_rows[-1]["fd_recon"],
                             "precision": m["precision"], "recall": m["recall"],
                             "class_accuracy": m["class_accuracy"], "s_per_image": sec})
                log.info("%s S=%d seed %d: FD %.3f (floor %.3f, recon %.3f), %.4f s/image",
                         name, s, seed, m["fd"], m["fd_floor_real_vs_real"],
                         recon_rows[-1]["fd_recon"], sec)

    # ------------------------------------------------------------------------ report
    main_rows = [r for r in rows if r["seed"] == args.seed and r["train_seed"] == args.seed]
    methods = ["BLD (Bernoulli)", "Gaussian (DDIM)"]
    fd_series = {m: ([r["steps"] for r in main_rows if r["method"] == m],
                     [r["fd"] for r in main_rows if r["method"] == m]) for m in methods}
    time_series = {m: ([r["s_per_image"] for r in main_rows if r["method"] == m],
                       [r["fd"] for r in main_rows if r["method"] == m]) for m in methods}
    floor = main_rows[0]["fd_floor"]
    common.plot_lines(bench.path("_fd_vs_steps.png"), fd_series, xlabel="sampling steps S",
                      ylabel=f"FD (N = {n})", logx=True,
                      title=f"BLD vs Gaussian LDM, w = {args.guidance}",
                      hlines={f"real-vs-real floor {floor:.3g}": floor})
    common.plot_lines(bench.path("_fd_vs_time.png"), time_series,
                      xlabel="seconds per image (sampling + decoding)", ylabel=f"FD (N = {n})",
                      logx=False, title="FD vs wall time per image (points: S)",
                      hlines={f"real-vs-real floor {floor:.3g}": floor})
    spread_rows = [r for r in rows if r["steps"] == 16]
    notes = []
    for m in methods:
        pair = [r for r in spread_rows if r["method"] == m and r["train_seed"] == args.seed]
        if len(pair) == 2:
            notes.append(f"- {m}: FD at S = 16 is {pair[0]['fd']:.4g} (seed {pair[0]['seed']}) and "
                         f"{pair[1]['fd']:.4g} (seed {pair[1]['seed']}): sampling spread "
                         f"{100 * common.spread(pair[0]['fd'], pair[1]['fd']):.1f}%.")
    bench.results = {"sizes": sizes, "autoencoder": vars(ae_cfg),
                     "denoiser": vars(den_cfg), "guidance": args.guidance, "classifier": clf_meta,
                     "training": train_rows, "reconstruction": recon_rows, "rows": rows}
    cols = ["method", "train_seed", "steps", "seed", "n", "fd", "fd_floor", "fd_recon",
            "precision", "recall", "class_accuracy", "s_per_image"]
    sections = [
        "## Design", "",
        "Both pipelines trained in this run from scratch with identical budgets: autoencoders "
        f"{sizes['ae_steps']} steps x batch {args.ae_batch} (same Encoder/Decoder, "
        f"{ae_cfg.channels} channels, hidden {ae_cfg.hidden}, latent {list(shape)}), priors "
        f"{sizes['prior_steps']} steps x batch {args.prior_batch} (same Denoiser, width "
        f"{den_cfg.width}, depth {den_cfg.depth}, heads {den_cfg.heads}, same init seed), on the "
        f"first {sizes['train_images']} Fashion-MNIST training images. BLD: Bernoulli bits, "
        "T = 64 cosine, flip parameterisation. Gaussian: tanh-bounded continuous latents "
        "normalised to unit variance, epsilon prediction, linear betas 1e-4..0.02 over 1000 "
        "steps, diffusers DDIM (eta 0, trailing spacing). Both class-conditional with 10% "
        f"per-sample label dropout, sampled with classifier-free guidance w = {args.guidance}. "
        f"FD: project classifier (test accuracy {common.fmt(clf_meta.get('test_accuracy'))}), "
        f"N = {n} against half the test set; the floor is {n} other real test images. "
        "Seconds per image: sampling + decoding, bf16 autocast, batch "
        f"{args.batch_size}, {torch.get_num_threads()} threads.", "",
        "## Training", "", common.markdown_table(train_rows), "",
        "## Autoencoder bound (reconstructions of the floor images)", "",
        common.markdown_table(recon_rows), "",
        "## FD vs steps and time", "", common.markdown_table(rows, cols), "",
        f"![FD vs steps]({bench.path('_fd_vs_steps.png').name}) "
        f"![FD vs time]({bench.path('_fd_vs_time.png').name})", "",
        "## Run-to-run spread at S = 16", "", *notes, "",
        "The spread above is of sampling only (one training run per side unless "
        "--train-seeds > 1); differences between the methods smaller than it are noise.",
    ]
    common.write_report(bench, "BLD vs Gaussian latent diffusion", sections)


if __name__ == "__main__":
    main()
