"""`bld demo --autoencoder NAME_OR_DIR`: the demo trains only the prior, on an autoencoder
trained before (a shipped model's, `bld models`, or a folder), as latent diffusion models
usually do with a pretrained tokenizer. On a CPU whose plan cannot train all the presets'
steps, the seconds the autoencoder would take go to the prior.

The autoencoder is written into the demo's folder as a finished checkpoint of the stage
(``autoencoder/``, its EMA weights in fp32, marked done), so encoding, the prior, the
pipeline, the report and ``--resume`` treat it as the stage's result; its architecture
becomes the demo's autoencoder overrides, so the plan times the right model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("bld")


def _source(name_or_path: str) -> tuple[Path, str]:
    """(folder, kind): kind "pretrained" (a shipped model or a save_pretrained folder, with
    config.json and autoencoder.safetensors) or "checkpoint" (a run or checkpoint folder)."""
    from ..core.config import ConfigError
    from ..inference import zoo
    try:
        folder = zoo.resolve_model(name_or_path)
    except zoo.ZooError as e:
        raise ConfigError(f"--autoencoder: {e}") from None
    if (folder / "autoencoder.safetensors").is_file() and (folder / "config.json").is_file():
        return folder, "pretrained"
    return folder, "checkpoint"


def _model_and_facts(folder: Path, kind: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(the autoencoder in fp32, its model config as a dict, facts: data source and the steps
    it trained)."""
    from ..core.config import to_dict
    from ..core.loading import load_autoencoder_with_config
    if kind == "checkpoint":
        from ..core import checkpoint as ckpt
        model, cfg = load_autoencoder_with_config(folder)
        step = ckpt.load_checkpoint(folder, kind="autoencoder").step
        return model, to_dict(cfg.model), {"source": cfg.data.source, "steps": step}
    from safetensors.torch import load_model

    from ..core.config import from_dict
    from ..models.autoencoder import AutoencoderConfig, BinaryAutoencoder
    meta = json.loads((folder / "config.json").read_text())
    model = BinaryAutoencoder(from_dict(AutoencoderConfig, meta["autoencoder_config"]))
    load_model(model, str(folder / "autoencoder.safetensors"), strict=True)  # fp16 -> fp32
    provenance = folder / "provenance.json"
    steps = (json.loads(provenance.read_text()).get("autoencoder_steps")
             if provenance.is_file() else None)
    return model.float().eval(), meta["autoencoder_config"], \
        {"source": meta.get("data", {}).get("source"), "steps": steps}


def shipped_autoencoder(s, datasets: dict) -> str:
    """The shipped model whose autoencoder the demo adopts where its plan cannot train all
    the presets' steps: the one of the demo's built-in dataset (not on
    another folder, not with --train-autoencoder or the user's step counts); "" if none."""
    if s.train_autoencoder or s.data_dir or s.source or s.dataset not in datasets:
        return ""
    from .demo_report import shipped_model_for
    shipped = shipped_model_for(datasets[s.dataset][0])
    return shipped["name"] if shipped else ""


def adopted_before(out: Path, resume: bool) -> str:
    """The autoencoder a resumed demo adopted before (its stage 1's record), else ""."""
    done = out / "autoencoder" / "done.json"
    if not (resume and done.is_file()):
        return ""
    return json.loads(done.read_text()).get("adopted", {}).get("from", "")


def adopt_autoencoder(s, out: Path, source: str, stage_config, name: str = "") -> dict[str, Any]:
    """Make ``out/autoencoder`` a finished stage holding the autoencoder ``name`` (default
    ``s.autoencoder``; it becomes that) names (unless a --resume finds it there), set
    ``s.overrides["autoencoder"]`` to its architecture and ``s.ae_steps`` to 0 (the plan
    trains none). -> facts for the report."""
    if name and not s.autoencoder:
        log.info("the presets of both models cannot all train in --minutes %g here: the "
                 "demo takes the shipped %s model's autoencoder and trains the prior only "
                 "(--train-autoencoder trains both)", s.minutes, name)
    s.autoencoder = name or s.autoencoder
    from ..core import checkpoint as ckpt
    from ..core.config import ConfigError, to_dict
    from ..core.runfolder import find_latest
    folder, kind = _source(s.autoencoder)
    model, model_cfg, facts = _model_and_facts(folder, kind)
    if facts["source"] and facts["source"] != source:
        raise ConfigError(f"--autoencoder {s.autoencoder} was trained on {facts['source']}, "
                          f"not on this demo's {source}: pass one trained on {source}, or "
                          "leave --autoencoder out to train one here")
    s.overrides = {**s.overrides, "autoencoder": [
        f"model.{k}={json.dumps(v)}" for k, v in model_cfg.items()]}
    s.ae_steps = 0
    run_dir = out / "autoencoder"
    facts = {"from": str(s.autoencoder), "folder": str(folder), **facts}
    if not ((run_dir / "done.json").exists() and find_latest(run_dir) is not None):
        from ..core import runfolder
        cfg = stage_config(s, "autoencoder")
        step_dir = runfolder.checkpoint_dir(run_dir, facts["steps"] or 0)
        step_dir.parent.mkdir(parents=True, exist_ok=True)
        ckpt.save_checkpoint(step_dir, kind="autoencoder", config=to_dict(cfg), model=model,
                             ema=model, step=facts["steps"] or 0, metadata={"adopted": facts})
        runfolder.write_latest(run_dir, step_dir)
        (run_dir / "done.json").write_text(json.dumps({"seconds": 0.0, "adopted": facts}))
        log.info("[1/4] the autoencoder is %s's (%s steps, not trained here): the budget goes "
                 "to the prior", s.autoencoder, facts["steps"] or "?")
    return facts
