"""Samplers for the Bernoulli prior: few-step, guided, inpainting. docs/method.md §2, sampling.

One pure function under ``@torch.no_grad()`` (as in k-diffusion's ``sampling.py``).

Imports only bld.models.diffusion.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .diffusion import BernoulliDiffusion, Denoiser, sampling_timesteps


def check_guidance_interval(interval, what: str = "guidance_interval") -> tuple[float, float]:
    """(lo, hi) with 0 <= lo <= hi <= 1 (fractions of T), as floats; a one-line ValueError
    otherwise."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers (lo, hi), got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:  # also catches NaN
        raise ValueError(f"{what} must satisfy 0 <= lo <= hi <= 1 (fractions of T), "
                         f"got ({lo:g}, {hi:g})")
    return lo, hi


def describe_guidance_interval(interval) -> str:
    """' at t / T <= 0.6' (or ' at 0.2 <= t / T <= 0.8') where guidance skips steps; '' where
    it guides every step (also for a record that predates the setting)."""
    if not interval or tuple(interval) == (0.0, 1.0):
        return ""
    lo, hi = interval
    return f" at t / T <= {hi:g}" if lo == 0 else f" at {lo:g} <= t / T <= {hi:g}"


# lambda of docs/method.md §2 "Evidence weight": how much of z_t's evidence is removed from the
# network's posterior before each step. 1 = the exact (ancestral) step; 0 = the original
# code's product (bits stick to z_t: a lower-noise step). Chosen by measurement on the
# demo prior (benchmarks/ablations.py); re-measure when the prior changes.
DEFAULT_EVIDENCE_WEIGHT = 1.0


class SampleOutput(NamedTuple):
    z0: torch.Tensor  # (B, ...) binary sample in {0, 1}
    intermediates: list[torch.Tensor]  # z_t after each step (CPU), empty unless asked for
    timesteps: list[int]  # the visited t, in order
    z_T: torch.Tensor | None = None  # the starting coin flips (CPU), only with intermediates


def guided_logits(model: Denoiser, diffusion: BernoulliDiffusion, z_t: torch.Tensor,
                  t: torch.Tensor, y: torch.Tensor | None, guidance: float,
                  null_label: int | None) -> torch.Tensor:
    """Network logits with classifier-free guidance l = (1 + w) l_cond - w l_uncond. method.md §2.

    With the grouped head the same combination acts on each group's categorical logits
    (a constant added to a group's logits changes nothing after the softmax).

    Returned in float32: under bf16 autocast the network's head is bf16, and the guided
    difference of two bf16 logits would lose most of its precision.
    """
    if guidance == 0 or y is None:
        return diffusion.model_logits(model, z_t, t, y).float()
    if null_label is None:
        raise ValueError("guidance needs a conditional model with a learned null label")
    y_null = torch.full_like(y, null_label)
    both = diffusion.model_logits(model, torch.cat([z_t, z_t]), torch.cat([t, t]),
                                  torch.cat([y, y_null]))
    cond, uncond = both.float().chunk(2)
    return (1 + guidance) * cond - guidance * uncond


@torch.no_grad()
def sample(model: Denoiser, diffusion: BernoulliDiffusion, shape: tuple[int, ...], *,
           steps: int | None = None, y: torch.Tensor | None = None, guidance: float = 0.0,
           temperature: float = 1.0, evidence_weight: float = DEFAULT_EVIDENCE_WEIGHT,
           guidance_interval: tuple[float, float] = (0.0, 1.0),
           null_label: int | None = None,
           known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
           generator: torch.Generator | None = None, device: torch.device | str | None = None,
           return_intermediates: bool = False,
           callback: Callable[[int, int], None] | None = None,
           noise: torch.Tensor | None = None, noise_shift: float = 0.0) -> SampleOutput:
    """Draw binary latents from the prior in ``steps`` of the trained T steps.

    Args:
        model: denoiser, called as ``model(z_t, t / T, y)`` -> one logit per bit (with
            ``diffusion.config.bit_group`` g > 1: 2^g logits per group of g bits; each step
            then draws every group's bits jointly, see ``BernoulliDiffusion.group_step``).
        shape: latent shape ``(B, C, H, W)`` (any ``(B, ...)`` works).
        steps: S visited steps, 2 <= S <= T (default T). Time is always normalised by T.
        y: class labels (B,), or None for unconditional sampling.
        guidance: classifier-free guidance scale w (0 = plain conditional sampling).
        guidance_interval: (lo, hi) fractions of T; guidance applies only at steps with
            lo <= t / T <= hi (Kynkaanniemi et al. 2024, arXiv 2404.07724), plain conditional
            logits elsewhere. The default (0, 1) guides every step.
        temperature: the evidence-free logit l' is divided by it before each step
            (tau < 1: less diverse, more faithful); the grouped head's categorical logits
            l'(v) likewise. docs/method.md §2.
        evidence_weight: lambda of docs/method.md §2: 1 = the exact step; 0 = the original code's
            product, which keeps bits of z_t more often (lower noise); values in between
            (or below 0) trade between them.
        null_label: the label index of the learned null condition (needed when guidance != 0).
        known, mask: inpainting: bits with mask == 1 are kept from ``known`` after every step.
        generator: makes the draw reproducible (its device must match ``device``).
        return_intermediates: also return z after each step (moved to CPU).
        callback: called as ``callback(i, S)`` after step i (1-based) of S, e.g. to move a
            progress bar.
        noise: common random numbers ("coupled" sampling, docs/distill.md): one uniform per
            bit, of the sample shape. z_T = [u < 0.5] and every step draws [u < p] with the
            same u, so the sample is a deterministic function of (u, y); each draw is still
            B(p) on its own, but the draws of one bit are correlated across steps. With the
            same u a bit can change only where p crosses u, so the chain sticks to z_T
            (measured in docs/distill.md: 99% of z_0's bits are z_T's).
        noise_shift: with ``noise``, the k-th draw uses frac(u + k * noise_shift) instead
            (k = 0 for z_T): a rotation that keeps every draw uniform and the sample a
            function of u, but unsticks the chain (0: the same u at every step).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lo, hi = check_guidance_interval(guidance_interval)
    T = diffusion.T
    ts = sampling_timesteps(T if steps is None else steps, T)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu")) \
            if isinstance(model, torch.nn.Module) else torch.device("cpu")
    device = torch.device(device)
    if (known is None) != (mask is None):
        raise ValueError("inpainting needs both `known` and `mask`")
    if known is not None:
        if known.shape != tuple(shape) or mask.shape != tuple(shape):
            raise ValueError(f"known {tuple(known.shape)} and mask {tuple(mask.shape)} "
                             f"must both have the sample shape {tuple(shape)}")
        known, mask = known.to(device).float(), mask.to(device).float()
    if y is not None:
        y = y.to(device)
        if y.shape != (shape[0],):
            raise ValueError(f"y must have shape ({shape[0]},), got {tuple(y.shape)}")

    def impose(z: torch.Tensor) -> torch.Tensor:
        return z if mask is None else mask * known + (1 - mask) * z

    noise = _check_noise(noise, shape, device, diffusion)
    # z_T ~ B(0.5): pure coin flips
    u0 = noise if noise is not None else torch.rand(shape, generator=generator, device=device)
    z = impose((u0 < 0.5).float())
    z_start = z.cpu() if return_intermediates else None
    inter: list[torch.Tensor] = []
    B = shape[0]
    for i, t_int in enumerate(ts):
        t = torch.full((B,), t_int, device=device, dtype=torch.long)
        w = guidance if lo <= t_int / T <= hi else 0.0
        net = guided_logits(model, diffusion, z, t, y, w, null_label)
        if diffusion.grouped:  # the grouped head: a categorical per group of bits
            z = _grouped_step(diffusion, net, z, t, ts, i, evidence_weight, temperature,
                              generator)
        else:
            z0_logits = diffusion.z0_logits(net, z, t)  # logit P(z_0 = 1 | z_t), float32
            if i == len(ts) - 1:
                z = (z0_logits > 0).float()  # final step: z_0 = [p > 0.5]
            else:
                s = torch.full((B,), ts[i + 1], device=device, dtype=torch.long)
                probs = torch.sigmoid(diffusion.posterior_logits(
                    z0_logits, z, t, s, evidence_weight=evidence_weight,
                    temperature=temperature))
                u = _rotated(noise, i + 1, noise_shift) if noise is not None else \
                    torch.rand(probs.shape, generator=generator, device=device)
                z = (u < probs).float()
        z = impose(z)
        if return_intermediates:
            inter.append(z.cpu())
        if callback is not None:
            callback(i + 1, len(ts))
    return SampleOutput(z, inter, ts, z_start)


def _grouped_step(diffusion: BernoulliDiffusion, net: torch.Tensor, z: torch.Tensor,
                  t: torch.Tensor, ts: list[int], i: int, evidence_weight: float,
                  temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Step i of ``sample`` with the grouped head (bit_group > 1): z_s.

    ``net`` (guided) are the categorical logits of each group. The last step returns the
    most probable pattern of each group (the per-bit head's [p > 0.5]); the others draw
    z_s jointly per group with the evidence weight and temperature (``group_step``).
    """
    logp = diffusion.group_logits(net, z)  # log P(z_0 group = v | z_t), (B, G, 2^g, ...)
    if i == len(ts) - 1:
        return diffusion.group_argmax(logp)
    s = torch.full_like(t, ts[i + 1])
    return diffusion.group_step(logp, z, t, s, evidence_weight=evidence_weight,
                                temperature=temperature, generator=generator)


def _rotated(noise: torch.Tensor, k: int, shift: float) -> torch.Tensor:
    """frac(u + k * shift): the coupled sampler's uniforms for its k-th draw."""
    return noise if shift == 0 else torch.remainder(noise + k * shift, 1.0)


def _check_noise_shape(noise: torch.Tensor, shape) -> None:
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise {tuple(noise.shape)} must have the sample shape {tuple(shape)}")


def _check_noise(noise: torch.Tensor | None, shape, device: torch.device,
                 diffusion: BernoulliDiffusion) -> torch.Tensor | None:
    """The coupled sampler's uniforms on ``device``, checked: the sample's shape, values in
    [0, 1), and the per-bit head (the grouped head draws patterns, not bits)."""
    if noise is None:
        return None
    _check_noise_shape(noise, shape)
    if diffusion.grouped:
        raise ValueError("coupled sampling (noise=) needs the per-bit head (bit_group 1); the "
                         "grouped head draws a pattern per group")
    return noise.to(device).float()


@torch.no_grad()
def sample_one_step(model: Denoiser, diffusion: BernoulliDiffusion, shape: tuple[int, ...], *,
                    y: torch.Tensor | None = None, guidance: float = 0.0,
                    temperature: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                    null_label: int | None = None, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None,
                    noise: torch.Tensor | None = None) -> SampleOutput:
    """The one-step sampler: one (guided) network evaluation at t = T, then z_0 drawn from
    the network's posterior P(z_0 | z_T) (docs/method.md §2.4 with s = 0: k_0 = 1, so the
    step's likelihood term is flat and P(z_0 = 1 | z_T) = sigma(l' / tau)). Drawn, not
    thresholded: at t = T the posterior holds only the per-bit marginals, whose argmax would
    be one image per class. Bits are independent given z_T, which is why one step of a
    diffusion prior loses so much (docs/distill.md). ``sample`` keeps S >= 2; this is the
    S = 1 path. ``noise``: as in ``sample`` (z_T = [u < 0.5], z_0 = [u < p]).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lo, hi = check_guidance_interval(guidance_interval)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    noise = _check_noise(noise, shape, device, diffusion)
    T, B = diffusion.T, shape[0]
    u0 = noise if noise is not None else torch.rand(shape, generator=generator, device=device)
    z_T = (u0 < 0.5).float()
    t = torch.full((B,), T, device=device, dtype=torch.long)
    s = torch.zeros_like(t)
    y = None if y is None else y.to(device)
    net = guided_logits(model, diffusion, z_T, t, y, guidance if lo <= 1.0 <= hi else 0.0,
                        null_label)
    if diffusion.grouped:
        z0 = diffusion.group_step(diffusion.group_logits(net, z_T), z_T, t, s,
                                  temperature=temperature, generator=generator)
    else:
        probs = torch.sigmoid(diffusion.posterior_logits(diffusion.z0_logits(net, z_T, t), z_T,
                                                         t, s, temperature=temperature))
        u = noise if noise is not None else torch.rand(shape, generator=generator, device=device)
        z0 = (u < probs).float()
    return SampleOutput(z0, [], [T], None)


# ------------------------------------------------------------------ distilled students
# A student (docs/distill.md) maps noise and a class to z_0 in K in {1, 2} network evaluations,
# guidance folded in. Its network is a Denoiser with the teacher's architecture; its output
# is read as the teacher's is (``BernoulliDiffusion.z0_logits`` at t = T), so that a student
# initialised from the teacher's weights starts as the teacher's one-step posterior.
STUDENT_DESIGNS = ("coupled", "mixture")
STUDENT_STEPS = (1, 2)
STUDENT_BITS = ("draw", "threshold")


def check_student(design: str, steps: int, bits: str = "draw") -> None:
    """One-line ValueErrors for a student's design, its K and how it reads its logits."""
    if design not in STUDENT_DESIGNS:
        raise ValueError(f"unknown student design {design!r}; choose one of "
                         f"{', '.join(STUDENT_DESIGNS)}")
    if steps not in STUDENT_STEPS:
        raise ValueError(f"a student samples in K = 1 or 2 steps, got {steps}")
    if bits not in STUDENT_BITS:
        raise ValueError(f"student bits must be one of {', '.join(STUDENT_BITS)}, got {bits!r}")


def student_mid_step(diffusion: BernoulliDiffusion) -> int:
    """The t of a two-step student's second evaluation: T / 2."""
    return max(1, diffusion.T // 2)


def student_logits(model: Denoiser, diffusion: BernoulliDiffusion, design: str,
                   noise: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """A student's first evaluation: logit P(z_0 = 1 | noise, y), float32.

    coupled: ``noise`` is u ~ U(0, 1) per bit; the network reads 1 - u (so that its signs
    2 (1 - u) - 1 are those of z_T = [u < 0.5], scaled by how far u is from 1/2) and its
    output is read against z_T. mixture: ``noise`` is z_T ~ B(1/2), read as the teacher
    reads it. Time is t = T in both.
    """
    z_T = (noise < 0.5).float() if design == "coupled" else noise.float()
    x = 1 - noise.float() if design == "coupled" else z_T
    t = torch.full((noise.shape[0],), diffusion.T, device=noise.device, dtype=torch.long)
    return diffusion.z0_logits(diffusion.model_logits(model, x, t, y).float(), z_T, t)


def student_refine_logits(model: Denoiser, diffusion: BernoulliDiffusion, z0: torch.Tensor,
                          y: torch.Tensor | None, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-step student's second evaluation: z_s ~ q(z_s | z0) at s = T / 2, and the
    network's logit P(z_0 = 1 | z_s, y) there. Returns (z_s, logits)."""
    s = torch.full((z0.shape[0],), student_mid_step(diffusion), device=z0.device,
                   dtype=torch.long)
    z_s = diffusion.q_sample(z0.float(), s, generator=generator)
    return z_s, diffusion.z0_logits(diffusion.model_logits(model, z_s, s, y).float(), z_s, s)


def student_bits(logits: torch.Tensor, bits: str, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Bits from a student's logits: drawn, [u < sigma(l / tau)], or thresholded, [l > 0]."""
    if bits == "threshold":
        return (logits > 0).float()
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    return (u < torch.sigmoid(logits / temperature)).float()


@torch.no_grad()
def student_sample(model: Denoiser, diffusion: BernoulliDiffusion, shape: tuple[int, ...], *,
                   design: str, steps: int = 1, bits: str = "draw",
                   y: torch.Tensor | None = None, temperature: float = 1.0,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, return_intermediates: bool = False,
                   callback: Callable[[int, int], None] | None = None,
                   noise: torch.Tensor | None = None) -> SampleOutput:
    """Draw latents from a distilled student in ``steps`` (K) network evaluations.

    coupled: u ~ U(0, 1) per bit (or ``noise``), then one evaluation; mixture: z_T ~ B(1/2),
    then one evaluation, whose per-bit logits are one component of the student's mixture
    over z_T. ``bits``: draw each bit from the logits (default) or threshold them. With
    K = 2 the first result is noised to t = T / 2 and evaluated once more
    (`student_refine_logits`). No guidance argument: it is folded into the weights.
    """
    check_student(design, steps, bits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if noise is None:
        u = torch.rand(shape, generator=generator, device=device)
        noise = u if design == "coupled" else (u < 0.5).float()
    else:
        _check_noise_shape(noise, shape)
    noise = noise.to(device)
    y = None if y is None else y.to(device)
    z = student_bits(student_logits(model, diffusion, design, noise, y), bits, temperature,
                     generator)
    z_T = ((noise < 0.5).float() if design == "coupled" else noise).cpu() \
        if return_intermediates else None
    inter, ts = [z.cpu()] if return_intermediates else [], [diffusion.T]
    if callback is not None:
        callback(1, steps)
    if steps == 2:
        z_s, logits = student_refine_logits(model, diffusion, z, y, generator)
        z = student_bits(logits, bits, temperature, generator)
        ts.append(student_mid_step(diffusion))
        if return_intermediates:
            inter = [z_s.cpu(), z.cpu()]
        if callback is not None:
            callback(2, steps)
    return SampleOutput(z, inter, ts, z_T)
