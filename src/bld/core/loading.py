"""Loading trained models and latent caches, for sampling, inpainting and evaluation.

Nothing here imports the training loops (`bld.training.loop`): a trained run is read through
`bld.core.checkpoint` and the configuration dataclasses of `bld.core.config`.

Imports bld.models (autoencoder, denoiser, diffusion, packing) and bld.core's checkpoint
and config modules.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..models.autoencoder import BinaryAutoencoder
from ..models.denoiser import Denoiser
from ..models.diffusion import BernoulliDiffusion
from ..models.packing import unpack_bits
from . import checkpoint as ckpt
from .config import AutoencoderTrainConfig, PriorTrainConfig, config_from_dict


class LatentDataset(Dataset):
    """Packed binary latents (N, bytes) uint8 + labels, unpacked per item."""

    def __init__(self, packed: torch.Tensor, labels: torch.Tensor, shape: tuple[int, ...],
                 classes: tuple[str, ...] = ()) -> None:
        self.packed, self.labels, self.shape = packed, labels, tuple(shape)
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return self.packed.shape[0]

    def __getitem__(self, i: int):
        return unpack_bits(self.packed[i:i + 1], self.shape)[0], int(self.labels[i])


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu",
                     use_ema: bool = True) -> BinaryAutoencoder:
    """A trained autoencoder (EMA weights by default), in eval mode."""
    return load_autoencoder_with_config(path, device, use_ema)[0]


def load_autoencoder_with_config(path: str | Path, device: torch.device | str = "cpu",
                                 use_ema: bool = True
                                 ) -> tuple[BinaryAutoencoder, AutoencoderTrainConfig]:
    """A trained autoencoder and the training configuration it was made with."""
    ck = ckpt.load_checkpoint(path, kind="autoencoder", map_location=device)
    cfg = config_from_dict("autoencoder", ck.config)
    model = BinaryAutoencoder(cfg.model)
    state = ck.ema_state if (use_ema and ck.ema_state is not None) else ck.model_state
    ckpt.load_state_strict(model, state, "autoencoder")
    return model.to(device).eval(), cfg


@dataclass
class LoadedPrior:
    model: Denoiser
    diffusion: BernoulliDiffusion
    config: PriorTrainConfig
    classes: tuple[str, ...]
    path: Path


def load_prior(path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True
               ) -> LoadedPrior:
    """A trained prior (EMA weights by default) with its diffusion process, in eval mode."""
    ck = ckpt.load_checkpoint(path, kind="prior", map_location=device)
    cfg = config_from_dict("prior", ck.config)
    model = Denoiser(cfg.model)
    state = ck.ema_state if (use_ema and ck.ema_state is not None) else ck.model_state
    ckpt.load_state_strict(model, state, "prior")
    diffusion = BernoulliDiffusion(cfg.diffusion).to(device)
    return LoadedPrior(model.to(device).eval(), diffusion, cfg,
                       tuple(ck.metadata.get("classes", ())), ck.path)


def load_latent_cache(path: str | Path) -> LatentDataset:
    """A latent cache written by `bld encode` (packed bits, labels, shape in its metadata).

    A file that is not one, is truncated, or whose parts disagree (latent count vs label count,
    bytes per latent vs the shape) is a ValueError naming the file. ``.metadata`` holds the
    cache's metadata, including the ``autoencoder_id`` of the autoencoder that made it.
    """
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"latent cache {path} does not exist; make it with `bld encode`")
    remake = "make it again with `bld encode`"
    try:
        with safe_open(str(path), "pt") as f:  # one read: metadata and tensors
            meta = f.metadata() or {}
            if meta.get("format") != "bld-latents":
                raise ValueError(f"{path} is not a bld latent cache (made by `bld encode`); "
                                 "pass the file `bld encode --out` wrote")
            missing = {"packed", "labels"} - set(f.keys())
            if missing:
                raise ValueError(f"latent cache {path} lacks {sorted(missing)}; {remake}")
            packed, labels = f.get_tensor("packed"), f.get_tensor("labels")
        shape = tuple(json.loads(meta["shape"]))
        classes = tuple(json.loads(meta.get("classes", "[]")))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read latent cache {path} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); it is damaged or not a "
                         f"bld latent cache: {remake}") from None
    per_item = (math.prod(shape) + 7) // 8
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != per_item:
        raise ValueError(f"latent cache {path} holds packed bits {tuple(packed.shape)} "
                         f"{packed.dtype}, not (N, {per_item}) uint8 for latents {shape}; {remake}")
    if labels.dim() != 1 or labels.shape[0] != packed.shape[0]:
        raise ValueError(f"latent cache {path} holds {packed.shape[0]} latents but "
                         f"{labels.shape[0] if labels.dim() else 0} labels; {remake}")
    if classes and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise ValueError(f"latent cache {path} has labels outside 0..{len(classes) - 1}; {remake}")
    ds = LatentDataset(packed, labels, shape, classes)
    ds.metadata = dict(meta)
    return ds
