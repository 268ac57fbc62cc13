"""Surveying and preparing a user's folder (bld.data.survey) on real drawn images: the
figures the survey reports, the size and colours it picks, the class-stratified split, small
classes merged or dropped, transparency composited on the chosen background; and the
colour-error metric (bld.core.metrics) against known CIELAB values."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from bld.data import DatasetNotFoundError, ImageFolderDataset
from bld.data.survey import (MERGED_CLASS, choose_channels, choose_size, parse_background,
                             plan_classes, prepare_folder, stratified_split, survey_folder)

# class -> (image count, colour, shape, drawn on a transparent ground)
SHAPES = {"circle": (12, (220, 40, 40), "ellipse", True),
          "square": (12, (40, 90, 220), "rectangle", False),
          "bar": (12, (30, 160, 60), "bar", False),
          "star": (3, (230, 180, 20), "ellipse", False),
          "moon": (2, (120, 60, 160), "rectangle", False),
          "dot": (3, (20, 20, 20), "bar", False)}
# sizes cycled over each class's images: square, wider, taller, smaller, larger
SIZES = [(40, 40), (48, 36), (36, 44), (30, 30), (64, 64)]


def write_shapes(root: Path, shapes: dict = SHAPES, grey: bool = False) -> Path:
    """One subfolder per class of PIL-drawn shapes in mixed sizes; the classes marked
    transparent are RGBA on a fully transparent ground."""
    for name, (count, colour, shape, transparent) in shapes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            w, h = SIZES[i % len(SIZES)]
            if grey:
                colour = (sum(colour) // 3,) * 3
            mode, ground = ("RGBA", (0, 0, 0, 0)) if transparent else ("RGB", (250, 250, 245))
            img = Image.new(mode, (w, h), ground)
            d = ImageDraw.Draw(img)
            box = (w // 5 + i % 3, h // 5, w - w // 5, h - h // 5 - i % 2)
            fill = (*colour, 255) if transparent else colour
            if shape == "ellipse":
                d.ellipse(box, fill=fill)
            elif shape == "rectangle":
                d.rectangle(box, fill=fill)
            else:
                d.rectangle((box[0], h // 2 - 3, box[2], h // 2 + 3), fill=fill)
            (img.convert("L") if grey else img).save(root / name / f"{i:03d}.png")
    return root


def test_survey_figures(tmp_path):
    root = write_shapes(tmp_path / "shapes")
    (root / "square" / "broken.png").write_bytes(b"not a png")
    s = survey_folder(root, progress=False)
    assert s.labelled and s.class_counts == {"bar": 12, "circle": 12, "dot": 3, "moon": 2,
                                             "square": 12, "star": 3}
    assert len(s.images) == 44 and list(s.unreadable) == ["square/broken.png"]
    # sizes: each class cycles the five sizes from the first
    assert s.sizes[(40, 40)] == 3 * 3 + 3 and s.sizes[(64, 64)] == 3 * 2
    assert sum(s.sizes.values()) == 44
    assert not s.grey and s.transparent == 12  # the circles, on a transparent ground
    summary = s.summary()
    assert summary["transparent_images"] == 12 and summary["unreadable"] == 1
    assert summary["sizes"]["40x40"] == 12 and summary["median_short_side"] == 36


def test_an_opaque_rgba_image_is_not_counted_as_transparent(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGBA", (32, 32), (10, 20, 30, 255)).save(tmp_path / "a" / "x.png")
    assert survey_folder(tmp_path, progress=False).transparent == 0


def test_size_and_channels_follow_the_images(tmp_path):
    colour = survey_folder(write_shapes(tmp_path / "c"), progress=False)
    assert choose_channels(colour) == 3
    assert choose_size(colour, 3) == 32  # median shorter side 36 -> 32
    grey = survey_folder(write_shapes(tmp_path / "g", grey=True), progress=False)
    assert grey.grey and choose_channels(grey) == 1
    assert choose_size(grey, 1) == 32
    big = {"a": (4, (200, 0, 0), "ellipse", False), "b": (4, (0, 0, 200), "bar", False)}
    root = tmp_path / "big"
    for name in big:
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (300 - 40 * i, 200 + 10 * i), (9, 9, 9)).save(root / name / f"{i}.png")
    assert choose_size(survey_folder(root, progress=False), 3) == 128  # median 210 -> 128
    # small greyscale images train at 28 px; colour ones never go below 32
    small = tmp_path / "small"
    (small / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (30, 30), 40 * i).save(small / "a" / f"{i}.png")
    s = survey_folder(small, progress=False)
    assert choose_channels(s) == 1 and choose_size(s, 1) == 28 and choose_size(s, 3) == 32
    # grey images with transparency on a coloured background are colour images
    (small / "a" / "t.png").unlink(missing_ok=True)
    Image.new("LA", (30, 30), (0, 0)).save(small / "a" / "t.png")
    s = survey_folder(small, progress=False)
    assert choose_channels(s, "white") == 1 and choose_channels(s, "#ff0000") == 3


def test_background_names_and_colours():
    assert parse_background("white") == (255, 255, 255)
    assert parse_background("Black") == (0, 0, 0)
    assert parse_background("#12aBff") == (0x12, 0xAB, 0xFF)
    for bad in ("red", "#fff", "12ab56"):
        with pytest.raises(ValueError, match="white, black or #rrggbb"):
            parse_background(bad)


def test_split_is_stratified_and_stable():
    paths = {c: [f"{c}/{i:03d}.png" for i in range(n)]
             for c, n in {"a": 40, "b": 9, "c": 2}.items()}
    split = stratified_split(paths, 0.1)
    tests = {c: sum(split[p] == "test" for p in ps) for c, ps in paths.items()}
    assert tests == {"a": 4, "b": 1, "c": 1}  # 10%, and at least one per class
    assert stratified_split(paths, 0.1) == split  # the same every time
    # a new file moves no other file between splits, except to keep the class's share
    more = {**paths, "b": paths["b"] + ["b/new.png"]}
    again = stratified_split(more, 0.1)
    assert sum(again[p] != split[p] for p in paths["b"]) <= 1
    with pytest.raises(ValueError, match="at least 2"):
        stratified_split({"x": ["x/1.png"]}, 0.1)


def test_small_classes_merged_or_dropped():
    plan = plan_classes({"a": 12, "b": 10, "s1": 3, "s2": 2, "s3": 3}, 8)
    assert plan.kept == {"a": 12, "b": 10} and plan.merged == {"s1": 3, "s2": 2, "s3": 3}
    assert plan.classes == ["a", "b", MERGED_CLASS] and plan.target("s2") == MERGED_CLASS
    note = plan.notes()[0]
    assert "merged into one class 'other' of 8 images" in note and "s2 (2 images)" in note
    # too few together: dropped, and the note says how many each needs
    plan = plan_classes({"a": 12, "b": 10, "s1": 3, "s2": 2}, 8)
    assert plan.dropped == {"s1": 3, "s2": 2} and plan.target("s1") is None
    assert plan.classes == ["a", "b"]
    assert "s1 (3 images), s2 (2 images)" in plan.notes()[0]
    assert "each needs 8" in plan.notes()[0]
    # fewer than two classes left: say what to do
    with pytest.raises(ValueError, match="lower --min-class-images.*without classes"):
        plan_classes({"a": 12, "s1": 3, "s2": 2}, 8)
    with pytest.raises(ValueError, match="only 0 classes"):
        plan_classes({"s1": 3, "s2": 2, "s3": 1}, 8)


def test_prepared_copy(tmp_path):
    root = write_shapes(tmp_path / "shapes")
    s = survey_folder(root, progress=False)
    dest = tmp_path / "run" / "data"
    res = prepare_folder(s, dest, image_size=32, channels=3, background="#ff0000",
                         test_share=0.25, progress=False)
    assert res.classes == ["bar", "circle", MERGED_CLASS, "square"]  # 3 + 2 + 3 = 8 merged
    assert res.composited == 12 and "12 images had transparency: composited on #ff0000" \
        in res.notes()
    assert res.per_class["other"] == {"train": 6, "test": 2}
    assert all(v["test"] == 3 for c, v in res.per_class.items() if c != "other")
    # the mixed sizes: 30 px images grew, 36..64 px ones shrank; the non-square cropped
    assert (res.resized_up, res.resized_down, res.cropped) == (6, 38, 20)
    # every PNG at the size, the ground of the transparent circles red
    with Image.open(dest / "circle" / "000.png") as img:
        assert img.size == (32, 32) and img.mode == "RGB"
        assert img.getpixel((0, 0)) == (255, 0, 0)
        assert img.getpixel((16, 16)) == (220, 40, 40)  # the drawn circle
    with Image.open(dest / "square" / "000.png") as img:
        assert img.getpixel((0, 0)) == (250, 250, 245)  # opaque images keep their ground
    assert (dest / "other" / "moon" / "001.png").is_file()  # merged, under its own name
    rows = list(csv.DictReader(open(dest / "manifest.csv")))
    assert len(rows) == 44 and {r["split"] for r in rows} == {"train", "test"}
    # ImageFolderDataset reads the copy and its manifest's split unchanged
    train = ImageFolderDataset(dest, 32, 3, split="train")
    test = ImageFolderDataset(dest, 32, 3, split="test")
    assert train.classes == tuple(res.classes) and len(test) == 11 and len(train) == 33
    x, _ = test[0]
    assert x.shape == (3, 32, 32)
    # the same folder and settings: reused; other settings into the same place: refused
    again = prepare_folder(s, dest, image_size=32, channels=3, background="#ff0000",
                           test_share=0.25, progress=False)
    assert again.reused and again.per_class == res.per_class
    with pytest.raises(ValueError, match="differs in background"):
        prepare_folder(s, dest, image_size=32, channels=3, test_share=0.25, progress=False)


def test_white_and_black_backgrounds_and_greyscale(tmp_path):
    root = write_shapes(tmp_path / "shapes")
    s = survey_folder(root, progress=False)
    for bg, value in (("white", (255, 255, 255)), ("black", (0, 0, 0))):
        dest = tmp_path / bg
        prepare_folder(s, dest, image_size=32, channels=3, background=bg, progress=False)
        with Image.open(dest / "circle" / "003.png") as img:
            assert img.getpixel((0, 0)) == value
    grey = survey_folder(write_shapes(tmp_path / "g", grey=True), progress=False)
    dest = tmp_path / "grey"
    prepare_folder(grey, dest, image_size=28, channels=1, progress=False)
    with Image.open(dest / "bar" / "000.png") as img:
        assert img.mode == "L" and img.size == (28, 28)


def test_unconditional_folder(tmp_path):
    for i in range(10):
        Image.new("RGB", (40, 40), (20 * i, 0, 0)).save(tmp_path / f"{i}.png")
    s = survey_folder(tmp_path, progress=False)
    assert not s.labelled and s.class_counts == {"": 10}
    res = prepare_folder(s, tmp_path / "out", image_size=32, channels=3, progress=False)
    assert res.classes == [] and res.split_counts == {"train": 9, "test": 1}
    ds = ImageFolderDataset(tmp_path / "out", 32, 3, split="train")
    assert ds.num_classes == 0 and len(ds) == 9


def test_bad_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        survey_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no images")
    with pytest.raises(DatasetNotFoundError, match="no images found"):
        survey_folder(tmp_path / "empty")
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "a" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "loose.png")
    with pytest.raises(ValueError, match="directly inside it"):
        survey_folder(tmp_path / "mixed")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of the 1 images"):
        survey_folder(tmp_path / "broken", progress=False)


# -------------------------------------------------------------------------------- colour
def _pixel(r: int, g: int, b: int) -> torch.Tensor:
    """One sRGB pixel (0..255) as a (1, 3, 1, 1) image in [-1, 1]."""
    return torch.tensor([r, g, b], dtype=torch.float64).view(1, 3, 1, 1) / 127.5 - 1


def test_lab_of_known_colours():
    from bld.core.metrics import rgb_to_lab
    known = {(255, 0, 0): (53.24, 80.09, 67.20), (0, 255, 0): (87.73, -86.18, 83.18),
             (0, 0, 255): (32.30, 79.19, -107.86), (255, 255, 255): (100.0, 0.0, 0.0),
             (0, 0, 0): (0.0, 0.0, 0.0), (128, 128, 128): (53.59, 0.0, 0.0)}
    for rgb, lab in known.items():
        got = rgb_to_lab(_pixel(*rgb)).flatten().tolist()
        assert got == pytest.approx(lab, abs=0.01), rgb
    # a grey image reads as its grey in colour
    grey = torch.full((1, 1, 2, 2), 128 / 127.5 - 1)
    assert rgb_to_lab(grey)[0, :, 0, 0].tolist() == pytest.approx([53.59, 0, 0], abs=0.01)


def test_colour_error():
    from bld.core.metrics import colour_error
    red, white = _pixel(255, 0, 0), _pixel(255, 255, 255)
    same = colour_error(red, red)
    assert same.delta_e == 0 and same.mean_colour_delta_e == 0
    # red against white: sqrt((100 - 53.24)^2 + 80.09^2 + 67.20^2)
    e = colour_error(red, white)
    assert e.delta_e == pytest.approx(114.55, abs=0.05) and e.mean_colour_delta_e == e.delta_e
    # a checkerboard of black and white against flat mid-grey: every pixel is far off (L 0
    # and 100 against 53.59: 50 on average), yet the mean colours are close (L 50)
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).expand(1, 3, 2, 2)
    flat = torch.full((1, 3, 2, 2), 128 / 127.5 - 1)
    e = colour_error(board, flat)
    assert e.delta_e == pytest.approx(50.0, abs=0.01)
    assert e.mean_colour_delta_e == pytest.approx(3.59, abs=0.01)
