"""The ``bld`` command line. Thin: it parses arguments, then calls library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config_dict, preset_names
from .precision import PRECISIONS
from .sampling import DEFAULT_EVIDENCE_WEIGHT

log = logging.getLogger("bld")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: the problem, and where the usage is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


_positive = _int_at_least(1, "at least 1")
_count = _int_at_least(0, "0 or more")


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (no plan) or more, got {text}")
    return value


def _precision_flag(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """--precision auto|fp32|bf16, with --bf16 / --no-bf16 kept as its aliases."""
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help="bf16 autocast or fp32; auto (the default) picks bf16 only where the "
                        "device runs it natively and faster (CUDA with bf16; a CPU with "
                        "AVX-512-BF16 / AMX), else fp32")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                   help="same as --precision bf16")
    p.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32",
                   help="same as --precision fp32")


def _training_flags(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--config", default=None,
                   help=f"a preset ({', '.join(preset_names(kind))}) or a YAML file "
                        "(default: fashion-mnist)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, plots)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (a damaged one is "
                        "skipped for the one before)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a config that differs from the checkpoint's "
                        "(refused by default, listing the differences)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.steps=500 (repeatable)")
    p.add_argument("--steps", type=_positive, help="shortcut for --set optim.steps=N")
    p.add_argument("--batch-size", type=_positive, help="shortcut for --set optim.batch_size=N "
                   "(per process and micro-batch)")
    p.add_argument("--grad-accum", type=_positive, metavar="K", help="shortcut for --set "
                   "optim.grad_accum=K: K micro-batches per optimizer step")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train")
    _precision_flag(p, default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="dataset: fashion-mnist, emoji-twitter, emoji-google, "
                                  "a folder of images (class labels from subfolders), or a "
                                  "folder of shards written by `bld shard`")
    p.add_argument("--data-dir", help="where the dataset lives if not in its default place")


def _shortcut_overrides(args) -> list[str]:
    out = list(args.overrides)
    for flag, key in [("steps", "optim.steps"), ("batch_size", "optim.batch_size"),
                      ("grad_accum", "optim.grad_accum"),
                      ("device", "run.device"), ("precision", "run.precision"), ("seed", "run.seed"),
                      ("data", "data.source"), ("data_dir", "data.data_dir")]:
        v = getattr(args, flag, None)
        if v is not None:
            out.append(f"{key}={str(v).lower() if isinstance(v, bool) else v}")
    return out


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", required=True, help="prior run or checkpoint folder, a `bld demo` "
                   "folder or a folder from save_pretrained")
    p.add_argument("--autoencoder", help="autoencoder folder (default: the one the prior used)")
    p.add_argument("--steps", type=_positive, default=16, help="sampling steps S (2..T)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--evidence-weight", type=float, default=DEFAULT_EVIDENCE_WEIGHT,
                   help="lambda of SPEC 2: how much of z_t's evidence each step removes from the network's posterior (1 = the exact step, 0 = the original code's lower-noise product; default %(default)s, chosen by measurement)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance w")
    p.add_argument("--class", dest="classes", action="append", metavar="ID_OR_NAME",
                   help="class to sample (repeatable; cycles over samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _precision_flag(p)
    p.add_argument("--batch-size", type=_positive, default=256)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="bld", description="Binary Latent Diffusion: train a "
                                 "binary autoencoder and a Bernoulli diffusion prior, sample, "
                                 "inpaint and evaluate.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train an autoencoder + class-conditional prior on "
                       "Fashion-MNIST (or colour emoji), then write samples, reconstructions, "
                       "plots and a report")
    p.add_argument("--dataset", choices=("fashion-mnist", "emoji"), default="fashion-mnist",
                   help="fashion-mnist (28 px grey, default) or emoji (64 px colour Twitter "
                        "emoji from npm, one class per category; fetched with npm on first use)")
    p.add_argument("--out", help="output folder (default runs/demo; runs/demo-emoji for emoji)")
    p.add_argument("--ae-steps", type=_positive, help="autoencoder training steps")
    p.add_argument("--prior-steps", type=_positive, help="prior training steps")
    p.add_argument("--limit", type=_count, default=0, help="use only N training images (0 = all)")
    p.add_argument("--eval-samples", type=_count, default=1000,
                   help="samples for the report's FD / class accuracy (0 = skip evaluation)")
    p.add_argument("--classifier-steps", type=_positive,
                   help="training steps of the FD classifier the report uses "
                        "(default 1200 for fashion-mnist, 600 for emoji)")
    p.add_argument("--evidence-weight", type=float, default=DEFAULT_EVIDENCE_WEIGHT,
                   help="sampler's evidence weight lambda (see bld sample --help)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance w of the samples and the report "
                        "(default: the prior preset's sample_guidance)")
    p.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    p.add_argument("--minutes", type=_minutes, default=15.0,
                   help="time budget: a few seconds of calibration, then both models' training "
                        "steps are scaled down (never up) from the presets' so that the whole "
                        "demo fits (default %(default)g; 0 = the presets' steps, no plan)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _precision_flag(p)
    p.add_argument("--data-dir", help="the dataset's folder if not in its default place (Debian's Fashion-MNIST, ~/.cache/bld/emoji-twitter)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train-ae", help="train a binary autoencoder from a YAML config")
    _training_flags(p, "autoencoder")

    p = sub.add_parser("train-prior", help="train a Bernoulli diffusion prior on binary latents")
    _training_flags(p, "prior")
    p.add_argument("--autoencoder", help="trained autoencoder folder (sets autoencoder=...)")
    p.add_argument("--latents", help="latent cache from `bld encode` (sets latents=...)")
    p.add_argument("--preset", help="denoiser size preset (tiny, small, base, large, original)")

    p = sub.add_parser("encode", help="encode a dataset once into packed binary latents")
    p.add_argument("--autoencoder", required=True, help="trained autoencoder folder")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--data", default=None, help="dataset (default: the autoencoder's)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _precision_flag(p)
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--limit", type=_count, default=0, help="encode only the first N images (0 = all)")

    p = sub.add_parser("shard", help="write a dataset as webdataset-style tar shards, for "
                       "training on image sets larger than memory (--data OUT_DIR)")
    p.add_argument("source", help="fashion-mnist, emoji-twitter, emoji-google, or a folder of "
                                  "images (class labels from subfolders)")
    p.add_argument("out_dir", help="new folder for the shards and their manifest shards.json")
    p.add_argument("--shard-size", type=_positive, default=1000, help="samples per shard "
                   "(default %(default)s; want at least a few shards per training process)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--image-size", type=_positive, help="resize to this size (required for a folder)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="default: the dataset's")
    p.add_argument("--data-dir", help="where the dataset lives if not in its default place")
    p.add_argument("--limit", type=_count, default=0, help="write only N samples (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order samples are written in")

    p = sub.add_parser("sample", help="sample images from a trained prior")
    _sampling_flags(p)
    p.add_argument("-n", "--num", type=_positive, default=16, help="number of images")
    p.add_argument("--out", required=True, help="grid PNG path")
    p.add_argument("--nrow", type=_positive, default=8, help="images per grid row")
    p.add_argument("--individual", metavar="DIR", help="also write one PNG per image here")
    p.add_argument("--scale", type=_positive, default=1, help="upscale the grid (nearest)")

    p = sub.add_parser("inpaint", help="complete the masked part of an image")
    _sampling_flags(p)
    p.add_argument("--image", required=True, help="input image")
    p.add_argument("--mask", required=True, help="mask PNG, white = keep, black = fill in")
    p.add_argument("-n", "--num", type=_positive, default=4, help="number of completions")
    p.add_argument("--out", required=True, help="grid PNG: input, masked input, completions")

    p = sub.add_parser("reconstruct", help="images through the autoencoder, with the error")
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--images", nargs="*", help="image files (default: dataset test images)")
    p.add_argument("--data", default=None, help="dataset for test images (default: the AE's)")
    p.add_argument("--data-dir")
    p.add_argument("-n", "--num", type=_positive, default=16)
    p.add_argument("--out", required=True, help="grid PNG: originals above reconstructions")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _precision_flag(p, default="fp32")

    p = sub.add_parser("train-classifier", help="train the classifier whose features FD uses")
    p.add_argument("--data", default="fashion-mnist", help="dataset with class labels")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=_positive, help="resize images (default: the dataset's)")
    p.add_argument("--channels", type=int, choices=[1, 3])
    p.add_argument("--steps", type=_positive, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint folder for the classifier")

    p = sub.add_parser("eval", help="FD / precision / recall / class accuracy of samples, and "
                       "PSNR / SSIM / reconstruction FD / bit usage of the autoencoder")
    p.add_argument("--prior", help="prior folder (omit to evaluate only the autoencoder)")
    p.add_argument("--autoencoder", help="autoencoder folder (default: the prior's)")
    p.add_argument("--classifier", required=True, help="folder from `bld train-classifier`")
    p.add_argument("--data", help="dataset whose test split is the reference "
                   "(default: the autoencoder's)")
    p.add_argument("--data-dir")
    p.add_argument("-n", "--num", type=_positive, default=2000, help="generated samples (and the "
                   "real-vs-real floor at the same N)")
    p.add_argument("--steps", type=_positive, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--evidence-weight", type=float, default=DEFAULT_EVIDENCE_WEIGHT,
                   help="lambda of SPEC 2: how much of z_t's evidence each step removes from the network's posterior (1 = the exact step, 0 = the original code's lower-noise product; default %(default)s, chosen by measurement)")
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--unconditional", action="store_true", help="sample without labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _precision_flag(p)
    p.add_argument("--out", required=True, help="folder for eval.json, eval.md and a grid")

    p = sub.add_parser("serve", help="a browser app over a trained run: sample, inpaint, "
                       "and look inside the bits (needs the [web] extra: gradio)")
    p.add_argument("run_dir", help="a `bld demo` folder, a prior run or a save_pretrained folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other "
                        "needs a login or --no-auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-images", type=_positive, default=64, help="most images one click makes")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this login (default: "
                   "$BLD_SERVE_AUTH, same form); required for a --host beyond loopback")
    p.add_argument("--auth-file", metavar="FILE", help="ask for a login from this file's "
                   "USER:PASSWORD lines (keeps the password off the command line)")
    p.add_argument("--no-auth", action="store_true", help="serve a --host beyond loopback "
                   "without a login (anyone who reaches the port can use the app)")
    p.add_argument("--keep-files", type=_positive, default=256, help="temporary files kept "
                   "(uploads, results); the oldest are deleted beyond this")
    _precision_flag(p)

    p = sub.add_parser("prepare-emoji", help="fetch the emoji images from npm into a folder")
    p.add_argument("--vendor", choices=["twitter", "google"], default="twitter")
    p.add_argument("--dest", help="folder (default ~/.cache/bld/emoji-VENDOR)")

    p = sub.add_parser("prepare-openmoji", help="fetch OpenMoji from npm and rasterise its colour "
                       "SVGs into a class-labelled image folder (classes = emoji groups)")
    p.add_argument("--size", type=int, default=256, help="image size in px, 64..1024 (default 256)")
    p.add_argument("--dest", help="folder (default ~/.cache/bld/openmoji-SIZE)")
    p.add_argument("--tarball", help="a local openmoji-17.0.0.tgz instead of `npm pack`")
    p.add_argument("--skin-tones", action="store_true",
                   help="keep the 2,030 skin-tone variants (dropped by default)")
    return ap


# --------------------------------------------------------------------------- commands
def cmd_train(args, kind: str) -> None:
    from .train import train_autoencoder, train_prior
    from .train_config import config_from_dict
    overrides = _shortcut_overrides(args)
    if kind == "prior":
        for flag, key in [("autoencoder", "autoencoder"), ("latents", "latents"),
                          ("preset", "preset")]:
            v = getattr(args, flag)
            if v is not None:
                overrides.append(f"{key}={v}")
    cfg = config_from_dict(kind, load_config_dict(kind, args.config, overrides))
    fn = train_autoencoder if kind == "autoencoder" else train_prior
    path = fn(cfg, args.out, resume=args.resume, allow_config_change=args.allow_config_change)
    log.info("done: %s", path)


def _device(name: str):
    from .loading import resolve_device
    return resolve_device(name)


def _load_pipeline(args):
    from .pipeline import BinaryLatentDiffusionPipeline
    return BinaryLatentDiffusionPipeline.from_run(args.prior, autoencoder=args.autoencoder,
                                                  device=args.device, precision=args.precision)


def _sampling_kwargs(args) -> dict:
    return dict(class_labels=args.classes, n=args.num, steps=args.steps,
                temperature=args.temperature, evidence_weight=args.evidence_weight,
                guidance=args.guidance, seed=args.seed, output_type="pt")


def cmd_sample(args) -> None:
    from .plots import image_grid, save_image
    pipe = _load_pipeline(args)
    res = pipe(**_sampling_kwargs(args), batch_size=args.batch_size, progress=True)
    save_image(image_grid(res.images, nrow=args.nrow), args.out, scale=args.scale)
    if args.individual:
        for i, img in enumerate(res.images):
            save_image(img, Path(args.individual) / f"{i:05d}.png")
    log.info("wrote %s (%d images, %d steps, %.3f s/image)", args.out, args.num, args.steps,
             res.seconds / args.num)


def _check_mask(mask_path: str, image_path: str) -> None:
    """The mask must be black-and-white (mode 1 or L) and the size of the image."""
    from .data import open_image
    with open_image(mask_path) as mask, open_image(image_path) as image:
        if mask.mode not in ("1", "L"):
            raise ValueError(f"mask {mask_path} is a {mask.mode} image; save it as black-and-white "
                             "(greyscale, white = keep, black = fill in)")
        if mask.size != image.size:
            raise ValueError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but image "
                             f"{image_path} is {image.size[0]}x{image.size[1]}; make them the "
                             "same size")


def cmd_inpaint(args) -> None:
    import torch
    from .data import load_image
    from .plots import image_grid, save_image
    pipe = _load_pipeline(args)
    c = pipe.autoencoder.config
    image = load_image(args.image, c.image_size, c.in_channels)
    _check_mask(args.mask, args.image)
    keep = load_image(args.mask, c.image_size, 1)[0] > 0  # white = keep
    res = pipe.inpaint(image, ~keep, **_sampling_kwargs(args), paste=True)
    masked = torch.where(keep, image, torch.zeros_like(image))
    save_image(image_grid(torch.cat([image[None], masked[None], res.images]),
                          nrow=args.num + 2), args.out)
    log.info("wrote %s (input, masked input, %d completions)", args.out, args.num)


def cmd_reconstruct(args) -> None:
    import torch
    from .data import build_dataset, load_image
    from .pipeline import reconstruct
    from .plots import image_grid, save_image
    from .loading import load_autoencoder
    from .train_config import config_from_dict
    from . import checkpoint as ckpt
    device = _device(args.device)
    ae = load_autoencoder(args.autoencoder, device)
    c = ae.config
    if args.images:
        images = torch.stack([load_image(p, c.image_size, c.in_channels) for p in args.images])
    else:
        source = args.data or config_from_dict(
            "autoencoder", ckpt.load_checkpoint(args.autoencoder, "autoencoder").config).data.source
        ds = build_dataset(source, split="test", image_size=c.image_size, channels=c.in_channels,
                           data_dir=args.data_dir)
        images = torch.stack([ds[i][0] for i in range(min(args.num, len(ds)))])
    res = reconstruct(ae, images, precision=args.precision)
    save_image(image_grid(torch.cat([images, res.recon]), nrow=len(images)), args.out)
    print(f"L1 {res.l1:.4f}  MSE {res.mse:.5f}  PSNR {res.psnr:.2f} dB  ({len(images)} images)")


def cmd_encode(args) -> None:
    from . import checkpoint as ckpt
    from .data import build_dataset
    from .pipeline import encode_dataset
    from .loading import load_autoencoder
    from .training.batches import LimitedDataset
    from .train_config import config_from_dict
    device = _device(args.device)
    ae = load_autoencoder(args.autoencoder, device)
    ae_cfg = config_from_dict("autoencoder",
                              ckpt.load_checkpoint(args.autoencoder, "autoencoder").config)
    source = args.data or ae_cfg.data.source
    ds = build_dataset(source, split=args.split, image_size=ae.config.image_size,
                       channels=ae.config.in_channels,
                       data_dir=args.data_dir or ae_cfg.data.data_dir or None)
    if 0 < args.limit < len(ds):
        ds = LimitedDataset(ds, args.limit)
    path = encode_dataset(ae, ds, args.out, batch_size=args.batch_size, device=device,
                          precision=args.precision,
                          metadata={"source": source, "split": args.split,
                                    "autoencoder": args.autoencoder})
    log.info("wrote %s (%d latents of shape %s, %d bytes each)", path, len(ds),
             ae.config.latent_shape, (ae.config.bits * ae.config.grid ** 2 + 7) // 8)


def cmd_shard(args) -> None:
    from .data import DATASET_SOURCES, build_dataset
    from .data import write_shards
    if args.source not in DATASET_SOURCES and Path(args.source).is_dir() and not args.image_size:
        raise ConfigError(f"pass --image-size for the image folder {args.source}")
    ds = build_dataset(args.source, split=args.split, image_size=args.image_size,
                       channels=args.channels, data_dir=args.data_dir)
    if hasattr(ds, "scan"):  # an image folder: unreadable files are left out, not repeated
        ds.scan()
    keep = [i for i in range(len(ds)) if i not in getattr(ds, "unreadable", ())]
    res = write_shards(ds, args.out_dir, args.shard_size, indices=keep[:args.limit or None],
                       seed=args.seed, source=args.source, split=args.split)
    print(f"{res.num_samples} samples in {res.num_shards} shards at {res.root} "
          f"({res.num_samples / max(res.seconds, 1e-9):.0f} images/s); train with --data {res.root}")


def cmd_prepare_emoji(args) -> None:
    from .data import prepare_emoji
    res = prepare_emoji(args.vendor, args.dest)
    print(f"{res.num_images} images in {len(res.categories)} categories at {res.root}")


def cmd_prepare_openmoji(args) -> None:
    from .data import prepare_openmoji
    r = prepare_openmoji(args.size, args.dest, skin_tones=args.skin_tones, tarball=args.tarball)
    print(f"{r.num_images} images of {args.size} px in {len(r.categories)} classes at {r.root}: "
          + ", ".join(f"{k} {v}" for k, v in r.categories.items())
          + (f"; {r.skipped} SVG{'s' if r.skipped > 1 else ''} could not be drawn and skipped" if r.skipped else ""))


def cmd_train_classifier(args) -> None:
    from .evaluation import train_and_save_classifier
    res = train_and_save_classifier(args.data, args.out, steps=args.steps, seed=args.seed,
                                    data_dir=args.data_dir, image_size=args.image_size,
                                    channels=args.channels)
    print(f"classifier test accuracy {res.test_accuracy:.4f}; saved to {args.out}")


def cmd_eval(args) -> None:
    import json
    from . import checkpoint as ckpt
    from .data import build_dataset
    from .evaluation import (dataset_tensors, evaluate_autoencoder, evaluate_prior,
                             load_classifier, real_reference)
    from .plots import image_grid, save_image
    from .loading import load_autoencoder, load_prior
    from .train_config import config_from_dict
    device = _device(args.device)
    prior = load_prior(args.prior, device) if args.prior else None
    ae_path = args.autoencoder or (prior.config.autoencoder if prior else None)
    if not ae_path:
        raise ConfigError("pass --autoencoder (or --prior, whose autoencoder is used)")
    ae = load_autoencoder(ae_path, device)
    ae_data = config_from_dict("autoencoder",
                               ckpt.load_checkpoint(ae_path, "autoencoder").config).data
    test = build_dataset(args.data or ae_data.source, "test", ae.config.image_size,
                         ae.config.in_channels, args.data_dir or ae_data.data_dir or None)
    xt, _ = dataset_tensors(test)
    clf, meta = load_classifier(args.classifier, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"classifier": {"path": args.classifier, **meta}}
    if prior is None:
        reference, floor = real_reference(xt, min(args.num, len(xt) // 2), seed=args.seed)
        report["autoencoder"] = evaluate_autoencoder(ae, floor, clf, reference)
    else:
        ev = evaluate_prior(prior, ae, clf, xt, n=args.num, steps=args.steps,
                            temperature=args.temperature,
                            evidence_weight=args.evidence_weight, guidance=args.guidance,
                            seed=args.seed, conditional=not args.unconditional,
                            precision=args.precision)
        save_image(image_grid(ev.pop("images")[:100], nrow=10), out / "samples.png")
        ev.pop("labels")
        _eval_figures(prior, ae, ae_data, test, xt, out, args)
        report.update(ev)
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    lines = ["# bld eval", ""]
    for section, vals in report.items():
        if isinstance(vals, dict):
            lines += [f"## {section}", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in vals.items()]
            lines.append("")
        else:
            lines.append(f"- {section}: {vals:.4g}" if isinstance(vals, float) else
                         f"- {section}: {vals}")
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    print((out / "eval.md").read_text())


def _eval_figures(prior, ae, ae_data, test, xt, out: Path, args) -> None:
    """The denoising trajectory and, for a conditional prior, per-class rows of samples
    beside real test images."""
    import dataclasses
    from .evaluation import dataset_tensors
    from .figures import class_rows_figure, trajectory_figure
    from .pipeline import BinaryLatentDiffusionPipeline
    pipe = BinaryLatentDiffusionPipeline(ae, prior, dataclasses.asdict(ae_data), args.precision)
    sampling = dict(steps=args.steps, temperature=args.temperature, seed=args.seed,
                    evidence_weight=args.evidence_weight, guidance=args.guidance)
    trajectory_figure(pipe, out / "trajectory.png", **sampling)
    if pipe.num_classes and not args.unconditional:
        class_rows_figure(pipe, xt, dataset_tensors(test)[1], out / "class_rows.png", **sampling)


def cmd_serve(args) -> None:
    from .web import Limits, is_loopback, logins, serve
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    auth = logins(args.host, args.auth, args.auth_file, args.no_auth)
    import importlib.util
    if importlib.util.find_spec("gradio") is None:  # not imported yet: serve sets its folders
        raise ConfigError("bld serve needs gradio: pip install 'binary-latent-diffusion[web]'")
    if auth is None and not is_loopback(args.host):
        print(f"bld serve: warning: serving {args.host}:{args.port} without a login "
              "(--no-auth): anyone who can reach it can use the app", file=sys.stderr)
    serve(args.run_dir, host=args.host, port=args.port, device=args.device, auth=auth,
          precision=args.precision,
          limits=Limits(max_images=args.max_images, keep_files=args.keep_files))


def cmd_demo(args) -> None:
    from .demo import DemoSettings, run_demo
    from .demo import DEMO_DATASETS
    out = args.out or DEMO_DATASETS[args.dataset][2]
    s = DemoSettings(out=Path(out), dataset=args.dataset, device=args.device,
                     precision=args.precision, minutes=args.minutes, seed=args.seed,
                     limit=args.limit,
                     eval_samples=args.eval_samples, resume=args.resume,
                     classifier_steps=args.classifier_steps,
                     evidence_weight=args.evidence_weight, guidance=args.guidance,
                     data_dir=args.data_dir or "")
    if args.ae_steps is not None:
        s.ae_steps = args.ae_steps
    if args.prior_steps is not None:
        s.prior_steps = args.prior_steps
    run_demo(s)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else
                        (logging.INFO if rank == 0 else logging.WARNING),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    commands = {
        "demo": cmd_demo,
        "train-ae": lambda a: cmd_train(a, "autoencoder"),
        "train-prior": lambda a: cmd_train(a, "prior"),
        "encode": cmd_encode, "sample": cmd_sample, "inpaint": cmd_inpaint,
        "reconstruct": cmd_reconstruct, "prepare-emoji": cmd_prepare_emoji, "shard": cmd_shard,
        "prepare-openmoji": cmd_prepare_openmoji,
        "train-classifier": cmd_train_classifier, "eval": cmd_eval, "serve": cmd_serve,
    }
    from .checkpoint import CheckpointError, RunLockedError, TrainingError
    from .data import DatasetNotFoundError
    try:
        commands[args.command](args)
    # ValueError: the library's bad-input error (a too-small image folder, a wrong latent
    # cache, an unknown class name); ConfigError and CheckpointError are kinds of it.
    except (ConfigError, CheckpointError, DatasetNotFoundError, FileNotFoundError,
            FileExistsError, ValueError) as e:
        return _fail(args.command, e, 2)
    # The run could not go on: it diverged, the folder is in use, a write failed (disk full).
    except (TrainingError, RunLockedError, OSError) as e:
        return _fail(args.command, e, 1)
    return 0


def _fail(command: str, e: BaseException, code: int) -> int:
    """One line on stderr (the traceback only with -v), and the exit code."""
    log.debug("%s failed", command, exc_info=True)
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"bld {command}: error: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
