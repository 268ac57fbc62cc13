"""The measures (method.md §5): Frechet distance, precision / recall, PSNR / SSIM and bit usage.

Pure functions of the features or images the caller supplies: nothing here trains, samples
or loads a model (`bld.evaluation.evaluate` does, and reports these figures).

Reading the figures (docs/method.md §5):
  * FD is biased by the sample count: compare only figures computed with the same N, report
    the real-vs-real floor at that N, prefer N >= 5000 for headline figures.
  * The autoencoder bounds the prior: report the FD of reconstructions next to the FD of
    samples; a prior cannot beat its decoder.
  * FD computed with the project's classifier is NOT comparable to published Inception FID.

References:
  Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ..." (FID),
  arXiv 1706.08500.
  Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
  Models", arXiv 1904.06991.

Imports no bld module (torchmetrics, for SSIM, on first use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_float64(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.detach().to(device="cpu", dtype=torch.float64)


# ----------------------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------------------

def _sym_psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix (D, D) via eigh; tiny negative eigenvalues -> 0."""
    s = 0.5 * (s + s.T)
    evals, evecs = torch.linalg.eigh(s)
    evals = evals.clamp_min(0.0)
    return (evecs * evals.sqrt()) @ evecs.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))                    (method.md §5)

    The trace of the square root is taken as tr((A S2 A)^(1/2)) with A = S1^(1/2): A S2 A
    has the same eigenvalues as S1 S2 but is symmetric PSD, so `eigh` is stable even when
    S1 or S2 is singular (few samples, rectified features). Eigenvalues that rounding makes
    slightly negative are clipped to 0, and the result is clipped at 0.

    Args:
        mu1, mu2: means, shape (D,).
        sigma1, sigma2: covariances, shape (D, D).
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = _as_float64(sigma1), _as_float64(sigma2)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected means of shape (D,) and covariances (D, D) with one D; got "
            f"{tuple(mu1.shape)}, {tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}"
        )
    if not (torch.isfinite(s1).all() and torch.isfinite(s2).all()
            and torch.isfinite(mu1).all() and torch.isfinite(mu2).all()):
        raise ValueError("frechet_distance got non-finite means or covariances")
    a = _sym_psd_sqrt(s1)                                   # (D, D) = S1^(1/2)
    m = a @ s2 @ a                                          # (D, D), symmetric PSD
    evals = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0.0)
    tr_covmean = evals.sqrt().sum()                         # tr((S1 S2)^(1/2))
    fd = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_covmean
    return max(float(fd), 0.0)


class FeatureStats(NamedTuple):
    """Mean (D,) and covariance (D, D), both float64, of n feature vectors."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int

    @classmethod
    def from_features(cls, feats: ArrayLike) -> "FeatureStats":
        """Statistics of features (N, D); unbiased covariance (divides by N - 1)."""
        f = _as_float64(feats)
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"features must have shape (N >= 2, D), got {tuple(f.shape)}")
        mean = f.mean(dim=0)                                # (D,)
        centred = f - mean
        cov = centred.T @ centred / (f.shape[0] - 1)        # (D, D)
        return cls(mean, cov, int(f.shape[0]))

    def frechet_distance(self, other: "FeatureStats") -> float:
        """FD between these statistics and `other` (see `frechet_distance`)."""
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)


def fd_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """Frechet distance between two feature sets (N_r, D) and (N_f, D).

    FD is biased by N: compare only figures with the same N_f, next to the real-vs-real
    floor at that N (docs/method.md §5).
    """
    return FeatureStats.from_features(real).frechet_distance(FeatureStats.from_features(fake))


# ----------------------------------------------------------------------------------------
# Improved precision and recall
# ----------------------------------------------------------------------------------------

class PrecisionRecall(NamedTuple):
    precision: float  # share of generated samples inside the real manifold
    recall: float     # share of real samples inside the generated manifold


def _knn_radii(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of feats (N, D) to its k-th nearest other row -> (N,)."""
    radii = []
    for start in range(0, feats.shape[0], chunk):
        d = torch.cdist(feats[start:start + chunk], feats)             # (n, N)
        # the k+1 smallest include the point itself at distance 0
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside_manifold(queries: torch.Tensor, refs: torch.Tensor, radii: torch.Tensor,
                     chunk: int) -> torch.Tensor:
    """For each query (M, D): is it within radius_j of some reference j? -> bool (M,)."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start:start + chunk], refs)            # (m, N)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3,
                     chunk: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019; docs/method.md §5).

    The real manifold is the union of balls around each real feature whose radius is the
    distance to its k-th nearest real neighbour (k = 3); likewise for the generated set.
    precision = share of generated features inside the real manifold,
    recall    = share of real features inside the generated manifold.

    Distances are computed in float32 on the input's device, `chunk` rows at a time
    (10k x 10k needs ~40 MB per chunk of 1024 rows).

    Args:
        real_feats: (N_r, D). fake_feats: (N_f, D). Both need more than k rows.
    """
    real = torch.as_tensor(real_feats).detach().float()
    fake = torch.as_tensor(fake_feats).detach().float().to(real.device)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"need more than k={k} samples in each set, got {real.shape[0]} real "
                         f"and {fake.shape[0]} generated")
    real_radii = _knn_radii(real, k, chunk)                            # (N_r,)
    fake_radii = _knn_radii(fake, k, chunk)                            # (N_f,)
    precision = _inside_manifold(fake, real, real_radii, chunk).float().mean().item()
    recall = _inside_manifold(real, fake, fake_radii, chunk).float().mean().item()
    return PrecisionRecall(precision, recall)


# ----------------------------------------------------------------------------------------
# Reconstruction quality
# ----------------------------------------------------------------------------------------

def _check_image_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"expected two image batches (B, C, H, W) of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")


def psnr_from_mse(mse: float, data_range: float = 2.0) -> float:
    """10 log10(data_range^2 / MSE) in dB; inf when the MSE is 0."""
    return 10 * math.log10(data_range ** 2 / mse) if mse > 0 else float("inf")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (data range 2), shape (B, C, H, W).

    The project's one definition: 10 log10(4 / MSE) with the MSE taken over every pixel of
    the whole set (as torchmetrics' ``PeakSignalNoiseRatio`` with its default reduction), not
    the mean of per-image PSNRs, which is higher (log is concave) and rewards a few easy
    images. Identical sets give inf.
    """
    _check_image_pair(x, y)
    return psnr_from_mse(float((x.double() - y.double()).pow(2).mean()))


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Structural similarity of images in [-1, 1] (data range 2), shape (B, C, H, W).

    torchmetrics' SSIM (Gaussian window 11, sigma 1.5), averaged over the batch; identical
    images give 1. Needs H, W >= 11.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_image_pair(x, y)
    return float(structural_similarity_index_measure(x.float(), y.float(), data_range=2.0))


# ----------------------------------------------------------------------------------------
# Binary latents
# ----------------------------------------------------------------------------------------

@dataclass
class BitUsage:
    """How a batch of binary latents (B, C, H, W) uses its bits.

    Let q[c, h, w] = batch mean of the input at (c, h, w): the probability that the bit
    there is 1 (for hard bits, the share of ones). H2(p) = -p log2 p - (1-p) log2 (1-p).

    channel_mean:     (C,) mean of the input per bit channel, over batch and positions.
    dead_fraction:    share of elements (c, h, w) whose binarised value (input > 0.5) is the
                      same for every image in the batch: they carry no information.
    bit_entropy:      mean over (c, h, w) of H2(q[c, h, w]), in bits, in [0, 1]: 1 when every
                      bit is a fair coin across images, 0 when every bit is dead.
    position_entropy: sum over c of H2(q[c, h, w]), averaged over (h, w), in bits, in
                      [0, C]; an upper bound (independent bits) on the information one
                      spatial position carries. Equals C * bit_entropy.
    encoder_entropy:  mean over all B*C*H*W entries of H2(input): how undecided the encoder
                      probabilities are per image (0 for hard bits).
    """

    channel_mean: torch.Tensor
    dead_fraction: float
    bit_entropy: float
    position_entropy: float
    encoder_entropy: float


def _binary_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """H2(p) in bits, elementwise; 0 at p in {0, 1}."""
    p = p.double()
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / math.log(2.0)


def bit_usage(probs_or_bits: torch.Tensor) -> BitUsage:
    """Usage statistics of binary latents (B, C, H, W) given as bits or probabilities in [0, 1].

    See `BitUsage` for the definitions. Needs B >= 2 for the dead-bit count to mean anything.
    """
    z = probs_or_bits.detach()
    if z.dim() != 4:
        raise ValueError(f"expected latents of shape (B, C, H, W), got {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError("bit_usage needs a batch of at least 2 latents")
    z = z.double()
    if z.min() < 0 or z.max() > 1:
        raise ValueError("bit_usage expects bits or probabilities in [0, 1]")
    bits = z > 0.5                                                     # (B, C, H, W)
    dead = (bits.all(dim=0) | (~bits).all(dim=0))                      # (C, H, W)
    q = z.mean(dim=0)                                                  # (C, H, W)
    h = _binary_entropy_bits(q)                                        # (C, H, W)
    return BitUsage(
        channel_mean=z.mean(dim=(0, 2, 3)).float(),                    # (C,)
        dead_fraction=float(dead.double().mean()),
        bit_entropy=float(h.mean()),
        position_entropy=float(h.sum(dim=0).mean()),
        encoder_entropy=float(_binary_entropy_bits(z).mean()),
    )


# ----------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------

# sRGB's linear RGB -> CIE XYZ (D65 white, IEC 61966-2-1), and the D65 white point in XYZ
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (B, C, H, W) with C = 3 (sRGB) or 1 (grey), -> CIELAB (B, 3, H, W)
    in float64: L* in [0, 100], a* and b* about [-128, 127]. sRGB -> linear light -> XYZ
    (D65) -> L*a*b* relative to the D65 white; pure red is (53.24, 80.09, 67.20)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 3 or 1, H, W), got {tuple(x.shape)}")
    c = ((x.detach().double().cpu() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ, linear) / _D65_WHITE.view(1, 3, 1, 1)
    d = 6 / 29
    f = torch.where(xyz > d ** 3, xyz.clamp_min(d ** 3) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


class ColourError(NamedTuple):
    delta_e: float  # mean CIE76 delta E over every pixel of every image
    mean_colour_delta_e: float  # mean over images of the delta E between their mean colours


def colour_error(x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> ColourError:
    """How far the colours of images ``x`` are from those of ``y`` (both in [-1, 1], one
    shape (B, C, H, W)), in CIE76 delta E (Euclidean distance in CIELAB; about 2.3 is a
    just-noticeable difference): per pixel, and between each image's mean colour (the mean
    of its pixels' L*a*b*), which catches a tint that per-pixel noise hides. Converted
    ``chunk`` images at a time (float64 Lab of a whole test set would be large)."""
    _check_image_pair(x, y)
    per_pixel = per_image = 0.0
    for i in range(0, len(x), chunk):
        lx, ly = rgb_to_lab(x[i:i + chunk]), rgb_to_lab(y[i:i + chunk])
        per_pixel += float((lx - ly).norm(dim=1).mean(dim=(1, 2)).sum())
        per_image += float((lx.mean(dim=(2, 3)) - ly.mean(dim=(2, 3))).norm(dim=1).sum())
    return ColourError(per_pixel / len(x), per_image / len(x))
