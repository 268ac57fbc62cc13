"""The grouped head (diffusion.bit_group g > 1): a categorical over the 2^g patterns of each
group of g bits. Its exact step against brute force over the joint, its reduction to the
per-bit step at g = 1, its loss, config errors, the denoiser's head, sampling and reloading.
"""

import itertools
import math

import pytest
import torch

from bld.core.checkpoint import save_checkpoint
from bld.core.config import ConfigError, PriorTrainConfig, config_from_dict, to_dict
from bld.core.loading import load_prior
from bld.models.autoencoder import AutoencoderConfig
from bld.models.denoiser import Denoiser, DenoiserConfig
from bld.models.diffusion import BernoulliDiffusion, DiffusionConfig, retention_schedule
from bld.models.sampling import sample
from bld.training.prior import resolve_prior_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _bits(v: int, g: int) -> tuple[int, ...]:
    """Pattern v's bits, bit i = (v >> i) & 1 (the library's order)."""
    return tuple((v >> i) & 1 for i in range(g))


def _q(zb: int, za: int, k: float) -> float:
    """q(z_b | z_a) for one bit with retention k: B(k z_a + (1 - k)/2)."""
    p1 = k * za + (1 - k) / 2
    return p1 if zb else 1 - p1


def _correlated(g: int, seed: int) -> torch.Tensor:
    """A z_0 distribution over the 2^g patterns that does not factorise over bits."""
    w = torch.rand(2 ** g, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = w ** 4  # uneven: a few patterns dominate
    w[0] += 1.0  # and all-zeros with its complement: bits strongly correlated
    w[-1] += 1.0
    return w / w.sum()


def _brute(p0: torch.Tensor, g: int, ks: float, kt: float):
    """Brute force over the joint of (z_0, z_s, z_t) for one group (z_0 ~ p0, z_s ~ q(z_s | z_0),
    z_t ~ q(z_t | z_s)): q(z_t) (V,), P(z_0 | z_t) (V_t, V_0), P(z_s | z_t) (V_t, V_s) and
    q(z_s) (V,)."""
    V = 2 ** g
    rho = kt / ks
    joint = torch.zeros(V, V, V, dtype=torch.float64)  # (z_0, z_s, z_t)
    for a, b, c in itertools.product(range(V), repeat=3):
        pa, pb, pc = _bits(a, g), _bits(b, g), _bits(c, g)
        joint[a, b, c] = p0[a] * math.prod(_q(pb[i], pa[i], ks) * _q(pc[i], pb[i], rho)
                                           for i in range(g))
    q_t = joint.sum((0, 1))
    post0 = (joint.sum(1) / q_t).T  # (z_t, z_0)
    post_s = (joint.sum(0) / q_t).T  # (z_t, z_s)
    return q_t, post0, post_s, joint.sum((0, 2))


def _z_t_patterns(g: int) -> torch.Tensor:
    """(2^g, g) float: every pattern of z_t, one per row (a batch of latents (B, C))."""
    return torch.tensor([_bits(c, g) for c in range(2 ** g)], dtype=torch.float32)


def _flip_logits(logp: torch.Tensor, g: int) -> torch.Tensor:
    """The flip network's output for given log P(z_0 = v | z_t = row c): l[f] = logp[f XOR c]."""
    V = 2 ** g
    return torch.stack([logp[c, [f ^ c for f in range(V)]] for c in range(V)])


# ---------------------------------------------------------------------------- exact step
@pytest.mark.parametrize("g", [2, 3])
@pytest.mark.parametrize("param", ["z0", "flip"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_grouped_step_equals_brute_force_over_the_joint(g, param, schedule):
    # fed the exact categorical P(z_0 | z_t) of a correlated z_0 distribution, the grouped step
    # is the exact P(z_s | z_t) over the whole group, and averaged over z_t ~ q(z_t) it gives
    # q(z_s); the per-bit step fed the same posterior's marginals misses the joint (method.md §2)
    T = 8
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=schedule, parameterization=param,
                                           bit_group=g))
    k = retention_schedule(schedule, T)
    p0 = _correlated(g, seed=g)
    zt = _z_t_patterns(g)
    worst_per_bit = 0.0
    for t, s in [(8, 7), (8, 1), (5, 3), (4, 0), (2, 1), (1, 0)]:
        q_t, post0, post_s, q_s = _brute(p0, g, k[s].item(), k[t].item())
        logp = post0.clamp_min(1e-300).log().float()  # (V_t, V_0)
        net = logp if param == "z0" else _flip_logits(logp, g)
        got_logp = d.group_logits(net, zt)[:, 0]  # (V_t, V)
        assert torch.allclose(got_logp.exp().double(), post0, atol=1e-6)
        n = zt.shape[0]
        step = d.group_step_probs(d.group_logits(net, zt), zt, torch.full((n,), t),
                                  torch.full((n,), s))[:, 0]  # (V_t, V_s)
        assert torch.allclose(step, post_s, atol=2e-6), (t, s, (step - post_s).abs().max())
        assert torch.allclose(q_t @ step, q_s, atol=2e-6)
        # the per-bit head: marginals of the same posterior, bits stepped independently
        marg = torch.sigmoid(d.marginal_logits(got_logp[:, None, :]))  # (V_t, g)
        p1 = d.posterior(marg, zt, torch.full((n,), t), torch.full((n,), s)).double()  # (V_t, g)
        P = torch.tensor([_bits(u, g) for u in range(2 ** g)], dtype=torch.float64)  # (V, g)
        # (V_t, V_s): the product of the per-bit steps
        fact = (P[None] * p1[:, None] + (1 - P[None]) * (1 - p1[:, None])).prod(-1)
        # each bit's marginal is still right (per-bit exact step), the joint is not
        assert torch.allclose((q_t @ fact) @ P, q_s @ P, atol=2e-6)
        worst_per_bit = max(worst_per_bit, 0.5 * (q_t @ fact - q_s).abs().sum().item())
    assert worst_per_bit > 0.05, worst_per_bit


def test_grouped_step_draws_from_its_distribution():
    # group_step (the sampler's draw) against group_step_probs, within 5 standard errors
    g, T, n = 3, 16, 20_000
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, parameterization="z0", bit_group=g))
    k = retention_schedule("cosine", T)
    p0 = _correlated(g, seed=7)
    t, s = 9, 4
    _, post0, _, _ = _brute(p0, g, k[s].item(), k[t].item())
    zt = _z_t_patterns(g).repeat(n, 1)  # (n 2^g, g)
    logp = d.group_logits(post0.log().float().repeat(n, 1), zt)
    tt, ss = torch.full((len(zt),), t), torch.full((len(zt),), s)
    for lam, tau in [(1.0, 1.0), (0.0, 0.8)]:
        want = d.group_step_probs(logp[:2 ** g], zt[:2 ** g], tt[:2 ** g], ss[:2 ** g], lam,
                                  tau)[:, 0]  # (V_t, V_s)
        z = d.group_step(logp, zt, tt, ss, lam, tau, generator=torch.Generator().manual_seed(0))
        assert set(z.unique().tolist()) <= {0.0, 1.0}
        idx = d.pattern_index(d.group_bits(z))[:, 0].view(n, 2 ** g)  # (n, V_t)
        freq = torch.stack([(idx == u).double().mean(0) for u in range(2 ** g)], 1)  # (V_t, V_s)
        se = (want * (1 - want) / n).sqrt()
        assert torch.all((freq - want).abs() <= 5 * se + 1e-4), (lam, tau)


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0, -0.5])
@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_one_bit_groups_are_the_per_bit_step(lam, tau):
    # the grouped step's weights pi(v) ∝ softmax(l'/tau)(v) q(z_t | v) at g = 1 are exactly
    # the per-bit step of docs/method.md §2, evidence weight and temperature included
    T = 16
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, parameterization="z0"))
    gen = torch.Generator().manual_seed(0)
    l = torch.randn(40, 5, generator=gen) * 3  # logit P(z_0 = 1 | z_t) per bit
    zt = (torch.rand(40, 5, generator=gen) < 0.5).float()
    net = torch.stack([torch.zeros_like(l), l], dim=2).reshape(40, 10)  # 2 logits per bit
    for t, s in [(16, 15), (12, 4), (5, 1), (3, 0)]:
        tt, ss = torch.full((40,), t), torch.full((40,), s)
        logp = d.group_logits(net, zt)  # (B, 5, 2)
        assert torch.allclose(d.marginal_logits(logp), l, atol=1e-5)
        got = d.group_step_probs(logp, zt, tt, ss, lam, tau)[:, :, 1]
        want = torch.sigmoid(d.posterior_logits(l, zt, tt, ss, evidence_weight=lam,
                                                temperature=tau)).double()
        assert torch.allclose(got, want, atol=1e-5), (t, s, (got - want).abs().max())


def test_evidence_weight_reweighs_patterns_by_q_z_t():
    # pi(v) ∝ p(v | z_t) q(z_t | v)^(1 - lambda): lambda = 1 keeps the network's posterior
    g, T = 3, 16
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, parameterization="z0", bit_group=g))
    kt = d.k64[6].item()
    logp = torch.log_softmax(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)), 1)
    zt = _z_t_patterns(g)
    q = torch.tensor([[math.prod(_q(_bits(c, g)[i], _bits(v, g)[i], kt) for i in range(g))
                       for v in range(8)] for c in range(8)], dtype=torch.float64)
    for lam in (1.0, 0.0, 0.5):
        got = d.group_weights(d.group_logits(logp, zt), zt, 6, lam).exp()[:, 0].double()
        want = logp.double().exp() * q ** (1 - lam)
        assert torch.allclose(got, want / want.sum(1, keepdim=True), atol=1e-5), lam


def test_marginals_and_argmax():
    d = BernoulliDiffusion(DiffusionConfig(parameterization="z0", bit_group=3))
    logp = torch.log_softmax(torch.randn(2, 16, 2, generator=torch.Generator().manual_seed(2)), 1)
    zt = torch.zeros(2, 6, 2)  # 2 groups of 3 bits at 2 positions
    lp = d.group_logits(logp, zt)  # (2, 2, 8, 2)
    P = torch.tensor([_bits(v, 3) for v in range(8)], dtype=torch.float32)
    want = torch.einsum("bgvh,vi->bgih", lp.exp(), P).reshape(2, 6, 2)
    assert torch.allclose(torch.sigmoid(d.marginal_logits(lp)), want, atol=1e-5)
    best = P[lp.argmax(2)].permute(0, 1, 3, 2).reshape(2, 6, 2)
    assert torch.equal(d.group_argmax(lp), best)
    # the z0_logits of a grouped diffusion are these marginals
    assert torch.allclose(d.z0_logits(logp, zt), d.marginal_logits(lp))


# ---------------------------------------------------------------------------------- loss
def test_loss_is_the_pattern_cross_entropy_per_bit():
    # a factorised categorical (pattern logit sum_i v_i l_i) gives the per-bit head's mean
    # BCE; flip and z0 parameterisations agree; weighted multiplies by 1 - (t - 1)/T
    g, T = 4, 16
    gen = torch.Generator().manual_seed(3)
    z0 = (torch.rand(6, 8, 2, 2, generator=gen) < 0.5).float()
    l = torch.randn(6, 8, 2, 2, generator=gen) * 2  # per-bit logit P(z_0 = 1 | z_t)
    t = torch.randint(1, T + 1, (6,), generator=gen)
    P = torch.tensor([_bits(v, g) for v in range(2 ** g)], dtype=torch.float32)  # (16, 4)
    per_bit = BernoulliDiffusion(DiffusionConfig(timesteps=T, parameterization="z0"))
    want = per_bit.training_losses(lambda z, tt, y: l, z0, t=t,
                                   generator=torch.Generator().manual_seed(4))
    for param in ("z0", "flip"):
        d = BernoulliDiffusion(DiffusionConfig(timesteps=T, parameterization=param, bit_group=g))

        def model(z_t, tt, y):
            lz = torch.einsum("vi,bgihw->bgvhw", P, l.view(6, 2, g, 2, 2))  # z_0 pattern logits
            if param == "flip":  # l_flip[f] = l_z0[f XOR c_t]
                c = d.pattern_index(d.group_bits(z_t)).unsqueeze(2)
                lz = lz.gather(2, torch.bitwise_xor(torch.arange(16).view(1, 1, 16, 1, 1), c))
            return lz.reshape(6, 32, 2, 2)

        out = d.training_losses(model, z0, t=t, generator=torch.Generator().manual_seed(4))
        assert torch.allclose(out.loss, want.loss, atol=1e-5) and out.aux == 0
        assert torch.allclose(out.accuracy, want.accuracy)
    wd = BernoulliDiffusion(DiffusionConfig(timesteps=T, parameterization="z0", bit_group=g,
                                            loss_type="weighted"))
    wl = wd.training_losses(lambda z, tt, y: torch.zeros(6, 32, 2, 2), z0, t=t)
    w = 1 - (t.float() - 1) / T
    assert torch.allclose(wl.loss, math.log(2) * w.mean(), atol=1e-6)  # uniform: log 2 per bit
    assert torch.allclose(wl.bce, torch.tensor(math.log(2)), atol=1e-6)


def test_training_learns_a_correlated_distribution():
    # a tiny grouped denoiser's loss falls below log 2 per bit, gradients finite
    torch.manual_seed(0)
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16, bit_group=4))
    net = Denoiser(DenoiserConfig(bits=8, grid=2, width=32, depth=1, heads=2, bit_group=4))
    pats = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(80):
        pick = torch.randint(0, 2, (64,), generator=gen)
        z0 = pats[pick][:, :, None, None].expand(64, 8, 2, 2).contiguous()
        out = d.training_losses(net, z0, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()
        losses.append(out.loss.item())
    assert abs(losses[0] - math.log(2)) < 1e-4  # zero-init head: uniform over patterns
    assert sum(losses[-10:]) / 10 < 0.8 * math.log(2), losses[-10:]


# ---------------------------------------------------------------------- config and head
def test_bad_bit_group_is_clear():
    for bad in (0, 9):
        with pytest.raises(ValueError, match="bit_group must be in 1..8"):
            DiffusionConfig(bit_group=bad)
    for loss in ("balanced", "focal"):
        with pytest.raises(ValueError, match="needs loss_type mean or weighted"):
            DiffusionConfig(bit_group=4, loss_type=loss)
    with pytest.raises(ValueError, match="aux_weight .* needs bit_group 1"):
        DiffusionConfig(bit_group=2, aux_weight=0.1)
    with pytest.raises(ValueError, match="must divide the 6 bits"):
        DenoiserConfig(bits=6, bit_group=4)
    with pytest.raises(ConfigError, match=r"divide the autoencoder's 12 bits.*\[1, 2, 3, 4, 6\]"):
        resolve_prior_config(PriorTrainConfig(diffusion=DiffusionConfig(bit_group=8)),
                             AutoencoderConfig(bits=12), 10)
    with pytest.raises(ConfigError, match="set diffusion.bit_group only"):
        config_from_dict("prior", {"model": {"bit_group": 4}})
    # a head of the wrong size says what to do
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16, bit_group=4))
    per_bit = Denoiser(DenoiserConfig(bits=8, grid=2, width=32, depth=1, heads=2))
    with pytest.raises(ValueError, match="build the Denoiser with bit_group=4"):
        sample(per_bit, d, (2, 8, 2, 2), steps=4)
    with pytest.raises(ValueError, match="C a multiple of 4"):
        d.group_bits(torch.zeros(2, 6, 2, 2))


def test_resolve_sets_the_head_from_the_diffusion_config():
    cfg = config_from_dict("prior", {"diffusion": {"bit_group": 4}, "preset": "tiny"})
    r = resolve_prior_config(cfg, AutoencoderConfig(bits=16), 10)
    assert r.model.bit_group == 4 and r.model.bits == 16 and r.model.out_channels == 4 * 16
    assert resolve_prior_config(config_from_dict("prior", {}), AutoencoderConfig(bits=16),
                                10).model.out_channels == 16


@pytest.mark.parametrize("patch", [1, 2])
def test_denoiser_head_gives_2_to_the_g_logits_per_group(patch):
    c = DenoiserConfig(bits=8, grid=3, width=32, depth=1, heads=2, patch=patch, bit_group=4)
    net = Denoiser(c)
    assert net.head.out_features == 2 * 16 * patch ** 2 and c.out_channels == 32
    assert net.head.weight.abs().sum() == 0 and net.head.bias.abs().sum() == 0
    out = net(torch.zeros(2, 8, 3, 3), torch.rand(2))
    assert out.shape == (2, 32, 3, 3)
    per_bit = Denoiser(DenoiserConfig(bits=8, grid=3, width=32, depth=1, heads=2, patch=patch))
    assert net.flops_per_forward() > per_bit.flops_per_forward()


def test_old_prior_configs_read_as_one_logit_per_bit():
    old = to_dict(PriorTrainConfig())
    del old["diffusion"]["bit_group"], old["model"]["bit_group"]
    cfg = config_from_dict("prior", old)
    assert cfg.diffusion.bit_group == 1 and cfg.model.bit_group == 1


# ------------------------------------------------------------------------------ sampling
def _grouped_prior(seed=0, **kw):
    torch.manual_seed(seed)
    net = Denoiser(DenoiserConfig(bits=8, grid=3, width=32, depth=1, heads=2, num_classes=3,
                                  bit_group=4, **kw))
    torch.nn.init.normal_(net.head.weight, std=0.5)
    return net.eval()


def test_sampling_with_guidance_temperature_and_inpainting():
    net = _grouped_prior()
    d = BernoulliDiffusion(DiffusionConfig(timesteps=32, bit_group=4))
    shape = (4, 8, 3, 3)
    y = torch.tensor([0, 1, 2, 0])
    gen = torch.Generator().manual_seed(5)
    known = (torch.rand(shape, generator=gen) < 0.5).float()
    mask = (torch.rand(shape, generator=gen) < 0.4).float()
    kw = dict(steps=8, y=y, guidance=1.5, guidance_interval=(0.0, 0.7), temperature=0.8,
              evidence_weight=0.5, null_label=net.null_label, known=known, mask=mask,
              return_intermediates=True)
    a = sample(net, d, shape, generator=torch.Generator().manual_seed(0), **kw)
    b = sample(net, d, shape, generator=torch.Generator().manual_seed(0), **kw)
    c = sample(net, d, shape, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a.z0, b.z0) and not torch.equal(a.z0, c.z0)
    assert set(a.z0.unique().tolist()) <= {0.0, 1.0}
    for z in [a.z_T, *a.intermediates]:
        assert torch.equal(z[mask > 0], known[mask > 0])
    # guidance 0 is plain conditional sampling
    g0 = sample(net, d, shape, steps=8, y=y, guidance=0.0, null_label=net.null_label,
                generator=torch.Generator().manual_seed(0)).z0
    c0 = sample(net, d, shape, steps=8, y=y, generator=torch.Generator().manual_seed(0)).z0
    assert torch.equal(g0, c0)


def test_final_step_is_the_argmax_pattern():
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16, parameterization="z0", bit_group=2))
    best = torch.tensor([2, 1, 3])  # per group, of 3 groups of 2 bits

    def model(z_t, t, y):
        out = torch.zeros(z_t.shape[0], 3, 4)
        out[:, torch.arange(3), best] = 1.0  # a mild preference: drawn steps vary
        return out.reshape(z_t.shape[0], 12)

    z = sample(model, d, (5, 6), steps=4, generator=torch.Generator().manual_seed(0)).z0
    want = torch.tensor([0, 1, 1, 0, 1, 1], dtype=torch.float32)
    assert torch.equal(z, want.expand(5, 6))



PATTERNS = torch.tensor([[1, 1, 0, 0, 1, 0],
                         [0, 1, 1, 0, 0, 1],
                         [1, 0, 1, 1, 0, 0],
                         [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
WEIGHTS = torch.tensor([0.45, 0.3, 0.15, 0.1])


def test_skipping_chain_reproduces_an_explicit_distribution():
    # one group of 6 bits with the exact categorical P(z_0 | z_t): every step is the exact
    # P(z_s | z_t) of the joint, so even S = 16 of T = 64 draws the patterns with their
    # frequencies (the per-bit head at S = 16 is off by 0.02-0.04, tests/test_sampling.py)
    d = BernoulliDiffusion(DiffusionConfig(timesteps=64, parameterization="z0", bit_group=6))
    T, idx = d.T, d.pattern_index(PATTERNS[:, None, :])[:, 0]  # the patterns' indices

    def model(z_t, t, y):
        B = z_t.shape[0]
        k = d.k64[(t * T).round().long()].view(B, 1)
        zt = z_t.reshape(B, 1, 6).double()
        like = torch.where(zt == PATTERNS.double()[None], (1 + k[..., None]) / 2,
                           (1 - k[..., None]) / 2).log().sum(-1)  # (B, 4)
        out = torch.full((B, 64), -1e4, dtype=torch.float64)
        out[:, idx] = like + WEIGHTS.double().log()
        return out.float()

    n = 20_000
    z = sample(model, d, (n, 6), steps=16, generator=torch.Generator().manual_seed(0)).z0
    match = (z[:, None, :] == PATTERNS[None]).all(-1).float()
    freq, off = match.mean(0), 1 - match.sum(1).mean()
    tv = 0.5 * ((freq - WEIGHTS).abs().sum() + off).item()
    assert tv < 0.012, tv


# ------------------------------------------------------------------------ save and reload
def test_saved_grouped_prior_reloads_and_samples_the_same(tmp_path):
    net = _grouped_prior(seed=3)
    cfg = PriorTrainConfig(model=net.config, diffusion=DiffusionConfig(timesteps=16, bit_group=4))
    save_checkpoint(tmp_path / "ck", kind="prior", config=to_dict(cfg), model=net, ema=net,
                    step=1, metadata={"classes": ["a", "b", "c"]})
    prior = load_prior(tmp_path / "ck")
    assert prior.diffusion.config.bit_group == 4 and prior.model.config.bit_group == 4
    y = torch.tensor([0, 1, 2])
    kw = dict(steps=6, y=y, guidance=1.0, null_label=net.null_label)
    a = sample(net, BernoulliDiffusion(cfg.diffusion), (3, 8, 3, 3),
               generator=torch.Generator().manual_seed(9), **kw).z0
    b = sample(prior.model, prior.diffusion, (3, 8, 3, 3),
               generator=torch.Generator().manual_seed(9), **kw).z0
    assert torch.equal(a, b)


def test_cli_trains_and_samples_a_grouped_prior(runs, tiny_prior_args, tmp_path, capsys):
    # train-prior with diffusion.bit_group=4 on the session's latents (8 bits per position),
    # then `bld sample` and `bld inpaint` through the pipeline: the head follows the config
    # (the preset's class-balanced loss is refused with the grouped head: loss_type mean)
    from bld.app.cli import main
    from bld.core.plots import save_image
    out = tmp_path / "prior"
    assert main(["train-prior", "--out", str(out), "--autoencoder", str(runs.ae), "--latents",
                 str(runs.latents), *tiny_prior_args, "--set", "diffusion.bit_group=4",
                 "--set", "diffusion.loss_type=mean"]) == 0
    prior = load_prior(out)
    assert prior.config.model.bit_group == 4 and prior.model.head.out_features == 2 * 16
    assert main(["sample", "--prior", str(out), "--autoencoder", str(runs.ae), "-n", "4",
                 "--steps", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    img = torch.zeros(1, 28, 28)
    mask = torch.ones(1, 28, 28)
    mask[:, 14:] = -1
    save_image(img, tmp_path / "img.png")
    save_image(mask, tmp_path / "mask.png")
    assert main(["inpaint", "--prior", str(out), "--autoencoder", str(runs.ae), "--image",
                 str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"), "-n", "2",
                 "--steps", "4", "--out", str(tmp_path / "i.png"), "--device", "cpu"]) == 0
    # a group that does not divide the 8 bits: one line, exit code 2
    assert main(["train-prior", "--out", str(tmp_path / "bad"), "--autoencoder", str(runs.ae),
                 "--latents", str(runs.latents), *tiny_prior_args,
                 "--set", "diffusion.bit_group=3", "--set", "diffusion.loss_type=mean"]) == 2
    assert "must divide the autoencoder's 8 bits" in capsys.readouterr().err
