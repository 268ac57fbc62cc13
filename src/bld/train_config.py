"""The training configurations: what `bld train-ae` / `bld train-prior` read from YAML.

They live apart from the training loops so that loading a trained model (its checkpoint
holds one of these) never imports the training code.

Imports bld's autoencoder, config, denoiser, diffusion, precision and sampling modules (for
the models' own configurations and the sampler's settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .autoencoder import AutoencoderConfig, AutoencoderLossConfig
from .config import ConfigError, from_dict
from .denoiser import DenoiserConfig
from .diffusion import DiffusionConfig
from .precision import check_precision
from .sampling import check_guidance_interval


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

    def __post_init__(self) -> None:
        _check(self, steps=(1, None), batch_size=(1, None), grad_accum=(1, None), warmup=(0, None),
               weight_decay=(0, None), min_lr_ratio=(0, 1), beta1=(0, 1), beta2=(0, 1),
               ema_decay=(0, 1))
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
    # (bld.precision); resolved once at start and written into the checkpoint metadata
    precision: str = "auto"
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    log_every: int = 25
    sample_every: int = 500  # 0 = only at the end
    ckpt_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    max_bad_steps: int = 20  # stop after this many non-finite steps in a row (each is skipped)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        check_precision(self.precision)
        _check(self, threads=(0, None), log_every=(1, None), sample_every=(0, None),
               ckpt_every=(0, None), keep_checkpoints=(1, None), max_bad_steps=(1, None))


@dataclass
class AutoencoderTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


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
    # guidance applies at steps with lo <= t / T <= hi only (bld.sampling); (0, 1): every step
    sample_guidance_interval: tuple[float, float] = (0.0, 1.0)
    # tau of bld.sampling: the evidence-free logit is divided by it at every step
    sample_temperature: float = 1.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup=200,
                                                                  weight_decay=0.0))
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(self, cond_drop=(0, 1), sample_steps=(2, None), sample_guidance=(0, None))
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


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A config written by an earlier bld, in today's keys: ``run.bf16: true / false`` (before
    ``run.precision``) becomes ``run.precision: bf16 / fp32``, what those runs computed in; a
    prior's config from before ``bit_group`` gets ``bit_group: 1`` (one logit per bit, all
    there was) in ``diffusion`` and ``model``, so that such a run still resumes."""
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
    return data


def config_from_dict(kind: str, data: dict[str, Any]):
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; choose one of {sorted(CONFIG_KINDS)}")
    return from_dict(CONFIG_KINDS[kind], upgrade_config_dict(data))
