"""The pipeline object and the loading beside it: sampling a trained run never imports the
training loops, and `BinaryLatentDiffusionPipeline` loads, samples, inpaints, encodes,
decodes and round-trips through one saved folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bld

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(bld.__file__).resolve().parents[1]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run code in a new interpreter (so sys.modules starts empty) on this checkout's bld."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"}, timeout=300)


def test_sampling_never_imports_the_training_module(runs, tmp_path):
    out = tmp_path / "grid.png"
    code = f"""
import json, sys
import bld.inference.pipeline, bld.core.loading
before = sorted(m for m in sys.modules if m.startswith("bld."))
from bld.app.cli import main
rc = main(["sample", "--prior", {str(runs.prior)!r}, "-n", "2", "--steps", "2",
           "--device", "cpu", "--out", {str(out)!r}])
print(json.dumps({{"rc": rc, "before": before,
                  "after": sorted(m for m in sys.modules if m.startswith("bld."))}}))
"""
    res = _fresh_python(code)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0 and out.is_file()
    assert "bld.core.loading" in got["before"]
    assert "bld.training.loop" not in got["before"], "importing the pipeline imported bld.training.loop"
    assert "bld.training.loop" not in got["after"], "`bld sample` imported bld.training.loop"


def test_cli_and_demo_do_not_import_each_other():
    code = """
import sys
import bld.app.cli
a = "bld.app.demo" in sys.modules
for m in [m for m in sys.modules if m.startswith("bld.")]:
    del sys.modules[m]
import bld.app.demo
print(a, "bld.app.cli" in sys.modules)
"""
    res = _fresh_python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------ the pipeline object
@pytest.fixture(scope="module")
def pipe(runs):
    from bld import BinaryLatentDiffusionPipeline
    return BinaryLatentDiffusionPipeline.from_run(runs.prior, device="cpu")


@pytest.fixture(scope="module")
def test_images(fashion_mnist):
    from bld.data import load_fashion_mnist, to_model_range
    x, y = load_fashion_mnist("test")
    return to_model_range(x[:8]), y[:8]


def test_pipeline_samples_pil_images_reproducibly(pipe):
    import torch
    from PIL import Image
    out = pipe(class_labels=["Sneaker", 0], n=3, steps=4, seed=1, return_bits=True, precision="fp32")
    assert len(out.images) == 3 and all(isinstance(im, Image.Image) for im in out.images)
    assert out.images[0].size == (28, 28) and out.images[0].mode == "L"
    assert out.labels.tolist() == [7, 0, 7]  # names or ids, cycled over n
    assert out.bits.shape == (3, 8, 7, 7) and set(out.bits.unique().tolist()) <= {0.0, 1.0}
    again = pipe(class_labels=["Sneaker", 0], n=3, steps=4,
                 generator=torch.Generator().manual_seed(1), return_bits=True, precision="fp32")
    assert torch.equal(again.bits, out.bits)
    other = pipe(class_labels=["Sneaker", 0], n=3, steps=4, seed=2, return_bits=True)
    assert not torch.equal(other.bits, out.bits)
    # the images are the decoded bits
    decoded = pipe.decode(out.bits, output_type="pt")
    pil = torch.stack([torch.from_numpy(np.array(im)) for im in out.images])
    assert torch.equal(pil, ((decoded[:, 0] + 1) * 127.5).round().byte())


def test_pipeline_guidance_interval_defaults_to_the_priors(pipe, monkeypatch):
    """The prior's config says where guidance applies; an explicit interval overrides it,
    and sampling with the default is sampling with that interval spelled out."""
    import dataclasses

    import torch

    import bld.inference.pipeline
    cfg = pipe.prior.config
    monkeypatch.setattr(pipe.prior, "config",
                        dataclasses.replace(cfg, sample_guidance_interval=(0.0, 0.5)))
    assert pipe.default_guidance_interval == (0.0, 0.5)
    seen = []
    real = bld.inference.generate.generate
    monkeypatch.setattr(bld.inference.pipeline, "generate",
                        lambda *a, **k: seen.append(k["guidance_interval"]) or real(*a, **k))
    kw = dict(class_labels=[0, 1], steps=4, seed=3, guidance=2.0, return_bits=True,
              precision="fp32")
    default = pipe(**kw)
    spelled = pipe(**kw, guidance_interval=(0.0, 0.5))
    pipe(**kw, guidance_interval=(0.25, 1.0))
    assert seen == [(0.0, 0.5), (0.0, 0.5), (0.25, 1.0)]
    assert torch.equal(default.bits, spelled.bits)


def test_pipeline_temperature_defaults_to_the_priors(pipe, monkeypatch):
    """The prior's config sets the sampler's temperature; an explicit one overrides it, and
    the default samples exactly what the value spelled out samples."""
    import dataclasses

    import torch

    import bld.inference.pipeline
    monkeypatch.setattr(pipe.prior, "config",
                        dataclasses.replace(pipe.prior.config, sample_temperature=1.4))
    assert pipe.default_temperature == 1.4
    seen = []
    real = bld.inference.generate.generate
    monkeypatch.setattr(bld.inference.pipeline, "generate",
                        lambda *a, **k: seen.append(k["temperature"]) or real(*a, **k))
    kw = dict(class_labels=[0, 1], steps=4, seed=3, return_bits=True, precision="fp32")
    default = pipe(**kw)
    spelled = pipe(**kw, temperature=1.4)
    cooler = pipe(**kw, temperature=0.5)
    assert seen == [1.4, 1.4, 0.5]
    assert torch.equal(default.bits, spelled.bits) and not torch.equal(default.bits, cooler.bits)


def test_pipeline_trajectory_ends_at_the_sample(pipe):
    import torch

    from bld.inference.pipeline import bits_flipped
    out = pipe(class_labels=[1, 2], steps=5, seed=0, return_bits=True, return_trajectory=True)
    assert len(out.trajectory) == 6 and out.timesteps[0] == pipe.timesteps
    assert torch.equal(out.trajectory[-1], out.bits)
    flips = bits_flipped(out.trajectory)
    assert flips.shape == (5, 2)
    # z_T is half ones (coin flips); the first step changes many bits
    assert 0.3 < out.trajectory[0].mean() < 0.7 and (flips[0] > 0).all()
    assert torch.equal(flips[0], (out.trajectory[0] != out.trajectory[1]).flatten(1).sum(1))


def test_pipeline_save_and_load_one_folder(pipe, tmp_path, monkeypatch):
    import torch

    from bld import BinaryLatentDiffusionPipeline
    folder = tmp_path / "pretrained"
    pipe.save_pretrained(folder)
    assert {"config.json", "autoencoder.safetensors", "prior.safetensors"} <= {
        p.name for p in folder.iterdir()}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == "bld-pipeline" and cfg["classes"][7] == "Sneaker"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder needs no network
    back = BinaryLatentDiffusionPipeline.from_pretrained(folder)
    also = BinaryLatentDiffusionPipeline.from_run(folder)
    a = pipe(class_labels=[3], n=2, steps=4, seed=5, return_bits=True)
    for p in (back, also):
        b = p(class_labels=[3], n=2, steps=4, seed=5, return_bits=True)
        assert torch.equal(a.bits, b.bits)
        assert p.classes == pipe.classes and p.data == pipe.data


def test_pipeline_encode_decode_round_trip(pipe, test_images, runs):
    import torch

    from bld.core.loading import load_autoencoder
    from bld.inference.generate import reconstruct
    x, _ = test_images
    bits = pipe.encode(x)
    assert bits.shape == (8, 8, 7, 7) and set(bits.unique().tolist()) <= {0.0, 1.0}
    recon = pipe.decode(bits, output_type="pt")
    ref = reconstruct(load_autoencoder(runs.ae), x).recon
    assert torch.allclose(recon, ref, atol=1e-5)
    # PIL images in: the same bits as the tensor they hold (8-bit pixels)
    eight_bit = ((recon + 1) * 127.5).round() / 127.5 - 1
    assert torch.equal(pipe.encode(pipe.decode(bits)), pipe.encode(eight_bit))


def test_pipeline_inpaint_keeps_the_known_bits(pipe, test_images):
    import torch
    x, _ = test_images
    fill = torch.zeros(28, 28, dtype=torch.bool)
    fill[16:] = True  # regenerate the lower rows
    out = pipe.inpaint(x[0], fill, n=3, class_labels=[0], steps=4, return_bits=True,
                       output_type="pt")
    known = pipe.encode(x[:1])[0]
    keep = pipe.autoencoder.latent_mask((~fill).float()[None, None])[0].bool()  # (1, h, w)
    assert keep.any() and not keep.all()
    for b in out.bits:
        assert torch.equal(b[keep.expand_as(b)], known[keep.expand_as(known)])
    # off by default: no paste-back, the decoder's pixels everywhere
    assert not torch.equal(out.images[:, :, :16], x[:1, :, :16].expand(3, -1, -1, -1))
    pasted = pipe.inpaint(x[0], fill, n=3, class_labels=[0], steps=4, output_type="pt",
                          paste=True)
    assert torch.equal(pasted.images[:, :, :16], x[:1, :, :16].expand(3, -1, -1, -1))


def test_pipeline_blend_walks_between_two_images(pipe, test_images):
    import torch
    x, _ = test_images
    out = pipe.blend(x[0], x[1], fractions=[0, 0.5, 1])
    za, zb = pipe.encode(x[:2])
    assert out.bits_differing == int((za != zb).sum()) > 0
    assert out.bits_taken == [0, round(out.bits_differing / 2), out.bits_differing]
    ends = pipe.decode(torch.stack([za, zb]))
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(ends[0]))
    assert np.array_equal(np.asarray(out.images[2]), np.asarray(ends[1]))


def _image(mode: str = "L", size=(28, 28)):
    from PIL import Image
    return Image.new(mode, size)


def _mask(shape=(28, 28), dtype=bool):
    m = np.zeros(shape, dtype)
    m[..., 14:, :] = 1
    return m


# (call, a piece of the one-line message): every argument the pipeline object takes
BAD_PIPELINE_INPUT = [
    # n
    (lambda p: p(n=0), "n must be at least 1, got 0"),
    (lambda p: p(n=2.5), "n must be a whole number, got 2.5"),
    (lambda p: p(n=True), "n must be a whole number, got True"),
    (lambda p: p(n="4"), "n must be a whole number, got '4'"),
    (lambda p: p.inpaint(_image(), _mask(), n=-1), "n must be at least 1, got -1"),
    # steps
    (lambda p: p(class_labels=[0], steps=1), "steps must be in 2.."),
    (lambda p: p(steps=0), "steps must be in 2..64 (the prior's T), got 0"),
    (lambda p: p(steps=65), "steps must be in 2..64 (the prior's T), got 65"),
    (lambda p: p(steps=4.5), "steps must be a whole number, got 4.5"),
    (lambda p: p.inpaint(_image(), _mask(), steps=1), "steps must be in 2..64"),
    # guidance and temperature
    (lambda p: p(class_labels=[0], guidance=-1), "guidance must be >= 0 (0: no guidance), got -1"),
    (lambda p: p(class_labels=[0], guidance=float("nan")), "guidance must be a finite number"),
    (lambda p: p(guidance="strong"), "guidance must be a finite number, got 'strong'"),
    (lambda p: p(class_labels=[0], guidance_interval=(0.8, 0.2)),
     "guidance_interval must satisfy 0 <= lo <= hi <= 1 (fractions of T), got (0.8, 0.2)"),
    (lambda p: p(guidance_interval=(0, 1.5)), "guidance_interval must satisfy 0 <= lo <= hi <= 1"),
    (lambda p: p(guidance_interval=0.6), "guidance_interval must be two numbers (lo, hi), got 0.6"),
    (lambda p: p.inpaint(_image(), _mask(), guidance_interval=(0.1, 0.2, 0.3)),
     "guidance_interval must be two numbers (lo, hi)"),
    (lambda p: p(temperature=0), "temperature must be > 0, got 0"),
    (lambda p: p(temperature=float("inf")), "temperature must be a finite number, got inf"),
    (lambda p: p.inpaint(_image(), _mask(), temperature=-1), "temperature must be > 0"),
    # class names and ids
    (lambda p: p(class_labels=["Sock"]), "unknown class 'Sock'"),
    (lambda p: p(class_labels="Sock"), "unknown class 'Sock'; classes are ['T-shirt/top'"),
    (lambda p: p(class_labels=[10]), "class 10 out of range 0..9"),
    (lambda p: p(class_labels=[1.5]), "a class id must be a whole number, got 1.5"),
    (lambda p: p(class_labels=[None]), "a class id must be a whole number, got None"),
    (lambda p: p.inpaint(_image(), _mask(), class_labels="Sock"), "unknown class 'Sock'"),
    # masks: shape, dtype, size
    (lambda p: p.inpaint(np.zeros((40, 30), np.uint8), np.zeros((40, 30))), "no pixel to fill in"),
    (lambda p: p.inpaint(_image(), _mask((28, 28, 3))), "a mask must be 2-D (H, W), got shape (28, 28, 3)"),
    (lambda p: p.inpaint(_image(), _mask((20, 28))), "the mask is 28x20 but the image is 28x28"),
    (lambda p: p.inpaint(_image(size=(64, 64)), _image()), "the mask is 28x28 but the image is 64x64"),
    (lambda p: p.inpaint(_image(), _mask(dtype=np.complex64)), "a mask must be boolean or numeric, got dtype complex64"),
    (lambda p: p.inpaint(_image(), np.full((28, 28), "x")), "a mask must be boolean or numeric, got dtype <U1"),
    (lambda p: p.inpaint(_image(), _mask(dtype=np.float32) * np.nan), "a mask must not hold NaN"),
    (lambda p: p.inpaint(_image(), [[0, 1], [1, 0]]), "a mask must be a PIL image, an array or a tensor"),
    # images: mode, array shape, tensor range, type
    (lambda p: p.encode(_image("LAB")), "an image in mode LAB cannot be used; convert it to RGB"),
    (lambda p: p.encode(np.zeros((28, 28, 2), np.uint8)), "a uint8 image array must be (H, W), (H, W, 3) or (H, W, 4), got shape (28, 28, 2)"),
    (lambda p: p.encode(np.full((1, 1, 28, 28), 255.0)), "image tensors must hold values in [-1, 1] (x / 127.5 - 1"),
    (lambda p: p.encode(np.zeros((1, 1, 28, 28), bool)), "image tensors must be float in [-1, 1], got dtype bool"),
    (lambda p: p.encode("shirt.png"), "images must be PIL images, uint8 arrays or tensors in [-1, 1], got str"),
    (lambda p: p.encode([_image(), "shirt.png"]), "got str (open files with PIL.Image.open)"),
    (lambda p: p.inpaint("shirt.png", _mask()), "images must be PIL images, uint8 arrays or tensors"),
    (lambda p: p.blend(_image(), _image("LAB")), "an image in mode LAB cannot be used"),
    (lambda p: p.blend(_image(), _image(), fractions=[0, 2]), "blend fractions must be in [0, 1], got 2"),
    (lambda p: p.decode(np.zeros((8, 7))), "bits must be (N, 8, 7, 7)"),
]


@pytest.mark.parametrize("call,message", BAD_PIPELINE_INPUT,
                         ids=[m[:40] for _, m in BAD_PIPELINE_INPUT])
def test_pipeline_bad_input_says_what_is_wrong(pipe, call, message):
    with pytest.raises(ValueError) as e:
        call(pipe)
    assert message in str(e.value) and "\n" not in str(e.value)
