"""`AutoencoderTask`: one training step of the binary autoencoder, with its GAN.

The loop steps the autoencoder's optimizer; this task owns the rest of the GAN: the
discriminator (in the loss), its optimizer and step, and, with micro-batches, the GAN
term's gradient gathered apart and weighted at the end by the whole batch's adaptive weight,
as one backward of the whole batch would. Imports only torch, bld.models.autoencoder,
bld.core's config and plots, and this package's context, batches, accumulate, optim and task
modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from ..core.config import AutoencoderTrainConfig, ConfigError
from ..core.plots import image_grid, save_image, write_snapshot_index
from ..models.autoencoder import (AutoencoderLoss, AutoencoderLosses, BinaryAutoencoder,
                                  weight_from_gradients)
from .accumulate import backward_by_parts, mean_over
from .batches import load_data, skipped_images
from .context import Context, distribute, unwrap
from .optim import make_optimizer, set_lr
from .task import Task


class AutoencoderTask(Task):
    kind, name, rate_column = "autoencoder", "train-ae", "images_per_s"
    curves, title = ("loss", "l1", "bit_mean"), "autoencoder training"
    cfg: AutoencoderTrainConfig

    def load_data(self, ctx: Context) -> Dataset:
        m = self.cfg.model
        self.data = load_data(self.cfg.data, "train", m.image_size, m.in_channels)
        sample_img, _ = self.data[0]
        if (m.in_channels, m.image_size) != (sample_img.shape[0], sample_img.shape[-1]):
            raise ConfigError(
                f"model.in_channels={m.in_channels}, model.image_size={m.image_size} do not match "
                f"the data ({sample_img.shape[0]} channels, {sample_img.shape[-1]} px); set them "
                f"to match or set data.image_size / data.channels")
        return self.data

    def make_model(self, ctx: Context) -> torch.nn.Module:
        self.model = BinaryAutoencoder(self.cfg.model).to(ctx.device)
        self.loss_fn = AutoencoderLoss(self.cfg.loss, self.cfg.model.in_channels).to(ctx.device)
        self.disc = self.loss_fn.discriminator  # DDP-wrapped under DDP (in start)
        self.opt_d = (make_optimizer(self.disc.parameters(), self.cfg.optim)
                      if self.disc is not None else None)
        return self.model

    def start(self, ctx: Context, gen: torch.Generator, state: dict[str, Any] | None) -> None:
        super().start(ctx, gen, state)
        if state is not None and self.opt_d is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["optimizer_d"])
        if self.disc is not None:
            self.disc = self.loss_fn.discriminator = distribute(self.disc, ctx)
        self.params = list(self.model.parameters())
        self.fixed = torch.stack([self.data[i][0] for i in range(min(16, len(self.data)))]
                                 ).to(ctx.device)  # the snapshots' images

    def summary(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"autoencoder: {n_params / 1e6:.2f}M parameters, latent "
                f"{self.cfg.model.latent_shape} per image, {len(self.data)} training images "
                f"({skipped_images(self.data)} unreadable, skipped)")

    def prepare(self, batch, parts: list[slice], step: int) -> None:
        self.x = batch[0].to(self.ctx.device, non_blocking=True)
        self.parts, self.step = parts, step
        self.gan = self.loss_fn.gan_active(step)
        # with micro-batches the GAN term's gradient is gathered apart and weighted at the
        # end by the whole batch's adaptive weight (one more backward pass per micro-batch)
        self.gan_apart = self.gan and len(parts) > 1
        self.gan_grads = [torch.zeros_like(p) for p in self.params] if self.gan_apart else []
        self.probs: list[torch.Tensor] = []
        self.recons: list[torch.Tensor] = []

    def loss(self, net: torch.nn.Module, rows: slice) -> AutoencoderLosses:
        x = self.x[rows]
        with self.ctx.autocast():
            out = net(x, generator=self.gen)  # bits as model.train_bits says
        losses = self.loss_fn.generator_loss(x, out, self.step, self.model.last_layer,
                                             adaptive=not self.gan_apart)
        if self.gan_apart:
            grads = torch.autograd.grad(losses.g_loss / len(self.parts), self.params,
                                        retain_graph=True, allow_unused=True)
            for acc, g in zip(self.gan_grads, grads):
                if g is not None:
                    acc.add_(g)
        self.probs.append(out.probs.detach())
        self.recons.append(out.recon.detach())
        return losses

    def finish(self, losses: AutoencoderLosses) -> AutoencoderLosses:
        if not self.gan_apart:
            return losses
        return add_gan_gradients(losses, self.params, self.gan_grads, self.model.last_layer,
                                 self.cfg.loss.disc_weight, self.ctx)

    def after_step(self, step: int, lr: float, stepped: bool, guard) -> None:
        """The discriminator's step, on the same micro-batches, once the GAN is on."""
        self.d_loss = torch.zeros(())
        if not (stepped and self.opt_d is not None and self.gan):
            return
        set_lr(self.opt_d, lr)
        self.opt_d.zero_grad(set_to_none=True)

        def d_loss(k: int, rows: slice) -> torch.Tensor:
            with self.ctx.autocast():
                return self.loss_fn.discriminator_loss(self.x[rows], self.recons[k])

        self.d_loss = mean_over(backward_by_parts(self.disc, self.parts, d_loss))
        d_norm = torch.nn.utils.get_total_norm(
            [q.grad for q in self.disc.parameters() if q.grad is not None])
        if guard.ok(step, self.d_loss, d_norm, what="discriminator loss or gradient"):
            self.opt_d.step()

    def row(self, losses: AutoencoderLosses) -> dict[str, Any]:
        with torch.no_grad():
            usage = torch.cat(self.probs).float().mean(dim=(0, 2, 3))  # (C,) per bit
        return {"loss": losses.loss.item(), "l1": losses.l1.item(), "mse": losses.mse.item(),
                "g_loss": losses.g_loss.item(), "d_weight": float(losses.d_weight),
                "d_loss": self.d_loss.item(), "bit_mean": usage.mean().item(),
                "bit_usage_min": usage.min().item()}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row['loss']:.4f}", "l1": f"{row['l1']:.4f}",
                "img_s": f"{row[self.rate_column]:.0f}"}

    def state(self) -> dict[str, Any]:
        if self.opt_d is None:
            return {}
        return {"discriminator": unwrap(self.disc).state_dict(),
                "optimizer_d": self.opt_d.state_dict()}

    def metadata(self, final: bool) -> dict[str, Any]:
        if not final:
            return {}
        return {"dataset": self.cfg.data.source,
                "classes": list(getattr(self.data, "classes", ())),
                "skipped_images": skipped_images(self.data)}

    def snapshot(self, ema_model: torch.nn.Module, step: int, folder: Path) -> None:
        with torch.no_grad():
            rec = ema_model(self.fixed, deterministic=True).recon.clamp(-1, 1)
        save_image(image_grid(torch.cat([self.fixed, rec]), nrow=len(self.fixed)),
                   folder / f"recon_{step:06d}.png")
        write_snapshot_index(folder, "autoencoder: training images above their reconstructions")


def add_gan_gradients(losses: AutoencoderLosses, params: list[torch.nn.Parameter],
                      gan_grads: list[torch.Tensor], last_layer: torch.Tensor,
                      disc_weight: float, ctx: Context) -> AutoencoderLosses:
    """Gradient accumulation with the GAN on: ``.grad`` holds the (all-reduced) gradient of
    the reconstruction loss and ``gan_grads`` that of the GAN term (this process's; they are
    averaged over the processes here). Adds the GAN term with the adaptive weight of the
    whole step batch, as one backward of the whole batch would; returns the logged losses."""
    if ctx.distributed:
        for g in gan_grads:
            dist.all_reduce(g)
            g.div_(ctx.world)
    i = next(j for j, p in enumerate(params) if p is last_layer)
    weight = weight_from_gradients(params[i].grad, gan_grads[i]) * disc_weight
    for p, g in zip(params, gan_grads):
        if p.grad is None:
            p.grad = weight * g
        else:
            p.grad.add_(weight * g)
    return losses._replace(loss=losses.loss + weight * losses.g_loss, d_weight=weight)
