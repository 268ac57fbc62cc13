"""Bernoulli diffusion over binary latents: schedules, q(z_t | z_0), posterior, losses.

No network lives here: the denoiser is passed in as an argument (as in DiT's
``gaussian_diffusion.py``). Every formula cites docs/method.md §2.

Shapes: binary latents are float tensors of 0/1, any shape ``(B, ...)``; time ``t`` is an
integer tensor of shape ``(B,)`` in ``1..T``. The network is called as
``model(z_t, t / T, y)`` and returns one logit per bit (same shape as ``z_t``), or, with
``bit_group`` g > 1 (the grouped head, see ``DiffusionConfig``), 2^g logits per group of g
consecutive bits of dimension 1: ``(B, C, ...)`` latents give ``(B, (C / g) 2^g, ...)``.

The grouped head's methods are in `bld.models.grouped` (a mixin of `BernoulliDiffusion`).
Imports bld.models.grouped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F

from .grouped import GroupedHead, _expand

Schedule = Literal["linear", "cosine", "sigmoid"]
Parameterization = Literal["flip", "z0"]
LossType = Literal["mean", "weighted", "balanced", "focal"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

MAX_BIT_GROUP = 8  # 2^8 = 256 logits per group at most


def group_outputs(bits: int, bit_group: int) -> int:
    """Network outputs per latent position for ``bits`` bits in groups of ``bit_group``:
    ``bits`` for the per-bit head (g = 1), (bits / g) 2^g for the grouped head."""
    if bit_group == 1:
        return bits
    if bits % bit_group:
        raise ValueError(f"bit_group {bit_group} must divide the {bits} bits per position; "
                         f"choose a divisor of {bits} in 2..{MAX_BIT_GROUP}, or 1")
    return bits // bit_group * 2 ** bit_group


@dataclass
class DiffusionConfig:
    """Settings of the Bernoulli noise process and its training loss."""

    timesteps: int = 64
    schedule: Schedule = "cosine"
    # time shift of the schedule toward noise: the schedule is read at
    # s' = shift s / (1 + (shift - 1) s), s = t / T, so shift > 1 spends more of the trained
    # and the sampled steps at high noise, where a sample's layout is chosen (the resolution
    # shift of Esser et al. 2024, arXiv 2403.03206); 1 = the schedule as docs/method.md §2 gives it
    schedule_shift: float = 1.0
    parameterization: Parameterization = "flip"
    loss_type: LossType = "mean"
    focal_gamma: float = 2.0
    aux_weight: float = 0.0  # weight of the auxiliary variational (posterior) term
    # the network's head: 1 = one logit per bit (bits independent given z_t); g in 2..8 =
    # the C bits of a position in C / g consecutive groups of g bits, each predicted by a
    # categorical over its 2^g patterns (of the flip z_0 XOR z_t, or of z_0 with
    # parameterization z0), so the bits of a group may be correlated given z_t
    bit_group: int = 1

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if not self.schedule_shift > 0:
            raise ValueError(f"schedule_shift must be > 0 (1 = no shift, > 1 toward noise), "
                             f"got {self.schedule_shift}")
        if not 1 <= self.bit_group <= MAX_BIT_GROUP:
            raise ValueError(f"bit_group must be in 1..{MAX_BIT_GROUP} (1 = one logit per bit, "
                             f"g = a categorical over the 2^g patterns of each g bits), "
                             f"got {self.bit_group}")
        if self.bit_group > 1 and self.loss_type not in ("mean", "weighted"):
            raise ValueError(f"bit_group {self.bit_group} (the grouped head) needs loss_type "
                             f"mean or weighted, got {self.loss_type!r}; set "
                             "diffusion.loss_type=mean")
        if self.bit_group > 1 and self.aux_weight > 0:
            raise ValueError(f"aux_weight {self.aux_weight:g} needs bit_group 1 (the auxiliary "
                             "term is per bit); set diffusion.aux_weight=0 with the grouped head")


def retention_schedule(name: str, timesteps: int, shift: float = 1.0) -> torch.Tensor:
    """k_t for t = 0..T (float64, shape (T+1,)): k_0 = 1, k_T = 0, non-increasing. method.md §2.

    ``shift`` != 1 reads the schedule at s' = shift s / (1 + (shift - 1) s) instead of s = t / T
    (``DiffusionConfig.schedule_shift``).
    """
    if not shift > 0:
        raise ValueError(f"schedule shift must be > 0 (1 = none), got {shift}")
    T = timesteps
    s = torch.arange(T + 1, dtype=torch.float64) / T
    if shift != 1.0:
        s = shift * s / (1 + (shift - 1) * s)
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
    """The S visited steps, in reverse: t_i = 1 + floor(linspace(0, 1, S) (T - 1)). method.md §2."""
    if not 2 <= steps <= timesteps:
        raise ValueError(f"steps must be in 2..{timesteps} (the trained T), got {steps}: "
                         "one step would visit only t = 1 and never denoise from t = T")
    grid = torch.linspace(0, 1, steps, dtype=torch.float64) * (timesteps - 1)
    ts = (1 + torch.floor(grid + 1e-9)).long().tolist()
    return sorted(set(ts), reverse=True)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar to minimise
    # scalar, mean BCE of the z_0 prediction (for logging); with the grouped head the
    # cross-entropy of the groups' patterns per bit
    bce: torch.Tensor
    aux: torch.Tensor  # scalar, auxiliary variational term (0 when off)
    accuracy: torch.Tensor  # scalar, share of bits of z_0 predicted right


class TrainingDraw(NamedTuple):
    """The random part of a training loss: times t (B,) and noisy bits z_t (B, C, H, W)."""
    t: torch.Tensor
    z_t: torch.Tensor

    def part(self, rows: slice) -> "TrainingDraw":
        """The draws of the samples ``rows`` (a micro-batch)."""
        return TrainingDraw(self.t[rows], self.z_t[rows])



class BernoulliDiffusion(GroupedHead, torch.nn.Module):
    """The forward process q, the posterior used for sampling, and the training loss.

    A module only so that its schedule buffers follow ``.to(device)``; it has no parameters.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionConfig()
        k = retention_schedule(self.config.schedule, self.config.timesteps,
                               self.config.schedule_shift)
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
        """P(z_t = 1 | z_0) = k_t z_0 + (1 - k_t) / 2. docs/method.md §2, forward process."""
        k = self.k_at(t, z0)
        return k * z0 + (1 - k) / 2

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor | int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z_t ~ q(z_t | z_0)."""
        probs = self.q_probs(z0, t)
        u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return (u < probs).to(z0.dtype)

    # ------------------------------------------------------------ parameterisation
    @property
    def evidence_free_output(self) -> bool:
        """True when the trained network's logit is l' (z_t's evidence already left out).

        The class-balanced losses ("balanced", and approximately "focal") weight flipped bits
        by 1 - r_t and kept bits by r_t; their minimiser is l', not logit P(z_0 = 1 | z_t).
        docs/method.md §2, training loss.
        """
        return self.config.loss_type in ("balanced", "focal")

    def evidence(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Log-odds for z_0 = 1 that z_t alone carries: (2 z_t - 1) log((1 + k_t)/(1 - k_t)).

        This is log q(z_t | z_0 = 1) - log q(z_t | z_0 = 0); it is 0 at t = T (k_T = 0).
        Computed as 2 atanh(k_t) in float64. Needs t >= 1 (k_t < 1).
        """
        if not torch.is_tensor(t):
            t = torch.full((z_t.shape[0],), int(t), dtype=torch.long)
        k = self.k64.to(z_t.device)[t.to(z_t.device)]
        if torch.any(k >= 1):
            raise ValueError("evidence needs t >= 1 (k_t < 1)")
        ev = _expand((2 * torch.atanh(k)).float(), z_t)
        return (2 * z_t.float() - 1) * ev

    def z0_logits(self, net_logits: torch.Tensor, z_t: torch.Tensor,
                  t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Logit of P(z_0 = 1 | z_t) from the network's output. method.md §2, flip parameterisation.

        flip: the network's logit is for "bit of z_t is wrong", so
        logit(z_0 = 1) = +l where z_t = 0 and -l where z_t = 1. A network trained with a
        class-balanced loss outputs l' (no evidence of z_t); its evidence is added back
        here, so callers always get the full posterior logit (``t`` is needed then).

        With the grouped head (bit_group > 1) these are the per-bit marginals of the
        network's categorical (``marginal_logits``), shape of ``z_t``: what a caller that
        reads one probability per bit needs. The sampler steps with the joint instead.
        """
        if self.grouped:
            return self.marginal_logits(self.group_logits(net_logits, z_t))
        out = net_logits * (1 - 2 * z_t) if self.config.parameterization == "flip" else net_logits
        if self.evidence_free_output:
            if t is None:
                raise ValueError(f"loss_type {self.config.loss_type!r} needs t to add the "
                                 "evidence of z_t back")
            out = out + self.evidence(z_t, t)
        return out

    # ------------------------------------------------------------------- posterior
    def posterior_logits(self, z0_logits: torch.Tensor, z_t: torch.Tensor,
                         t: torch.Tensor | int, s: torch.Tensor | int,
                         evidence_weight: float = 1.0, temperature: float = 1.0
                         ) -> torch.Tensor:
        """Logit of P(z_s = 1 | z_t) for any s < t, given logit P(z_0 = 1 | z_t). method.md §2.

        The exact step (``evidence_weight`` = 1) first removes the evidence of z_t from the
        network's posterior, then treats the result as a prior on z_0:

            l' = (logit p - lambda (2 z_t - 1) log((1 + k_t)/(1 - k_t))) / temperature
            a1 = k_s p' + (1 - k_s)/2,      a0 = k_s (1 - p') + (1 - k_s)/2,   p' = sigmoid(l')
            L1 = rho z_t + (1 - rho)/2,     L0 = rho (1 - z_t) + (1 - rho)/2,  rho = k_t / k_s
            P(z_s = 1) = a1 L1 / (a1 L1 + a0 L0)

        lambda (``evidence_weight``) = 0 is the original code's product, which counts z_t's
        evidence twice: bits keep their value in z_t more often than in the exact step (a
        lower-noise sampler variant, docs/method.md §2 "Evidence weight"). Computed in log space.
        """
        k_t = self.k_at(t, z_t).float()
        k_s = self.k_at(s, z_t).float()
        if torch.any(k_s <= 0):
            raise ValueError("posterior needs s < T (k_s > 0)")
        if torch.any(k_s < k_t):
            raise ValueError("posterior needs s < t")
        rho = (k_t / k_s).clamp(0.0, 1.0)
        l0 = z0_logits.float()
        if evidence_weight != 0:
            l0 = l0 - evidence_weight * self.evidence(z_t, t)  # l': divide by q(z_t | z_0)
        if temperature != 1.0:
            l0 = l0 / temperature
        log_c = torch.log((1 - k_s) / 2)  # -inf where k_s = 1, handled by logaddexp
        log_a1 = torch.logaddexp(torch.log(k_s) + F.logsigmoid(l0), log_c)
        log_a0 = torch.logaddexp(torch.log(k_s) + F.logsigmoid(-l0), log_c)
        zt = z_t.float()
        L1 = rho * zt + (1 - rho) / 2
        L0 = rho * (1 - zt) + (1 - rho) / 2
        return (log_a1 + torch.log(L1)) - (log_a0 + torch.log(L0))

    def posterior(self, p: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int,
                  s: torch.Tensor | int, evidence_weight: float = 1.0) -> torch.Tensor:
        """P(z_s = 1 | z_t) for P(z_0 = 1 | z_t) = p (probabilities in, probabilities out).

        The exact step by default; see ``posterior_logits``.
        """
        logits = torch.logit(p.float().clamp(0, 1), eps=None)
        return torch.sigmoid(self.posterior_logits(logits, z_t, t, s, evidence_weight))

    # ------------------------------------------------------------------------ model
    def model_logits(self, model: Denoiser, z_t: torch.Tensor, t: torch.Tensor,
                     y: torch.Tensor | None = None) -> torch.Tensor:
        """Call the network with time normalised by T (never by the sampling steps S)."""
        return model(z_t, t.to(torch.float32) / self.T, y)

    # ------------------------------------------------------------------------- loss
    def draw_training(self, z0: torch.Tensor, t: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> TrainingDraw:
        """The random part of a training loss for the batch z0: t ~ U{1..T} (unless given)
        and z_t ~ q(z_t | z_0). Drawn for a whole batch at once, so that a batch split into micro-batches (gradient
        accumulation) is trained on the same draws as the whole batch."""
        B = z0.shape[0]
        if t is None:
            t = torch.randint(1, self.T + 1, (B,), device=z0.device, generator=generator)
        z_t = self.q_sample(z0, t, generator=generator)
        return TrainingDraw(t, z_t)

    def balanced_weights(self, z0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor
                         ) -> torch.Tensor:
        """Per-bit weights of the balanced loss: bits z_t flipped weigh 1 - r_t, kept bits
        r_t, r_t = (1 - k_t) / 2."""
        flip = (z0 != z_t).float()
        r = (1 - self.k_at(t, flip)) / 2
        return flip * (1 - r) + (1 - flip) * r

    def weight_sum(self, z0: torch.Tensor, draw: TrainingDraw) -> torch.Tensor | None:
        """The balanced loss's normaliser (its weights' sum) over the batch z0; None for the
        other loss types, which are plain means."""
        if self.config.loss_type != "balanced":
            return None
        return self.balanced_weights(z0, draw.z_t, draw.t).sum()

    def training_losses(self, model: Denoiser, z0: torch.Tensor,
                        y: torch.Tensor | None = None,
                        t: torch.Tensor | None = None,
                        generator: torch.Generator | None = None,
                        draw: TrainingDraw | None = None,
                        weight_sum: torch.Tensor | None = None) -> LossOutput:
        """Sample t ~ U{1..T}, z_t ~ q(z_t | z_0); BCE between P(z_0 = 1 | z_t) and z_0. method.md §2.

        loss_type:
          mean      plain BCE averaged over bits (its minimiser is logit P(z_0 = 1 | z_t));
          weighted  per-sample BCE times 1 - (t - 1)/T;
          balanced  class-balanced BCE: bits that z_t flipped weighted by 1 - r_t, kept bits
                    by r_t, r_t = (1 - k_t)/2; its minimiser is l' (evidence-free), and the
                    weights are normalised by their batch sum;
          focal     the balanced weights from the per-sample share of flipped bits, times
                    (1 - p_true)^gamma (minimiser approximately l').
        With the grouped head (bit_group > 1) the loss is the cross-entropy of each group's
        true pattern (``_grouped_losses``; mean or weighted only).

        ``draw``: the random part, from ``draw_training`` (default: drawn here from
        ``t`` / ``generator``). ``weight_sum``: the balanced loss's
        normaliser (default: this batch's own; a micro-batch of gradient accumulation passes
        the whole batch's ``weight_sum`` divided by the number of micro-batches).
        """
        if draw is None:
            draw = self.draw_training(z0, t, generator)
        t, z_t = draw
        net = self.model_logits(model, z_t, t, y).float()
        if self.grouped:
            return self._grouped_losses(net, z0, z_t, t)
        raw = net * (1 - 2 * z_t) if self.config.parameterization == "flip" else net
        logits = self.z0_logits(net, z_t, t)  # full posterior logit, for logging and aux
        target = z0.float()
        reduce_dims = tuple(range(1, z0.dim()))
        bce = F.binary_cross_entropy_with_logits(logits, target)
        cfg = self.config
        if cfg.loss_type == "mean":
            main = bce
        elif cfg.loss_type == "weighted":
            # weight 1 - (t - 1)/T: more weight on small t (docs/method.md §2, training loss)
            per_bit = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            w = 1 - (t.float() - 1) / self.T
            main = (per_bit.mean(dim=reduce_dims) * w).mean()
        elif cfg.loss_type == "balanced":
            # the network's own output is l'; flipped bits weigh 1 - r_t, kept bits r_t
            per_bit = F.binary_cross_entropy_with_logits(raw, target, reduction="none")
            w = self.balanced_weights(z0, z_t, t)
            norm = w.sum() if weight_sum is None else weight_sum
            main = (w * per_bit).sum() / norm.clamp_min(1e-12)
        elif cfg.loss_type == "focal":
            # flipped bits weighted by 1 - (share of flipped bits), kept bits by that share;
            # (1 - p_true)^gamma focusing
            per_bit = F.binary_cross_entropy_with_logits(raw, target, reduction="none")
            flip = (z0 != z_t).float()
            frac = flip.mean(dim=reduce_dims, keepdim=True)
            alpha = flip * (1 - frac) + (1 - flip) * frac
            p_true = torch.exp(-per_bit)
            main = (alpha * (1 - p_true).pow(cfg.focal_gamma) * per_bit).mean()
        else:
            raise ValueError(f"unknown loss_type {cfg.loss_type!r}")
        aux = torch.zeros((), device=z0.device)
        if cfg.aux_weight > 0:
            # auxiliary variational term: BCE between the exact step q(z_{t-1} | z_t) from the
            # predicted z_0 and the true posterior q(z_{t-1} | z_t, z_0), one step back
            s = t - 1
            with torch.no_grad():
                sure = torch.where(target > 0.5, 50.0, -50.0)  # z_0 known: p' = z_0 exactly
                true_p = torch.sigmoid(self.posterior_logits(sure, z_t, t, s))
            pred_logits = self.posterior_logits(logits, z_t, t, s)
            aux = F.binary_cross_entropy_with_logits(pred_logits, true_p)
            aux = aux - F.binary_cross_entropy(true_p, true_p)  # KL: 0 at the optimum
        loss = main + cfg.aux_weight * aux
        with torch.no_grad():
            acc = ((logits > 0).float() == target).float().mean()
        return LossOutput(loss, bce.detach(), aux.detach(), acc)

    def _grouped_losses(self, net: torch.Tensor, z0: torch.Tensor, z_t: torch.Tensor,
                        t: torch.Tensor) -> LossOutput:
        """The grouped head's loss: cross-entropy -log P(z_0 group = true pattern | z_t) of
        every group (of the flip pattern z_0 XOR z_t with the flip parameterisation: the same
        number), divided by g: nats per bit, comparable with the per-bit head's mean BCE
        (for independent bits the two are equal). ``mean`` averages over groups, positions
        and samples; ``weighted`` multiplies each sample's mean by 1 - (t - 1)/T. ``bce`` logs
        the unweighted value, ``accuracy`` the bits of the most probable pattern."""
        g = self.config.bit_group
        logp = self.group_logits(net, z_t)  # (B, G, V, ...)
        target = self.pattern_index(self.group_bits(z0))  # (B, G, ...)
        nll = -logp.gather(2, target.unsqueeze(2)).squeeze(2) / g  # nats per bit
        ce = nll.mean()
        if self.config.loss_type == "mean":
            main = ce
        else:  # weighted (DiffusionConfig allows only these two)
            w = 1 - (t.float() - 1) / self.T
            main = (nll.flatten(1).mean(dim=1) * w).mean()
        with torch.no_grad():
            acc = (self.group_argmax(logp) == z0.float()).float().mean()
        return LossOutput(main, ce.detach(), torch.zeros((), device=z0.device), acc)
