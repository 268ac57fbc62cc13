"""`bld demo` end to end on a few steps: every promised file, and --resume reuses stages."""

from __future__ import annotations

import json

import pytest

from bld.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_writes_grids_plots_and_report(tmp_path, fashion_mnist, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ae-steps", "3", "--prior-steps", "3", "--limit", "256",
            "--eval-samples", "0", "--device", "cpu"]
    assert main(args) == 0
    for name in ("samples.png", "reconstructions.png", "loss_autoencoder.png", "loss_prior.png",
                 "report.md", "report.json"):
        assert (out / name).exists(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["sample_steps"] == 16
    assert rep["autoencoder"]["steps"] == 3 and rep["prior"]["steps"] == 3
    assert rep["figures"]["test_images"] == 10000 and rep["figures"]["reconstruction_psnr_db"] > 0
    assert len(rep["classes"]) == 10 and "Sandal" in (out / "report.md").read_text()

    # a second run into the same folder refuses; --resume reuses both trained stages
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "prior" / "done.json").read_text()
    assert main(args + ["--resume"]) == 0
    assert (out / "prior" / "done.json").read_text() == before
