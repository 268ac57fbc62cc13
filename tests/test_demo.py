"""`bld demo` end to end on a few steps: every promised file, and --resume reuses stages."""

from __future__ import annotations

import json

import pytest

from bld.app.cli import main
from bld.core.config import load_config_dict
from bld.models.sampling import DEFAULT_EVIDENCE_WEIGHT

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_writes_grids_plots_and_report(tmp_path, fashion_mnist, capsys):
    # a tiny run, evaluated end to end (the code that makes the README's headline figures)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ae-steps", "3", "--prior-steps", "3", "--limit", "256",
            "--eval-samples", "60", "--classifier-steps", "20", "--samples-per-class", "2",
            "--device", "cpu"]
    assert main(args) == 0
    for name in ("samples.png", "reconstructions.png", "loss_autoencoder.png", "loss_prior.png",
                 "trajectory.png", "class_rows.png", "report.md", "report.json"):
        assert (out / name).exists(), name
    for name in ("trajectory.png", "class_rows.png"):
        assert f"]({name})" in (out / "report.md").read_text()
    # --samples-per-class 2: the sample grid is one row of two per class (ten classes)
    from PIL import Image
    width, height = Image.open(out / "samples.png").size
    assert 4 * width < height < 6 * width
    # the demo folder loads as one pipeline (autoencoder/ and prior/ inside)
    from bld import BinaryLatentDiffusionPipeline
    pipe = BinaryLatentDiffusionPipeline.from_run(out)
    assert len(pipe(class_labels="Bag", n=2, steps=4).images) == 2
    # the prior's snapshot grids are listed in a page beside them
    index = (out / "prior" / "samples" / "index.html").read_text()
    grids = sorted(p.name for p in (out / "prior" / "samples").glob("samples_*.png"))
    assert grids and all(f'src="{g}"' in index for g in grids)
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["sample_steps"] == 16
    assert rep["autoencoder"]["steps"] == 3 and rep["prior"]["steps"] == 3
    # the whole training configs, as trained (the presets' with the plan's steps)
    assert rep["autoencoder"]["config"]["optim"]["steps"] == 3
    assert rep["prior"]["config"]["optim"]["steps"] == 3
    assert rep["autoencoder"]["config"]["model"]["bits"] == rep["autoencoder"]["latent_shape"][0]
    assert rep["prior"]["schedule_shift"] == rep["prior"]["config"]["diffusion"]["schedule_shift"]
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
    preset = load_config_dict("prior", "fashion-mnist", [])
    assert rep["settings"]["guidance"] == preset["sample_guidance"]
    assert rep["settings"]["guidance_interval"] == list(preset["sample_guidance_interval"])
    assert set(rep["times"]) >= {"autoencoder_s", "prior_s", "classifier_s", "evaluation_s"}
    assert len(rep["classes"]) == 10 and "Sandal" in (out / "report.md").read_text()
    # per class: the share of its samples and reconstructions the classifier assigns to it
    assert list(rep["per_class"]) == rep["classes"]
    assert all(0 <= v[k] <= 1 for v in rep["per_class"].values()
               for k in ("samples", "reconstructions"))
    assert "## Per class" in (out / "report.md").read_text()
    # the precision and the time plan (--minutes 15, calibrated here) are in the report; the
    # steps given on the command line are kept, not scaled
    assert rep["precision"] in ("fp32", "bf16") and rep["precision_reason"].startswith(
        rep["precision"])
    plan = rep["plan"]
    assert (plan["minutes"], plan["ae_steps"], plan["prior_steps"]) == (15, 3, 3)
    assert plan["preset_ae_steps"] == load_config_dict("autoencoder", "fashion-mnist", [])[
        "optim"]["steps"]
    assert all(v > 0 for v in plan["rates"].values())
    assert plan["predicted_s"]["total"] == pytest.approx(sum(
        v for k, v in plan["predicted_s"].items() if k != "total"))
    # the FD classifier trains first, and the plan counts the seconds it took, not a guess
    assert plan["work"]["classifier_steps"] == 0
    assert plan["predicted_s"]["spent"] >= rep["times"]["classifier_s"] > 0
    assert (out / "classifier" / "config.json").stat().st_mtime < \
        (out / "autoencoder" / "done.json").stat().st_mtime
    assert json.loads((out / "plan.json").read_text()) == plan
    assert "Time plan: plan for 15 min" in (out / "report.md").read_text()

    # a second run into the same folder refuses; --resume reuses both trained stages
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "prior" / "done.json").read_text()
    assert main(args + ["--resume", "--eval-samples", "0"]) == 0  # figures checked above
    assert (out / "prior" / "done.json").read_text() == before


def _emoji_like_folder(root, per_class=20):
    """64 px RGBA drawings on transparent ground, one shape per category, colours varied."""
    from PIL import Image, ImageDraw
    shapes = {"circles": "ellipse", "squares": "rectangle", "bars": "bar"}
    for c, (name, shape) in enumerate(shapes.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            d = ImageDraw.Draw(img)
            colour = (40 + 10 * i, 200 - 8 * i, 60 + 60 * c, 255)
            box = (8 + i % 5, 8 + i % 7, 56 - i % 3, 56 - i % 4)
            if shape == "ellipse":
                d.ellipse(box, fill=colour, outline=(0, 0, 0, 255), width=2)
            elif shape == "rectangle":
                d.rectangle(box, fill=colour, outline=(0, 0, 0, 255), width=2)
            else:
                d.rectangle((box[0], 28, box[2], 36), fill=colour)
            img.save(root / name / f"{i:03d}.png")


def test_demo_on_colour_emoji(tmp_path):
    # `--dataset emoji` on a prepared folder (as `bld prepare-emoji` writes it): no npm call,
    # the emoji64 presets, one sample row per category, 64 px colour everywhere
    from PIL import Image
    data = tmp_path / "emoji"
    _emoji_like_folder(data)
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "emoji", "--data-dir", str(data), "--out", str(out),
                 "--ae-steps", "2", "--prior-steps", "2", "--eval-samples", "0",
                 "--minutes", "0", "--device", "cpu"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["plan"] is None  # --minutes 0: no plan
    assert rep["dataset"] == "emoji" and rep["source"] == "emoji-twitter"
    assert rep["classes"] == ["bars", "circles", "squares"]
    assert rep["autoencoder"]["latent_shape"] == [32, 8, 8]
    grid = Image.open(out / "samples.png")
    assert grid.mode == "RGB" and grid.height > 3 * 64  # three rows of 64 px colour samples
    from bld.core.runfolder import find_latest
    ae_cfg = json.loads((find_latest(out / "autoencoder") / "config.json").read_text())["config"]
    assert ae_cfg["model"] == {**ae_cfg["model"], **load_config_dict("autoencoder", "emoji64", [])["model"]}


def test_demo_on_dicebear_faces(tmp_path):
    # `--dataset faces` on a folder shaped like `bld prepare-dicebear`'s (class folders and a
    # manifest.csv that fixes the split): the dicebear source, the faces64 presets, and the
    # training images with their mirrors
    from safetensors import safe_open
    data = tmp_path / "faces"
    _emoji_like_folder(data, per_class=12)
    rows = ["path,class,split,seed"]
    for p in sorted(data.rglob("*.png")):
        i = int(p.stem)
        rows.append(f"{p.relative_to(data).as_posix()},{p.parent.name},"
                    f"{'test' if i % 6 == 5 else 'train'},{p.parent.name}-{i}")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "faces", "--data-dir", str(data), "--out", str(out),
                 "--ae-steps", "2", "--prior-steps", "2", "--eval-samples", "0",
                 "--minutes", "0", "--device", "cpu"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["dataset"] == "faces" and rep["source"] == "dicebear"
    assert rep["classes"] == ["bars", "circles", "squares"]
    assert rep["figures"]["test_images"] == 6  # seeds 5 and 11 of each class, as the manifest says
    with safe_open(str(out / "latents_train.safetensors"), "pt") as f:
        assert f.get_tensor("labels").shape == (2 * 30,)  # 30 training faces and their mirrors
    from bld.core.runfolder import find_latest
    ae_cfg = json.loads((find_latest(out / "autoencoder") / "config.json").read_text())["config"]
    assert ae_cfg["data"]["source"] == "dicebear"
    assert ae_cfg["model"] == {**ae_cfg["model"], **load_config_dict("autoencoder", "faces64", [])["model"]}


def test_schedule_name_reads_old_and_shifted_reports():
    from bld.app.demo_report import schedule_name
    assert schedule_name({"schedule": "cosine"}) == "cosine"  # reports from before the shift
    assert schedule_name({"schedule": "cosine", "schedule_shift": 1.0}) == "cosine"
    assert schedule_name({"schedule": "linear", "schedule_shift": 2.0}) == "linear shifted x2"


def test_demo_trains_the_prior_only_on_a_shipped_autoencoder(tmp_path, fashion_mnist, capsys):
    """--autoencoder NAME: stage 1 is the shipped model's autoencoder (not trained, its
    reconstructions as good as its card says), the prior trains on its bits, and the report
    says where the autoencoder came from (the plan: test_budget.py)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--autoencoder", "fashion-mnist", "--prior-steps",
                 "3", "--limit", "256", "--eval-samples", "0", "--samples-per-class", "1",
                 "--device", "cpu", "--minutes", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    ae = rep["autoencoder"]
    assert ae["adopted"]["from"] == "fashion-mnist" and ae["trained_steps"] == 3200
    assert rep["times"]["autoencoder_s"] == 0
    assert rep["figures"]["reconstruction_psnr_db"] > 25  # the card's 25.95 dB at N = 1000
    assert rep["prior"]["trained_steps"] == 3
    assert "not trained here: fashion-mnist's (3200 steps)" in (out / "report.md").read_text()
    # --resume keeps it
    assert main(["demo", "--out", str(out), "--autoencoder", "fashion-mnist", "--prior-steps",
                 "3", "--limit", "256", "--eval-samples", "0", "--samples-per-class", "1",
                 "--device", "cpu", "--minutes", "0", "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["autoencoder"]["adopted"]
    # --resume with more prior steps trains the finished prior on from its last checkpoint
    # (its seconds add up); a changed setting besides the steps is refused
    first_s = json.loads((out / "prior" / "done.json").read_text())["seconds"]
    common = ["demo", "--out", str(out), "--autoencoder", "fashion-mnist", "--limit", "256",
              "--eval-samples", "0", "--samples-per-class", "1", "--device", "cpu",
              "--minutes", "0", "--resume"]
    assert main(common + ["--prior-steps", "9", "--seed", "1"]) == 2
    assert "can only train on to more steps with the same settings" in capsys.readouterr().err
    assert main(common + ["--prior-steps", "6"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["prior"]["trained_steps"] == 6 and rep["prior"]["config"]["optim"]["steps"] == 6
    assert rep["times"]["prior_s"] > first_s


def test_demo_refuses_an_autoencoder_of_another_dataset(tmp_path, capsys):
    assert main(["demo", "--dataset", "faces", "--out", str(tmp_path / "d"), "--autoencoder",
                 "fashion-mnist", "--eval-samples", "0", "--device", "cpu"]) == 2
    assert "trained on fashion-mnist, not on this demo's dicebear" in capsys.readouterr().err
