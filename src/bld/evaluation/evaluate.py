"""Evaluating trained models: features, the FD classifier as a checkpoint, and the reports.

`evaluate_images` / `evaluate_autoencoder` / `evaluate_prior` compute the figures of
`bld.core.metrics` (docs/method.md §5) in the feature space of the project's own classifier
(`bld.evaluation.classifier`, trained offline in a minute) or, when its weights file is on disk, the
standard Inception network (`InceptionFeatures`). Imports bld.core.metrics and bld.data, and on first
use the classifier, bld.inference.generate and core's checkpoint, config and device modules;
nothing imports this module back but the app.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.metrics import (FeatureStats, bit_usage, colour_error, fd_from_features,
                            precision_recall, psnr, ssim)
from ..data import dataset_tensors

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)


# ----------------------------------------------------------------------------------------
# Feature extraction
# ----------------------------------------------------------------------------------------

@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256
                     ) -> torch.Tensor:
    """Features (N, D) of images (N, C, H, W) in [-1, 1], `batch_size` images at a time.

    Uses `extractor.features(x)` when it exists (e.g. `bld.evaluation.classifier.Classifier`,
    `InceptionFeatures`), else `extractor(x)`. Batches go to the extractor's device; the
    result comes back as float32 on the images' device. The extractor is put in eval mode
    for the call and its previous mode is restored.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got {tuple(images.shape)}")
    param = next(extractor.parameters(), None)
    device = param.device if param is not None else images.device
    fn = getattr(extractor, "features", extractor)
    was_training = extractor.training
    extractor.eval()
    try:
        out = [fn(images[i:i + batch_size].to(device)).float().to(images.device)
               for i in range(0, images.shape[0], batch_size)]
    finally:
        extractor.train(was_training)
    return torch.cat(out)


class InceptionFeatures(nn.Module):
    """Standard FID features: the 2048-d pool features of the TF-ported Inception-v3.

    Wraps torchmetrics' `NoTrainInceptionV3` (which needs the `torch-fidelity` package, and
    that in turn needs `torchvision`) loaded from a local copy of the weights file
    `pt_inception-2015-12-05-6726825d.pth`. Nothing is downloaded.

    `features(x)` takes images (B, C, H, W) in [-1, 1] with C = 1 or 3, quantises them to
    uint8 as FID expects, repeats grey images to 3 channels, and returns (B, 2048).
    `antialias=False` uses the TF1-compatible resize of the reference FID code, so figures
    are comparable with published FID.
    """

    def __init__(self, weights_path: str | os.PathLike, antialias: bool = False):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights file {str(path)!r} not found. Download "
                f"{INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL} on a machine with "
                "internet access, copy it here and pass its path; or measure FD with the "
                "project's own classifier (bld.evaluation.classifier), which needs no download."
            )
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ImportError(
                "InceptionFeatures needs the `torch-fidelity` package (and `torchvision`, which "
                "torch-fidelity imports): `pip install torch-fidelity torchvision` with a "
                "torchvision build that matches your torch."
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path),
                                      antialias=antialias)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, 2048)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(x.shape)}")
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)   # (B, C, H, W)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        return self.net(u8).reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ----------------------------------------------------------------------------------------
# Reports: the FD classifier as a checkpoint, autoencoder and sample evaluations
# ----------------------------------------------------------------------------------------

def save_classifier(path: str | os.PathLike, result, dataset: str, seconds: float) -> Path:
    """Store a trained classifier like any checkpoint (kind 'classifier')."""
    from dataclasses import asdict

    from ..core.checkpoint import save_checkpoint
    return save_checkpoint(path, kind="classifier", config=asdict(result.model.config),
                           model=result.model, metadata={
                               "dataset": dataset, "test_accuracy": result.test_accuracy,
                               "train_seconds": seconds, "steps": len(result.train_losses)})


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A stored FD classifier in eval mode, and its metadata (dataset, test accuracy)."""
    from ..core.checkpoint import load_checkpoint, load_state_strict
    from ..core.config import from_dict
    from .classifier import Classifier, ClassifierConfig
    ck = load_checkpoint(path, kind="classifier", map_location=device)
    model = Classifier(from_dict(ClassifierConfig, ck.config))
    load_state_strict(model, ck.model_state, "classifier")
    return model.to(device).eval(), ck.metadata


def shipped_classifier(source: str, data_dir: str | None = None) -> Path | None:
    """The FD classifier that ships for dataset ``source`` (checked against its manifest's
    sha256), or None: none ships for it, or ``data_dir`` names another folder of images
    than the one it was trained on (a user's own folder gets a classifier of its own)."""
    from ..inference.zoo import check_manifest, classifier_dir
    folder = classifier_dir(source)
    if folder is None or data_dir:
        return None
    check_manifest(folder)
    return folder


def train_and_save_classifier(dataset: str, out: str | os.PathLike, *, steps: int = 2000,
                              seed: int = 0, data_dir: str | None = None,
                              image_size: int | None = None, channels: int | None = None,
                              progress: bool = True):
    """Train the FD feature classifier on a dataset's train split; test on its test split."""
    import time

    from ..data import build_dataset
    from .classifier import ClassifierConfig, train_classifier
    train = build_dataset(dataset, "train", image_size, channels, data_dir)
    test = build_dataset(dataset, "test", image_size, channels, data_dir)
    if train.num_classes < 2:
        raise ValueError(f"{dataset} has no class labels; the FD classifier needs >= 2 classes")
    x, y = dataset_tensors(train)
    xt, yt = dataset_tensors(test)
    cfg = ClassifierConfig(in_channels=x.shape[1], image_size=x.shape[-1],
                           num_classes=train.num_classes)
    t0 = time.perf_counter()
    res = train_classifier(x, y, cfg, steps=steps, seed=seed, test_images=xt, test_labels=yt,
                           hflip=x.shape[1] == 3, progress=progress)
    save_classifier(out, res, dataset, time.perf_counter() - t0)
    return res



def real_reference(test_images: torch.Tensor, n: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of the test set: (reference, floor set of n images).

    Generated sets are compared with the reference half; the real-vs-real floor at the
    same n compares n images of the other half with that reference (docs/method.md §5).
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(test_images), generator=g)
    half = len(test_images) // 2
    if n > half:
        raise ValueError(f"n={n} exceeds half the test set ({half}); the floor needs two "
                         "disjoint halves")
    return test_images[perm[:half]], test_images[perm[half:half + n]]


@torch.no_grad()
def evaluate_images(classifier: nn.Module, reference: torch.Tensor, floor_images: torch.Tensor,
                    images: torch.Tensor, labels: torch.Tensor | None = None,
                    num_classes: int | None = None) -> dict[str, Any]:
    """FD (with the real-vs-real floor at the same N), precision/recall, class accuracy; with
    ``num_classes`` too, ``class_accuracy_per_class`` (`classifier.class_shares` of the same
    predictions: None for a class with no images)."""
    ref_f = extract_features(classifier, reference)
    ref_stats = FeatureStats.from_features(ref_f)
    gen_f = extract_features(classifier, images)
    floor_f = extract_features(classifier, floor_images[:len(images)])
    pr = precision_recall(ref_f[:len(images)], gen_f)
    out = {
        "n": len(images),
        "fd": ref_stats.frechet_distance(FeatureStats.from_features(gen_f)),
        "fd_floor_real_vs_real": ref_stats.frechet_distance(FeatureStats.from_features(floor_f)),
        "precision": pr.precision, "recall": pr.recall,
    }
    if labels is not None:
        from .classifier import class_shares, predict, prediction_accuracy
        pred = predict(classifier, images)  # classified once, for both figures
        out["class_accuracy"] = prediction_accuracy(pred, labels)
        if num_classes:
            out["class_accuracy_per_class"] = class_shares(pred, labels, num_classes)
    return out


@torch.no_grad()
def evaluate_autoencoder(ae: nn.Module, images: torch.Tensor, classifier: nn.Module | None = None,
                         reference: torch.Tensor | None = None, batch_size: int = 256
                         ) -> dict[str, float]:
    """PSNR, SSIM, L1, bit usage, for colour images the colour error (CIE76 delta E per
    pixel and between mean colours, `bld.core.metrics.colour_error`) and (given a
    classifier) FD, precision and recall of reconstructions."""
    device = next(ae.parameters()).device
    recon, probs = [], []
    for i in range(0, len(images), batch_size):
        out = ae(images[i:i + batch_size].to(device), deterministic=True)
        recon.append(out.recon.float().clamp(-1, 1).cpu())
        probs.append(out.probs.float().cpu())
    recon_t, probs_t = torch.cat(recon), torch.cat(probs)
    usage = bit_usage(probs_t)
    res = {"n": len(images), "psnr": psnr(recon_t, images), "ssim": ssim(recon_t, images),
           "l1": (recon_t - images).abs().mean().item(),
           "bit_mean": usage.channel_mean.mean().item(), "dead_bit_fraction": usage.dead_fraction,
           "bit_entropy": usage.bit_entropy, "position_entropy_bits": usage.position_entropy}
    if images.shape[1] == 3:  # a tint or a colour shift that PSNR alone hides
        colour = colour_error(recon_t, images)
        res["colour_delta_e"] = colour.delta_e
        res["mean_colour_delta_e"] = colour.mean_colour_delta_e
    if classifier is not None:
        # the same figures as for samples (`evaluate_images`): FD, precision / recall against
        # the reference at the same N (the first N reference features for precision/recall)
        ref = reference if reference is not None else images
        ref_f, rec_f = extract_features(classifier, ref), extract_features(classifier, recon_t)
        res["fd_recon"] = fd_from_features(ref_f, rec_f)
        pr = precision_recall(ref_f[:len(recon_t)], rec_f)
        res["recon_precision"], res["recon_recall"] = pr.precision, pr.recall
    return res


def evaluate_prior(prior, ae: nn.Module, classifier: nn.Module, test_images: torch.Tensor, *,
                   n: int = 2000, steps: int = 16, temperature: float = 1.0,
                   guidance: float = 0.0, seed: int = 0, conditional: bool = True,
                   evidence_weight: float | None = None,
                   guidance_interval: tuple[float, float] = (0.0, 1.0),
                   batch_size: int = 250, precision: str = "auto") -> dict[str, Any]:
    """Sample n images (classes cycled when conditional) and measure them on the test set.

    Returns the sample figures (FD, its real-vs-real floor at the same n, precision/recall,
    class accuracy, and per class in ``samples_per_class``), the autoencoder's own figures at
    the same n (FD of reconstructions: a prior cannot beat its decoder) and the settings and
    wall time per image.
    """
    from ..core.device import resolve_precision
    from ..inference.generate import generate
    from ..models.sampling import DEFAULT_EVIDENCE_WEIGHT
    device = next(prior.model.parameters()).device
    if evidence_weight is None:
        evidence_weight = DEFAULT_EVIDENCE_WEIGHT
    reference, floor = real_reference(test_images, n, seed=seed)
    nc = prior.config.model.num_classes
    labels = torch.arange(nc).repeat(n // max(nc, 1) + 1)[:n] if (conditional and nc) else None
    res = generate(prior, ae, n, steps=steps, temperature=temperature,
                   evidence_weight=evidence_weight, guidance_interval=guidance_interval,
                   guidance=guidance if labels is not None else 0.0, labels=labels, seed=seed,
                   batch_size=batch_size, precision=precision)
    samples = evaluate_images(classifier, reference, floor, res.images, labels,
                              nc if labels is not None else None)
    per_class = samples.pop("class_accuracy_per_class", None)
    recon = evaluate_autoencoder(ae, floor, classifier, reference)
    return {
        "settings": {"n": n, "steps": steps, "temperature": temperature,
                     "evidence_weight": evidence_weight,
                     "guidance_interval": list(guidance_interval),
                     "guidance": guidance if labels is not None else 0.0, "seed": seed,
                     "conditional": labels is not None, "batch_size": batch_size,
                     "precision": resolve_precision(precision, device).name},
        "samples": samples, "autoencoder": recon,
        "fd_ratio_to_recon": samples["fd"] / max(recon["fd_recon"], 1e-12),
        "seconds_per_image": res.seconds / n,
        "images": res.images, "labels": labels,
        "samples_per_class": per_class,  # per class, the share classified as asked (or None)
    }


def write_report(report: dict[str, Any], out: Path) -> str:
    """``out``/eval.json and ``out``/eval.md (a table per section) of a report; the markdown."""
    import json
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    lines = ["# bld eval", ""]
    for section, vals in report.items():
        if isinstance(vals, dict):
            lines += [f"## {section}", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in vals.items()]
            lines.append("")
        else:
            lines.append(f"- {section}: {vals:.4g}" if isinstance(vals, float) else
                         f"- {section}: {vals}")
    text = "\n".join(lines) + "\n"
    (out / "eval.md").write_text(text)
    return text
