"""benchmarks/gaussian_baseline.py on a colour dataset with a bits sweep (kept per pipeline and
training seed, so two processes can share the seeds and a crash loses nothing) and
benchmarks/grouped_head.py (per-bit against grouped prior heads) on a trained run, both in
quick mode on small data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _bench(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, env=env or ENV, timeout=600)


def _colour_faces(tmp_path: Path) -> tuple[dict, Path]:
    """A generated DiceBear-like cache (3 classes x 48 faces, 36 of them test) and a 2-step
    FD classifier of it: (the benchmarks' environment, the classifier folder)."""
    from colour_faces import write_colour_faces

    from bld.data import default_dicebear_dir
    from bld.evaluation.evaluate import train_and_save_classifier
    cache = tmp_path / "cache"
    write_colour_faces(cache / "bld" / default_dicebear_dir(64).name, per_class=48)
    clf = tmp_path / "classifier"
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        train_and_save_classifier("dicebear", clf, steps=2, seed=0, progress=False)
    finally:
        os.environ.pop("XDG_CACHE_HOME")
    return {**ENV, "XDG_CACHE_HOME": str(cache)}, clf


def test_gaussian_baseline_bits_sweep_on_colour_keeps_each_pipeline(tmp_path):
    """--preset faces64-grid8 trains on the preset's dataset (dicebear: a generated folder here);
    bld-B pipelines change only the bits per position; --only-train-seed keeps its results in
    --work and writes no report, and the next call reuses them and reports."""
    env, clf = _colour_faces(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--quick", "--preset", "faces64-grid8", "--pipelines", "bld-32", "bld-16",
              "--train-seeds", "1", "--steps", "16", "--n", "16", "--samplers", "0:0:1:1",
              "--classifier", str(clf),
              "--out", str(out), "--work", str(work)]
    first = _bench("gaussian_baseline.py", *common, "--only-train-seed", "0", env=env)
    assert first.returncode == 0, first.stderr[-2000:] + first.stdout[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["bld-16-seed0.json", "bld-32-seed0.json"]
    assert not out.exists() or not list(out.glob("gaussian_baseline*"))
    kept = json.loads((work / "bld-16-seed0.json").read_text())
    assert kept["train"]["bits"] == 16 and kept["train"]["latent"] == "16x8x8"
    assert [(r["sampler"], r["steps"], r["seed"]) for r in kept["rows"]] == [
        ("preset", 16, 0), ("preset", 16, 1), ("w 0 at [0, 1], T 1", 16, 0)]

    second = _bench("gaussian_baseline.py", *common, env=env)
    assert second.returncode == 0, second.stderr[-2000:] + second.stdout[-2000:]
    assert second.stdout.count("kept in") == 2  # nothing trained again
    results = json.loads((out / "gaussian_baseline_dicebear.json").read_text())["results"]
    assert results["source"] == "dicebear"
    kept32 = json.loads((work / "bld-32-seed0.json").read_text())
    assert results["rows"] == kept32["rows"] + kept["rows"]  # in --pipelines order
    for png in ("_fd_vs_psnr.png", "_fd_vs_train_s.png"):
        assert (out / f"gaussian_baseline_dicebear{png}").stat().st_size > 0
    report = (out / "gaussian_baseline_dicebear.md").read_text()
    assert "BLD (Bernoulli), 16 bits" in report and "dicebear training images" in report
    assert "16 / 32 Bernoulli bits per position" in report

    bad = _bench("gaussian_baseline.py", "--quick", "--pipelines", "bld-x", env=env)
    assert bad.returncode == 2 and "unknown pipeline 'bld-x'" in bad.stderr
    bad = _bench("gaussian_baseline.py", "--quick", "--samplers", "1.5:0.6:0.2", env=env)
    assert bad.returncode == 2 and "0 <= lo <= hi <= 1" in bad.stderr


def test_grouped_head_measures_each_arm_once(tmp_path, runs):
    """Each arm retrains the run's prior with its overrides (quick: 20 steps) and is sampled
    at the run's settings; finished arms are kept and not trained again."""
    from bld.evaluation.evaluate import train_and_save_classifier
    run = tmp_path / "run"
    run.mkdir()
    (run / "autoencoder").symlink_to(runs.ae)
    (run / "prior").symlink_to(runs.prior)
    (run / "latents_train.safetensors").symlink_to(runs.latents)
    train_and_save_classifier("fashion-mnist", run / "classifier", steps=2, seed=0,
                              progress=False)
    args = ["--quick", "--runs", str(run), "--arms", "per-bit", "group4", "--n", "20",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    res = _bench("grouped_head.py", *args)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    results = json.loads((tmp_path / "out" / "grouped_head.json").read_text())["results"]
    assert [r["arm"] for r in results["rows"]] == ["per-bit", "group4"]
    assert all(r["n"] == 20 and r["fd"] > 0 and 0 <= r["recall"] <= 1 for r in results["rows"])
    trained = sorted(p.name for p in (tmp_path / "work").iterdir() if p.is_dir())
    assert trained == ["run-group4-s0-quick", "run-per-bit-s0-quick"]
    from bld.core.loading import load_prior
    grouped = load_prior(tmp_path / "work" / "run-group4-s0-quick")
    assert grouped.config.diffusion.bit_group == 4
    assert grouped.config.diffusion.loss_type == "mean"

    again = _bench("grouped_head.py", *args)
    assert again.returncode == 0 and again.stdout.count(": kept") == 2
    # --report-only trains nothing: an arm not measured yet is left out of the report
    only = _bench("grouped_head.py", *args, "--arms", "per-bit", "group4", "group8",
                  "--report-only")
    assert only.returncode == 0 and "not measured yet" in only.stdout
    assert not (tmp_path / "work" / "run-group8-s0-quick").exists()
    results = json.loads((tmp_path / "out" / "grouped_head.json").read_text())["results"]
    assert [r["arm"] for r in results["rows"]] == ["per-bit", "group4"]

    # an equal-seconds arm: its steps are the run's x (the run's step seconds / its own)
    wide = _bench("grouped_head.py", *args[:4], "wide256", *args[6:])
    assert wide.returncode == 0, wide.stderr[-2000:] + wide.stdout[-2000:]
    row = json.loads((tmp_path / "out" / "grouped_head.json").read_text())["results"]["rows"][0]
    assert row["arm"] == "wide256" and row["step_s"] > 0 and row["run_step_s"] > 0
    steps = max(1, round(20 * row["run_step_s"] / row["step_s"]))
    assert row["steps_x_batch"].startswith(f"{steps} x ")
    trained = load_prior(tmp_path / "work" / "run-wide256-s0-quick").config
    assert (trained.model.width, trained.model.heads, trained.optim.steps) == (256, 4, steps)
    # the run's own config for 1.25 x its steps: nothing to time
    longer = _bench("grouped_head.py", *args[:4], "longer", *args[6:])
    assert longer.returncode == 0, longer.stderr[-2000:] + longer.stdout[-2000:]
    row = json.loads((tmp_path / "out" / "grouped_head.json").read_text())["results"]["rows"][0]
    assert row["arm"] == "longer" and "step_s" not in row
    assert row["steps_x_batch"].startswith("25 x ")
    assert load_prior(tmp_path / "work" / "run-longer-s0-quick").config.optim.steps == 25
    # a schedule arm: the run's steps with the shifted schedule, which its prior keeps
    shifted = _bench("grouped_head.py", *args[:4], "shift2", *args[6:])
    assert shifted.returncode == 0, shifted.stderr[-2000:] + shifted.stdout[-2000:]
    prior = load_prior(tmp_path / "work" / "run-shift2-s0-quick")
    assert prior.config.diffusion.schedule_shift == 2.0 and prior.config.optim.steps == 20
    assert float(prior.diffusion.k64[prior.diffusion.T // 2]) < 0.5  # cosine at s = 1/2: 0.5
    # RUN@SEED: that run's arms train and sample with another seed, kept apart
    other = _bench("grouped_head.py", "--quick", "--runs", f"{run}@1", "--arms", "per-bit",
                   *args[6:])
    assert other.returncode == 0, other.stderr[-2000:] + other.stdout[-2000:]
    row = json.loads((tmp_path / "out" / "grouped_head.json").read_text())["results"]["rows"][0]
    assert row["seed"] == 1 and row["fd"] != results["rows"][0]["fd"]
    assert load_prior(tmp_path / "work" / "run-per-bit-s1-quick").config.run.seed == 1


def test_colour_autoencoders_keeps_each_arm_and_reports_with_all(tmp_path):
    """colour_autoencoders.py --preset faces64: an arm run alone is kept in --work and writes
    no report; the call with every arm reuses it, trains the rest and reports the
    reconstructions' FD, recall and class accuracy on the given classifier."""
    env, clf = _colour_faces(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--quick", "--preset", "faces64", "--classifier", str(clf), "--out", str(out),
              "--work", str(work)]
    first = _bench("colour_autoencoders.py", *common, "--arms", "grid16-w48-bits16", env=env)
    assert first.returncode == 0, first.stderr[-2000:] + first.stdout[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["grid16-w48-bits16.json"]
    assert not out.exists() or not list(out.glob("colour_autoencoders*"))
    kept = json.loads((work / "grid16-w48-bits16.json").read_text())["row"]
    assert kept["latent"] == "16x16x16" and kept["steps"] == 20
    assert 0 <= kept["recon_recall"] <= 1 and 0 <= kept["recon_class_accuracy"] <= 1
    # the class whose reconstructions the classifier names worst, with that share
    name, share = kept["worst_class"].split()
    assert 0 <= float(share) <= kept["recon_class_accuracy"] and name

    second = _bench("colour_autoencoders.py", *common, env=env)
    assert second.returncode == 0, second.stderr[-2000:] + second.stdout[-2000:]
    assert second.stdout.count("kept in") == 1  # only the first arm was reused
    results = json.loads((out / "colour_autoencoders_faces64.json").read_text())["results"]
    assert [r["arm"] for r in results["rows"]] == [
        "grid8-w48-bits64", "grid16-w64-bits16", "grid16-w48-bits16", "grid16-w48-bits32",
        "bits64", "bits32-l1", "bits32-gan16", "bits32-edge", "bits32-edge2"]
    assert results["rows"][2] == kept
    assert {r["latent"] for r in results["rows"]} == {"64x8x8", "16x16x16", "32x16x16",
                                                      "64x16x16"}
    report = (out / "colour_autoencoders_faces64.md").read_text()
    assert "recon_recall" in report and "N = 18 test images" in report
    # an arm measured with another seed is kept apart and reported beside the rest
    seed1 = _bench("colour_autoencoders.py", *common, "--arms", "grid16-w48-bits16",
                   "--seed", "1", env=env)
    assert seed1.returncode == 0, seed1.stderr[-2000:] + seed1.stdout[-2000:]
    assert (work / "grid16-w48-bits16-s1.json").exists()
    again = _bench("colour_autoencoders.py", *common, env=env)
    assert again.returncode == 0 and again.stdout.count("kept in") == 9
    rows = json.loads((out / "colour_autoencoders_faces64.json").read_text())["results"]["rows"]
    assert [(r["arm"], r["seed"]) for r in rows[-2:]] == [("bits32-edge2", 0),
                                                           ("grid16-w48-bits16", 1)]
    assert rows[-1]["psnr"] != kept["psnr"]

    bad = _bench("colour_autoencoders.py", "--quick", "--preset", "faces64", "--arms", "nope",
                 env=env)
    assert bad.returncode != 0 and "unknown arm(s) ['nope']" in bad.stderr


def test_a_run_made_with_a_data_dir_is_measured_on_that_folder(tmp_path, monkeypatch):
    """guidance.py and grouped_head.py take a run's test split from the folder its demo was
    given with --data-dir (its report's settings), not from the source's default place."""
    from colour_faces import write_colour_faces
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import measures
    folder = tmp_path / "two-styles"
    write_colour_faces(folder, classes=2, per_class=8)
    run = tmp_path / "run"
    run.mkdir()
    assert measures.run_data_dir(run) is None  # no report: the default place
    (run / "report.json").write_text(json.dumps({"source": "dicebear",
                                                 "settings": {"data_dir": ""}}))
    assert measures.run_data_dir(run) is None
    (run / "report.json").write_text(json.dumps({"source": "dicebear",
                                                 "settings": {"data_dir": str(folder)}}))
    assert measures.run_data_dir(run) == str(folder)
    images, labels = measures.dataset_split("dicebear", "test", data_dir=measures.run_data_dir(run))
    assert images.shape == (4, 3, 64, 64) and labels.tolist() == [0, 0, 1, 1]


def test_sampler_settings_take_an_evidence_weight_only_where_the_sampler_has_one(monkeypatch):
    """guidance.py's W:LO:HI[:TEMPERATURE[:LAMBDA]]: lambda (method.md §2's evidence weight) is the
    library's default when left out; the Gaussian baseline's settings have no lambda."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import measures

    from bld.models.sampling import DEFAULT_EVIDENCE_WEIGHT
    assert measures.sampler_setting("2:0:0.6") == (2.0, 0.0, 0.6, 1.0)
    assert measures.sampler_setting("2:0:0.6:1.3", evidence=True) == (
        2.0, 0.0, 0.6, 1.3, DEFAULT_EVIDENCE_WEIGHT)
    assert measures.sampler_setting("2:0:0.6:1.3:-0.5", evidence=True) == (
        2.0, 0.0, 0.6, 1.3, -0.5)
    with pytest.raises(ValueError, match=r"W:LO:HI\[:TEMPERATURE\]"):
        measures.sampler_setting("2:0:0.6:1.3:0.5")
    with pytest.raises(ValueError, match="LAMBDA"):
        measures.sampler_setting("2:0:0.6:1.3:0.5:1", evidence=True)
    with pytest.raises(ValueError, match="temperature > 0"):
        measures.sampler_setting("2:0:0.6:0:0.5", evidence=True)


def test_heldout_collects_each_runs_report_into_one_table(tmp_path):
    """benchmarks/heldout.py --collect: a row per finished `bld train` run, class accuracy as
    a share of the FD classifier's, issue 33's bar judged per row, the diagnosis and the
    sample grid beside the table; a missing run is an error that says how to make it."""
    from PIL import Image
    runs = tmp_path / "runs"

    def report(name, recon_acc, sample_acc, recall):
        run = runs / f"heldout-{name}-20"
        run.mkdir(parents=True)
        (run / "report.json").write_text(json.dumps({
            "classes": ["a", "b", "c"], "diagnosis": [f"{name}: the prior is the limit"],
            "probe": {"picked": "16x16x32"},
            "times": {"total_s": 1200.0, "classifier_s": 400.0, "probe_s": 100.0,
                      "autoencoder_s": 300.0, "prior_s": 250.0},
            "figures": {"classifier_test_accuracy": 0.9, "reconstruction_class_accuracy":
                        recon_acc, "sample_class_accuracy": sample_acc, "sample_recall": recall,
                        "reconstruction_psnr_db": 24.0, "reconstruction_recall": 0.5,
                        "fd_ratio_samples_to_recon": 2.0, "eval_n": 80}}))
        Image.new("RGB", (8, 8), (200, 10, 10)).save(run / "samples.png")

    report("one", 0.81, 0.72, 0.2)   # 0.9 and 0.8 of the classifier's, recall 0.2: met
    report("two", 0.81, 0.54, 0.2)   # samples 0.6 of it: missed
    out = tmp_path / "out"
    args = ["--minutes", "20", "--runs", str(runs), "--collect", "--out", str(out)]
    res = _bench("heldout.py", "--folders", "one", "two", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads((out / "heldout_20min.json").read_text())["results"]["rows"]
    assert [r["folder"] for r in rows] == ["one", "two"]
    assert rows[0]["recon_share"] == pytest.approx(0.9) and rows[0]["sample_share"] == pytest.approx(0.8)
    assert rows[0]["minutes"] == pytest.approx(20.0)
    assert [r["bar_met"] for r in rows] == [True, False]
    md = (out / "heldout_20min.md").read_text()
    assert "one: the prior is the limit" in md and "heldout_20min_two_samples.png" in md
    assert (out / "heldout_20min_one_samples.png").exists()
    missing = _bench("heldout.py", "--folders", "three", *args)
    assert missing.returncode != 0 and "run without --collect" in missing.stderr
