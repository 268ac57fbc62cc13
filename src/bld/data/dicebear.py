"""Cartoon faces drawn by DiceBear (npm `@dicebear/core` and up to ten of its face styles,
six by default), run with Node.js and rasterised with cairosvg into a class-labelled folder:
one class per style, thousands of distinct faces from seeds.

The prepared folder holds <style>/<style>-<seed>.png, manifest.csv (one row per image: path,
class, split, seed, background and the attributes DiceBear chose for the face: hair, skin,
clothes, accessories) and LICENSES.md (each style's artwork licence and creator). The split
is fixed by the manifest: every DICEBEAR_TEST_EVERY-th seed of each style is a test image.

Imports only `images.py`, `folder.py`, `install.py` and `emoji.py` (the SVG drawing) of this
package.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .emoji import render_svgs
from .folder import MANIFEST
from .images import DatasetNotFoundError
from .install import (PreparedEmoji, already_prepared, cache_dir, check_draw_size,
                      filled_atomically, npm_pack_all)

logger = logging.getLogger(__name__)

DICEBEAR_VERSION = "9.4.3"  # @dicebear/core and every style: one major version
# Colour styles whose avatars are a face (the others are robots, shapes, initials, line art).
DICEBEAR_STYLES = ("adventurer", "avataaars", "big-ears", "big-smile", "micah", "miniavs",
                   "open-peeps", "personas", "pixel-art", "toon-head")
# The six the prior learns best, drawn by default: at the same training steps (the ten
# styles' 20-minute plan on the emulated AVX2 host) sample recall 0.247 against the ten's
# 0.098 at guidance 4.5, 0.360 / 0.356 at w 2 (results/guidance_faces_six_native.md); in 20
# minutes on a slower AVX2-only CPU recall 0.046 and class accuracy 0.868 against 0.016 and
# 0.498 (docs/colour_demo_six_styles_native_report.json, docs/colour_demo_ten_native_report.json).
# `adventurer` and `big-smile` sampled as shapes without a face, `micah` and `open-peeps` as
# noisy line art.
DICEBEAR_DEFAULT_STYLES = ("avataaars", "big-ears", "miniavs", "personas", "pixel-art",
                           "toon-head")
# Backgrounds every style draws from (DiceBear picks one per seed): the same pastel set for
# all styles, so the background tells nothing about the class.
DICEBEAR_BACKGROUNDS = ("b6e3f4", "c0aede", "d1d4f9", "ffd5dc", "ffdfbf")
# 2,004 per style: 334 test faces per style, 2,004 for the six, so that FD and its
# real-vs-real floor (two disjoint halves of the test split) are measured at N >= 1,000
DICEBEAR_PER_STYLE = 2004
DICEBEAR_TEST_EVERY = 6  # seed i of a style is a test image when i % 6 == 5: 1 in 6
DICEBEAR_SIZES = (32, 1024)  # inclusive range of --size


def default_dicebear_dir(size: int) -> Path:
    """~/.cache/bld/dicebear6-<size> (XDG_CACHE_HOME respected): the default styles at the
    default count. The ten-style folder of earlier versions, dicebear-<size>, is never read
    as it."""
    return cache_dir(f"dicebear6-{size}")


def _check_size(size: int) -> None:
    check_draw_size(size, DICEBEAR_SIZES, "DiceBear")


def _check_per_style(per_style: int) -> None:
    if not (isinstance(per_style, int) and per_style >= DICEBEAR_TEST_EVERY):
        raise ValueError(f"per_style must be an integer of at least {DICEBEAR_TEST_EVERY} (one "
                         f"test face in {DICEBEAR_TEST_EVERY}), got {per_style!r}")


def check_styles(styles) -> tuple[str, ...]:
    """DiceBear style names as npm spells them ('big-ears'; a class name 'big_ears' is
    accepted too), in DICEBEAR_STYLES' order; a clear error for an unknown or empty set."""
    if isinstance(styles, str):
        styles = [styles]
    names = {str(s).strip().replace("_", "-") for s in styles}
    unknown = sorted(names - set(DICEBEAR_STYLES))
    if unknown or not names:
        raise ValueError(f"unknown DiceBear style{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(DICEBEAR_STYLES)}")
    return tuple(s for s in DICEBEAR_STYLES if s in names)


def dicebear_packages(version: str = DICEBEAR_VERSION,
                      styles: tuple[str, ...] = DICEBEAR_STYLES) -> list[str]:
    """The npm packages the faces are drawn with: the core and each style, at `version`."""
    return [f"@dicebear/{name}@{version}" for name in ("core", *check_styles(styles))]


def is_test_seed(i: int) -> bool:
    return i % DICEBEAR_TEST_EVERY == DICEBEAR_TEST_EVERY - 1


# Run by Node.js next to the unpacked packages: argv[2] is the JSON job. Prints one line per
# style ({"style", "meta"}: the licence) then one per face ({"style", "seed", "svg", "extra"}).
_RENDER_JS = r"""
import { createAvatar } from '@dicebear/core';
const job = JSON.parse(process.argv[2]);
for (const name of job.styles) {
  const style = await import(`@dicebear/${name}`);
  process.stdout.write(JSON.stringify({ style: name, meta: style.meta ?? {} }) + '\n');
  for (let i = 0; i < job.per_style; i++) {
    const seed = `${name}-${i}`;
    const avatar = createAvatar(style, { seed, size: job.size, clip: false,
                                         backgroundColor: job.backgrounds });
    process.stdout.write(JSON.stringify({ style: name, seed: i, svg: avatar.toString(),
                                          extra: avatar.toJson().extra ?? {} }) + '\n');
  }
}
"""


def _unpack_packages(tarballs: list[Path], modules: Path,
                     styles: tuple[str, ...] = DICEBEAR_STYLES) -> dict[str, str]:
    """Unpack npm tarballs of @dicebear/* packages into modules/@dicebear/<name>; returns
    {name: version}. Only regular files below package/ are written, never outside. The core
    and every one of `styles` must be there."""
    found: dict[str, str] = {}
    for tgz in tarballs:
        try:
            with tarfile.open(tgz, "r:*") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                if "package/package.json" not in members:
                    raise ValueError(f"{tgz} has no package/package.json; is it an npm package tarball?")
                info = json.load(tar.extractfile(members["package/package.json"]))
                name = str(info.get("name", ""))
                if not name.startswith("@dicebear/"):
                    continue  # another package in the folder: not ours
                short = name.removeprefix("@dicebear/")
                target = modules / "@dicebear" / short
                for member_name, member in members.items():
                    rel = PurePosixPath(member_name)
                    if rel.parts[0] != "package" or ".." in rel.parts or rel.is_absolute():
                        continue
                    out = target.joinpath(*rel.parts[1:])
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                found[short] = str(info.get("version", ""))
        except (tarfile.TarError, OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{tgz} is not a readable npm package tarball ({type(e).__name__}: {e})") from e
    missing = [n for n in ("core", *styles) if n not in found]
    if missing:
        raise DatasetNotFoundError(
            f"the DiceBear packages lack {', '.join('@dicebear/' + n for n in missing)}; fetch "
            f"them with `npm pack {' '.join('@dicebear/' + n + '@' + DICEBEAR_VERSION for n in missing)}`")
    majors = {n: v.split(".")[0] for n, v in found.items() if n in ("core", *styles)}
    if len(set(majors.values())) > 1:
        raise ValueError("the DiceBear packages are of different major versions ("
                         + ", ".join(f"{n} {found[n]}" for n in sorted(majors))
                         + f"); use one version for all, e.g. {DICEBEAR_VERSION}")
    return found


def _draw_svgs(modules_parent: Path, size: int, per_style: int,
               styles: tuple[str, ...] = DICEBEAR_STYLES) -> tuple[dict, list[dict]]:
    """Run DiceBear with Node.js: ({style: meta}, one dict per face)."""
    node = shutil.which("node")
    if node is None:
        raise DatasetNotFoundError("`node` not found; DiceBear draws its faces with Node.js. "
                                   "Install it (e.g. `sudo apt-get install nodejs`)")
    script = modules_parent / "render.mjs"
    script.write_text(_RENDER_JS)
    job = {"styles": list(styles), "per_style": per_style, "size": size,
           "backgrounds": list(DICEBEAR_BACKGROUNDS)}
    try:
        result = subprocess.run([node, str(script), json.dumps(job)], cwd=modules_parent,
                                capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as e:
        raise ValueError(f"drawing the faces with node timed out after {e.timeout:.0f} s") from e
    if result.returncode != 0:
        # node prints the source line and a stack around the error: keep the error's line
        errors = [line for line in result.stderr.splitlines() if re.match(r"\w*Error\b", line)]
        raise ValueError(f"drawing the faces with node failed (exit {result.returncode}): "
                         f"{errors[-1] if errors else result.stderr.strip()[-800:]}")
    metas: dict[str, dict] = {}
    faces: list[dict] = []
    for line in result.stdout.splitlines():
        row = json.loads(line)
        if "meta" in row:
            metas[row["style"]] = row["meta"]
        else:
            faces.append(row)
    return metas, faces


def _licences(metas: dict[str, dict], versions: dict[str, str],
              styles: tuple[str, ...] = DICEBEAR_STYLES) -> str:
    lines = ["# Licences", "",
             f"Faces drawn with DiceBear (@dicebear/core {versions.get('core', '?')}, MIT licence "
             "for the code), one folder per style. Each style's artwork has its own licence:", "",
             "| class (folder) | style | creator | licence | source |", "|---|---|---|---|---|"]
    for name in styles:
        m = metas.get(name, {})
        lic = m.get("license") or {}
        lines.append(f"| {name.replace('-', '_')} | {m.get('title', name)} "
                     f"(@dicebear/{name} {versions.get(name, '?')}) | {m.get('creator', '?')} | "
                     f"[{lic.get('name', '?')}]({lic.get('url', '')}) | {m.get('source', '')} |")
    lines += ["", "The CC BY 4.0 styles ask for this credit wherever their images are shown."]
    return "\n".join(lines) + "\n"


def extract_dicebear_tarballs(tarballs: list[str | os.PathLike], size: int,
                              dest: str | os.PathLike, per_style: int = DICEBEAR_PER_STYLE,
                              workers: int | None = None, progress: bool = True,
                              styles: tuple[str, ...] = DICEBEAR_DEFAULT_STYLES) -> PreparedEmoji:
    """Draw per_style faces of each of `styles` (default DICEBEAR_DEFAULT_STYLES) at size x size
    into dest from npm tarballs of @dicebear/core and the styles (other tarballs are ignored).

    Node.js runs DiceBear on the unpacked packages (seeds "<style>-<i>", i < per_style, a
    background from DICEBEAR_BACKGROUNDS); cairosvg draws each SVG on white. Writes
    dest/<style>/<style>-<i>.png (classes are the styles, '-' as '_'), manifest.csv and
    LICENSES.md. The folder is filled under a temporary name and renamed into place; an
    existing non-empty dest is left alone.
    """
    _check_size(size)
    _check_per_style(per_style)
    styles = check_styles(styles)
    dest = Path(dest).expanduser()
    if (done := already_prepared(dest)) is not None:
        return done
    with tempfile.TemporaryDirectory(prefix="bld-dicebear-") as work:
        versions = _unpack_packages([Path(t) for t in tarballs], Path(work) / "node_modules",
                                    styles)
        metas, faces = _draw_svgs(Path(work), size, per_style, styles)
    with filled_atomically(dest) as tmp:
        jobs, rows = [], []
        for face in faces:
            cls, i = face["style"].replace("-", "_"), int(face["seed"])
            rel = f"{cls}/{cls}-{i:04d}.png"
            (tmp / cls).mkdir(exist_ok=True)
            jobs.append((face["svg"].encode(), size, str(tmp / rel)))
            extra = dict(face["extra"])
            background = extra.pop("primaryBackgroundColor", "")
            for k in ("secondaryBackgroundColor", "backgroundType", "backgroundRotation"):
                extra.pop(k, None)
            rows.append({"path": rel, "class": cls, "split": "test" if is_test_seed(i) else "train",
                         "seed": f"{face['style']}-{i}", "background": background,
                         "attributes": json.dumps(extra, sort_keys=True, separators=(",", ":"))})
        if not jobs:
            raise ValueError("DiceBear drew no faces; check the packages")
        results = render_svgs(jobs, f"dicebear {size}px", workers, progress)
        failed = [(row, err) for row, err in zip(rows, results) if err is not None]
        if failed:
            logger.warning("dicebear: %d of %d SVGs could not be drawn and were skipped (%s)",
                           len(failed), len(jobs), "; ".join(f"{r['seed']}: {e}" for r, e in failed[:3]))
        if len(failed) == len(jobs):
            raise ValueError(f"none of the {len(jobs)} faces could be drawn: {failed[0][1]}")
        rows = [row for row, err in zip(rows, results) if err is None]
        with open(tmp / MANIFEST, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "LICENSES.md").write_text(_licences(metas, versions, styles), encoding="utf-8")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["class"]] = counts.get(row["class"], 0) + 1
    counts = dict(sorted(counts.items()))
    logger.info("dicebear-%d: %d faces in %d styles at %s", size, len(rows), len(counts), dest)
    return PreparedEmoji(dest, len(rows), counts, skipped=len(failed))


def prepare_dicebear(size: int = 64, dest: str | os.PathLike | None = None,
                     per_style: int = DICEBEAR_PER_STYLE, version: str = DICEBEAR_VERSION,
                     tarballs: str | os.PathLike | None = None,
                     progress: bool = True,
                     styles: tuple[str, ...] = DICEBEAR_DEFAULT_STYLES) -> PreparedEmoji:
    """Fetch @dicebear/core and the face styles with `npm pack` (or take their tarballs from
    the folder `tarballs`) and draw the faces of `styles` (default the six of
    DICEBEAR_DEFAULT_STYLES) into dest (default default_dicebear_dir(size), which takes only
    the default styles and count). Returns at once if dest already holds images."""
    _check_size(size)
    _check_per_style(per_style)
    styles = check_styles(styles)
    if dest is None:
        dest = default_dicebear_dir(size)
        if styles != check_styles(DICEBEAR_DEFAULT_STYLES) or per_style != DICEBEAR_PER_STYLE:
            raise ValueError(
                f"other styles or another count than the default ({len(DICEBEAR_DEFAULT_STYLES)} "
                f"styles, {DICEBEAR_PER_STYLE} per style) need their own folder: pass dest "
                f"(--dest DIR), so that {dest} keeps the default set")
        legacy = cache_dir(f"dicebear-{size}")
        if legacy.is_dir() and not dest.exists():
            logger.warning("%s holds the ten styles earlier versions drew by default; the default "
                           "is now the six of DICEBEAR_DEFAULT_STYLES in %s (pass --data-dir %s "
                           "to train on the ten)", legacy, dest, legacy)
    dest = Path(dest).expanduser()
    if (done := already_prepared(dest)) is not None:
        return done
    packages = dicebear_packages(version, styles)
    if tarballs is not None:
        folder = Path(tarballs).expanduser()
        if not folder.is_dir():
            raise DatasetNotFoundError(f"DiceBear tarball folder {folder} does not exist")
        found = sorted(folder.glob("*.tgz"))
        if not found:
            raise DatasetNotFoundError(f"no .tgz files in {folder}; fetch them with `npm pack "
                                       f"{' '.join(packages)}`")
        return extract_dicebear_tarballs(found, size, dest, per_style, progress=progress,
                                         styles=styles)
    manual = (f"Or run `npm pack {' '.join(packages)}` where the registry is reachable and pass "
              "that folder with `bld prepare-dicebear --tarballs <folder>`.")
    with tempfile.TemporaryDirectory(prefix="bld-dicebear-") as tmp:
        return extract_dicebear_tarballs(npm_pack_all(packages, Path(tmp), manual), size, dest,
                                         per_style, progress=progress, styles=styles)
