"""Samplers (method.md §2, sampling): oracle recovery, guidance, inpainting, reproducibility."""

import pytest
import torch

from bld.models.denoiser import Denoiser, DenoiserConfig
from bld.models.diffusion import BernoulliDiffusion, DiffusionConfig
from bld.models.sampling import guided_logits, sample

T = 64
SHAPE = (4, 8, 3, 3)


def make_oracle(z0, parameterization="flip"):
    """A denoiser that knows z_0: flip logit +20 where z_t is wrong, -20 where right."""
    calls = []

    def model(z_t, t, y):
        calls.append(t.clone())
        if parameterization == "flip":
            return torch.where(z_t != z0[: z_t.shape[0]], 20.0, -20.0)
        return torch.where(z0[: z_t.shape[0]] > 0.5, 20.0, -20.0)

    return model, calls


@pytest.mark.parametrize("steps", [T, 16, 4])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("param", ["flip", "z0"])
def test_oracle_denoiser_recovers_z0(steps, schedule, param):
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=schedule, parameterization=param))
    z0 = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    model, calls = make_oracle(z0, param)
    out = sample(model, d, SHAPE, steps=steps, generator=torch.Generator().manual_seed(0),
                 return_intermediates=True)
    assert torch.equal(out.z0, z0)
    assert len(calls) == steps and len(out.intermediates) == steps
    # the network always sees t / T, never t / S
    assert calls[0][0].item() == 1.0 and abs(calls[-1][0].item() - 1 / T) < 1e-7
    # with an exact z_0 prediction, each intermediate z_s is distributed as q(z_s | z_0):
    # it agrees with z_0 on a share 1/2 + k_s/2 of bits (checked within 5 standard errors)
    n = z0.numel()
    for z, s in zip(out.intermediates[:-1], out.timesteps[1:]):
        want = 0.5 + d.k[s].item() / 2
        agree = (z == z0).float().mean().item()
        assert abs(agree - want) <= 5 * (want * (1 - want) / n) ** 0.5 + 1e-6, (s, agree, want)
    assert torch.equal(out.intermediates[-1], z0)


def test_same_seed_same_sample_and_different_seed_differs():
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(bits=8, grid=3, width=32, depth=1, heads=2, num_classes=3))
    torch.nn.init.normal_(net.head.weight, std=0.5)
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    y = torch.tensor([0, 1, 2, 0])
    a = sample(net, d, SHAPE, steps=16, y=y, generator=torch.Generator().manual_seed(7))
    b = sample(net, d, SHAPE, steps=16, y=y, generator=torch.Generator().manual_seed(7))
    c = sample(net, d, SHAPE, steps=16, y=y, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.z0, b.z0)
    assert not torch.equal(a.z0, c.z0)
    assert set(a.z0.unique().tolist()) <= {0.0, 1.0}


def _conditional_net():
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(bits=8, grid=3, width=32, depth=1, heads=2, num_classes=3))
    torch.nn.init.normal_(net.head.weight, std=0.5)
    torch.nn.init.normal_(net.class_embed.weight, std=1.0)
    return net.eval()


def test_guidance_zero_equals_plain_conditional_sampling():
    net = _conditional_net()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    y = torch.tensor([0, 1, 2, 1])
    plain = sample(net, d, SHAPE, steps=16, y=y, generator=torch.Generator().manual_seed(1))
    w0 = sample(net, d, SHAPE, steps=16, y=y, guidance=0.0, null_label=net.null_label,
                generator=torch.Generator().manual_seed(1))
    # a vanishing guidance scale goes through the batched cond/uncond path and agrees too
    w_tiny = sample(net, d, SHAPE, steps=16, y=y, guidance=1e-7, null_label=net.null_label,
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.z0, w0.z0)
    assert torch.equal(plain.z0, w_tiny.z0)


def test_guided_logits_formula():
    net = _conditional_net()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    z = (torch.rand(SHAPE) < 0.5).float()
    t = torch.full((4,), 30)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond = net(z, t / T, y)
        uncond = net(z, t / T, torch.full((4,), net.null_label))
        got = guided_logits(net, d, z, t, y, 3.0, net.null_label)
    assert not torch.allclose(cond, uncond)
    assert torch.allclose(got, 4.0 * cond - 3.0 * uncond, atol=1e-5)


def test_guided_logits_are_combined_in_float32_under_bf16():
    # under bf16 autocast the head's logits are bf16; the guided difference is taken in
    # float32, so it equals the float32 combination of those bf16 outputs
    net = _conditional_net()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    z = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    t = torch.full((4,), 30)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        both = net(torch.cat([z, z]), torch.cat([t, t]) / T,
                   torch.cat([y, torch.full_like(y, net.null_label)]))
        got = guided_logits(net, d, z, t, y, 3.0, net.null_label)
    assert both.dtype == torch.bfloat16 and got.dtype == torch.float32
    cond, uncond = both.float().chunk(2)
    assert torch.equal(got, 4.0 * cond - 3.0 * uncond)


def test_guidance_needs_null_label():
    net = _conditional_net()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    with pytest.raises(ValueError, match="null label"):
        sample(net, d, SHAPE, steps=4, y=torch.zeros(4, dtype=torch.long), guidance=1.0)


@pytest.mark.parametrize("steps", [T, 16])
def test_inpainting_keeps_every_known_bit(steps):
    net = _conditional_net()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    g = torch.Generator().manual_seed(5)
    known = (torch.rand(SHAPE, generator=g) < 0.5).float()
    mask = torch.zeros(SHAPE)
    mask[:, :, :2, :] = 1  # keep the top two rows of positions
    out = sample(net, d, SHAPE, steps=steps, y=torch.tensor([0, 1, 2, 0]), known=known, mask=mask,
                 generator=g, return_intermediates=True)
    for z in out.intermediates + [out.z0]:
        assert torch.equal(z[mask > 0], known[mask > 0])
    assert not torch.equal(out.z0[mask == 0], known[mask == 0])


def test_bad_arguments_are_clear():
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    model, _ = make_oracle(torch.zeros(SHAPE))
    for bad in (0, 1, T + 1):
        with pytest.raises(ValueError, match="steps must be in 2.."):
            sample(model, d, SHAPE, steps=bad)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, d, SHAPE, temperature=0)
    with pytest.raises(ValueError, match="both"):
        sample(model, d, SHAPE, known=torch.zeros(SHAPE))


PATTERNS = torch.tensor([[1, 1, 0, 0, 1, 0],
                         [0, 1, 1, 0, 0, 1],
                         [1, 0, 1, 1, 0, 0],
                         [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
WEIGHTS = torch.tensor([0.45, 0.3, 0.15, 0.1])


def exact_denoiser(diffusion, patterns=PATTERNS, weights=WEIGHTS):
    """The exact P(z_0 = 1 | z_t) per bit for z_0 drawn from an explicit pattern list
    (z0 parameterisation): Bayes over the patterns with likelihood q(z_t | pattern)."""
    T = diffusion.T

    def model(z_t, t, y):
        B = z_t.shape[0]
        k = diffusion.k64[(t * T).round().long()].view(B, 1, 1)  # (B, 1, 1)
        zt = z_t.reshape(B, 1, -1).double()  # (B, 1, D)
        x = patterns.double()[None]  # (1, J, D)
        like = torch.where(zt == x, (1 + k) / 2, (1 - k) / 2).log().sum(-1)  # (B, J)
        post = torch.softmax(like + weights.double().log()[None], dim=-1)  # (B, J)
        p = (post @ patterns.double()).clamp(1e-12, 1 - 1e-12)  # (B, D)
        return torch.logit(p).float().reshape(z_t.shape)

    return model


def _pattern_frequencies(z):
    flat = z.reshape(z.shape[0], -1)
    match = (flat[:, None, :] == PATTERNS[None]).all(-1).float()  # (B, J)
    return match.mean(0), 1 - match.sum(1).mean()


@pytest.mark.parametrize("steps,exact_tv,gap", [(64, 0.012, 0.015), (16, 0.04, 0.01)])
def test_exact_chain_reproduces_an_explicit_distribution(steps, exact_tv, gap):
    # method.md §2: with the exact denoiser and S = T, the exact step's chain draws the patterns with
    # their frequencies (total variation 0.003-0.005 over seeds, sampling noise ~0.005); the
    # original code's product (evidence weight 0) is off by 0.025-0.035. Skipping steps
    # (S = 16) draws bits independently over a larger jump, so both drift (0.02-0.03 vs 0.04).
    d = BernoulliDiffusion(DiffusionConfig(timesteps=64, schedule="cosine", parameterization="z0"))
    model = exact_denoiser(d)
    n = 20_000
    tv = {}
    for lam in (1.0, 0.0):
        z = sample(model, d, (n, 6, 1, 1), steps=steps, evidence_weight=lam,
                   generator=torch.Generator().manual_seed(0)).z0
        freq, off = _pattern_frequencies(z)
        tv[lam] = 0.5 * ((freq - WEIGHTS).abs().sum() + off).item()
    assert tv[1.0] < exact_tv, tv
    assert tv[0.0] > tv[1.0] + gap, tv



def test_guidance_interval_guides_only_inside_it():
    # guided steps evaluate cond + uncond (a doubled batch); outside the interval plain
    net = _conditional_net()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    sizes, ts = [], []
    forward = net.forward

    def spy(z, t, y=None, **kw):
        sizes.append(z.shape[0])
        ts.append(round(t[0].item() * T))
        return forward(z, t, y, **kw)

    net.forward = spy
    sample(net, d, SHAPE, steps=4, y=torch.tensor([0, 1, 2, 0]), guidance=2.0,
           null_label=net.null_label, guidance_interval=(0.5, 1.0),
           generator=torch.Generator().manual_seed(0))
    assert ts == [64, 43, 22, 1] and sizes == [8, 8, 4, 4]
    # the demo's time plan prices sampling from the same rule: mean batch 6 of 8 images
    from bld.app.budget import guided_share
    assert guided_share(4, T, 2.0, (0.5, 1.0)) == sum(sizes) / (8 * len(sizes))
    assert guided_share(4, T, 2.0) == 1.0 and guided_share(4, T, 0.0) == 0.5
    with pytest.raises(ValueError, match="guidance_interval"):
        sample(net, d, SHAPE, steps=4, guidance_interval=(0.6, 0.2))
