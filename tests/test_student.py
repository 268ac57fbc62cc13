"""Distilled students (docs/distill.md): the coupled teacher sampler, the one-step teacher,
the mixture loss, `bld distill` through the training loop, and its refusals.

Every model here is tiny and random (no dataset, no training to speak of): the tests check
the code paths and the maths, not what a student learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bld.app.commands import load_teacher
from bld.core.config import ConfigError, PriorTrainConfig
from bld.core.loading import LoadedPrior
from bld.inference.pipeline import BinaryLatentDiffusionPipeline
from bld.models.autoencoder import AutoencoderConfig, BinaryAutoencoder
from bld.models.denoiser import Denoiser, DenoiserConfig
from bld.models.diffusion import BernoulliDiffusion, DiffusionConfig
from bld.models.sampling import sample, sample_one_step, student_sample
from bld.training.student import distill as _distill
from bld.training.student import make_pairs, mixture_nll

SHAPE = (6, 8, 7, 7)  # (B, C, h, w) of the tiny models below


def _denoiser(num_classes: int = 3, seed: int = 0) -> Denoiser:
    """A tiny random denoiser whose output depends on z_t, t and the class (every weight
    random, the zero-initialised head and adaLN modulations included)."""
    torch.manual_seed(seed)
    model = Denoiser(DenoiserConfig(bits=8, grid=7, width=32, depth=1, heads=2,
                                    num_classes=num_classes, conditioning="adaln"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _teacher(folder, num_classes: int = 3):
    """A tiny random pipeline written with save_pretrained: a teacher for `bld distill`."""
    torch.manual_seed(1)
    ae = BinaryAutoencoder(AutoencoderConfig(channels=8, channel_mult=(1, 2, 4), hidden=16,
                                             bits=8, attention=False))
    cfg = PriorTrainConfig(model=_denoiser(num_classes).config,
                           diffusion=DiffusionConfig(timesteps=16, loss_type="balanced"),
                           class_conditional=num_classes > 0, sample_guidance=1.0,
                           sample_guidance_interval=(0.0, 0.6))
    model = _denoiser(num_classes)
    classes = tuple(f"c{i}" for i in range(num_classes))
    pipe = BinaryLatentDiffusionPipeline(
        ae, LoadedPrior(model, BernoulliDiffusion(cfg.diffusion), cfg, classes, folder),
        {"source": "fashion-mnist"})
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, one_thread):
    return _teacher(tmp_path_factory.mktemp("teacher"))


def distill(teacher, design, steps, out, **kw):
    """`bld distill` as the CLI runs it: the teacher loaded by name or folder, then trained."""
    return _distill(load_teacher(teacher, "cpu"), teacher, design, steps, out, **kw)


TRAIN = ["student.pair_batch=8", "student.mixture=3", "run.threads=1", "run.ckpt_every=2",
         "optim.warmup=1"]


# ------------------------------------------------------------------ coupled sampling
def test_coupled_teacher_is_a_function_of_u(one_thread):
    model, d = _denoiser(), BernoulliDiffusion(DiffusionConfig(timesteps=16))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    u = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=8, y=y, guidance=1.0, null_label=model.null_label)
    a = sample(model, d, SHAPE, generator=torch.Generator().manual_seed(1), noise=u, **kw).z0
    b = sample(model, d, SHAPE, generator=torch.Generator().manual_seed(2), noise=u, **kw).z0
    assert torch.equal(a, b), "the coupled sample must depend on u only, not the generator"
    other = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5))
    c = sample(model, d, SHAPE, noise=other, **kw).z0
    assert not torch.equal(a, c)
    # without noise the generator decides, as before
    p = sample(model, d, SHAPE, generator=torch.Generator().manual_seed(1), **kw).z0
    q = sample(model, d, SHAPE, generator=torch.Generator().manual_seed(2), **kw).z0
    assert not torch.equal(p, q)
    with pytest.raises(ValueError, match="sample shape"):
        sample(model, d, SHAPE, noise=u[:2], **kw)
    # a rotated u is still a function of u, and another one than the same u at every step
    r1 = sample(model, d, SHAPE, generator=torch.Generator().manual_seed(1), noise=u,
                noise_shift=0.618, **kw).z0
    r2 = sample(model, d, SHAPE, generator=torch.Generator().manual_seed(2), noise=u,
                noise_shift=0.618, **kw).z0
    assert torch.equal(r1, r2) and not torch.equal(r1, a)


def test_the_same_u_at_every_step_sticks_to_z_T():
    """A network that predicts p = 0.6 for every bit at every step: with the same u a bit
    of z_T = [u < 1/2] moves only where u falls between the step probabilities; the rotated
    u draws each step afresh, so about as many bits move as in the plain sampler."""
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16))

    def model(z, t, y):  # flip logit making logit P(z_0 = 1 | z_t) = logit(0.6)
        return (1 - 2 * z) * math.log(1.5)
    shape = (64, 8, 7, 7)
    u = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    z_T = (u < 0.5).float()
    agree = {}
    for name, kw in (("same", dict(noise=u)), ("rotated", dict(noise=u, noise_shift=0.618)),
                     ("plain", dict(generator=torch.Generator().manual_seed(0)))):
        out = sample(model, d, shape, steps=8, return_intermediates=True, **kw)
        start = out.z_T if name == "plain" else z_T
        agree[name] = (out.intermediates[0] == start).float().mean().item()
    assert agree["same"] > 0.85 and agree["rotated"] < 0.65 and agree["plain"] < 0.65


def test_coupled_start_and_draw_follow_u():
    """z_T = [u < 0.5]; with a network that knows nothing (p = 1/2 at every step of a
    one-step-per-T prior) the coupled sample is [u < 1/2] = z_T, not a fresh draw."""
    d = BernoulliDiffusion(DiffusionConfig(timesteps=4))
    u = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    seen = []

    def know_nothing(z, t, y):
        seen.append(z.clone())
        return torch.zeros_like(z)
    sample(know_nothing, d, SHAPE, steps=4, noise=u)
    assert torch.equal(seen[0], (u < 0.5).float())
    # one step: z_0 = [u < P(z_0 = 1 | z_T)] = [u < 1/2] with the same u
    seen.clear()
    out = sample_one_step(know_nothing, d, SHAPE, noise=u, device="cpu")
    assert len(seen) == 1 and torch.equal(out.z0, (u < 0.5).float())
    flipped = sample_one_step(know_nothing, d, SHAPE, noise=1 - u, device="cpu")
    assert torch.equal(flipped.z0, 1 - out.z0)


# ---------------------------------------------------------------- the one-step teacher
def test_one_step_draws_from_the_posterior_at_T():
    """One evaluation at t / T = 1; z_0 drawn from sigma(l' / tau), not thresholded."""
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16))
    calls = []

    def model(z, t, y):  # flip logits that make logit P(z_0 = 1 | z_T) = 1 for every bit
        calls.append(t.clone())
        return (1 - 2 * z) * 1.0
    shape = (400, 8, 7, 7)
    for tau in (1.0, 2.0):
        calls.clear()
        z0 = sample_one_step(model, d, shape, temperature=tau, device="cpu",
                             generator=torch.Generator().manual_seed(0)).z0
        assert len(calls) == 1 and torch.all(calls[0] == 1.0)
        assert set(z0.unique().tolist()) == {0.0, 1.0}
        assert abs(z0.mean().item() - torch.sigmoid(torch.tensor(1.0 / tau)).item()) < 0.01
    # the interval (0, 0.6) skips guidance at t = T: one plain pass; (0, 1) guides: doubled
    net = _denoiser()
    y = torch.zeros(SHAPE[0], dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    a = sample_one_step(net, d, SHAPE, y=y, guidance=2.0, guidance_interval=(0, 0.6),
                        null_label=net.null_label, generator=g).z0
    b = sample_one_step(net, d, SHAPE, y=y, generator=torch.Generator().manual_seed(3)).z0
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        sample_one_step(model, d, shape, temperature=0, device="cpu")


# --------------------------------------------------------------------- mixture loss
def test_mixture_loss_is_bce_for_one_component_and_lower_for_more():
    g = torch.Generator().manual_seed(0)
    z0 = (torch.rand(4, 8, 7, 7, generator=g) < 0.5).float()
    one = torch.randn(1, 4, 8, 7, 7, generator=g)
    assert torch.allclose(mixture_nll(one, z0), F.binary_cross_entropy_with_logits(one[0], z0),
                          atol=1e-6)
    many = torch.randn(5, 4, 8, 7, 7, generator=g) * 2
    each = torch.stack([F.binary_cross_entropy_with_logits(m, z0) for m in many])
    mix = mixture_nll(many, z0)
    assert mix <= each.mean() + 1e-6
    assert mix < each.mean() - 1e-3, "distinct components must gain over their mean"
    # per sample, between the best component's loss and that plus log(M) (nats per bit)
    bits = z0[0].numel()
    per = F.binary_cross_entropy_with_logits(many, z0.expand_as(many), reduction="none")
    best = per.flatten(2).sum(-1).min(0).values.mean() / bits
    assert best - 1e-6 <= mix <= best + math.log(5) / bits + 1e-6
    # identical components: no gain
    same = one.expand(5, *one.shape[1:])
    assert torch.allclose(mixture_nll(same, z0), mixture_nll(one, z0), atol=1e-6)


# ------------------------------------------------------------------- bld distill
def test_pairs_are_cached_and_resumable(teacher, tmp_path, monkeypatch):
    import bld.training.student as st
    from bld.core.config import StudentConfig
    pipe = load_teacher(str(teacher))
    cfg = StudentConfig(design="coupled", pairs=20, pair_batch=8, teacher_steps=4)
    calls = []
    real = st.sample
    monkeypatch.setattr(st, "sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = make_pairs(pipe, cfg, tmp_path, "coupled", 0, torch.device("cpu"))
    assert len(calls) == 3 and len(first) == 20 and first.u.shape == (20, 8, 7, 7)
    assert first.labels.tolist() == [i % 3 for i in range(20)]
    # the pairs are the coupled teacher's f(u, y)
    again = real(pipe.prior.model, pipe.prior.diffusion, (8, 8, 7, 7), steps=4,
                 y=first.labels[:8], guidance=1.0, guidance_interval=(0, 0.6),
                 null_label=pipe.prior.model.null_label, noise=first.u[:8],
                 noise_shift=cfg.coupling_shift).z0
    assert torch.equal(again, first.z0[:8].float())
    (tmp_path / "chunk_00001.safetensors").unlink()  # as if killed while making it
    calls.clear()
    second = make_pairs(pipe, cfg, tmp_path, "coupled", 0, torch.device("cpu"))
    assert len(calls) == 1, "only the missing chunk is made again"
    assert torch.equal(second.z0, first.z0) and torch.equal(second.u, first.u)
    with pytest.raises(ConfigError, match="made otherwise"):
        make_pairs(pipe, cfg, tmp_path, "plain", 0, torch.device("cpu"))


@pytest.mark.parametrize("design,steps", [("mixture", 1), ("coupled", 2)])
def test_distill_checkpoints_resumes_and_samples(teacher, tmp_path, design, steps):
    out = tmp_path / "student"
    kw = dict(pairs=24, batch_size=8, device="cpu", overrides=TRAIN)
    distill(str(teacher), design, steps, out, train_steps=2, **kw)
    assert (out / "checkpoints" / "step_000002").is_dir() and (out / "pairs").is_dir()
    distill(str(teacher), design, steps, out, train_steps=4, resume=True,
            allow_config_change=True, **kw)
    from bld.core.checkpoint import load_checkpoint
    ck = load_checkpoint(out, kind="prior")
    assert ck.step == 4 and ck.metadata["train_seconds"] > 0
    assert ck.config["student"]["design"] == design and ck.config["student"]["steps"] == steps
    assert ck.config["student"]["teacher"] == str(teacher)
    pipe = BinaryLatentDiffusionPipeline.from_run(out)
    assert pipe.is_student and pipe.default_steps == steps and pipe.default_guidance == 0
    res = pipe(class_labels=[0, 1, 2], n=5, output_type="pt", return_bits=True,
               return_trajectory=True)
    assert res.images.shape == (5, 1, 28, 28) and res.bits.shape == (5, 8, 7, 7)
    assert len(res.trajectory) == steps + 1 and res.timesteps[0] == 16
    one = pipe(class_labels=[0], n=2, steps=1, output_type="pt")
    assert one.images.shape == (2, 1, 28, 28)
    # the student starts from the teacher's weights and moved away from them
    teacher_pipe = BinaryLatentDiffusionPipeline.from_pretrained(str(teacher))
    assert not torch.equal(pipe.prior.model.head.weight, teacher_pipe.prior.model.head.weight)


def test_student_sampler_reads_its_bits_setting():
    model, d = _denoiser(), BernoulliDiffusion(DiffusionConfig(timesteps=16))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    u = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    kw = dict(design="coupled", y=y, noise=u)
    t1 = student_sample(model, d, SHAPE, bits="threshold", **kw).z0
    t2 = student_sample(model, d, SHAPE, bits="threshold", generator=torch.Generator()
                        .manual_seed(9), **kw).z0
    assert torch.equal(t1, t2), "thresholded bits are a function of u"
    d1 = student_sample(model, d, SHAPE, generator=torch.Generator().manual_seed(1), **kw).z0
    d2 = student_sample(model, d, SHAPE, generator=torch.Generator().manual_seed(2), **kw).z0
    assert not torch.equal(d1, d2), "drawn bits use the generator"


# ------------------------------------------------------------------------ refusals
def test_bad_distill_input_is_a_clear_error(teacher, tmp_path, capsys):
    from bld.app.cli import main
    with pytest.raises(ValueError, match="unknown student design 'gan'"):
        distill(str(teacher), "gan", 1, tmp_path / "a")
    with pytest.raises(ValueError, match="K = 1 or 2 steps, got 3"):
        distill(str(teacher), "coupled", 3, tmp_path / "a")
    unconditional = _teacher(tmp_path / "uncond", num_classes=0)
    with pytest.raises(ConfigError, match="unconditional"):
        distill(str(unconditional), "mixture", 1, tmp_path / "b", pairs=8, batch_size=8)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        distill(str(teacher), "mixture", 1, tmp_path / "c", pairs=4, batch_size=8)
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", str(teacher), "--design", "gan", "--out",
              str(tmp_path / "d")])
    assert "invalid choice: 'gan'" in capsys.readouterr().err
    assert main(["distill", "--teacher", "no-such-model", "--design", "coupled", "--out",
                 str(tmp_path / "e")]) == 2
    assert "neither a folder nor a shipped model" in capsys.readouterr().err


def test_a_student_refuses_guidance_inpainting_and_other_steps(teacher, tmp_path):
    out = tmp_path / "s"
    distill(str(teacher), "mixture", 1, out, pairs=8, batch_size=8, train_steps=1,
            device="cpu", overrides=TRAIN)
    pipe = BinaryLatentDiffusionPipeline.from_run(out)
    with pytest.raises(ValueError, match="guidance is folded into its weights"):
        pipe(class_labels=[0], guidance=1.0)
    with pytest.raises(ValueError, match="1 or 2 steps, got 16"):
        pipe(class_labels=[0], steps=16)
    with pytest.raises(ValueError, match="cannot inpaint"):
        pipe.inpaint(torch.zeros(1, 28, 28), torch.ones(28, 28, dtype=torch.bool))
    with pytest.raises(ConfigError, match="itself a distilled student"):
        distill(str(out), "mixture", 1, tmp_path / "again", pairs=8, batch_size=8)
