"""`bld doctor` (bld.app.doctor): its report has every section with the right types, the
precision reason is `resolve_precision`'s, datasets are found where they are and named with
their install command where they are not, the zoo lister lists what a folder holds, and the
demo forecast is the demo's own plan at the rates it was given.

The forecasts here run on stand-in rates (`time_units`), so nothing is timed as a criterion;
the one test of the real quick timing uses tiny models and checks that it measured, and,
with every timed call counted as one second, its arithmetic.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bld.app import doctor
from bld.app.budget import MIN_SCALE, OVERHEAD_S, SAFETY, Rates
from bld.app.cli import build_parser, main
from bld.app.demo import COMPACT_BELOW, compact_overrides
from bld.core.config import config_from_dict, load_config_dict
from bld.core.device import Precision, resolve_precision
from bld.data import fashion_mnist
from bld.training.prior import resolve_prior_config

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = Rates(*(1e-6,) * 6)  # a machine on which every unit of work is free
SLOW = Rates(ae_step_s=1.0, prior_step_s=1.0, encode_image_s=1e-3, recon_image_s=1e-3,
             sample_image_step_s=1e-2, classifier_step_s=0.1)  # presets: hours, not minutes


class StandIn:
    """A `time_units` that returns fixed rates and records what it was asked to time."""

    def __init__(self, rates: Rates):
        self.rates, self.calls = rates, []

    def __call__(self, ae_cfg, pr_cfg, train_set, num_classes, device, precision,
                 units=("autoencoder", "prior", "classifier")):
        self.calls.append({"ae": ae_cfg, "prior": pr_cfg, "units": tuple(units),
                           "images": train_set[0][0].shape, "classes": num_classes})
        return Rates(**{**vars(self.rates), "calibration_s": 0.25})


@pytest.fixture
def nothing_installed(tmp_path, monkeypatch):
    """No dataset anywhere (an empty cache folder and no Fashion-MNIST) and an empty zoo."""
    from bld.inference import zoo
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "CLASSIFIERS_DIR", tmp_path / "zoo" / "classifiers")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BLD_FASHION_MNIST", raising=False)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIRS", (str(tmp_path / "no-fmnist"),))
    monkeypatch.setattr(doctor, "matmul_rates", lambda **kw: (20.0, 5.0))
    return tmp_path


def _report(rates: Rates, demos=("fashion-mnist", "faces", "emoji")):
    stand_in = StandIn(rates)
    report = doctor.collect(list(demos), time_units=stand_in)
    return report, stand_in


def _presets(kind: str, preset: str, over=()) -> object:
    return config_from_dict(kind, load_config_dict(kind, preset, list(over)))


def test_the_json_has_every_section_with_the_right_types(nothing_installed):
    report, _ = _report(FAST)
    assert json.loads(json.dumps(report)) == report  # plain JSON throughout
    assert set(report) == {"machine", "datasets", "zoo", "demos", "seconds"}
    m = report["machine"]
    for key, kind in {"cpu": str, "cpu_count": int, "threads": int, "torch_capability": str,
                      "native_bf16": bool, "isa_kind": str, "hardware_isa": str,
                      "restricted_by": dict, "matmul_n": int, "matmul_gflops_fp32": float,
                      "matmul_gflops_bf16": float, "precision_auto": str,
                      "precision_reason": str, "torch": str, "bld": str, "gpus": list}.items():
        assert isinstance(m[key], kind), key
    assert m["precision_auto"] in ("fp32", "bf16")
    assert m["isa_kind"].startswith(m["torch_capability"].lower())
    assert [d["name"] for d in report["datasets"]] == [
        "fashion-mnist", "faces", "emoji-twitter", "emoji-google", "openmoji"]
    for d in report["datasets"]:
        assert d["present"] is False and isinstance(d["path"], str) and d["install"]
    assert report["zoo"] == {"folder": str(nothing_installed / "zoo"), "models": [],
                             "classifiers": []}
    demos = report["demos"]
    assert demos["device"] in ("cpu", "cuda") and demos["precision"] in ("fp32", "bf16")
    forecasts = demos["forecasts"]
    assert list(forecasts) == ["fashion-mnist", "faces", "emoji"]
    assert "not installed" in forecasts["emoji"]["skipped"]  # its size is unknown before
    for name in ("fashion-mnist", "faces"):
        f = forecasts[name]
        assert isinstance(f["presets_minutes"], float) and isinstance(f["full_minutes"], int)
        assert set(f["rates"]) == set(vars(FAST)) and f["timing_s"] == 0.25
        assert list(f["plans"]) == ["15", "20"]
        for p in f["plans"].values():
            assert isinstance(p["scale"], float) and isinstance(p["predicted_minutes"], float)
            assert all(isinstance(p[k], int) for k in ("ae_steps", "preset_ae_steps",
                                                       "prior_steps", "preset_prior_steps"))


def test_sizes_before_the_data_are_installed(nothing_installed):
    forecasts = _report(FAST, ("fashion-mnist", "faces"))[0]["demos"]["forecasts"]
    fm, faces = forecasts["fashion-mnist"], forecasts["faces"]
    assert (fm["n_train"], fm["n_test"], fm["classes"]) == (60000, 10000, 10)
    # six styles of 2,004 faces, 334 of each a test face; the training faces twice (mirrored)
    assert (faces["n_train"], faces["n_test"], faces["classes"]) == (20040, 2004, 6)
    assert "random images" in fm["data"] and "random images" in faces["data"]


def test_a_fast_machine_trains_the_presets_as_they_are(nothing_installed):
    report, stand_in = _report(FAST, ("fashion-mnist",))
    f = report["demos"]["forecasts"]["fashion-mnist"]
    ae, prior = _presets("autoencoder", "fashion-mnist"), _presets("prior", "fashion-mnist")
    for p in f["plans"].values():
        assert (p["variant"], p["scale"]) == ("presets", 1.0)
        assert (p["ae_steps"], p["prior_steps"]) == (ae.optim.steps, prior.optim.steps)
        assert p["predicted_minutes"] < 15
    # what is left is the demo's fixed overhead: the plan's arithmetic, not a timing
    assert f["presets_minutes"] == pytest.approx(OVERHEAD_S / 60, abs=0.01)
    assert f["full_minutes"] == 1
    # one timing, of the presets' models as the demo builds them (28 px grey, 10 classes)
    [call] = stand_in.calls
    assert call["ae"].model == ae.model and call["units"] == ("autoencoder", "prior", "classifier")
    assert call["prior"].model.num_classes == call["classes"] == 10
    assert call["images"] == (1, 28, 28)


def test_a_slow_machine_gets_the_compact_setting_the_demo_would_train(nothing_installed):
    report, stand_in = _report(SLOW, ("fashion-mnist",))
    f = report["demos"]["forecasts"]["fashion-mnist"]
    ae = _presets("autoencoder", "fashion-mnist")
    over = compact_overrides("fashion-mnist", ae.optim.steps)
    compact_ae = _presets("autoencoder", "fashion-mnist", over["autoencoder"])
    compact_prior = resolve_prior_config(_presets("prior", "fashion-mnist", over["prior"]),
                                         compact_ae.model, 10)
    assert f["full_minutes"] > 20  # all the presets' steps need more than either budget
    for minutes, p in f["plans"].items():
        assert p["variant"] == "compact" and p["scale"] < COMPACT_BELOW
        assert p["preset_ae_steps"] == compact_ae.optim.steps
        assert p["preset_prior_steps"] == compact_prior.optim.steps
        assert p["ae_steps"] == max(1, math.floor(compact_ae.optim.steps * p["scale"]))
        assert MIN_SCALE < p["scale"] and p["predicted_minutes"] <= SAFETY * float(minutes)
    assert f["plans"]["20"]["ae_steps"] >= f["plans"]["15"]["ae_steps"]
    # timed twice: the presets, then (once, for both budgets) the compact models
    first, second = stand_in.calls
    assert first["units"] == ("autoencoder", "prior", "classifier")
    assert second["units"] == ("autoencoder", "prior")  # a new autoencoder: timed too
    assert second["ae"].model == compact_ae.model and second["prior"].model == compact_prior.model
    assert f["timing_s"] == 0.5


def test_the_precision_reason_is_resolve_precisions():
    m = doctor.machine()
    auto = resolve_precision("auto", "cpu")
    assert (m["precision_auto"], m["precision_reason"]) == (auto.name, auto.reason)
    assert m["matmul_gflops_fp32"] > 0 and m["matmul_gflops_bf16"] > 0


def test_the_isa_kind_and_what_restricts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "matmul_rates", lambda **kw: (20.0, 5.0))
    monkeypatch.setattr(doctor, "cpu_bf16_facts", lambda: ("AVX512", True))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16\n")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    m = doctor.machine(cpuinfo)
    assert (m["isa_kind"], m["hardware_isa"]) == ("avx512-bf16", "avx512-bf16")
    assert m["restricted_by"] == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    monkeypatch.setattr(doctor, "cpu_bf16_facts", lambda: ("AVX2", False))
    cpuinfo.write_text("flags\t\t: fpu avx avx2\n")
    assert (doctor.machine(cpuinfo)["isa_kind"], doctor.machine(cpuinfo)["hardware_isa"]) == (
        "avx2", "avx2")
    assert doctor.machine(tmp_path / "none")["hardware_isa"] == "unknown"


def test_datasets_found_and_missing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    emoji = cache / "bld" / "emoji-twitter" / "smileys"
    emoji.mkdir(parents=True)
    (emoji / "grin.png").write_bytes(b"png")
    (cache / "bld" / "dicebear6-64").mkdir(parents=True)  # empty: not installed
    fmnist = tmp_path / "fmnist"
    fmnist.mkdir()
    (fmnist / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("BLD_FASHION_MNIST", str(fmnist))
    rows = {d["name"]: d for d in doctor.datasets()}
    assert rows["emoji-twitter"]["present"] and \
        rows["emoji-twitter"]["path"] == str(cache / "bld" / "emoji-twitter")
    assert rows["fashion-mnist"]["present"] and rows["fashion-mnist"]["path"] == str(fmnist)
    assert not rows["faces"]["present"] and rows["faces"]["install"] == "bld prepare-dicebear"
    assert rows["faces"]["path"] == str(cache / "bld" / "dicebear6-64")
    assert not rows["emoji-google"]["present"]
    assert rows["emoji-google"]["install"] == "bld prepare-emoji --vendor google"

    monkeypatch.delenv("BLD_FASHION_MNIST")
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIRS", (str(tmp_path / "none"),))
    fm = doctor.datasets()[0]
    assert (fm["present"], fm["path"]) == (False, str(tmp_path / "none"))
    assert "dataset-fashion-mnist" in fm["install"]


def test_the_zoo_section_lists_shipped_models_and_classifiers(tmp_path, monkeypatch):
    from bld.inference import zoo
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "CLASSIFIERS_DIR", tmp_path / "zoo" / "classifiers")
    assert doctor.shipped() == {"folder": str(tmp_path / "zoo"), "models": [],
                                "classifiers": []}  # no folder yet
    model = tmp_path / "zoo" / "fmnist-small"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"data": {"source": "fashion-mnist"},
                                                   "classes": ["a", "b"]}))
    (model / "prior.safetensors").write_bytes(b"\0" * 1_572_864)  # 1.5 MB
    (tmp_path / "zoo" / "notes").mkdir()  # no config.json: not a model
    clf = tmp_path / "zoo" / "classifiers" / "fashion-mnist"
    clf.mkdir(parents=True)
    (clf / "config.json").write_text("{}")
    (tmp_path / "zoo" / "classifiers" / "empty").mkdir()  # no classifier in it
    got = doctor.shipped()
    assert [(m["name"], m["dataset"]) for m in got["models"]] == [("fmnist-small",
                                                                   "fashion-mnist")]
    assert got["models"][0]["size_mb"] == pytest.approx(1.5)
    assert "not measured" in got["models"][0]["summary"]
    assert got["classifiers"] == ["fashion-mnist"]


def test_the_screen(nothing_installed):
    tiny = nothing_installed / "zoo" / "tiny"
    tiny.mkdir(parents=True)
    (tiny / "config.json").write_text(json.dumps({"data": {"source": "fashion-mnist"}}))
    report, _ = _report(SLOW)
    text = doctor.render(report)
    lines = text.splitlines()
    assert len(lines) <= 40
    assert report["machine"]["precision_reason"] in text
    assert "bld prepare-dicebear" in text and "dataset-fashion-mnist" in text
    assert "  tiny" in text and "none shipped yet" not in text
    assert sum("--minutes 15" in x for x in lines) == 2  # fashion-mnist and faces
    assert "compact" in text
    report["zoo"]["models"] = []
    assert "none shipped yet" in doctor.render(report)


def test_the_quick_timing_measures_each_unit(monkeypatch):
    ae = config_from_dict("autoencoder", load_config_dict("autoencoder", "fashion-mnist", [
        "model.channels=8", "model.hidden=16", "model.bits=8", "model.attention=false",
        "optim.batch_size=8"]))
    prior = resolve_prior_config(config_from_dict("prior", load_config_dict(
        "prior", "fashion-mnist", ["preset=tiny", "optim.batch_size=8"])), ae.model, 10)
    from bld.data import TensorImageDataset
    images = TensorImageDataset(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8),
                                torch.arange(16) % 10)
    fp32 = Precision("fp32", "fp32: asked for")
    r = doctor.quick_rates(ae, prior, images, 10, torch.device("cpu"), fp32)
    assert all(0 < v < math.inf for v in vars(r).values())
    only = doctor.quick_rates(ae, prior, images, 10, torch.device("cpu"), fp32, ("prior",))
    assert only.ae_step_s == only.encode_image_s == only.classifier_step_s == 0
    assert only.prior_step_s > 0 and only.sample_image_step_s > 0
    # the arithmetic, with every timed call counted as one second: a training step's backward
    # on a quarter of its batch (8 -> 2 items) scaled by 4, plus its update; encoding the 2
    # images of that share, per image; sampling 1 image guided (2 rows) for 2 steps; the
    # classifier's 16 images (all there are) -> 4
    calls = []

    def one_second(fn, device):
        calls.append(fn())
        return 1.0
    monkeypatch.setattr(doctor, "_seconds", one_second)
    r = doctor.quick_rates(ae, prior, images, 10, torch.device("cpu"), fp32)
    assert (r.ae_step_s, r.prior_step_s, r.classifier_step_s) == (5.0, 5.0, 5.0)
    assert (r.encode_image_s, r.recon_image_s, r.sample_image_step_s) == (0.5, 0.5, 0.5)
    assert len(calls) == 3 * 4 + 3  # 3 steps: warm-up and timed, backward and update
    monkeypatch.undo()
    # past the doctor's deadline no unit starts: the demo is named, not forecast
    monkeypatch.setattr(doctor, "_deadline", [0.0, 0.0])
    with pytest.raises(TimeoutError):
        doctor.quick_rates(ae, prior, images, 10, torch.device("cpu"), fp32)


def test_the_deadline_names_the_demos_it_did_not_time(nothing_installed, monkeypatch):
    report = doctor.collect(limit_s=0.0)
    forecasts = report["demos"]["forecasts"]
    for name in ("fashion-mnist", "faces"):
        assert forecasts[name]["skipped"].endswith(f"bld doctor --dataset {name}")
    assert doctor._deadline == [math.inf, 0.0]  # lifted again


def test_the_command_line(nothing_installed, monkeypatch, capsys):
    args = build_parser().parse_args(["doctor"])
    assert (args.json, args.dataset) == (False, None)
    monkeypatch.setattr(doctor, "quick_rates", StandIn(FAST))
    assert main(["doctor", "--json", "--dataset", "faces"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"machine", "datasets", "zoo", "demos", "seconds"}
    assert list(report["demos"]["forecasts"]) == ["faces"]
    assert report["demos"]["forecasts"]["faces"]["plans"]["15"]["variant"] == "presets"
    assert main(["doctor", "--dataset", "emoji"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bld ") and "emoji" in out and "{" not in out
