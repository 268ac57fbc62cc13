"""The model zoo: trained pipelines and FD classifiers that ship inside the package, loaded
by name, offline.

    src/bld/zoo/<name>/                 a pipeline folder (`save_pretrained`'s layout) in fp16:
        config.json                     both models' configs, the classes, the dataset
        autoencoder.safetensors         the autoencoder's EMA weights
        prior.safetensors               the prior's EMA weights
        README.md                       the card: data and licence, the commands that made
                                        it, steps, machine, minutes and measured figures
        eval.json                       `bld eval --model <name> -n 1000`'s report
    src/bld/zoo/classifiers/<dataset>/  the FD classifier of a built-in dataset (a checkpoint
        manifest.json                   folder) and its manifest: sha256, command, test accuracy

A name is looked up here; anything else is read as a folder path, so every place that takes
a name takes a folder too. Imports bld.core.config and bld.models on first use (the card).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
CLASSIFIERS_DIR = ZOO_DIR / "classifiers"
CARD_FILE = "README.md"
EVAL_FILE = "eval.json"
MANIFEST_FILE = "manifest.json"
WEIGHT_FILES = ("autoencoder.safetensors", "prior.safetensors")


class ZooError(ValueError):
    """A name that is neither a shipped model nor a folder, or an incomplete zoo entry."""


@dataclass
class ZooModel:
    name: str
    path: Path
    dataset: str  # the dataset source the autoencoder was trained on
    classes: list[str]
    size_mb: float  # the weight files on disk
    figures: dict[str, Any] = field(default_factory=dict)  # from eval.json, where measured

    def summary(self) -> str:
        f = self.figures
        measured = (f"class accuracy {f['sample_class_accuracy']:.3f}, recall "
                    f"{f['sample_recall']:.3f}, FD {f['sample_fd']:.1f} / recon "
                    f"{f['reconstruction_fd']:.1f} (N = {f['n']})"
                    if {"sample_class_accuracy", "sample_recall", "sample_fd",
                        "reconstruction_fd", "n"} <= f.keys() else "not measured")
        return (f"{self.name:<18} {self.dataset:<14} {self.size_mb:5.1f} MB  "
                f"{len(self.classes):>3} classes  {measured}")


def model_names() -> list[str]:
    """The shipped models' names (folders of the zoo with a config.json), sorted."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir()
                  if p.is_dir() and (p / "config.json").is_file())


def eval_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a `bld eval` report (its samples and reconstructions)."""
    smp, rec = report.get("samples", {}), report.get("autoencoder", {})
    out = {"n": smp.get("n"), "sample_fd": smp.get("fd"), "sample_recall": smp.get("recall"),
           "sample_precision": smp.get("precision"),
           "sample_class_accuracy": smp.get("class_accuracy"),
           "reconstruction_fd": rec.get("fd_recon"), "psnr": rec.get("psnr"),
           "reconstruction_recall": rec.get("recon_recall"),
           "fd_ratio_to_recon": report.get("fd_ratio_to_recon"),
           "classifier": report.get("classifier", {}).get("path")}
    return {k: v for k, v in out.items() if v is not None}


def describe(name: str) -> ZooModel:
    path = ZOO_DIR / name
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"zoo model {name!r} has no readable config.json ({e})") from None
    size = sum((path / f).stat().st_size for f in WEIGHT_FILES if (path / f).is_file())
    figures = {}
    if (path / EVAL_FILE).is_file():
        figures = eval_figures(json.loads((path / EVAL_FILE).read_text()))
    return ZooModel(name, path, str(config.get("data", {}).get("source", "?")),
                    list(config.get("classes", [])), size / 2 ** 20, figures)


def list_models() -> list[ZooModel]:
    return [describe(n) for n in model_names()]


def lookup(name_or_path: str | Path) -> Path:
    """A shipped model's folder for its name, unless a path of that name exists; any other
    value as the path it is (a folder, or a Hugging Face Hub id for from_pretrained)."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in model_names():
        return ZOO_DIR / str(name_or_path)
    return path


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a shipped model's name, or ``name_or_path`` itself where it is a folder
    (a run, a checkpoint or a save_pretrained folder); else a ZooError naming the models."""
    path = lookup(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    shipped = ", ".join(model_names()) or "none shipped"
    raise ZooError(f"{name!r} is neither a folder nor a shipped model (shipped: {shipped}; "
                   "`bld models` lists them)")


def classifier_names() -> list[str]:
    """The datasets whose FD classifier ships, sorted."""
    if not CLASSIFIERS_DIR.is_dir():
        return []
    return sorted(p.name for p in CLASSIFIERS_DIR.iterdir() if classifier_dir(p.name))


def classifier_dir(dataset: str) -> Path | None:
    """The shipped FD classifier of a built-in dataset source (fashion-mnist, dicebear,
    emoji-twitter, ...), or None where none ships."""
    folder = CLASSIFIERS_DIR / dataset
    return folder if (folder / "config.json").is_file() else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a shipped folder, after checking every file it lists against its
    sha256 (a damaged or replaced weights file is refused, not silently measured with)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"{folder} has no readable {MANIFEST_FILE} ({e})") from None
    for name, want in manifest.get("sha256", {}).items():
        got = file_sha256(folder / name) if (folder / name).is_file() else "missing"
        if got != want:
            raise ZooError(f"{folder / name} does not match its manifest (sha256 {got[:12]}, "
                           f"manifest {want[:12]}); restore it from the repository")
    return manifest


def write_manifest(folder: Path, info: dict[str, Any], files: tuple[str, ...]) -> Path:
    """``info`` plus the sha256 of ``files`` as the folder's manifest.json."""
    manifest = {**info, "sha256": {f: file_sha256(folder / f) for f in files}}
    out = folder / MANIFEST_FILE
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def to_half(folder: Path, files: tuple[str, ...], dtype: str = "float16") -> None:
    """Rewrite the floating-point tensors of safetensors ``files`` in ``folder`` as fp16
    (or bf16); integers and buffers of other types stay as they are."""
    import torch
    from safetensors.torch import load_file, save_file
    target = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    for name in files:
        state = load_file(str(folder / name))
        half = {k: (v.to(target) if v.is_floating_point() else v).contiguous()
                for k, v in state.items()}
        save_file(half, str(folder / name), metadata={"dtype": dtype})


def classifier_command(dataset: str, steps: int, seed: int, out: str | Path) -> str:
    """The command that trains a shipped FD classifier (its manifest keeps it)."""
    return f"bld train-classifier --data {dataset} --steps {steps} --seed {seed} --out {out}"


# the prior config's keys a shipped model's sampler defaults may change after training
# (scripts/make_zoo.py sampler; its card names them and why)
SAMPLER_KEYS = ("sample_steps", "sample_guidance", "sample_guidance_interval",
                "sample_temperature")


def write_card(name: str, licence: str) -> Path:
    """The model card (README.md) of zoo model ``name`` from what its folder holds: the
    configs (config.json), how it was made (provenance.json) and what `bld eval` measured
    (eval.json, where present)."""
    folder = ZOO_DIR / name
    config = json.loads((folder / "config.json").read_text())
    prov = json.loads((folder / "provenance.json").read_text())
    model = describe(name)
    ae, pr = config["autoencoder_config"], config["prior_config"]
    f = model.figures
    lines = [
        f"# {name}", "",
        f"A binary autoencoder and a class-conditional Bernoulli diffusion prior trained on "
        f"{model.dataset} ({len(model.classes)} classes: {', '.join(model.classes)}).", "",
        "```python", "from bld import BinaryLatentDiffusionPipeline",
        f'pipe = BinaryLatentDiffusionPipeline.from_pretrained("{name}")',
        "images = pipe(class_labels=[0, 1, 2], n=3).images", "```", "",
        f"or `bld sample --model {name} -n 16 --out samples.png`.", "",
        "## Data and licence", "", licence, "",
        "## How it was made", "",
        "```bash", *prov["commands"], "```", "",
        *([prov["note"], ""] if prov.get("note") else []),
        f"- autoencoder: latent {ae['bits']} bits x {_grid(ae)} x {_grid(ae)}, "
        f"{prov.get('autoencoder_steps')} steps",
        f"- prior: width {pr['model']['width']}, depth {pr['model']['depth']}, "
        f"T = {pr['diffusion']['timesteps']}, {prov.get('prior_steps')} steps "
        f"x batch {pr['optim']['batch_size']}",
        f"- machine: {prov.get('machine')}, precision {prov.get('precision')}, "
        f"{prov.get('minutes')} minutes in all"
        + (f" (not counting {prov['paused_s']:.0f} s for which the run was stopped)"
           if prov.get("paused_s") else ""),
        f"- weights: the EMA weights in {prov.get('dtype')} ({model.size_mb:.1f} MB)", ""]
    sampler = prov.get("sampler") or {}
    if sampler:
        lines += ["The sampler's defaults were chosen after training, from measurements "
                  f"({sampler.get('why', '')}): "
                  + ", ".join(f"`{k}` {v}" for k, v in sampler["settings"].items())
                  + ". Every other setting is the command's.", ""]
    lines += ["## Figures", ""]
    if f:
        lines += [f"Measured by `bld eval --model {name} -n {f.get('n')}` "
                  f"({pr.get('sample_steps', 16)} steps, the prior's own guidance "
                  f"{pr.get('sample_guidance')}), in the feature space of the shipped FD classifier "
                  f"`{_in_repo(f.get('classifier'))}`:", "",
                  "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in f.items() if k != "classifier"]
    else:
        lines.append("Not measured yet: run `bld eval --model NAME -n 1000`.")
    out = folder / CARD_FILE
    out.write_text("\n".join(lines) + "\n")
    return out


def _in_repo(path: str | None) -> str | None:
    """A path inside the repository as the repository names it (src/bld/zoo/...)."""
    try:
        return Path(path).resolve().relative_to(ZOO_DIR.parents[2]).as_posix()
    except (TypeError, ValueError):
        return path


def _grid(ae: dict[str, Any]) -> int:
    from ..models.autoencoder import AutoencoderConfig
    from ..core.config import from_dict
    return from_dict(AutoencoderConfig, ae).grid
