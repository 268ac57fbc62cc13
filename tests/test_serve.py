"""`bld serve` as a server, through its HTTP API (gradio_client; the page itself is in
test_web.py): named endpoints with named parameters; limits checked on the server, so a
crafted call gets the one-line message the page shows and the server keeps serving; file
routes that serve the app's own outputs and nothing else; a login required beyond loopback;
a bounded temporary folder, removed when the server stops (SIGTERM, Ctrl-C); and a short
run of benchmarks/serve_load.py."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from PIL import Image

from bld.app.cli import main
from bld.app.serve import AUTH_ENV, App, Limits

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
KEEP = 12  # the test server's --keep-files: small, so that the short load fills the ring


class Server(NamedTuple):
    url: str
    proc: object  # subprocess.Popen
    tmp: Path  # the server's TMPDIR: only its own temporary folder goes there


def _serve(run_dir: Path, root: Path, extra: list[str] = ()):
    from webcheck import served
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    return tmp, served(run_dir, log_path=root / "serve.log", extra=list(extra),
                       env={"TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    tmp, ctx = _serve(runs.prior, tmp_path_factory.mktemp("serve"), ["--keep-files", str(KEEP)])
    with ctx as s:
        yield Server(s.url, s.proc, tmp)


def _client(url: str, download: Path | bool, **kw):
    from gradio_client import Client
    return Client(url, verbose=False, analytics_enabled=False,
                  download_files=str(download) if download else False, **kw)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return _client(server.url, tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Uploads: a picture, a mask, a 100-megapixel PNG, a text file named .png, a GIF."""
    d = tmp_path_factory.mktemp("uploads")
    out = {k: d / name for k, name in [("picture", "picture.png"), ("mask", "mask.png"),
                                       ("small_mask", "small_mask.png"), ("huge", "huge.png"),
                                       ("text", "notes.png"), ("animated", "wave.gif")]}
    Image.radial_gradient("L").resize((64, 64)).convert("RGB").save(out["picture"])
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 32, 64, 64))  # white: regenerate the lower half
    mask.save(out["mask"])
    mask.resize((10, 10)).save(out["small_mask"])
    Image.new("1", (10_000, 10_000)).save(out["huge"])  # 100 MP, ~12 kB as a PNG
    out["text"].write_text("these are notes, not a picture\n")
    frames = [Image.new("L", (32, 32), v) for v in (0, 128, 255)]
    frames[0].save(out["animated"], save_all=True, append_images=frames[1:], duration=100)
    return out


@pytest.fixture(scope="module")
def page(runs):
    """The page's handlers in this process, with the server's limits."""
    from bld import BinaryLatentDiffusionPipeline
    app = App(BinaryLatentDiffusionPipeline.from_run(runs.prior, device="cpu"), Limits(),
              test_images=(torch.zeros(1, 1, 28, 28), torch.zeros(1)))
    yield app
    app.files.remove()


# ------------------------------------------------------------------------- the API
API = {"/sample": ["class_label", "n", "steps", "guidance", "temperature", "seed"],
       "/inpaint": ["image", "class_label", "n", "steps", "guidance", "seed", "paste"],
       "/trajectory": ["class_label", "n", "steps", "guidance", "seed"],
       "/blend": ["image_a", "image_b", "n"]}


def test_the_api_has_four_named_endpoints_with_named_parameters(client):
    info = client.view_api(return_format="dict", print_info=False)
    assert not info["unnamed_endpoints"]
    assert {name: [p["parameter_name"] for p in ep["parameters"]]
            for name, ep in info["named_endpoints"].items()} == API


# Each call: a small valid request with one value changed, and the page's message for it.
# "{picture}" and the like name an upload (see `files`).
VALID = {"/sample": {"n": 1, "steps": 2},
         "/inpaint": {"image": {"background": "{picture}", "layers": ["{mask}"]}, "n": 1,
                      "steps": 2},
         "/trajectory": {"n": 1, "steps": 2},
         "/blend": {"image_a": "{picture}", "image_b": "{picture}", "n": 2}}
BAD_CALLS = [
    ("/sample", {"n": 10_000}, "number of images must be between 1 and 64, got 10000"),
    ("/sample", {"steps": 0}, "steps must be between 2 and 64, got 0"),
    ("/sample", {"n": 2.5}, "number of images must be a whole number, got 2.5"),
    ("/sample", {"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ("/sample", {"guidance": "lots"}, "guidance must be a number, got 'lots'"),
    ("/sample", {"temperature": None}, "temperature must be a number, got None"),
    ("/sample", {"class_label": "Sock"}, "unknown class 'Sock'; classes are"),
    ("/trajectory", {"n": 9}, "number of samples must be between 1 and 8, got 9"),
    ("/blend", {"image_a": "{huge}"}, "image A is 10000x10000 pixels; the limit is 4096 on a side"),
    ("/blend", {"image_b": "{text}"}, "image B is not an image the app can read; upload a PNG"),
    ("/blend", {"image_a": "{animated}"}, "image A is an animation (3 frames); upload a still"),
    ("/blend", {"n": 100}, "number of blend steps must be between 2 and 16, got 100"),
    ("/inpaint", {"image": {"background": "{text}", "layers": ["{mask}"]}},
     "the image is not an image the app can read"),
    ("/inpaint", {"image": {"background": "{picture}", "layers": ["{small_mask}"]}},
     "paint layer 0 is 10x10 but the image is 64x64; make them the same size"),
    ("/inpaint", {"image": {"background": "{picture}", "layers": []}},
     "paint over the region to regenerate"),
    ("/inpaint", {"n": 100}, "number of completions must be between 1 and 16, got 100"),
    ("/inpaint", {"paste": "yes"}, "paste must be true or false, got 'yes'"),
]


def _fill(value, files: dict[str, Path], upload):
    """Placeholders -> uploads: ``upload(path)`` (gradio_client.handle_file for the API, the
    path itself for the handlers in this process)."""
    if isinstance(value, dict):
        return {k: _fill(v, files, upload) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, files, upload) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        return upload(files[value.strip("{}")])
    return value


@pytest.mark.parametrize("endpoint,change,message", BAD_CALLS,
                         ids=[f"{e}-{next(iter(c))}-{i}" for i, (e, c, _) in enumerate(BAD_CALLS)])
def test_a_crafted_call_gets_the_pages_message_and_the_server_keeps_serving(
        client, page, files, endpoint, change, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    call = {**VALID[endpoint], **change}
    with pytest.raises(AppError) as answer:
        client.predict(**_fill(call, files, handle_file), api_name=endpoint)
    said = str(answer.value)
    assert message in said and "\n" not in said
    # the page's handler says the same, given the same values (the API's defaults filled in)
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    local = {p["parameter_name"]: p["parameter_default"] for p in info["parameters"]}
    local.update(_fill(call, files, str))
    with pytest.raises(ValueError) as on_page:
        getattr(page, endpoint.strip("/"))(**local)
    assert str(on_page.value) == said
    # and the server goes on answering
    grid, text = client.predict(n=1, steps=2, seed=len(said), api_name="/sample")
    assert Image.open(grid).size[0] > 0 and text.startswith("1 images")


def test_each_endpoint_answers_a_valid_call(client, files):
    from gradio_client import handle_file
    for endpoint, call in VALID.items():
        out = client.predict(**_fill(call, files, handle_file), api_name=endpoint)
        with Image.open(out[0]) as im:
            assert im.size[0] > 0 and (endpoint != "/trajectory" or im.n_frames == 3)


def test_the_readmes_api_example_runs(server, files, tmp_path, monkeypatch):
    import re
    (code,) = re.findall(r"```python\n(from gradio_client.*?)```",
                         (ROOT / "README.md").read_text(), re.S)
    assert '"http://127.0.0.1:7860/"' in code
    monkeypatch.chdir(tmp_path)
    Image.open(files["picture"]).save("shirt.png")
    Image.open(files["mask"]).save("mask.png")
    Image.new("L", (40, 40), 200).save("boot.png")
    ns: dict = {}
    exec(compile(code.replace('"http://127.0.0.1:7860/"', repr(server.url)), "README.md",
                 "exec"), ns)
    assert ns["text"].startswith("8 images (Sneaker), 16 steps, guidance 0.5")
    with Image.open(ns["gif"]) as gif:
        assert gif.n_frames == 17  # z_T and 16 steps
    for grid, tiles in ((ns["grid"], 8), (ns["filled"], 6), (ns["walk"], 9)):
        with Image.open(grid) as im:  # one row of tiles of 28 px + 2 px padding, at 4x
            assert im.size == (4 * (tiles * 30 + 2), 4 * 32)


# ------------------------------------------------------------------------ file routes
def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _blend_with(url: str, path: str) -> str:
    """/blend called by hand with a path on the server as both images; the event stream."""
    image = {"path": path, "meta": {"_type": "gradio.FileData"}}
    req = urllib.request.Request(url + "gradio_api/call/blend",
                                 data=json.dumps({"data": [image, image, 2]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/blend/{event}", timeout=60) as r:
        return r.read().decode()


def test_file_routes_serve_the_apps_outputs_and_nothing_else(server, runs):
    # what the app made is served ...
    out, _ = _client(server.url, False).predict(n=1, steps=2, api_name="/sample")
    assert _get(server.url + "gradio_api/file=" + out["path"]) == 200
    # ... and nothing else: the run's weights, system files, the working folder, .. paths
    weights = next(runs.prior.rglob("*.safetensors"))
    own = next(server.tmp.glob("bld-serve-*"))
    for path in [str(weights), "/etc/passwd", "README.md", "src/bld/web.py",
                 "../../../../../../etc/passwd", f"{own}/../../../../../../../etc/passwd",
                 f"{own}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 urllib.parse.quote(f"{own}/../../{weights.name}"), str(own)]:
        for route in ("gradio_api/file=", "file="):
            assert _get(server.url + route + path) in (403, 404), route + path
    # nor is a file on the server read when a call names it as an upload: a picture there
    # would blend fine if it were (the refusal comes before the handler, without a message)
    picture = runs.prior / "loss_curves.png"
    assert picture.is_file()
    for path in (str(picture), "/etc/passwd", f"{own}/../../../../../../../etc/passwd"):
        answer = _blend_with(server.url, path)
        assert answer.startswith("event: error") and "image" not in answer, answer


# --------------------------------------------------------------------------- logins
@pytest.fixture
def no_serving(monkeypatch):
    """`bld serve` up to the point where it would start: what it would have been given."""
    calls = []
    monkeypatch.setattr("bld.app.serve.serve", lambda run_dir, **kw: calls.append(kw))
    monkeypatch.delenv(AUTH_ENV, raising=False)
    return calls


@pytest.mark.parametrize("argv,env,message", [
    (["--host", "0.0.0.0"], {}, "--host 0.0.0.0 lets other machines in; give a login with "
                                "--auth USER:PASSWORD, --auth-file FILE or BLD_SERVE_AUTH"),
    (["--host", "192.168.1.20"], {}, "--host 192.168.1.20 lets other machines in"),
    (["--host", "lab-server.example"], {}, "--host lab-server.example lets other machines in"),
    (["--host", "0.0.0.0", "--auth", "alice"], {}, "--auth must be USER:PASSWORD"),
    (["--host", "0.0.0.0", "--auth", ":secret"], {}, "--auth must be USER:PASSWORD"),
    (["--host", "0.0.0.0", "--auth-file", "{missing}"], {}, "cannot read the auth file"),
    (["--host", "0.0.0.0", "--auth-file", "{comments}"], {}, "holds no USER:PASSWORD line"),
    (["--host", "0.0.0.0"], {AUTH_ENV: "alice-secret"}, "BLD_SERVE_AUTH must be USER:PASSWORD"),
    (["--host", "0.0.0.0", "--auth", "alice:secret", "--no-auth"], {}, "--no-auth contradicts"),
])
def test_serving_beyond_loopback_without_a_login_is_refused(
        runs, tmp_path, no_serving, monkeypatch, capsys, argv, env, message):
    (tmp_path / "comments").write_text("# alice:secret is not a login here\n\n")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = [a.format(missing=tmp_path / "missing", comments=tmp_path / "comments") for a in argv]
    assert main(["serve", str(runs.prior), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bld serve: error:") and message in err
    assert "secret" not in err  # a password is never repeated
    assert no_serving == []


@pytest.mark.parametrize("argv,env,auth,warning", [
    ([], {}, None, False),  # loopback: no login needed
    (["--host", "::1"], {}, None, False),
    (["--host", "0.0.0.0", "--auth", "alice:s3:cret"], {}, [("alice", "s3:cret")], False),
    (["--host", "0.0.0.0", "--auth-file", "{logins}"], {},
     [("alice", "s3cret"), ("bob", "hunter2")], False),
    (["--host", "0.0.0.0"], {AUTH_ENV: "alice:s3cret"}, [("alice", "s3cret")], False),
    (["--auth", "alice:s3cret"], {}, [("alice", "s3cret")], False),  # a login on loopback too
    (["--host", "0.0.0.0", "--no-auth"], {}, None, True),
])
def test_serve_takes_its_login_from_the_flag_the_file_or_the_environment(
        runs, tmp_path, no_serving, monkeypatch, capsys, argv, env, auth, warning):
    (tmp_path / "logins").write_text("# who may use the app\nalice:s3cret\n\nbob:hunter2\n")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = [a.format(logins=tmp_path / "logins") for a in argv]
    assert main(["serve", str(runs.prior), *argv]) == 0
    assert [kw["auth"] for kw in no_serving] == [auth]
    err = capsys.readouterr().err
    assert ("bld serve: warning: serving 0.0.0.0:7860 without a login" in err) == warning


def test_a_login_is_asked_for(runs, tmp_path):
    tmp, ctx = _serve(runs.prior, tmp_path, ["--auth", "alice:s3cret"])
    with ctx as s:
        with pytest.raises(Exception, match="credentials were not provided"):
            _client(s.url, False)
        with pytest.raises(ValueError, match="Could not login"):
            _client(s.url, False, auth=("alice", "wrong"))
        logged_in = _client(s.url, tmp_path / "downloads", auth=("alice", "s3cret"))
        _, text = logged_in.predict(n=1, steps=2, api_name="/sample")
        assert text.startswith("1 images")
        assert _get(s.url + "gradio_api/info") == 401  # the API's description too


# ------------------------------------------------------------ the temporary folder
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_the_temporary_folder_is_removed_when_the_server_stops(runs, tmp_path, files, stop):
    from gradio_client import handle_file
    tmp, ctx = _serve(runs.prior, tmp_path)
    with ctx as s:
        client = _client(s.url, tmp_path / "downloads")
        client.predict(n=1, steps=2, api_name="/trajectory")
        client.predict(image_a=handle_file(files["picture"]),
                       image_b=handle_file(files["mask"]), n=2, api_name="/blend")
        (own,) = tmp.glob("bld-serve-*")
        held = {p.suffix for p in own.rglob("*") if p.is_file()}
        assert {".gif", ".png"} <= held  # the animation, the uploads and the results
        s.proc.send_signal(stop)
        assert s.proc.wait(timeout=60) == 0
    assert list(tmp.iterdir()) == []


def test_a_short_load_is_answered_and_the_temporary_folder_stays_bounded(server, tmp_path,
                                                                        monkeypatch):
    """benchmarks/serve_load.py in small: C = 1 and 2 clients x 8 requests over the four
    endpoints, each with a new seed (so more than KEEP new files)."""
    path = ROOT / "benchmarks" / "serve_load.py"
    monkeypatch.syspath_prepend(str(path.parent))  # for its `import common`
    spec = importlib.util.spec_from_file_location("bld_serve_load", path)
    serve_load = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, serve_load)  # dataclasses look their module up
    spec.loader.exec_module(serve_load)
    probe = serve_load.Probe(server.proc.pid, server.tmp)
    levels, milestones = serve_load.drive(server.url, probe, clients=[1, 2], requests=8,
                                          work=tmp_path)
    for level in levels:
        assert level.errors == 0, level.error_messages
        assert level.completed == level.clients * level.requests and level.queue_full == 0
        assert level.images > 0 and len(level.latencies) == level.completed
    files, _ = probe.temp()
    assert 0 < files <= KEEP + 1  # the ring, plus the answer written after the last prune
    assert milestones[0]["rss_mb"] > 0
