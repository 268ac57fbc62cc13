"""Configuration: typed dataclasses built from dicts / YAML (unknown keys are errors), the
presets, ``--set`` overrides, and the training configurations a run's checkpoints carry.

The run configurations (`AutoencoderTrainConfig`, `PriorTrainConfig`) live here, below
both training and inference, because loading a trained model reads the one its checkpoint
holds and must not import the training code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ..models.autoencoder import AutoencoderConfig, AutoencoderLossConfig
from ..models.denoiser import DenoiserConfig
from ..models.diffusion import DiffusionConfig
from ..models.sampling import check_guidance_interval, check_student

T = TypeVar("T")

PRECISIONS = ("auto", "fp32", "bf16")  # the one precision setting; bld.core.device applies it


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the valid choices."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise a ConfigError naming valid ones."""
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists, so it is JSON/YAML-safe)."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return conv(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.width=256' -> (['model', 'width'], 256); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: the key must look like section.name, e.g. optim.steps")
    try:
        return path, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(e)}); "
                          "quote strings, e.g. key='[x'") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested ``data`` with 'a.b=value' overrides applied."""
    import copy
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section")
        node[path[-1]] = value
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """'<problem> at line L, column C' of a YAML error, on one line."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}; fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({e}); pass a YAML text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def preset_names(kind: str) -> list[str]:
    folder = resources.files("bld") / "configs" / kind
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config_dict(kind: str, config: str | None, overrides: list[str]) -> dict:
    """A preset name or a YAML path, with key=value overrides applied."""
    if config is None:
        config = "fashion-mnist"
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists():
        data = load_yaml(path)
    else:
        names = preset_names(kind)
        if config not in names:
            raise ConfigError(f"--config {config!r} is neither a YAML file nor a {kind} preset; "
                              f"presets: {names}")
        data = load_yaml(resources.files("bld") / "configs" / kind / f"{config}.yaml")
    return apply_overrides(data, overrides)


# ------------------------------------------------------------ training configurations

@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # fashion-mnist | emoji-twitter | emoji-google | a folder
    # of images | a folder of shards written by `bld shard`
    data_dir: str = ""  # where the dataset lives, when not in its default place
    image_size: int = 0  # 0 = the dataset's own (28 for Fashion-MNIST, 64 for emoji)
    channels: int = 0  # 0 = the dataset's own
    limit: int = 0  # use only the first N training images (0 = all)
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self, image_size=(0, None), channels=(0, 4), limit=(0, None), num_workers=(0, None))


@dataclass
class OptimConfig:
    steps: int = 2000  # optimizer steps
    batch_size: int = 64  # per process and micro-batch
    # micro-batches per optimizer step (gradient accumulation): the step's gradient is the
    # whole batch's (the GAN's adaptive weight too); only the autoencoder's batch-statistic
    # regulariser loss.entropy_weight is taken per micro-batch, as it is per process in DDP
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this
    warmup: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # adamw: AdamW for every weight. muon: torch.optim.Muon (momentum, then the update
    # orthogonalised by Newton-Schulz) for the hidden 2-D weight matrices, with its lr scaled
    # to AdamW's update size (adjust_lr_fn="match_rms_adamw", so `lr` keeps its meaning), and
    # AdamW for the rest (embeddings, the output head, biases, norms, convolutions).
    # Measured against AdamW at equal seconds in benchmarks/learn_faster.py.
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_momentum: float = 0.95

    def __post_init__(self) -> None:
        _check(self, steps=(1, None), batch_size=(1, None), grad_accum=(1, None), warmup=(0, None),
               weight_decay=(0, None), min_lr_ratio=(0, 1), beta1=(0, 1), beta2=(0, 1),
               ema_decay=(0, 1), muon_momentum=(0, 1))
        _check(self, strict=True, lr=(0, None), grad_clip=(0, None))

    @property
    def step_batch(self) -> int:
        """Images per process and optimizer step: batch_size x grad_accum."""
        return self.batch_size * self.grad_accum


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # auto | fp32 | bf16: bf16 autocast only where the device runs it natively and faster
    # (bld.core.device); resolved once at start and written into the checkpoint metadata
    precision: str = "auto"
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    log_every: int = 25
    sample_every: int = 500  # 0 = only at the end
    ckpt_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    max_bad_steps: int = 20  # stop after this many non-finite steps in a row (each is skipped)
    # the most wall seconds the run may train (0: no limit): the final step count is
    # re-estimated from the measured rate as it runs (bld.training.timebox), at most
    # optim.steps, and the lr schedule follows it
    max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        check_precision(self.precision)
        _check(self, threads=(0, None), log_every=(1, None), sample_every=(0, None),
               ckpt_every=(0, None), keep_checkpoints=(1, None), max_bad_steps=(1, None),
               max_seconds=(0, None))


@dataclass
class AutoencoderTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class StudentConfig:
    """A distilled student (docs/distill.md, `bld distill`): what it is and what it learnt
    from. ``design`` empty: the prior is a diffusion prior, not a student."""

    design: str = ""  # "" | coupled | mixture
    steps: int = 1  # K, network evaluations per sample (1 or 2)
    teacher: str = ""  # the teacher's model name or run folder
    bits: str = "draw"  # how sampling reads the logits: draw | threshold
    pairs: int = 0  # teacher samples cached for training
    pair_batch: int = 256  # teacher samples per generation chunk
    mixture: int = 8  # M: z_T draws per teacher sample (design mixture)
    teacher_steps: int = 16  # the teacher's sampling steps that made the pairs
    # the teacher's sampler for the pairs: "" = the design's own (coupled for coupled,
    # plain for mixture); the mixture may also learn from coupled pairs
    pair_sampler: str = ""
    pair_dir: str = ""  # where the pairs are cached ("" = the run's pairs/); runs may share one
    # the coupled pairs' k-th draw uses frac(u + k * coupling_shift) (sample's noise_shift):
    # 0 = the same u at every step, which makes the teacher's chain stick to z_T (measured:
    # docs/distill.md); the default, the golden ratio, rotates u from step to step
    coupling_shift: float = 0.6180339887498949

    def __post_init__(self) -> None:
        if self.design:
            check_student(self.design, self.steps, self.bits)
        if self.pair_sampler not in ("", "coupled", "plain"):
            raise ValueError(f"pair_sampler must be coupled or plain (or empty: the design's "
                             f"own), got {self.pair_sampler!r}")
        _check(self, pairs=(0, None), pair_batch=(1, None), mixture=(1, None),
               teacher_steps=(2, None), coupling_shift=(0, 1))


@dataclass
class PriorTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: str = ""  # checkpoint (or run) folder of the trained autoencoder
    latents: str = ""  # latent cache from `bld encode` (empty: encode on the fly)
    preset: str = ""  # a denoiser size preset; sets width/depth/heads
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    class_conditional: bool = True
    cond_drop: float = 0.1  # per-sample label dropout for classifier-free guidance
    sample_steps: int = 16
    sample_guidance: float = 1.0
    # guidance applies at steps with lo <= t / T <= hi only (bld.models.sampling); (0, 1): every step
    sample_guidance_interval: tuple[float, float] = (0.0, 1.0)
    # tau of bld.models.sampling: the evidence-free logit is divided by it at every step
    sample_temperature: float = 1.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup=200,
                                                                  weight_decay=0.0))
    run: RunConfig = field(default_factory=RunConfig)
    # a distilled student's settings (`bld distill`); empty design: a diffusion prior
    student: StudentConfig = field(default_factory=StudentConfig)

    def __post_init__(self) -> None:
        # a student samples in its own K = 1 or 2 steps; a diffusion prior in 2..T
        _check(self, cond_drop=(0, 1), sample_guidance=(0, None),
               sample_steps=(1 if self.student.design else 2, None))
        _check(self, strict=True, sample_temperature=(0, None))
        check_guidance_interval(self.sample_guidance_interval, "sample_guidance_interval")
        if self.model.bit_group not in (1, self.diffusion.bit_group):
            raise ValueError(f"model.bit_group {self.model.bit_group} differs from "
                             f"diffusion.bit_group {self.diffusion.bit_group}; set "
                             "diffusion.bit_group only (the head follows it)")


def _check(obj: Any, strict: bool = False, **ranges: tuple[float, float | None]) -> None:
    """Raise ValueError naming the first field outside its [low, high] range (low excluded
    when ``strict``; high None = no upper bound). NaN is outside every range."""
    for name, (low, high) in ranges.items():
        v = getattr(obj, name)
        ok = (v > low if strict else v >= low) and (high is None or v <= high) and \
            math.isfinite(v)
        if not ok:  # also catches NaN
            bound = (f"> {low}" if strict else f">= {low}") + (f" and <= {high}" if high is not None else "")
            raise ValueError(f"{name} must be {bound}, got {v}")


CONFIG_KINDS = {"autoencoder": AutoencoderTrainConfig, "prior": PriorTrainConfig}


# options removed from the models, with the value that meant "off"
REMOVED_OPTIONS = {"self_condition": False, "refine_channels": 0, "train_flip": 0.0}


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A config written by an earlier bld, in today's keys: ``run.bf16: true / false`` (before
    ``run.precision``) becomes ``run.precision: bf16 / fp32``, what those runs computed in; a
    prior's config from before ``bit_group`` gets ``bit_group: 1`` (one logit per bit, all
    there was) in ``diffusion`` and ``model``, so that such a run still resumes, and one from
    before distilled students the default ``student`` section (a diffusion prior). The options
    removed after they were measured with no gain (``model.self_condition``,
    ``model.refine_channels``, ``model.train_flip``) are dropped where they are off, and a
    config that turned one on is refused: its weights need code this version lacks."""
    model = data.get("model")
    if isinstance(model, dict) and REMOVED_OPTIONS.keys() & model.keys():
        on = [k for k, off in REMOVED_OPTIONS.items() if k in model and model[k] != off]
        if on:
            raise ConfigError(
                f"this run was made with model.{', model.'.join(on)}, an option removed from bld "
                "after it was measured with no gain (docs/training-options.md); load it with "
                "the bld version that trained it")
        data = {**data, "model": {k: v for k, v in model.items() if k not in REMOVED_OPTIONS}}
    run = data.get("run")
    if isinstance(run, dict) and "bf16" in run:
        run = {k: v for k, v in run.items() if k != "bf16"}
        if "precision" not in run:
            run["precision"] = "bf16" if data["run"]["bf16"] else "fp32"
        data = {**data, "run": run}
    diffusion, model = data.get("diffusion"), data.get("model")
    if (isinstance(diffusion, dict) and isinstance(model, dict) and "timesteps" in diffusion
            and "bit_group" not in diffusion and "bit_group" not in model):
        data = {**data, "diffusion": {**diffusion, "bit_group": 1},
                "model": {**model, "bit_group": 1}}
    if isinstance(data.get("diffusion"), dict) and "student" not in data:
        # a prior's config from before distilled students: a diffusion prior, so that such
        # a run still resumes without a config difference
        data = {**data, "student": to_dict(StudentConfig())}
    return data


def config_from_dict(kind: str, data: dict[str, Any]):
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; choose one of {sorted(CONFIG_KINDS)}")
    return from_dict(CONFIG_KINDS[kind], upgrade_config_dict(data))
