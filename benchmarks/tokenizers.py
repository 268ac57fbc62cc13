"""Tokenizers at equal bits per position: our Bernoulli quantizer against LFQ, FSQ and VQ.

Every tokenizer uses the same `bld.models.autoencoder.Encoder` / `Decoder` architecture and the
settings of one autoencoder preset (``--preset``: the demo's ``fashion-mnist`` by default,
``faces64`` for the colour demo's DiceBear faces, ``faces64-grid8`` for its first 8 x 8 x 64
autoencoder, which the published faces results used on the ten styles earlier versions drew
into the default folder, today's holding the six): its dataset (``data.source``, or
``--dataset``), bits per position, every architecture field (image channels and size,
padding, pixel-unshuffle ``patch``, widths, channel multipliers, attention), reconstruction
loss, steps x batch, learning rate, warm-up and EMA (the flags below change some of them),
and the same seed; only the quantizer between the encoder's 1x1 head (D channels) and the
decoder's bias-free 1x1 input projection changes. The decoder sees code / sqrt(D) (for bits:
(2z - 1) / sqrt(D), exactly what `BinaryAutoencoder` feeds it). Quantizers run in fp32, the
networks in the precision `auto` picks (bld.core.device). Every tokenizer is trained with two
seeds (``--seeds``).

Tokenizers (``make_specs``), at the preset's B bits per position and at 12 (log2 of the
number of codes a position can name):

  bernoulli-B            ours as the preset trains it (``model.train_bits``: Bernoulli draws
                         z ~ B(sigmoid(l)), or [p > 0.5]), straight-through          B
  bernoulli-B-threshold  ours with the other way of drawing bits in training
    / -draws
  lfq-B                  LFQ, B binary dims, entropy loss 0.1 (on sub-codebooks of at most 8
                         bits, `lfq_codebooks`: a 2^B-way softmax per token does not fit a
                         CPU step), commitment 0.25
  fsq-B                  FSQ, levels (8, 8, 8, 5, 5, 5) for 16 bits (15.966), else 8s and one
                         power of two (32 bits: ten 8s and a 4; 64 bits: twenty 8s and a 16,
                         as the library takes a level of 2 only in its symmetric variant)
  bernoulli-12, vq-12    ours and VQ with a 4096 x 12 codebook (EMA updates, decay 0.8,
                         commitment 0.25, dead codes re-seeded)                       12

VQ with 2^B codes for B >= 16 is left out: its distance matrix (3136 tokens x 65536 codes
per step at B = 16) is impractical on a CPU, so VQ is compared at 12 bits. Reported on the
dataset's test split (Fashion-MNIST: 10000 images, DiceBear faces: 2004, the ten styles
2000): PSNR (over the whole set, `bld.core.metrics.psnr`), SSIM, L1, reconstruction FD (in the
feature space of the project classifier of that dataset: ``--classifier``, else one trained
into <out>/classifier[-<source>]; half the test set's reconstructions against the other half,
with the real-vs-real floor at the same N: 5000, or 1002 on the faces), and code usage: for
binary codes the bit entropy and dead-bit fraction, for every tokenizer the perplexity of its
codes over the test tokens (log2 of it = effective bits) and the share of its codebook used.
``tokenizer_psnr_gap_db`` in headline.json (``tokenizer_psnr_gap_db_<source>`` on another
dataset than Fashion-MNIST, e.g. ``_dicebear``) is the best mean PSNR of LFQ / FSQ minus
ours (bernoulli-B) at the preset's B, means over the seeds. The files are
<out>/<name>.md / .json / _*.png, ``--name`` by default ``tokenizers`` on Fashion-MNIST and
``tokenizers_<source>`` on another dataset.

    python benchmarks/tokenizers.py --threads 1   # ~1.5 h on 1 thread (12 trainings)
    python benchmarks/tokenizers.py --threads 1 --preset faces64-grid8 --name tokenizers_dicebear \
        --classifier runs/demo-faces/classifier   # ~2 h: 64 bits on 8 x 8 (0.2-0.4 s/step)
    python benchmarks/tokenizers.py --quick
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import common
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # bernoulli | lfq | fsq | vq
    bits: float  # log2 of the number of codes per position
    dim: int  # D: channels between encoder head and decoder
    levels: tuple[int, ...] = ()  # FSQ
    codebook: int = 0  # VQ
    train_bits: str = "bernoulli"  # bernoulli quantizer: draws in training, or "threshold"


def fsq_levels(bits: int) -> tuple[int, ...]:
    """FSQ levels for about ``bits`` bits: the FSQ paper's (8, 8, 8, 5, 5, 5) for 16, else
    levels of 8 (3 bits each) and one other power of two for the rest: a 4 for 2 bits left,
    and for 1 bit left one 8 less and a 16 (vector-quantize-pytorch's FSQ refuses a level of
    2 outside its symmetric variant), so 64 bits are twenty 8s and a 16."""
    if bits == 16:
        return (8, 8, 8, 5, 5, 5)
    eights, rest = divmod(bits, 3)
    if rest == 1 and eights:
        return (8,) * (eights - 1) + (16,)
    return (8,) * eights + ((2 ** rest,) if rest else ())


def make_specs(bits: int, train_bits: str) -> dict[str, Spec]:
    """The tokenizers at the demo autoencoder's ``bits`` per position (ours as the preset
    trains it, ours with the other way of drawing bits, LFQ, FSQ), and at 12 bits, where a VQ
    codebook (4096 codes) still fits a CPU step."""
    other = "threshold" if train_bits == "bernoulli" else "draws"
    levels = fsq_levels(bits)
    specs = [
        Spec(f"bernoulli-{bits}", "bernoulli", float(bits), bits, train_bits=train_bits),
        Spec(f"bernoulli-{bits}-{other}", "bernoulli", float(bits), bits,
             train_bits="threshold" if other == "threshold" else "bernoulli"),
        Spec(f"lfq-{bits}", "lfq", float(bits), bits),
        Spec(f"fsq-{bits}", "fsq", math.log2(math.prod(levels)), len(levels), levels=levels),
        Spec("bernoulli-12", "bernoulli", 12.0, 12, train_bits=train_bits),
        Spec("vq-12", "vq", 12.0, 12, codebook=4096),
    ]
    return {s.name: s for s in specs}


def _mixed_radix_index(digits: torch.Tensor, radices: tuple[int, ...]) -> torch.Tensor:
    """(B, D, h, w) int64 digits (digit c in [0, radices[c])) -> the code index per
    position, digit 0 the lowest: (B, h, w) int64 where the code space prod(radices) fits in
    int64, else (B, h, w, G), the index of each of G runs of consecutive digits that does
    (64 bits: 63 and 1), so that no index overflows."""
    runs, start, size = [], 0, 1
    for c, r in enumerate(radices):
        if size * r > 2 ** 63:
            runs.append((start, c))
            start, size = c, 1
        size *= r
    runs.append((start, len(radices)))
    words = []
    for a, b in runs:
        basis = torch.tensor([math.prod(radices[a:c]) for c in range(a, b)], dtype=torch.int64,
                             device=digits.device)
        words.append((digits[:, a:b].long() * basis.view(1, -1, 1, 1)).sum(1))
    return words[0] if len(words) == 1 else torch.stack(words, dim=-1)


def _fsq_index(codes: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """(B, D, h, w) FSQ codes in [-1, 1] -> the code index (mixed radix, `_mixed_radix_index`)."""
    lv = torch.tensor(levels, dtype=torch.float64, device=codes.device).view(1, -1, 1, 1)
    half = lv // 2  # FSQ's grid: code * half + half is the level index (even levels: offset)
    idx = (codes.double() * half + half).round().clamp(min=0)
    return _mixed_radix_index(torch.minimum(idx, lv - 1).long(), levels)


def lfq_codebooks(dim: int, max_bits: int = 8) -> int:
    """Sub-codebooks for LFQ's entropy loss: the fewest that divide ``dim`` into groups of at
    most ``max_bits`` bits (its softmax has 2^bits entries per group and token, so a single
    2^32-way group, or two 2^16-way ones, do not fit a CPU step)."""
    return next(n for n in range(1, dim + 1) if dim % n == 0 and dim // n <= max_bits)


def _preset(name: str):
    from bld.core.config import config_from_dict, load_config_dict
    return config_from_dict("autoencoder", load_config_dict("autoencoder", name, []))


def source_tag(source: str) -> str:
    """A dataset source as part of a file or key name: ``dicebear``, ``emoji_twitter``; a
    folder by its last part."""
    return re.sub(r"[^A-Za-z0-9]+", "_", Path(source).name).strip("_") or "data"


def dataset_title(source: str) -> str:
    """A dataset source as the report names it."""
    return {"fashion-mnist": "Fashion-MNIST", "dicebear": "DiceBear faces"}.get(source, source)


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="fashion-mnist",
                   help="autoencoder preset (or YAML) whose dataset, bits, architecture, loss "
                        "and training budget to use (faces64: the colour demo's faces; "
                        "faces64-grid8: its first 8 x 8 x 64 autoencoder)")
    p.add_argument("--dataset", default=None,
                   help="bld.data.build_dataset source to train and test on instead of the "
                        "preset's data.source (its images must have the preset's size and "
                        "channels)")
    p.add_argument("--name", default=None,
                   help="output name: <out>/<name>.md, .json, _*.png (default: tokenizers on "
                        "fashion-mnist, else tokenizers_<source>)")
    p.add_argument("--work", type=Path, default=None,
                   help="where each finished (tokenizer, seed) is kept, so a rerun or a crash "
                        "loses nothing (default runs/<name>)")
    p.add_argument("--only-seed", type=int, default=None,
                   help="train only this seed and write no report: two processes with one "
                        "thread each can share the seeds, then a call without it reports from "
                        "what they kept in --work")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the (tokenizer, seed) pairs kept in --work")
    p.add_argument("--tokenizers", nargs="+", default=None,
                   help="names of make_specs (default: all of them at the preset's bits)")
    p.add_argument("--train-steps", type=int, default=None, help="steps each (default: preset)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--channels", type=int, default=None,
                   help="encoder/decoder first-level width (default: the preset's)")
    p.add_argument("--hidden", type=int, default=None,
                   help="width before the D-channel head (default: the preset's)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per tokenizer")
    p.add_argument("--train-images", type=int, default=None,
                   help="N training images (default: all of the split; the first N of "
                        "Fashion-MNIST, a seeded random N of an image folder)")
    p.add_argument("--test-images", type=int, default=None,
                   help="N test images, chosen as --train-images")
    return p.parse_args()


def _vqlib():
    try:
        import vector_quantize_pytorch as vq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("tokenizers.py needs vector-quantize-pytorch for LFQ, FSQ and VQ: "
                         "pip install 'vector-quantize-pytorch>=1.14' (or pip install -e "
                         "'.[bench]')") from e
    return vq


class Quantized(NamedTuple):
    codes: torch.Tensor  # (B, D, h, w) what the decoder sees (before / sqrt(D))
    aux: torch.Tensor  # scalar auxiliary loss (0 for bernoulli and fsq)
    index: torch.Tensor  # (B, h, w) int64 code index per position
    bits: torch.Tensor | None  # (B, D, h, w) in {0, 1} for binary codes, else None
    probs: torch.Tensor | None  # (B, D, h, w) bit probabilities (bernoulli only)


def _bits_to_index(bits: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) 0/1 -> sum_c bits_c 2^c: (B, h, w) int64 up to 63 bits, above that
    (B, h, w, 2) (`_mixed_radix_index`)."""
    return _mixed_radix_index(bits.long(), (2,) * bits.shape[1])


class Tokenizer(nn.Module):
    """Encoder -> quantizer -> Decoder, one shared architecture for every quantizer."""

    def __init__(self, spec: Spec, base, channels: int, hidden: int) -> None:
        """``base``: the preset's AutoencoderConfig (layout: image channels and size, padding,
        patch, channel multipliers, attention...); bits and widths set here."""
        super().__init__()
        from bld.models.autoencoder import BernoulliQuantizer, Decoder, Encoder
        self.spec = spec
        self.config = cfg = replace(base, channels=channels, hidden=hidden, bits=spec.dim,
                                    norm_bits=False)
        # pixel-unshuffle (patch) is the Encoder's and pixel-shuffle the Decoder's; the
        # padding to padded_size is BinaryAutoencoder's, so `forward` does it here
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        if spec.kind == "bernoulli":
            self.quantizer = BernoulliQuantizer()
        elif spec.kind == "lfq":
            vq = _vqlib()
            n_books = lfq_codebooks(spec.dim)
            self.quantizer = vq.LFQ(dim=spec.dim, codebook_size=2 ** (spec.dim // n_books),
                                    num_codebooks=n_books, entropy_loss_weight=0.1,
                                    commitment_loss_weight=0.25, channel_first=True)
        elif spec.kind == "fsq":
            # the library's own indices (int32, with a buffer of every code) only while the
            # codebook is small; 32 bits (2^32 codes) get int64 indices from `_fsq_index`
            self.quantizer = _vqlib().FSQ(levels=list(spec.levels), channel_first=True,
                                          return_indices=math.prod(spec.levels) <= 2 ** 24)
        elif spec.kind == "vq":
            self.quantizer = _vqlib().VectorQuantize(
                dim=spec.dim, codebook_size=spec.codebook, decay=0.8, commitment_weight=0.25,
                threshold_ema_dead_code=2, accept_image_fmap=True)
        else:
            raise ValueError(f"unknown tokenizer kind {spec.kind!r}")

    def quantize(self, h: torch.Tensor, generator: torch.Generator | None = None) -> Quantized:
        """(B, D, h, w) encoder output -> codes; fp32, outside autocast."""
        kind, zero = self.spec.kind, h.new_zeros(())
        with torch.autocast("cpu", enabled=False):
            h = h.float()
            if kind == "bernoulli":
                det = not self.training or self.spec.train_bits == "threshold"
                q = self.quantizer(h, deterministic=det, generator=generator)
                return Quantized(2 * q.bits - 1, zero, _bits_to_index(q.bits.detach()),
                                 q.bits.detach(), q.probs.detach())
            if kind == "lfq":
                codes, _, aux = self.quantizer(h)
                bits = (codes.detach() > 0).float()
                return Quantized(codes, aux, _bits_to_index(bits), bits, None)
            if kind == "fsq":
                codes, index = self.quantizer(h)
                if index is None:
                    index = _fsq_index(codes.detach(), self.spec.levels)
                return Quantized(codes, zero, index.long(), None, None)
            codes, index, aux = self.quantizer(h)
            return Quantized(codes, aux.sum(), index.long(), None, None)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, Quantized]:
        """(B, c, H, W) -> reconstruction (B, c, H, W) and the quantizer's output (on the
        preset's grid). Padding and cropping as `BinaryAutoencoder` does them."""
        c = self.config
        if x.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"tokenizer expects images (B, {c.in_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(x.shape)}")
        extra = (c.padded_size or c.image_size) - c.image_size
        lo = extra // 2
        if extra:
            x = F.pad(x, (lo, extra - lo, lo, extra - lo), mode="replicate")
        q = self.quantize(self.encoder(x), generator)
        # the library quantizers return channel-last strides; GroupNorm on CPU is several
        # times slower on those, so hand the decoder a contiguous (B, D, h, w) tensor
        codes = q.codes.contiguous() / math.sqrt(self.spec.dim)
        recon = self.decoder(codes)
        return recon[..., lo:lo + c.image_size, lo:lo + c.image_size], q


def usage_stats(spec: Spec, index: torch.Tensor, bits: torch.Tensor | None,
                probs: torch.Tensor | None) -> dict[str, float]:
    """Code usage over the test tokens: perplexity (log2 = effective bits), share of the
    codebook used, and for binary codes the bit entropy / dead bits (`bld.core.metrics`)."""
    from bld.core.metrics import bit_usage
    if index.dim() == 4:  # (B, h, w, G): a code is a row of G words
        counts = torch.unique(index.reshape(-1, index.shape[-1]), dim=0, return_counts=True)[1]
    else:
        counts = torch.unique(index.flatten(), return_counts=True)[1]
    counts = counts.double()
    p = counts / counts.sum()
    ent = float(-(p * p.log2()).sum())
    size = 2.0 ** spec.bits
    out = {"code_perplexity": 2.0 ** ent, "effective_bits": ent,
           "codes_used": int(len(counts)), "codebook_usage": len(counts) / size}
    if bits is not None:
        u = bit_usage(bits)
        out.update({"bit_entropy": u.bit_entropy, "dead_bit_fraction": u.dead_fraction})
    if probs is not None:
        out["encoder_entropy"] = bit_usage(probs).encoder_entropy
    return out


@torch.no_grad()
def reconstruct(model: Tokenizer, x: torch.Tensor, batch: int = 500):
    model.eval()
    rec, idx, bits, probs = [], [], [], []
    for i in range(0, len(x), batch):
        with common.autocast():
            r, q = model(x[i:i + batch])
        rec.append(r.float().clamp(-1, 1))
        idx.append(q.index)
        if q.bits is not None:
            bits.append(q.bits)
        if q.probs is not None:
            probs.append(q.probs)
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return torch.cat(rec), torch.cat(idx), cat(bits), cat(probs)


def main() -> None:
    args = parse_args()
    q = args.quick
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.only_seed is not None:  # checked before any data is loaded
        if args.only_seed not in seeds:
            raise SystemExit(f"--only-seed {args.only_seed} is not one of the seeds {seeds} "
                             "(--seed, --seeds)")
        seeds = [args.only_seed]
    preset = _preset(args.preset)
    o = preset.optim
    specs = make_specs(preset.model.bits, preset.model.train_bits)
    args.tokenizers = args.tokenizers or list(specs)
    unknown = [t for t in args.tokenizers if t not in specs]
    if unknown:
        raise SystemExit(f"unknown tokenizer(s) {unknown}; at this preset: {list(specs)}")
    headline_bits = preset.model.bits
    steps = args.train_steps or (3 if q else o.steps)
    args.batch_size = args.batch_size or (16 if q else o.batch_size)
    args.lr = args.lr or o.lr
    args.channels = args.channels or (8 if q else preset.model.channels)
    args.hidden = args.hidden or (16 if q else preset.model.hidden)
    n_train = args.train_images or (256 if q else None)
    n_test = args.test_images or (400 if q else None)
    source = args.dataset or preset.data.source
    fashion = source == "fashion-mnist"
    args.name = args.name or ("tokenizers" if fashion else f"tokenizers_{source_tag(source)}")
    bench = common.setup(args.name, args,
                         expected_full=f"~{len(args.tokenizers) * args.seeds * 8} min with 1 "
                                       "thread on a shared 2-core CPU (~8 min per training at the "
                                       "demo's budget)" if fashion else
                                       f"{len(args.tokenizers) * args.seeds} trainings of "
                                       f"{steps} steps (their s/step is logged as each ends)")
    from bld.core.metrics import fd_from_features, psnr, ssim
    from bld.evaluation.evaluate import extract_features

    x_train, _ = common.dataset_split(source, "train", n_train)
    xt, yt = common.dataset_split(source, "test", n_test)
    m, title = preset.model, dataset_title(source)
    if tuple(xt.shape[1:]) != (m.in_channels, m.image_size, m.image_size):
        raise SystemExit(f"{source} has images {tuple(xt.shape[1:])}, preset {args.preset} is "
                         f"built for ({m.in_channels}, {m.image_size}, {m.image_size}); pick a "
                         "preset for that dataset (--preset)")
    clf, clf_meta = common.get_classifier(bench, None, source)  # refuses another dataset's
    n_fd = len(xt) // 2
    ref = common.FDReference(clf, xt, yt, n_fd, seed=0)
    ref_feats = extract_features(clf, ref.reference)
    floor_fd = fd_from_features(ref_feats, extract_features(clf, ref.floor))

    runs = [(name, seed) for seed in seeds for name in args.tokenizers]
    work = args.work or Path("runs") / bench.name
    work.mkdir(parents=True, exist_ok=True)
    # what a kept result must have been measured with to be reused
    signature = {
        "preset": args.preset, "source": source, "quick": q, "steps": steps,
        "batch_size": args.batch_size, "lr": args.lr, "channels": args.channels,
        "hidden": args.hidden, "n_train": len(x_train), "n_test": len(xt),
        "classifier": clf_meta.get("path")}
    rows, grids = [], [xt[:12]]
    for name, seed in tqdm(runs, desc="tokenizers"):
        spec = specs[name]
        kept = work / f"{name}-seed{seed}.json"
        saved = common.kept_result(kept, signature)
        if saved is not None:
            log.info("%s seed %d: kept in %s", name, seed, kept)
            rows.append(saved["row"])
            if seed == args.seed:
                grids.append(torch.load(kept.with_suffix(".pt")))
            continue
        if args.report_only:
            log.info("%s seed %d: not measured yet, left out (--report-only)", name, seed)
            continue
        torch.manual_seed(seed)
        model = Tokenizer(spec, preset.model, args.channels, args.hidden)

        def loss_fn(idx, g):
            x = x_train[idx]
            recon, qz = model(x, generator=g)
            recon = recon.float()
            return (preset.loss.l1_weight * (recon - x).abs().mean()
                    + preset.loss.mse_weight * F.mse_loss(recon, x) + qz.aux)

        res = common.train_model(model, loss_fn, n_items=len(x_train), steps=steps,
                                 batch_size=args.batch_size, lr=args.lr, seed=seed,
                                 warmup=min(o.warmup, steps), weight_decay=o.weight_decay,
                                 ema_decay=o.ema_decay, desc=f"{name} seed {seed}")
        rec, index, bits, probs = reconstruct(model, xt)
        feats = extract_features(clf, rec[ref.floor_index])
        row = {"tokenizer": name, "seed": seed, "bits_per_position": spec.bits,
               "latent_dim_D": spec.dim, "psnr": psnr(rec, xt), "ssim": ssim(rec, xt),
               "l1": (rec - xt).abs().mean().item(),
               "fd_recon": fd_from_features(ref_feats, feats), "fd_floor": floor_fd,
               **usage_stats(spec, index, bits, probs),
               "train_s_per_step": res.seconds / steps, "loss_end": sum(res.losses[-10:]) / 10}
        rows.append(row)
        if seed == args.seed:
            grids.append(rec[:12])
        torch.save(rec[:12].clone(), kept.with_suffix(".pt"))
        # after the grid: a kept row always has its grid
        common.keep_result(kept, signature, row=row)
        log.info("%s seed %d: PSNR %.2f dB, SSIM %.3f, recon FD %.3f (floor %.3f), "
                 "perplexity %.0f (%.2f of %.2f bits), %.3f s/step", name, seed, row["psnr"],
                 row["ssim"], row["fd_recon"], floor_fd, row["code_perplexity"],
                 row["effective_bits"], spec.bits, row["train_s_per_step"])

    if args.only_seed is not None:
        log.info("seed %d done and kept in %s; run without --only-seed to write the report",
                 args.only_seed, work)
        return

    # ------------------------------------------------------------------------ report
    from bld.core.plots import image_grid, save_image
    save_image(image_grid(torch.cat(grids), nrow=12), bench.path("_reconstructions.png"), scale=2)
    main_rows = [r for r in rows if r["seed"] == args.seed]
    for metric, ylabel in (("psnr", "PSNR (dB)"), ("fd_recon", f"reconstruction FD (N = {n_fd})")):
        series = {}
        for kind in ("bernoulli", "lfq", "fsq", "vq"):
            pts = [(r["bits_per_position"], r[metric]) for r in main_rows
                   if specs[r["tokenizer"]].kind == kind]
            if pts:
                pts.sort()
                series[kind] = ([a for a, _ in pts], [b for _, b in pts])
        common.plot_lines(bench.path(f"_{metric}.png"), series, xlabel="bits per position",
                          ylabel=ylabel, title=f"tokenizers at equal bits, {title} "
                                                  f"({steps} steps each)",
                          hlines={"real-vs-real floor": floor_fd} if metric == "fd_recon" else None)
    # means and seed-to-seed spread per tokenizer; the headline gap at the demo's bits
    summary = []
    for name in args.tokenizers:
        rs = [r for r in rows if r["tokenizer"] == name]
        if not rs:  # --report-only before it was measured
            continue
        summary.append({"tokenizer": name, "bits_per_position": specs[name].bits,
                        "seeds": len(rs), "psnr_mean": sum(r["psnr"] for r in rs) / len(rs),
                        "psnr_spread": max(r["psnr"] for r in rs) - min(r["psnr"] for r in rs),
                        "fd_recon_mean": sum(r["fd_recon"] for r in rs) / len(rs),
                        "ssim_mean": sum(r["ssim"] for r in rs) / len(rs)})
    means = {r["tokenizer"]: r for r in summary}
    notes, headline = [], {}
    ours = f"bernoulli-{headline_bits}"
    others = [r for r in summary if specs[r["tokenizer"]].kind != "bernoulli"
              and abs(r["bits_per_position"] - headline_bits) < 0.1]
    if ours in means and others:
        best = max(others, key=lambda r: r["psnr_mean"])
        gap = best["psnr_mean"] - means[ours]["psnr_mean"]
        noise = max(best["psnr_spread"], means[ours]["psnr_spread"])
        notes.append(f"- At {headline_bits} bits per position the best other quantizer is "
                     f"{best['tokenizer']} ({best['psnr_mean']:.2f} dB) against {ours} "
                     f"({means[ours]['psnr_mean']:.2f} dB): gap {gap:+.2f} dB (positive: "
                     f"Bernoulli worse; target <= 0.3 dB); the seed-to-seed spread is "
                     f"{noise:.2f} dB.")
        for variant in (n for n in means if n.startswith(f"{ours}-")):  # -threshold / -draws
                notes.append(f"- {variant}: {means[variant]['psnr_mean']:.2f} dB "
                             f"({means[variant]['psnr_mean'] - means[ours]['psnr_mean']:+.2f} dB "
                             f"against {ours}).")
        if not q and args.seeds >= 2 and min(best["seeds"], means[ours]["seeds"]) >= 2:
            key = "tokenizer_psnr_gap_db" + ("" if fashion else f"_{source_tag(source)}")
            headline[key] = gap
            # the key's source names the script, whatever --name the files were given
            common.update_headline(bench, headline)
    bench.results = {"dataset": source, "preset": args.preset,
                     "steps": steps, "batch_size": args.batch_size, "channels": args.channels,
                     "summary": summary, "headline": headline,
                     "hidden": args.hidden, "train_images": len(x_train), "test_images": len(xt),
                     "fd_n": n_fd, "fd_floor": floor_fd, "classifier": clf_meta,
                     "specs": {k: vars(v) for k, v in specs.items()}, "rows": rows,
                     "loss": {"l1_weight": preset.loss.l1_weight,
                              "mse_weight": preset.loss.mse_weight}}
    cols = ["tokenizer", "seed", "bits_per_position", "latent_dim_D", "psnr", "ssim", "l1",
            "fd_recon", "fd_floor", "bit_entropy", "dead_bit_fraction", "code_perplexity",
            "effective_bits", "codebook_usage", "train_s_per_step"]
    unshuffle = (f"pixel-unshuffle {m.patch} ({m.patch} x {m.patch} pixel blocks as channels "
                 "at the input, pixel-shuffled back at the output), " if m.patch > 1 else "")
    padded = (f"padded to {m.padded_size} px, " if m.padded_size not in (0, m.image_size)
              else "")
    fsq = [s for s in specs.values() if s.kind == "fsq" and s.name in args.tokenizers]
    sections = [
        "## Settings", "",
        f"Dataset {title} (`{source}`: {m.image_size} px, {m.in_channels} channel"
        f"{'s' if m.in_channels > 1 else ''}), autoencoder preset `{args.preset}`. Each "
        f"tokenizer: {steps} steps x batch {args.batch_size} on {len(x_train)} training "
        f"images of {title}, AdamW lr {args.lr} (warm-up {min(o.warmup, steps)}, EMA "
        f"{o.ema_decay}), loss {preset.loss.l1_weight:g} L1 + {preset.loss.mse_weight:g} MSE "
        f"(+ the quantizer's own auxiliary loss for LFQ / VQ), {padded}{unshuffle}"
        f"encoder/decoder width {args.channels}, hidden {args.hidden}, channel multipliers "
        f"{list(m.channel_mult)}, {m.num_res_blocks} residual block(s) per level, attention "
        f"{'on' if m.attention else 'off'}, {m.grid} x {m.grid} positions. Test set: "
        f"{len(xt)} images of {title}; reconstruction FD of "
        f"{n_fd} reconstructions against the other {len(ref.reference)} real test images "
        f"(floor: {n_fd} real images against the same reference). FD in the feature space of "
        f"the project classifier trained on {clf_meta.get('dataset', source)} (test accuracy "
        f"{common.fmt(clf_meta.get('test_accuracy'))})."
        " Bits per position = log2(number of codes): see the module docstring for each "
        "quantizer's exact settings"
        + "".join(f"; {s.name} has levels {list(s.levels)} ({s.bits:.4g} bits)" for s in fsq)
        + ".", "",
        "## Means over seeds", "", common.markdown_table(summary), "", *notes, "",
        "## Every run", "", common.markdown_table(rows, cols), "",
        f"![PSNR]({bench.path('_psnr.png').name}) ![FD]({bench.path('_fd_recon.png').name})", "",
        f"Reconstructions (`{bench.path('_reconstructions.png').name}`): test images on the "
        f"first row, then one row per tokenizer in the order {', '.join(args.tokenizers)}.",
    ]
    common.write_report(bench, "Tokenizers at equal bits per position", sections)


if __name__ == "__main__":
    main()
