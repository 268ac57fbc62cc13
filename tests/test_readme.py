"""The README's Python example runs as written, and its commands name real things."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bld.cli import build_parser, preset_names
from bld.data import DatasetNotFoundError, find_fashion_mnist

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    try:
        find_fashion_mnist()
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_readme_tables_come_from_the_measurements():
    # the README's demo table and the benchmark headline table are rendered from
    # docs/demo_report.json and benchmarks/results/headline.json by benchmarks/publish.py
    root = README.parent
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "publish.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_readme_commands_exist():
    text = README.read_text()
    commands = set(re.findall(r"`bld ([a-z-]+)", text))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert commands and commands <= set(sub.choices)
    for name in re.findall(r"`([a-z0-9-]+)` \(\d+ px", text):
        assert name in preset_names("autoencoder") and name in preset_names("prior")
