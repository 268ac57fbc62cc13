"""Tests of the measuring code (docs/method.md §5) and the FD classifier."""

import math

import pytest
import torch

from bld.core.metrics import (FeatureStats, bit_usage, fd_from_features, frechet_distance,
                              precision_recall, psnr, ssim)
from bld.data import load_fashion_mnist, to_model_range
from bld.evaluation.classifier import (Classifier, ClassifierConfig, accuracy, augment,
                                       per_class_accuracy, prediction_accuracy, train_classifier)
from bld.evaluation.evaluate import InceptionFeatures, extract_features


@pytest.fixture
def one_thread():
    """On a shared 2-core CPU, two intra-op threads competing with other jobs can run 10-40x
    slower than one (measured: 55 s vs 2 s); training tests use one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fmnist_test():
    images, labels = load_fashion_mnist("test")
    return to_model_range(images), labels


# ---------------------------------------------------------------- Frechet distance

@pytest.mark.parametrize("d", [1, 5, 64])
def test_fd_matches_closed_form_for_diagonal_gaussians(d):
    g = torch.Generator().manual_seed(d)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1 = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    s2 = torch.rand(d, generator=g, dtype=torch.float64) * 3
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-9)


def test_fd_of_rotated_gaussians_is_rotation_invariant():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    s1, s2 = torch.rand(8, generator=g) + 0.5, torch.rand(8, generator=g) + 0.5
    mu1, mu2 = torch.randn(8, generator=g), torch.randn(8, generator=g)
    plain = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    rotated = frechet_distance(q @ mu1.double(), q @ torch.diag(s1).double() @ q.T,
                               q @ mu2.double(), q @ torch.diag(s2).double() @ q.T)
    assert rotated == pytest.approx(plain, rel=1e-9)


def test_fd_of_identical_stats_is_zero():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(500, 32, generator=g)
    stats = FeatureStats.from_features(feats)
    assert stats.cov.shape == (32, 32) and stats.n == 500
    assert stats.frechet_distance(stats) == pytest.approx(0.0, abs=1e-8)
    assert fd_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_fd_with_singular_covariances_is_finite_and_non_negative():
    g = torch.Generator().manual_seed(2)
    # 20 samples in 64 dimensions, rectified: rank <= 19 and many all-zero columns
    a = torch.relu(torch.randn(20, 64, generator=g) - 1.0)
    b = torch.relu(torch.randn(20, 64, generator=g) - 1.0)
    assert torch.linalg.matrix_rank(FeatureStats.from_features(a).cov) < 64
    fd = fd_from_features(a, b)
    assert math.isfinite(fd) and fd >= 0
    assert fd_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="D"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ---------------------------------------------------------------- precision / recall

def _clusters(centres: torch.Tensor, per_cluster: int, spread: float, g: torch.Generator):
    pts = centres[:, None, :] + spread * torch.randn(len(centres), per_cluster,
                                                     centres.shape[1], generator=g)
    return pts.reshape(-1, centres.shape[1])


def test_precision_recall_of_identical_sets_is_one():
    feats = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    assert precision_recall(feats, feats) == (1.0, 1.0)


def test_precision_of_far_away_cluster_is_zero():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(400, 8, generator=g)
    fake = torch.randn(400, 8, generator=g) + 100.0
    p, r = precision_recall(real, fake, chunk=128)  # small chunks exercise the loop
    assert p == 0.0 and r == 0.0


def test_half_the_modes_gives_full_precision_and_half_recall():
    g = torch.Generator().manual_seed(5)
    centres = 20.0 * torch.eye(4)                         # 4 well separated modes in 4-d
    real = _clusters(centres, 250, 1.0, g)                # (1000, 4)
    fake = _clusters(centres[:2], 250, 1.0, g)            # only modes 0 and 1
    p, r = precision_recall(real, fake, k=3)
    # with finite samples even matching distributions give P, R a little below 1 (about
    # 0.95 here, lower in more dimensions): k-NN balls do not cover the tails
    assert p > 0.9
    assert 0.4 < r < 0.55                                 # <= 0.5 up to a few stray points


# ---------------------------------------------------------------- PSNR / SSIM

def test_psnr_ssim_identical_images(fmnist_test):
    x = fmnist_test[0][:16]
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert psnr(x, x) > 100 or math.isinf(psnr(x, x))


def test_psnr_ssim_fall_as_noise_grows(fmnist_test):
    x = fmnist_test[0][:32]
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(x.shape, generator=g)
    values = [(psnr(x, (x + s * noise).clamp(-1, 1)), ssim(x, (x + s * noise).clamp(-1, 1)))
              for s in (0.02, 0.1, 0.3, 1.0)]
    psnrs, ssims = zip(*values)
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    # PSNR of Gaussian noise sigma=0.02, without clipping, is 20 log10(2 / 0.02) = 40 dB
    assert psnr(x, x + 0.02 * noise) == pytest.approx(40.0, abs=0.2)


def test_psnr_is_over_the_whole_set_not_a_mean_of_images(fmnist_test):
    # one definition everywhere: 10 log10(4 / MSE over all pixels of all images)
    x = fmnist_test[0][:2]
    y = x.clone()
    y[0] += 0.01  # image 0: MSE 1e-4; image 1: MSE 1e-2
    y[1] += 0.1
    want = 10 * math.log10(4 / ((1e-4 + 1e-2) / 2))
    per_image_mean = (10 * math.log10(4 / 1e-4) + 10 * math.log10(4 / 1e-2)) / 2
    assert psnr(y, x) == pytest.approx(want, abs=1e-3)
    assert abs(per_image_mean - want) > 5  # the two definitions differ a lot here


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 8))


# ---------------------------------------------------------------- bit usage

def test_bit_usage_known_answers():
    g = torch.Generator().manual_seed(7)
    b, h, w = 4000, 3, 3
    coin = torch.randint(0, 2, (b, 1, h, w), generator=g).float()     # fair coins
    ones = torch.ones(b, 1, h, w)                                     # dead (always 1)
    zeros = torch.zeros(b, 1, h, w)                                   # dead (always 0)
    rare = (torch.rand(b, 1, h, w, generator=g) < 0.1).float()        # p = 0.1
    u = bit_usage(torch.cat([coin, ones, zeros, rare], dim=1))        # (B, 4, H, W)
    assert u.channel_mean.shape == (4,)
    assert u.channel_mean.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.1], abs=0.02)
    assert u.dead_fraction == pytest.approx(0.5)
    h_rare = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))           # 0.469 bits
    assert u.bit_entropy == pytest.approx((1.0 + h_rare) / 4, abs=0.01)
    assert u.position_entropy == pytest.approx(1.0 + h_rare, abs=0.04)
    assert u.encoder_entropy == 0.0                                   # hard bits


def test_bit_usage_of_fair_coins_and_undecided_probabilities():
    g = torch.Generator().manual_seed(8)
    coins = torch.randint(0, 2, (2000, 8, 4, 4), generator=g).float()
    u = bit_usage(coins)
    assert u.bit_entropy == pytest.approx(1.0, abs=0.01)
    assert u.position_entropy == pytest.approx(8.0, abs=0.05)
    assert u.dead_fraction == 0.0
    half = bit_usage(torch.full((10, 2, 2, 2), 0.5))
    assert half.encoder_entropy == pytest.approx(1.0)
    assert half.dead_fraction == 1.0          # 0.5 binarises to 0 everywhere


def test_bit_usage_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bit_usage(torch.full((4, 2, 2, 2), 2.0))
    with pytest.raises(ValueError, match="B, C, H, W"):
        bit_usage(torch.zeros(4, 2, 2))


# ---------------------------------------------------------------- classifier

@pytest.mark.parametrize("channels,size", [(1, 28), (3, 16), (3, 32)])
def test_classifier_shapes(channels, size):
    cfg = ClassifierConfig(in_channels=channels, image_size=size, num_classes=7,
                           width=8, feature_dim=24)
    model = Classifier(cfg).eval()
    x = torch.rand(5, channels, size, size) * 2 - 1
    assert model(x).shape == (5, 7)
    assert model.features(x).shape == (5, 24)
    assert extract_features(model, x, batch_size=2).shape == (5, 24)


def test_augment_keeps_shape_and_content():
    g = torch.Generator().manual_seed(9)
    x = torch.rand(6, 3, 16, 16)
    y = augment(x, max_shift=2, hflip=True, generator=g)
    assert y.shape == x.shape
    assert torch.equal(augment(x, 0, False, g), x)


def test_tiny_classifier_learns_fashion_mnist(fmnist_test, one_thread):
    train_x, train_y = load_fashion_mnist("train")
    x, y = to_model_range(train_x[:2000]), train_y[:2000]
    test_x, test_y = fmnist_test[0][:1000], fmnist_test[1][:1000]
    cfg = ClassifierConfig(width=16, feature_dim=64)
    result = train_classifier(x, y, cfg, steps=120, batch_size=64, lr=3e-3, seed=0,
                              test_images=test_x, test_labels=test_y, progress=False)
    # Chance is 0.10; nearest-class-mean on raw pixels gets ~0.68 on Fashion-MNIST. A CNN
    # after ~4 epochs over 2000 images reaches ~0.75-0.8, so 0.6 leaves room for noise
    # while still failing for a broken net, loss, augmentation or label pipeline.
    assert result.test_accuracy >= 0.6
    assert not result.model.training
    assert len(result.train_losses) == 120
    assert sum(result.train_losses[-20:]) < sum(result.train_losses[:20])
    assert accuracy(result.model, test_x, test_y) == pytest.approx(result.test_accuracy)
    # per class: each class's share of the same predictions, weighted by its count, is the
    # overall accuracy; a class with no test images has none
    few = test_y < 9
    per = per_class_accuracy(result.model, test_x[few], test_y[few], 10)
    assert per[9] is None and all(0 <= a <= 1 for a in per[:9])
    counts = torch.bincount(test_y[few], minlength=10)
    assert sum(a * n for a, n in zip(per[:9], counts[:9].tolist())) / counts.sum().item() == \
        pytest.approx(accuracy(result.model, test_x[few], test_y[few]))
    assert min(per[:9]) < max(per[:9])  # Fashion-MNIST's shirts are harder than its trousers
    feats = extract_features(result.model, test_x[:100])
    assert feats.shape == (100, 64)
    # features are pre-ReLU, so the feature covariance is not rank-deficient by rectification
    assert (feats < 0).any()


def test_prediction_accuracy_counts_matches_and_rejects_a_length_mismatch():
    labels = torch.tensor([0, 1, 2, 3, 4])
    assert prediction_accuracy(torch.tensor([0, 1, 9, 3, 9]), labels) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="4 predictions but 5 labels"):
        prediction_accuracy(torch.tensor([0, 1, 2, 3]), labels)


def test_train_classifier_rejects_uint8_images():
    images, labels = load_fashion_mnist("test")
    with pytest.raises(ValueError, match="to_model_range"):
        train_classifier(images[:10].unsqueeze(1), labels[:10], steps=1, progress=False)


# ---------------------------------------------------------------- Inception

def test_inception_missing_weights_error_is_clear(tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError) as err:
        InceptionFeatures(missing)
    msg = str(err.value)
    assert str(missing) in msg
    assert "Download" in msg and "https://" in msg and "bld.evaluation.classifier" in msg
