"""The handlers behind `bld serve`'s page and API, as plain methods (`App`), testable
without a browser or gradio; the limits they enforce, and the folder of temporary files.

Every value a handler receives is checked here (uploads from their header before decoding),
so a crafted API call gets the same one-line message the page shows. `bld.app.serve` builds the
gradio page over an `App` and serves it. Imports bld.inference.pipeline and bld.core.plots,
and on first use bld.data (for the test images).
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from ..core.plots import image_grid, to_pil
from ..inference.pipeline import BinaryLatentDiffusionPipeline, bits_flipped

log = logging.getLogger("bld")

UNCONDITIONAL = "(unconditional)"


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
        from ..data import build_dataset, dataset_tensors
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
