"""`bld train FOLDER --out DIR`: the diagnosis of which stage limits the samples, the probe's
settings and rule, one tiny end-to-end run on drawn shapes (the probe, the notes on
transparency and merged classes, the diagnosis in the report; --resume reuses every stage),
a folder without classes, and bad folders refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_survey import SHAPES, write_shapes

from bld.app.cli import build_parser, main
from bld.app.diagnose import diagnose
from bld.app.probe import Capacity, capacities, capacity_overrides, pick, preset_for

pytestmark = pytest.mark.usefixtures("one_thread")

# a run whose figures are all good, as the 37-minute faces demo's (docs/)
GOOD = {"classifier_test_accuracy": 1.0, "reconstruction_class_accuracy": 0.997,
        "reconstruction_recall": 0.738, "sample_class_accuracy": 0.999,
        "sample_recall": 0.37, "eval_n": 1000}


# ------------------------------------------------------------------------------ diagnose
def test_diagnose_names_the_autoencoder():
    f = {**GOOD, "reconstruction_class_accuracy": 0.16, "reconstruction_recall": 0.015,
         "sample_class_accuracy": 0.16, "sample_recall": 0.01}
    lines = diagnose(f, more_bits=64, minutes=20)
    assert len(lines) == 1
    assert lines[0].startswith("the autoencoder is the limit: its reconstructions keep 1.5% of "
                               "the variety (recall 0.015) and 16% of the classifier's accuracy")
    assert lines[0].endswith("try --bits 64 or --minutes 40")
    # recall alone is enough, and without a budget the advice is a longer one
    lines = diagnose({**GOOD, "reconstruction_recall": 0.43})
    assert "the autoencoder is the limit" in lines[0] and "a longer --minutes" in lines[0]


def test_diagnose_names_the_prior():
    f = {**GOOD, "sample_class_accuracy": 0.76, "sample_recall": 0.11}
    lines = diagnose(f, more_bits=64, minutes=20)
    assert lines == ["the prior is the limit: its samples reach 76% of the reconstructions' "
                     "class accuracy (0.760 against 0.997) and 15% of their recall (0.110 "
                     "against 0.738); try --minutes 40, which trains it for more steps"]
    # low recall alone
    assert diagnose({**GOOD, "sample_recall": 0.05})[0].startswith("the prior is the limit")


def test_diagnose_both_neither_and_cautions():
    both = diagnose({**GOOD, "reconstruction_recall": 0.3, "sample_recall": 0.03},
                    more_bits=128, minutes=20)
    assert both[0].startswith("the autoencoder is the limit") and "--bits 128" in both[0]
    assert "(the prior cannot do better than its decoder)" in both[0]
    assert both[1].startswith("the prior is also a limit")
    neither = diagnose(GOOD, minutes=20)
    assert neither == ["no stage stands out: the reconstructions keep 100% of the classifier's "
                       "accuracy at recall 0.738, and the samples reach 100% of the "
                       "reconstructions' accuracy and 50% of their recall; --minutes 40 "
                       "trains both further"]
    # a weak classifier and few samples are said first
    lines = diagnose({**GOOD, "classifier_test_accuracy": 0.7, "eval_n": 8,
                      "reconstruction_class_accuracy": 0.69, "sample_class_accuracy": 0.7})
    assert "names the class of only 70%" in lines[0] and "from 8 samples" in lines[1]
    assert lines[2].startswith("no stage stands out")
    # reconstructions that keep nothing: the samples are not read against them
    lines = diagnose({**GOOD, "reconstruction_class_accuracy": 0.0, "reconstruction_recall": 0.0,
                      "sample_class_accuracy": 0.2, "sample_recall": 0.0})
    assert len(lines) == 1 and "the autoencoder is the limit" in lines[0]
    # no class figures (no classes, or no evaluation)
    assert diagnose({"reconstruction_psnr_db": 20.0})[0].startswith("no diagnosis")


# --------------------------------------------------------------------------------- probe
@pytest.mark.parametrize("size", [28, 32, 64, 128, 256])
def test_probe_settings_build_the_grid_they_name(size):
    from bld.core.config import config_from_dict, load_config_dict
    from bld.training.prior import resolve_prior_config
    caps = capacities(size)
    assert len(caps) == 3 and len({c.name for c in caps}) == 3
    for channels in (1, 3):
        for cap in caps:
            over = capacity_overrides(size, channels, cap)
            ae = config_from_dict("autoencoder", load_config_dict(
                "autoencoder", preset_for(size), over["autoencoder"]))
            assert (ae.model.grid, ae.model.bits, ae.model.in_channels) == \
                (cap.grid, cap.bits, channels)
            assert ae.data.image_size == ae.model.image_size == size
            prior = resolve_prior_config(config_from_dict("prior", load_config_dict(
                "prior", preset_for(size), over["prior"])), ae.model, 4)
            assert prior.model.grid == cap.grid and prior.model.patch <= cap.grid
    # at 64 px: the faces64 preset's 16x16 x 32 first, then 16x16 x 64 and 8x8 x 64
    assert [c.name for c in capacities(64)] == ["16x16x32", "16x16x64", "8x8x64"]


def _row(name, psnr, accuracy=None):
    cap = Capacity(*map(int, name.split("x")[1:]))
    return {"setting": name, "bits_per_image": cap.bits_per_image, "psnr_db": psnr,
            "class_accuracy": accuracy}


def test_probe_rule():
    # class accuracy first (within 0.02), then PSNR (within 0.5 dB), then the fewest bits
    rows = [_row("16x16x32", 24.0, 0.90), _row("16x16x64", 25.0, 0.95), _row("8x8x64", 24.8, 0.94)]
    assert pick(rows) == 2  # as accurate and as sharp as 16x16x64, with a quarter of the bits
    rows[2]["psnr_db"] = 24.4
    assert pick(rows) == 1
    rows[0]["class_accuracy"] = 0.99
    assert pick(rows) == 0
    # no classifier: PSNR, then bits
    rows = [_row("16x16x32", 24.0), _row("16x16x64", 24.3), _row("8x8x64", 22.0)]
    assert pick(rows) == 0


def test_size_choices_match_the_survey():
    from bld.data.survey import SIZES
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    assert tuple(next(a for a in sub._actions if a.dest == "size").choices) == SIZES


# ---------------------------------------------------------------------------- end to end
QUICK = ["--ae-steps", "3", "--prior-steps", "3", "--classifier-steps", "20",
         "--eval-samples", "60", "--samples-per-class", "2", "--device", "cpu",
         "--minutes", "0"]


def test_train_a_folder_end_to_end(tmp_path, capsys):
    # three classes of 20 shapes (the circles RGBA on a transparent ground), three of 2-3
    # that merge into 'other', mixed sizes; a quarter of each class held out for the figures
    shapes = {k: (20 if n > 5 else n, *rest) for k, (n, *rest) in SHAPES.items()}
    data = write_shapes(tmp_path / "shapes", shapes)
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--test-share", "0.25",
            "--background", "black", "--probe-seconds", "2", *QUICK]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["command"] == "train" and rep["classes"] == ["bar", "circle", "other", "square"]
    assert rep["train"]["image_size"] == 32 and rep["train"]["channels"] == 3
    # the prepared copy: composited on black, small classes merged, stratified split
    notes = rep["prepared"]["notes"]
    assert "20 images had transparency: composited on black" in notes
    assert any("merged into one class 'other' of 8 images: dot (3 images), moon (2 images), "
               "star (3 images)" in n for n in notes)
    assert rep["prepared"]["per_class"]["other"] == {"train": 6, "test": 2}
    with Image.open(out / "data" / "circle" / "000.png") as img:
        assert img.size == (32, 32) and img.getpixel((0, 0)) == (0, 0, 0)
    # the probe: three settings at equal seconds, measured, one picked by the rule
    probe = rep["probe"]
    assert [r["setting"] for r in probe["rows"]] == ["8x8x32", "8x8x64", "16x16x16"]
    assert probe["with_classifier"] and probe["seconds_each"] == 2
    for r in probe["rows"]:
        # at most --ae-steps; fewer where the 2-s time box stops a setting on a loaded CPU
        assert 1 <= r["steps"] <= 3 and r["psnr_db"] > 0 and r["delta_e"] > 0
        assert 0 <= r["class_accuracy"] <= 1
    assert probe["picked"] == probe["rows"][pick(probe["rows"])]["setting"]
    assert rep["autoencoder"]["latent_shape"] == [probe["bits"], probe["grid"], probe["grid"]]
    # the colour error of the reconstructions, and the diagnosis from the figures
    f = rep["figures"]
    assert f["reconstruction_delta_e"] > 0 and f["reconstruction_mean_colour_delta_e"] > 0
    # --bits B trains the presets' 8x8 grid here: the B suggested doubles the bits per image
    more = 2 * probe["bits"] * probe["grid"] ** 2 // 8 ** 2
    assert rep["diagnosis"] == diagnose(f, more_bits=more)
    assert any("is the limit" in line or "stands out" in line for line in rep["diagnosis"])
    md = (out / "report.md").read_text()
    assert md.startswith("# bld train report")
    for text in ("## Diagnosis", "## Your folder", "## Autoencoder probe", "(picked)",
                 "composited on black", "merged into one class 'other'", rep["diagnosis"][-1]):
        assert text in md, text
    # the run folder loads as one pipeline and samples the merged class by name
    from bld import BinaryLatentDiffusionPipeline
    pipe = BinaryLatentDiffusionPipeline.from_run(out)
    assert len(pipe(class_labels="other", n=2, steps=4).images) == 2
    # `bld eval` of its autoencoder on the prepared test split gives the colour error too,
    # that of the decoder's own reconstructions of the images it picked
    assert main(["eval", "--autoencoder", str(out / "autoencoder"), "--classifier",
                 str(out / "classifier"), "-n", "4", "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())["autoencoder"]
    from bld.core.loading import load_autoencoder
    from bld.core.metrics import colour_error
    from bld.data import build_dataset, dataset_tensors
    from bld.evaluation.evaluate import real_reference
    xt = dataset_tensors(build_dataset(str((out / "data").resolve()), "test", 32, 3))[0]
    floor = real_reference(xt, ev["n"], seed=0)[1]
    with torch.no_grad():
        rec = load_autoencoder(out / "autoencoder")(floor, deterministic=True).recon
    expect = colour_error(rec.clamp(-1, 1), floor)
    assert ev["colour_delta_e"] == pytest.approx(expect.delta_e, rel=1e-4)
    assert ev["mean_colour_delta_e"] == pytest.approx(expect.mean_colour_delta_e, rel=1e-4)

    # again into the same folder: refused; with --resume every stage is reused
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    kept = {p: (out / p).read_text() for p in ("probe.json", "autoencoder/done.json",
                                               "prior/done.json", "data/prepared.json",
                                               "classifier/config.json", "encode.json")}
    assert main(args + ["--resume", "--eval-samples", "0"]) == 0
    assert {p: (out / p).read_text() for p in kept} == kept
    again = json.loads((out / "report.json").read_text())
    assert again["settings"]["resume"] and again["resumed_stages_s"] > 0
    assert again["probe"] == probe and again["prepared"]["reused"]
    # other settings into the same folder: refused, saying what differs
    assert main(args[:-len(QUICK)] + QUICK + ["--resume", "--background", "white"]) == 2
    assert "differs in background" in capsys.readouterr().err


def test_train_a_folder_without_classes(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    for i in range(12):
        img = Image.new("RGB", (36, 36), (200, 20 * i, 40))
        img.paste((20, 20, 200), (8 + i, 8, 20 + i, 28))
        img.save(data / f"{i:02d}.png")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--bits", "8", *QUICK]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["classes"] == [] and rep["probe"] is None  # --bits: no probe
    assert rep["autoencoder"]["latent_shape"] == [8, 8, 8]
    assert rep["diagnosis"][0].startswith("no diagnosis")
    assert rep["figures"]["reconstruction_delta_e"] > 0
    assert (out / "samples.png").is_file() and not (out / "class_rows.png").exists()
    assert "unconditional" in (out / "report.md").read_text()


def test_bad_folders_are_refused_in_one_line(tmp_path, capsys):
    def fails(folder, *extra):
        assert main(["train", str(folder), "--out", str(tmp_path / "out"), *extra]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "bld train" in ln]
        assert len(lines) == 1 and lines[0].startswith("bld train: error:")  # (tqdm's bars aside)
        return lines[0]
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    assert "no images found" in fails(empty)
    tiny = write_shapes(tmp_path / "tiny", {k: v for k, v in SHAPES.items() if v[0] < 5})
    err = fails(tiny)
    assert "only 1 class of the 3 subfolders" in err and "lower --min-class-images" in err
    assert "without classes" in err
    assert "white, black or #rrggbb" in fails(tiny, "--background", "pink")
    assert not (tmp_path / "out" / "data").exists()
