"""`bld demo` end to end on a few steps: every promised file, and --resume reuses stages."""

from __future__ import annotations

import json

import pytest

from bld.cli import main
from bld.config import load_config_dict
from bld.sampling import DEFAULT_EVIDENCE_WEIGHT

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_writes_grids_plots_and_report(tmp_path, fashion_mnist, capsys):
    # a tiny run, evaluated end to end (the code that makes the README's headline figures)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ae-steps", "3", "--prior-steps", "3", "--limit", "256",
            "--eval-samples", "60", "--classifier-steps", "20", "--device", "cpu"]
    assert main(args) == 0
    for name in ("samples.png", "reconstructions.png", "loss_autoencoder.png", "loss_prior.png",
                 "trajectory.png", "class_rows.png", "report.md", "report.json"):
        assert (out / name).exists(), name
    for name in ("trajectory.png", "class_rows.png"):
        assert f"]({name})" in (out / "report.md").read_text()
    # the prior's snapshot grids are listed in a page beside them
    index = (out / "prior" / "samples" / "index.html").read_text()
    grids = sorted(p.name for p in (out / "prior" / "samples").glob("samples_*.png"))
    assert grids and all(f'src="{g}"' in index for g in grids)
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["sample_steps"] == 16
    assert rep["autoencoder"]["steps"] == 3 and rep["prior"]["steps"] == 3
    f = rep["figures"]
    assert f["test_images"] == 10000 and f["eval_n"] == 60
    # three training steps: every figure is computed, and each says the models are poor
    assert 0 < f["reconstruction_psnr_db"] < 20
    assert f["sample_fd"] > 10 * f["fd_floor_real_vs_real"]
    assert f["fd_ratio_samples_to_recon"] == pytest.approx(f["sample_fd"] / f["reconstruction_fd"])
    for key in ("sample_class_accuracy", "reconstruction_class_accuracy", "sample_recall",
                "reconstruction_recall", "sample_precision", "reconstruction_precision"):
        assert 0 <= f[key] <= 1, key
    assert rep["settings"]["evidence_weight"] == DEFAULT_EVIDENCE_WEIGHT
    # the samples use the prior preset's guidance unless --guidance says otherwise
    assert rep["settings"]["guidance"] == load_config_dict("prior", "fashion-mnist", [])[
        "sample_guidance"]
    assert set(rep["times"]) >= {"autoencoder_s", "prior_s", "classifier_s", "evaluation_s"}
    assert len(rep["classes"]) == 10 and "Sandal" in (out / "report.md").read_text()

    # a second run into the same folder refuses; --resume reuses both trained stages
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "prior" / "done.json").read_text()
    assert main(args + ["--resume"]) == 0
    assert (out / "prior" / "done.json").read_text() == before
