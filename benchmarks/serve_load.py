"""`bld serve` under load: C concurrent API clients on loopback (gradio_client, no browser).

Starts `bld serve` on a tiny trained run (trained here in seconds unless --run is given) on
127.0.0.1 at a free port, with a TMPDIR of its own, and drives it through its HTTP API with
C = 1, 4, 16, 32 concurrent clients. Each client makes R requests that cycle through
/sample (10 images, 16 steps), /inpaint (an uploaded picture and mask, 4 completions),
/trajectory (4 samples, an animated GIF) and /blend (two uploads, 9 images), each with a new
seed, so that every answer is a new file for the server to keep or prune.

Per C: requests completed, errors (anything but the queue-full answer, with their messages),
queue-full answers, p50 / p95 latency of completed requests (upload, queue, sampling and the
download of the result), images/s. For the server process: resident memory and its
temporary folder (files, MB) at the start and after every 100 requests (counted over the
whole run: 100, 200, ..., 500, ...) and at their peaks, against the bound the server keeps (`--keep-files` files and
`Limits.keep_mb`). At the end the server gets SIGTERM and its temporary folder must be gone.

Bounded: R requests per client, each waited on for at most --request-timeout seconds, and a
level stops issuing requests after --level-timeout. A client answered "queue full" counts
it, waits a moment and goes on with its next request.

    python benchmarks/serve_load.py                 # C = 1,4,16,32 and R = 20: ~2-5 min
    python benchmarks/serve_load.py --quick         # C = 1,4 and R = 2: < 1 min
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common
from common import base_parser, markdown_table, setup, write_report

log = logging.getLogger("bench")

ENDPOINTS = ("sample", "inpaint", "trajectory", "blend")
IMAGES = {"sample": 10, "inpaint": 4, "trajectory": 4, "blend": 9}  # images in each answer
PROBE_EVERY = 100  # requests answered (over the whole run) between probes of the server


def parse_args():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None,
                   help="a trained run to serve (default: a tiny one trained here)")
    p.add_argument("--clients", default=None, help="comma-separated C (default 1,4,16,32)")
    p.add_argument("--requests", type=int, default=None, help="requests per client (R, default 20)")
    p.add_argument("--keep-files", type=int, default=256, help="the server's --keep-files")
    p.add_argument("--request-timeout", type=float, default=120.0,
                   help="seconds one request may take before it counts as an error")
    p.add_argument("--level-timeout", type=float, default=300.0,
                   help="seconds after which a level issues no new request")
    return p.parse_args()


# ------------------------------------------------------------------------- the server
def tiny_run(work: Path) -> Path:
    """A ~70k-parameter autoencoder and the 'tiny' prior, 6 steps each on 256 images."""
    ae, prior = work / "ae", work / "prior"
    if not (prior / "latest").exists():
        fast = ["--device", "cpu", "--set", "run.sample_every=0", "--set", "data.limit=256"]
        common.run_bld(["train-ae", "--out", str(ae), "--steps", "6", "--batch-size", "16",
                        "--set", "model.channels=8", "--set", "model.hidden=16",
                        "--set", "model.bits=8", *fast])
        common.run_bld(["train-prior", "--out", str(prior), "--autoencoder", str(ae),
                        "--preset", "tiny", "--steps", "6", "--batch-size", "32", *fast])
    return prior


class Probe:
    """Resident memory of the server process and what its TMPDIR holds."""

    def __init__(self, pid: int, tmp: Path) -> None:
        self.pid, self.tmp = pid, tmp

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None  # not Linux, or the process is gone

    def temp(self) -> tuple[int, int]:
        files = size = 0
        for root, _, names in os.walk(self.tmp):
            for name in names:
                try:
                    size += os.lstat(os.path.join(root, name)).st_size
                    files += 1
                except FileNotFoundError:
                    pass
        return files, size

    def __call__(self) -> dict:
        files, size = self.temp()
        return {"rss_mb": self.rss_mb(), "temp_files": files, "temp_mb": size / 2 ** 20}


def write_inputs(folder: Path) -> dict[str, Path]:
    """Two 64 px colour pictures and a mask (white: regenerate) to upload."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 400)
    a = np.stack([xx * 4, yy * 4, 255 - xx * 4], -1).astype(np.uint8)
    b = np.where(disc[..., None], 230, 30).astype(np.uint8).repeat(3, -1)
    mask = np.where(yy >= 32, 255, 0).astype(np.uint8)
    paths = {"a": folder / "a.png", "b": folder / "b.png", "mask": folder / "mask.png"}
    for key, arr in (("a", a), ("b", b), ("mask", mask)):
        Image.fromarray(arr).save(paths[key])
    return paths


def call(client, endpoint: str, seed: int, files: dict[str, Path], timeout: float):
    """One request through the API, waited on for at most ``timeout`` seconds."""
    from gradio_client import handle_file
    if endpoint == "sample":
        kw = dict(n=10, steps=16, seed=seed)
    elif endpoint == "inpaint":
        kw = dict(image={"background": handle_file(files["a"]), "composite": None,
                         "layers": [handle_file(files["mask"])]}, n=4, steps=16, seed=seed)
    elif endpoint == "trajectory":
        kw = dict(n=4, steps=16, seed=seed)
    else:
        kw = dict(image_a=handle_file(files["a"]), image_b=handle_file(files["b"]), n=9)
    job = client.submit(**kw, api_name=f"/{endpoint}")
    try:
        return job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()
        raise


# --------------------------------------------------------------------------- the load
@dataclass
class Level:
    """What C clients x R requests met."""
    clients: int
    requests: int
    completed: int = 0
    errors: int = 0
    queue_full: int = 0
    latencies: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    peak: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)

    def row(self) -> dict:
        lat = sorted(self.latencies)
        pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: None)
        return {"C": self.clients, "R": self.requests, "requests": self.clients * self.requests,
                "completed": self.completed, "errors": self.errors,
                "queue full": self.queue_full,
                "p50 s": statistics.median(lat) if lat else None, "p95 s": pct(0.95),
                "images/s": self.images / self.seconds if self.seconds else None,
                "RSS MB end": self.end.get("rss_mb"), "RSS MB peak": self.peak.get("rss_mb"),
                "temp files end": self.end.get("temp_files"),
                "temp files peak": self.peak.get("temp_files"),
                "temp MB peak": self.peak.get("temp_mb")}


class Tally:
    """Requests answered over the whole run, with a probe at each milestone."""

    def __init__(self, probe: Probe) -> None:
        self.probe, self.count, self.lock = probe, 0, threading.Lock()
        self.milestones = {0: probe()}

    def answered(self) -> None:
        with self.lock:
            self.count += 1
            if self.count % PROBE_EVERY == 0:
                self.milestones[self.count] = self.probe()


def run_level(url: str, clients: int, requests: int, files: dict[str, Path], tally: Tally,
              downloads: Path, request_timeout: float, level_timeout: float) -> Level:
    """C clients, each with its own gradio_client.Client, R requests each."""
    from gradio_client import Client
    from gradio_client.utils import QueueError
    level, lock, stop = Level(clients, requests), threading.Lock(), threading.Event()
    seeds = itertools.count(tally.count * 7 + 1)  # a new seed for every request of the run
    deadline = time.monotonic() + level_timeout

    def client_loop(k: int) -> None:
        client = Client(url, verbose=False, download_files=str(downloads),
                        analytics_enabled=False)
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            endpoint = ENDPOINTS[(k + i) % len(ENDPOINTS)]
            t0 = time.perf_counter()
            try:
                call(client, endpoint, seed=next(seeds), files=files,
                     timeout=request_timeout)
                outcome = "ok"
            except QueueError:
                outcome = "queue full"
            except Exception as e:  # counted and kept: the figure the benchmark is for
                outcome = f"{endpoint}: {type(e).__name__}: {e}".splitlines()[0][:300]
            seconds = time.perf_counter() - t0
            with lock:
                if outcome == "ok":
                    level.completed += 1
                    level.latencies.append(seconds)
                    level.images += IMAGES[endpoint]
                elif outcome == "queue full":
                    level.queue_full += 1
                else:
                    level.errors += 1
                    if len(level.error_messages) < 10:
                        level.error_messages.append(outcome)
            tally.answered()
            if outcome == "queue full":
                stop.wait(0.5)  # back off, as a person would, before the next request

    def watch() -> None:
        while not stop.is_set():
            now = tally.probe()
            for key, value in now.items():
                if value is not None and value > level.peak.get(key, -1):
                    level.peak[key] = value
            stop.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.perf_counter() - t0
    stop.set()
    watcher.join()
    level.end = tally.probe()
    for key, value in level.end.items():
        if value is not None and value > level.peak.get(key, -1):
            level.peak[key] = value
    log.info("C=%d: %d completed, %d errors, %d queue full in %.1f s", clients,
             level.completed, level.errors, level.queue_full, level.seconds)
    return level


def drive(url: str, probe: Probe, clients: list[int], requests: int, work: Path,
          request_timeout: float = 120.0, level_timeout: float = 300.0
          ) -> tuple[list[Level], dict[int, dict]]:
    """All levels against one running server; (levels, probes at the milestones)."""
    files = write_inputs(work / "inputs")
    tally = Tally(probe)
    with tempfile.TemporaryDirectory(dir=work) as downloads:
        levels = [run_level(url, c, requests, files, tally, Path(downloads), request_timeout,
                            level_timeout) for c in clients]
    return levels, tally.milestones


def tally_total(levels: list[Level]) -> int:
    return sum(lv.completed + lv.errors + lv.queue_full for lv in levels)


def main() -> None:
    from bld.app.serve import Limits
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from webcheck import served  # the driver the serving tests use
    args = parse_args()
    clients = [int(c) for c in (args.clients or ("1,4" if args.quick else "1,4,16,32")).split(",")]
    requests = args.requests or (2 if args.quick else 20)
    bench = setup("serve_load", args, expected_full="2-5 min", expected_quick="< 1 min")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per HTTP request otherwise
    threads = str(args.threads or 1)
    with tempfile.TemporaryDirectory(prefix="serve_load-") as work:
        work = Path(work)
        run = args.run or tiny_run(work / "run")
        server_tmp = work / "server-tmp"
        server_tmp.mkdir()
        with served(run, log_path=work / "serve.log", extra=["--keep-files", str(args.keep_files)],
                    env={"TMPDIR": str(server_tmp), "OMP_NUM_THREADS": threads}) as server:
            probe = Probe(server.proc.pid, server_tmp)
            levels, milestones = drive(server.url, probe, clients, requests, work,
                                       args.request_timeout, args.level_timeout)
            milestones["end"] = probe()
        left = sorted(p.name for p in server_tmp.iterdir())
        log_tail = (work / "serve.log").read_text().splitlines()[-5:]
    bound = {"files": args.keep_files, "mb": Limits().keep_mb}
    rows = [lv.row() for lv in levels]
    bench.results.update({"levels": [asdict(lv) | {"row": r} for lv, r in zip(levels, rows)],
                          "milestones": milestones, "bound": bound,
                          "temp_left_after_sigterm": left, "server_log_tail": log_tail})
    probes = [{"after requests": k, **v} for k, v in milestones.items()]
    rss = {k: v["rss_mb"] for k, v in milestones.items() if v["rss_mb"] is not None}
    settled = [k for k in rss if k != "end" and k >= 500]
    memory = ("Resident memory: {:.0f} MB at the start, {:.0f} MB after 500 requests, {:.0f} MB "
              "at the end ({:+.0f} MB over the last {} requests).".format(
                  rss[0], rss[500], rss["end"], rss["end"] - rss[500], tally_total(levels) - 500)
              if 0 in rss and settled else "Resident memory: too few requests to tell.")
    errors = sorted({m for lv in levels for m in lv.error_messages})
    write_report(bench, "`bld serve` under load", [
        f"Server: `bld serve {'RUN' if args.run else 'a tiny run'} --keep-files "
        f"{args.keep_files}` on 127.0.0.1, {threads} torch thread(s), queue of "
        f"{Limits().queue_size}, one model call at a time. Clients: gradio_client, each R "
        "requests cycling /sample (10 images), /inpaint (upload + mask, 4), /trajectory "
        "(4, GIF), /blend (two uploads, 9).", "",
        "## Per number of concurrent clients C", "", markdown_table(rows), "",
        "Latency: submit to downloaded result, completed requests only. Queue full: the "
        "server's immediate answer (HTTP 503, `QueueError: Queue is full! Please try "
        "again.`) when more requests wait than the queue holds.", "",
        "## Server memory and temporary folder over the run", "", markdown_table(probes), "",
        memory, "",
        f"Bound on the temporary folder: the newest {bound['files']} files and at most "
        f"{bound['mb']:g} MB (pruned before every request and every 30 s), plus the answer "
        "being written and the uploads of waiting requests.", "",
        "Temporary folder after SIGTERM: " + ("removed (empty TMPDIR)" if not left else
                                               f"NOT removed: {left}"), "",
        "Errors: " + ("none" if not errors else "; ".join(errors)),
    ])


if __name__ == "__main__":
    main()
