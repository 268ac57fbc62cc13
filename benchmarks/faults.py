"""Fault matrix: kill -9 `bld train-ae` (GAN on, fp32), `bld train-prior` (bf16
and fp32) and `bld encode` at random moments, resume each time, and compare the end result with
an unbroken run.

Each job first runs once unbroken (the reference, timed). Then a second run of the same
command is started and sent SIGKILL at a random moment, again and again (at least --kills
times; a run that finishes before its kill does not count), each time restarted with
`--resume` once a checkpoint exists. Checkpoints are written every step, so many kills land
while one is being written. After every kill the run folder must load (`latest` or the newest
complete checkpoint), and no half-written file may sit under a final name. The last start runs
to the end; its final weights (model and EMA; for encode the cache file) are compared with the
reference's, bitwise.

Sizes are tiny (a ~70k-parameter autoencoder, the 'tiny' prior, 128 Fashion-MNIST images,
batches that cross an epoch boundary every 8 / 4 steps), so the whole matrix takes minutes.

    python benchmarks/faults.py            # >= 20 kills per job; writes results/faults.{json,md}
    python benchmarks/faults.py --quick    # 3 kills per job
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401  (sys.path fix-up before bld is imported)
import torch
from common import base_parser, markdown_table, setup, write_report

from bld.core import checkpoint as ckpt
from bld.core import runfolder

ROOT = Path(__file__).resolve().parent.parent
TINY_AE = ["--set", "model.channels=8", "--set", "model.hidden=16", "--set", "model.bits=8",
           "--set", "data.limit=128", "--batch-size", "16", "--set", "optim.warmup=4",
           "--set", "loss.disc_start=4", "--set", "loss.disc_channels=8",
           "--set", "loss.disc_layers=2", "--no-bf16"]
TINY_PRIOR = ["--preset", "tiny", "--batch-size", "32", "--set", "optim.warmup=4",
              "--set", "model.dropout=0.1"]
COMMON = ["--set", "run.log_every=1", "--set", "run.ckpt_every=1", "--set", "run.sample_every=0",
          "--set", "run.threads=1", "--device", "cpu", "--seed", "3"]


@dataclass
class Job:
    name: str
    argv: list[str]  # without --out
    kind: str  # autoencoder | prior | encode
    promise: str  # what the comparison with the unbroken run must show
    out_is_file: bool = False

    @property
    def steps(self) -> int:
        return int(self.argv[self.argv.index("--steps") + 1]) if "--steps" in self.argv else 0


@dataclass
class Outcome:
    job: str
    kills: int = 0  # SIGKILLs that hit a running process
    mid_write: int = 0  # ... of which left a checkpoint / cache write half done
    before_first_checkpoint: int = 0
    finished_early: int = 0  # starts that ended before their kill (not counted as kills)
    starts: int = 0
    folder_loadable_after_every_kill: bool = True
    finished: bool = False
    bitwise_equal: bool = False
    max_abs_diff: float = float("nan")
    promise: str = ""
    problems: list[str] = field(default_factory=list)


def bld(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "bld.app.cli", *map(str, argv)]


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def timed_run(argv: list[str], started: Path | None = None) -> tuple[float, float]:
    """Run to the end; (seconds in all, seconds until ``started`` appeared: the start-up)."""
    t = time.perf_counter()
    proc = subprocess.Popen(bld(argv), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    startup = None
    while proc.poll() is None:
        if startup is None and started is not None and started.exists():
            startup = time.perf_counter() - t
        time.sleep(0.01)
    total = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed: {' '.join(map(str, argv))}\n"
                         f"{proc.stderr.read()[-3000:]}")
    return total, startup if startup is not None else 0.5 * total


def half_written(out: Path, is_file: bool) -> bool:
    """A save in progress when the kill came: hidden temp folders / files beside the result."""
    if is_file:
        return out.with_name(f".{out.name}.tmp").exists()
    folder = out / runfolder.CHECKPOINTS_SUBDIR
    hidden = [p for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []
    return bool(hidden) or any(out.glob(f".{runfolder.LATEST_FILE}.tmp-*"))


def tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, float]:
    if a.keys() != b.keys():
        return False, float("inf")
    same = all(torch.equal(a[k], b[k]) for k in a)
    diff = max((float((a[k].double() - b[k].double()).abs().max()) for k in a
                if a[k].is_floating_point() and a[k].numel()), default=0.0)
    return same, diff


def compare(job: Job, ref: Path, got: Path, o: Outcome) -> None:
    if job.out_is_file:  # tensors and metadata (safetensors orders its header freely)
        from safetensors import safe_open
        with safe_open(str(ref), "pt") as fa, safe_open(str(got), "pt") as fb:
            same_meta = fa.metadata() == fb.metadata()
            eq, o.max_abs_diff = tensors_equal({k: fa.get_tensor(k) for k in fa.keys()},
                                               {k: fb.get_tensor(k) for k in fb.keys()})
        o.bitwise_equal = eq and same_meta
        return
    a, b = ckpt.load_checkpoint(ref, job.kind), ckpt.load_checkpoint(got, job.kind)
    if a.step != b.step:
        o.problems.append(f"final steps differ: {a.step} vs {b.step}")
    eq_m, d_m = tensors_equal(a.model_state, b.model_state)
    eq_e, d_e = tensors_equal(a.ema_state, b.ema_state)
    o.bitwise_equal, o.max_abs_diff = eq_m and eq_e, max(d_m, d_e)


def run_job(job: Job, work: Path, kills: int, rng: random.Random, log=print) -> Outcome:
    """Reference run, then a run killed at least ``kills`` times and resumed to the end."""
    o = Outcome(job.name, promise=job.promise)
    ref = work / f"{job.name}-reference"
    got = work / f"{job.name}-killed"
    started = None if job.out_is_file else ref / runfolder.LOCK_FILE  # taken once the model is built
    t_ref, t_start = timed_run([*job.argv, "--out", ref], started)
    t_work = t_ref - t_start
    log(f"{job.name}: unbroken run {t_ref:.1f} s ({t_start:.1f} s start-up)")
    while True:
        resume = (not job.out_is_file) and runfolder.find_latest(got) is not None
        argv = [*job.argv, "--out", got, *(["--resume"] if resume else [])]
        o.starts += 1
        if o.kills >= kills:  # enough: let this one finish
            res = subprocess.run(bld(argv), env=env(), capture_output=True, text=True, check=False)
            o.finished = res.returncode == 0
            if not o.finished:
                o.problems.append(f"final run exited {res.returncode}: {res.stderr[-500:]}")
            break
        proc = subprocess.Popen(bld(argv), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if job.out_is_file:
                proc.wait(timeout=rng.uniform(0.3, 1.0) * t_ref)
            else:
                wait_for_a_moment(proc, got, job.steps, kills - o.kills, t_start,
                                  t_work / job.steps, rng)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            o.kills += 1
            o.mid_write += half_written(got, job.out_is_file)
            if not job.out_is_file and runfolder.find_latest(got) is None:
                o.before_first_checkpoint += 1
            check_loadable(job, got, o)
            continue
        err = proc.stderr.read()
        if proc.returncode != 0:
            o.problems.append(f"start {o.starts} exited {proc.returncode}: {err[-500:]}")
            break
        o.finished_early += 1
        if job.out_is_file:  # a finished encode: start over to be killed again
            got.unlink()
        else:  # a finished training run: start a new one in a fresh folder would lose the kills
            o.finished = True
            break
    if o.finished:
        compare(job, ref, got, o)
    log(f"{job.name}: {o.kills} kills ({o.mid_write} mid-write), {o.starts} starts, "
        f"bitwise equal: {o.bitwise_equal}")
    return o


def current_step(out: Path) -> int:
    """The step of the checkpoint `latest` names (0 before the first)."""
    try:
        m = re.search(r"step_(\d+)", (out / runfolder.LATEST_FILE).read_text())
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def wait_for_a_moment(proc: subprocess.Popen, out: Path, total: int, kills_left: int,
                      t_start: float, t_step: float, rng: random.Random) -> None:
    """Wait for a random moment of a training run, then raise TimeoutExpired (the caller
    kills); return if the run ends first. 1 in 10: during the start-up (loading data, building
    the model, resuming); else once the run is a random number of steps further (at most its
    share of what is left, so the kills never run out of steps), then either the moment the
    next checkpoint write is seen under way, or a random instant within a step."""
    def poll_until(done, limit: float) -> None:
        t0 = time.perf_counter()
        while proc.poll() is None:
            if done() or time.perf_counter() - t0 > limit:
                raise subprocess.TimeoutExpired(proc.args, limit)
            time.sleep(0.0005)

    if rng.random() < 0.1:
        proc.wait(timeout=rng.uniform(0.2, 1.0) * t_start)  # TimeoutExpired: still running
        return
    now = current_step(out)
    target = now + rng.randint(1, max(1, (total - now - 1) // (kills_left + 1)))
    try:
        poll_until(lambda: current_step(out) >= target, 20 * (t_start + total * t_step))
    except subprocess.TimeoutExpired:
        pass
    else:
        return  # it ended
    folder = out / runfolder.CHECKPOINTS_SUBDIR
    if rng.random() < 0.5:  # the moment a checkpoint write is under way
        poll_until(lambda: any(n.startswith(".step_") and ".tmp-" in n
                               for n in os.listdir(folder)), 10 * t_step + 1)
    else:
        proc.wait(timeout=rng.uniform(0, t_step))


def check_loadable(job: Job, got: Path, o: Outcome) -> None:
    """After a kill: what is there under its final name is complete."""
    try:
        if job.out_is_file:
            if got.exists():
                from bld.core.loading import load_latent_cache
                load_latent_cache(got)
        elif runfolder.find_latest(got) is not None:
            ckpt.load_checkpoint(got, job.kind).trainer_state()
    except Exception as e:  # noqa: BLE001  (any failure is a finding)
        o.folder_loadable_after_every_kill = False
        o.problems.append(f"after kill {o.kills}: {type(e).__name__}: {e}")


def make_jobs(work: Path, steps_ae: int, steps_prior: int) -> tuple[list[Job], list[str]]:
    ae = work / "ae-for-prior"
    latents = work / "latents.safetensors"
    prep = [["train-ae", "--out", ae, *TINY_AE, *COMMON, "--steps", "8"],
            ["encode", "--autoencoder", ae, "--out", latents, "--limit", "128", "--device", "cpu",
             "--batch-size", "64"]]
    jobs = [
        Job("train-ae (fp32, GAN on)", ["train-ae", *TINY_AE, *COMMON, "--steps", str(steps_ae)],
            "autoencoder", "bitwise equal (fp32)"),
        Job("train-prior (bf16)", ["train-prior", "--autoencoder", ae, "--latents", latents,
                                   *TINY_PRIOR, *COMMON, "--precision", "bf16",
                                   "--steps", str(steps_prior)],
            "prior", "bitwise equal (CPU, same thread count)"),
        Job("train-prior (fp32)", ["train-prior", "--autoencoder", ae, "--latents", latents,
                                   *TINY_PRIOR, *COMMON, "--no-bf16", "--steps", str(steps_prior)],
            "prior", "bitwise equal (fp32)"),
        Job("encode", ["encode", "--autoencoder", ae, "--limit", "2048", "--device", "cpu",
                       "--batch-size", "64", "--split", "all"],
            "encode", "the same tensors and metadata (a killed encode starts over)",
            out_is_file=True),
    ]
    return jobs, prep


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per job (at least)")
    args = p.parse_args()
    kills = 3 if args.quick else args.kills
    bench = setup("faults", args, expected_full="5-10 min", expected_quick="< 2 min")
    rng = random.Random(args.seed)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bld-faults-") as tmp:
        work = Path(tmp)
        jobs, prep = make_jobs(work, steps_ae=24 if args.quick else 40,
                               steps_prior=24 if args.quick else 60)
        for argv in prep:
            timed_run(argv)
        for job in jobs:
            outcomes.append(run_job(job, work, kills, rng, log=common.log.info))
    rows = [{"job": o.job, "SIGKILLs": o.kills, "mid-write": o.mid_write,
             "before 1st ckpt": o.before_first_checkpoint, "starts": o.starts,
             "loadable after each kill": "yes" if o.folder_loadable_after_every_kill else "NO",
             "finished": "yes" if o.finished else "NO",
             "bitwise equal": "yes" if o.bitwise_equal else "no",
             "max abs diff": o.max_abs_diff, "promise": o.promise} for o in outcomes]
    bench.results = {"kills_per_job": kills, "outcomes": [vars(o) for o in outcomes]}
    problems = [f"- {o.job}: {p}" for o in outcomes for p in o.problems]
    write_report(bench, "Fault matrix: kill -9 and resume", [
        "Each job: one unbroken run, then a run SIGKILLed at random moments (checkpoints every "
        "step, so kills land mid-write too) and restarted with --resume until it finishes; "
        "final weights compared with the unbroken run.", "",
        markdown_table(rows), "", *(["Problems:", *problems] if problems else ["No problems."])])
    if problems or not all(o.finished for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
