"""`bld serve RUN_DIR`: a browser app over a trained run (gradio, the optional extra `[web]`).

Three tabs, all through `BinaryLatentDiffusionPipeline`: **Sample** (class, number, steps,
guidance, temperature, seed), **Inpaint** (paint the region to regenerate over a test image
or an upload) and **Inside the bits** (the denoising trajectory as an animation with the
bits each step flips, and a bit-space blend between two images). One sampling runs at a
time (a queue); bad input is answered with a message on the page.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .pipeline import BinaryLatentDiffusionPipeline, bits_flipped
from .plots import image_grid, to_pil

log = logging.getLogger("bld")

UNCONDITIONAL = "(unconditional)"


@dataclass
class Limits:
    max_images: int = 64  # per Generate click
    max_completions: int = 16  # per Inpaint click
    max_trajectory: int = 8  # samples in one trajectory animation
    max_upload_mb: float = 5.0
    max_upload_side: int = 4096  # pixels; larger uploads are refused, not resized
    display_px: int = 112  # each image is shown upscaled (nearest) to about this size


class UserError(ValueError):
    """Bad input from the page: shown as a message, never a traceback."""


def _upscale(img: Image.Image, target: int) -> Image.Image:
    s = max(1, round(target / max(img.size)))
    return img.resize((img.width * s, img.height * s), Image.NEAREST) if s > 1 else img


class App:
    """The handlers behind the page; plain methods, so they are testable without a browser."""

    def __init__(self, pipe: BinaryLatentDiffusionPipeline, limits: Limits | None = None,
                 test_images: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.pipe, self.limits = pipe, limits or Limits()
        self.test_images = test_images if test_images is not None else self._load_test_images()
        self.scale = max(1, round(self.limits.display_px / pipe.image_size))
        self.outdir = Path(tempfile.mkdtemp(prefix="bld-serve-"))

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

    def _labels(self, choice: str | None, n: int) -> list | None:
        if choice in (None, "", UNCONDITIONAL):
            return None
        return [choice] * n

    def _int(self, value, name: str, lo: int, hi: int) -> int:
        return self._number(value, name, lo, hi, int, "a whole number")

    def _float(self, value, name: str, lo: float, hi: float) -> float:
        return self._number(value, name, lo, hi, float, "a number")

    @staticmethod
    def _number(value, name: str, lo, hi, kind, what: str):
        try:
            v = kind(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be {what}, got {value!r}") from None
        if not lo <= v <= hi:
            raise UserError(f"{name} must be between {lo} and {hi}, got {v}")
        return v

    def _sampling(self, steps, guidance, temperature, seed, labelled: bool) -> dict:
        return {"steps": self._int(steps, "steps", 2, self.pipe.timesteps),
                "guidance": self._float(guidance, "guidance", 0.0, 20.0) if labelled else 0.0,
                "temperature": self._float(temperature, "temperature", 0.05, 5.0),
                "seed": self._int(seed, "seed", 0, 2 ** 31 - 1)}

    def _grid(self, images: torch.Tensor, nrow: int) -> Image.Image:
        return _upscale(to_pil(image_grid(images, nrow=nrow)),
                        self.scale * (nrow * (self.pipe.image_size + 2) + 2))

    def upload(self, img: Image.Image | None, what: str = "the image") -> tuple[torch.Tensor, str]:
        """An uploaded image at the model's size and mode, with a note on what was changed."""
        if img is None:
            raise UserError(f"{what} is missing: pick a test image or upload one")
        w, h = img.size
        if max(w, h) > self.limits.max_upload_side:
            raise UserError(f"{what} is {w}x{h} pixels; the limit is "
                            f"{self.limits.max_upload_side} on a side")
        if min(w, h) < 4:
            raise UserError(f"{what} is {w}x{h} pixels, too small to use")
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
    def sample(self, choice, n, steps, guidance, temperature, seed, progress=None):
        n = self._int(n, "number of images", 1, self.limits.max_images)
        kw = self._sampling(steps, guidance, temperature, seed, choice not in (None, UNCONDITIONAL))
        t0 = time.perf_counter()
        out = self.pipe(class_labels=self._labels(choice, n), n=n, output_type="pt",
                        callback=progress, **kw)
        seconds = time.perf_counter() - t0
        what = choice if choice not in (None, UNCONDITIONAL) else "unconditional"
        return (self._grid(out.images, min(n, 10)),
                f"{n} images ({what}), {kw['steps']} steps, guidance {kw['guidance']:g}, "
                f"temperature {kw['temperature']:g}, seed {kw['seed']}: **{seconds:.2f} s**")

    def inpaint(self, editor: dict | None, choice, n, steps, guidance, seed, paste: bool,
                progress=None):
        if not editor or editor.get("background") is None:
            raise UserError("pick a test image or upload one, then paint the region to fill in")
        x, note = self.upload(editor["background"])
        fill = self._painted(editor, x.shape[-1])
        if not fill.any():
            raise UserError("paint over the region to regenerate (the brush), then press Inpaint")
        if fill.all():
            raise UserError("the whole image is painted; leave some of it known "
                            "(or use the Sample tab)")
        n = self._int(n, "number of completions", 1, self.limits.max_completions)
        kw = self._sampling(steps, guidance, 1.0, seed, choice not in (None, UNCONDITIONAL))
        t0 = time.perf_counter()
        out = self.pipe.inpaint(x, fill, n=n, class_labels=self._labels(choice, n),
                                paste=bool(paste), output_type="pt", callback=progress, **kw)
        seconds = time.perf_counter() - t0
        masked = torch.where(torch.from_numpy(fill)[None], torch.full_like(x, -1.0), x)
        grid = self._grid(torch.cat([x[None], masked[None], out.images]), min(n + 2, 10))
        return grid, (f"{note}Input, the known part (painted region black), then {n} "
                      f"completions in {kw['steps']} steps"
                      f"{', known pixels pasted back' if paste else ''}: **{seconds:.2f} s**")

    def _painted(self, editor: dict, size: int) -> np.ndarray:
        """(size, size) bool: where any brush layer has paint, at the model's resolution."""
        bg = editor["background"]
        alpha = np.zeros((bg.height, bg.width), dtype=np.float32)
        for layer in editor.get("layers") or []:
            if layer is None:
                continue
            a = np.asarray(layer.convert("RGBA"))[..., 3].astype(np.float32)
            if a.shape == alpha.shape:
                alpha = np.maximum(alpha, a)
        # centre-crop like the image, then any paint in a pixel's area marks it
        sq = Image.fromarray(alpha.astype(np.uint8))
        w, h = sq.size
        m = min(w, h)
        sq = sq.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
        return np.asarray(sq.resize((size, size), Image.BOX)) > 0

    def trajectory(self, choice, n, steps, guidance, seed, progress=None):
        n = self._int(n, "number of samples", 1, self.limits.max_trajectory)
        kw = self._sampling(steps, guidance, 1.0, seed, choice not in (None, UNCONDITIONAL))
        out = self.pipe(class_labels=self._labels(choice, n), n=n, return_trajectory=True,
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
        path = self.outdir / f"trajectory_{time.time_ns()}.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                       duration=[450] * (len(frames) - 1) + [1800])  # hold the sample
        per_step = flips.float().mean(1)
        table = "\n".join(f"| {s + 1} | z_{ts[s]} -> z_{ts[s + 1]} | {per_step[s]:.0f} "
                          f"| {100 * per_step[s] / total:.1f}% |" for s in range(len(flips)))
        return str(path), _flip_chart(per_step, total), (
            f"{n} samples, {kw['steps']} steps, {total} bits per image.\n\n"
            "| step | from -> to | bits flipped (mean) | share |\n|---|---|---|---|\n" + table)

    def blend(self, image_a, image_b, k):
        xa, note_a = self.upload(image_a, "image A")
        xb, note_b = self.upload(image_b, "image B")
        k = self._int(k, "number of blend steps", 2, 16)
        fractions = [i / (k - 1) for i in range(k)]
        out = self.pipe.blend(xa, xb, fractions)
        tiles = self.pipe.to_tensor(out.images)
        total = int(np.prod(self.pipe.latent_shape))
        return self._grid(tiles, k), (
            f"{note_a}{note_b}The two latents differ in **{out.bits_differing} of {total}** "
            f"bits. Left to right: {', '.join(str(t) for t in out.bits_taken)} of them taken "
            "from B (one random order), each decoded as it is - no pixel blending.")


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
        """A handler whose bad input becomes a message on the page (gr.Error), never a trace."""
        def run(*args, progress=gr.Progress()):
            def tick(i, total):
                progress((i, total), desc="sampling", unit="steps")
            try:
                if "progress" in fn.__code__.co_varnames:
                    return fn(*args, progress=tick)
                return fn(*args)
            except (UserError, ValueError) as e:
                raise gr.Error(str(e)) from None
            except Exception as e:  # a bug: logged in full, one line on the page
                log.exception("serve: %s failed", fn.__name__)
                raise gr.Error(f"internal error ({type(e).__name__}: {e}); see the server log") \
                    from None
        return run

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
                       [s_img, s_info], concurrency_id="model")
        with gr.Tab("Inpaint"):
            with gr.Row():
                with gr.Column(scale=1):
                    with gr.Row():
                        i_index = gr.Number(0, precision=0, minimum=0, label=(
                            f"test image (0..{n_test - 1})" if n_test else "no test images"),
                            interactive=n_test > 0)
                        i_load = gr.Button("Use this test image", interactive=n_test > 0)
                    i_edit = gr.ImageEditor(
                        label="paint the region to regenerate", type="pil", image_mode="RGBA",
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
            i_load.click(page(app.test_image), [i_index], [i_edit])
            i_go.click(page(app.inpaint), [i_edit, i_class, i_n, i_steps, i_guid, i_seed,
                                              i_paste], [i_img, i_info], concurrency_id="model")
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
                       [t_gif, t_plot, t_info], concurrency_id="model")
            gr.Markdown("**A blend in bit space.** Encode two images; of the bits in which "
                        "their latents differ, take a growing share from B and decode.")
            with gr.Row():
                b_a_index = gr.Number(0, precision=0, minimum=0, label="test image A",
                                      interactive=n_test > 0)
                b_b_index = gr.Number(1, precision=0, minimum=0, label="test image B",
                                      interactive=n_test > 0)
                b_k = gr.Slider(2, 16, value=9, step=1, label="blend steps")
            with gr.Row():
                b_a = gr.Image(label="image A (or upload)", type="pil", sources=["upload"],
                               height=160, format="png")
                b_b = gr.Image(label="image B (or upload)", type="pil", sources=["upload"],
                               height=160, format="png")
            b_go = gr.Button("Blend", variant="primary", elem_id="blend")
            b_img = gr.Image(label="A ... B", type="pil", format="png", interactive=False,
                             elem_id="blend-output")
            b_info = gr.Markdown()
            b_a_index.change(page(app.test_image), [b_a_index], [b_a])
            b_b_index.change(page(app.test_image), [b_b_index], [b_b])
            b_go.click(page(app.blend), [b_a, b_b, b_k], [b_img, b_info],
                       concurrency_id="model")
        if n_test:
            demo.load(lambda: (app.test_image(0), app.test_image(0), app.test_image(1)), None,
                      [i_edit, b_a, b_b])
    return demo


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860,
          device: str = "auto", precision: str = "auto", limits: Limits | None = None,
          block: bool = True):
    """Load the run and start the app (one sampling at a time, a queue of 16)."""
    pipe = BinaryLatentDiffusionPipeline.from_run(run_dir, device=device, precision=precision)
    app = App(pipe, limits)
    demo = build_app(app)
    demo.queue(default_concurrency_limit=1, max_size=16)
    log.info("serving %s on http://%s:%d", run_dir, host, port)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                max_file_size=f"{app.limits.max_upload_mb:g}mb", show_error=False, quiet=True)
    return demo
