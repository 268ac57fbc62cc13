"""`bld serve RUN_DIR`: a browser app over a trained run (gradio, the optional extra `[web]`).

Three tabs, all through `BinaryLatentDiffusionPipeline`: **Sample** (class, number, steps,
guidance, temperature, seed), **Inpaint** (paint the region to regenerate over a test image
or an upload) and **Inside the bits** (the denoising trajectory as an animation with the
bits each step flips, and a bit-space blend between two images). One sampling runs at a
time (a queue); bad input is answered with a message on the page.

The same four handlers are an HTTP API (`/sample`, `/inpaint`, `/trajectory`, `/blend`, for
`gradio_client`). They receive the values as sent (gradio's conversions are off) and check
every one themselves, uploads from their header before decoding, so a crafted call gets the
one-line message the page shows. Temporary files (uploads, results, gradio's cache) live in
one folder that keeps the newest `Limits.keep_files` and is removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import io
import ipaddress
import itertools
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from .pipeline import BinaryLatentDiffusionPipeline, bits_flipped
from .plots import image_grid, to_pil

log = logging.getLogger("bld")

UNCONDITIONAL = "(unconditional)"
AUTH_ENV = "BLD_SERVE_AUTH"  # USER:PASSWORD, when neither --auth nor --auth-file is given


@dataclass
class Limits:
    max_images: int = 64  # per Generate click
    max_completions: int = 16  # per Inpaint click
    max_trajectory: int = 8  # samples in one trajectory animation
    max_blend: int = 16  # images in one blend
    max_upload_mb: float = 5.0
    max_upload_side: int = 4096  # pixels; larger uploads are refused, not resized
    display_px: int = 112  # each image is shown upscaled (nearest) to about this size
    queue_size: int = 16  # requests waiting; more are answered "queue full" at once
    sessions: int = 256  # visitors whose page state gradio keeps (~0.1 MB each; none needed)
    keep_files: int = 256  # temporary files kept (the oldest go first) ...
    keep_mb: float = 256.0  # ... and at most this many megabytes of them


class UserError(ValueError):
    """Bad input from the page: shown as a message, never a traceback."""


def _upscale(img: Image.Image, target: int) -> Image.Image:
    s = max(1, round(target / max(img.size)))
    return img.resize((img.width * s, img.height * s), Image.NEAREST) if s > 1 else img


class TempFiles:
    """The app's temporary files in one folder (uploads, results, gradio's cache): a ring of
    the newest ``keep`` files and ``keep_mb`` megabytes, and the folder removed by `remove`."""

    def __init__(self, keep: int = 256, keep_mb: float = 256.0) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="bld-serve-")).resolve()
        self.keep, self.keep_bytes = keep, int(keep_mb * 2 ** 20)
        self._lock = threading.Lock()
        self._names = itertools.count()
        self.records: list[set] = []  # gradio's sets of the files it made (Blocks.temp_file_sets)

    def new(self, stem: str, suffix: str) -> Path:
        """A path no other answer uses. (Gradio names what it saves by its content, and two
        equal answers would rewrite one file while the first may still be downloading.)"""
        return self.path / f"{stem}_{time.time_ns()}_{next(self._names)}{suffix}"

    def png(self, image: Image.Image, stem: str = "image") -> str:
        path = self.new(stem, ".png")
        image.save(path)
        return str(path)

    def _files(self) -> list[os.DirEntry]:
        found, dirs = [], [self.path]
        while dirs:
            try:
                entries = list(os.scandir(dirs.pop()))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    dirs.append(Path(e.path))
                else:
                    found.append(e)
        return found

    def prune(self) -> int:
        """Delete all but the newest ``keep`` files (and ``keep_mb``); returns how many went.
        Folders gradio made for files are removed once empty and a minute old (a younger one
        may be about to receive its file)."""
        with self._lock:
            stats = []
            for e in self._files():
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                stats.append((st.st_mtime, st.st_size, e.path))
            stats.sort(reverse=True)
            total, gone = 0, 0
            for i, (_, size, path) in enumerate(stats):
                total += size
                if i >= self.keep or total > self.keep_bytes:
                    Path(path).unlink(missing_ok=True)
                    gone += 1
            for record in self.records:  # else they grow by a path per answer, for ever
                for path in list(record):
                    if not os.path.exists(path):
                        record.discard(path)
            old = time.time() - 60
            for d in sorted(self.path.rglob("*"), reverse=True):
                try:
                    if d.is_dir() and d.stat().st_mtime < old and not any(d.iterdir()):
                        d.rmdir()
                except OSError:
                    pass
            return gone

    def prune_every(self, seconds: float) -> None:
        """Prune in a background thread (uploads arrive without a request to prune them)."""
        def loop():
            while self.path.is_dir():
                time.sleep(seconds)
                self.prune()
        threading.Thread(target=loop, name="bld-serve-prune", daemon=True).start()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class App:
    """The handlers behind the page; plain methods, so they are testable without a browser.

    Images arrive as PIL images, file paths, PNG bytes (the page's editor) or gradio FileData
    dicts (the API); numbers as sent. Every value is checked here: see `_number`, `_open`."""

    def __init__(self, pipe: BinaryLatentDiffusionPipeline, limits: Limits | None = None,
                 test_images: tuple[torch.Tensor, torch.Tensor] | None = None,
                 files: TempFiles | None = None) -> None:
        self.pipe, self.limits = pipe, limits or Limits()
        self.test_images = test_images if test_images is not None else self._load_test_images()
        self.scale = max(1, round(self.limits.display_px / pipe.image_size))
        self.files = files or TempFiles(self.limits.keep_files, self.limits.keep_mb)

    # ------------------------------------------------------------------------ helpers
    def _load_test_images(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The test split of the autoencoder's dataset, to pick images from (if readable)."""
        from .data import build_dataset
        from .evaluation import dataset_tensors
        src = self.pipe.data.get("source")
        if not src:
            return None
        try:
            ds = build_dataset(src, "test", self.pipe.image_size, self.pipe.channels,
                               self.pipe.data.get("data_dir") or None)
            return dataset_tensors(ds)
        except Exception as e:  # the app still samples; picking test images is off
            log.warning("serve: no test images to pick from (%s)", e)
            return None

    @property
    def class_choices(self) -> list[str]:
        names = list(self.pipe.classes) or [str(i) for i in range(self.pipe.num_classes)]
        return [UNCONDITIONAL] + names

    def _int(self, value, name: str, lo: int, hi: int) -> int:
        return self._number(value, name, lo, hi, whole=True)

    def _float(self, value, name: str, lo: float, hi: float) -> float:
        return self._number(value, name, lo, hi, whole=False)

    @staticmethod
    def _number(value, name: str, lo, hi, whole: bool):
        """A number as sent (the page's widgets, or anything through the API): refused with
        the reason unless it is a finite number in [lo, hi], whole where ``whole``."""
        try:
            v = float(value) if not isinstance(value, (bool, bytes)) else math.nan
        except (TypeError, ValueError, OverflowError):
            v = math.nan
        if not math.isfinite(v) or (whole and not v.is_integer()):
            raise UserError(f"{name} must be {'a whole number' if whole else 'a number'}, "
                            f"got {value!r}")
        v = int(v) if whole else v
        if not lo <= v <= hi:
            raise UserError(f"{name} must be between {lo} and {hi}, got {v:g}")
        return v

    def _sampling(self, steps, guidance, temperature, seed, labelled: bool) -> dict:
        return {"steps": self._int(steps, "steps", 2, self.pipe.timesteps),
                "guidance": self._float(guidance, "guidance", 0.0, 20.0) if labelled else 0.0,
                "temperature": self._float(temperature, "temperature", 0.05, 5.0),
                "seed": self._int(seed, "seed", 0, 2 ** 31 - 1)}

    def _grid(self, images: torch.Tensor, nrow: int) -> Image.Image:
        return _upscale(to_pil(image_grid(images, nrow=nrow)),
                        self.scale * (nrow * (self.pipe.image_size + 2) + 2))

    def _open(self, value, what: str) -> Image.Image:
        """An uploaded image, decoded only after its header passed the checks: it must be an
        image, a still one, and within the size limit."""
        if isinstance(value, dict):  # gradio FileData, as the API sends an upload
            value = value.get("path")
        if value is None:
            raise UserError(f"{what} is missing: pick a test image or upload one")
        side = self.limits.max_upload_side
        if isinstance(value, Image.Image):
            img = value
        else:
            try:
                with warnings.catch_warnings():  # the size is checked below, from the header
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(io.BytesIO(value) if isinstance(value, bytes) else value)
            except Image.DecompressionBombError:
                raise UserError(f"{what} has too many pixels; the limit is {side} on a side") \
                    from None
            except FileNotFoundError:
                raise UserError(f"{what} is no longer on the server (it keeps the newest "
                                f"{self.limits.keep_files} files); upload it again") from None
            except (OSError, ValueError, TypeError, SyntaxError):
                raise UserError(f"{what} is not an image the app can read; upload a PNG, JPEG "
                                "or WebP picture") from None
        w, h = img.size
        frames = getattr(img, "n_frames", 1)
        problem = (f"{what} is {w}x{h} pixels; the limit is {side} on a side"
                   if max(w, h) > side else
                   f"{what} is {w}x{h} pixels, too small to use" if min(w, h) < 4 else
                   f"{what} is an animation ({frames} frames); upload a still image"
                   if frames > 1 else None)
        if problem is None:
            try:
                img.load()
                return ImageOps.exif_transpose(img)
            except (OSError, ValueError, SyntaxError) as e:
                problem = f"{what} is damaged ({e}); upload it again"
        if img is not value:
            img.close()
        raise UserError(problem)

    def upload(self, value, what: str = "the image") -> tuple[torch.Tensor, str]:
        """An uploaded image at the model's size and mode, with a note on what was changed."""
        img = self._open(value, what)
        w, h = img.size
        x = self.pipe.to_tensor(img)[0]
        S = self.pipe.image_size
        changes = []
        if w != h:
            changes.append(f"centre-cropped from {w}x{h}")
        elif w % S:
            changes.append(f"resized from {w}x{h} to {S}x{S}")
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        if self.pipe.channels == 1 and np.abs(rgb - rgb.mean(-1, keepdims=True)).max() > 8:
            changes.append("turned grey (the model is greyscale)")
        note = f"{what} was {' and '.join(changes)}. " if changes else ""
        return x, note

    def test_image(self, index) -> Image.Image:
        if self.test_images is None:
            raise UserError("no test images are available here; upload an image instead")
        i = self._int(index, "test image number", 0, len(self.test_images[0]) - 1)
        return _upscale(to_pil(self.test_images[0][i]), 4 * self.limits.display_px // 2)

    # ----------------------------------------------------------------------- handlers
    def sample(self, class_label, n, steps, guidance, temperature, seed, progress=None):
        n = self._int(n, "number of images", 1, self.limits.max_images)
        kw = self._sampling(steps, guidance, temperature, seed, _labelled(class_label))
        t0 = time.perf_counter()
        out = self.pipe(class_labels=_labels(class_label, n), n=n, output_type="pt",
                        callback=progress, **kw)
        seconds = time.perf_counter() - t0
        what = class_label if _labelled(class_label) else "unconditional"
        return (self._grid(out.images, min(n, 10)),
                f"{n} images ({what}), {kw['steps']} steps, guidance {kw['guidance']:g}, "
                f"temperature {kw['temperature']:g}, seed {kw['seed']}: **{seconds:.2f} s**")

    def inpaint(self, image: dict | None, class_label, n, steps, guidance, seed, paste,
                progress=None):
        """``image``: the editor's value, ``{"background": picture, "layers": [paint]}``; the
        paint (a layer's alpha, or white where a layer has no alpha) marks what to regenerate."""
        if not isinstance(image, dict) or image.get("background") is None:
            raise UserError("pick a test image or upload one, then paint the region to fill in")
        background = self._open(image["background"], "the image")
        x, note = self.upload(background)
        fill = self._painted(background, image.get("layers") or [], x.shape[-1])
        if not fill.any():
            raise UserError("paint over the region to regenerate (the brush), then press Inpaint")
        if fill.all():
            raise UserError("the whole image is painted; leave some of it known "
                            "(or use the Sample tab)")
        n = self._int(n, "number of completions", 1, self.limits.max_completions)
        kw = self._sampling(steps, guidance, 1.0, seed, _labelled(class_label))
        if not isinstance(paste, bool):
            raise UserError(f"paste must be true or false, got {paste!r}")
        t0 = time.perf_counter()
        out = self.pipe.inpaint(x, fill, n=n, class_labels=_labels(class_label, n),
                                paste=paste, output_type="pt", callback=progress, **kw)
        seconds = time.perf_counter() - t0
        masked = torch.where(torch.from_numpy(fill)[None], torch.full_like(x, -1.0), x)
        grid = self._grid(torch.cat([x[None], masked[None], out.images]), min(n + 2, 10))
        return grid, (f"{note}Input, the known part (painted region black), then {n} "
                      f"completions in {kw['steps']} steps"
                      f"{', known pixels pasted back' if paste else ''}: **{seconds:.2f} s**")

    def _painted(self, background: Image.Image, layers: list, size: int) -> np.ndarray:
        """(size, size) bool: where any layer has paint, at the model's resolution."""
        alpha = np.zeros((background.height, background.width), dtype=np.uint8)
        for k, layer in enumerate(layers):
            if layer is None:
                continue
            img = self._open(layer, f"paint layer {k}")
            if img.size != background.size:
                raise UserError(f"paint layer {k} is {img.width}x{img.height} but the image is "
                                f"{background.width}x{background.height}; make them the same size")
            a = (np.asarray(img.getchannel("A")) if "A" in img.getbands() else
                 np.where(np.asarray(img.convert("L")) > 127, 255, 0)).astype(np.uint8)
            alpha = np.maximum(alpha, a)
        # centre-crop like the image, then any paint in a pixel's area marks it
        sq = Image.fromarray(alpha)
        w, h = sq.size
        m = min(w, h)
        sq = sq.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
        return np.asarray(sq.resize((size, size), Image.BOX)) > 0

    def trajectory(self, class_label, n, steps, guidance, seed, progress=None):
        n = self._int(n, "number of samples", 1, self.limits.max_trajectory)
        kw = self._sampling(steps, guidance, 1.0, seed, _labelled(class_label))
        out = self.pipe(class_labels=_labels(class_label, n), n=n, return_trajectory=True,
                        callback=progress, **kw)
        flips = bits_flipped(out.trajectory)  # (S, n)
        ts = [self.pipe.timesteps, *out.timesteps[1:], 0]
        total = int(np.prod(self.pipe.latent_shape))
        frames = []
        for s, z in enumerate(out.trajectory):
            grid = self._grid(self.pipe.decode(z, output_type="pt"), n)
            caption = ("z_T: coin flips" if s == 0 else
                       f"step {s}/{len(flips)}: z_{ts[s]}, {flips[s - 1].float().mean():.0f} "
                       "bits flipped per image")
            frames.append(_captioned(grid, caption))
        # in the temporary folder (gradio's cache), so it is served from there and pruned
        path = self.files.new("trajectory", ".gif")
        frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                       duration=[450] * (len(frames) - 1) + [1800])  # hold the sample
        per_step = flips.float().mean(1)
        table = "\n".join(f"| {s + 1} | z_{ts[s]} -> z_{ts[s + 1]} | {per_step[s]:.0f} "
                          f"| {100 * per_step[s] / total:.1f}% |" for s in range(len(flips)))
        return str(path), _flip_chart(per_step, total), (
            f"{n} samples, {kw['steps']} steps, {total} bits per image.\n\n"
            "| step | from -> to | bits flipped (mean) | share |\n|---|---|---|---|\n" + table)

    def blend(self, image_a, image_b, n):
        xa, note_a = self.upload(image_a, "image A")
        xb, note_b = self.upload(image_b, "image B")
        n = self._int(n, "number of blend steps", 2, self.limits.max_blend)
        fractions = [i / (n - 1) for i in range(n)]
        out = self.pipe.blend(xa, xb, fractions)
        tiles = self.pipe.to_tensor(out.images)
        total = int(np.prod(self.pipe.latent_shape))
        return self._grid(tiles, n), (
            f"{note_a}{note_b}The two latents differ in **{out.bits_differing} of {total}** "
            f"bits. Left to right: {', '.join(str(t) for t in out.bits_taken)} of them taken "
            "from B (one random order), each decoded as it is - no pixel blending.")


def _labelled(class_label) -> bool:
    return class_label not in (None, "", UNCONDITIONAL)


def _labels(class_label, n: int) -> list | None:
    """The class for each of n images (the pipeline checks the name), or None."""
    return [class_label] * n if _labelled(class_label) else None


def _captioned(img: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (max(img.width, 260), img.height + 22), "white")
    canvas.paste(img.convert("RGB"), (0, 0))
    ImageDraw.Draw(canvas).text((4, img.height + 5), text, fill="black")
    return canvas


def _flip_chart(per_step: torch.Tensor, total: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(range(1, len(per_step) + 1), per_step.numpy(), color="#4a6fa5")
    ax.set_xlabel("sampling step")
    ax.set_ylabel("bits flipped")
    ax.set_title(f"bits flipped per step (of {total} per image)", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- the page
def build_app(app: App):
    """The gradio Blocks of the three tabs."""
    import gradio as gr

    def page(fn):
        """``fn`` as an event handler: its parameter names are the API's, it gets gradio's
        progress bar when it takes ``progress``, the temporary files are pruned before it
        runs, and bad input is a one-line message (gr.Error) on the page and to API clients."""
        sig = inspect.signature(fn)
        inputs = [p for p in sig.parameters.values() if p.name != "progress"]
        with_progress = len(inputs) < len(sig.parameters)

        def run(*args):
            kw = {}
            if with_progress:  # gradio passes its progress tracker after the inputs
                *args, bar = args
                kw["progress"] = lambda i, total: bar((i, total), desc="sampling", unit="steps")
            app.files.prune()
            try:
                return saved(fn(*args, **kw))
            except ValueError as e:  # UserError, and the pipeline's own argument checks
                log.info("serve: %s refused: %s", fn.__name__, e)
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:  # a bug: logged in full, one line on the page
                log.exception("serve: %s failed", fn.__name__)
                raise gr.Error(f"internal error ({type(e).__name__}: {e}); see the server log",
                               print_exception=False) from None
        run.__name__ = fn.__name__
        run.__signature__ = sig.replace(parameters=inputs + (
            [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               default=gr.Progress())] if with_progress else []))
        return run

    def saved(answer):
        """The answer's pictures as files of their own in the temporary folder."""
        if isinstance(answer, tuple):
            return tuple(saved(a) for a in answer)
        return app.files.png(answer) if isinstance(answer, Image.Image) else answer

    def from_editor(fn):
        """The page's editor sends its pictures as PNG blobs ahead of the click and then
        only their id; API clients send the pictures (FileData) in the call."""
        @functools.wraps(fn)
        def run(image, *args, **kw):
            if isinstance(image, dict) and image.get("id") is not None:
                blobs = i_edit.blob_storage.pop(image["id"], None)
                image = blobs and {"background": blobs.background, "layers": blobs.layers}
            return fn(image, *args, **kw)
        return run

    # the API: named endpoints whose inputs reach the handlers as sent (the handlers check
    # them); one model call at a time across all four
    api = dict(concurrency_id="model", preprocess=False)
    private = dict(api_visibility="private")  # the page's own helpers, not part of the API

    pipe, lim = app.pipe, app.limits
    T = pipe.timesteps
    labelled = pipe.num_classes > 0
    default_class = app.class_choices[1] if labelled else UNCONDITIONAL
    n_test = len(app.test_images[0]) if app.test_images is not None else 0
    def controls(n_label: str, n_max: int, n_value: int, class_value: str,
                 guidance_label: str = "guidance w"):
        """class, number, steps and guidance controls (the same on every tab)."""
        return (gr.Dropdown(app.class_choices, value=class_value, label="class",
                            interactive=labelled),
                gr.Slider(1, n_max, value=min(n_value, n_max), step=1, label=n_label),
                gr.Slider(2, T, value=min(16, T), step=1, label="steps"),
                gr.Slider(0, 5, value=pipe.default_guidance, step=0.25, label=guidance_label,
                          interactive=labelled))

    with gr.Blocks(title="bld: Binary Latent Diffusion") as demo:
        gr.Markdown(f"## Binary Latent Diffusion\n{pipe.image_size} px images from "
                    f"{' x '.join(map(str, pipe.latent_shape))} bits; a Bernoulli prior "
                    f"trained on T = {T} steps samples them in a few.")
        with gr.Tab("Sample"):
            with gr.Row():
                with gr.Column(scale=1):
                    s_class, s_n, s_steps, s_guid = controls("number of images",
                                                             lim.max_images, 10, default_class)
                    s_temp = gr.Slider(0.1, 2, value=1.0, step=0.05, label="temperature")
                    s_seed = gr.Number(0, precision=0, label="seed", minimum=0)
                    s_go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    s_img = gr.Image(label="samples", type="pil", format="png",
                                     interactive=False, elem_id="sample-output")
                    s_info = gr.Markdown(elem_id="sample-info")
            s_go.click(page(app.sample), [s_class, s_n, s_steps, s_guid, s_temp, s_seed],
                       [s_img, s_info], api_name="sample", **api)
        with gr.Tab("Inpaint"):
            with gr.Row():
                with gr.Column(scale=1):
                    with gr.Row():
                        i_index = gr.Number(0, precision=0, minimum=0, label=(
                            f"test image (0..{n_test - 1})" if n_test else "no test images"),
                            interactive=n_test > 0)
                        i_load = gr.Button("Use this test image", interactive=n_test > 0)
                    i_edit = gr.ImageEditor(
                        label="paint the region to regenerate", type="filepath", image_mode="RGBA",
                        sources=["upload", "clipboard"], layers=False, transforms=[],
                        brush=gr.Brush(default_size=24, colors=["#ff3030"], color_mode="fixed"),
                        eraser=gr.Eraser(default_size=24), canvas_size=(280, 280),
                        elem_id="inpaint-editor", format="png")
                    i_class, i_n, i_steps, i_guid = controls(
                        "completions", lim.max_completions, 4, UNCONDITIONAL,
                        "guidance w (with a class)")
                    i_seed = gr.Number(0, precision=0, label="seed", minimum=0)
                    i_paste = gr.Checkbox(False, label="paste the known pixels back "
                                          "(off: show what the prior and decoder made)")
                    i_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                with gr.Column(scale=2):
                    i_img = gr.Image(label="input | known part | completions", type="pil",
                                     format="png", interactive=False, elem_id="inpaint-output")
                    i_info = gr.Markdown(elem_id="inpaint-info")
            i_load.click(page(app.test_image), [i_index], [i_edit], **private)
            i_go.click(page(from_editor(app.inpaint)), [i_edit, i_class, i_n, i_steps, i_guid,
                                                         i_seed, i_paste], [i_img, i_info],
                       api_name="inpaint", **api)
        with gr.Tab("Inside the bits"):
            gr.Markdown("**The trajectory.** Sampling starts from coin flips z_T and each step "
                        "flips some bits; here is every z_t decoded, and how many bits moved.")
            with gr.Row():
                with gr.Column(scale=1):
                    t_class, t_n, t_steps, t_guid = controls("samples", lim.max_trajectory, 4,
                                                             default_class)
                    t_seed = gr.Number(0, precision=0, label="seed", minimum=0)
                    t_go = gr.Button("Run the trajectory", variant="primary",
                                     elem_id="trajectory")
                with gr.Column(scale=2):
                    t_gif = gr.Image(label="z_t at each step (animation)", type="filepath",
                                     interactive=False, elem_id="trajectory-output")
                    t_plot = gr.Plot(label="bits flipped per step")
                    with gr.Accordion("the numbers, step by step", open=False):
                        t_info = gr.Markdown()
            t_go.click(page(app.trajectory), [t_class, t_n, t_steps, t_guid, t_seed],
                       [t_gif, t_plot, t_info], api_name="trajectory", **api)
            gr.Markdown("**A blend in bit space.** Encode two images; of the bits in which "
                        "their latents differ, take a growing share from B and decode.")
            with gr.Row():
                b_a_index = gr.Number(0, precision=0, minimum=0, label="test image A",
                                      interactive=n_test > 0)
                b_b_index = gr.Number(1, precision=0, minimum=0, label="test image B",
                                      interactive=n_test > 0)
                b_k = gr.Slider(2, 16, value=9, step=1, label="blend steps")
            with gr.Row():
                b_a = gr.Image(label="image A (or upload)", type="filepath", image_mode=None,
                               sources=["upload"], height=160, format="png")
                b_b = gr.Image(label="image B (or upload)", type="filepath", image_mode=None,
                               sources=["upload"], height=160, format="png")
            b_go = gr.Button("Blend", variant="primary", elem_id="blend")
            b_img = gr.Image(label="A ... B", type="pil", format="png", interactive=False,
                             elem_id="blend-output")
            b_info = gr.Markdown()
            b_a_index.change(page(app.test_image), [b_a_index], [b_a], **private)
            b_b_index.change(page(app.test_image), [b_b_index], [b_b], **private)
            b_go.click(page(app.blend), [b_a, b_b, b_k], [b_img, b_info], api_name="blend",
                       **api)
        if n_test:
            demo.load(lambda: saved((app.test_image(0), app.test_image(0), app.test_image(1))),
                      None, [i_edit, b_a, b_b], **private)
    return demo


# ------------------------------------------------------------------------ serving it
def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may well reach the network
        return False


def _login(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.strip().partition(":")
    if not (sep and user and password):
        raise ValueError(f"{where} must be USER:PASSWORD (both non-empty)")
    return user, password


def logins(host: str, auth: str | None = None, auth_file: str | Path | None = None,
           no_auth: bool = False, environ=os.environ) -> list[tuple[str, str]] | None:
    """The logins the app asks for: ``auth`` (USER:PASSWORD), else the lines of ``auth_file``
    (USER:PASSWORD each; blank lines and # comments skipped), else $BLD_SERVE_AUTH; None when
    there is none. Serving beyond loopback without a login is refused unless ``no_auth``."""
    if no_auth and (auth or auth_file):
        raise ValueError("--no-auth contradicts --auth / --auth-file; give one of them")
    if auth:
        return [_login(auth, "--auth")]
    if auth_file:
        path = Path(auth_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"cannot read the auth file {path} ({e.strerror}); give a file "
                             "with USER:PASSWORD lines") from None
        found = [_login(line, f"line {i} of {path}") for i, line in enumerate(lines, 1)
                 if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise ValueError(f"the auth file {path} holds no USER:PASSWORD line")
        return found
    if environ.get(AUTH_ENV) and not no_auth:
        return [_login(environ[AUTH_ENV], AUTH_ENV)]
    if not (no_auth or is_loopback(host)):
        raise ValueError(f"--host {host} lets other machines in; give a login with --auth "
                         f"USER:PASSWORD, --auth-file FILE or {AUTH_ENV}=USER:PASSWORD, or "
                         "pass --no-auth to serve without one")
    return None


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives busy threads malloc arenas of their own (up to 8 per core) and seldom gives
    their memory back, so a server's resident memory creeps up with its thread pool; cap them
    as MALLOC_ARENA_MAX does (unless that is set). The model runs one call at a time anyway."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860,
          device: str = "auto", precision: str = "auto", limits: Limits | None = None,
          auth: list[tuple[str, str]] | None = None, block: bool = True):
    """Load the run and start the app: one sampling at a time, a queue of
    ``limits.queue_size``, a login when ``auth`` is given, no share link. Its temporary
    files (gradio's too) live in one pruned folder, removed when the server stops - on
    Ctrl-C, SIGTERM or SIGHUP - or at exit (``block=False``)."""
    limits = limits or Limits()
    _cap_malloc_arenas()
    pipe = BinaryLatentDiffusionPipeline.from_run(run_dir, device=device, precision=precision)
    files = TempFiles(limits.keep_files, limits.keep_mb)
    atexit.register(files.remove)
    # gradio reads its folders from the environment when it builds the page and the server
    os.environ["GRADIO_TEMP_DIR"] = str(files.path)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(files.path / "examples")
    app = App(pipe, limits, files=files)
    demo = build_app(app)
    files.records = demo.temp_file_sets
    demo.queue(default_concurrency_limit=1, max_size=limits.queue_size)
    files.prune_every(30)
    log.info("serving %s on http://%s:%d (%s); temporary files in %s", run_dir, host, port,
             "login required" if auth else "no login", files.path)
    if block:
        # all as Ctrl-C (even where SIGINT was ignored): gradio closes, then we clean up
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                signal.signal(sig, _interrupt)
    try:
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                    auth=auth, share=False, ssr_mode=False, allowed_paths=[],
                    state_session_capacity=limits.sessions,
                    max_file_size=f"{limits.max_upload_mb:g}mb", show_error=False, quiet=True)
    finally:
        if block:
            demo.close(verbose=False)
            files.remove()
            log.info("stopped; removed %s", files.path)
    return demo
