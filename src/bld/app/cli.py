"""The ``bld`` command line: the parser, its option groups (each declared once), and `main`.

Thin: it parses arguments, then calls the command's function in `bld.app.commands`, which calls
library functions. Imports bld.core.config, bld.data.dicebear and bld.models.sampling (for choices
and defaults); `bld.app.commands` (and through it everything else) and the error classes of
checkpoint and data only once a command runs, so ``bld --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from ..core.config import PRECISIONS, ConfigError, preset_names
from ..data.dicebear import DICEBEAR_DEFAULT_STYLES, DICEBEAR_PER_STYLE, DICEBEAR_STYLES
from ..models.sampling import DEFAULT_EVIDENCE_WEIGHT

log = logging.getLogger("bld")

DEVICES = ("auto", "cpu", "cuda")
EVIDENCE_HELP = ("lambda of method.md §2: how much of z_t's evidence each step removes from the "
                 "network's posterior (1 = the exact step, 0 = the original code's lower-noise "
                 "product; default %(default)s, chosen by measurement)")


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


def _float_in(low: float, high: float, expected: str, must: str):
    """An argparse type: a finite float in [low, high], else one line naming the rule."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


_minutes = _float_in(0.0, math.inf, "a number of minutes", "0 (no plan) or more")
_fraction = _float_in(0.0, 1.0, "a number in [0, 1]", "in [0, 1] (a fraction of T)")
_temperature = _float_in(1e-3, 100.0, "a temperature", "in [0.001, 100]")
TEMPERATURE_HELP = ("the sampler's temperature tau (the evidence-free logit is divided by it); "
                    "default: the prior preset's sample_temperature")


INTERVAL_HELP = ("guide only the steps with LO <= t / T <= HI (t / T = 1 is pure noise); "
                 "default: the prior preset's sample_guidance_interval")


# ------------------------------------------------------------------------ option groups
def _device_flags(p: argparse.ArgumentParser, default: str | None = "auto",
                  precision: str | None = "auto", help: str | None = None) -> None:
    """--device, and --precision auto|fp32|bf16 with --bf16 / --no-bf16 as its aliases."""
    p.add_argument("--device", choices=DEVICES, default=default, help=help)
    p.add_argument("--precision", choices=PRECISIONS, default=precision,
                   help="bf16 autocast or fp32; auto (the default) picks bf16 only where the "
                        "device runs it natively and faster (CUDA with bf16; a CPU with "
                        "AVX-512-BF16 / AMX), else fp32")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                   help="same as --precision bf16")
    p.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32",
                   help="same as --precision fp32")


def _seed_flag(p: argparse.ArgumentParser, default: int | None = 0, help: str | None = None
               ) -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def _data_flags(p: argparse.ArgumentParser, source: str | None = None, default: str | None = None,
                data_dir: str = "where the dataset lives if not in its default place") -> None:
    """--data (when ``source`` says what it is for) and --data-dir."""
    if source is not None:
        p.add_argument("--data", default=default, help=source)
    p.add_argument("--data-dir", help=data_dir)


def _image_flags(p: argparse.ArgumentParser, size: str) -> None:
    p.add_argument("--image-size", type=_positive, help=size)
    p.add_argument("--channels", type=int, choices=[1, 3], help="default: the dataset's")


def _sampler_flags(p: argparse.ArgumentParser) -> None:
    """The sampler's settings (bld.models.sampling), shared by sample, inpaint and eval; the
    guidance and its interval default to the prior preset's (unguided without a class)."""
    p.add_argument("--steps", type=_positive, default=None,
                   help="sampling steps S (2..T; default: the prior's sample_steps, 16 "
                        "unless its config or model card says otherwise; a distilled "
                        "student: 1 or 2, default its own K)")
    p.add_argument("--temperature", type=_temperature, help=TEMPERATURE_HELP)
    p.add_argument("--evidence-weight", type=float, default=DEFAULT_EVIDENCE_WEIGHT,
                   help=EVIDENCE_HELP)
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance w (default: the prior preset's "
                        "sample_guidance where a class is asked, else 0)")
    p.add_argument("--guidance-interval", type=_fraction, nargs=2, metavar=("LO", "HI"),
                   help=INTERVAL_HELP)


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
    _device_flags(p, default=None, precision=None, help="where to train")
    _seed_flag(p, default=None)
    _data_flags(p, "dataset: fashion-mnist, emoji-twitter, emoji-google, openmoji, dicebear, "
                   "a folder of images "
                   "(class labels from subfolders), or a folder of shards written by `bld shard`")


# The training flags that are shortcuts for a config key (--set KEY=VALUE).
SHORTCUTS = [("steps", "optim.steps"), ("batch_size", "optim.batch_size"),
             ("grad_accum", "optim.grad_accum"), ("device", "run.device"),
             ("precision", "run.precision"), ("seed", "run.seed"), ("data", "data.source"),
             ("data_dir", "data.data_dir")]
PRIOR_SHORTCUTS = [("autoencoder", "autoencoder"), ("latents", "latents"), ("preset", "preset")]


def _shortcut_overrides(args, shortcuts=SHORTCUTS) -> list[str]:
    """``--set`` overrides, then KEY=VALUE for each shortcut flag given."""
    out = list(args.overrides)
    for flag, key in shortcuts:
        v = getattr(args, flag, None)
        if v is not None:
            out.append(f"{key}={str(v).lower() if isinstance(v, bool) else v}")
    return out


MODEL_HELP = "a shipped model's name (`bld models` lists them) or any folder --prior takes"


def _model_flags(p: argparse.ArgumentParser, required: bool) -> None:
    """--model NAME_OR_FOLDER or --prior FOLDER: what to load (one of them)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", metavar="NAME_OR_FOLDER", help=MODEL_HELP)
    g.add_argument("--prior", help="prior run or checkpoint folder, a `bld demo` folder or a "
                   "folder from save_pretrained" + ("" if required else
                                                    " (omit both to evaluate the autoencoder)"))


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    """The options of sample and inpaint: a trained run, the sampler, classes, the device."""
    _model_flags(p, required=True)
    p.add_argument("--autoencoder", help="autoencoder folder (default: the one the prior used)")
    _sampler_flags(p)
    p.add_argument("--class", dest="classes", action="append", metavar="ID_OR_NAME",
                   help="class to sample (repeatable; cycles over samples)")
    _seed_flag(p)
    _device_flags(p)
    p.add_argument("--batch-size", type=_positive, default=256)


# ------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="bld", description="Binary Latent Diffusion: train a "
                                 "binary autoencoder and a Bernoulli diffusion prior, sample, "
                                 "inpaint and evaluate.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train an autoencoder + class-conditional prior on "
                       "Fashion-MNIST (or colour emoji), then write samples, reconstructions, "
                       "plots and a report")
    p.add_argument("--dataset", choices=("fashion-mnist", "emoji", "faces"), default="fashion-mnist",
                   help="fashion-mnist (28 px grey, default), emoji (64 px colour Twitter "
                        "emoji from npm, one class per category) or faces (64 px DiceBear "
                        "faces, one class per style, see prepare-dicebear); fetched with npm "
                        "on first use")
    p.add_argument("--out", help="output folder (default runs/demo, runs/demo-emoji, -faces)")
    p.add_argument("--ae-steps", type=_positive, help="autoencoder training steps")
    p.add_argument("--prior-steps", type=_positive, help="prior training steps")
    p.add_argument("--autoencoder", metavar="NAME_OR_DIR", help="train the prior only, on this "
                   "trained autoencoder: a shipped model's (`bld models`) or a run folder "
                   "(default: where --minutes would cut both models' presets hard, the "
                   "shipped model's of the dataset, if one ships)")
    p.add_argument("--train-autoencoder", action="store_true", help="train it here all the same")
    p.add_argument("--limit", type=_count, default=0, help="use only N training images (0 = all)")
    p.add_argument("--eval-samples", type=_count, default=1000,
                   help="samples for the report's FD / class accuracy (0 = skip evaluation)")
    p.add_argument("--samples-per-class", type=_positive, default=10, help="samples.png's per row")
    p.add_argument("--classifier", metavar="DIR", help="the FD classifier the report uses "
                   "(default: the one that ships for the dataset, `bld models`; a demo on "
                   "another --data-dir, or without a shipped one, trains its own first)")
    p.add_argument("--classifier-steps", type=_positive, help="train the report's FD "
                   "classifier here for this many steps instead (default: 1200, 600, 400)")
    p.add_argument("--evidence-weight", type=float, default=DEFAULT_EVIDENCE_WEIGHT,
                   help="sampler's evidence weight lambda (see bld sample --help)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance w of the samples and the report "
                        "(default: the prior preset's sample_guidance)")
    p.add_argument("--guidance-interval", type=_fraction, nargs=2, metavar=("LO", "HI"),
                   help=INTERVAL_HELP)
    p.add_argument("--temperature", type=_temperature, help=TEMPERATURE_HELP)
    p.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    p.add_argument("--minutes", type=_minutes, default=15.0,
                   help="time budget: a few seconds of calibration, then both models' training "
                        "steps are scaled down (never up) from the presets' so that the whole "
                        "demo fits, with a compact setting where they would be cut below "
                        "75%% (its prior may train up to 25%% past its steps where there is "
                        "room; default %(default)g; 0 = the presets' steps, no plan)")
    _device_flags(p)
    _data_flags(p, data_dir="the dataset's folder if not in its default place (Debian's "
                            "Fashion-MNIST, ~/.cache/bld/emoji-twitter, ~/.cache/bld/dicebear6-64)")
    _seed_flag(p)

    p = sub.add_parser("train", help="from a folder of images (a subfolder per class) to a "
                       "trained model in one command: prepare, probe, train, sample, report")
    p.add_argument("folder", help="images, a subfolder per class (no subfolders: no classes)")
    p.add_argument("--out", required=True, help="output folder: data/, the models, report.md")
    p.add_argument("--minutes", type=_minutes, default=20.0, help="time budget (default 20)")
    p.add_argument("--size", type=int, choices=(28, 32, 64, 128, 256), help="training size "
                   "(default: the median shorter side rounded down to one; 28 greyscale only)")
    p.add_argument("--background", default="white", help="for transparency: white, black, #rrggbb")
    p.add_argument("--min-class-images", type=_positive, default=8,
                   help="smaller classes merge into 'other' (dropped if too few); default 8")
    p.add_argument("--test-share", type=_fraction, default=0.1,
                   help="each class's share of test images, at least one (default 0.1)")
    p.add_argument("--bits", type=_positive, help="bits per latent grid position (no probe)")
    p.add_argument("--probe-seconds", type=float, help="seconds per probed setting")
    p.add_argument("--no-probe", action="store_true", help="the presets' latent, no probe")
    p.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    _device_flags(p)
    _seed_flag(p)
    for flag, default in (("--ae-steps", None), ("--prior-steps", None), ("--classifier-steps",
                          None), ("--eval-samples", 1000), ("--samples-per-class", 10)):
        p.add_argument(flag, type=_count, default=default, help=argparse.SUPPRESS)  # quick runs

    p = sub.add_parser("train-ae", help="train a binary autoencoder from a YAML config")
    _training_flags(p, "autoencoder")

    p = sub.add_parser("train-prior", help="train a Bernoulli diffusion prior on binary latents")
    _training_flags(p, "prior")
    p.add_argument("--autoencoder", help="trained autoencoder folder (sets autoencoder=...)")
    p.add_argument("--latents", help="latent cache from `bld encode` (sets latents=...)")
    p.add_argument("--preset", help="denoiser size preset (tiny, small, base, large, original)")

    p = sub.add_parser("distill", help="distil a guided diffusion prior into a student that "
                       "samples in 1 or 2 network evaluations, guidance folded in "
                       "(docs/distill.md)")
    p.add_argument("--teacher", required=True, metavar="MODEL_OR_RUN",
                   help="the teacher: " + MODEL_HELP)
    p.add_argument("--design", required=True, choices=("coupled", "mixture"),
                   help="coupled: a one-step map from the teacher's uniforms u to its sample "
                        "f(u, class); mixture: z_T ~ B(1/2) as a latent code, trained with the "
                        "mixture likelihood over M z_T draws per teacher sample")
    p.add_argument("--steps", type=int, choices=(1, 2), default=1,
                   help="K, the student's network evaluations per sample (default 1)")
    p.add_argument("--out", required=True, help="run folder (pairs, checkpoints, metrics.csv)")
    p.add_argument("--pairs", type=_positive, default=4096,
                   help="teacher samples to make (cached in the run; default %(default)s)")
    p.add_argument("--pair-dir", help="cache the pairs here instead of OUT/pairs (runs of one "
                   "teacher and sampler may share it)")
    p.add_argument("--pair-sampler", choices=("coupled", "plain"),
                   help="the teacher sampler of the pairs (default: coupled for coupled, plain "
                        "for mixture; the mixture may learn from coupled pairs)")
    p.add_argument("--pairs-only", action="store_true",
                   help="make (or complete) the cached pairs and stop, without training")
    p.add_argument("--train-steps", type=_positive, default=2000,
                   help="optimizer steps (at most; --minutes may stop sooner)")
    p.add_argument("--minutes", type=_minutes, default=0.0,
                   help="time box of the training, after the pairs are made (0: none)")
    p.add_argument("--batch-size", type=_positive, default=64, help="pairs per step")
    p.add_argument("--mixture", type=_positive, metavar="M",
                   help="z_T draws per teacher sample (design mixture; default 8)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a config that differs from the checkpoint's")
    _device_flags(p)
    _seed_flag(p)

    p = sub.add_parser("encode", help="encode a dataset once into packed binary latents")
    p.add_argument("--autoencoder", required=True, help="trained autoencoder folder")
    p.add_argument("--out", required=True, help="output .safetensors file")
    _data_flags(p, "dataset (default: the autoencoder's)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    _device_flags(p)
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--limit", type=_count, default=0, help="encode only the first N images (0 = all)")

    p = sub.add_parser("shard", help="write a dataset as webdataset-style tar shards, for "
                       "training on image sets larger than memory (--data OUT_DIR)")
    p.add_argument("source", help="fashion-mnist, emoji-twitter, emoji-google, openmoji, "
                                  "dicebear, or a folder of images (class labels from subfolders)")
    p.add_argument("out_dir", help="new folder for the shards and their manifest shards.json")
    p.add_argument("--shard-size", type=_positive, default=1000, help="samples per shard "
                   "(default %(default)s; want at least a few shards per training process)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    _image_flags(p, "resize to this size (required for a folder)")
    _data_flags(p)
    p.add_argument("--limit", type=_count, default=0, help="write only N samples (0 = all)")
    _seed_flag(p, help="seed of the order samples are written in")

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
    _data_flags(p, "dataset for test images (default: the AE's)")
    p.add_argument("-n", "--num", type=_positive, default=16)
    p.add_argument("--out", required=True, help="grid PNG: originals above reconstructions")
    _device_flags(p, precision="fp32")

    p = sub.add_parser("train-classifier", help="train the classifier whose features FD uses")
    _data_flags(p, "dataset with class labels", default="fashion-mnist")
    _image_flags(p, "resize images (default: the dataset's)")
    p.add_argument("--steps", type=_positive, default=2000)
    _seed_flag(p)
    p.add_argument("--out", required=True, help="checkpoint folder for the classifier")

    p = sub.add_parser("eval", help="FD / precision / recall / class accuracy of samples, and "
                       "PSNR / SSIM / reconstruction FD / bit usage of the autoencoder")
    _model_flags(p, required=False)
    p.add_argument("--autoencoder", help="autoencoder folder (default: the prior's)")
    p.add_argument("--classifier", help="FD classifier folder from `bld train-classifier` "
                   "(default: the one that ships for the autoencoder's dataset)")
    _data_flags(p, "dataset whose test split is the reference (default: the autoencoder's)")
    p.add_argument("-n", "--num", type=_positive, default=2000, help="generated samples (and the "
                   "real-vs-real floor at the same N)")
    _sampler_flags(p)
    p.add_argument("--unconditional", action="store_true", help="sample without labels")
    _seed_flag(p)
    _device_flags(p)
    p.add_argument("--out", required=True, help="folder for eval.json, eval.md and a grid")

    p = sub.add_parser("serve", help="a browser app over a trained run: sample, inpaint, "
                       "and look inside the bits (needs the [web] extra: gradio)")
    p.add_argument("run_dir", nargs="?", help="a `bld demo` folder, a prior run, a "
                   "save_pretrained folder or a shipped model's name")
    p.add_argument("--model", metavar="NAME_OR_FOLDER", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other "
                        "needs a login or --no-auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-images", type=_positive, default=64, help="most images one click makes")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this login (default: "
                   "$BLD_SERVE_AUTH, same form); required for a --host beyond loopback")
    p.add_argument("--auth-file", metavar="FILE", help="ask for a login from this file's "
                   "USER:PASSWORD lines (keeps the password off the command line)")
    p.add_argument("--no-auth", action="store_true", help="serve a --host beyond loopback "
                   "without a login (anyone who reaches the port can use the app)")
    p.add_argument("--keep-files", type=_positive, default=256, help="temporary files kept "
                   "(uploads, results); the oldest are deleted beyond this")
    _device_flags(p)

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

    p = sub.add_parser("prepare-dicebear", help="fetch DiceBear from npm and draw cartoon faces "
                       "with Node.js into a class-labelled image folder (classes = six face "
                       "styles by default; 1 in 6 faces a test image; attributes in manifest.csv)")
    p.add_argument("--size", type=int, default=64, help="image size in px, 32..1024 (default 64)")
    p.add_argument("--dest", help="folder (default ~/.cache/bld/dicebear6-SIZE, for the default "
                                  "styles and count only)")
    p.add_argument("--per-style", type=_positive, default=DICEBEAR_PER_STYLE,
                   help="faces per style (default %(default)s: 12,024 faces, 2,004 of them test)")
    p.add_argument("--tarballs", help="a folder of the npm tarballs of @dicebear/core and the "
                                      "styles (from `npm pack`) instead of fetching them")
    p.add_argument("--styles", nargs="+", metavar="STYLE",
                   help=f"draw these styles, as npm names them (default "
                        f"{' '.join(DICEBEAR_DEFAULT_STYLES)}; all ten: "
                        f"{' '.join(DICEBEAR_STYLES)}); another set or --per-style needs --dest")

    p = sub.add_parser("doctor", help="what this machine is to bld, on one screen: CPU kind, "
                       "native bf16, matmul speed, the precision auto picks, GPUs, datasets, "
                       "shipped models, and each demo's minutes here (a few seconds of timing)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--dataset", action="append", choices=("fashion-mnist", "emoji", "faces"),
                   help="forecast this demo, however long its timing takes (repeatable; "
                        "default: each demo, while the doctor's few seconds last)")

    p = sub.add_parser("models", help="the trained models and FD classifiers that ship with "
                       "bld (load one by name: --model NAME, from_pretrained(NAME))")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    return ap


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else
                        (logging.INFO if rank == 0 else logging.WARNING),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from ..core.checkpoint import CheckpointError
    from ..core.runfolder import RunLockedError
    from ..data import DatasetNotFoundError
    from ..training.context import TrainingError
    from . import commands as run
    commands = {
        "demo": run.cmd_demo, "train": run.cmd_train_folder,
        "train-ae": lambda a: run.cmd_train(a, "autoencoder", _shortcut_overrides(a)),
        "train-prior": lambda a: run.cmd_train(a, "prior",
                                               _shortcut_overrides(a, SHORTCUTS + PRIOR_SHORTCUTS)),
        "distill": run.cmd_distill,
        "encode": run.cmd_encode, "sample": run.cmd_sample, "inpaint": run.cmd_inpaint,
        "reconstruct": run.cmd_reconstruct, "prepare-emoji": run.cmd_prepare_emoji,
        "shard": run.cmd_shard, "prepare-openmoji": run.cmd_prepare_openmoji,
        "prepare-dicebear": run.cmd_prepare_dicebear,
        "train-classifier": run.cmd_train_classifier, "eval": run.cmd_eval,
        "serve": run.cmd_serve, "doctor": run.cmd_doctor, "models": run.cmd_models,
    }
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
