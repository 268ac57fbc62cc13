"""Datasets: image folders (formats, labels, corrupt files, manifest split, mirrors),
Fashion-MNIST, emoji extraction, DiceBear faces."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader

from bld.data import (DICEBEAR_BACKGROUNDS, FASHION_MNIST_CLASSES, DatasetNotFoundError,
                      ImageFolderDataset, TensorImageDataset, build_dataset, extract_emoji_tarball,
                      extract_openmoji_tarball, find_fashion_mnist, prepare_openmoji)
from bld.data.folder import _hash_fraction

# --------------------------------------------------------------------------------------
# Fixture folder: two classes, every supported mode, mixed sizes, one corrupt file
# --------------------------------------------------------------------------------------


def _rgb(w, h, colour=(200, 30, 30)):
    return Image.new("RGB", (w, h), colour)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    cats, dogs = root / "cats", root / "dogs"
    (cats / "nested").mkdir(parents=True)
    dogs.mkdir()
    rng = np.random.default_rng(0)

    _rgb(40, 30).save(cats / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (50, 20, 3), dtype=np.uint8)).save(cats / "nested" / "UPPER.JPEG")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent -> white
    rgba.save(cats / "transparent.png")
    pal = Image.new("P", (16, 24), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 16, 12))
    pal.save(cats / "palette.png", transparency=0)  # index 0 (bottom half) transparent -> white
    Image.new("L", (33, 17), 128).save(dogs / "grey.png")
    Image.new("LA", (12, 12), (0, 0)).save(dogs / "grey_alpha.png")
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(dogs / "sixteen_bit.png")
    Image.new("CMYK", (14, 14), (0, 255, 255, 0)).save(dogs / "cmyk.jpg")
    if features.check("webp"):
        _rgb(64, 64, (10, 200, 10)).save(dogs / "leaf.webp")
    (dogs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (dogs / "notes.txt").write_text("not an image")
    (dogs / ".hidden.png").write_bytes(b"ignored")
    return root


def test_folder_shapes_ranges_labels(image_folder):
    ds = ImageFolderDataset(image_folder, image_size=16, channels=3)
    assert ds.classes == ("cats", "dogs") and ds.num_classes == 2
    n_webp = int(features.check("webp"))
    assert len(ds) == 9 + n_webp  # txt and hidden files ignored, broken.png listed
    names = {p.name: ds.labels[i] for i, p in enumerate(ds.files)}
    assert names["UPPER.JPEG"] == 0 and names["grey.png"] == 1
    for i, f in enumerate(ds.files):
        if f.name == "broken.png":
            continue
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
        assert y == ds.labels[i]
    assert ds.skipped == 0


def test_folder_mode_conversions(image_folder):
    ds = ImageFolderDataset(image_folder, image_size=8, channels=3)
    get = {f.name: i for i, f in enumerate(ds.files)}
    assert torch.allclose(ds[get["transparent.png"]][0], torch.ones(3, 8, 8))  # composited on white
    assert torch.allclose(ds[get["grey_alpha.png"]][0], torch.ones(3, 8, 8))
    pal = ds[get["palette.png"]][0]
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 2, 8)
    assert torch.allclose(pal[:, -2:], torch.ones(3, 2, 8), atol=0.02)  # transparent half white
    assert torch.allclose(pal[:, :2], red, atol=0.02)  # (Lanczos rings a little)
    grey = ds[get["grey.png"]][0]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert torch.allclose(ds[get["sixteen_bit.png"]][0], torch.ones(3, 8, 8))  # scaled, not clipped
    cmyk = ds[get["cmyk.jpg"]][0].mean(dim=(1, 2))
    assert cmyk[0] > 0.8 and cmyk[1] < -0.8 and cmyk[2] < -0.8  # C=0 M=Y=255 -> red

    ds1 = ImageFolderDataset(image_folder, image_size=8, channels=1)
    x, _ = ds1[get["photo.jpg"]]
    assert x.shape == (1, 8, 8)


def test_corrupt_file_is_skipped_and_counted(image_folder, caplog):
    ds = ImageFolderDataset(image_folder, image_size=8)
    bad = next(i for i, f in enumerate(ds.files) if f.name == "broken.png")
    with caplog.at_level(logging.WARNING, logger="bld.data"):
        batches = list(DataLoader(ds, batch_size=4, shuffle=False, num_workers=0))
        replacement, label = ds[bad]  # met again: no second warning
    assert sum(b[0].shape[0] for b in batches) == len(ds)
    assert ds.skipped == 1
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1
    nxt = (bad + 1) % len(ds)
    assert torch.equal(replacement, ds[nxt][0]) and label == ds.labels[nxt]  # deterministic stand-in


def test_unlabelled_and_loose_files(tmp_path, image_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    _rgb(10, 10).save(flat / "a.png")
    _rgb(12, 9).save(flat / "b.PNG")
    ds = ImageFolderDataset(flat, image_size=4)
    assert len(ds) == 2 and ds.classes == () and ds.num_classes == 0 and ds[1][1] == 0

    ds = ImageFolderDataset(image_folder, image_size=4, labels="none")
    assert ds.num_classes == 0 and {ds[i][1] for i in range(len(ds))} == {0}

    _rgb(10, 10).save(image_folder / "loose.png")
    with pytest.raises(ValueError, match="directly inside"):
        ImageFolderDataset(image_folder, image_size=4)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", image_size=8)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match=r"\.png .*\.webp"):
        ImageFolderDataset(tmp_path / "empty", image_size=8)
    with pytest.raises(DatasetNotFoundError, match="unknown dataset source"):
        build_dataset(str(tmp_path / "nope"), image_size=8)


def test_hash_split_is_disjoint_and_stable(tmp_path):
    root = tmp_path / "many"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(30):
            _rgb(4, 4).save(root / c / f"{i}.png")
    train = build_dataset(str(root), "train", image_size=4)
    test = build_dataset(str(root), "test", image_size=4)
    everything = build_dataset(str(root), "all", image_size=4)
    assert set(train.files).isdisjoint(test.files)
    assert len(train) + len(test) == len(everything) == 60 and len(test) > 0
    assert train.classes == test.classes == ("a", "b")
    assert build_dataset(str(root), "test", image_size=4).files == test.files


def test_tensor_dataset_resize_and_channels():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.arange(5)
    ds = TensorImageDataset(images, labels)
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and y == 2 and ds.num_classes == 5
    assert torch.allclose(x, images[2].float() / 127.5 - 1)
    ds = TensorImageDataset(images, labels, image_size=32, channels=3)
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_fashion_mnist():
    try:
        find_fashion_mnist()
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): {e}")
    train, test = build_dataset("fashion-mnist", "train"), build_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.classes == FASHION_MNIST_CLASSES and train.num_classes == 10
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert 0 <= y < 10
    x32, _ = build_dataset("fashion-mnist", "test", image_size=32, channels=3)[0]
    assert x32.shape == (3, 32, 32)


# --------------------------------------------------------------------------------------
# Emoji: extraction from a fake emoji-datasource tarball (no network)
# --------------------------------------------------------------------------------------


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_extract_emoji_tarball(tmp_path):
    entries = [
        {"image": "1f600.png", "category": "Smileys & Emotion", "has_img_twitter": True,
         "skin_variations": None},
        {"image": "1f44d.png", "category": "People & Body", "has_img_twitter": True,
         "skin_variations": {"1F3FB": {"image": "1f44d-1f3fb.png", "has_img_twitter": True}}},
        {"image": "1f1e6.png", "category": "Flags", "has_img_twitter": False},  # no image for vendor
        {"image": "1f34e.png", "category": "Food & Drink", "has_img_twitter": True},
    ]
    tgz = tmp_path / "emoji-datasource-twitter-16.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        _add(tar, "package/emoji.json", json.dumps(entries).encode())
        for name, colour in [("1f600.png", (255, 200, 0, 255)), ("1f44d.png", (0, 0, 0, 0)),
                             ("1f44d-1f3fb.png", (9, 9, 9, 255)), ("1f34e.png", (200, 0, 0, 128))]:
            _add(tar, f"package/img/twitter/64/{name}", _png(colour))
        _add(tar, "package/img/google/64/1f600.png", _png((1, 2, 3, 255)))

    dest = tmp_path / "emoji"
    out = extract_emoji_tarball(tgz, "twitter", dest)
    assert out.num_images == 3
    assert out.categories == {"food_drink": 1, "people_body": 1, "smileys_emotion": 1}
    assert (dest / "smileys_emotion" / "1f600.png").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left

    ds = build_dataset("emoji-twitter", "all", data_dir=dest)  # prepared: no npm call
    assert ds.classes == ("food_drink", "people_body", "smileys_emotion") and len(ds) == 3
    x, _ = ds[ds.files.index(next(f for f in ds.files if f.name == "1f44d.png"))]
    assert x.shape == (3, 64, 64) and torch.allclose(x, torch.ones_like(x))  # transparent -> white

    with_skin = extract_emoji_tarball(tgz, "twitter", tmp_path / "skin", skin_tones=True)
    assert with_skin.num_images == 4
    google = extract_emoji_tarball(tgz, "google", tmp_path / "g")  # only the google folder is read
    assert google.categories == {"smileys_emotion": 1}
    assert Image.open(tmp_path / "g" / "smileys_emotion" / "1f600.png").getpixel((0, 0)) == (1, 2, 3, 255)

    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        _add(tar, "package/emoji.json", json.dumps(entries).encode())
    with pytest.raises(ValueError, match="no 64px twitter images"):
        extract_emoji_tarball(bad, "twitter", tmp_path / "b")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))


# A 72x72 OpenMoji-like SVG: a red square on the left half, the rest transparent.
_SVG = (b'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
        b'<rect x="0" y="0" width="36" height="72" fill="#ff0000"/></svg>')


def test_extract_openmoji_tarball(tmp_path):
    pytest.importorskip("cairosvg", reason="cairosvg is installed by scripts/setup.sh --test")
    entries = [
        {"hexcode": "1F600", "group": "smileys-emotion", "skintone": ""},
        {"hexcode": "1F44D", "group": "people-body", "skintone": ""},
        {"hexcode": "1F44D-1F3FB", "group": "people-body", "skintone": "1"},  # a tone variant
        {"hexcode": "1F3FB", "group": "component", "skintone": ""},          # a swatch: dropped
        {"hexcode": "1F34E", "group": "food-drink", "skintone": ""},         # no SVG: skipped
        {"hexcode": "1F4A9", "group": "objects", "skintone": ""},            # broken SVG: counted
    ]
    tgz = tmp_path / "openmoji-17.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        _add(tar, "package/data/openmoji.json", json.dumps(entries).encode())
        for hexcode in ("1F600", "1F44D", "1F44D-1F3FB", "1F3FB"):
            _add(tar, f"package/color/svg/{hexcode}.svg", _SVG)
        _add(tar, "package/color/svg/1F4A9.svg", b"<svg")

    out = extract_openmoji_tarball(tgz, 96, tmp_path / "om", workers=1, progress=False)
    assert out.num_images == 2 and out.categories == {"people_body": 1, "smileys_emotion": 1}
    assert out.skipped == 1 and not (tmp_path / "om" / "objects").exists()
    img = Image.open(tmp_path / "om" / "smileys_emotion" / "1F600.png")
    assert img.mode == "RGB" and img.size == (96, 96)
    a = np.asarray(img)
    assert (a[:, :40] == (255, 0, 0)).all()       # the drawn half, at the asked size
    assert (a[:, 56:] == (255, 255, 255)).all()   # transparency flattened on white
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left

    # two processes give the same files; the skin-tone variant is kept on request
    two = extract_openmoji_tarball(tgz, 96, tmp_path / "om2", skin_tones=True, workers=2, progress=False)
    assert two.categories == {"people_body": 2, "smileys_emotion": 1} and two.skipped == 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "om2" / "smileys_emotion" / "1F600.png")), a)

    # prepared: build_dataset reads it without npm; a second prepare is a no-op
    ds = build_dataset("openmoji", "all", image_size=96, data_dir=tmp_path / "om")
    assert ds.classes == ("people_body", "smileys_emotion") and ds[0][0].shape == (3, 96, 96)
    mtime = (tmp_path / "om" / "smileys_emotion" / "1F600.png").stat().st_mtime_ns
    again = prepare_openmoji(96, tmp_path / "om", tarball=tgz, progress=False)
    assert again.num_images == 2
    assert (tmp_path / "om" / "smileys_emotion" / "1F600.png").stat().st_mtime_ns == mtime

    with pytest.raises(ValueError, match="64 to 1024"):
        prepare_openmoji(2048, tmp_path / "big", tarball=tgz)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        prepare_openmoji(64, tmp_path / "x", tarball=tmp_path / "missing.tgz")
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        _add(tar, "package/data/openmoji.json", json.dumps(entries).encode())
    with pytest.raises(ValueError, match="no colour SVGs"):
        extract_openmoji_tarball(bad, 64, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))


def test_prepare_openmoji_without_npm(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="npm.*not found.*--tarball"):
        prepare_openmoji(64, tmp_path / "om")
    assert not (tmp_path / "om").exists()


# --------------------------------------------------------------------------------------
# A folder's manifest.csv split, and mirrored copies (hflip)
# --------------------------------------------------------------------------------------


def _half_red(size=16):
    """Red on the left half, blue on the right: a mirror is told apart from the image."""
    a = np.zeros((size, size, 3), np.uint8)
    a[:, : size // 2] = (255, 0, 0)
    a[:, size // 2:] = (0, 0, 255)
    return Image.fromarray(a)


def test_manifest_split_overrides_the_hash(tmp_path):
    root = tmp_path / "faces"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            _half_red().save(root / cls / f"{i}.png")
    _half_red().save(root / "b" / "unlisted.png")
    listed = [f"{c}/{i}.png" for c in ("a", "b") for i in range(6)]
    rows = ["path,class,split,extra"] + [f"{p},{p[0]},{'test' if p.endswith('5.png') else 'train'},x"
                                         for p in listed]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    test = ImageFolderDataset(root, 16, split="test")
    train = ImageFolderDataset(root, 16, split="train")
    hashed_test = _hash_fraction("b/unlisted.png") < 0.1  # an unlisted file: the hash decides
    assert sorted(f.as_posix() for f in test.files) == ["a/5.png", "b/5.png"] + (["b/unlisted.png"] if hashed_test else [])
    assert len(train) + len(test) == 13 and not set(train.files) & set(test.files)
    assert test.classes == train.classes == ("a", "b")

    # a manifest without a split column is someone else's file: the hash splits
    (root / "manifest.csv").write_text("path,class\na/0.png,a\n")
    assert len(ImageFolderDataset(root, 16, split="train")) == sum(
        _hash_fraction(p) >= 0.1 for p in listed + ["b/unlisted.png"]) != 11
    (root / "manifest.csv").write_text("path,split\na/0.png,validation\n")
    with pytest.raises(ValueError, match="manifest.csv line 2: split must be train or test"):
        ImageFolderDataset(root, 16, split="train")
    assert len(ImageFolderDataset(root, 16, split=None)) == 13  # "all" never reads it


def test_hflip_holds_each_file_and_its_mirror(tmp_path):
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    _half_red().save(root / "a" / "0.png")
    _half_red().save(root / "a" / "1.png")
    (root / "a" / "2.png").write_bytes(b"not a png")
    ds = ImageFolderDataset(root, 16, hflip=True)
    assert len(ds) == 6 and len(ds.files) == 3 and "hflip=True" in repr(ds)
    x, y = ds[0]
    m, ym = ds[3]  # file 0, mirrored
    assert y == ym == 0
    assert torch.equal(m, x.flip(-1)) and not torch.equal(m, x)
    assert x[0, :, 0].eq(1).all() and m[0, :, 0].eq(-1).all()  # red left, then red right
    assert torch.equal(ds[-1][0], ds[5][0])
    with pytest.raises(IndexError):
        ds[6]
    assert ds.scan() == 1 and ds.unreadable == {2, 5}  # the bad file and its mirror
    assert torch.equal(ds[5][0], ds[3][0])  # a mirrored bad file: the next readable one, mirrored
    assert len(ImageFolderDataset(root, 16)) == 3


# --------------------------------------------------------------------------------------
# DiceBear faces: fake npm tarballs shaped like @dicebear/core and its styles (no npm call)
# --------------------------------------------------------------------------------------

# The fake core passes the seed, size and backgrounds to the style; each fake style draws
# its own colour on the left half, a background from the list on the right.
_FAKE_CORE = """
export function createAvatar(style, options) {
  const out = style.create(options);
  return { toString: () => out.svg, toJson: () => ({ svg: out.svg, extra: out.extra }) };
}
"""
_FAKE_STYLE = """
export const meta = { title: 'Title %(name)s', creator: 'Maker of %(name)s',
  source: 'https://example.org/%(name)s', license: { name: 'CC0 1.0', url: 'https://example.org/cc0' } };
export function create({ seed, size, backgroundColor }) {
  const i = parseInt(seed.split('-').pop());
  const bg = backgroundColor[i %% backgroundColor.length];
  if (%(broken)s) return { svg: '<svg', extra: {} };  // cairosvg cannot draw it
  return { svg: `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10" width="${size}" height="${size}">`
    + `<rect width="10" height="10" fill="#${bg}"/><rect width="5" height="10" fill="#%(colour)s"/></svg>`,
    extra: { primaryBackgroundColor: '#' + bg, secondaryBackgroundColor: '#ffffff',
             backgroundType: 'solid', backgroundRotation: 0, hair: 'short' + (i %% 3) } };
}
"""


def _npm_tarball(folder, name, version, files):
    """An npm package tarball: package/package.json (ES module) and files."""
    short = name.split("/")[-1]
    tgz = folder / f"{name.strip('@').replace('/', '-')}-{version}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        _add(tar, "package/package.json", json.dumps(
            {"name": name, "version": version, "type": "module", "exports": "./lib/index.js"}).encode())
        for path, text in files.items():
            _add(tar, f"package/{path}", text.encode())
    return tgz, short


def _style_colour(k):
    return f"{(40 + 20 * k):02x}{(200 - 15 * k):02x}{(10 * k):02x}"


def _fake_dicebear(folder, version="9.4.3", skip=(), broken=(), core_js=_FAKE_CORE, core_version=None,
                   broken_seeds="i === 1"):
    """Tarballs of a fake core, every style but `skip` (those in `broken` draw no SVG for
    `broken_seeds`) and one package that is not DiceBear's."""
    from bld.data import DICEBEAR_STYLES
    folder.mkdir(parents=True, exist_ok=True)
    _npm_tarball(folder, "@dicebear/core", core_version or version, {"lib/index.js": core_js})
    for k, name in enumerate(DICEBEAR_STYLES):
        if name not in skip:
            _npm_tarball(folder, f"@dicebear/{name}", version, {"lib/index.js": _FAKE_STYLE % {
                "name": name, "colour": _style_colour(k), "broken": broken_seeds if name in broken else "false"}})
    _npm_tarball(folder, "left-pad", "1.3.0", {"lib/index.js": "export default 1;"})  # not ours
    return folder


needs_node_and_cairo = pytest.mark.skipif(
    shutil.which("node") is None or importlib.util.find_spec("cairosvg") is None,
    reason="drawing DiceBear faces needs Node.js and cairosvg (scripts/setup.sh --test)")


@needs_node_and_cairo
def test_prepare_dicebear_from_tarballs(tmp_path):
    from bld.data import DICEBEAR_STYLES, prepare_dicebear
    tgz = _fake_dicebear(tmp_path / "tgz", broken=("micah",))
    dest = tmp_path / "faces"
    out = prepare_dicebear(32, dest, per_style=12, tarballs=tgz, progress=False,
                           styles=DICEBEAR_STYLES)
    classes = tuple(s.replace("-", "_") for s in DICEBEAR_STYLES)
    assert out.skipped == 1 and out.num_images == 119  # micah's seed 1 is no SVG
    assert out.categories == {c: 11 if c == "micah" else 12 for c in classes}
    assert not (dest / "micah" / "micah-0001.png").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left

    with open(dest / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 119 and {r["path"] for r in rows} == {
        p.relative_to(dest).as_posix() for p in dest.rglob("*.png")}
    row = next(r for r in rows if r["path"] == "big_ears/big_ears-0007.png")
    assert row["class"] == "big_ears" and row["seed"] == "big-ears-7" and row["split"] == "train"
    assert row["background"] == "#" + DICEBEAR_BACKGROUNDS[7 % len(DICEBEAR_BACKGROUNDS)]
    assert json.loads(row["attributes"]) == {"hair": "short1"}  # background keys left out
    assert {r["path"] for r in rows if r["split"] == "test"} == {
        f"{c}/{c}-{i:04d}.png" for c in classes for i in (5, 11)}  # every 6th seed
    licences = (dest / "LICENSES.md").read_text()
    assert all(f"| {c} | Title {s} (@dicebear/{s} 9.4.3) | Maker of {s} | [CC0 1.0]" in licences
               for c, s in zip(classes, DICEBEAR_STYLES))

    # each style's colour on the left of its own images, the background on the right
    k = DICEBEAR_STYLES.index("pixel-art")
    a = np.asarray(Image.open(dest / "pixel_art" / "pixel_art-0003.png"))
    assert a.shape == (32, 32, 3)
    assert (a[:, :14] == tuple(bytes.fromhex(_style_colour(k)))).all()
    assert (a[:, 18:] == tuple(bytes.fromhex(DICEBEAR_BACKGROUNDS[3]))).all()

    # the data source: the manifest's split; the train split with its mirrors
    train = build_dataset("dicebear", "train", image_size=32, data_dir=dest)
    test = build_dataset("dicebear", "test", image_size=32, data_dir=dest)
    assert train.classes == test.classes == classes
    assert len(test) == 20 and len(train) == 2 * 99 and train.hflip and not test.hflip
    assert torch.equal(train[99][0], train[0][0].flip(-1))

    # idempotent: a second prepare leaves the folder as it is
    mtime = (dest / "manifest.csv").stat().st_mtime_ns
    again = prepare_dicebear(32, dest, per_style=6, tarballs=tgz, progress=False,
                             styles=DICEBEAR_STYLES)
    assert again.num_images == 119 and (dest / "manifest.csv").stat().st_mtime_ns == mtime


@needs_node_and_cairo
@pytest.mark.parametrize("kind,error,match", [
    ("missing style", DatasetNotFoundError, "lack @dicebear/personas; fetch them with `npm pack @dicebear/personas@9.4.3`"),
    ("mixed majors", ValueError, "different major versions .*core 8.0.0"),
    ("core throws", ValueError, "drawing the faces with node failed .*no avatars today"),
    ("all broken", ValueError, "none of the 36 faces could be drawn"),  # the default six
])
def test_prepare_dicebear_failure_leaves_no_folder(tmp_path, kind, error, match):
    from bld.data import DICEBEAR_STYLES, extract_dicebear_tarballs
    options = {"missing style": dict(skip=("personas",)), "mixed majors": dict(core_version="8.0.0"),
               "core throws": dict(core_js="export function createAvatar() { throw new Error('no avatars today'); }"),
               "all broken": dict(broken=DICEBEAR_STYLES, broken_seeds="true")}[kind]
    tgz = _fake_dicebear(tmp_path / "tgz", **options)
    with pytest.raises(error, match=match):
        extract_dicebear_tarballs(sorted(tgz.glob("*.tgz")), 32, tmp_path / "faces", per_style=6,
                                  workers=1, progress=False)
    assert not (tmp_path / "faces").exists() and not list(tmp_path.glob(".faces.tmp-*"))


@needs_node_and_cairo
def test_prepare_dicebear_a_subset_of_styles(tmp_path):
    # only the chosen styles are needed, drawn, listed in the manifest and credited
    from bld.data import prepare_dicebear
    tgz = _fake_dicebear(tmp_path / "tgz", skip=("adventurer", "micah"))
    dest = tmp_path / "faces"
    out = prepare_dicebear(32, dest, per_style=6, tarballs=tgz, progress=False,
                           styles=("toon_head", "big-ears"))
    assert out.categories == {"big_ears": 6, "toon_head": 6}
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["big_ears", "toon_head"]
    with open(dest / "manifest.csv", newline="") as f:
        assert {r["class"] for r in csv.DictReader(f)} == {"big_ears", "toon_head"}
    licences = (dest / "LICENSES.md").read_text()
    assert "| big_ears |" in licences and "| toon_head |" in licences
    assert "| personas |" not in licences
    test = build_dataset("dicebear", "test", image_size=32, data_dir=dest)
    assert test.classes == ("big_ears", "toon_head") and len(test) == 2
    # a style outside the chosen ones may be missing from the tarballs; a chosen one may not
    with pytest.raises(DatasetNotFoundError, match="lack @dicebear/micah"):
        prepare_dicebear(32, tmp_path / "g", per_style=6, tarballs=tgz, progress=False,
                         styles=("micah", "personas"))
    # without styles: the default six
    out = prepare_dicebear(32, tmp_path / "six", per_style=6, tarballs=tgz, progress=False)
    assert out.categories == {c: 6 for c in ("avataaars", "big_ears", "miniavs", "personas",
                                             "pixel_art", "toon_head")}


def test_dicebear_styles_are_checked(tmp_path):
    from bld.data import prepare_dicebear
    from bld.data.dicebear import check_styles, dicebear_packages
    assert check_styles(["toon_head", "big-ears", "big_ears"]) == ("big-ears", "toon-head")
    assert dicebear_packages("9.4.3", ("pixel_art",)) == ["@dicebear/core@9.4.3",
                                                          "@dicebear/pixel-art@9.4.3"]
    with pytest.raises(ValueError, match="unknown DiceBear style bottts; choose from adventurer"):
        prepare_dicebear(64, tmp_path / "f", styles=("bottts", "micah"))
    with pytest.raises(ValueError, match=r"\(none given\)"):
        check_styles([])
    assert not (tmp_path / "f").exists()


def test_prepare_dicebear_bad_input(tmp_path, monkeypatch):
    from bld.data import prepare_dicebear
    with pytest.raises(ValueError, match="32 to 1024"):
        prepare_dicebear(2048, tmp_path / "f")
    with pytest.raises(ValueError, match="at least 6"):
        prepare_dicebear(64, tmp_path / "f", per_style=5)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        prepare_dicebear(64, tmp_path / "f", tarballs=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no .tgz files .*npm pack @dicebear/core@9.4.3"):
        prepare_dicebear(64, tmp_path / "f", tarballs=tmp_path / "empty")
    not_npm = tmp_path / "junk"
    not_npm.mkdir()
    (not_npm / "x.tgz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="x.tgz is not a readable npm package tarball"):
        prepare_dicebear(64, tmp_path / "f", tarballs=not_npm)
    tgz = _fake_dicebear(tmp_path / "tgz")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="`node` not found"):
        prepare_dicebear(64, tmp_path / "f", tarballs=tgz)
    with pytest.raises(DatasetNotFoundError, match="npm.*not found.*--tarballs"):
        prepare_dicebear(64, tmp_path / "f")
    assert not (tmp_path / "f").exists() and not list(tmp_path.glob(".f.tmp-*"))


def test_dicebear_default_folder_holds_only_the_default_set(tmp_path, monkeypatch, caplog):
    # another style set or count in ~/.cache/bld/dicebear6-64 would later be read as the
    # default set: it needs --dest; the ten-style folder of earlier versions is named, not read
    from bld.data import default_dicebear_dir, prepare_dicebear
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for kw in (dict(styles=("micah",)), dict(per_style=1200)):
        with pytest.raises(ValueError, match="need their own folder: pass dest"):
            prepare_dicebear(64, **kw)
    (tmp_path / "bld" / "dicebear-64" / "micah").mkdir(parents=True)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="npm.*not found"):
        prepare_dicebear(64)
    assert "dicebear-64 holds the ten styles" in caplog.text
    assert default_dicebear_dir(64) == tmp_path / "bld" / "dicebear6-64"
    assert not default_dicebear_dir(64).exists()


def test_dicebear_defaults_measure_fd_at_n_1000():
    # the demo's FD and its floor take two disjoint halves of the test split: >= 2,000 faces
    from bld.data import DICEBEAR_DEFAULT_STYLES, DICEBEAR_PER_STYLE
    from bld.data.dicebear import is_test_seed
    per_style = sum(is_test_seed(i) for i in range(DICEBEAR_PER_STYLE))
    assert per_style * len(DICEBEAR_DEFAULT_STYLES) == 2004
