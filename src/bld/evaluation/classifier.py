"""A small CNN classifier trained by the project itself, used as the FD feature extractor.

No Inception weights exist offline, so Frechet distance and precision/recall (method.md §5) are
measured in the penultimate feature space of this network, trained on the real data set.
Its features are taken from a linear layer BEFORE the ReLU: rectified features pile up at
zero and make the feature covariance singular (docs/method.md §5).

Figures measured with it are comparable only with figures from the same trained
classifier (same data, config and seed), never with published Inception FID.

Imports no bld module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class ClassifierConfig:
    in_channels: int = 1      # 1 (grey) or 3 (RGB)
    image_size: int = 28      # square images, >= 16
    num_classes: int = 10
    width: int = 32           # channels of the first stage; the second has 2 * width
    feature_dim: int = 128    # size of the penultimate (feature) layer

    def __post_init__(self):
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.num_classes < 2 or self.width < 1 or self.feature_dim < 1:
            raise ValueError(f"bad classifier sizes: {self}")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """Three 3x3 conv layers (width, 2*width, 2*width), the first two followed by 2x
    max-pooling, adaptive average pooling to 4x4, a linear feature layer (feature_dim, not
    rectified) and a linear class head. Cheap enough to train in a minute on 2 CPU cores."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            _conv_block(config.in_channels, w), nn.MaxPool2d(2),       # (B, w, H/2, W/2)
            _conv_block(w, 2 * w), nn.MaxPool2d(2),                    # (B, 2w, H/4, W/4)
            _conv_block(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(4),                                   # (B, 2w, 4, 4)
        )
        self.feature = nn.Linear(2 * w * 16, config.feature_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected images (B, {c.in_channels}, H, W), got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, before the ReLU: (B, C, H, W) in [-1, 1] -> (B, feature_dim)."""
        self._check(x)
        h = self.body(x)                                   # (B, 2w, 4, 4)
        return self.feature(h.flatten(1))                  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, C, H, W) in [-1, 1] -> (B, num_classes)."""
        f = self.features(x)                               # (B, feature_dim)
        return self.head(self.dropout(F.relu(f)))          # (B, num_classes)


@dataclass
class ClassifierResult:
    model: Classifier
    test_accuracy: float | None           # None when no test set was given
    train_losses: list[float] = field(default_factory=list)  # one per step


def augment(x: torch.Tensor, max_shift: int, hflip: bool, generator: torch.Generator
            ) -> torch.Tensor:
    """Random shift by up to max_shift pixels (replicate padding + crop), optional
    horizontal flip; one draw per image. (B, C, H, W) -> (B, C, H, W)."""
    b, _, h, w = x.shape
    if max_shift > 0:
        xp = F.pad(x, (max_shift,) * 4, mode="replicate")           # (B, C, H+2s, W+2s)
        dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2)       # (B, C, H, W)
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Top-1 class of each image (N, C, H, W) in [-1, 1]: (N,) int64 on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 500) -> float:
    """Top-1 accuracy of model on images (N, C, H, W) in [-1, 1] with labels (N,)."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    return prediction_accuracy(predict(model, images, batch_size), labels)


def per_class_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       num_classes: int, batch_size: int = 500) -> list[float | None]:
    """Top-1 accuracy over the images of each class 0..num_classes-1 (None for a class with
    no images): which classes a model, or a generator judged by it, gets wrong."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    return class_shares(predict(model, images, batch_size), labels, num_classes)


def prediction_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of ``predicted`` classes (e.g. `predict`'s) equal to ``labels``, both (N,)."""
    if predicted.shape[0] != labels.shape[0]:
        raise ValueError(f"{predicted.shape[0]} predictions but {labels.shape[0]} labels")
    return (predicted.cpu() == labels.cpu()).sum().item() / labels.shape[0]


def class_shares(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int
                 ) -> list[float | None]:
    """Per class c in 0..num_classes-1, the share of the items labelled c that ``predicted``
    (e.g. `predict`'s) puts in c; None for a class with no items."""
    labels = labels.cpu()
    hit = predicted.cpu() == labels
    return [hit[labels == c].float().mean().item() if (labels == c).any() else None
            for c in range(num_classes)]


def train_classifier(images: torch.Tensor, labels: torch.Tensor,
                     config: ClassifierConfig | None = None, steps: int = 2000,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4,
                     seed: int = 0, generator: torch.Generator | None = None,
                     test_images: torch.Tensor | None = None,
                     test_labels: torch.Tensor | None = None,
                     max_shift: int = 2, hflip: bool = False, device: str | torch.device = "cpu",
                     progress: bool = True) -> ClassifierResult:
    """Train a `Classifier` on images (N, C, H, W) in [-1, 1] with int64 labels (N,).

    AdamW, linear warm-up over 3% of the steps then cosine decay to 0, light augmentation
    (random shift, optional horizontal flip). Batches are drawn epoch by epoch from a
    permutation made with `generator` (or a fresh one seeded with `seed`), which also seeds
    the weights and augmentations. The model is returned in eval mode; `test_accuracy` is
    measured on (test_images, test_labels) when given.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images (N, C, H, W) in [-1, 1], got "
                         f"{images.dtype} {tuple(images.shape)}; use bld.data.to_model_range")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if config is None:
        config = ClassifierConfig(in_channels=images.shape[1], image_size=images.shape[-1],
                                  num_classes=int(labels.max()) + 1)
    if images.shape[1] != config.in_channels:
        raise ValueError(f"images have {images.shape[1]} channels, config says {config.in_channels}")
    if int(labels.min()) < 0 or int(labels.max()) >= config.num_classes:
        raise ValueError(f"labels must lie in [0, {config.num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)

    # seed the weights from the generator so one seed fixes the whole run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        model = Classifier(config)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(0.03 * steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    n = images.shape[0]
    perm, pos = torch.randperm(n, generator=generator), 0
    losses: list[float] = []
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for step in bar:
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        x = augment(images[idx], max_shift, hflip, generator).to(device)   # (B, C, H, W)
        y = labels[idx].to(device)                                         # (B,)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()

    test_acc = None
    if test_images is not None and test_labels is not None:
        test_acc = accuracy(model, test_images, test_labels)
        log.info("classifier test accuracy %.4f after %d steps", test_acc, steps)
    return ClassifierResult(model, test_acc, losses)
