"""`StudentTask`: distil a guided diffusion prior into a student that samples in K in {1, 2}
network evaluations (docs/distill.md), in the one training loop (`bld.training.loop.fit`).

The teacher's own 16-step guided sampler makes (noise, class, z_0) pairs once, in chunks
cached atomically under the run folder (a killed generation keeps its finished chunks);
then the student, a `Denoiser` with the teacher's architecture initialised from its
weights, learns to map noise and a class to z_0 in one evaluation:

* ``coupled``: the teacher samples with common random numbers (one uniform per bit, u;
  `bld.models.sampling.sample`'s ``noise``), so its sample is a function f(u, y); the student
  reads u and is trained with BCE to f(u, y) (ReDi's one-step map, for bits);
* ``mixture``: the student reads z_T ~ B(1/2), so its distribution is a mixture over z_T of
  independent bits; each teacher sample z_0 is scored against M draws of z_T,
  -log (1/M) sum_m p(z_0 | z_T^m, y) (`mixture_nll`), so that different z_T specialise on
  different samples instead of all predicting the blurred per-bit marginal (Di4C's idea).

With K = 2 a second evaluation at t = T / 2 refines the first result, trained with BCE to
the same teacher sample. The student's checkpoint is a prior's (kind "prior") whose config
says ``student.design``, so it loads and samples like any prior (pipeline, CLI).
Imports bld.core, bld.models and this package's loop, task and context modules; the teacher
arrives loaded (`bld.app.commands.load_teacher`), as training never imports bld.inference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..core import checkpoint as ckpt
from ..core.config import (
    AutoencoderTrainConfig,
    ConfigError,
    DataConfig,
    OptimConfig,
    PriorTrainConfig,
    RunConfig,
    StudentConfig,
    apply_overrides,
    config_from_dict,
    from_dict,
    to_dict,
)
from ..core.plots import image_grid, save_image, write_snapshot_index
from ..models.denoiser import Denoiser
from ..models.packing import pack_bits, unpack_bits
from ..models.sampling import (
    check_student,
    sample,
    student_bits,
    student_logits,
    student_refine_logits,
    student_sample,
)
from .context import Context
from .task import Task

log = logging.getLogger("bld")

PAIRS_DIR = "pairs"
AUTOENCODER_DIR = "autoencoder"
PAIR_SAMPLERS = ("coupled", "plain")


class StudentLosses(NamedTuple):
    loss: torch.Tensor
    accuracy: torch.Tensor  # bits of the (best) first evaluation's [l > 0] equal to z_0


def component_log_likelihoods(logits: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """log p(z_0 | component m) of each sample, (M, B): the sum over bits of -BCE, for
    ``logits`` (M, B, ...) of M components and targets ``z0`` (B, ...)."""
    target = z0.float().unsqueeze(0).expand_as(logits)
    ll = -F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return ll.flatten(2).sum(-1)


def mixture_nll(logits: torch.Tensor, z0: torch.Tensor, ll: torch.Tensor | None = None
                ) -> torch.Tensor:
    """-log (1/M) sum_m p(z_0 | component m), in nats per bit, averaged over the batch.

    ``logits`` (M, B, ...): per-bit logits of each of M mixture components (one per z_T
    draw); ``z0`` (B, ...): the targets; ``ll``: their `component_log_likelihoods` where
    already computed. The components combine by logsumexp. With M = 1 this is the mean BCE;
    for M > 1 it is at most the mean over m of each component's BCE (Jensen), equal only
    when they agree.
    """
    ll = component_log_likelihoods(logits, z0) if ll is None else ll
    return -(torch.logsumexp(ll, dim=0) - math.log(ll.shape[0])).mean() / z0[0].numel()


# ---------------------------------------------------------------------- teacher pairs
class PairDataset(Dataset):
    """Teacher pairs: item (2, C, H, W) = (z_0, u) (u zeros for plain pairs), label."""

    def __init__(self, z0: torch.Tensor, u: torch.Tensor | None, labels: torch.Tensor,
                 classes: tuple[str, ...]) -> None:
        self.z0, self.u, self.labels, self.classes = z0, u, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        z0 = self.z0[i].float()
        u = self.u[i].float() if self.u is not None else torch.zeros_like(z0)
        return torch.stack([z0, u]), int(self.labels[i])


def _pair_settings(pipe, cfg: StudentConfig, sampler: str, seed: int) -> dict[str, Any]:
    """What makes a chunk of pairs: the teacher's weights and sampler, the seed."""
    pr = pipe.prior.config
    return {"teacher": ckpt.weights_fingerprint(pipe.prior.model.state_dict()),
            "sampler": sampler, "steps": cfg.teacher_steps, "guidance": pr.sample_guidance,
            "guidance_interval": list(pr.sample_guidance_interval),
            "temperature": pr.sample_temperature, "chunk": cfg.pair_batch, "seed": seed,
            **({"coupling_shift": cfg.coupling_shift} if sampler == "coupled" else {})}


def make_pairs(pipe, cfg: StudentConfig, folder: Path, sampler: str, seed: int,
               device: torch.device, precision: str = "auto") -> PairDataset:
    """``cfg.pairs`` teacher samples (class-conditional, classes cycled, guided as the
    teacher's config says), made ``cfg.pair_batch`` at a time into ``folder`` (one atomic
    safetensors file per chunk, so a killed generation keeps its finished chunks and a rerun
    makes only the rest), then read back. ``sampler`` coupled: each sample is f(u, y) with u
    stored beside it; plain: the teacher's usual sampler."""
    from safetensors.torch import load_file, save_file

    from ..core.device import autocast
    if sampler not in PAIR_SAMPLERS:
        raise ConfigError(f"pair sampler must be one of {', '.join(PAIR_SAMPLERS)}, got {sampler!r}")
    folder.mkdir(parents=True, exist_ok=True)
    settings = _pair_settings(pipe, cfg, sampler, seed)
    prior, shape, nc = pipe.prior, pipe.latent_shape, pipe.num_classes
    chunks = math.ceil(cfg.pairs / cfg.pair_batch)
    paths = [folder / f"chunk_{i:05d}.safetensors" for i in range(chunks)]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    for i, p in enumerate(paths):
        if p.exists():
            _check_chunk(p, settings)
    bar = tqdm(total=cfg.pairs, initial=cfg.pairs - sum(_chunk_size(cfg, i) for i in todo),
               desc="teacher pairs", unit="pair", mininterval=1.0)
    for i in todo:
        b = _chunk_size(cfg, i)
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
        y = (torch.arange(i * cfg.pair_batch, i * cfg.pair_batch + b) % nc).to(device)
        u = torch.rand((b, *shape), generator=g, device=device) if sampler == "coupled" else None
        with torch.no_grad(), autocast(device, precision):
            z0 = sample(prior.model, prior.diffusion, (b, *shape), steps=cfg.teacher_steps,
                        y=y, guidance=prior.config.sample_guidance,
                        guidance_interval=tuple(prior.config.sample_guidance_interval),
                        temperature=prior.config.sample_temperature,
                        null_label=prior.model.null_label, generator=g, device=device,
                        noise=u, noise_shift=cfg.coupling_shift).z0
        tensors = {"z0": pack_bits(z0.cpu()), "labels": y.cpu()}
        if u is not None:
            tensors["u"] = u.cpu().contiguous()
        tmp = paths[i].with_name(f".{paths[i].name}.tmp")
        try:
            save_file(tensors, str(tmp), metadata={"settings": json.dumps(settings)})
            os.replace(tmp, paths[i])
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ckpt.WriteError(ckpt.write_failure(paths[i], e)) from e
        bar.update(b)
    bar.close()
    parts = [load_file(str(p)) for p in paths]
    z0 = torch.cat([unpack_bits(t["z0"], shape, torch.uint8) for t in parts])[:cfg.pairs]
    labels = torch.cat([t["labels"] for t in parts])[:cfg.pairs]
    u = torch.cat([t["u"] for t in parts])[:cfg.pairs] if sampler == "coupled" else None
    return PairDataset(z0, u, labels, tuple(pipe.classes))


def _chunk_size(cfg: StudentConfig, i: int) -> int:
    return min(cfg.pair_batch, cfg.pairs - i * cfg.pair_batch)


def _check_chunk(path: Path, settings: dict[str, Any]) -> None:
    """A cached chunk must have been made by this teacher with these settings."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            saved = json.loads((f.metadata() or {}).get("settings", "{}"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read cached teacher pairs {path} ({e}); delete the file "
                          "and run again to make it anew") from None
    if saved != settings:
        diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise ConfigError(f"the cached teacher pairs in {path.parent} were made otherwise "
                          f"({', '.join(diff)} differ); use another --out or --pair-dir, or "
                          "delete that folder")


# ------------------------------------------------------------------------ the task
class StudentTask(Task):
    kind, name, rate_column = "prior", "distill", "pairs_per_s"
    curves, title = ("loss", "bit_accuracy"), "student distillation"
    cfg: PriorTrainConfig

    def __init__(self, cfg: PriorTrainConfig, run_dir: str | Path, teacher) -> None:
        """``teacher``: the loaded teacher pipeline (`bld.app.commands.load_teacher`)."""
        super().__init__(cfg)
        check_student(cfg.student.design, cfg.student.steps, cfg.student.bits)
        check_teacher(teacher, cfg.student.teacher)
        self.run_dir, self.teacher = Path(run_dir), teacher

    def load_data(self, ctx: Context) -> Dataset:
        s, pipe = self.cfg.student, self.teacher
        pipe.autoencoder.to(ctx.device)
        pipe.prior.model.to(ctx.device)
        sampler = pair_sampler(s)
        folder = Path(s.pair_dir) if s.pair_dir else self.run_dir / PAIRS_DIR
        self.data = make_pairs(pipe, s, folder, sampler, self.cfg.run.seed, ctx.device,
                               self.cfg.run.precision)
        _save_autoencoder(pipe, Path(self.cfg.autoencoder))
        return self.data

    def make_model(self, ctx: Context) -> torch.nn.Module:
        self.model = Denoiser(self.cfg.model)
        ckpt.load_state_strict(self.model, self.teacher.prior.model.state_dict(), "student")
        self.model.to(ctx.device)
        self.diffusion = self.teacher.prior.diffusion.to(ctx.device)
        return self.model

    def start(self, ctx: Context, gen: torch.Generator, state: dict[str, Any] | None) -> None:
        super().start(ctx, gen, state)
        self.seconds_before = float((state or {}).get("student_train_seconds", 0.0))
        self.t0 = time.perf_counter()

    def train_seconds(self) -> float:
        """Seconds this student has trained (earlier processes of a resumed run included;
        the teacher's pairs not)."""
        return self.seconds_before + time.perf_counter() - self.t0

    def state(self) -> dict[str, Any]:
        return {"student_train_seconds": self.train_seconds()}

    def summary(self) -> str:
        s, m = self.cfg.student, self.cfg.model
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"student ({s.design}, K = {s.steps}) of {s.teacher}: {n_params / 1e6:.2f}M "
                f"parameters (width {m.width}, depth {m.depth}), {len(self.data)} teacher pairs"
                + (f", {s.mixture} z_T per pair" if s.design == "mixture" else ""))

    def prepare(self, batch, parts: list[slice], step: int) -> None:
        items = batch[0].to(self.ctx.device)
        self.z0, self.u, self.y = items[:, 0], items[:, 1], batch[1].to(self.ctx.device)
        if self.cfg.student.design == "mixture":  # M draws of z_T per pair, for the whole step
            M = self.cfg.student.mixture
            self.z_T = (torch.rand((M, *self.z0.shape), generator=self.gen,
                                   device=self.ctx.device) < 0.5).float()

    def loss(self, net: torch.nn.Module, rows: slice) -> StudentLosses:
        s = self.cfg.student
        z0, y = self.z0[rows], self.y[rows]
        with self.ctx.autocast():
            if s.design == "coupled":
                logits = student_logits(net, self.diffusion, "coupled", self.u[rows], y)
                loss = F.binary_cross_entropy_with_logits(logits, z0)
                best = logits
            else:
                z_T = self.z_T[:, rows]
                M, B = z_T.shape[:2]
                logits = student_logits(net, self.diffusion, "mixture", z_T.flatten(0, 1),
                                        y.repeat(M)).view(M, B, *z0.shape[1:])
                ll = component_log_likelihoods(logits, z0)
                loss = mixture_nll(logits, z0, ll)
                # the component that explains each sample best (its posterior mode)
                best = logits[ll.argmax(0), torch.arange(B, device=z0.device)]
            if s.steps == 2:  # the second evaluation refines the first's bits
                first = student_bits(best.detach(), s.bits, generator=self.gen)
                _, logits2 = student_refine_logits(net, self.diffusion, first, y, self.gen)
                loss = loss + F.binary_cross_entropy_with_logits(logits2, z0)
        with torch.no_grad():
            acc = ((best > 0).float() == z0).float().mean()
        return StudentLosses(loss, acc)

    def row(self, losses: StudentLosses) -> dict[str, Any]:
        return {"loss": losses.loss.item(), "bit_accuracy": losses.accuracy.item()}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row['loss']:.4f}", "acc": f"{row['bit_accuracy']:.3f}"}

    def metadata(self, final: bool) -> dict[str, Any]:
        pr = self.teacher.prior.config
        return {"classes": list(self.teacher.classes),
                "train_seconds": round(self.train_seconds(), 1),
                "teacher_sampler": {"steps": self.cfg.student.teacher_steps,
                                    "guidance": pr.sample_guidance,
                                    "guidance_interval": list(pr.sample_guidance_interval),
                                    "temperature": pr.sample_temperature,
                                    "pairs": pair_sampler(self.cfg.student)}}

    def snapshot(self, ema_model: torch.nn.Module, step: int, folder: Path) -> None:
        """Eight samples per class (of the first ten), from a fixed seed."""
        s, device = self.cfg.student, self.ctx.device
        n_rows = max(1, min(self.cfg.model.num_classes, 10))
        y = torch.arange(n_rows, device=device).repeat_interleave(8)
        g = torch.Generator(device).manual_seed(1234)
        ae = self.teacher.autoencoder
        with self.ctx.autocast():
            z = student_sample(ema_model, self.diffusion, (len(y), *ae.config.latent_shape),
                               design=s.design, steps=s.steps, bits=s.bits, y=y, generator=g,
                               device=device).z0
            imgs = ae.decode(z).float().clamp(-1, 1)
        save_image(image_grid(imgs, nrow=8), folder / f"samples_{step:06d}.png")
        write_snapshot_index(folder, f"student ({s.design}, K = {s.steps}): samples, one row "
                                     "per class")


def pair_sampler(s: StudentConfig) -> str:
    """The sampler the pairs come from: coupled for the coupled design (it needs f(u, y)),
    the teacher's usual one for the mixture, unless ``pair_sampler`` says otherwise."""
    chosen = s.pair_sampler or ("coupled" if s.design == "coupled" else "plain")
    if s.design == "coupled" and chosen != "coupled":
        raise ConfigError("the coupled student learns f(u, y) and needs coupled pairs; drop "
                          "student.pair_sampler or set it to coupled")
    return chosen


def check_teacher(pipe, name: str) -> None:
    """A teacher must be a class-conditional diffusion prior (not a student): ``pipe`` is the
    loaded pipeline (`BinaryLatentDiffusionPipeline`; `bld.app.commands.load_teacher` loads
    one by name or folder)."""
    if pipe.is_student:
        raise ConfigError(f"{name} is itself a distilled student; distil from a diffusion "
                          "prior")
    if not pipe.num_classes or pipe.prior.model.null_label is None:
        raise ConfigError(f"{name} is unconditional: distillation folds classifier-free "
                          "guidance into a class-conditional student and needs a teacher "
                          "trained with classes")


def _save_autoencoder(pipe, path: Path) -> None:
    """The teacher's autoencoder as a checkpoint folder inside the run (once), so that the
    student loads with it wherever the teacher came from (a shipped model has none)."""
    if (path / "config.json").is_file():
        return
    data = from_dict(DataConfig, {k: v for k, v in (pipe.data or {}).items()
                                  if k in {f.name for f in dataclasses.fields(DataConfig)}})
    cfg = AutoencoderTrainConfig(data=data, model=pipe.autoencoder.config)
    ckpt.save_checkpoint(path, kind="autoencoder", config=to_dict(cfg), model=pipe.autoencoder,
                         metadata={"copied_from": "the teacher's autoencoder"})


def student_config(pipe, *, teacher: str, design: str, steps: int, out: str | Path,
                   pairs: int = 4096, train_steps: int = 2000, minutes: float = 0.0,
                   seed: int = 0, device: str = "auto", precision: str = "auto",
                   batch_size: int = 64, overrides: list[str] | None = None
                   ) -> PriorTrainConfig:
    """The student's run configuration: the teacher's model and diffusion, the student's
    settings (design, K, teacher, pairs), sampling in K steps without guidance, and the
    training settings of `bld distill` (``overrides``: --set KEY=VALUE on top)."""
    check_student(design, steps)
    t = pipe.prior.config
    cfg = dataclasses.replace(
        t, autoencoder=str((Path(out) / AUTOENCODER_DIR).resolve()), latents="", preset="",
        class_conditional=True, cond_drop=0.0, sample_steps=steps, sample_guidance=0.0,
        sample_guidance_interval=(0.0, 1.0), sample_temperature=1.0,
        student=StudentConfig(design=design, steps=steps, teacher=str(teacher), pairs=pairs),
        optim=OptimConfig(steps=train_steps, batch_size=batch_size, lr=5e-4, warmup=50,
                          weight_decay=0.0, ema_decay=0.99),
        run=RunConfig(seed=seed, device=device, precision=precision, log_every=10,
                      sample_every=0, ckpt_every=200, max_seconds=minutes * 60))
    if overrides:
        cfg = config_from_dict("prior", apply_overrides(to_dict(cfg), overrides))
    if cfg.student.pairs < cfg.optim.step_batch:
        raise ConfigError(f"{cfg.student.pairs} teacher pairs are fewer than one batch "
                          f"({cfg.optim.step_batch}); raise --pairs or lower --batch-size")
    return cfg


def distill(pipe, teacher: str, design: str, steps: int, out: str | Path, *, pairs: int = 4096,
            train_steps: int = 2000, minutes: float = 0.0, seed: int = 0,
            device: str = "auto", precision: str = "auto", batch_size: int = 64,
            overrides: list[str] | None = None, resume: bool = False,
            allow_config_change: bool = False, pairs_only: bool = False) -> Path:
    """`bld distill`: make (or reuse) the teacher's pairs in ``out``, then train the student
    there; returns the final checkpoint folder (with ``pairs_only``: the pairs' folder, no
    training). ``pipe``: the teacher, loaded (`bld.app.commands.load_teacher`); ``teacher``:
    its name or folder, as the student's config records it."""
    from .loop import fit
    check_student(design, steps)
    check_teacher(pipe, teacher)
    cfg = student_config(pipe, teacher=teacher, design=design, steps=steps, out=out,
                         pairs=pairs, train_steps=train_steps, minutes=minutes, seed=seed,
                         device=device, precision=precision, batch_size=batch_size,
                         overrides=overrides)
    if pairs_only:
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        s = cfg.student
        folder = Path(s.pair_dir) if s.pair_dir else Path(out) / PAIRS_DIR
        make_pairs(pipe, s, folder, pair_sampler(s), cfg.run.seed, pipe.device,
                   cfg.run.precision)
        return folder
    return fit(StudentTask(cfg, out, pipe), out, resume, allow_config_change)
