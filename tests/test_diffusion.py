"""Invariants of the Bernoulli noise process (docs/method.md §2)."""

import itertools
import math

import pytest
import torch

from bld.models.diffusion import (BernoulliDiffusion, DiffusionConfig, retention_schedule,
                                  sampling_timesteps)

SCHEDULES = ["linear", "cosine", "sigmoid"]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1, 16, 64, 1000])
def test_schedule_endpoints_and_monotone(name, T):
    k = retention_schedule(name, T)
    assert k.dtype == torch.float64 and k.shape == (T + 1,)
    assert k[0] == 1.0 and k[-1] == 0.0
    assert torch.all(k[1:] <= k[:-1])
    assert torch.all((k >= 0) & (k <= 1))


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("shift", [0.5, 2.0, 3.0])
def test_schedule_shift_keeps_endpoints_and_moves_steps_toward_noise(name, shift):
    T = 64
    k, plain = retention_schedule(name, T, shift), retention_schedule(name, T)
    assert k[0] == 1.0 and k[-1] == 0.0 and torch.all(k[1:] <= k[:-1])
    inner = slice(1, T)
    if shift > 1:  # every inner step is noisier than the plain schedule's
        assert torch.all(k[inner] < plain[inner])
    else:
        assert torch.all(k[inner] > plain[inner])
    # the shift only relabels time: the shifted linear schedule is 1 - s'
    s = torch.arange(T + 1, dtype=torch.float64) / T
    s2 = shift * s / (1 + (shift - 1) * s)
    if name == "linear":
        assert torch.allclose(k, 1 - s2, atol=1e-12)
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=name, schedule_shift=shift))
    assert torch.equal(d.k64, k)
    assert torch.equal(retention_schedule(name, T, 1.0), plain)
    with pytest.raises(ValueError, match="schedule_shift"):
        DiffusionConfig(schedule_shift=0.0)


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


def _joint_step(pi, ks, kt):
    """Brute force over the joint of (z_0, z_s, z_t) with z_0 ~ B(pi), z_s ~ q(z_s | z_0),
    z_t ~ q(z_t | z_s): returns, for z_t = 0 and 1, P(z_0 = 1 | z_t) and P(z_s = 1 | z_t),
    and the marginals q(z_t = 1), q(z_s = 1)."""
    rho = kt / ks
    joint = {}
    for z0, zs, zt in itertools.product((0, 1), (0, 1), (0, 1)):
        p0 = pi if z0 else 1 - pi
        q_s = ks * z0 + (1 - ks) / 2
        q_t = rho * zs + (1 - rho) / 2
        joint[z0, zs, zt] = p0 * (q_s if zs else 1 - q_s) * (q_t if zt else 1 - q_t)
    out = {}
    for zt in (0, 1):
        den = sum(v for (a, b, c), v in joint.items() if c == zt)
        p_z0 = sum(v for (a, b, c), v in joint.items() if c == zt and a == 1) / den
        p_zs = sum(v for (a, b, c), v in joint.items() if c == zt and b == 1) / den
        out[zt] = (p_z0, p_zs, den)
    q_s1 = sum(v for (a, b, c), v in joint.items() if b == 1)
    return out, q_s1


@pytest.mark.parametrize("name", SCHEDULES)
def test_exact_step_equals_brute_force_over_the_joint(name):
    # fed the exact P(z_0 | z_t) of a known z_0 distribution, the posterior is the exact
    # P(z_s | z_t) of the joint of (z_0, z_s, z_t), for every s < t (docs/method.md §2)
    T = 8
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=name))
    k = retention_schedule(name, T)
    g = torch.Generator().manual_seed(1)
    pis = torch.rand(24, generator=g, dtype=torch.float64).tolist() + [0.0, 1.0, 1e-6, 1 - 1e-6]
    for t in range(1, T + 1):
        for s in range(0, t):
            p, zt, want = [], [], []
            for pi in pis:
                step, _ = _joint_step(pi, k[s].item(), k[t].item())
                for z in (0, 1):
                    p.append(step[z][0])
                    zt.append(float(z))
                    want.append(step[z][1])
            n = len(p)
            got = d.posterior(torch.tensor(p)[:, None], torch.tensor(zt)[:, None],
                              torch.full((n,), t), torch.full((n,), s)).squeeze(1).double()
            want = torch.tensor(want, dtype=torch.float64)
            assert torch.all((got >= 0) & (got <= 1))
            assert torch.allclose(got, want, atol=2e-5), (t, s, (got - want).abs().max())


@pytest.mark.parametrize("name", SCHEDULES)
def test_exact_step_maps_q_t_to_q_s(name):
    # averaging the step over z_t ~ q(z_t) gives q(z_s) for a non-degenerate z_0
    # distribution; the uncorrected product (evidence weight 0) does not
    T = 16
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule=name))
    k = retention_schedule(name, T)
    worst_uncorrected = 0.0
    for pi in (0.1, 0.5, 0.8):
        for t, s in [(16, 15), (12, 4), (8, 7), (5, 1), (3, 0)]:
            step, q_s1 = _joint_step(pi, k[s].item(), k[t].item())
            for lam, tol in ((1.0, 1e-5), (0.0, None)):
                total = 0.0
                for z in (0, 1):
                    p = torch.tensor([[step[z][0]]])
                    total += step[z][2] * d.posterior(p, torch.tensor([[float(z)]]), t, s,
                                                      evidence_weight=lam).item()
                if tol is not None:
                    assert abs(total - q_s1) < tol, (pi, t, s, total, q_s1)
                else:
                    worst_uncorrected = max(worst_uncorrected, abs(total - q_s1))
    assert worst_uncorrected > 0.02  # the test would catch the double-counted evidence


def test_evidence_weight_zero_is_the_uncorrected_product():
    # lambda = 0 is the original code's a/L product with p itself as the prior on z_0
    T = 16
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T))
    k = retention_schedule("cosine", T)
    for t, s in [(16, 10), (9, 8), (4, 0)]:
        rho = k[t].item() / k[s].item()
        for p in (0.03, 0.5, 0.9):
            for zt in (0, 1):
                a1 = k[s].item() * p + (1 - k[s].item()) / 2
                a0 = k[s].item() * (1 - p) + (1 - k[s].item()) / 2
                L1 = rho * zt + (1 - rho) / 2
                L0 = rho * (1 - zt) + (1 - rho) / 2
                want = a1 * L1 / (a1 * L1 + a0 * L0)
                got = d.posterior(torch.tensor([[p]]), torch.tensor([[float(zt)]]), t, s,
                                  evidence_weight=0.0).item()
                assert abs(got - want) < 1e-5


def test_evidence_is_the_log_likelihood_ratio_of_z_t():
    T = 16
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, schedule="linear"))
    zt = torch.tensor([[0.0], [1.0], [1.0]])
    t = torch.tensor([4, 4, 16])
    k = 1 - 4 / 16
    want = torch.tensor([[-math.log((1 + k) / (1 - k))], [math.log((1 + k) / (1 - k))], [0.0]])
    assert torch.allclose(d.evidence(zt, t), want, atol=1e-6)
    with pytest.raises(ValueError, match="t >= 1"):
        d.evidence(zt, torch.tensor([0, 1, 2]))


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
    want = zt * (1 - f) + (1 - zt) * f  # docs/method.md §2: P(z_0 = 1 | z_t)
    assert torch.allclose(torch.sigmoid(d.z0_logits(flip_logit, zt)), want)
    d0 = BernoulliDiffusion(DiffusionConfig(parameterization="z0"))
    assert torch.equal(d0.z0_logits(flip_logit, zt), flip_logit)


def test_sampling_timesteps():
    assert sampling_timesteps(64, 64) == list(range(64, 0, -1))
    ts = sampling_timesteps(16, 64)
    assert len(ts) == 16 and ts[0] == 64 and ts[-1] == 1 and ts == sorted(ts, reverse=True)
    assert sampling_timesteps(2, 64) == [64, 1]
    for bad in (0, 1, 65):
        with pytest.raises(ValueError, match="steps must be in 2..64"):
            sampling_timesteps(bad, 64)


def _recording_model(weights):
    """A flip-logit model whose output depends on z_t and t; it records what it saw."""
    seen = {}

    def model(z, t, y):
        seen["z_t"], seen["t"] = z.detach().clone(), t.detach().clone()
        return (2 * z - 1) * weights.view(1, -1, 1, 1) + (t.view(-1, 1, 1, 1) - 0.5) * 3.0

    return model, seen


def _bce(logit, target):
    # -[y log sigmoid(l) + (1 - y) log(1 - sigmoid(l))], written out by hand
    return -(target * math.log(1 / (1 + math.exp(-logit)))
             + (1 - target) * math.log(1 / (1 + math.exp(logit))))


@pytest.mark.parametrize("loss_type", ["mean", "weighted", "balanced", "focal"])
def test_loss_equals_a_hand_computed_value(loss_type):
    # each loss, recomputed element by element with plain floats from what the network saw
    T = 8
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, loss_type=loss_type, focal_gamma=2.0))
    k = retention_schedule("cosine", T)
    w = torch.tensor([0.7, -1.3, 2.0], requires_grad=True)
    model, seen = _recording_model(w)
    z0 = (torch.rand(4, 3, 2, 2, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    t = torch.tensor([1, 3, 6, 8])
    out = d.training_losses(model, z0, t=t, generator=torch.Generator().manual_seed(0))
    net = model(seen["z_t"], seen["t"], None).detach()
    total, weight_sum, per_sample = 0.0, 0.0, []
    for b in range(4):
        r = (1 - k[t[b]].item()) / 2
        flips = sum(float(z0[b].flatten()[i] != seen["z_t"][b].flatten()[i]) for i in range(12))
        sample_sum = 0.0
        for i in range(12):
            zt, y = seen["z_t"][b].flatten()[i].item(), z0[b].flatten()[i].item()
            raw = net[b].flatten()[i].item() * (1 - 2 * zt)  # flip logit -> z_0 logit
            flip = float(zt != y)
            if loss_type in ("mean", "weighted"):
                sample_sum += _bce(raw, y)
            elif loss_type == "balanced":
                wt = flip * (1 - r) + (1 - flip) * r
                total += wt * _bce(raw, y)
                weight_sum += wt
            else:
                frac = flips / 12
                alpha = flip * (1 - frac) + (1 - flip) * frac
                p_true = math.exp(-_bce(raw, y))
                total += alpha * (1 - p_true) ** 2 * _bce(raw, y)
        if loss_type == "weighted":
            sample_sum *= 1 - (t[b].item() - 1) / T
        per_sample.append(sample_sum / 12)
    want = {"mean": sum(per_sample) / 4, "weighted": sum(per_sample) / 4,
            "balanced": total / max(weight_sum, 1e-12), "focal": total / 48}[loss_type]
    assert abs(out.loss.item() - want) < 1e-5, (out.loss.item(), want)
    out.loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_balanced_loss_is_minimised_by_the_evidence_free_logit():
    # method.md §2: the class-balanced BCE's minimiser is l' = logit P(z_0 = 1 | z_t) - evidence.
    # One bit, z_0 ~ B(0.3), t fixed: at the exact l' the expected gradient is zero (within
    # sampling noise), at the full posterior logit it is not.
    T, t_val, pi, n = 16, 5, 0.3, 400_000
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, loss_type="balanced",
                                           parameterization="z0"))
    k = d.k64[t_val].item()
    post = {}
    for zt in (0, 1):
        like1 = (1 + k) / 2 if zt else (1 - k) / 2  # q(z_t | z_0 = 1)
        like0 = (1 - k) / 2 if zt else (1 + k) / 2
        post[zt] = math.log(pi * like1 / ((1 - pi) * like0))
    ev = math.log((1 + k) / (1 - k))
    z0 = (torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(0)) < pi).float()
    t = torch.full((n,), t_val)

    def grad_at(l_zt0, l_zt1):
        x = torch.tensor([l_zt0, l_zt1], dtype=torch.float64, requires_grad=True)

        def model(z, tt, y):
            return torch.where(z > 0.5, x[1], x[0]).float()
        loss = d.training_losses(model, z0, t=t, generator=torch.Generator().manual_seed(1)).loss
        loss.backward()
        return x.grad.abs().max().item()

    at_l_prime = grad_at(post[0] + ev, post[1] - ev)
    at_full = grad_at(post[0], post[1])
    assert at_l_prime < 2e-3, at_l_prime
    assert at_full > 10 * at_l_prime, (at_full, at_l_prime)


def test_balanced_network_output_gets_its_evidence_back():
    # callers always receive logit P(z_0 = 1 | z_t): a balanced-loss network's l' plus evidence
    d = BernoulliDiffusion(DiffusionConfig(timesteps=16, loss_type="balanced"))
    zt = torch.tensor([[0.0, 1.0]])
    net = torch.tensor([[0.4, -0.2]])
    t = torch.tensor([3])
    want = net * (1 - 2 * zt) + d.evidence(zt, t)
    assert torch.allclose(d.z0_logits(net, zt, t), want)
    with pytest.raises(ValueError, match="needs t"):
        d.z0_logits(net, zt)


@pytest.mark.parametrize("loss_type", ["mean", "balanced"])
def test_aux_term_is_zero_for_the_exact_posterior_and_positive_otherwise(loss_type):
    # the auxiliary term is KL(q(z_{t-1} | z_t, z_0) || exact step from the prediction): 0 when
    # the network is certain and right, > 0 when it hedges
    T = 8
    d = BernoulliDiffusion(DiffusionConfig(timesteps=T, aux_weight=1.0, loss_type=loss_type,
                                           parameterization="z0"))
    z0 = (torch.rand(16, 4, 1, 1, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    t = torch.tensor([1, 2, 4, 8] * 4)

    def certain(z, tt, y):
        return torch.where(z0 > 0.5, 60.0, -60.0)

    def hedging(z, tt, y):
        return torch.where(z0 > 0.5, 0.5, -0.5)

    g = torch.Generator().manual_seed(0)
    assert abs(d.training_losses(certain, z0, t=t, generator=g).aux.item()) < 1e-4
    assert d.training_losses(hedging, z0, t=t, generator=g).aux.item() > 1e-2


def test_network_sees_time_normalised_by_T():
    d = BernoulliDiffusion(DiffusionConfig(timesteps=64))
    seen = []

    def model(z, t, y):
        seen.append(t.clone())
        return torch.zeros_like(z)

    d.training_losses(model, torch.zeros(3, 2), t=torch.tensor([1, 32, 64]))
    assert torch.allclose(seen[0], torch.tensor([1 / 64, 0.5, 1.0]))
