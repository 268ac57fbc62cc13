"""Evaluation end to end: FD against the real-vs-real floor on real images, and the
`bld train-classifier` / `bld eval` commands on tiny trained models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bld.app.cli import main
from bld.core.config import load_config_dict
from bld.core.device import resolve_precision
from bld.core.loading import load_prior
from bld.core.metrics import fd_from_features
from bld.data import load_fashion_mnist, to_model_range
from bld.evaluation.classifier import accuracy, per_class_accuracy
from bld.evaluation.evaluate import (evaluate_images, extract_features, load_classifier,
                                     real_reference)
from bld.models.sampling import DEFAULT_EVIDENCE_WEIGHT

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, fashion_mnist) -> Path:
    out = tmp_path_factory.mktemp("eval") / "classifier"
    assert run("train-classifier", "--out", out, "--steps", 150) == 0
    return out


def test_classifier_checkpoint_round_trips(classifier_dir):
    clf, meta = load_classifier(classifier_dir)
    assert meta["dataset"] == "fashion-mnist"
    # 150 steps of a small CNN on real data: far above the 10% of chance (measured ~0.80)
    assert meta["test_accuracy"] > 0.6
    x, _ = load_fashion_mnist("test")
    assert clf.features(to_model_range(x[:4])).shape == (4, clf.config.feature_dim)


def test_fd_of_real_images_sits_at_the_floor_and_noise_raises_it(classifier_dir):
    clf, _ = load_classifier(classifier_dir)
    x, y = load_fashion_mnist("test")
    xt = to_model_range(x)
    reference, floor = real_reference(xt, 1000)
    # 1000 more real test images, in neither set: what a perfect generator would produce
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))
    held_out = xt[perm[len(xt) // 2 + 1000:len(xt) // 2 + 2000]]
    real = evaluate_images(clf, reference, floor, held_out)
    # the floor compares two disjoint real sets (the test set's few duplicate images aside)
    def as_bytes(images):
        return {im.numpy().tobytes() for im in images}
    duplicates = len(xt) - len(as_bytes(xt))
    assert len(as_bytes(reference) & as_bytes(floor)) <= duplicates
    want = fd_from_features(extract_features(clf, reference), extract_features(clf, floor))
    assert real["fd_floor_real_vs_real"] == pytest.approx(want, rel=1e-6) and want > 0
    # a perfect generator (more real images) scores about the floor (FD at N = 1000 varies
    # by tens of percent from draw to draw)
    assert 0.4 < real["fd"] / real["fd_floor_real_vs_real"] < 2.5
    # with labels and the class count: class accuracy overall and per class, from one
    # classification (the same figures as the classifier module's own)
    want_y = y[perm[len(xt) // 2 + 1000:len(xt) // 2 + 2000]]
    labelled = evaluate_images(clf, reference, floor, held_out, want_y, 10)
    assert labelled["class_accuracy"] == accuracy(clf, held_out, want_y) > 0.5
    assert labelled["class_accuracy_per_class"] == per_class_accuracy(clf, held_out, want_y, 10)
    assert "class_accuracy_per_class" not in evaluate_images(clf, reference, floor, held_out,
                                                             want_y)
    g = torch.Generator().manual_seed(0)
    noisy = (floor + 0.3 * torch.randn(floor.shape, generator=g)).clamp(-1, 1)
    bad = evaluate_images(clf, reference, floor, noisy)
    assert bad["fd"] > 5 * real["fd"]
    assert real["precision"] > bad["precision"]


def test_eval_command_reports_samples_and_autoencoder(runs, classifier_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert run("eval", "--prior", runs.prior, "--classifier", classifier_dir, "-n", 60,
               "--steps", 4, "--guidance", 1.0, "--out", out, "--device", "cpu") == 0
    rep = json.loads((out / "eval.json").read_text())
    assert rep["settings"] == {"n": 60, "steps": 4, "temperature": 1.0, "guidance": 1.0,
                               "evidence_weight": DEFAULT_EVIDENCE_WEIGHT,
                               # the prior's own (its preset's) unless --guidance-interval
                               "guidance_interval": list(load_config_dict(
                                   "prior", "fashion-mnist", [])["sample_guidance_interval"]),
                               "seed": 0,
                               "conditional": True, "batch_size": 250,
                               "precision": resolve_precision("auto", "cpu").name}
    s = rep["samples"]
    assert s["n"] == 60 and 0 <= s["class_accuracy"] <= 1 and 0 <= s["precision"] <= 1
    # The figures are those of the images the command wrote: FD, precision and class accuracy
    # recomputed from samples.png (all 60, 8-bit) against the command's reference. (A 6-step
    # prior's samples are no better than noise, FD ~900 against ~880, so no quality bound
    # can tell it from a broken one; test_demo bounds a trained run's figures.)
    clf, _ = load_classifier(classifier_dir)
    xt = to_model_range(load_fashion_mnist("test")[0])
    reference, floor = real_reference(xt, 60, seed=0)
    with Image.open(out / "samples.png") as im:
        grid = torch.from_numpy(np.array(im.convert("L"))).float() / 127.5 - 1
    tiles = torch.stack([grid[2 + r * 30:2 + r * 30 + 28, 2 + c * 30:2 + c * 30 + 28]
                         for r in range(6) for c in range(10)])[:, None]
    labels = torch.arange(60) % 10  # --class not given: the classes cycled
    ref_f = extract_features(clf, reference)  # not through evaluate_images: independent
    assert s["fd_floor_real_vs_real"] == pytest.approx(
        fd_from_features(ref_f, extract_features(clf, floor)), rel=1e-6)
    assert s["fd"] == pytest.approx(fd_from_features(ref_f, extract_features(clf, tiles)),
                                    rel=0.05)
    with torch.no_grad():
        accuracy = (clf(tiles).argmax(1) == labels).float().mean().item()
    assert s["class_accuracy"] == pytest.approx(accuracy, abs=2 / 60)
    # per class (6 samples each): the same judgement, class by class
    per = rep["samples_classified_as_asked_per_class"]
    assert list(per) == list(load_prior(runs.prior).classes) and len(per) == 10
    assert sum(per.values()) / 10 == pytest.approx(s["class_accuracy"])
    assert "samples_classified_as_asked_per_class" in (out / "eval.md").read_text()
    assert {"psnr", "ssim", "fd_recon", "dead_bit_fraction"} <= set(rep["autoencoder"])
    assert rep["seconds_per_image"] > 0
    assert (out / "samples.png").exists() and "fd_floor_real_vs_real" in (out / "eval.md").read_text()
    with Image.open(out / "trajectory.png") as traj, Image.open(out / "class_rows.png") as rows:
        assert traj.format == rows.format == "PNG"
        assert rows.height > traj.height  # 10 class rows against 4 sample rows

    out2 = tmp_path / "ev_ae"
    assert run("eval", "--autoencoder", runs.ae, "--classifier", classifier_dir, "-n", 200,
               "--out", out2, "--device", "cpu") == 0
    ae = json.loads((out2 / "eval.json").read_text())["autoencoder"]
    assert ae["n"] == 200 and ae["psnr"] > 0
    assert "colour_delta_e" not in ae  # grey images: no colour error


def test_eval_with_the_wrong_checkpoint_kind_is_clear(runs, tmp_path, capsys):
    assert run("eval", "--autoencoder", runs.ae, "--classifier", runs.ae,
               "--out", tmp_path / "x", "--device", "cpu") == 2
    assert "expected 'classifier'" in capsys.readouterr().err
