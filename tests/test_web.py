"""`bld serve`: the handlers behind the page (bad input answered with a message, limits,
conversions), and the page itself in a real browser (Debian's chromium, headless) against a
server started on a free loopback port with the tiny trained run."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from bld.app.serve import UNCONDITIONAL, App, Limits, UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def app(runs):
    from bld import BinaryLatentDiffusionPipeline
    pipe = BinaryLatentDiffusionPipeline.from_run(runs.prior, device="cpu")
    app = App(pipe, Limits(max_images=12, max_upload_side=512))
    yield app
    app.files.remove()


def test_sample_handler_returns_the_grid_and_the_time(app):
    grid, info = app.sample("Sneaker", 3, 4, 0.5, 1.0, 7)
    # 3 images in one row, 28 px + 2 px padding, shown at 4x
    assert grid.size == (4 * (3 * 30 + 2), 4 * 32)
    assert info.startswith("3 images (Sneaker), 4 steps, guidance 0.5") and " s**" in info
    again, _ = app.sample("Sneaker", 3, 4, 0.5, 1.0, 7)
    assert np.array_equal(np.asarray(grid), np.asarray(again))  # same seed, same page
    _, info = app.sample(UNCONDITIONAL, 2, 4, 3.0, 1.0, 0)
    assert "(unconditional)" in info and "guidance 0," in info  # no guidance without a class


@pytest.mark.parametrize("args,message", [
    ((UNCONDITIONAL, 13, 4, 0, 1, 0), "number of images must be between 1 and 12"),
    ((UNCONDITIONAL, 2, 1, 0, 1, 0), "steps must be between 2 and 64"),
    ((UNCONDITIONAL, 2, 4, 0, 0, 0), "temperature must be between"),
    ((UNCONDITIONAL, 2, 4, 0, 1, "x"), "seed must be a whole number"),
    (("Sock", 2, 4, 0, 1, 0), "unknown class 'Sock'"),
])
def test_sample_handler_refuses_bad_input_with_the_reason(app, args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        app.sample(*args)


def _editor(background: Image.Image, painted: tuple[slice, slice] | None) -> dict:
    layer = Image.new("RGBA", background.size, (0, 0, 0, 0))
    if painted is not None:
        a = np.zeros((*background.size[::-1], 4), np.uint8)
        a[painted] = (255, 48, 48, 255)
        layer = Image.fromarray(a, "RGBA")
    return {"background": background, "layers": [layer], "composite": background}


def test_inpaint_handler_fills_the_painted_region(app):
    bg = app.test_image(0)  # 224 x 224, an 8x upscale of a 28 px test image
    grid, info = app.inpaint(_editor(bg, (slice(112, 224), slice(None))), UNCONDITIONAL, 2, 4,
                             0, 0, False)
    assert grid.size == (4 * (4 * 30 + 2), 4 * 32)  # input, known part, 2 completions
    assert "2 completions" in info and "pasted back" not in info and "was" not in info
    tiles = np.asarray(grid)[8:8 + 112]  # first row, at 4x: 28 px -> 112 px
    known = tiles[:, 8 + 120:8 + 120 + 112]  # the second tile: the known part
    assert known[60:].max() == 0  # the painted lower half is shown black
    _, info = app.inpaint(_editor(bg, (slice(112, 224), slice(None))), UNCONDITIONAL, 2, 4,
                          0, 0, True)
    assert "known pixels pasted back" in info


@pytest.mark.parametrize("editor,message", [
    (None, "pick a test image or upload one"),
    ("unpainted", "paint over the region to regenerate"),
    ("all", "the whole image is painted"),
    ("huge", "the limit is 512 on a side"),
])
def test_inpaint_handler_refuses_bad_input_with_the_reason(app, editor, message):
    bg = app.test_image(0)
    if editor == "unpainted":
        editor = _editor(bg, None)
    elif editor == "all":
        editor = _editor(bg, (slice(None), slice(None)))
    elif editor == "huge":
        editor = _editor(Image.new("RGB", (600, 600)), (slice(0, 10), slice(0, 10)))
    with pytest.raises(UserError, match=message):
        app.inpaint(editor, UNCONDITIONAL, 2, 4, 0, 0, False)


def test_upload_is_converted_with_a_note(app):
    rgb = Image.new("RGB", (90, 60), (200, 30, 30))  # colour, not square, odd size
    x, note = app.upload(rgb)
    assert x.shape == (1, 28, 28)
    assert "centre-cropped from 90x60" in note and "turned grey" in note


def test_trajectory_and_blend_handlers(app):
    gif, fig, info = app.trajectory("Trouser", 2, 5, 0.5, 0)
    with Image.open(gif) as im:
        assert im.n_frames == 6  # z_T and five steps
    assert info.count("\n| ") == 5 + 1  # header + one row per step
    fig.clear()
    grid, info = app.blend(app.test_image(0), app.test_image(1), 5)
    assert grid.size == (4 * (5 * 30 + 2), 4 * 32)
    taken = [int(t) for t in info.split("Left to right: ")[1].split(" of them")[0].split(", ")]
    assert taken[0] == 0 and taken == sorted(taken) and f"**{taken[-1]} of 392**" in info


# ------------------------------------------------------------------------ in a browser
def test_the_page_in_a_real_browser(runs, tmp_path):
    from webcheck import (PageError, browser_page, chromium_path, click_and_time, not_blank, paint,
                          running_server)
    if chromium_path() is None:
        print("SKIPPED: no chromium on PATH (Debian: apt-get install chromium)")
        pytest.skip("no chromium binary on PATH; `bash scripts/setup.sh --test` installs it")
    log = tmp_path / "serve.log"
    with running_server(runs.prior, log_path=log) as url, browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        grid, seconds = click_and_time(page, "#generate", "#sample-output")
        ok, why = not_blank(grid)
        assert ok, f"the sample grid looks blank: {why}"
        assert "10 images" in page.inner_text("#sample-info")

        page.get_by_role("tab", name="Inpaint").click()
        page.locator("#inpaint-editor canvas").first.wait_for(state="visible")
        with pytest.raises(PageError, match="paint over the region"):  # nothing painted yet
            click_and_time(page, "#inpaint", "#inpaint-output")
        page.locator('[data-testid="toast-close"]').first.click()
        paint(page, "#inpaint-editor", [(0.1, 0.65, 0.9, 0.65), (0.9, 0.85, 0.1, 0.85)])
        filled, _ = click_and_time(page, "#inpaint", "#inpaint-output")
        ok, why = not_blank(filled)
        assert ok, f"the inpainting looks blank: {why}"
        # input, known part and 4 completions: six tiles, so the painted mask arrived
        assert round(filled.width / filled.height) == 6
        assert "4 completions" in page.inner_text("#inpaint-info")
    # no handler failed unexpectedly (the refused click above is a message, not a failure)
    assert not re.search(r"serve: (\w+ failed|no test images)", log.read_text())


def test_serve_command_errors_are_one_line(runs, monkeypatch, capsys):
    import sys

    from bld.app.cli import main
    assert main(["serve", str(runs.prior), "--port", "70000"]) == 2
    assert "--port must be 1..65535" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the [web] extra were missing
    assert main(["serve", str(runs.prior)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'binary-latent-diffusion[web]'" in err
