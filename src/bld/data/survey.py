"""A user's folder of images, surveyed and prepared for training (`bld train FOLDER`).

`survey_folder` reads every image once and says what the folder holds: images per class,
the sizes seen, grey or colour, transparency, files that cannot be read. From it
`choose_size` and `choose_channels` pick the training size and colours, and `plan_classes`
says which classes are too small to keep (merged into one class ``other`` where together
they are large enough, else dropped).

`prepare_folder` then writes the prepared copy the models train on: one PNG per image,
already at the chosen size (the shorter side resized, the centre cropped: the policy of
`images.image_to_tensor`), in RGB or greyscale, with transparency composited on the chosen
background, in class subfolders, and a ``manifest.csv`` whose split is stratified by class:
a fixed share of every class (at least one image) is test, chosen by a stable hash of each
path. `ImageFolderDataset` reads that folder and its manifest like any other, so training,
evaluation and the app need nothing else. A finished copy is recorded in
``prepared.json`` and reused when the folder and the settings are the same.

Imports `images.py` and `folder.py` of this package.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .folder import _DECODE_ERRORS, IMAGE_EXTENSIONS, MANIFEST, _hash_fraction
from .images import DatasetNotFoundError, image_to_tensor, open_image

log = logging.getLogger("bld")

# The training sizes `bld train` supports: 64 px (the faces64 presets') scaled by powers of
# two, and 28 px (the fashion-mnist presets') for small greyscale images.
SIZES = (28, 32, 64, 128, 256)
NAMED_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
MERGED_CLASS = "other"
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
PREPARED = "prepared.json"  # written last: the copy is complete


@dataclass
class SurveyedImage:
    path: str  # relative to the folder, with /
    label: str  # its class (the first-level subfolder); "" in a folder without subfolders
    width: int
    height: int
    grey: bool  # every pixel has R = G = B (or the file is in a grey mode)
    transparent: bool  # some pixel is not fully opaque


@dataclass
class FolderSurvey:
    """What `survey_folder` found in ``root``."""
    root: Path
    images: list[SurveyedImage]
    unreadable: dict[str, str]  # relative path -> why (the decoder's error)
    labelled: bool  # the images sit in class subfolders
    fingerprint: str  # changes when a file is added, removed or rewritten

    @property
    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(im.label for im in self.images).items()))

    @property
    def sizes(self) -> Counter:
        """How many images have each (width, height)."""
        return Counter((im.width, im.height) for im in self.images)

    @property
    def grey(self) -> bool:
        return all(im.grey for im in self.images)

    @property
    def transparent(self) -> int:
        return sum(im.transparent for im in self.images)

    def median_short_side(self) -> float:
        return statistics.median(min(im.width, im.height) for im in self.images)

    def summary(self) -> dict:
        """The survey's figures, for a report (the ten commonest sizes)."""
        return {"folder": str(self.root), "images": len(self.images),
                "classes": self.class_counts if self.labelled else {},
                "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common(10)},
                "distinct_sizes": len(self.sizes), "grey": self.grey,
                "grey_images": sum(im.grey for im in self.images),
                "transparent_images": self.transparent,
                "median_short_side": self.median_short_side(),
                "unreadable": len(self.unreadable),
                "unreadable_examples": dict(list(self.unreadable.items())[:5])}


def _image_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def survey_folder(root: str | Path, progress: bool = True) -> FolderSurvey:
    """Read every image under ``root`` (PNG / JPEG / WebP, searched recursively, hidden
    files skipped; classes from the first-level subfolders, as `ImageFolderDataset`)."""
    from tqdm.auto import tqdm
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist (or is not a folder); "
                                   "pass a folder of images, one subfolder per class")
    files = _image_files(root)
    if not files:
        raise DatasetNotFoundError(
            f"no images found in {root} (searched recursively for "
            f"{' '.join(IMAGE_EXTENSIONS)}); put PNG, JPEG or WebP files there, one subfolder "
            "per class")
    loose = [f for f in files if len(f.parts) == 1]
    if loose and len(loose) < len(files):
        raise ValueError(f"{root} has class subfolders but also {len(loose)} image(s) directly "
                         f"inside it (e.g. {loose[0]}), which would have no class; move them "
                         "into a subfolder, or all images out of the subfolders to train "
                         "without classes")
    labelled = not loose
    digest = hashlib.sha1()
    images, unreadable = [], {}
    for rel in tqdm(files, desc="survey", unit="img", disable=not progress, mininterval=1.0):
        st = (root / rel).stat()
        digest.update(f"{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        try:
            with open_image(root / rel) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                w, h = img.size
                if 0 in img.size:
                    raise ValueError(f"zero size {w}x{h}")
                alpha = _has_alpha(img)
                if alpha:
                    rgba = img.convert("RGBA")
                    alpha = int(np.asarray(rgba)[..., 3].min()) < 255
                if img.mode in _GREY_MODES or img.mode.startswith("I;16"):
                    grey = True
                else:
                    a = np.asarray(img.convert("RGB"))
                    grey = bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
        except _DECODE_ERRORS as e:
            unreadable[rel.as_posix()] = f"{type(e).__name__}: {e}"
            continue
        images.append(SurveyedImage(rel.as_posix(), rel.parts[0] if labelled else "", w, h,
                                    grey, alpha))
    if unreadable:
        log.warning("%s: %d of %d files cannot be read and are left out (e.g. %s)", root,
                    len(unreadable), len(files), next(iter(unreadable.items())))
    if not images:
        raise ValueError(f"none of the {len(files)} images in {root} can be read; point it at "
                         "a folder of PNG / JPEG / WebP images")
    return FolderSurvey(root, images, unreadable, labelled, digest.hexdigest())


def parse_background(text: str) -> tuple[int, int, int]:
    """``white``, ``black`` or ``#rrggbb`` -> an (r, g, b) colour."""
    t = text.strip().lower()
    if t in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[t]
    if re.fullmatch(r"#[0-9a-f]{6}", t):
        return tuple(int(t[i:i + 2], 16) for i in (1, 3, 5))
    raise ValueError(f"background must be white, black or #rrggbb, got {text!r}")


def choose_channels(survey: FolderSurvey, background: str = "white") -> int:
    """1 where every image is grey (and a transparent one lands on a grey background),
    else 3."""
    r, g, b = parse_background(background)
    grey_ground = r == g == b or not survey.transparent
    return 1 if survey.grey and grey_ground else 3


def choose_size(survey: FolderSurvey, channels: int) -> int:
    """The training size: the images' median shorter side rounded down to one of ``SIZES``
    (28 only for greyscale; the smallest where the median is below it)."""
    sizes = SIZES if channels == 1 else SIZES[1:]
    m = survey.median_short_side()
    return max([s for s in sizes if s <= m], default=sizes[0])


@dataclass
class ClassPlan:
    """Which classes train: ``kept`` as they are, ``merged`` into one class named
    ``merged_name``, ``dropped`` (each with its image count)."""
    kept: dict[str, int]
    merged: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    min_images: int = 8
    merged_name: str = MERGED_CLASS

    def target(self, label: str) -> str | None:
        """The class an original class trains as (None: dropped)."""
        if label in self.kept:
            return label
        return self.merged_name if label in self.merged else None

    @property
    def classes(self) -> list[str]:
        return sorted([*self.kept, *([self.merged_name] if self.merged else [])])

    def notes(self) -> list[str]:
        def each(d):
            return ", ".join(f"{c} ({n} image{'s' * (n != 1)})" for c, n in d.items())
        out = []
        if self.merged:
            out.append(f"{len(self.merged)} classes with fewer than {self.min_images} images "
                       f"each were merged into one class '{self.merged_name}' of "
                       f"{sum(self.merged.values())} images: {each(self.merged)}")
        if self.dropped:
            out.append(f"{len(self.dropped)} class{'es' * (len(self.dropped) != 1)} with fewer "
                       f"than {self.min_images} images (too few together to form a class) "
                       f"were dropped: {each(self.dropped)}; each needs {self.min_images} "
                       "(add images, or lower --min-class-images)")
        return out


def plan_classes(counts: dict[str, int], min_images: int) -> ClassPlan:
    """Keep the classes of at least ``min_images`` images; merge the others into one class
    when together they reach ``min_images``, else drop them. Raises ValueError, saying what
    to do, when fewer than two classes are left."""
    kept = {c: n for c, n in counts.items() if n >= min_images}
    small = {c: n for c, n in counts.items() if n < min_images}
    name = MERGED_CLASS if MERGED_CLASS not in kept else f"{MERGED_CLASS}-merged"
    plan = (ClassPlan(kept, small, {}, min_images, name) if sum(small.values()) >= min_images
            else ClassPlan(kept, {}, small, min_images, name))
    if len(plan.classes) < 2:
        raise ValueError(
            f"only {len(plan.classes)} class{'es' * (len(plan.classes) != 1)} of the "
            f"{len(counts)} subfolders ({', '.join(f'{c}: {n}' for c, n in counts.items())} "
            f"images) would train, and a class-conditional model needs at least 2 with "
            f"{min_images} images or more each: add images, lower --min-class-images, or put "
            "all the images directly in the folder (no subfolders) to train without classes")
    return plan


def stratified_split(paths_by_class: dict[str, list[str]], test_share: float
                     ) -> dict[str, str]:
    """{path: "train" | "test"}: in each class the ``round(test_share * n)`` paths (at least
    one, and never the last training image) with the smallest hash of the path are test, so
    the split is the same on every machine and moves little when files are added."""
    if not 0 < test_share < 1:
        raise ValueError(f"the test share must be in (0, 1), got {test_share}")
    split = {}
    for label, paths in paths_by_class.items():
        if len(paths) < 2:
            raise ValueError(f"class {label or '(all)'} has {len(paths)} image(s); a split "
                             "needs at least 2 (one to train on, one to test)")
        n_test = min(len(paths) - 1, max(1, round(test_share * len(paths))))
        ranked = sorted(paths, key=lambda p: (_hash_fraction(p), p))
        split.update({p: "test" if i < n_test else "train" for i, p in enumerate(ranked)})
    return split


@dataclass
class PreparedFolder:
    """The prepared copy `prepare_folder` wrote (or found) at ``root``."""
    root: Path
    image_size: int
    channels: int
    background: str
    classes: list[str]
    split_counts: dict[str, int]  # train / test images
    per_class: dict[str, dict[str, int]]  # class -> {"train": n, "test": n}
    resized_up: int  # images whose shorter side was below the size
    resized_down: int
    cropped: int  # images that were not square (their centre kept)
    composited: int  # images with transparency, composited on the background
    class_notes: list[str]
    reused: bool = False

    def notes(self) -> list[str]:
        """What the preparation did, in sentences for the log and the report."""
        n = sum(self.split_counts.values())
        out = [f"{n} images prepared at {self.image_size} px "
               f"({'greyscale' if self.channels == 1 else 'RGB'}) in {self.root}: "
               f"{self.resized_down} resized down, {self.resized_up} resized up, "
               f"{n - self.resized_down - self.resized_up} already {self.image_size} px on "
               f"the shorter side; {self.cropped} not square, so centre-cropped",
               f"split by class: {self.split_counts['train']} train, "
               f"{self.split_counts['test']} test"]
        if self.composited:
            out.append(f"{self.composited} image{'s' * (self.composited != 1)} had "
                       f"transparency: composited on {self.background}")
        return out + self.class_notes

    def as_dict(self) -> dict:
        return {**asdict(self), "root": str(self.root), "notes": self.notes()}


def _settings(survey, image_size, channels, background, min_class_images, test_share) -> dict:
    return {"source": str(survey.root.resolve()), "fingerprint": survey.fingerprint,
            "image_size": image_size, "channels": channels,
            "background": list(parse_background(background)),
            "min_class_images": min_class_images, "test_share": test_share}


def _on_background(img: Image.Image, rgb: tuple[int, int, int]) -> Image.Image:
    """``img`` with any transparency composited on ``rgb`` (RGB), else as it is."""
    if not _has_alpha(img):
        return img
    img = img.convert("RGBA")
    ground = Image.new("RGBA", img.size, (*rgb, 255))
    ground.alpha_composite(img)
    return ground.convert("RGB")


def prepare_folder(survey: FolderSurvey, dest: str | Path, *, image_size: int, channels: int,
                   background: str = "white", min_class_images: int = 8,
                   test_share: float = 0.1, progress: bool = True) -> PreparedFolder:
    """Write the prepared copy of the surveyed folder into ``dest`` (see the module's
    docstring), or reuse the one there when it was made from the same files with the same
    settings. A copy made otherwise is refused (a run trained on it would not match)."""
    from tqdm.auto import tqdm
    dest = Path(dest)
    settings = _settings(survey, image_size, channels, background, min_class_images, test_share)
    record = dest / PREPARED
    if record.is_file():
        done = json.loads(record.read_text())
        if done["settings"] == settings:
            res = PreparedFolder(**{**done["result"], "root": dest, "reused": True})
            log.info("reusing the prepared images in %s", dest)
            return res
        changed = sorted(k for k in settings if done["settings"].get(k) != settings[k])
        raise ValueError(f"{dest} was prepared from other files or settings (differs in "
                         f"{', '.join(changed)}); choose another --out for these")
    if dest.exists():
        raise ValueError(f"{dest} exists but is not a finished prepared copy; delete it or "
                         "choose another --out")
    rgb = parse_background(background)
    if survey.labelled:
        plan = plan_classes(survey.class_counts, min_class_images)
    else:
        if len(survey.images) < min_class_images:
            raise ValueError(f"{survey.root} has {len(survey.images)} readable images; training "
                             f"needs at least {min_class_images} (--min-class-images)")
        plan = ClassPlan({"": len(survey.images)}, min_images=min_class_images)
    chosen = [(im, plan.target(im.label)) for im in survey.images]
    chosen = [(im, c) for im, c in chosen if c is not None]
    by_class: dict[str, list[str]] = {}
    for im, c in chosen:
        by_class.setdefault(c, []).append(im.path)
    split = stratified_split(by_class, test_share)
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows, taken = [], set()
    counts = dict(resized_up=0, resized_down=0, cropped=0, composited=0)
    per_class = {c: {"train": 0, "test": 0} for c in by_class}
    for im, c in tqdm(chosen, desc="prepare", unit="img", disable=not progress, mininterval=1.0):
        # a merged class keeps each image under its original class's name
        rel = Path(im.path) if c == im.label else Path(c, im.path)
        out = rel.with_suffix(".png")
        if out.as_posix().lower() in taken:  # a.jpg beside a.png
            out = rel.with_name(rel.name.replace(".", "_") + ".png")
        taken.add(out.as_posix().lower())
        with open_image(survey.root / im.path) as img:
            img.load()
            img = _on_background(ImageOps.exif_transpose(img), rgb)
            x = image_to_tensor(img, image_size, channels)
        u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        a = u8[0].numpy() if channels == 1 else u8.permute(1, 2, 0).numpy()
        (work / out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, "L" if channels == 1 else "RGB").save(work / out)
        short = min(im.width, im.height)
        counts["resized_up"] += short < image_size
        counts["resized_down"] += short > image_size
        counts["cropped"] += im.width != im.height
        counts["composited"] += im.transparent
        per_class[c][split[im.path]] += 1
        rows.append({"path": out.as_posix(), "split": split[im.path], "class": c,
                     "source": im.path, "width": im.width, "height": im.height})
    with open(work / MANIFEST, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = PreparedFolder(dest, image_size, channels, background,
                         plan.classes if survey.labelled else [],
                         {s: sum(v[s] for v in per_class.values()) for s in ("train", "test")},
                         per_class, **counts, class_notes=plan.notes())
    result = {k: v for k, v in asdict(res).items() if k not in ("root", "reused")}
    (work / PREPARED).write_text(json.dumps({"settings": settings, "result": result}, indent=2))
    work.rename(dest)
    return res
