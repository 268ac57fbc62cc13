"""run.max_seconds: a run re-estimates its final step count from the measured rate and ends
inside its budget, on a machine that slows down halfway too; the lr schedule follows the
count; a resumed run keeps what it has spent. Time is a fake clock here, never measured."""

from __future__ import annotations

import csv

import pytest

from bld.training.timebox import TimeBox


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(box: TimeBox, clock: FakeClock, seconds_per_step, start: int = 0) -> int:
    """Train until the box's final count: the k-th step takes seconds_per_step(k)."""
    step = start
    while step < box.final:
        clock.now += seconds_per_step(step)
        step += 1
        box.after_step(step)
    return step


def test_no_budget_keeps_the_configured_steps():
    clock = FakeClock()
    box = TimeBox(0, 200, clock=clock)
    assert not box.active and box.final == 200 and not box.due(10)
    assert run(box, clock, lambda k: 5.0) == 200 and box.state() == {} and box.metadata() == {}


def test_a_slow_machine_trains_the_steps_that_fit():
    clock = FakeClock()
    box = TimeBox(60.0, 200, clock=clock)  # 1 s a step: 60 of the 200 fit
    done = run(box, clock, lambda k: 1.0)
    assert 58 <= done <= 60 and clock.now <= 60.0
    assert box.metadata()["final_steps"] == done and box.metadata()["estimates"]


def test_a_fast_machine_trains_every_step():
    clock = FakeClock()
    box = TimeBox(60.0, 200, clock=clock)
    assert run(box, clock, lambda k: 0.1) == 200 and box.estimates == []


def test_a_load_halfway_cuts_the_rest_and_keeps_the_budget():
    # 0.25 s a step until step 100, then 1 s (another job took the cores): the first
    # estimate fits all 200 steps in 100 s; the load brings the count down
    clock = FakeClock()
    box = TimeBox(100.0, 200, clock=clock)
    done = run(box, clock, lambda k: 0.25 if k < 100 else 1.0)
    assert 100 < done < 180
    # it overruns by at most one stretch between two estimates at the slow rate
    assert clock.now <= 100.0 + box.every * 1.0
    assert box.estimates[0][0] > 100  # no cut before the load came


def test_a_resumed_run_keeps_what_it_spent():
    clock = FakeClock()
    box = TimeBox(60.0, 200, clock=clock)
    step = 0
    while step < 30:
        clock.now += 1.0
        step += 1
        box.after_step(step)
    state = box.state()
    assert state["timebox_seconds"] == pytest.approx(30.0)
    later = TimeBox(60.0, 200, start=30, state=state, clock=clock)  # a new process
    assert later.final == box.final and later.elapsed() == pytest.approx(30.0)
    done = run(later, clock, lambda k: 1.0, start=30)
    assert 55 <= done <= 60


def test_train_ae_with_max_seconds_stops_early_and_decays_its_lr(tmp_path, monkeypatch,
                                                                  tiny_ae_args, fashion_mnist):
    """The loop itself: every read of the clock is one second later, so a budget of 25 s
    holds a 60-step run to fewer steps, whose lr schedule ends where a run of that many
    steps would, and the checkpoint records the count."""
    import bld.training.timebox as timebox
    from bld.app.cli import main
    from bld.core.checkpoint import load_checkpoint
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(timebox, "_clock", lambda: float(next(ticks)))
    out = tmp_path / "ae"
    assert main(["train-ae", "--out", str(out), *tiny_ae_args, "--steps", "60",
                 "--set", "run.max_seconds=25", "--set", "run.log_every=1",
                 "--set", "optim.warmup=2", "--set", "run.ckpt_every=0"]) == 0
    ck = load_checkpoint(out)
    box = ck.metadata["timebox"]
    assert ck.step == box["final_steps"] < 60 and box["configured_steps"] == 60
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) == ck.step
    cfg = ck.config["optim"]
    assert float(rows[-1]["lr"]) < cfg["lr"] * (cfg["min_lr_ratio"] + 0.1)
