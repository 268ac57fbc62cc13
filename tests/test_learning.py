"""Real learning, not only shapes: a tiny prior and a tiny autoencoder trained for seconds."""

import pytest
import torch

from bld.core.device import resolve_precision
from bld.data import DatasetNotFoundError, load_fashion_mnist, to_model_range
from bld.models.autoencoder import AutoencoderConfig, BinaryAutoencoder
from bld.models.denoiser import Denoiser, DenoiserConfig
from bld.models.diffusion import BernoulliDiffusion, DiffusionConfig
from bld.models.sampling import sample

pytestmark = pytest.mark.usefixtures("one_thread")


def total_variation(samples: torch.Tensor, patterns: torch.Tensor, weights: torch.Tensor) -> float:
    """TV distance between the empirical law of ``samples`` and ``weights`` over ``patterns``.

    Every sample that is none of the patterns is mass the target gives 0.
    """
    flat, pflat = samples.reshape(len(samples), -1), patterns.reshape(len(patterns), -1)
    match = (flat[:, None] == pflat[None]).all(-1)  # (N, K)
    emp = match.float().mean(0)
    off = 1 - match.any(1).float().mean()
    return 0.5 * ((emp - weights).abs().sum() + off).item()


@pytest.mark.parametrize("conditioning", ["tokens", "adaln"])
def test_tiny_prior_learns_a_distribution_of_binary_patterns(conditioning):
    # 8 random 16-bit patterns (4 bits x 2x2 grid) with unequal weights. Uniform random bits
    # would put almost all mass off the patterns (TV ~ 1); a learned prior must come close.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    C, G = 4, 2
    patterns = (torch.rand(8, C, G, G, generator=g) < 0.5).float()
    weights = torch.tensor([0.25, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05])
    d = BernoulliDiffusion(DiffusionConfig(timesteps=64))
    net = Denoiser(DenoiserConfig(bits=C, grid=G, width=64, depth=2, heads=2,
                                  conditioning=conditioning))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 2000
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        idx = torch.multinomial(weights, 256, replacement=True, generator=g)
        loss = d.training_losses(net, patterns[idx], generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    n = 4000
    untrained = total_variation((torch.rand(n, C, G, G, generator=g) < 0.5).float(), patterns,
                                weights)
    tv = {S: total_variation(sample(net, d, (n, C, G, G), steps=S,
                                    generator=torch.Generator().manual_seed(1)).z0,
                             patterns, weights) for S in (64, 16)}
    print(f"TV distance: S=64 {tv[64]:.3f}, S=16 {tv[16]:.3f}, coin flips {untrained:.3f}")
    assert untrained > 0.95
    # measured 0.103 (S=64) and 0.128 (S=16); 0.2 leaves room for run-to-run spread
    assert tv[64] < 0.2 and tv[16] < 0.2


def test_tiny_autoencoder_reconstructs_real_fashion_mnist():
    try:
        x, _ = load_fashion_mnist("train")
        xt, _ = load_fashion_mnist("test")
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    torch.manual_seed(0)
    x, xt = to_model_range(x[:2000]), to_model_range(xt[:500])
    cfg = AutoencoderConfig(channels=16, channel_mult=(1, 2, 2), hidden=32, bits=16,
                            padded_size=32)
    ae = BinaryAutoencoder(cfg)
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,), generator=g)
        with resolve_precision("auto", "cpu").autocast("cpu"):  # as training runs it here
            out = ae(x[idx])
        loss = (out.recon.float() - x[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        recon = ae(xt).recon.clamp(-1, 1)
    l1 = (recon - xt).abs().mean().item()
    # Baseline: predicting every test image by the mean training image (the best an
    # autoencoder that ignores its input can do under L1 is close to this). A working
    # 16-bit x 8x8 binary code must at least halve it; measured 0.13-0.14 vs 0.46 after
    # 150 steps (0.11-0.12 after 250).
    mean_image_l1 = (xt - x.mean(0, keepdim=True)).abs().mean().item()
    print(f"test L1 {l1:.3f} vs mean-image L1 {mean_image_l1:.3f}")
    assert l1 < 0.5 * mean_image_l1
