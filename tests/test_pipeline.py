"""The pipeline object and the loading beside it: sampling a trained run never imports the
training loops, and `BinaryLatentDiffusionPipeline` loads, samples, inpaints, encodes,
decodes and round-trips through one saved folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bld

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(bld.__file__).resolve().parents[1]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run code in a new interpreter (so sys.modules starts empty) on this checkout's bld."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"}, timeout=300)


def test_sampling_never_imports_the_training_module(runs, tmp_path):
    out = tmp_path / "grid.png"
    code = f"""
import json, sys
import bld.pipeline, bld.loading
before = sorted(m for m in sys.modules if m.startswith("bld."))
from bld.cli import main
rc = main(["sample", "--prior", {str(runs.prior)!r}, "-n", "2", "--steps", "2",
           "--device", "cpu", "--out", {str(out)!r}])
print(json.dumps({{"rc": rc, "before": before,
                  "after": sorted(m for m in sys.modules if m.startswith("bld."))}}))
"""
    res = _fresh_python(code)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0 and out.is_file()
    assert "bld.loading" in got["before"]
    assert "bld.train" not in got["before"], "importing the pipeline imported bld.train"
    assert "bld.train" not in got["after"], "`bld sample` imported bld.train"


def test_cli_and_demo_do_not_import_each_other():
    code = """
import sys
import bld.cli
a = "bld.demo" in sys.modules
for m in [m for m in sys.modules if m.startswith("bld.")]:
    del sys.modules[m]
import bld.demo
print(a, "bld.cli" in sys.modules)
"""
    res = _fresh_python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]
