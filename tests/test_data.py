"""Datasets: image folders (formats, labels, corrupt files), Fashion-MNIST, emoji extraction."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader

from bld.data import (
    DatasetNotFoundError,
    FASHION_MNIST_CLASSES,
    ImageFolderDataset,
    TensorImageDataset,
    build_dataset,
    extract_emoji_tarball,
    extract_openmoji_tarball,
    find_fashion_mnist,
    prepare_openmoji,
)

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
