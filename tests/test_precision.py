"""Precision chosen by the hardware: the rule of `auto`, its reasons, the CLI and config
spellings, and what a run records and says when a resume resolves it differently."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

import bld.core.device as precision
from bld.app.cli import build_parser, main
from bld.core.config import ConfigError, config_from_dict, load_config_dict, preset_names
from bld.core.device import Precision, resolve_precision
from bld.core.runfolder import find_latest


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given capability / native bf16 / matmul rates."""
    precision._auto.cache_clear()

    def set_cpu(cap: str, native: bool, fp32: float = 100.0, bf16: float = 100.0):
        monkeypatch.setattr(precision, "cpu_bf16_facts", lambda: (cap, native))
        monkeypatch.setattr(precision, "matmul_rates", lambda: (fp32, bf16))
        precision._auto.cache_clear()
    yield set_cpu
    precision._auto.cache_clear()


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu):
    cpu("AVX2", False, fp32=37.4, bf16=0.56)
    p = resolve_precision("auto", "cpu")
    assert (p.name, p.bf16) == ("fp32", False)
    assert p.reason == "fp32: this CPU has no native bf16 (AVX2)"
    with p.autocast("cpu"):
        assert not __import__("torch").is_autocast_enabled("cpu")


def test_auto_is_bf16_only_where_native_bf16_also_measures_faster(cpu):
    cpu("AVX512", True, fp32=110.0, bf16=450.0)
    p = resolve_precision("auto", "cpu")
    assert p.name == "bf16" and "4.1x fp32" in p.reason and "AVX512" in p.reason
    import torch
    with p.autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    cpu("AVX512", True, fp32=110.0, bf16=121.0)  # native, but not faster by the margin
    p = resolve_precision("auto", "cpu")
    assert p.name == "fp32" and "only 1.1x fp32" in p.reason


def test_auto_on_cuda_follows_bf16_support(monkeypatch):
    import torch
    precision._auto.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda").name == "bf16"
    precision._auto.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == Precision(
        "fp32", "fp32: this CUDA GPU has no bf16 support")
    precision._auto.cache_clear()


def test_asking_for_bf16_on_a_cpu_without_it_warns(cpu, caplog):
    cpu("AVX2", False)
    precision._logged.clear()
    with caplog.at_level(logging.INFO, logger="bld"):
        p = resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and p.requested == "bf16"
    assert any(r.levelno == logging.WARNING and "slower than fp32" in r.message
               for r in caplog.records)
    assert resolve_precision("fp32", "cpu").name == "fp32"


def test_the_real_cpu_gets_a_consistent_answer():
    cap, native = precision.cpu_bf16_facts()
    p = resolve_precision("auto", "cpu")
    assert p.name in ("fp32", "bf16") and cap in p.reason
    if not native:
        assert p.name == "fp32"
    f32, b16 = precision.matmul_rates(n=128, seconds=0.02)
    assert f32 > 0 and b16 > 0


@pytest.mark.parametrize("bad", ["fast", "fp16", "", "BF16"])
def test_unknown_precisions_are_refused(bad):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision(bad)
    with pytest.raises(ConfigError, match="precision must be one of"):
        config_from_dict("prior", load_config_dict("prior", None, [f"run.precision={bad!r}"]))


def test_no_command_and_no_preset_defaults_to_bf16():
    parser = build_parser()
    commands = {"train-ae": ["--out", "x"], "train-prior": ["--out", "x"],
                "encode": ["--autoencoder", "a", "--out", "x"], "sample": ["--prior", "p", "--out", "x"],
                "inpaint": ["--prior", "p", "--image", "i", "--mask", "m", "--out", "x"],
                "reconstruct": ["--autoencoder", "a", "--out", "x"],
                "eval": ["--classifier", "c", "--out", "x"], "serve": ["run"], "demo": []}
    for command, args in commands.items():
        ns = parser.parse_args([command, *args])
        assert ns.precision in (None, "auto", "fp32"), command  # None: the config's value
    for kind in ("autoencoder", "prior"):
        for name in preset_names(kind):
            cfg = config_from_dict(kind, load_config_dict(kind, name, []))
            assert cfg.run.precision == "auto", (kind, name)


def test_bf16_flags_are_aliases_of_precision():
    parser = build_parser()
    assert parser.parse_args(["sample", "--prior", "p", "--out", "x", "--no-bf16"]).precision == "fp32"
    assert parser.parse_args(["sample", "--prior", "p", "--out", "x", "--bf16"]).precision == "bf16"
    ns = parser.parse_args(["train-ae", "--out", "x", "--bf16"])
    from bld.app.cli import _shortcut_overrides
    assert "run.precision=bf16" in _shortcut_overrides(ns)
    assert parser.parse_args(["demo", "--precision", "fp32"]).precision == "fp32"


def test_configs_written_before_precision_still_load(tmp_path):
    # run.bf16 (true / false) was the setting before run.precision: what those runs computed in
    for old, new in [(True, "bf16"), (False, "fp32")]:
        path = tmp_path / f"old_{old}.yaml"
        path.write_text(yaml.safe_dump({"run": {"bf16": old, "seed": 3}}))
        cfg = config_from_dict("prior", load_config_dict("prior", str(path), []))
        assert cfg.run.precision == new and cfg.run.seed == 3


def test_a_run_records_its_precision_and_a_resume_that_resolves_otherwise_says_so(
        tmp_path, tiny_ae_args, monkeypatch, caplog, fashion_mnist):
    out = tmp_path / "ae"
    monkeypatch.setattr(precision, "_auto", lambda device_type: Precision(
        "fp32", "fp32: this CPU has no native bf16 (AVX2)"))
    args = ["train-ae", "--out", str(out), *tiny_ae_args, "--steps", "3",
            "--set", "run.ckpt_every=3", "--precision", "auto"]
    assert main(args) == 0
    meta = json.loads((find_latest(out) / "config.json").read_text())["metadata"]
    assert meta["precision"] == "fp32" and meta["precision_requested"] == "auto"
    assert meta["precision_reason"] == "fp32: this CPU has no native bf16 (AVX2)"
    # the same run continued on a machine where auto means bf16: allowed, and said
    monkeypatch.setattr(precision, "_auto", lambda device_type: Precision(
        "bf16", "bf16: this CPU runs bf16 natively (AVX512); bf16 matmul measured 4.0x fp32"))
    with caplog.at_level(logging.WARNING, logger="bld"):
        assert main([*args, "--steps", "5", "--resume", "--allow-config-change"]) == 0
    said = [r.message for r in caplog.records if "--resume" in r.message]
    assert any("ran in fp32" in m and "continues in bf16" in m and "bitwise" in m for m in said)
    meta = json.loads((find_latest(out) / "config.json").read_text())["metadata"]
    assert meta["precision"] == "bf16"
