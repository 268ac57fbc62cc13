"""Colour emoji from the npm registry, installed as class-labelled image folders:
`emoji-datasource-<vendor>` (64 px PNGs, one class per category) and OpenMoji (colour SVGs
rasterised at 64 to 1024 px, one class per group).

Imports only `images.py` and `install.py` of this package.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from .images import DatasetNotFoundError
from .install import (PreparedEmoji, already_prepared, cache_dir, check_draw_size,
                      filled_atomically, npm_pack, package_index, slug)

logger = logging.getLogger(__name__)

EMOJI_VENDORS = ("twitter", "google")
EMOJI_DATASOURCE_VERSION = "16.0.0"


def _check_vendor(vendor: str) -> None:
    if vendor not in EMOJI_VENDORS:
        raise ValueError(f"vendor must be one of {EMOJI_VENDORS}, got {vendor!r}")


def default_emoji_dir(vendor: str) -> Path:
    """~/.cache/bld/emoji-<vendor> (XDG_CACHE_HOME respected)."""
    return cache_dir(f"emoji-{vendor}")



def extract_emoji_tarball(tarball: str | os.PathLike, vendor: str, dest: str | os.PathLike,
                          skin_tones: bool = False) -> PreparedEmoji:
    """Write dest/<category>/<image>.png from an `emoji-datasource-<vendor>` npm tarball.

    Reads package/emoji.json (fields `category`, `image`, `has_img_<vendor>`, and
    `skin_variations` when skin_tones=True) and copies package/img/<vendor>/64/<image> as is
    (RGBA; the dataset composites on white). Category names become folder slugs
    ('Smileys & Emotion' -> 'smileys_emotion'). Members are read, never extracted, so the
    tarball cannot write outside `dest`. The folder appears atomically: it is filled under a
    temporary name and renamed into place. An existing non-empty `dest` is left alone.
    """
    _check_vendor(vendor)
    dest = Path(dest).expanduser()
    if (done := already_prepared(dest)) is not None:
        return done
    with filled_atomically(dest) as tmp:
        with tarfile.open(tarball, "r:*") as tar:
            members, entries = package_index(tar, "package/emoji.json", "an emoji-datasource tarball")
            wanted: list[tuple[str, str]] = []  # (category, image file name)
            for e in entries:
                variants = [e] + (list((e.get("skin_variations") or {}).values()) if skin_tones else [])
                for v in variants:
                    if v.get(f"has_img_{vendor}", True) and v.get("image"):
                        wanted.append((e.get("category") or "other", v["image"]))
            counts: dict[str, int] = {}
            for category, image in wanted:
                member = members.get(f"package/img/{vendor}/64/{image}")
                if member is None or "/" in image or image.startswith("."):
                    continue
                folder = tmp / slug(category)
                folder.mkdir(exist_ok=True)
                with tar.extractfile(member) as src, open(folder / image, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                counts[folder.name] = counts.get(folder.name, 0) + 1
        if not counts:
            raise ValueError(f"{tarball} holds no 64px {vendor} images under package/img/{vendor}/64/")
    counts = dict(sorted(counts.items()))
    logger.info("emoji-%s: %d images in %d categories at %s", vendor, sum(counts.values()), len(counts), dest)
    return PreparedEmoji(dest, sum(counts.values()), counts)


def prepare_emoji(vendor: str = "twitter", dest: str | os.PathLike | None = None, skin_tones: bool = False,
                  version: str = EMOJI_DATASOURCE_VERSION) -> PreparedEmoji:
    """Fetch `emoji-datasource-<vendor>@<version>` with `npm pack` and write dest/<category>/*.png.

    dest defaults to default_emoji_dir(vendor). Returns at once if dest already holds images.
    Needs Node.js's npm and the npm registry; offline, download the tarball elsewhere and call
    extract_emoji_tarball(tarball, vendor, dest).
    """
    _check_vendor(vendor)
    dest = Path(dest).expanduser() if dest is not None else default_emoji_dir(vendor)
    if (done := already_prepared(dest)) is not None:
        return done
    package = f"emoji-datasource-{vendor}@{version}"
    manual = (f"Or download https://registry.npmjs.org/emoji-datasource-{vendor}/-/emoji-datasource-{vendor}-"
              f"{version}.tgz and call bld.data.extract_emoji_tarball(<tgz>, {vendor!r}, {str(dest)!r}).")
    with tempfile.TemporaryDirectory(prefix="bld-emoji-") as tmp:
        return extract_emoji_tarball(npm_pack(package, Path(tmp), manual), vendor, dest,
                                     skin_tones=skin_tones)



# --------------------------------------------------------------------------------------
# OpenMoji (npm `openmoji`): colour SVGs rasterised at any size from 64 to 1024 px
# --------------------------------------------------------------------------------------

OPENMOJI_VERSION = "17.0.0"
OPENMOJI_SIZES = (64, 1024)  # inclusive range of --size
OPENMOJI_DROPPED_GROUPS = ("component",)  # skin-tone swatches and hair parts, not emoji


def default_openmoji_dir(size: int) -> Path:
    """~/.cache/bld/openmoji-<size> (XDG_CACHE_HOME respected)."""
    return cache_dir(f"openmoji-{size}")


def _check_openmoji_size(size: int) -> None:
    check_draw_size(size, OPENMOJI_SIZES, "OpenMoji")


def rasterise_svg(svg: bytes, size: int) -> Image.Image:
    """An SVG drawn at size x size with cairosvg, its transparency flattened on white (RGB)."""
    try:
        import cairosvg
    except (ImportError, OSError) as e:  # OSError: the system libcairo is missing
        raise DatasetNotFoundError(
            "rasterising SVGs needs cairosvg and the system cairo library: "
            "`pip install cairosvg` and `sudo apt-get install libcairo2` "
            f"(scripts/setup.sh --test installs both); import failed with: {e}") from e
    import io
    png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def render_svg_to(job: tuple[bytes, int, str]) -> str | None:
    """Rasterise one (svg, size, out path) to a PNG; the error's text if cairosvg cannot draw
    it, else None. Picklable, for a process pool."""
    svg, size, out = job
    try:
        img = rasterise_svg(svg, size)
    except DatasetNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (cairosvg raises many kinds on a bad SVG)
        return f"{type(e).__name__}: {e}"
    img.save(out, optimize=False)
    return None


def render_svgs(jobs: list[tuple[bytes, int, str]], desc: str, workers: int | None = None,
                progress: bool = True) -> list[str | None]:
    """render_svg_to over every job, in `workers` processes (default up to 4), with a
    progress bar; each job's error text or None, in order."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm
    workers = workers or min(4, os.cpu_count() or 1)
    results: list[str | None] = []
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for r in pool.map(render_svg_to, jobs, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(render_svg_to(job))
                bar.update()
    return results


def extract_openmoji_tarball(tarball: str | os.PathLike, size: int, dest: str | os.PathLike,
                             skin_tones: bool = False, workers: int | None = None,
                             progress: bool = True) -> PreparedEmoji:
    """Write dest/<group>/<hexcode>.png (RGB, size x size) from an `openmoji` npm tarball.

    Reads package/data/openmoji.json (fields `hexcode`, `group`, `skintone`) and rasterises
    package/color/svg/<hexcode>.svg. Skin-tone variants (2,030 of the 4,495, all in
    people-body) are dropped unless skin_tones=True, so no class is mostly copies of one
    group; the `component` group (tone swatches, hair parts) is always dropped. Classes are
    the groups. Members are read, never extracted; the folder is filled under a temporary
    name and renamed into place, and an existing non-empty `dest` is left alone.
    """
    _check_openmoji_size(size)
    dest = Path(dest).expanduser()
    if (done := already_prepared(dest)) is not None:
        return done
    with filled_atomically(dest) as tmp:
        with tarfile.open(tarball, "r:*") as tar:
            members, entries = package_index(tar, "package/data/openmoji.json", "the openmoji tarball")
            jobs: list[tuple[bytes, int, str]] = []
            counts: dict[str, int] = {}
            for e in entries:
                hexcode, group = str(e.get("hexcode", "")), slug(str(e.get("group") or "other"))
                if group in OPENMOJI_DROPPED_GROUPS or (e.get("skintone") and not skin_tones):
                    continue
                member = members.get(f"package/color/svg/{hexcode}.svg")
                if member is None or not re.fullmatch(r"[0-9A-Fa-f-]+", hexcode):
                    continue
                (tmp / group).mkdir(exist_ok=True)
                jobs.append((tar.extractfile(member).read(), size, str(tmp / group / f"{hexcode}.png")))
                counts[group] = counts.get(group, 0) + 1
        if not jobs:
            raise ValueError(f"{tarball} holds no colour SVGs under package/color/svg/")
        results = render_svgs(jobs, f"openmoji {size}px", workers, progress)
        failed = [(Path(job[2]), err) for job, err in zip(jobs, results) if err is not None]
        for path, err in failed:
            counts[path.parent.name] -= 1
        if failed:
            logger.warning("openmoji: %d of %d SVGs could not be drawn and were skipped (%s)",
                           len(failed), len(jobs), "; ".join(f"{p.stem}: {e}" for p, e in failed[:3]))
        if len(failed) == len(jobs):
            raise ValueError(f"none of the {len(jobs)} SVGs in {tarball} could be drawn: {failed[0][1]}")
        counts = {k: v for k, v in counts.items() if v > 0}
        for group in {p.parent for p, _ in failed}:
            if not any(group.iterdir()):
                group.rmdir()
    counts = dict(sorted(counts.items()))
    logger.info("openmoji-%d: %d images in %d groups at %s", size, sum(counts.values()), len(counts), dest)
    return PreparedEmoji(dest, sum(counts.values()), counts, skipped=len(failed))


def prepare_openmoji(size: int = 256, dest: str | os.PathLike | None = None, skin_tones: bool = False,
                     version: str = OPENMOJI_VERSION, tarball: str | os.PathLike | None = None,
                     progress: bool = True) -> PreparedEmoji:
    """Fetch `openmoji@<version>` with `npm pack` (or use a local tarball) and rasterise it
    into dest/<group>/*.png at size x size (dest defaults to default_openmoji_dir(size)).
    Returns at once if dest already holds images."""
    _check_openmoji_size(size)
    dest = Path(dest).expanduser() if dest is not None else default_openmoji_dir(size)
    if (done := already_prepared(dest)) is not None:
        return done
    if tarball is not None:
        if not Path(tarball).is_file():
            raise DatasetNotFoundError(f"OpenMoji tarball {tarball} does not exist")
        return extract_openmoji_tarball(tarball, size, dest, skin_tones, progress=progress)
    manual = (f"Or download https://registry.npmjs.org/openmoji/-/openmoji-{version}.tgz and pass it "
              "with `bld prepare-openmoji --tarball <tgz>`.")
    with tempfile.TemporaryDirectory(prefix="bld-openmoji-") as tmp:
        return extract_openmoji_tarball(npm_pack(f"openmoji@{version}", Path(tmp), manual), size,
                                        dest, skin_tones, progress=progress)

