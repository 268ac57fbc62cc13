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

The handlers and their checks are `bld.app.handlers.App`; this module builds the gradio page over
them and serves it. Imports bld.inference.pipeline and `handlers.py`.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import ipaddress
import logging
import os
import signal
from pathlib import Path

from PIL import Image

from ..inference.pipeline import BinaryLatentDiffusionPipeline
from .handlers import UNCONDITIONAL, App, Limits, TempFiles, UserError

__all__ = ["build_app", "serve", "logins", "is_loopback", "AUTH_ENV",
           # the handlers' names, whose home this module was
           "App", "Limits", "TempFiles", "UserError", "UNCONDITIONAL"]

log = logging.getLogger("bld")

AUTH_ENV = "BLD_SERVE_AUTH"  # USER:PASSWORD, when neither --auth nor --auth-file is given



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
                    s_temp = gr.Slider(0.1, 2, value=pipe.default_temperature, step=0.05,
                                       label="temperature")
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
