"""The README's Python example runs as written, and its commands name real things."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bld.app.cli import build_parser, preset_names

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(marker: str) -> str:
    """The README's python example that holds ``marker``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
              if marker in b]
    assert len(blocks) == 1, f"README has lost its python example with {marker!r}"
    return blocks[0]


def test_readme_pipeline_example_runs(runs, tmp_path, monkeypatch):
    # the pipeline example, on the tiny trained run in place of runs/demo
    from PIL import Image
    code = _python_block("BinaryLatentDiffusionPipeline.from_run")
    assert '"runs/demo"' in code
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace('"runs/demo"', repr(str(runs.prior))), "README.md", "exec"), ns)
    out, filled, same = ns["out"], ns["filled"], ns["same"]
    assert [im.size for im in out.images] == [(28, 28)] * 4
    assert out.labels.tolist() == [7, 8, 7, 8]  # Sneaker, Bag, cycled
    assert tuple(out.bits.shape) == (4, *ns["pipe"].latent_shape)
    assert Image.open(tmp_path / "sneaker.png").size == (28, 28)
    assert len(filled.images) == 2 and ns["bits"].shape[0] == 2
    assert ns["walk"].bits_taken[-1] == ns["walk"].bits_differing
    assert (tmp_path / "bld-fashion" / "prior.safetensors").is_file()
    again = same(class_labels=["Sneaker", "Bag"], n=4, steps=16, guidance=0.5, generator=0,
                 return_bits=True)
    assert again.bits.equal(out.bits)  # the saved folder samples the same bits


def test_readme_low_level_example_runs(fashion_mnist):
    ns: dict = {}
    exec(compile(_python_block("from bld.models.denoiser import"), "README.md", "exec"), ns)
    assert ns["z"].shape == (8, 16, 7, 7) and set(ns["z"].unique().tolist()) <= {0.0, 1.0}


def test_readme_tables_come_from_the_measurements():
    # the README's demo table and the benchmark headline table are rendered from
    # docs/demo_report.json and benchmarks/results/headline.json by benchmarks/publish.py
    root = README.parent
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "publish.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("flag,dataset,restricted,match", [
    ("--colour-native-run", "faces", {"ONEDNN_MAX_CPU_ISA": "AVX2"},
     "did not run on a CPU that is AVX2-only itself"),
    ("--colour-native-run", "fashion-mnist", {}, "not of a colour dataset"),
    ("--native-run", "fashion-mnist", {"ATEN_CPU_CAPABILITY": "avx2"},
     "did not run on a CPU that is AVX2-only itself"),
    ("--native-run", "faces", {}, "not of fashion-mnist"),
    ("--colour-six-run", "faces", {}, "not the six styles"),
    ("--colour-six-run", "fashion-mnist", {}, "not of a colour dataset"),
])
def test_publish_refuses_a_native_run_that_is_not_one(tmp_path, flag, dataset, restricted, match):
    # --native-run / --colour-native-run take only a demo of their dataset whose CPU was
    # AVX2-only without being restricted to it, --colour-six-run only a faces demo of the six
    # styles; the refusal comes before anything in docs/ or the headline changes
    root = README.parent
    kept = [root / "benchmarks" / "results" / "headline.json",
            root / "docs" / "colour_demo_native_report.json",
            root / "docs" / "demo_native_report.json",
            root / "docs" / "colour_demo_six_report.json"]
    before = [p.read_bytes() if p.exists() else None for p in kept]
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"dataset": dataset, "cpu": {
        "capability": "AVX2", "native_bf16": False, "restricted_by": restricted}}))
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "publish.py"),
                          flag, str(run)], capture_output=True, text=True)
    assert res.returncode != 0 and re.search(match, res.stderr), res.stderr
    assert [p.read_bytes() if p.exists() else None for p in kept] == before


def test_readme_commands_exist():
    text = README.read_text()
    commands = set(re.findall(r"`bld ([a-z-]+)", text))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert commands and commands <= set(sub.choices)
    for name in re.findall(r"`([a-z0-9-]+)` \(\d+ px", text):
        assert name in preset_names("autoencoder") and name in preset_names("prior")


def test_every_preset_loads_and_builds():
    """The README's presets (and any other), for both models: each YAML parses into a
    valid config and builds its model (on the meta device: shapes only, no memory)."""
    import torch

    from bld.models.autoencoder import BinaryAutoencoder
    from bld.core.config import load_config_dict
    from bld.models.denoiser import Denoiser
    from bld.training.prior import resolve_prior_config
    from bld.core.config import config_from_dict
    names = preset_names("autoencoder")
    assert names == preset_names("prior")
    assert {"fashion-mnist", "emoji64", "faces64", "256px", "1024px"} <= set(names)
    for name in names:
        ae = config_from_dict("autoencoder", load_config_dict("autoencoder", name, []))
        prior = resolve_prior_config(
            config_from_dict("prior", load_config_dict("prior", name, [])), ae.model, 10)
        with torch.device("meta"):
            ae_params = sum(p.numel() for p in BinaryAutoencoder(ae.model).parameters())
            prior_params = sum(p.numel() for p in Denoiser(prior.model).parameters())
        assert ae_params > 10_000 and prior_params > 10_000, name
        assert prior.model.bits == ae.model.bits and prior.model.grid == ae.model.grid, name
