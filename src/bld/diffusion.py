"""Bernoulli diffusion over binary latents: schedules, q(z_t | z_0), posterior, losses.

No network lives here: the denoiser is passed in as an argument (as in DiT's
``gaussian_diffusion.py``). Every formula cites ``SPEC.md`` section 2.

Shapes: binary latents are float tensors of 0/1, any shape ``(B, ...)``; time ``t`` is an
integer tensor of shape ``(B,)`` in ``1..T``. The network is called as
``model(z_t, t / T, y)`` and returns one logit per bit (same shape as ``z_t``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F

Schedule = Literal["linear", "cosine", "sigmoid"]
Parameterization = Literal["flip", "z0"]
LossType = Literal["mean", "weighted", "focal"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class DiffusionConfig:
    """Settings of the Bernoulli noise process and its training loss."""

    timesteps: int = 64
    schedule: Schedule = "cosine"
    parameterization: Parameterization = "flip"
    loss_type: LossType = "mean"
    focal_gamma: float = 2.0
    aux_weight: float = 0.0  # weight of the auxiliary variational (posterior) term

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")


def retention_schedule(name: str, timesteps: int) -> torch.Tensor:
    """k_t for t = 0..T (float64, shape (T+1,)): k_0 = 1, k_T = 0, non-increasing. SPEC 2."""
    T = timesteps
    s = torch.arange(T + 1, dtype=torch.float64) / T
    if name == "linear":
        k = 1.0 - s
    elif name == "cosine":
        k = 0.5 + 0.5 * torch.cos(math.pi * s)
    elif name == "sigmoid":
        top = torch.sigmoid(torch.tensor(3.75, dtype=torch.float64))
        k = (top - torch.sigmoid(3.0 * s / 0.8)) / (top - 0.5)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of linear, cosine, sigmoid")
    k = k.clamp(0.0, 1.0)
    k[0], k[-1] = 1.0, 0.0
    return k


def sampling_timesteps(steps: int, timesteps: int) -> list[int]:
    """The S visited steps, in reverse: t_i = 1 + floor(linspace(0, 1, S) (T - 1)). SPEC 2."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (the trained T), got {steps}")
    grid = torch.linspace(0, 1, steps, dtype=torch.float64) * (timesteps - 1)
    ts = (1 + torch.floor(grid + 1e-9)).long().tolist()
    return sorted(set(ts), reverse=True)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar to minimise
    bce: torch.Tensor  # scalar, mean BCE of the z_0 prediction (for logging)
    aux: torch.Tensor  # scalar, auxiliary variational term (0 when off)
    accuracy: torch.Tensor  # scalar, share of bits of z_0 predicted right


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


class BernoulliDiffusion(torch.nn.Module):
    """The forward process q, the posterior used for sampling, and the training loss.

    A module only so that its schedule buffers follow ``.to(device)``; it has no parameters.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionConfig()
        k = retention_schedule(self.config.schedule, self.config.timesteps)
        self.register_buffer("k", k.float(), persistent=False)  # (T+1,)
        self.register_buffer("k64", k, persistent=False)

    @property
    def T(self) -> int:
        return self.config.timesteps

    # ----------------------------------------------------------------- forward process
    def k_at(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """k_t broadcast against ``like`` (B, ...)."""
        if not torch.is_tensor(t):
            t = torch.full((like.shape[0],), int(t), device=like.device, dtype=torch.long)
        return _expand(self.k.to(like.device)[t.to(like.device)], like).to(like.dtype)

    def q_probs(self, z0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """P(z_t = 1 | z_0) = k_t z_0 + (1 - k_t) / 2. SPEC 2, forward process."""
        k = self.k_at(t, z0)
        return k * z0 + (1 - k) / 2

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor | int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z_t ~ q(z_t | z_0)."""
        probs = self.q_probs(z0, t)
        u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return (u < probs).to(z0.dtype)

    # ------------------------------------------------------------ parameterisation
    def z0_logits(self, net_logits: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """Logit of P(z_0 = 1 | z_t) from the network's output. SPEC 2, flip parameterisation.

        flip: the network's logit is for "bit of z_t is wrong", so
        logit(z_0 = 1) = +l where z_t = 0 and -l where z_t = 1.
        """
        if self.config.parameterization == "flip":
            return net_logits * (1 - 2 * z_t)
        return net_logits

    # ------------------------------------------------------------------- posterior
    def posterior_logits(self, z0_logits: torch.Tensor, z_t: torch.Tensor,
                         t: torch.Tensor | int, s: torch.Tensor | int) -> torch.Tensor:
        """Logit of P(z_s = 1 | z_t) with z_0 ~ B(sigmoid(z0_logits)), for any s < t. SPEC 2.

        a1 = k_s p + (1 - k_s)/2,  a0 = k_s (1 - p) + (1 - k_s)/2
        L1 = rho z_t + (1 - rho)/2, L0 = rho (1 - z_t) + (1 - rho)/2, rho = k_t / k_s
        P(z_s = 1) = a1 L1 / (a1 L1 + a0 L0); computed in log space (logsigmoid) for stability.
        """
        k_t = self.k_at(t, z_t).float()
        k_s = self.k_at(s, z_t).float()
        if torch.any(k_s <= 0):
            raise ValueError("posterior needs s < T (k_s > 0)")
        rho = (k_t / k_s).clamp(0.0, 1.0)
        l0 = z0_logits.float()
        log_c = torch.log((1 - k_s) / 2)  # -inf where k_s = 1, handled by logaddexp
        log_a1 = torch.logaddexp(torch.log(k_s) + F.logsigmoid(l0), log_c)
        log_a0 = torch.logaddexp(torch.log(k_s) + F.logsigmoid(-l0), log_c)
        zt = z_t.float()
        L1 = rho * zt + (1 - rho) / 2
        L0 = rho * (1 - zt) + (1 - rho) / 2
        return (log_a1 + torch.log(L1)) - (log_a0 + torch.log(L0))

    def posterior(self, p: torch.Tensor, z_t: torch.Tensor,
                  t: torch.Tensor | int, s: torch.Tensor | int) -> torch.Tensor:
        """P(z_s = 1 | z_t) for P(z_0 = 1 | z_t) = p (probabilities in, probabilities out)."""
        logits = torch.logit(p.float().clamp(0, 1), eps=None)
        return torch.sigmoid(self.posterior_logits(logits, z_t, t, s))

    # ------------------------------------------------------------------------ model
    def model_logits(self, model: Denoiser, z_t: torch.Tensor, t: torch.Tensor,
                     y: torch.Tensor | None = None) -> torch.Tensor:
        """Call the network with time normalised by T (never by the sampling steps S)."""
        return model(z_t, t.to(torch.float32) / self.T, y)

    # ------------------------------------------------------------------------- loss
    def training_losses(self, model: Denoiser, z0: torch.Tensor,
                        y: torch.Tensor | None = None,
                        t: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> LossOutput:
        """Sample t ~ U{1..T}, z_t ~ q(z_t | z_0); BCE between P(z_0 = 1 | z_t) and z_0. SPEC 2."""
        B = z0.shape[0]
        if t is None:
            t = torch.randint(1, self.T + 1, (B,), device=z0.device, generator=generator)
        z_t = self.q_sample(z0, t, generator=generator)
        net = self.model_logits(model, z_t, t, y).float()
        logits = self.z0_logits(net, z_t)
        target = z0.float()
        per_bit = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        reduce_dims = tuple(range(1, z0.dim()))
        bce = per_bit.mean()
        cfg = self.config
        if cfg.loss_type == "mean":
            main = bce
        elif cfg.loss_type == "weighted":
            # weight 1 - (t - 1)/T: more weight on small t (SPEC 2, training loss)
            w = 1 - (t.float() - 1) / self.T
            main = (per_bit.mean(dim=reduce_dims) * w).mean()
        elif cfg.loss_type == "focal":
            # class-balanced focal loss on the flip targets: flipped bits weighted by
            # 1 - (share of flipped bits), kept bits by that share; (1 - p_true)^gamma focusing
            flip = (z0 != z_t).float()
            frac = flip.mean(dim=reduce_dims, keepdim=True)
            alpha = flip * (1 - frac) + (1 - flip) * frac
            p_true = torch.exp(-per_bit)
            focal = alpha * (1 - p_true).pow(cfg.focal_gamma) * per_bit
            main = focal.mean()
        else:
            raise ValueError(f"unknown loss_type {cfg.loss_type!r}")
        aux = torch.zeros((), device=z0.device)
        if cfg.aux_weight > 0:
            # auxiliary variational term: BCE between the posterior from the predicted z_0
            # and the true posterior q(z_{t-1} | z_t, z_0), one step back
            s = t - 1
            true_logits = self.posterior_logits(torch.where(target > 0.5, 30.0, -30.0), z_t, t, s)
            pred_logits = self.posterior_logits(logits, z_t, t, s)
            aux = F.binary_cross_entropy_with_logits(pred_logits, torch.sigmoid(true_logits))
            aux = aux - F.binary_cross_entropy_with_logits(true_logits, torch.sigmoid(true_logits))
        loss = main + cfg.aux_weight * aux
        with torch.no_grad():
            acc = ((logits > 0).float() == target).float().mean()
        return LossOutput(loss, bce.detach(), aux.detach(), acc)
