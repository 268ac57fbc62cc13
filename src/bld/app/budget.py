"""The demo's time plan: a few seconds of calibration, then step counts that fit the budget.

`bld demo --minutes M` times, on this machine and in the precision the run will use, one
training step of each model at its preset's batch, the autoencoder's encoding and
reconstruction per image, one sampling step of the prior and one classifier step. From
these it predicts every stage's seconds (training, encoding, the FD classifier, the
evaluation's samples, the figures) and scales both models' training steps by one factor,
at most the presets' own counts, so that the predicted total stays inside
``SAFETY x M`` minutes. A slower CPU gets a smaller run that still finishes; a faster one
runs the presets as they are. Work done before the plan (the demo trains its FD classifier
first) counts with the seconds it took (``spent_s``). After the autoencoder, the prior's
steps are fitted again to the time really left (up to ``Plan.max_prior_steps`` where the
plan allows more than the preset's, as the demo's does). The plan and what it predicted are
written into the demo report beside the figures the run reached.

Imports the models and the noise process, not the training loops.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, astuple, dataclass, field, replace
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ..core.device import Precision
from ..core.loading import LatentDataset
from ..evaluation.classifier import Classifier, ClassifierConfig
from ..models.autoencoder import AutoencoderLoss, BinaryAutoencoder
from ..models.denoiser import Denoiser
from ..models.diffusion import BernoulliDiffusion, sampling_timesteps
from ..models.sampling import sample
from ..training.optim import model_optimizer

log = logging.getLogger("bld")

# the plan aims at this share of the budget: the rest absorbs calibration error and a
# shared machine's noise (the prior's steps are refitted after the autoencoder, so what
# is left to miss is the prior's own rate and the evaluation's; in two AVX2 demo runs the
# predicted total was 2% and 10% above the measured one)
SAFETY = 0.9
# seconds the demo spends outside the timed work (loading data, checkpoints, plots)
OVERHEAD_S = 25.0
# the plan never trains a model for fewer steps than this share of its preset's
MIN_SCALE = 0.05


@dataclass
class Rates:
    """Seconds per unit of work on this machine, measured by `calibrate`."""
    ae_step_s: float  # one autoencoder training step at its batch
    prior_step_s: float  # one prior training step at its batch
    encode_image_s: float  # encoding one image (run precision)
    recon_image_s: float  # one image through the autoencoder in fp32 (reconstruction figures)
    sample_image_step_s: float  # one guided sampling step of one image, in batches of 250
    classifier_step_s: float  # one FD-classifier training step (batch 128, fp32)
    calibration_s: float = 0.0


@dataclass
class Plan:
    minutes: float
    scale: float  # share of the presets' training steps that fits
    ae_steps: int
    prior_steps: int
    preset_ae_steps: int
    preset_prior_steps: int
    precision: str
    rates: Rates
    predicted_s: dict[str, float] = field(default_factory=dict)
    note: str = ""
    work: dict[str, float] = field(default_factory=dict)  # the amounts `predict` was given
    replanned_after_s: float | None = None  # when the prior's steps were fitted again
    variant: str = "presets"  # or "compact": the presets with ``overrides``
    overrides: dict[str, list[str]] = field(default_factory=dict)  # kind -> config overrides
    # the most prior steps the refit after the autoencoder may choose (0: its preset's)
    max_prior_steps: int = 0
    # the budget whose plan would train every step of the presets here (0: not computed;
    # the demo's compact variant keeps the presets' figure)
    full_minutes: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(**{**d, "rates": Rates(**d["rates"])})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        p = self.predicted_s
        return (f"plan for {self.minutes:g} min ({self.precision}, {self.variant}"
                + (f": {' '.join(sum(self.overrides.values(), []))}" if self.overrides else "")
                + f"): autoencoder {self.ae_steps} of "
                f"{self.preset_ae_steps} steps, prior {self.prior_steps} of "
                f"{self.preset_prior_steps}"
                + (f", at most {self.max_prior_steps}," if self.max_prior_steps else "")
                + f" (scale {self.scale:.2f}"
                + (f", the prior's refitted after {self.replanned_after_s:.0f} s"
                   if self.replanned_after_s is not None else "") + "); predicted "
                f"{p['total'] / 60:.1f} min = " + ", ".join(
                    f"{k} {v:.0f} s" for k, v in p.items() if k != "total" and v) +
                (f". {self.note}" if self.note else ""))


def _seconds_per_call(fn: Callable[[], Any], warmup: int = 2, repeats: int = 4) -> float:
    """Fewest wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones:
    on a shared machine another job's burst slows some calls, not the machine's own speed
    (a machine slower throughout is caught by the prior's refit after the autoencoder)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fastest(a: Rates, b: Rates) -> Rates:
    """Each unit of work at the faster of two calibrations (``calibration_s``: both's)."""
    return Rates(*(min(x, y) for x, y in zip(astuple(a)[:-1], astuple(b)[:-1])),
                 calibration_s=a.calibration_s + b.calibration_s)


def _optimizer_step(model: torch.nn.Module, ema: torch.nn.Module, opt) -> None:
    """What the training loops do after the backward pass: clip, step, EMA."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 0.005)


def calibrate(ae_cfg, prior_cfg, train_set: Dataset, num_classes: int,
              device: torch.device, precision: Precision) -> Rates:
    """Time the demo's units of work: ``ae_cfg`` / ``prior_cfg`` are the training configs
    (the prior's already resolved to the autoencoder's latent shape), ``train_set`` the
    training images. Each training step includes reading its batch item by item, as the
    loader does, and the optimizer's clip / step / EMA."""
    t_start = time.perf_counter()
    torch.manual_seed(0)
    amp = precision.autocast(device)
    ae_step_s, encode_image_s, recon_image_s = _time_autoencoder(ae_cfg, train_set, device, amp)
    prior_step_s, sample_image_step_s = _time_prior(prior_cfg, num_classes, device, amp)
    images = torch.stack([train_set[i][0] for i in range(min(128, len(train_set)))])
    classifier_step_s = _time_classifier(images, num_classes, device)
    return Rates(ae_step_s, prior_step_s, encode_image_s, recon_image_s, sample_image_step_s,
                 classifier_step_s, time.perf_counter() - t_start)


def calibrate_prior(rates: Rates, prior_cfg, num_classes: int, device: torch.device,
                    precision: Precision) -> Rates:
    """``rates`` with the prior's step and sampling times measured again for ``prior_cfg``."""
    t_start = time.perf_counter()
    torch.manual_seed(0)
    step_s, sample_s = _time_prior(prior_cfg, num_classes, device, precision.autocast(device))
    return replace(rates, prior_step_s=step_s, sample_image_step_s=sample_s,
                   calibration_s=rates.calibration_s + time.perf_counter() - t_start)


def calibrate_autoencoder(rates: Rates, ae_cfg, train_set: Dataset, device: torch.device,
                          precision: Precision) -> Rates:
    """``rates`` with the autoencoder's step, encoding and reconstruction times measured
    again for ``ae_cfg`` (another architecture than the one first timed)."""
    t_start = time.perf_counter()
    torch.manual_seed(0)
    step_s, encode_s, recon_s = _time_autoencoder(ae_cfg, train_set, device,
                                                  precision.autocast(device))
    return replace(rates, ae_step_s=step_s, encode_image_s=encode_s, recon_image_s=recon_s,
                   calibration_s=rates.calibration_s + time.perf_counter() - t_start)


def time_prior_step(prior_cfg, num_classes: int, device: torch.device,
                    precision: Precision | None = None) -> float:
    """Seconds of one training step of ``prior_cfg`` (resolved to its latent shape) here, as
    the demo's calibration times it (``precision``: fp32 when not given)."""
    torch.manual_seed(0)
    amp = precision.autocast(device) if precision is not None else contextlib.nullcontext()
    return _time_prior(prior_cfg, num_classes, device, amp)[0]


def _time_autoencoder(ae_cfg, train_set: Dataset, device: torch.device, amp
                      ) -> tuple[float, float, float]:
    """(training step s, encoding s per image, fp32 reconstruction s per image)."""
    ae = BinaryAutoencoder(ae_cfg.model).to(device)
    ae_ema = copy.deepcopy(ae).requires_grad_(False)
    loss_fn = AutoencoderLoss(ae_cfg.loss, ae_cfg.model.in_channels).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    b = min(ae_cfg.optim.batch_size, len(train_set))

    def ae_step():
        xb = torch.stack([train_set[i][0] for i in range(b)]).to(device)
        with amp:
            out = ae(xb)
        losses = loss_fn.generator_loss(xb, out, 0, ae.last_layer, adaptive=True)
        opt.zero_grad(set_to_none=True)
        losses.loss.backward()
        _optimizer_step(ae, ae_ema, opt)

    step_s = _seconds_per_call(ae_step)
    ae.eval()
    xe = torch.stack([train_set[i][0] for i in range(min(256, len(train_set)))]).to(device)
    with torch.no_grad():
        def encode():
            with amp:
                ae.encode(xe, deterministic=True)
        encode_s = _seconds_per_call(encode, 1, 2) / len(xe)
        recon_s = _seconds_per_call(lambda: ae(xe, deterministic=True), 1, 2) / len(xe)
    return step_s, encode_s, recon_s


def _time_prior(prior_cfg, num_classes: int, device: torch.device, amp) -> tuple[float, float]:
    """(training step s, one guided sampling step s per image in batches of 250)."""
    g = torch.Generator().manual_seed(0)
    m = prior_cfg.model
    prior = Denoiser(m).to(device)
    prior_ema = copy.deepcopy(prior).requires_grad_(False)
    diffusion = BernoulliDiffusion(prior_cfg.diffusion).to(device)
    popt = model_optimizer(prior, prior_cfg.optim)  # AdamW, or Muon + AdamW
    b = prior_cfg.optim.batch_size
    shape = (m.bits, m.grid, m.grid)
    # latents as the prior reads them: packed bits, unpacked item by item
    latents = LatentDataset(torch.randint(0, 256, (b, (math.prod(shape) + 7) // 8),
                                          dtype=torch.uint8, generator=g),
                            torch.randint(0, max(num_classes, 1), (b,), generator=g), shape)

    def prior_step():
        items = [latents[i] for i in range(b)]
        z0 = torch.stack([z for z, _ in items]).float().to(device)
        y = torch.tensor([c for _, c in items], device=device) if num_classes else None
        with amp:
            out = diffusion.training_losses(prior, z0, y, generator=g)
        popt.zero_grad(set_to_none=True)
        out.loss.backward()
        _optimizer_step(prior, prior_ema, popt)

    step_s = _seconds_per_call(prior_step)
    prior.eval()
    n = 250
    ys = torch.arange(n, device=device) % num_classes if num_classes else None

    def sample_two_steps():
        with amp:
            sample(prior, diffusion, (n, *shape), steps=2, y=ys,
                   guidance=1.0 if ys is not None else 0.0, null_label=prior.null_label,
                   generator=torch.Generator(device).manual_seed(0), device=device)
    return step_s, _seconds_per_call(sample_two_steps, 1, 2) / (2 * n)


def _time_classifier(images: torch.Tensor, num_classes: int, device: torch.device) -> float:
    """One FD-classifier training step (batch 128, fp32)."""
    g = torch.Generator().manual_seed(0)
    clf = Classifier(ClassifierConfig(in_channels=images.shape[1], image_size=images.shape[-1],
                                      num_classes=max(num_classes, 2))).to(device)
    copt = torch.optim.AdamW(clf.parameters(), lr=1e-4)
    xc = images[:128].to(device)
    yc = torch.randint(0, max(num_classes, 2), (len(xc),), generator=g).to(device)

    def clf_step():
        loss = torch.nn.functional.cross_entropy(clf(xc), yc)
        copt.zero_grad(set_to_none=True)
        loss.backward()
        copt.step()
    return _seconds_per_call(clf_step)


def predict(rates: Rates, *, ae_steps: int, prior_steps: int, n_train: int, n_test: int,
            eval_samples: int, figure_samples: int, sample_steps: int, snapshot_samples: int,
            classifier_steps: int, guided_share: float = 1.0) -> dict[str, float]:
    """Seconds of each demo stage at these step counts. ``guided_share``: the mean cost of
    a sampling step relative to a guided one (see `guided_share`)."""
    sampled = eval_samples + figure_samples + snapshot_samples
    p = {
        "autoencoder": ae_steps * rates.ae_step_s,
        "encode": n_train * rates.encode_image_s,
        "prior": prior_steps * rates.prior_step_s,
        "classifier": classifier_steps * rates.classifier_step_s,
        # samples (and decoding them), the test set's reconstructions for the figures and FD
        "evaluation": sampled * sample_steps * guided_share * rates.sample_image_step_s
        + (n_test + sampled) * rates.recon_image_s,
        "overhead": OVERHEAD_S + rates.calibration_s,
    }
    p["total"] = sum(p.values())
    return p


def guided_share(steps: int, timesteps: int, guidance: float,
                 interval: tuple[float, float] = (0.0, 1.0)) -> float:
    """A sampling step's mean cost relative to a guided one: guided steps run the
    conditional and unconditional passes as one batch of twice the images, the others half
    of that (bld.models.sampling guides only at lo <= t / T <= hi)."""
    ts = sampling_timesteps(steps, timesteps)
    lo, hi = interval
    guided = sum(1 for t in ts if guidance != 0 and lo <= t / timesteps <= hi)
    return (guided + 0.5 * (len(ts) - guided)) / len(ts)


def make_plan(rates: Rates, minutes: float, *, preset_ae_steps: int, preset_prior_steps: int,
              precision: str, ae_steps: int | None = None, prior_steps: int | None = None,
              spent_s: float = 0.0, say_full: bool = True, **work: float) -> Plan:
    """Scale the presets' training steps by the largest factor <= 1 whose predicted total
    fits ``SAFETY * minutes``. A model whose steps are given (``ae_steps`` / ``prior_steps``:
    the user's) keeps them; the factor applies to the other. ``spent_s``: seconds of work
    already done before the plan (the demo's FD classifier), counted as they were measured.
    ``full_minutes`` is the budget whose plan trains every step; a cut plan's note names it
    (unless ``say_full`` is False)."""
    fixed = predict(rates, ae_steps=ae_steps or 0, prior_steps=prior_steps or 0,
                    **work)["total"] + spent_s
    training = ((ae_steps is None) * preset_ae_steps * rates.ae_step_s
                + (prior_steps is None) * preset_prior_steps * rates.prior_step_s)
    room = SAFETY * minutes * 60 - fixed
    scale = min(1.0, room / training) if training > 0 else 1.0
    # the whole budget's share the plan aims at, for all the steps: what would plan them
    full_minutes = math.ceil((fixed + training) / (SAFETY * 60))
    note = ""
    if scale < MIN_SCALE:
        note = (f"the budget is too small for this machine: even {MIN_SCALE:.0%} of the "
                f"presets' steps overruns it; expect a longer run and weak figures")
        scale = MIN_SCALE
    if ae_steps is None:
        ae_steps = max(1, math.floor(preset_ae_steps * scale))
    if prior_steps is None:
        prior_steps = max(1, math.floor(preset_prior_steps * scale))
    if scale < 1 and not note:
        note = "a slower machine than the presets assume: fewer training steps"
    if scale < 1 and say_full:
        note += (f"; all {preset_ae_steps} + {preset_prior_steps} steps need --minutes "
                 f"{full_minutes}")
    predicted = predict(rates, ae_steps=ae_steps, prior_steps=prior_steps, **work)
    if spent_s:
        predicted = {"spent": spent_s, **predicted, "total": predicted["total"] + spent_s}
    return Plan(minutes, scale, ae_steps, prior_steps, preset_ae_steps, preset_prior_steps,
                precision, rates, predicted, note, work, full_minutes=full_minutes)


def replan_prior(plan: Plan, elapsed_s: float) -> Plan:
    """After the autoencoder and the encoding: the prior's steps that fit what is left of
    the budget, given the seconds already spent (between ``MIN_SCALE`` of its preset's and
    the preset's, or ``plan.max_prior_steps`` where the plan allows more). A machine that
    ran slower or faster than calibrated is caught up here."""
    rest = predict(plan.rates, ae_steps=0, prior_steps=0, **plan.work)
    after = rest["classifier"] + rest["evaluation"] + OVERHEAD_S
    room = SAFETY * plan.minutes * 60 - elapsed_s - after
    low = max(1, math.floor(MIN_SCALE * plan.preset_prior_steps))
    steps = min(plan.max_prior_steps or plan.preset_prior_steps,
                max(low, math.floor(room / plan.rates.prior_step_s)))
    predicted = {**plan.predicted_s, "prior": steps * plan.rates.prior_step_s}
    predicted["total"] = sum(v for k, v in predicted.items() if k != "total")
    return replace(plan, prior_steps=steps, predicted_s=predicted, replanned_after_s=elapsed_s)
