"""Invariants of the Bernoulli noise process (SPEC 2)."""

import itertools

import pytest
import torch

from bld.diffusion import BernoulliDiffusion, DiffusionConfig, retention_schedule, sampling_timesteps

SCHEDULES = ["linear", "cosine", "sigmoid"]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1, 16, 64, 1000])
def test_schedule_endpoints_and_monotone(name, T):
    k = retention_schedule(name, T)
    assert k.dtype == torch.float64 and k.shape == (T + 1,)
    assert k[0] == 1.0 and k[-1] == 0.0
    assert torch.all(k[1:] <= k[:-1])
    assert torch.all((k >= 0) & (k <= 1))


def test_linear_schedule_matches_one_step_factors():
    # the original's "linear": rho_t = 1 - 1/(T - t + 1), k_t = prod rho = 1 - t/T
    T = 32
    rho = torch.tensor([1 - 1 / (T - t + 1) for t in range(1, T + 1)], dtype=torch.float64)
    k = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(rho, 0)])
    assert torch.allclose(k, retention_schedule("linear", T), atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_z_T_is_fair_coin(name):
    d = BernoulliDiffusion(DiffusionConfig(timesteps=20, schedule=name))
    z0 = torch.ones(100_000)
    assert torch.all(d.q_probs(z0, 20) == 0.5)
    assert torch.all(d.q_probs(torch.zeros(10), 20) == 0.5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_q_sample_mean_within_4_standard_errors(name):
    T, n = 20, 100_000
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=name))
    g = torch.Generator().manual_seed(0)
    for t in [1, 5, 10, 15, 20]:
        for z in (0.0, 1.0):
            z0 = torch.full((n,), z)
            zt = d.q_sample(z0, torch.full((n,), t), generator=g)
            k = d.k[t].item()
            p = k * z + (1 - k) / 2
            se = max((p * (1 - p) / n) ** 0.5, 1e-12)
            assert abs(zt.mean().item() - p) <= 4 * se + 1e-12, (name, t, z)


def _transition(rho):
    # 2x2 matrix M[a, b] = q(z_next = b | z_prev = a) = B(rho a + (1 - rho)/2)
    p1 = torch.tensor([(1 - rho) / 2, rho + (1 - rho) / 2], dtype=torch.float64)
    return torch.stack([1 - p1, p1], dim=1)


@pytest.mark.parametrize("name", SCHEDULES)
def test_multistep_factor_is_product_of_one_step_factors(name):
    # composing the one-step kernels q(z_r | z_{r-1}) from s to t gives q(z_t | z_s) with
    # rho = k_t / k_s: the factor used by the posterior when skipping steps
    T = 16
    k = retention_schedule(name, T)
    for s, t in [(0, 1), (0, 7), (3, 9), (5, 15), (1, 15)]:
        M = torch.eye(2, dtype=torch.float64)
        for r in range(s + 1, t + 1):
            M = M @ _transition((k[r] / k[r - 1]).item())
        assert torch.allclose(M, _transition((k[t] / k[s]).item()), atol=1e-12)


def _brute_force_posterior(p, zt, ks, kt):
    """P(z_s = 1 | z_t) by enumerating z_0 ~ B(p) and z_s in {0, 1} (Bayes)."""
    rho = kt / ks
    num = den = 0.0
    for z0, zs in itertools.product((0, 1), (0, 1)):
        prior = p if z0 else 1 - p
        q_s = ks * z0 + (1 - ks) / 2
        q_s = q_s if zs else 1 - q_s
        q_t = rho * zs + (1 - rho) / 2
        q_t = q_t if zt else 1 - q_t
        w = prior * q_s * q_t
        den += w
        num += w * zs
    return num / den


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_equals_brute_force_bayes(name):
    T = 8
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=name))
    g = torch.Generator().manual_seed(1)
    p = torch.rand(64, generator=g, dtype=torch.float64)
    p[:4] = torch.tensor([0.0, 1.0, 1e-6, 1 - 1e-6], dtype=torch.float64)
    zt = (torch.rand(64, generator=g) < 0.5).float()
    k = retention_schedule(name, T)
    for t in range(1, T + 1):
        for s in range(0, t):
            got = d.posterior(p.float()[:, None], zt[:, None], torch.full((64,), t),
                              torch.full((64,), s)).squeeze(1).double()
            want = torch.tensor([_brute_force_posterior(pi.item(), zi.item(), k[s].item(),
                                                        k[t].item())
                                 for pi, zi in zip(p, zt)], dtype=torch.float64)
            assert torch.all((got >= 0) & (got <= 1))
            assert torch.allclose(got, want, atol=2e-5), (t, s, (got - want).abs().max())


def test_posterior_is_z_t_marginal_consistent():
    # marginalising the one-step posterior over z_t ~ q(z_t | z_0) gives q(z_s | z_0)
    T = 10
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule="cosine"))
    for z0 in (0.0, 1.0):
        for t, s in [(10, 9), (6, 2), (3, 0)]:
            p_t1 = d.q_probs(torch.tensor([z0]), t).item()
            total = 0.0
            for zt, w in ((1.0, p_t1), (0.0, 1 - p_t1)):
                total += w * d.posterior(torch.tensor([[z0]]), torch.tensor([[zt]]), t, s).item()
            assert abs(total - d.q_probs(torch.tensor([z0]), s).item()) < 1e-5


def test_flip_parameterisation():
    d = BernoulliDiffusion(DiffusionConfig(parameterization="flip"))
    zt = torch.tensor([0.0, 1.0, 0.0, 1.0])
    flip_logit = torch.tensor([3.0, 3.0, -2.0, -2.0])
    f = torch.sigmoid(flip_logit)
    want = zt * (1 - f) + (1 - zt) * f  # SPEC 2: P(z_0 = 1 | z_t)
    assert torch.allclose(torch.sigmoid(d.z0_logits(flip_logit, zt)), want)
    d0 = BernoulliDiffusion(DiffusionConfig(parameterization="z0"))
    assert torch.equal(d0.z0_logits(flip_logit, zt), flip_logit)


def test_sampling_timesteps():
    assert sampling_timesteps(64, 64) == list(range(64, 0, -1))
    ts = sampling_timesteps(16, 64)
    assert len(ts) == 16 and ts[0] == 64 and ts[-1] == 1 and ts == sorted(ts, reverse=True)
    assert sampling_timesteps(1, 64) == [1]
    with pytest.raises(ValueError, match="steps must be in 1..64"):
        sampling_timesteps(65, 64)


@pytest.mark.parametrize("loss_type", ["mean", "weighted", "focal"])
@pytest.mark.parametrize("aux", [0.0, 0.5])
def test_losses_are_finite_and_differentiable(loss_type, aux):
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16, loss_type=loss_type, aux_weight=aux))
    w = torch.zeros(4, requires_grad=True)

    def model(z, t, y):
        return z * w.view(1, 4, 1, 1) + t.view(-1, 1, 1, 1)

    z0 = (torch.rand(8, 4, 3, 3) < 0.5).float()
    out = d.training_losses(model, z0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_network_sees_time_normalised_by_T():
    d = BernoulliDiffusion(DiffusionConfig(timesteps=64))
    seen = []

    def model(z, t, y):
        seen.append(t.clone())
        return torch.zeros_like(z)

    d.training_losses(model, torch.zeros(3, 2), t=torch.tensor([1, 32, 64]))
    assert torch.allclose(seen[0], torch.tensor([1 / 64, 0.5, 1.0]))
