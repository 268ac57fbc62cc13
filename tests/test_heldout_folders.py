"""scripts/heldout_folders.py on small fixtures made here: how classes are assigned and what
is left out for each package, the cap, the file names, and the drawing (no network, no
package fetched)."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SPEC = importlib.util.spec_from_file_location(
    "heldout_folders", Path(__file__).resolve().parents[1] / "scripts" / "heldout_folders.py")
heldout = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = heldout  # its dataclasses look their module up
_SPEC.loader.exec_module(heldout)

_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 20">'
        b'<rect width="40" height="20" fill="#ff0000"/></svg>')


def _png(size: tuple[int, int], colour=(0, 0, 255, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_iconify_classes_and_left_out():
    icons = {"width": 32, "height": 32, "icons": {
        "grinning-face": {"body": "<path/>"},
        "waving-hand": {"body": "<path/>"},
        "waving-hand-medium-dark": {"body": "<path/>"},  # a skin-tone variant
        "old-name": {"body": "<path/>", "hidden": True},
        "stray": {"body": "<path/>"},                      # in no category
        "traffic-light": {"body": "<path/>", "height": 16},
        "dark": {"body": "<path/>"},                       # a tone word, but no base icon
    }}
    categories = {"Smileys & Emotion": ["grinning-face", "dark"],
                  "People & Body": ["waving-hand", "waving-hand-medium-dark", "grinning-face"],
                  "Travel & Places": ["traffic-light"]}
    items, left_out = heldout.iconify_items(icons, categories)
    assert [(i.cls, i.name) for i in items] == [
        ("smileys_emotion", "dark"), ("people_body", "grinning-face"),  # first category by name
        ("travel_places", "traffic-light"), ("people_body", "waving-hand")]
    assert left_out == {"skin-tone variants of another emoji": 1, "in no category": 1,
                        "hidden (kept by Iconify for old names)": 1}
    svg = heldout.iconify_svg(icons, "traffic-light").decode()
    assert 'viewBox="0 -8 32 32"' in svg and svg.endswith("<path/></svg>")  # centred, square


def test_papirus_classes_sizes_and_colour_copies():
    root = heldout.PAPIRUS_ROOT
    files = {f"{root}48x48/apps/firefox.svg": b"48", f"{root}64x64/apps/firefox.svg": b"64",
             f"{root}48x48/status/dialog-error.svg": b"s",
             f"{root}64x64/places/folder-blue-music.svg": b"p",
             f"{root}64x64/places/folder-red-music.svg": b"r",
             f"{root}48x48/places/folder-red-music.svg": b"r",
             f"{root}64x64/places/folder-red.svg": b"r",
             f"{root}symbolic/apps/firefox-symbolic.svg": b"x",
             f"{root}48x48/actions/tag.svg": b"x",
             "usr/share/icons/Papirus-Dark/64x64/apps/firefox.svg": b"x"}
    items, left_out = heldout.papirus_items(files)
    assert [(i.cls, i.name, i.sources) for i in items] == [
        ("apps", "firefox", (("svg", b"64"),)), ("places", "folder-blue-music", (("svg", b"p"),)),
        ("status", "dialog-error", (("svg", b"s"),))]
    assert left_out["places drawn in another folder colour than the default blue"] == 2
    assert left_out["48x48 drawings of icons also drawn at 64x64"] == 1


def test_tuxpaint_classes_mirrors_and_svg_first():
    root = heldout.TUXPAINT_ROOT
    files = {f"{root}animals/birds/cartoon/duck.png": b"p", f"{root}animals/birds/cartoon/duck.svg": b"s",
             f"{root}animals/birds/owl_mirror.png": b"m", f"{root}animals/birds/owl.png": b"o",
             f"{root}food/apple.png": b"a", f"{root}food/apple.txt": b"t", f"{root}loose.png": b"x"}
    items, left_out = heldout.tuxpaint_items(files)
    assert items == [heldout.Item("animals", "birds-cartoon-duck", (("svg", b"s"), ("png", b"p"))),
                     heldout.Item("animals", "birds-owl", (("png", b"o"),)),
                     heldout.Item("food", "apple", (("png", b"a"),))]
    assert left_out == {"ready-made mirrored or flipped copies": 1,
                        "PNGs of stamps also shipped as SVG (drawn from the SVG)": 1}


def test_cap_is_fixed_and_file_names_are_safe():
    items = [heldout.Item("a", f"n{i}", ()) for i in range(10)] + [heldout.Item("b", "x", ())]
    kept, cut = heldout.cap_per_class(list(reversed(items)), cap=4)
    assert cut == {"a": 6} and len(kept) == 5
    assert kept == heldout.cap_per_class(items, cap=4)[0]  # the same whatever the input order
    names = heldout.file_names([heldout.Item("a", "org.app+x", ()), heldout.Item("a", "org.app x", ()),
                                heldout.Item("a", "..", ())])
    assert names == ["a/org.app_x.png", "a/org.app_x-2.png", "a/image.png"]


def test_copyright_licence():
    text = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            "Files: *\nCopyright: 2016 A <a@x>\n           2017 B\nLicense: GPL-3\n\n"
            "Files: debian/*\nCopyright: 2017 C\nLicense: GPL-2\n")
    assert heldout.copyright_licence(text) == "GPL-3 (2016 A <a@x>; 2017 B)"
    assert heldout.copyright_licence("License: MIT\n") == "MIT"


def test_draw_fits_whole_on_transparency(tmp_path):
    pytest.importorskip("cairosvg", reason="cairosvg is installed by scripts/setup.sh --test")
    img = heldout.draw("svg", _SVG, 64)
    a = np.asarray(img)
    assert img.mode == "RGBA" and img.size == (64, 64)
    assert (a[16:48, :, :] == (255, 0, 0, 255)).all() and (a[:15, :, 3] == 0).all()
    a = np.asarray(heldout.draw("png", _png((10, 20)), 64))  # small and tall: scaled up, centred
    assert (a[:, 20:44, 2] == 255).all() and (a[:, :14, 3] == 0).all()

    out = tmp_path / "x.png"  # a broken SVG falls back to the PNG, scaled up and counted
    assert heldout.draw_to(((("svg", b"<svg"), ("png", _png((8, 8)))), 64, str(out))) == (None, True)
    assert Image.open(out).size == (64, 64)
    err, _ = heldout.draw_to(((("png", _png((8, 8), (0, 0, 0, 0))),), 64, str(tmp_path / "y.png")))
    assert "blank" in err and not (tmp_path / "y.png").exists()
