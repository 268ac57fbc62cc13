"""benchmarks/gpu_check.py runs end to end on a CPU at tiny sizes, so a GPU run is one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("fashion_mnist")
def test_gpu_check_path_runs_on_cpu_and_resumes(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
           "--sizes", "256", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["results"]
    (row,) = data["sizes"]
    assert row["size"] == 256 and data["device"] == "cpu"
    for stage in ("autoencoder", "prior"):
        assert row[stage]["steps_per_s_wall"] > 0 and row[stage]["peak_mb"] > 0
    assert row["sample"]["images_per_s"] > 0 and Path(row["sample"]["grid"]).is_file()
    # every stage left its record: a second call resumes by skipping them all
    done = sorted(p.name for p in (tmp_path / "work" / "256").glob("*.json"))
    assert done == ["autoencoder.json", "encode.json", "prior.json", "sample.json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and res.stdout.count("done earlier") == 4
