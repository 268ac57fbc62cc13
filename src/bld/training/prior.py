"""`PriorTask`: one training step of the Bernoulli diffusion prior on binary latents.

The latents come from a cache written by `bld encode`, or are encoded on the fly by the
frozen autoencoder. Imports only torch, bld.models (autoencoder,
denoiser, diffusion, sampling), bld.core (checkpoint, config, loading, plots) and this
package's context, batches and task modules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core import checkpoint as ckpt
from ..core.config import ConfigError, PriorTrainConfig
from ..core.loading import load_autoencoder, load_latent_cache
from ..core.plots import image_grid, save_image, write_snapshot_index
from ..models.autoencoder import AutoencoderConfig
from ..models.denoiser import PRESETS, Denoiser
from ..models.diffusion import MAX_BIT_GROUP, BernoulliDiffusion, LossOutput
from ..models.sampling import sample
from .batches import load_data
from .context import Context
from .task import Task


def resolve_prior_config(cfg: PriorTrainConfig, ae_cfg: AutoencoderConfig,
                         num_classes: int) -> PriorTrainConfig:
    """Fill bits / grid / num_classes from the autoencoder and data, the head's bit_group
    from diffusion.bit_group; apply the preset."""
    m = cfg.model
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
        w, d, h = PRESETS[cfg.preset]
        m = dataclasses.replace(m, width=w, depth=d, heads=h)
    bits, grid = ae_cfg.bits, ae_cfg.grid
    nc = num_classes if cfg.class_conditional else 0
    g = cfg.diffusion.bit_group
    if bits % g:
        ok = [d for d in range(1, MAX_BIT_GROUP + 1) if bits % d == 0]
        raise ConfigError(f"diffusion.bit_group {g} must divide the autoencoder's {bits} bits "
                          f"per position; choose one of {ok}")
    m = dataclasses.replace(m, bits=bits, grid=grid, num_classes=nc, bit_group=g)
    return dataclasses.replace(cfg, model=m, preset="")


class PriorTask(Task):
    kind, name, rate_column = "prior", "train-prior", "latents_per_s"
    curves, title = ("loss", "bit_accuracy"), "prior training"
    cfg: PriorTrainConfig

    def load_data(self, ctx: Context) -> Dataset:
        cfg = self.cfg
        if not cfg.autoencoder:
            raise ConfigError("train-prior needs the trained autoencoder: set autoencoder=PATH "
                              "(the run or checkpoint folder written by `bld train-ae`)")
        self.ae = ae = load_autoencoder(cfg.autoencoder, ctx.device)
        if cfg.latents:
            data = load_latent_cache(cfg.latents)
            if data.shape != ae.config.latent_shape:
                raise ConfigError(f"latent cache {cfg.latents} holds latents {data.shape} but the "
                                  f"autoencoder makes {ae.config.latent_shape}; re-run bld encode")
            made_by = data.metadata.get("autoencoder_id")
            if made_by is not None and made_by != ckpt.weights_fingerprint(ae.state_dict()):
                raise ConfigError(f"latent cache {cfg.latents} was made by a different autoencoder "
                                  f"than {cfg.autoencoder} (weights differ); encode with this one: "
                                  f"bld encode --autoencoder {cfg.autoencoder} --out FILE")
        else:
            data = load_data(cfg.data, "train", ae.config.image_size, ae.config.in_channels)
        self.encode_on_the_fly = not cfg.latents
        self.data, self.classes = data, tuple(getattr(data, "classes", ()))
        self.cfg = resolve_prior_config(cfg, ae.config, len(self.classes))
        return data

    def make_model(self, ctx: Context) -> torch.nn.Module:
        self.model = Denoiser(self.cfg.model).to(ctx.device)
        self.diffusion = BernoulliDiffusion(self.cfg.diffusion).to(ctx.device)
        return self.model

    def summary(self) -> str:
        m = self.cfg.model
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"prior: {n_params / 1e6:.2f}M parameters (width {m.width}, depth {m.depth}), "
                f"latents {self.ae.config.latent_shape}, {m.num_classes} classes, "
                f"{len(self.data)} training items")

    def prepare(self, batch, parts: list[slice], step: int) -> None:
        ctx, cfg, null = self.ctx, self.cfg, self.model.null_label
        items, labels = batch[0].to(ctx.device, non_blocking=True), batch[1].to(ctx.device)
        if self.encode_on_the_fly:
            with torch.no_grad(), ctx.autocast():
                z0 = torch.cat([self.ae.encode(items[rows], deterministic=True).float()
                                for rows in parts])
        else:
            z0 = items.float()
        y = None
        if null is not None:
            drop = torch.rand(labels.shape, generator=self.gen, device=ctx.device) < cfg.cond_drop
            y = torch.where(drop, torch.full_like(labels, null), labels)  # per-sample drop
        # t and z_t drawn for the whole step batch, then split, so
        # accumulating K micro-batches trains on the same draws as one batch of K times
        # the size; the balanced loss shares the whole batch's normaliser.
        self.draw = self.diffusion.draw_training(z0, generator=self.gen)
        norm = self.diffusion.weight_sum(z0, self.draw) if len(parts) > 1 else None
        self.z0, self.y = z0, y
        self.norm = None if norm is None else norm / len(parts)

    def loss(self, net: torch.nn.Module, rows: slice) -> LossOutput:
        with self.ctx.autocast():
            return self.diffusion.training_losses(
                net, self.z0[rows], None if self.y is None else self.y[rows],
                draw=self.draw.part(rows), weight_sum=self.norm)

    def row(self, losses: LossOutput) -> dict[str, Any]:
        return {"loss": losses.loss.item(), "bce": losses.bce.item(), "aux": losses.aux.item(),
                "bit_accuracy": losses.accuracy.item()}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row['loss']:.4f}", "acc": f"{row['bit_accuracy']:.3f}",
                "lat_s": f"{row[self.rate_column]:.0f}"}

    def metadata(self, final: bool) -> dict[str, Any]:
        return {"classes": list(self.classes),
                **({"autoencoder": str(self.cfg.autoencoder)} if final else {})}

    def snapshot(self, ema_model: torch.nn.Module, step: int, folder: Path) -> None:
        """Eight samples per class (of the first ten), from a fixed seed."""
        ctx, null = self.ctx, self.model.null_label
        n_rows = max(1, min(self.cfg.model.num_classes, 10))
        y = (torch.arange(n_rows, device=ctx.device).repeat_interleave(8)
             if null is not None else None)
        g = torch.Generator(ctx.device).manual_seed(1234)
        with ctx.autocast():
            z = sample(ema_model, self.diffusion, (8 * n_rows, *self.ae.config.latent_shape),
                       steps=min(self.cfg.sample_steps, self.diffusion.T), y=y,
                       guidance=self.cfg.sample_guidance if null is not None else 0.0,
                       guidance_interval=tuple(self.cfg.sample_guidance_interval),
                       temperature=self.cfg.sample_temperature,
                       null_label=null, generator=g, device=ctx.device).z0
            imgs = self.ae.decode(z).float().clamp(-1, 1)
        save_image(image_grid(imgs, nrow=8), folder / f"samples_{step:06d}.png")
        write_snapshot_index(folder, "prior: samples, one row per class")
