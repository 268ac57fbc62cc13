"""benchmarks/tokenizers.py on colour images: every tokenizer keeps the preset's architecture
(faces64-grid8, the published faces results' preset: pixel-unshuffle 4, RGB, 64 bits on an
8x8 grid; faces64: 32 bits on a 16x16 grid), code indices stay exact at 64 bits,
and a quick run on a small generated DiceBear-like folder writes its own files."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    """benchmarks/tokenizers.py as a module (under another name: `tokenizers` is a package)."""
    path = ROOT / "benchmarks" / "tokenizers.py"
    sys.path.insert(0, str(path.parent))  # for its `import common`; common drops it again
    try:
        spec = importlib.util.spec_from_file_location("bld_tokenizers_bench", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            sys.path.pop(0)
    yield module
    sys.modules.pop(spec.name, None)


def test_specs_and_code_indices_at_64_bits(tok):
    specs = tok.make_specs(64, "threshold")
    assert list(specs) == ["bernoulli-64", "bernoulli-64-draws", "lfq-64", "fsq-64",
                           "bernoulli-12", "vq-12"]
    levels = specs["fsq-64"].levels  # 8s and one power of two, no level of 2
    assert math.prod(levels) == 2 ** 64 and specs["fsq-64"].bits == 64.0
    assert levels[:-1] == (8,) * (len(levels) - 1) and levels[-1] in (4, 16)
    assert tok.fsq_levels(32) == (8,) * 10 + (4,)  # the Fashion-MNIST preset's, unchanged
    assert 64 // tok.lfq_codebooks(64) <= 8
    # bits: codes that differ only in bit 63, or are all ones, get distinct exact indices
    bits = torch.zeros(4, 64, 1, 1)
    bits[1, 63] = 1
    bits[2, 62] = 1
    bits[3] = 1
    index = tok._bits_to_index(bits).reshape(4, -1)
    assert len({tuple(r) for r in index.tolist()}) == 4 and (index >= 0).all()
    small = torch.zeros(2, 12, 1, 1)
    small[1, 11] = 1
    assert tok._bits_to_index(small).flatten().tolist() == [0, 2 ** 11]
    # FSQ: the lowest code, the highest of the top level alone, and the highest of all differ
    codes = torch.full((3, len(levels), 1, 1), -1.0)
    codes[1:, -1] = 7 / 8  # level 16: half width 8, highest code 7/8
    codes[2, :-1] = 3 / 4  # levels of 8: half width 4, highest code 3/4
    index = tok._fsq_index(codes, levels).reshape(3, -1)
    assert len({tuple(r) for r in index.tolist()}) == 3 and (index >= 0).all()
    usage = tok.usage_stats(specs["bernoulli-64"], tok._bits_to_index(bits), bits, None)
    assert usage["codes_used"] == 4 and usage["effective_bits"] == pytest.approx(2.0)


def test_every_tokenizer_keeps_the_faces64_grid8_architecture(tok):
    pytest.importorskip("vector_quantize_pytorch")  # LFQ, FSQ, VQ: pip install -e '.[bench]'
    preset = tok._preset("faces64-grid8")
    m = preset.model
    assert (m.in_channels, m.image_size, m.patch, m.bits, m.grid) == (3, 64, 4, 64, 8)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    for spec in tok.make_specs(m.bits, m.train_bits).values():
        torch.manual_seed(0)
        model = tok.Tokenizer(spec, m, channels=8, hidden=16)
        # pixel-unshuffle 4 at the input, pixel-shuffle back at the output: 3 x 16 channels
        assert model.encoder.conv_in.in_channels == model.decoder.conv_out.out_channels == 48
        model.train()
        recon, q = model(x)
        assert recon.shape == x.shape and q.codes.shape == (2, spec.dim, 8, 8), spec.name
        (recon.float().pow(2).mean() + q.aux).backward()
        model.eval()
        with torch.no_grad():
            recon, q = model(x)
        usage = tok.usage_stats(spec, q.index, q.bits, q.probs)
        assert 1 <= usage["codes_used"] <= 2 * 64 and usage["effective_bits"] <= spec.bits
    # the preset's padding is honoured as BinaryAutoencoder does it: 60 px padded to 64
    model = tok.Tokenizer(tok.make_specs(64, "threshold")["bernoulli-64"],
                          replace(m, image_size=60, padded_size=64), channels=8, hidden=16)
    recon, q = model(torch.zeros(1, 3, 60, 60))
    assert recon.shape == (1, 3, 60, 60) and q.codes.shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="expects images"):
        model(torch.zeros(1, 1, 60, 60))


def test_quick_run_on_colour_faces_writes_its_own_files(tmp_path, monkeypatch):
    """--preset faces64-grid8 takes the preset's dataset (dicebear, here a generated folder in the
    cache) and names the files tokenizers_dicebear, so the Fashion-MNIST results are not
    overwritten; FD is measured with a classifier of that dataset (2 steps: a smoke test)."""
    from colour_faces import write_colour_faces

    from bld.data import default_dicebear_dir
    from bld.evaluation.evaluate import train_and_save_classifier
    cache = tmp_path / "cache"
    write_colour_faces(cache / "bld" / default_dicebear_dir(64).name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    clf = tmp_path / "classifier"
    train_and_save_classifier("dicebear", clf, steps=2, seed=0, progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tokenizers.py"), "--quick", "--preset",
           "faces64-grid8", "--tokenizers", "bernoulli-64", "bernoulli-12", "--seeds", "1",
           "--classifier", str(clf), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "tokenizers_dicebear.json", "tokenizers_dicebear.md", "tokenizers_dicebear_fd_recon.png",
        "tokenizers_dicebear_psnr.png", "tokenizers_dicebear_reconstructions.png"]
    results = json.loads((out / "tokenizers_dicebear.json").read_text())["results"]
    assert (results["dataset"], results["preset"]) == ("dicebear", "faces64-grid8")
    assert results["test_images"] == 12 and results["fd_n"] == 6
    assert results["classifier"]["dataset"] == "dicebear"
    assert [r["tokenizer"] for r in results["rows"]] == ["bernoulli-64", "bernoulli-12"]
    assert all(math.isfinite(r["psnr"]) for r in results["rows"])
    report = (out / "tokenizers_dicebear.md").read_text()
    assert "DiceBear faces" in report and "`faces64-grid8`" in report and "pixel-unshuffle 4" in report
    assert "8 x 8 positions" in report and "Fashion-MNIST" not in report
    # no headline key from a quick run; a classifier of another dataset is refused
    assert not (out / "headline.json").exists()
    fashion = json.loads((clf / "config.json").read_text())
    fashion["metadata"]["dataset"] = "fashion-mnist"
    (clf / "config.json").write_text(json.dumps(fashion))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "trained on fashion-mnist, not dicebear" in res.stderr


def test_seeds_shared_between_processes_are_kept_and_reported(tmp_path, fashion_mnist):
    """--only-seed trains one seed into --work and writes no report; --report-only then
    reports what was kept without training the seed that is missing."""
    out, work = tmp_path / "out", tmp_path / "work"
    base = [sys.executable, str(ROOT / "benchmarks" / "tokenizers.py"), "--quick", "--seeds",
            "2", "--tokenizers", "bernoulli-32", "--out", str(out), "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(base + ["--only-seed", "1"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["bernoulli-32-seed1.json",
                                                       "bernoulli-32-seed1.pt"]
    assert not (out / "tokenizers.json").exists()
    res = subprocess.run(base + ["--report-only"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert "bernoulli-32 seed 0: not measured yet" in res.stdout
    assert "bernoulli-32 seed 1: kept in" in res.stdout
    rows = json.loads((out / "tokenizers.json").read_text())["results"]["rows"]
    assert [(r["tokenizer"], r["seed"]) for r in rows] == [("bernoulli-32", 1)]
    bad = subprocess.run(base + ["--only-seed", "5"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "--only-seed 5 is not one of the seeds [0, 1]" in bad.stderr
