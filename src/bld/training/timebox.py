"""Holding a training run inside a time budget (``run.max_seconds``): the final step count
is re-estimated from the rate measured as the run goes, so a machine that is slower than
its calibration, or loaded by another job halfway, trains fewer steps instead of overrunning
into the next stage's share. The lr schedule follows the final count (`bld.training.loop`).

The estimate: after ``warmup`` steps (the first ones pay for caches and allocations), and
then every ``every`` steps, the seconds per step over the last stretch give the steps that
fit the seconds left; the count never exceeds the configured ``optim.steps`` and never falls
below the step reached. A run past its budget stops at the next step. The seconds already
trained and the count travel in the checkpoint, so a resumed run keeps its budget.
Imports nothing of bld.
"""

from __future__ import annotations

import math
import time
from typing import Any

WARMUP_STEPS = 10  # steps before the first estimate (at most a tenth of the run)
RECHECK_SHARE = 0.04  # re-estimate every this share of the configured steps
_clock = time.perf_counter  # the clock a TimeBox reads unless given one


class TimeBox:
    """The final step count of a run with ``max_seconds`` (0: no budget, the configured
    ``steps`` as they are)."""

    def __init__(self, max_seconds: float, steps: int, start: int = 0,
                 state: dict[str, Any] | None = None, clock=None) -> None:
        state = state or {}
        self.max_seconds, self.steps = float(max_seconds), steps
        self.clock = clock or _clock
        self.final = int(state.get("timebox_final_steps", steps)) if max_seconds else steps
        self.spent_before = float(state.get("timebox_seconds", 0.0))  # before this process
        self.t0 = self.clock()
        self.warmup = max(1, min(WARMUP_STEPS, steps // 10))
        self.every = max(1, round(RECHECK_SHARE * steps))
        self.start = start
        self.mark: tuple[int, float] | None = None  # (step, time) the stretch starts at
        self.estimates: list[tuple[int, int]] = []  # (at step, final count) as re-estimated

    @property
    def active(self) -> bool:
        return self.max_seconds > 0

    def elapsed(self) -> float:
        """Seconds this run has trained, earlier processes of a resumed run included."""
        return self.spent_before + self.clock() - self.t0

    def due(self, step: int) -> bool:
        """Whether ``after_step`` looks at the clock after ``step`` steps: at the end of the
        warm-up and every ``every`` steps after it (the same steps on every process, so that
        processes of one run can agree on rank 0's count)."""
        if not self.active:
            return False
        if self.mark is None:
            return step - self.start == self.warmup
        return step - self.mark[0] >= self.every

    def after_step(self, step: int) -> bool:
        """Call with the number of steps done where `due`; True where the final count
        changed: to the steps that fit the seconds left at the last stretch's rate, or to
        ``step`` where the budget is spent."""
        if not self.due(step):
            return False
        now = self.clock()
        left = self.max_seconds - (self.spent_before + now - self.t0)
        if left <= 0:
            return self.adopt(step, step)
        if self.mark is None:
            self.mark = (step, now)
            return False
        per_step = (now - self.mark[1]) / (step - self.mark[0])
        self.mark = (step, now)
        fits = step + math.floor(left / per_step) if per_step > 0 else self.steps
        return self.adopt(step, max(step, min(self.steps, fits)))

    def adopt(self, step: int, final: int) -> bool:
        """Adopt ``final`` (another process's, where rank 0 decides) as the count."""
        if final == self.final:
            return False
        self.final = final
        self.estimates.append((step, final))
        return True

    def metadata(self) -> dict[str, Any]:
        """The budget and how the count moved, for the checkpoint's metadata and reports."""
        if not self.active:
            return {}
        return {"max_seconds": self.max_seconds, "configured_steps": self.steps,
                "final_steps": self.final, "trained_seconds": round(self.elapsed(), 1),
                "estimates": [list(e) for e in self.estimates]}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the budget."""
        if not self.active:
            return {}
        return {"timebox_final_steps": self.final, "timebox_seconds": self.elapsed()}
