"""Three colour image folders held out of all tuning, for measuring `bld train FOLDER` on
data no preset was tuned on (issue 33, "your own images").

    python3 scripts/heldout_folders.py --list
    python3 scripts/heldout_folders.py papirus [--size 64] [--out DIR] [--workers N]
    python3 scripts/heldout_folders.py all
    bld train ~/.cache/bld/heldout/papirus --out runs/heldout-papirus

| name | package | what | classes |
|---|---|---|---|
| papirus | Debian papirus-icon-theme (GPL-3) | flat desktop icons | the theme's contexts: apps, devices, emblems, emotes, mimetypes, places, status |
| tuxpaint | Debian tuxpaint-stamps-default (GPL-2 or later) | clip-art stamps of a children's paint program | its top-level stamp folders: animals, food, vehicles, ... |
| fluent-emoji | npm @iconify-json/fluent-emoji-flat (MIT) | Microsoft's flat Fluent emoji | the emoji groups |

HELD OUT: no preset, probe rule, threshold or default of bld was chosen on these images. The
project's data, which its settings were tuned on, is Fashion-MNIST, the DiceBear faces,
Twitter emoji (emoji-datasource-twitter) and OpenMoji, and none of these folders draws on
them; Google's Noto emoji are left out too, since `emoji-google` is a built-in source.
Keep it so: report results on these folders, never choose settings by them.

Each folder is DIR/<name> (DIR defaults to ~/.cache/bld/heldout; `<name>-<size>` for another
--size than 64): one subfolder per class of PNGs, each size x size RGBA, the picture fitted
whole (aspect kept, centred) on a transparent background, and SOURCE.md (package, version,
licence, how classes were assigned, what was left out, counts per class). The packages are
fetched once into ~/.cache/bld/apt-heldout (`apt-get download`, read with `dpkg-deb`; nothing
is installed on the system) and ~/.cache/bld/npm-heldout (`npm pack`), at pinned versions.
The build is deterministic: files in sorted order, and a class over CAP_PER_CLASS (1,000) images
keeps the CAP_PER_CLASS whose names hash lowest (SHA-1), a fixed choice spread over the
alphabet. Images that cannot be drawn are skipped and counted. SVGs are drawn with cairosvg
(`pip install cairosvg`, the project's `openmoji` extra, and the system libcairo2). An
existing folder is left alone: delete it to rebuild.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image

from bld.data.emoji import rasterise_svg
from bld.data.images import DatasetNotFoundError
from bld.data.install import (already_prepared, cache_dir, check_draw_size, filled_atomically,
                              npm_pack, package_index, slug)

CAP_PER_CLASS = 1000
SIZES = (64, 1024)  # inclusive range of --size
DEFAULT_SIZE = 64
_PROBE_SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'


class Item(NamedTuple):
    """One image to draw: its class, its file name (no extension) and its sources, tried in
    order until one draws: (format 'svg' or 'png', bytes)."""
    cls: str
    name: str
    sources: tuple[tuple[str, bytes], ...]


@dataclass
class Collected:
    """What a package gave: the images to draw, what was left out and why (count per reason),
    and the package's facts for SOURCE.md."""
    items: list[Item]
    left_out: dict[str, int] = field(default_factory=dict)
    version: str = ""
    licence: str = ""


@dataclass(frozen=True)
class HeldOut:
    name: str
    title: str
    kind: str  # "deb" or "npm"
    package: str
    version: str  # pinned; a Debian package falls back to the archive's version, recorded
    classes: str  # how classes were assigned, for --list and SOURCE.md
    collect: Callable[[Path], Collected]  # the fetched package file -> what to draw


# --------------------------------------------------------------------------------------
# Fetching: Debian packages with apt-get download, npm packages with npm pack
# --------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise DatasetNotFoundError(f"`{cmd[0]}` not found; it is needed to {what}")
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        raise DatasetNotFoundError(f"`{' '.join(cmd)}` timed out after {e.timeout:.0f} s") from e


def fetch_deb(package: str, version: str, cache: Path) -> Path:
    """The .deb of package=version in `cache`, downloaded with `apt-get download` when the
    cache has none (the archive's version, with a warning, where that one is gone)."""
    cache.mkdir(parents=True, exist_ok=True)
    if not sorted(cache.glob(f"{package}_*.deb")):
        what = f"fetch the Debian package {package}"
        result = _run(["apt-get", "download", f"{package}={version}"], cache, what)
        if result.returncode != 0:
            result = _run(["apt-get", "download", package], cache, what)
            if result.returncode != 0:
                raise DatasetNotFoundError(
                    f"`apt-get download {package}` failed (exit {result.returncode}): "
                    f"{result.stderr.strip()[-600:]}\nRun `apt-get update` first (as root), or put "
                    f"{package}_<version>_all.deb from a Debian mirror into {cache}.")
            print(f"warning: {package} {version} is not in the apt archive; took its current "
                  "version (recorded in SOURCE.md)", file=sys.stderr)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        raise DatasetNotFoundError(f"apt-get download left no {package}_*.deb in {cache}")
    return found[-1]


def deb_field(deb: Path, name: str) -> str:
    """A control field of a .deb (`dpkg-deb -f`)."""
    result = _run(["dpkg-deb", "-f", str(deb), name], deb.parent, f"read {deb.name}")
    return result.stdout.strip()


def deb_files(deb: Path, wanted: Callable[[str], bool]) -> tuple[dict[str, bytes], int]:
    """(path -> bytes for the regular files of a .deb whose path, without the leading './',
    `wanted` accepts; how many symbolic links it accepted and skipped), streamed through
    `dpkg-deb --fsys-tarfile`: nothing is unpacked onto the disk."""
    if shutil.which("dpkg-deb") is None:
        raise DatasetNotFoundError("`dpkg-deb` not found; reading Debian packages needs it")
    files: dict[str, bytes] = {}
    links = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=err)
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                path = member.name.removeprefix("./")
                if not wanted(path):
                    continue
                if member.isfile():
                    files[path] = tar.extractfile(member).read()
                elif member.issym():
                    links += 1
        proc.stdout.close()
        if proc.wait() != 0:
            err.seek(0)
            raise ValueError(f"`dpkg-deb --fsys-tarfile {deb}` failed: {err.read().decode()[-600:]}")
    return files, links


def copyright_licence(text: str) -> str:
    """'<licence> (<copyright holders>)' of the `Files: *` stanza of a Debian copyright file
    (the machine-readable format), else its first License: line."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "; " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields.get("Files") == "*" and "License" in fields:
            holders = fields.get("Copyright", "").strip("; ")
            return f"{fields['License']} ({holders})" if holders else fields["License"]
    found = re.search(r"^License:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else "see the package's copyright file"


def fetch_npm(package: str, version: str, cache: Path) -> Path:
    """The tarball of package@version in `cache`, fetched with `npm pack` when missing."""
    tgz = cache / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if tgz.is_file():
        return tgz
    cache.mkdir(parents=True, exist_ok=True)
    manual = (f"Or run `npm pack {package}@{version}` where the registry is reachable and put "
              f"the tarball into {cache}.")
    with tempfile.TemporaryDirectory(prefix="bld-heldout-", dir=cache) as tmp:
        shutil.move(npm_pack(f"{package}@{version}", Path(tmp), manual), tgz)
    return tgz


# --------------------------------------------------------------------------------------
# What each package gives, and its classes
# --------------------------------------------------------------------------------------

PAPIRUS_ROOT = "usr/share/icons/Papirus/"
PAPIRUS_SIZES = ("64x64", "48x48")  # an icon at both: the 64x64 drawing
PAPIRUS_CONTEXTS = ("apps", "devices", "emblems", "emotes", "mimetypes", "places", "status")
# Papirus draws every folder in these colours besides its default, blue: 26 copies of each
PAPIRUS_FOLDER_COLOURS = (
    "adwaita", "black", "bluegrey", "breeze", "brown", "carmine", "custom", "cyan", "darkcyan",
    "deeporange", "green", "grey", "indigo", "magenta", "nordic", "orange", "palebrown",
    "paleorange", "pink", "red", "teal", "violet", "white", "yaru", "yellow")
_PAPIRUS_COLOUR_COPY = re.compile(r"(folder|user)-(%s)(-.*)?" % "|".join(PAPIRUS_FOLDER_COLOURS))


def papirus_items(files: dict[str, bytes]) -> tuple[list[Item], Counter]:
    """Papirus's colour icons (the 64x64 and 48x48 SVGs of PAPIRUS_CONTEXTS), one class per
    context; an icon in both sizes once, as drawn at 64x64; the other folder colours' copies of
    the places left out. Returns the items and the left-out counts."""
    chosen: dict[tuple[str, str], tuple[int, bytes]] = {}
    left_out: Counter = Counter()
    colour_copies: set[str] = set()
    for path, data in sorted(files.items()):
        parts = path.removeprefix(PAPIRUS_ROOT).split("/")
        if len(parts) != 3 or parts[0] not in PAPIRUS_SIZES or parts[1] not in PAPIRUS_CONTEXTS \
                or not parts[2].endswith(".svg"):
            continue
        size, context, name = PAPIRUS_SIZES.index(parts[0]), parts[1], parts[2][:-4]
        if context == "places" and _PAPIRUS_COLOUR_COPY.fullmatch(name):
            colour_copies.add(name)
            continue
        key = (context, name)
        if key in chosen:
            left_out["48x48 drawings of icons also drawn at 64x64"] += 1
        if key not in chosen or size < chosen[key][0]:
            chosen[key] = (size, data)
    left_out["places drawn in another folder colour than the default blue"] = len(colour_copies)
    items = [Item(context, name, (("svg", data),)) for (context, name), (_, data) in sorted(chosen.items())]
    return items, left_out


def collect_papirus(deb: Path) -> Collected:
    folders = tuple(f"{PAPIRUS_ROOT}{size}/{context}/" for size in PAPIRUS_SIZES
                    for context in PAPIRUS_CONTEXTS)
    files, links = deb_files(deb, lambda p: p.startswith(folders) or p.endswith("/copyright"))
    licence = _deb_licence(files)
    items, left_out = papirus_items(files)
    left_out["symbolic links (another name for an icon drawn once)"] = links
    return Collected(items, dict(left_out), deb_field(deb, "Version"), licence)


TUXPAINT_ROOT = "usr/share/tuxpaint/stamps/"


def tuxpaint_items(files: dict[str, bytes]) -> tuple[list[Item], Counter]:
    """Tux Paint's stamps, one class per top-level stamp folder; a stamp's name is its path
    below that folder ('birds/cartoon/duck'); a stamp shipped as SVG and PNG is drawn from the
    SVG, the PNG if the SVG fails. The ready-made mirrored / flipped PNGs are left out."""
    stamps: dict[tuple[str, str], dict[str, bytes]] = {}
    left_out: Counter = Counter()
    for path, data in sorted(files.items()):
        rel = path.removeprefix(TUXPAINT_ROOT)
        stem, dot, ext = rel.rpartition(".")
        if rel == path or "/" not in rel or ext not in ("svg", "png") or not dot:
            continue
        if ext == "png" and stem.endswith(("_mirror", "_flip")):
            left_out["ready-made mirrored or flipped copies"] += 1
            continue
        cls, name = stem.split("/", 1)
        stamps.setdefault((cls, name.replace("/", "-")), {})[ext] = data
    items = []
    for (cls, name), by_ext in sorted(stamps.items()):
        if len(by_ext) == 2:
            left_out["PNGs of stamps also shipped as SVG (drawn from the SVG)"] += 1
        items.append(Item(cls, name, tuple((e, by_ext[e]) for e in ("svg", "png") if e in by_ext)))
    return items, left_out


def collect_tuxpaint(deb: Path) -> Collected:
    files, _ = deb_files(deb, lambda p: (p.startswith(TUXPAINT_ROOT) and p.endswith((".png", ".svg")))
                         or p.endswith("/copyright"))
    licence = _deb_licence(files)
    items, left_out = tuxpaint_items(files)
    return Collected(items, dict(left_out), deb_field(deb, "Version"), licence)


def _deb_licence(files: dict[str, bytes]) -> str:
    """The licence from the package's copyright file, which `files` holds (popped from it)."""
    path = next((p for p in files if p.startswith("usr/share/doc/") and p.endswith("/copyright")), None)
    return copyright_licence(files.pop(path).decode("utf-8", "replace")) if path else "unknown"


# Fluent's skin-tone variants: '<emoji>-<tone>' where '<emoji>' is an icon too
SKIN_TONES = ("-light", "-medium-light", "-medium", "-medium-dark", "-dark")


def iconify_svg(icons: dict, name: str) -> bytes:
    """An icon of an Iconify JSON set as a standalone SVG, on a square canvas (a wider or
    taller icon centred on it)."""
    icon = icons["icons"][name]
    left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
    width, height = icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16))
    side = max(width, height)
    box = f"{left - (side - width) / 2:g} {top - (side - height) / 2:g} {side:g} {side:g}"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{box}" width="{side:g}" height="{side:g}">{icon["body"]}</svg>').encode()


def iconify_items(icons: dict, categories: dict[str, list[str]],
                  variant_suffixes: tuple[str, ...] = SKIN_TONES) -> tuple[list[Item], Counter]:
    """The icons of an Iconify JSON set, one class per category (its folder slug); an icon in
    several categories goes to the first by name. Left out: hidden icons, icons in no category,
    variants (a name that is another icon's name plus one of `variant_suffixes`) and icons
    drawn rotated or flipped (not drawn here); aliases are not icons and never seen."""
    by_icon: dict[str, str] = {}
    for category in sorted(categories):
        for name in categories[category]:
            by_icon.setdefault(name, slug(category))
    names = set(icons["icons"])
    items: list[Item] = []
    left_out: Counter = Counter()
    for name in sorted(names):
        icon = icons["icons"][name]
        if icon.get("hidden"):
            left_out["hidden (kept by Iconify for old names)"] += 1
        elif any(name.endswith(s) and name[:-len(s)] in names for s in variant_suffixes):
            left_out["skin-tone variants of another emoji"] += 1
        elif name not in by_icon:
            left_out["in no category"] += 1
        elif any(icon.get(k) for k in ("rotate", "hFlip", "vFlip")):
            left_out["rotated or flipped"] += 1
        else:
            items.append(Item(by_icon[name], name, (("svg", iconify_svg(icons, name)),)))
    return items, left_out


def collect_iconify(tgz: Path) -> Collected:
    with tarfile.open(tgz, "r:*") as tar:
        members, icons = package_index(tar, "package/icons.json", "an @iconify-json package")
        meta = members.get("package/metadata.json")
        categories = (json.load(tar.extractfile(meta)) if meta else {}).get("categories") \
            or icons.get("categories") or {}
        info = json.load(tar.extractfile(members["package/package.json"]))
        about = icons.get("info", {})
        if "package/info.json" in members:
            about = json.load(tar.extractfile(members["package/info.json"]))
    if not categories:
        raise ValueError(f"{tgz.name} has no categories, so no classes")
    items, left_out = iconify_items(icons, categories)
    lic, author = about.get("license", {}), about.get("author", {})
    licence = (f"{lic.get('spdx') or lic.get('title') or info.get('license', '?')} "
               f"({author.get('name', '?')}; {lic.get('url') or author.get('url', '')})")
    return Collected(items, dict(left_out), str(info.get("version", "")), licence)


HELD_OUT = {h.name: h for h in (
    HeldOut("papirus", "Papirus icons", "deb", "papirus-icon-theme", "20230104-2",
            "the icon theme's context folders (apps, devices, emblems, emotes, mimetypes, "
            "places, status) of its colour 64x64 and 48x48 SVGs; the symbolic (monochrome) "
            "icons and the 15 colour `actions` are not read",
            collect_papirus),
    HeldOut("tuxpaint", "Tux Paint stamps", "deb", "tuxpaint-stamps-default", "2022.06.04-1",
            "the stamp folder each stamp sits in (animals, clothes, food, hobbies, household, "
            "medical, military, naturalforces, people, plants, seasonal, space, sports, "
            "symbols, town, vehicles); `symbols` holds the alphabets, numbers and music signs "
            "Tux Paint tints, in grey",
            collect_tuxpaint),
    HeldOut("fluent-emoji", "Fluent Emoji Flat", "npm", "@iconify-json/fluent-emoji-flat", "1.2.6",
            "the Unicode emoji group the set's metadata.json puts each emoji in",
            collect_iconify),
)}


# --------------------------------------------------------------------------------------
# Drawing and writing a folder
# --------------------------------------------------------------------------------------

def cap_per_class(items: list[Item], cap: int = CAP_PER_CLASS) -> tuple[list[Item], dict[str, int]]:
    """At most `cap` items per class: the ones whose 'class/name' has the lowest SHA-1, a fixed
    choice that does not favour the start of the alphabet. Returns (items in sorted order,
    {class: images left out})."""
    by_class: dict[str, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.cls, []).append(item)
    kept, cut = [], {}
    for cls, group in sorted(by_class.items()):
        if len(group) > cap:
            cut[cls] = len(group) - cap
            group = sorted(group, key=lambda i: hashlib.sha1(f"{i.cls}/{i.name}".encode()).hexdigest())[:cap]
        kept += sorted(group, key=lambda i: i.name)
    return kept, cut


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """img scaled to fit size x size whole (aspect kept, Lanczos on premultiplied alpha so no
    dark fringes), centred on transparency: RGBA."""
    img = img.convert("RGBA")
    scale = size / max(img.size)
    if img.size != (size, size):
        w, h = (max(1, round(d * scale)) for d in img.size)
        img = img.convert("RGBa").resize((w, h), Image.LANCZOS).convert("RGBA")
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def draw(fmt: str, data: bytes, size: int) -> Image.Image:
    """One source drawn at size x size, RGBA; a ValueError for a blank picture."""
    if fmt == "svg":
        import cairosvg
        data = cairosvg.svg2png(bytestring=data, output_width=size, output_height=size)
    img = Image.open(io.BytesIO(data))
    img.load()
    out = fit_square(img, size)
    if out.getchannel("A").getbbox() is None:
        raise ValueError("the picture is blank (fully transparent)")
    return out


def draw_to(job: tuple[tuple[tuple[str, bytes], ...], int, str]) -> tuple[str | None, bool]:
    """Draw an item's first source that draws to a PNG file: (None, whether it was smaller than
    size and scaled up), or (the errors' text, False). Picklable, for a process pool."""
    sources, size, out = job
    errors = []
    for fmt, data in sources:
        try:
            img = draw(fmt, data, size)
        except Exception as e:  # noqa: BLE001  (cairosvg and PIL raise many kinds)
            errors.append(f"{fmt}: {type(e).__name__}: {e}"[:200])
            continue
        img.save(out)
        small = fmt == "png" and max(Image.open(io.BytesIO(data)).size) < size
        return None, small
    return "; ".join(errors), False


def file_names(items: list[Item]) -> list[str]:
    """'class/name.png' for each item, the name made safe for any file system (a clash gets
    '-2', '-3', ... in the items' order)."""
    seen: set[str] = set()
    out = []
    for item in items:
        base = f"{item.cls}/{re.sub(r'[^A-Za-z0-9._-]+', '_', item.name).strip('.') or 'image'}"
        rel, n = f"{base}.png", 1
        while rel.lower() in seen:
            n += 1
            rel = f"{base}-{n}.png"
        seen.add(rel.lower())
        out.append(rel)
    return out


def render_all(jobs: list, workers: int) -> list[tuple[str | None, bool]]:
    from tqdm.auto import tqdm
    if workers <= 1:
        return [draw_to(job) for job in tqdm(jobs, unit="img")]
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(draw_to, jobs, chunksize=16), total=len(jobs), unit="img"))


def source_md(spec: HeldOut, got: Collected, size: int, counts: dict[str, int], cut: dict[str, int],
              failed: list[tuple[str, str]], upscaled: int, command: str) -> str:
    fetched = (f"`apt-get download {spec.package}`, read with `dpkg-deb`" if spec.kind == "deb"
               else f"`npm pack {spec.package}@{spec.version}`")
    lines = [
        f"# {spec.title}: a held-out folder for `bld train`", "",
        f"Built by `{command}` (bld's scripts/heldout_folders.py).", "",
        "**Held out of all tuning**: no preset, probe rule, threshold or default of bld was "
        "chosen on these images (the project tuned on Fashion-MNIST, DiceBear faces, Twitter "
        "emoji and OpenMoji). Report results on it; do not choose settings by it.", "",
        f"- Package: {spec.package} {got.version} ({'Debian' if spec.kind == 'deb' else 'npm'}; "
        f"fetched with {fetched})",
        f"- Licence: {got.licence}",
        f"- Images: {sum(counts.values())} PNGs of {size} x {size} px, RGBA: each picture fitted "
        "whole (aspect kept, centred) on a transparent background",
        f"- Classes ({len(counts)}): {spec.classes}",
    ]
    for why, n in sorted(got.left_out.items()):
        if n:
            lines.append(f"- Left out: {n} {why}")
    for cls, n in cut.items():
        lines.append(f"- Capped: `{cls}` had {n + counts.get(cls, 0)} images; the {CAP_PER_CLASS} "
                     "whose 'class/name' has the lowest SHA-1 are kept")
    if upscaled:
        lines.append(f"- Scaled up: {upscaled} PNGs were smaller than {size} px")
    lines.append(f"- Could not be drawn (skipped): {len(failed)}"
                 + "".join(f"\n  - {name}: {err}" for name, err in failed[:10]))
    lines += ["", "| class | images |", "|---|---|"]
    lines += [f"| {cls} | {n} |" for cls, n in counts.items()]
    lines.append(f"| total | {sum(counts.values())} |")
    return "\n".join(lines) + "\n"


def build(spec: HeldOut, size: int, out_root: Path, workers: int = 1) -> Path:
    """Write out_root/<name> (or <name>-<size>); an existing folder is left alone."""
    check_draw_size(size, SIZES, "the images'")
    dest = out_root / (spec.name if size == DEFAULT_SIZE else f"{spec.name}-{size}")
    if (done := already_prepared(dest)) is not None:
        print(f"{spec.name}: {dest} already holds {done.num_images} images in "
              f"{len(done.categories)} classes; delete it to rebuild")
        return dest
    rasterise_svg(_PROBE_SVG, 1)  # cairosvg's clear error where it is missing, before fetching
    start = time.monotonic()
    if spec.kind == "deb":
        package_file = fetch_deb(spec.package, spec.version, cache_dir("apt-heldout"))
    else:
        package_file = fetch_npm(spec.package, spec.version, cache_dir("npm-heldout"))
    got = spec.collect(package_file)
    if got.version != spec.version:
        print(f"warning: {spec.package} is {got.version}, not the pinned {spec.version}",
              file=sys.stderr)
    items, cut = cap_per_class(got.items)
    if not items:
        raise ValueError(f"{package_file.name} gave no images")
    names = file_names(items)
    print(f"{spec.name}: drawing {len(items)} images from {package_file.name} at {size} px")
    with filled_atomically(dest) as tmp:
        for cls in {item.cls for item in items}:
            (tmp / cls).mkdir()
        results = render_all([(item.sources, size, str(tmp / rel)) for item, rel in zip(items, names)],
                             workers)
        failed = [(rel, err) for rel, (err, _) in zip(names, results) if err is not None]
        counts = dict(sorted(Counter(rel.split("/")[0] for rel, (err, _) in zip(names, results)
                                     if err is None).items()))
        for cls in {item.cls for item in items} - set(counts):
            (tmp / cls).rmdir()
        if not counts:
            raise ValueError(f"none of the {len(items)} images could be drawn: {failed[0][1]}")
        command = f"python3 scripts/heldout_folders.py {spec.name}" + (
            f" --size {size}" if size != DEFAULT_SIZE else "")
        (tmp / "SOURCE.md").write_text(source_md(
            spec, got, size, counts, cut, failed, sum(small for _, small in results), command),
            encoding="utf-8")
    print(f"{spec.name}: {sum(counts.values())} images in {len(counts)} classes at {dest} "
          f"({len(failed)} could not be drawn, {time.monotonic() - start:.0f} s)")
    for cls, n in counts.items():
        print(f"  {cls:24s} {n}")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"{', '.join(HELD_OUT)} or all")
    ap.add_argument("--list", action="store_true", help="say what each folder holds and exit")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE,
                    help=f"image side in px, {SIZES[0]} to {SIZES[1]} (default {DEFAULT_SIZE})")
    ap.add_argument("--out", type=Path, default=None,
                    help="the folder the named folders go into (default ~/.cache/bld/heldout)")
    ap.add_argument("--workers", type=int, default=1, help="drawing processes (default 1)")
    args = ap.parse_args(argv)
    out_root = (args.out or cache_dir("heldout")).expanduser()
    if not args.list and not args.names:
        ap.error(f"name a folder ({', '.join(HELD_OUT)} or all), or --list")
    if args.list:
        for spec in HELD_OUT.values():
            dest = out_root / spec.name
            state = f"built at {dest}" if already_prepared(dest) else f"not built ({dest})"
            print(f"{spec.name:13s} {spec.title}: {spec.kind} {spec.package} {spec.version}; "
                  f"classes: {spec.classes}; {state}")
        return 0
    names = list(HELD_OUT) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in HELD_OUT]
    if unknown:
        ap.error(f"unknown folder {', '.join(unknown)}; choose from {', '.join(HELD_OUT)} or all")
    try:
        for name in names:
            build(HELD_OUT[name], args.size, out_root, args.workers)
    except (DatasetNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
