"""The README and docs/: their examples run as written, their commands and presets name real
things, their links resolve, their tables come from the measurements, and the README stays a
short front page whose first screen holds the two commands CI runs."""

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from bld.app.cli import build_parser, preset_names

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
README_MAX_LINES = 250
FIRST_SCREEN_LINES = 25


def _docs() -> list[Path]:
    """README.md and every Markdown file under docs/ (history included)."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def _python_block(marker: str, path: Path = README) -> str:
    """The python example of ``path`` that holds ``marker``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
              if marker in b]
    assert len(blocks) == 1, f"{path.name} has lost its python example with {marker!r}"
    return blocks[0]


def test_readme_pipeline_example_runs(runs, tmp_path, monkeypatch):
    # the pipeline example, on the tiny trained run in place of runs/demo
    from PIL import Image
    code = _python_block("BinaryLatentDiffusionPipeline.from_run")
    assert '"runs/demo"' in code
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace('"runs/demo"', repr(str(runs.prior))), "README.md", "exec"), ns)
    out, filled, same = ns["out"], ns["filled"], ns["same"]
    assert [im.size for im in out.images] == [(28, 28)] * 4
    assert out.labels.tolist() == [7, 8, 7, 8]  # Sneaker, Bag, cycled
    assert tuple(out.bits.shape) == (4, *ns["pipe"].latent_shape)
    assert Image.open(tmp_path / "sneaker.png").size == (28, 28)
    assert len(filled.images) == 2 and ns["bits"].shape[0] == 2
    assert ns["walk"].bits_taken[-1] == ns["walk"].bits_differing
    assert (tmp_path / "bld-fashion" / "prior.safetensors").is_file()
    again = same(class_labels=["Sneaker", "Bag"], n=4, steps=16, guidance=0.5, generator=0,
                 return_bits=True)
    assert again.bits.equal(out.bits)  # the saved folder samples the same bits


def test_low_level_example_runs(fashion_mnist):
    path = DOCS / "python-api.md"
    ns: dict = {}
    exec(compile(_python_block("from bld.models.denoiser import", path), str(path), "exec"), ns)
    assert ns["z"].shape == (8, 16, 7, 7) and set(ns["z"].unique().tolist()) <= {0.0, 1.0}


def test_readme_is_a_short_front_page_with_the_ci_commands():
    # at most 250 lines; its first screen has one bash block of exactly two set-up commands:
    # the demo on the default dataset, and the test suite exactly as .ci/run runs it
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert len(ci) == 1, ci
    first = "\n".join(lines[:FIRST_SCREEN_LINES])
    block = re.search(r"```bash\n(.*?)```", first, re.S)
    assert block, "no bash block on the README's first screen"
    commands = [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert commands == ["bash scripts/setup.sh && bld demo", ci[0].strip()]


def test_generated_tables_come_from_the_measurements():
    # the README's results table, docs/results.md's demo tables and docs/benchmarks.md's
    # headline, cost and ablation tables are rendered from the JSON files by publish.py
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "publish.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # the README carries one generated table, with a row per run; the others live in docs/
    text = README.read_text()
    assert re.findall(r"<!-- ([a-z0-9-]+):start -->", text) == ["results-table"]
    table = text.split("<!-- results-table:start -->")[1].split("<!-- results-table:end -->")[0]
    assert table.count("\n|") >= 6  # header, rule and a row per run


@pytest.mark.parametrize("flag,dataset,restricted,match", [
    ("--colour-native-run", "faces", {"ONEDNN_MAX_CPU_ISA": "AVX2"},
     "did not run on a CPU that is AVX2-only itself"),
    ("--colour-native-run", "fashion-mnist", {}, "not of a colour dataset"),
    ("--native-run", "fashion-mnist", {"ATEN_CPU_CAPABILITY": "avx2"},
     "did not run on a CPU that is AVX2-only itself"),
    ("--native-run", "faces", {}, "not of fashion-mnist"),
    ("--colour-six-run", "faces", {}, "not the six styles"),
    ("--colour-six-run", "fashion-mnist", {}, "not of a colour dataset"),
    ("--colour-six-run", "six", {"ONEDNN_MAX_CPU_ISA": "AVX2"},
     "did not run on a CPU that is AVX2-only itself"),
])
def test_publish_refuses_a_native_run_that_is_not_one(tmp_path, flag, dataset, restricted, match):
    # --native-run / --colour-native-run take only a demo of their dataset whose CPU was
    # AVX2-only without being restricted to it, --colour-six-run only such a faces demo of the
    # six styles; the refusal comes before anything in docs/ or the headline changes
    from bld.data import DICEBEAR_DEFAULT_STYLES
    kept = [RESULTS / "headline.json", DOCS / "colour_demo_native_report.json",
            DOCS / "demo_native_report.json", DOCS / "colour_demo_six_report.json"]
    before = [p.read_bytes() if p.exists() else None for p in kept]
    run = tmp_path / "run"
    run.mkdir()
    report = {"dataset": dataset, "cpu": {"capability": "AVX2", "native_bf16": False,
                                          "restricted_by": restricted}}
    if dataset == "six":
        report.update(dataset="faces",
                      classes=[c.replace("-", "_") for c in DICEBEAR_DEFAULT_STYLES])
    (run / "report.json").write_text(json.dumps(report))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "publish.py"),
                          flag, str(run)], capture_output=True, text=True)
    assert res.returncode != 0 and re.search(match, res.stderr), res.stderr
    assert [p.read_bytes() if p.exists() else None for p in kept] == before


def _subcommands() -> set[str]:
    parser = build_parser()
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def test_commands_named_exist_and_the_table_lists_every_one():
    choices = _subcommands()
    for path in _docs():
        named = set(re.findall(r"`bld ([a-z][a-z-]*)", path.read_text()))
        assert named <= choices, f"{path.name}: no such command {named - choices}"
    text = README.read_text()
    table = set(re.findall(r"^\| `bld ([a-z][a-z-]*)` \|", text, re.M))
    assert table == choices, f"README's command table differs: {choices ^ table}"


def test_presets_named_exist():
    text = (DOCS / "training-options.md").read_text()
    named = re.findall(r"`([a-z0-9-]+)` \(\d+ px", text)
    assert set(named) == set(preset_names("autoencoder")), named
    for name in named:
        assert name in preset_names("prior")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> -."""
    text = unicodedata.normalize("NFKC", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_relative_links_point_to_files_that_exist():
    # every relative link (and image) in README.md and docs/ names an existing file, and a
    # #fragment into a Markdown file names one of its headings
    bad = []
    for path in _docs():
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            file, _, fragment = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{path.relative_to(ROOT)}: {target}")
            elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
                bad.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, bad


def test_nothing_points_outside_the_repository():
    # no path into the folder beside the checkout and no specification document outside it:
    # the method is docs/method.md (the pattern is spelt in pieces so this file passes too)
    outside = re.compile(r"\.\./" + "shared" + "|" + "SP" + "EC")
    files = [*_docs(), ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "publish.py",
             Path(__file__), *RESULTS.glob("*.md")]
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files
           for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not bad, bad


def test_results_index_lists_every_result_file():
    # docs/benchmarks.md's index names each file of benchmarks/results by its stem; plots
    # are NAME_*.png of an indexed NAME
    text = (DOCS / "benchmarks.md").read_text().split("## Results index", 1)[1]
    stems = {name for entry in re.findall(r"^- (.+?): ", text, re.M)
             for name in re.findall(r"`([a-z0-9_.]+?)(?:\.json)?`", entry)}
    missing = []
    for f in sorted(RESULTS.iterdir()):
        if f.is_dir():
            continue
        if f.suffix in (".json", ".md"):
            ok = f.stem in stems
        else:
            ok = any(f.stem.startswith(s + "_") for s in stems)
        if not ok:
            missing.append(f.name)
    assert not missing, f"not in docs/benchmarks.md's results index: {missing}"
    assert not [s for s in stems if not any(RESULTS.glob(s + ".*"))], "index names a lost file"


def test_every_preset_loads_and_builds():
    """The documented presets (and any other), for both models: each YAML parses into a
    valid config and builds its model (on the meta device: shapes only, no memory)."""
    import torch

    from bld.core.config import config_from_dict, load_config_dict
    from bld.models.autoencoder import BinaryAutoencoder
    from bld.models.denoiser import Denoiser
    from bld.training.prior import resolve_prior_config
    names = preset_names("autoencoder")
    assert names == preset_names("prior")
    assert {"fashion-mnist", "emoji64", "faces64", "256px", "1024px"} <= set(names)
    for name in names:
        ae = config_from_dict("autoencoder", load_config_dict("autoencoder", name, []))
        prior = resolve_prior_config(
            config_from_dict("prior", load_config_dict("prior", name, [])), ae.model, 10)
        with torch.device("meta"):
            ae_params = sum(p.numel() for p in BinaryAutoencoder(ae.model).parameters())
            prior_params = sum(p.numel() for p in Denoiser(prior.model).parameters())
        assert ae_params > 10_000 and prior_params > 10_000, name
        assert prior.model.bits == ae.model.bits and prior.model.grid == ae.model.grid, name
