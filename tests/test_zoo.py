"""The model zoo: shipped models load by name everywhere (CLI, pipeline), in fp16 on disk and
fp32 in memory; the shipped FD classifiers are the default instrument of `bld eval` and are
checked against their manifests; each card's commands give the config its weights carry."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch

from bld.app.cli import build_parser, main
from bld.core.config import to_dict
from bld.inference import zoo
from bld.inference.pipeline import BinaryLatentDiffusionPipeline

REAL_MODELS = zoo.model_names()  # read before any test points the zoo elsewhere
REAL_CLASSIFIERS = sorted(p.name for p in zoo.CLASSIFIERS_DIR.iterdir()) \
    if zoo.CLASSIFIERS_DIR.is_dir() else []


@pytest.fixture
def tiny_zoo(runs, tmp_path, monkeypatch, one_thread):
    """A zoo in tmp_path holding the session's tiny run as model 'tiny' (fp16 on disk)."""
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "CLASSIFIERS_DIR", tmp_path / "zoo" / "classifiers")
    pipe = BinaryLatentDiffusionPipeline.from_run(runs.prior)
    folder = tmp_path / "zoo" / "tiny"
    pipe.save_pretrained(folder)
    zoo.to_half(folder, zoo.WEIGHT_FILES)
    return folder, pipe


def test_a_shipped_model_loads_by_name_with_its_fp16_weights_in_fp32(tiny_zoo):
    folder, pipe = tiny_zoo
    from safetensors.torch import load_file
    assert all(v.dtype == torch.float16 for v in load_file(folder / "prior.safetensors").values()
               if v.is_floating_point())
    for loaded in (BinaryLatentDiffusionPipeline.from_pretrained("tiny"),
                   BinaryLatentDiffusionPipeline.from_run("tiny")):
        for mine, theirs in ((loaded.prior.model, pipe.prior.model),
                             (loaded.autoencoder, pipe.autoencoder)):
            want = theirs.state_dict()
            for k, v in mine.state_dict().items():
                assert v.dtype == want[k].dtype, k
                if v.is_floating_point():  # the original rounded to fp16, nothing else
                    assert torch.equal(v, want[k].half().to(v.dtype)), k
        assert loaded.classes == pipe.classes
        assert len(loaded(class_labels=[0, 1], n=2, steps=4, seed=0).images) == 2


def test_models_lists_it_and_every_command_takes_its_name(tiny_zoo, tmp_path, capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["dataset"], len(m["classes"])) for m in listed["models"]] == [
        ("tiny", "fashion-mnist", 10)]
    assert listed["models"][0]["size_mb"] > 0 and listed["classifiers"] == []
    assert main(["models"]) == 0 and "bld sample --model tiny" in capsys.readouterr().out
    out = tmp_path / "s.png"
    assert main(["sample", "--model", "tiny", "-n", "2", "--steps", "4", "--out", str(out),
                 "--device", "cpu"]) == 0 and out.exists()
    assert main(["sample", "--model", "nope", "-n", "2", "--out", str(out)]) == 2
    assert "neither a folder nor a shipped model (shipped: tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of --model and --prior
        build_parser().parse_args(["sample", "--model", "tiny", "--prior", "x", "--out", "o"])
    parsed = build_parser().parse_args(["serve", "--model", "tiny"])
    assert (parsed.model, parsed.run_dir) == ("tiny", None)


def test_eval_measures_with_the_shipped_classifier_and_refuses_a_damaged_one(
        tiny_zoo, tmp_path, capsys):
    from bld.evaluation.evaluate import train_and_save_classifier
    clf = zoo.CLASSIFIERS_DIR / "fashion-mnist"
    train_and_save_classifier("fashion-mnist", clf, steps=3, seed=0, progress=False)
    zoo.write_manifest(clf, {"dataset": "fashion-mnist"}, ("config.json", "model.safetensors"))
    out = tmp_path / "eval"
    args = ["eval", "--model", "tiny", "-n", "20", "--steps", "4", "--device", "cpu",
            "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["classifier"]["path"] == str(clf) and report["classifier"]["shipped"]
    assert report["samples"]["n"] == 20
    weights = clf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # damaged after shipping
    assert main(args) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    # an explicit --classifier is taken as it is; without the shipped one eval says what to do
    (clf / "manifest.json").unlink()
    other = tmp_path / "mine"
    train_and_save_classifier("fashion-mnist", other, steps=3, seed=1, progress=False)
    assert main(args + ["--classifier", str(other)]) == 0
    assert json.loads((out / "eval.json").read_text())["classifier"]["shipped"] is False


@pytest.mark.parametrize("dataset", REAL_CLASSIFIERS)
def test_the_shipped_classifiers_match_their_manifests_and_commands(dataset):
    folder = zoo.CLASSIFIERS_DIR / dataset
    manifest = zoo.check_manifest(folder)
    meta = json.loads((folder / "config.json").read_text())["metadata"]
    assert manifest["dataset"] == meta["dataset"] == dataset
    assert manifest["test_accuracy"] == meta["test_accuracy"]
    args = build_parser().parse_args(shlex.split(manifest["command"])[1:])
    assert (args.command, args.data, args.steps, args.seed) == (
        "train-classifier", dataset, meta["steps"], manifest["seed"])
    assert args.out == f"src/bld/zoo/classifiers/{dataset}"


def _card_commands(folder) -> list[list[str]]:
    block = re.search(r"## How it was made\n\n```bash\n(.*?)```", (folder / zoo.CARD_FILE)
                      .read_text(), re.S)
    assert block, "the card has no commands"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("name", REAL_MODELS)
def test_a_cards_commands_give_the_config_its_weights_carry(name):
    """Replayed through the demo's own config building (nothing trained), the card's
    `bld demo` commands give exactly the configs the shipped weights were trained with: the
    first trains the autoencoder; a second, where there is one, trains the first run's prior
    on to more steps (--resume in the same --out)."""
    from bld.app.commands import demo_settings
    from bld.app.demo import stage_config
    from bld.training.prior import resolve_prior_config
    folder = zoo.ZOO_DIR / name
    config = json.loads((folder / "config.json").read_text())
    demos = [demo_settings(build_parser().parse_args(c[1:]))
             for c in _card_commands(folder) if c[:2] == ["bld", "demo"]]
    assert len(demos) in (1, 2)
    first, last = demos[0], demos[-1]
    if len(demos) == 2:
        assert last.resume and last.out == first.out and last.dataset == first.dataset
        assert last.prior_steps > first.prior_steps
    ae = stage_config(first, "autoencoder")
    assert to_dict(ae.model) == config["autoencoder_config"]
    prior = resolve_prior_config(stage_config(last, "prior"), ae.model, len(config["classes"]))
    # the shipped config as today's loader reads it (keys added since take their defaults,
    # the values that meant what the run did: optim.optimizer adamw)
    from bld.core.config import config_from_dict
    want = to_dict(config_from_dict("prior", config["prior_config"]))
    got = to_dict(prior)
    # the sampler's defaults chosen after training (scripts/make_zoo.py sampler), named on
    # the card; nothing else may differ
    sampler = json.loads((folder / "provenance.json").read_text()).get("sampler") or {}
    assert set(sampler.get("settings", {})) <= set(zoo.SAMPLER_KEYS)
    for key, value in sampler.get("settings", {}).items():
        got[key] = value
        assert f"`{key}` {value}" in (folder / zoo.CARD_FILE).read_text()
    for path_key in ("autoencoder", "latents"):  # where that run kept its files
        got.pop(path_key), want.pop(path_key)
    assert got == want
    assert zoo.check_manifest(folder)["name"] == name  # the weights are the ones shipped


@pytest.mark.skipif("fashion-mnist" not in REAL_CLASSIFIERS, reason="no classifier ships")
def test_the_demo_measures_with_the_shipped_classifier_unless_told_otherwise(tmp_path):
    from bld.app.demo import DemoSettings
    from bld.app.demo_report import fd_classifier
    s = DemoSettings(out=tmp_path)
    clf, meta = fd_classifier(s, tmp_path, "cpu", "fashion-mnist", 1200)
    shipped = zoo.CLASSIFIERS_DIR / "fashion-mnist"
    assert (meta["path"], meta["shipped"]) == (str(shipped), True)
    assert s.timings["classifier_s"] == 0 and not (tmp_path / "classifier").exists()
    assert meta["test_accuracy"] == zoo.check_manifest(shipped)["test_accuracy"]
    # another folder of images is not what the shipped one was trained on
    from bld.evaluation.evaluate import shipped_classifier
    assert shipped_classifier("fashion-mnist", str(tmp_path)) is None
    # --classifier DIR is taken as given
    s = DemoSettings(out=tmp_path, classifier=str(shipped))
    assert fd_classifier(s, tmp_path, "cpu", "fashion-mnist", 1200)[1]["shipped"] is False


def test_a_demo_report_puts_the_run_beside_the_shipped_model(tmp_path, monkeypatch):
    from bld.app.demo_report import _beside_shipped, shipped_model_for
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    assert shipped_model_for("fashion-mnist") is None  # nothing ships: no table
    folder = tmp_path / "zoo" / "fm"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"data": {"source": "fashion-mnist"}}))
    assert shipped_model_for("fashion-mnist") is None  # not measured: nothing to compare
    report = {"samples": {"n": 1000, "fd": 30.0, "recall": 0.45, "precision": 0.7,
                          "class_accuracy": 0.93},
              "autoencoder": {"fd_recon": 25.0, "psnr": 26.1, "recon_recall": 0.6},
              "fd_ratio_to_recon": 1.2, "classifier": {"path": "x"}}
    (folder / zoo.EVAL_FILE).write_text(json.dumps(report))
    shipped = shipped_model_for("fashion-mnist")
    assert shipped["name"] == "fm" and shipped_model_for("dicebear") is None
    run = {"eval_n": 1000, "sample_class_accuracy": 0.81, "sample_recall": 0.15,
           "sample_fd": 117.5, "reconstruction_fd": 49.5, "fd_ratio_samples_to_recon": 2.37,
           "reconstruction_psnr_db": 23.08}
    text = "\n".join(_beside_shipped(run, shipped))
    assert "| class accuracy | 0.81 | 0.93 |" in text and "| recall | 0.15 | 0.45 |" in text
    assert "| FD / reconstruction FD | 2.37 | 1.2 |" in text and "-n 1000" in text


@pytest.mark.parametrize("name", REAL_MODELS)
def test_a_shipped_model_samples_in_its_own_default_steps(name):
    """`bld sample / eval --model NAME` without --steps sample in the steps its config (and
    card) give: faces64's 32, chosen by measurement after training."""
    config = json.loads((zoo.ZOO_DIR / name / "config.json").read_text())
    pipe = BinaryLatentDiffusionPipeline.from_pretrained(name)
    assert pipe.default_steps == config["prior_config"]["sample_steps"]
    seen = []
    pipe(class_labels=[0], n=1, callback=lambda i, s: seen.append(s))
    assert seen[-1] == config["prior_config"]["sample_steps"]
