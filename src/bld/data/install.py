"""Shared by the sources bld installs into a folder of its own: fetching an npm package,
reading a package tarball, filling a folder atomically, and what a prepared folder holds.

Imports only `images.py` and `folder.py` of this package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

from .folder import IMAGE_EXTENSIONS
from .images import DatasetNotFoundError

logger = logging.getLogger(__name__)


class PreparedEmoji(NamedTuple):
    root: Path
    num_images: int
    categories: dict[str, int]  # folder name -> image count
    skipped: int = 0  # source images that could not be converted (named in the log)



def cache_dir(name: str) -> Path:
    """~/.cache/bld/<name> (XDG_CACHE_HOME respected): where a prepared source goes."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bld" / name


def check_draw_size(size: int, sizes: tuple[int, int], what: str) -> None:
    """A ValueError unless size is an int in the inclusive range `sizes`."""
    lo, hi = sizes
    if not (isinstance(size, int) and lo <= size <= hi):
        raise ValueError(f"{what} size must be an integer from {lo} to {hi} px, got {size!r}")


def slug(name: str) -> str:
    """'Smileys & Emotion' -> 'smileys_emotion' (safe, stable folder name)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "other"



def _count_images(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in root.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            key = p.relative_to(root).parts[0] if p.parent != root else ""
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def already_prepared(dest: Path) -> PreparedEmoji | None:
    """What a non-empty prepared folder holds (prepare_* leave it alone), else None."""
    if dest.is_dir() and any(dest.iterdir()):
        counts = _count_images(dest)
        return PreparedEmoji(dest, sum(counts.values()), counts)
    return None


def package_index(tar: tarfile.TarFile, index: str, what: str) -> tuple[dict, list]:
    """(file members by name, the parsed JSON index) of an npm package tarball."""
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    if index not in members:
        raise ValueError(f"{tar.name} has no {index}; is it {what}?")
    return members, json.load(tar.extractfile(members[index]))


@contextlib.contextmanager
def filled_atomically(dest: Path):
    """A temporary sibling folder to fill; renamed to dest on success, removed on any error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        install_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install_dir(tmp: Path, dest: Path) -> None:
    """Rename a finished folder into place; if another process got there first, keep theirs."""
    if dest.exists() and not any(dest.iterdir()):
        dest.rmdir()
    try:
        os.rename(tmp, dest)
    except OSError:
        if dest.is_dir() and any(dest.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise



def npm_pack(package: str, into: Path, manual: str) -> Path:
    """`npm pack PACKAGE` into a folder; the tarball's path. Errors say how to do it by hand."""
    return npm_pack_all([package], into, manual)[0]


def npm_pack_all(packages: list[str], into: Path, manual: str) -> list[Path]:
    """`npm pack PACKAGE...` (one npm run) into an empty folder; the tarballs' paths. Errors
    say how to do it by hand."""
    npm = shutil.which("npm")
    named = " ".join(packages)
    if npm is None:
        raise DatasetNotFoundError(f"`npm` not found; it is needed to fetch {named}. Install Node.js "
                                   f"(e.g. `sudo apt-get install npm`). {manual}")
    logger.info("fetching %s with npm pack", named)
    try:
        result = subprocess.run([npm, "pack", *packages, "--silent"], cwd=into, capture_output=True,
                                text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise DatasetNotFoundError(f"`npm pack {named}` timed out after {e.timeout:.0f} s. {manual}") from e
    tarballs = sorted(Path(into).glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) < len(packages):
        raise DatasetNotFoundError(
            f"`npm pack {named}` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-800:]}\n{manual}")
    return tarballs
