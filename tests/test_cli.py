"""End-to-end runs of the `bld` command line on tiny settings and 256 real Fashion-MNIST images:
train-ae -> encode -> train-prior -> sample / inpaint / reconstruct, the run folder they
write, and the errors promised for bad configs and bad data folders.

Commands run in-process through ``bld.app.cli.main`` (which returns the exit code); the shared
``runs`` fixture (conftest.py) trains the autoencoder and prior once per session.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bld.app.cli import main
from bld.data import load_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

PAD = 2  # bld.core.plots.image_grid's padding
SIZE = 28  # Fashion-MNIST pixels per side


def grid_size(n: int, nrow: int, size: int = SIZE) -> tuple[int, int]:
    """(width, height) in pixels of an image_grid of n images."""
    rows = math.ceil(n / nrow)
    return nrow * (size + PAD) + PAD, rows * (size + PAD) + PAD


def tile(grid: np.ndarray, row: int, col: int, size: int = SIZE) -> np.ndarray:
    y, x = PAD + row * (size + PAD), PAD + col * (size + PAD)
    return grid[y:y + size, x:x + size]


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- run folders
@pytest.mark.parametrize("which,kind,columns", [
    ("ae", "autoencoder", {"loss", "l1", "mse", "bit_mean", "lr"}),
    ("prior", "prior", {"loss", "bce", "bit_accuracy", "lr"}),
])
def test_run_folder_layout(runs, which, kind, columns):
    run_dir = getattr(runs, which)
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["step_000003", "step_000006"]  # ckpt_every=3, steps=6, keep 2
    for name in steps:
        d = run_dir / "checkpoints" / name
        for f in ("config.json", "model.safetensors", "ema.safetensors", "trainer_state.pt"):
            assert (d / f).is_file(), f"{d / f} is missing"
        header = json.loads((d / "config.json").read_text())
        assert header["kind"] == kind and header["step"] == int(name[5:])
    assert (run_dir / "latest").read_text().strip() == "checkpoints/step_000006"
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [2, 4, 6]  # log_every=2
    assert columns <= set(rows[0])
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    with Image.open(run_dir / "loss_curves.png") as im:
        assert im.format == "PNG" and im.width > 100
    # the final snapshot grid, listed in an index page that links it
    grids = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert grids == [f"{'recon' if kind == 'autoencoder' else 'samples'}_000006.png"]
    assert f'<img src="{grids[0]}"' in (run_dir / "samples" / "index.html").read_text()


def test_encode_writes_the_limited_split(runs):
    from bld.core.loading import load_latent_cache
    cache = load_latent_cache(runs.latents)
    assert len(cache) == 256 and cache.shape == (8, 7, 7)
    _, labels = load_fashion_mnist("train")
    assert torch.equal(cache.labels, labels[:256])
    assert len(cache.classes) == 10
    z, _ = cache[0]
    assert set(z.unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------------- sample
def test_sample_grid_and_individual_images(runs, tmp_path):
    out, folder = tmp_path / "grid.png", tmp_path / "each"
    assert run("sample", "--prior", runs.prior, "--out", out, "-n", 6, "--nrow", 3,
               "--scale", 2, "--steps", 4, "--individual", folder, "--device", "cpu") == 0
    w, h = grid_size(6, 3)
    with Image.open(out) as im:
        assert im.size == (2 * w, 2 * h) and im.mode == "L"
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(6)]
    for f in files:
        with Image.open(f) as im:
            assert im.size == (SIZE, SIZE)


def test_sample_same_seed_same_bytes(runs, tmp_path):
    def sample(seed: int, name: str) -> bytes:
        assert run("sample", "--prior", runs.prior, "--out", tmp_path / name, "-n", 4,
                   "--steps", 4, "--seed", seed, "--device", "cpu") == 0
        return (tmp_path / name).read_bytes()
    a, b, c = sample(3, "a.png"), sample(3, "b.png"), sample(4, "c.png")
    assert a == b
    assert a != c


def test_sample_class_by_name_with_guidance(runs, tmp_path):
    out = tmp_path / "trousers.png"
    assert run("sample", "--prior", runs.prior, "--out", out, "-n", 2, "--steps", 2,
               "--class", "Trouser", "--guidance", 1.5, "--device", "cpu") == 0
    with Image.open(out) as im:
        assert im.size == grid_size(2, 8)


def test_sample_guides_at_the_priors_own_guidance_unless_told(tmp_path):
    """`bld sample --class C` samples at the prior preset's sample_guidance (as bld eval, bld
    demo and the pipeline do); --guidance 0 turns it off. On the shipped Fashion-MNIST model:
    the session fixture's prior trained 6 steps, too few for its class to change a sample."""
    from bld.inference.pipeline import BinaryLatentDiffusionPipeline
    w = BinaryLatentDiffusionPipeline.from_pretrained("fashion-mnist").default_guidance
    assert w > 0

    def sample(name: str, *extra) -> bytes:
        assert run("sample", "--model", "fashion-mnist", "--out", tmp_path / name, "-n", 4,
                   "--steps", 4, "--class", "Trouser", "--device", "cpu", *extra) == 0
        return (tmp_path / name).read_bytes()
    default = sample("default.png")
    assert default == sample("same.png", "--guidance", w)
    assert default != sample("off.png", "--guidance", 0)


# -------------------------------------------------------------------------------- inpaint
def test_inpaint_keeps_the_known_pixels(runs, tmp_path):
    images, _ = load_fashion_mnist("test")
    original = images[0].numpy()
    Image.fromarray(original).save(tmp_path / "image.png")
    keep = np.zeros((SIZE, SIZE), dtype=bool)
    keep[:14] = True  # top half known, bottom half filled in
    Image.fromarray(np.where(keep, 255, 0).astype(np.uint8)).save(tmp_path / "mask.png")
    out, n = tmp_path / "inpaint.png", 3
    assert run("inpaint", "--prior", runs.prior, "--image", tmp_path / "image.png",
               "--mask", tmp_path / "mask.png", "-n", n, "--steps", 4, "--out", out,
               "--device", "cpu") == 0
    with Image.open(out) as im:
        assert im.size == grid_size(n + 2, n + 2)
        grid = np.array(im)
    np.testing.assert_array_equal(tile(grid, 0, 0), original)  # the input
    np.testing.assert_array_equal(tile(grid, 0, 1)[keep], original[keep])  # masked input
    for i in range(n):
        completion = tile(grid, 0, 2 + i)
        np.testing.assert_array_equal(completion[keep], original[keep],
                                      err_msg=f"completion {i} changed a kept pixel")

    # The fill, at the latent level: the same call through the pipeline the command uses gives
    # the command's pixels, keeps every known bit, and samples the unknown ones.
    from bld.data import load_image
    from bld.inference.pipeline import BinaryLatentDiffusionPipeline
    pipe = BinaryLatentDiffusionPipeline.from_run(runs.prior, device="cpu")
    image = load_image(tmp_path / "image.png", SIZE, 1)
    res = pipe.inpaint(image, ~torch.from_numpy(keep), n=n, steps=4, guidance=0.0, seed=0,
                       paste=True, return_bits=True, output_type="pt")
    pixels = ((res.images[:, 0] + 1) * 127.5).round().clamp(0, 255).numpy()
    for i in range(n):
        assert np.abs(tile(grid, 0, 2 + i).astype(float) - pixels[i]).max() <= 1
    known = pipe.encode(image)[0]
    kept = pipe.autoencoder.latent_mask(torch.from_numpy(keep).float()[None, None])[0].bool()
    kept = kept.expand_as(known)
    assert kept.any() and not kept.all()
    for b in res.bits:
        assert torch.equal(b[kept], known[kept]), "a known bit was not kept"
    unknown = res.bits[:, ~kept]
    assert not (unknown == unknown[0]).all(), "the unknown bits are the same in every completion"
    assert not (unknown == known[~kept]).all(), "the unknown bits were copied, not sampled"


# ---------------------------------------------------------------------------- reconstruct
def test_reconstruct_test_images_prints_errors(runs, tmp_path, capsys):
    out = tmp_path / "recon.png"
    assert run("reconstruct", "--autoencoder", runs.ae, "-n", 8, "--out", out,
               "--device", "cpu") == 0
    m = re.search(r"L1 ([\d.]+)\s+MSE ([\d.]+)\s+PSNR ([\d.]+) dB\s+\(8 images\)",
                  capsys.readouterr().out)
    assert m, "reconstruct did not print L1 / MSE / PSNR"
    l1, mse, psnr = map(float, m.groups())
    # the figures are the model's: the first 8 test images through encode -> bits -> decode,
    # recomputed here, and far better than an autoencoder that returns noise
    from bld.core.loading import load_autoencoder
    from bld.core.metrics import psnr_from_mse
    from bld.data import to_model_range
    ae = load_autoencoder(runs.ae)
    x = to_model_range(load_fashion_mnist("test")[0][:8])
    with torch.no_grad():
        rec = ae.decode(ae.encode(x, deterministic=True)).float().clamp(-1, 1)
    want_mse = (rec - x).pow(2).mean().item()
    assert l1 == pytest.approx((rec - x).abs().mean().item(), abs=1e-4)
    assert mse == pytest.approx(want_mse, abs=1e-5)
    assert psnr == pytest.approx(psnr_from_mse(want_mse), abs=0.01)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert psnr > psnr_from_mse((noise - x).pow(2).mean().item()) + 1
    with Image.open(out) as im:
        assert im.size == grid_size(16, 8)  # originals above reconstructions
        grid = np.array(im.convert("L"), dtype=float)
    shown = ((rec[:, 0] + 1) * 127.5).numpy()
    for i in range(8):
        assert np.abs(tile(grid, 1, i) - shown[i]).max() <= 1, f"reconstruction {i} in the grid"


def test_reconstruct_image_files(runs, tmp_path, capsys):
    images, _ = load_fashion_mnist("test")
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i].numpy()).save(paths[-1])
    out = tmp_path / "recon.png"
    assert run("reconstruct", "--autoencoder", runs.ae, "--images", *paths, "--out", out,
               "--device", "cpu") == 0
    assert "(2 images)" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == grid_size(4, 2)


# ------------------------------------------------------------------ other training paths
def test_train_prior_from_images(runs, tmp_path, tiny_prior_args):
    """No --latents: the prior encodes each batch on the fly."""
    out = tmp_path / "prior"
    assert run("train-prior", "--out", out, "--autoencoder", runs.ae,
               "--set", "data.limit=256", *tiny_prior_args) == 0
    header = json.loads((out / "checkpoints" / "step_000006" / "config.json").read_text())
    assert header["kind"] == "prior" and header["config"]["latents"] == ""
    assert header["config"]["model"]["num_classes"] == 10
    assert [int(r["step"]) for r in read_metrics(out)] == [2, 4, 6]
    assert run("sample", "--prior", out, "--out", tmp_path / "s.png", "-n", 2, "--steps", 2,
               "--device", "cpu") == 0


def _image_folder(root: Path, per_class: int) -> Path:
    """Fashion-MNIST test images as PNGs in two class subfolders."""
    images, labels = load_fashion_mnist("test")
    for cls in (0, 1):
        (root / f"class{cls}").mkdir(parents=True)
        idx = (labels == cls).nonzero().flatten()[:per_class]
        for i in idx.tolist():
            Image.fromarray(images[i].numpy()).save(root / f"class{cls}" / f"{i}.png")
    return root


def test_train_ae_on_an_image_folder(fashion_mnist, tmp_path, tiny_ae_args):
    """A folder has no size of its own: it is read at the model's size and channels."""
    data = _image_folder(tmp_path / "images", per_class=20)
    out = tmp_path / "ae"
    assert run("train-ae", "--out", out, *tiny_ae_args, "--data", data, "--steps", 2) == 0
    header = json.loads((out / "checkpoints" / "step_000002" / "config.json").read_text())
    assert header["metadata"]["classes"] == ["class0", "class1"]


# --------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("override,says", [
    ("model.nonsense=1", ["nonsense", "valid keys are", "'bits'", "'channels'", "'hidden'"]),
    ("nonsense.x=1", ["nonsense", "valid keys are", "'data'", "'model'", "'optim'", "'run'"]),
    ("run.log_every=often", ["run.log_every", "expected an integer"]),
])
def test_bad_config_exits_2_naming_the_valid_choices(tmp_path, capsys, tiny_ae_args,
                                                     override, says):
    out = tmp_path / "run"
    assert run("train-ae", "--out", out, *tiny_ae_args, "--set", override) == 2
    err = capsys.readouterr().err
    assert "bld train-ae: error:" in err
    for text in says:
        assert text in err
    assert not out.exists()


def test_unknown_config_preset(tmp_path, capsys):
    assert run("train-ae", "--out", tmp_path / "run", "--config", "no-such-preset") == 2
    err = capsys.readouterr().err
    assert "no-such-preset" in err and "fashion-mnist" in err and "emoji64" in err
    assert not (tmp_path / "run").exists()


def test_unknown_denoiser_preset(runs, tmp_path, capsys, tiny_prior_args):
    out = tmp_path / "prior"
    assert run("train-prior", "--out", out, "--autoencoder", runs.ae, "--latents", runs.latents,
               *tiny_prior_args, "--preset", "huge") == 2
    err = capsys.readouterr().err
    assert "'huge'" in err and "tiny" in err and "original" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["train-ae", "train-prior"])
@pytest.mark.parametrize("folder,says", [("missing", "no folder of that name exists"),
                                         ("empty", "no images found")])
def test_bad_data_folder_fails_before_training(request, tmp_path, capsys, tiny_ae_args,
                                               tiny_prior_args, command, folder, says):
    data = tmp_path / folder
    if folder == "empty":
        data.mkdir()
    if command == "train-ae":
        args = tiny_ae_args
    else:
        args = ["--autoencoder", request.getfixturevalue("runs").ae, *tiny_prior_args]
    out = tmp_path / "run"
    assert run(command, "--out", out, *args, "--data", data) == 2
    err = capsys.readouterr().err
    assert f"bld {command}: error:" in err and str(data) in err and says in err
    assert not out.exists(), "the run folder was made before the data was checked"


def test_too_few_images_for_a_batch(fashion_mnist, tmp_path, capsys, tiny_ae_args):
    data = _image_folder(tmp_path / "images", per_class=3)
    assert run("train-ae", "--out", tmp_path / "run", *tiny_ae_args, "--data", data) == 2
    err = capsys.readouterr().err
    assert "fewer than one global batch" in err and "batch_size" in err


def test_sample_with_an_autoencoder_folder_as_prior(runs, tmp_path, capsys):
    assert run("sample", "--prior", runs.ae, "--out", tmp_path / "s.png", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "'autoencoder' checkpoint, expected 'prior'" in err
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("command", ["train-ae", "train-prior"])
def test_resume_with_nothing_to_resume(request, tmp_path, capsys, tiny_ae_args,
                                       tiny_prior_args, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    if command == "train-ae":
        args = tiny_ae_args
    else:
        r = request.getfixturevalue("runs")
        args = ["--autoencoder", r.ae, "--latents", r.latents, *tiny_prior_args]
    assert run(command, "--out", empty, *args, "--resume") == 2
    err = capsys.readouterr().err
    assert "no checkpoint to resume from" in err and "drop --resume" in err
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("which", ["ae", "prior"])
def test_refuses_to_overwrite_a_run_without_resume(runs, capsys, tiny_ae_args, tiny_prior_args,
                                                   which):
    run_dir = getattr(runs, which)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    if which == "ae":
        argv = ["train-ae", "--out", run_dir, *tiny_ae_args]
    else:
        argv = ["train-prior", "--out", run_dir, "--autoencoder", runs.ae,
                "--latents", runs.latents, *tiny_prior_args]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume" in err
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after == before, "the refused run touched the existing run folder"


def test_one_sampling_step_is_a_clear_error(runs, tmp_path, capsys):
    # S = 1 would visit only t = 1 and never denoise from t = T (docs/method.md §2): refused
    assert run("sample", "--prior", runs.prior, "--out", tmp_path / "s.png", "-n", 2,
               "--steps", 1, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "steps must be in 2.." in err and not (tmp_path / "s.png").exists()
