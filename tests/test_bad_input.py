"""Bad input to every `bld` command: exit code 2 and one line on stderr that names the problem
(and what to do), never a traceback; a training run refused for bad input makes no run folder.

BAD_INPUT is the table: (argv, a piece of the expected message). Placeholders: {ae} / {prior} /
{uprior}: tiny trained runs (the last unconditional); {lat}: their latent cache; {f}: a folder
of bad files (see `files`); {out}: a fresh output path. A property-based test (hypothesis)
fuzzes `--set` overrides and whole config files.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

import bld.app.cli
from bld.app.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
TINY_AE = ["--set", "model.channels=8", "--set", "model.hidden=16", "--set", "model.bits=8",
           "--set", "data.limit=64", "--steps", "2", "--batch-size", "16", "--device", "cpu"]
TINY_PRIOR = ["--preset", "tiny", "--steps", "2", "--batch-size", "32", "--device", "cpu"]
SAMPLE = ["sample", "--prior", "{prior}", "--out", "{out}.png", "--device", "cpu"]
INPAINT = ["inpaint", "--prior", "{prior}", "--out", "{out}.png", "--device", "cpu"]
PRIOR = ["train-prior", "--out", "{out}", "--autoencoder", "{ae}", *TINY_PRIOR]

BAD_INPUT = [
    # sample
    (SAMPLE + ["-n", "0"], "argument -n/--num: must be at least 1"),
    (SAMPLE + ["-n", "-3"], "argument -n/--num: must be at least 1"),
    (SAMPLE + ["--steps", "0"], "argument --steps: must be at least 1"),
    (SAMPLE + ["--steps", "5000"], "steps must be in 2..64"),
    (SAMPLE + ["--steps", "many"], "argument --steps: expected a whole number, got 'many'"),
    (SAMPLE + ["--class", "wombat"], "unknown class 'wombat'"),
    (SAMPLE + ["--class", "99"], "class 99 out of range 0..9"),
    (SAMPLE + ["--temperature", "0"], "argument --temperature: must be in [0.001, 100], got 0"),
    (SAMPLE + ["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (SAMPLE + ["--nrow", "0"], "argument --nrow: must be at least 1"),
    (SAMPLE + ["--scale", "0"], "argument --scale: must be at least 1"),
    (SAMPLE + ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (SAMPLE + ["--guidance", "2"], "guidance needs class labels (--class)"),
    (SAMPLE + ["--guidance-interval", "0.2"], "argument --guidance-interval: expected 2 arguments"),
    (SAMPLE + ["--guidance-interval", "0", "2"],
     "argument --guidance-interval: must be in [0, 1] (a fraction of T), got 2"),
    (SAMPLE + ["--guidance-interval", "0.8", "0.2"],
     "--guidance-interval must satisfy 0 <= lo <= hi <= 1 (fractions of T), got (0.8, 0.2)"),
    (["sample", "--prior", "{uprior}", "--guidance", "2", "--out", "{out}.png", "--device", "cpu"],
     "this prior is unconditional (trained without class labels)"),
    (["sample", "--prior", "{uprior}", "--class", "1", "--out", "{out}.png", "--device", "cpu"],
     "this prior is unconditional; drop --class"),
    pytest.param(SAMPLE[:-1] + ["cuda"], "no CUDA GPU is visible; use --device cpu", marks=NO_GPU),
    (["sample", "--prior", "{f}/missing", "--out", "{out}.png"], "the path does not exist"),
    (["sample", "--prior", "{ae}", "--out", "{out}.png"], "expected 'prior'; pass the prior's folder"),
    (["sample", "--prior", "{f}", "--out", "{out}.png"], "is not a bld checkpoint"),
    (SAMPLE + ["--autoencoder", "{prior}"], "expected 'autoencoder'"),
    # inpaint
    (INPAINT + ["--image", "{f}/not-an-image.png", "--mask", "{f}/mask.png"],
     "not-an-image.png is not an image bld can read"),
    (INPAINT + ["--image", "{f}/missing.png", "--mask", "{f}/mask.png"],
     "missing.png does not exist"),
    (INPAINT + ["--image", "{f}/image.png", "--mask", "{f}/mask-20x28.png"],
     "is 28x20 but image"),
    (INPAINT + ["--image", "{f}/image.png", "--mask", "{f}/mask-rgb.png"],
     "is a RGB image; save it as black-and-white"),
    (INPAINT + ["--image", "{f}/image.png", "--mask", "{f}/empty.png"],
     "empty.png is not an image bld can read"),
    (INPAINT + ["--image", "{f}/image.png", "--mask", "{f}/mask.png", "-n", "0"],
     "argument -n/--num: must be at least 1"),
    # reconstruct
    (["reconstruct", "--autoencoder", "{prior}", "--out", "{out}.png"], "expected 'autoencoder'"),
    (["reconstruct", "--autoencoder", "{ae}", "--images", "{f}/not-an-image.png", "--out",
      "{out}.png"], "is not an image bld can read"),
    (["reconstruct", "--autoencoder", "{ae}", "-n", "0", "--out", "{out}.png"],
     "must be at least 1"),
    # encode
    (["encode", "--autoencoder", "{ae}", "--out", "{out}", "--limit", "-1"],
     "argument --limit: must be 0 or more"),
    (["encode", "--autoencoder", "{ae}", "--out", "{out}", "--batch-size", "0"],
     "must be at least 1"),
    (["encode", "--autoencoder", "{ae}", "--out", "{out}", "--data", "{f}/missing"],
     "unknown dataset source"),
    (["encode", "--autoencoder", "{f}/missing", "--out", "{out}"], "the path does not exist"),
    (["encode", "--autoencoder", "{prior}", "--out", "{out}"], "expected 'autoencoder'"),
    # train-ae: configs and overrides
    (["train-ae", "--out", "{out}", "--config", "{f}/syntax-error.yaml"],
     "is not valid YAML: expected ',' or '}', but got ':' at line 2, column 4"),
    (["train-ae", "--out", "{out}", "--config", "{f}/list.yaml"], "the top level must be a mapping"),
    (["train-ae", "--out", "{out}", "--config", "{f}/image.png"], "pass a YAML text file"),
    (["train-ae", "--out", "{out}", "--config", "no-such-preset"],
     "is neither a YAML file nor a autoencoder preset"),
    (["train-ae", "--out", "{out}", "--config", "{f}/missing.yaml"], "missing.yaml does not exist"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--steps", "0"], "argument --steps: must be at least 1"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--steps", "-5"], "must be at least 1"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--batch-size", "0"], "must be at least 1"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim.warmup=-5"],
     "optim: warmup must be >= 0, got -5"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim.lr=-1"], "lr must be > 0, got -1"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim.lr=.nan"], "lr must be > 0, got nan"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim.lr=abc"],
     "optim.lr: expected a number, got 'abc'"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim.lr=[1"], "the value is not valid YAML"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "nokey=1"], "unknown key(s) ['nokey']"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "loss=1"], "expected a mapping"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "noequals"], "must look like key.sub=value"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim..lr=1"], "the key must look like"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "model.bits=0"], "bits must be in 1..1024"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "run.ckpt_every=-1"], "ckpt_every must be >= 0"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "run.keep_checkpoints=0"],
     "keep_checkpoints must be >= 1"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "run.threads=-1"],
     "threads must be >= 0"),
    (["train-ae", "--out", "{out}", "--set", "run.device=gpu"], "device must be auto, cpu or cuda"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--set", "optim.ema_decay=1.5"],
     "ema_decay must be >= 0 and <= 1"),
    pytest.param(["train-ae", "--out", "{out}", *TINY_AE[:-1], "cuda"], "no CUDA GPU is visible",
                 marks=NO_GPU),
    (["train-ae", "--out", "{out}", *TINY_AE, "--data", "{f}/missing"], "unknown dataset source"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--data", "{f}/all-bad", "--set", "data.limit=0"],
     "none of the 3 images in"),
    (["train-ae", "--out", "{out}", *TINY_AE, "--resume"], "holds no checkpoint to resume from"),
    # train-prior
    (PRIOR[:4] + ["{prior}"] + PRIOR[5:], "expected 'autoencoder'"),
    (["train-prior", "--out", "{out}", *TINY_PRIOR], "train-prior needs the trained autoencoder"),
    # distill
    (["distill", "--teacher", "{uprior}", "--design", "mixture", "--out", "{out}", "--device",
      "cpu"], "is unconditional: distillation folds classifier-free guidance"),
    (["distill", "--teacher", "{prior}", "--design", "gan", "--out", "{out}"],
     "argument --design: invalid choice: 'gan'"),
    (["distill", "--teacher", "{prior}", "--design", "coupled", "--steps", "3", "--out", "{out}"],
     "argument --steps: invalid choice: 3"),
    (["distill", "--teacher", "no-such-model", "--design", "coupled", "--out", "{out}"],
     "neither a folder nor a shipped model"),
    (PRIOR + ["--preset", "huge"], "unknown preset 'huge'"),
    (PRIOR + ["--set", "cond_drop=2"], "cond_drop must be >= 0 and <= 1"),
    (PRIOR + ["--set", "sample_guidance_interval=[0.9, 0.1]"],
     "sample_guidance_interval must satisfy 0 <= lo <= hi <= 1 (fractions of T), got (0.9, 0.1)"),
    (PRIOR + ["--set", "sample_guidance=-1"], "sample_guidance must be >= 0"),
    (PRIOR + ["--set", "sample_temperature=0"], "sample_temperature must be > 0"),
    (PRIOR + ["--latents", "{f}/missing.safetensors"], "does not exist; make it with `bld encode`"),
    (PRIOR + ["--latents", "{f}/image.png"], "cannot read latent cache"),
    (PRIOR + ["--latents", "{f}/truncated.safetensors"], "cannot read latent cache"),
    (PRIOR + ["--latents", "{f}/not-latents.safetensors"], "is not a bld latent cache"),
    (PRIOR + ["--latents", "{f}/labels-mismatch.safetensors"], "holds 256 latents but 255 labels"),
    (PRIOR + ["--latents", "{f}/other-autoencoder.safetensors"],
     "was made by a different autoencoder than"),
    # eval, train-classifier, demo, shard
    (["eval", "--classifier", "{f}/missing", "--autoencoder", "{ae}", "--out", "{out}"],
     "the path does not exist"),
    (["eval", "--classifier", "{ae}", "--autoencoder", "{ae}", "--out", "{out}"],
     "expected 'classifier'"),
    (["eval", "--classifier", "{ae}", "--autoencoder", "{ae}", "--out", "{out}", "-n", "0"],
     "must be at least 1"),
    (["train-classifier", "--out", "{out}", "--steps", "0"], "must be at least 1"),
    (["train-classifier", "--out", "{out}", "--data", "{f}/missing"], "unknown dataset source"),
    (["demo", "--out", "{out}", "--ae-steps", "0"], "argument --ae-steps: must be at least 1"),
    (["train", "{out}/no-such-folder", "--out", "{out}/t"], "does not exist"),
    (["demo", "--out", "{out}", "--eval-samples", "-1"], "must be 0 or more"),
    (["demo", "--out", "{out}", "--limit", "-5"], "argument --limit: must be 0 or more"),
    (["shard", "fashion-mnist", "{out}", "--shard-size", "0"], "must be at least 1"),
    (["shard", "{f}/missing", "{out}"], "unknown dataset source"),
    (["serve", "{prior}", "--max-images", "0"], "argument --max-images: must be at least 1"),
    (["serve", "{prior}", "--port", "http"], "argument --port: invalid int value: 'http'"),
    (["serve", "--port", "7861"], "takes a run folder or --model NAME_OR_FOLDER"),
    (["serve", "--model", "no-such-model"], "neither a folder nor a shipped model"),
    # the zoo, by name; the doctor
    (["sample", "--model", "no-such-model", "--out", "{out}.png"],
     "is neither a folder nor a shipped model (shipped: "),
    (["eval", "--out", "{out}"], "pass --model NAME, --prior FOLDER or --autoencoder FOLDER"),
    (["models", "--bogus"], "unrecognized arguments: --bogus"),
    (["doctor", "--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    # prepare-dicebear (no npm call: each is refused before a fetch)
    (["prepare-dicebear", "--dest", "{out}", "--size", "2048"], "from 32 to 1024 px, got 2048"),
    (["prepare-dicebear", "--dest", "{out}", "--per-style", "5"], "of at least 6 (one test face in 6)"),
    (["prepare-dicebear", "--dest", "{out}", "--per-style", "0"], "argument --per-style: must be at least 1"),
    (["prepare-dicebear", "--dest", "{out}", "--tarballs", "{f}/missing"], "tarball folder"),
    (["prepare-dicebear", "--dest", "{out}", "--tarballs", "{f}"], "no .tgz files in"),
    (["prepare-dicebear", "--dest", "{out}", "--styles", "bottts"], "unknown DiceBear style bottts"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, runs) -> Path:
    """Bad inputs of every kind, next to good ones."""
    f = tmp_path_factory.mktemp("bad-input")
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(f / "image.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(f / "mask.png")
    Image.fromarray(np.full((20, 28), 255, np.uint8)).save(f / "mask-20x28.png")
    Image.fromarray(np.full((28, 28, 3), 255, np.uint8)).save(f / "mask-rgb.png")
    (f / "not-an-image.png").write_text("this is text, not a PNG")
    (f / "empty.png").write_bytes(b"")
    (f / "syntax-error.yaml").write_text("optim: {steps: 5\n  x: [\n")
    (f / "list.yaml").write_text("- a\n- b\n")
    bad = f / "all-bad" / "shirts"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"")
    (bad / "b.png").write_text("not a png")
    (bad / "c.jpg").write_bytes((f / "image.png").read_bytes()[:40])  # truncated
    # latent caches: damaged, wrong kind, inconsistent, from another autoencoder
    lat = Path(runs.latents)
    data = lat.read_bytes()
    (f / "truncated.safetensors").write_bytes(data[:len(data) // 2])
    tensors = load_file(str(lat))
    from safetensors import safe_open
    with safe_open(str(lat), "pt") as sf:
        meta = sf.metadata()
    save_file(tensors, str(f / "not-latents.safetensors"), metadata={"format": "pt"})
    save_file({"packed": tensors["packed"], "labels": tensors["labels"][:-1]},
              str(f / "labels-mismatch.safetensors"), metadata=meta)
    save_file(tensors, str(f / "other-autoencoder.safetensors"),
              metadata={**meta, "autoencoder_id": "0123456789abcdef"})
    return f


@pytest.fixture(scope="module")
def unconditional_prior(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uprior") / "prior"
    assert main(["train-prior", "--out", str(out), "--autoencoder", str(runs.ae), "--latents",
                 str(runs.latents), *TINY_PRIOR, "--set", "class_conditional=false",
                 "--set", "run.sample_every=0"]) == 0
    return out


def error_lines(stderr: str) -> list[str]:
    """The lines bld and argparse print on stderr (progress-bar frames dropped)."""
    return re.findall(r"bld[\w -]*: error: [^\r\n]*", stderr)


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


@pytest.mark.parametrize("argv,expected", BAD_INPUT)
def test_bad_input_is_one_clear_line_and_exit_2(argv, expected, runs, files, unconditional_prior,
                                                tmp_path, capsys):
    out = tmp_path / "out"
    subs = {"ae": runs.ae, "prior": runs.prior, "uprior": unconditional_prior,
            "lat": runs.latents, "f": files, "out": out}
    argv = [a.format(**subs) for a in argv]
    code = run_cli(argv)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2, f"exit code {code}; stderr:\n{err[-2000:]}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one error line, got:\n{err[-2000:]}"
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 600
    if argv[0].startswith("train-") and "--resume" not in argv:
        assert not out.exists(), "a refused training run made its run folder"


def test_the_table_covers_every_command():
    commands = {row.values[0][0] if hasattr(row, "values") else row[0][0] for row in BAD_INPUT}
    parser_commands = set(bld.app.cli.build_parser()._subparsers._group_actions[0].choices)
    assert parser_commands - commands <= {"prepare-emoji", "prepare-openmoji"}


# ------------------------------------------------------------------------- property tests
KEYS = ["optim.steps", "optim.lr", "optim.batch_size", "optim.warmup", "optim.ema_decay",
        "optim.grad_accum", "run.seed", "run.device", "run.precision", "run.ckpt_every",
        "run.keep_checkpoints", "run.max_bad_steps", "model.bits", "model.channels",
        "model.hidden", "data.limit", "data.image_size", "data.source", "loss.disc_weight"]
yaml_scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.booleans(), st.none(), st.text(max_size=12))
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=20))
values = st.one_of(yaml_scalars.map(lambda v: yaml.safe_dump(v).strip().removesuffix("...").strip()),
                   st.text(max_size=15))


def _train_stub(calls):
    def stub(cfg, run_dir, resume=False, allow_config_change=False):
        calls.append(cfg)
        return Path(run_dir)
    return stub


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_fuzzed_set_overrides_give_a_config_or_one_line(overrides, monkeypatch, capsys):
    """Any --set KEY=VALUE: either a valid config reaches training, or exit 2 with one line."""
    calls: list = []
    monkeypatch.setattr("bld.training.loop.train_autoencoder", _train_stub(calls))
    argv = ["train-ae", "--out", "unused"]
    for k, v in overrides:
        argv += ["--set", f"{k}={v}"]
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        assert len(calls) == 1
    else:
        assert code == 2 and len(error_lines(err)) == 1, err


config_docs = st.recursive(
    yaml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                          st.dictionaries(st.one_of(st.sampled_from(
                                              ["optim", "run", "model", "data", "loss", "steps",
                                               "lr", "bits", "seed"]), st.text(max_size=8)),
                                              inner, max_size=4)), max_leaves=10)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(config_docs.map(yaml.safe_dump), st.text(max_size=80)))
def test_fuzzed_config_files_give_a_config_or_one_line(doc, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr("bld.training.loop.train_prior", _train_stub(calls))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(doc, encoding="utf-8")
        code = run_cli(["train-prior", "--out", str(Path(tmp) / "run"), "--config", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (code == 0 and len(calls) == 1) or (code == 2 and len(error_lines(err)) == 1), err


# --------------------------------------------------------------------------- image folders
def test_image_folder_edge_cases_are_skipped_and_counted(tmp_path, monkeypatch, caplog):
    """Empty files, non-images, truncated files and decompression bombs are skipped (counted
    in the training log and the checkpoint's metadata); symlink loops do not hang the scan;
    EXIF-rotated JPEGs and 16-bit PNGs are read the right way round and scaled."""
    from PIL import Image as PILImage

    from bld.core import checkpoint as ckpt
    from bld.data import load_image
    root = tmp_path / "images"
    shirts, shoes = root / "shirts", root / "shoes"
    shirts.mkdir(parents=True)
    shoes.mkdir()
    ramp = np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1))  # smooth, image-like
    for i in range(8):
        Image.fromarray(np.roll(ramp, 3 * i, axis=1)).save(shirts / f"{i}.png")
        Image.fromarray(np.roll(ramp.T, 3 * i, axis=0)).save(shoes / f"{i}.png")
    Image.fromarray((ramp.astype(np.uint16) * 257)).save(shoes / "sixteen-bit.png")
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored left half white
    stored = np.zeros((10, 20), np.uint8)
    stored[:, :10] = 255
    exif = PILImage.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(shirts / "rotated.jpg", exif=exif, quality=95)
    (shirts / "empty.png").write_bytes(b"")
    (shoes / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(shoes / "huge.png")  # a 'bomb' below
    (shoes / "loop").symlink_to(root, target_is_directory=True)
    (shoes / "self.png").symlink_to(shoes / "self.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40 is over it

    x = load_image(shirts / "rotated.jpg", 10, 1)[0]  # displayed 10 wide, 20 tall: top white
    assert x[:4].mean() > 0.9 and x[-4:].mean() < -0.9
    x16 = load_image(shoes / "sixteen-bit.png", 28, 1)[0]
    assert torch.allclose(x16, load_image(shirts / "0.png", 28, 1)[0], atol=0.01)

    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["train-ae", "--out", str(out), "--data", str(root), *TINY_AE[:6],
                     "--set", "model.image_size=28", "--set", "model.in_channels=1",
                     "--steps", "2", "--batch-size", "4", "--device", "cpu",
                     "--set", "run.sample_every=0"]) == 0
    assert "skipping 3 of 18 images that cannot be read" in caplog.text  # 18 of the 21 files fall in the train split
    assert "(3 unreadable, skipped)" in caplog.text
    assert ckpt.load_checkpoint(out, "autoencoder").metadata["skipped_images"] == 3
