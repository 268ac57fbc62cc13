"""Device and precision: bf16 autocast only where the hardware runs it natively and faster, fp32 elsewhere.

One setting, ``precision: auto | fp32 | bf16``, used by every command that trains, samples,
evaluates or serves. ``auto`` resolves, once per process and device kind, to

* CUDA: bf16 where ``torch.cuda.is_bf16_supported()`` (nanoGPT's rule), else fp32;
* CPU: bf16 only where oneDNN has native bf16 kernels (AVX-512-BF16 / AMX) **and** a short
  matmul timing at start (about a quarter of a second) finds bf16 faster than fp32 by a
  margin; on a CPU without native bf16 (AVX2: most laptops) bf16 autocast runs many times
  slower than fp32, so fp32;
* any other device: fp32.

The choice and its reason are logged once and written into run metadata and reports, e.g.
``fp32: this CPU has no native bf16 (AVX2)``.

Also the device itself: `resolve_device` (``--device auto | cpu | cuda``) and `autocast`, the
one wrapper every loop enters. Imports bld's config (the precision names and ConfigError).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, check_precision

log = logging.getLogger("bld")

# bf16 must beat fp32 by this factor in the start-up timing to be chosen on a CPU: the
# models' mix of matmuls, convolutions and element-wise work gains less than a bare matmul
CPU_BF16_MIN_SPEEDUP = 1.5


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32 or bf16; ``reason`` says why, for logs and reports."""
    name: str
    reason: str
    requested: str = "auto"

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self, device: torch.device | str):
        """bf16 autocast on ``device``'s type, or a no-op for fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.name, "precision_requested": self.requested,
                "precision_reason": self.reason}



def cpu_bf16_facts() -> tuple[str, bool]:
    """(torch's CPU capability, e.g. 'AVX2' / 'AVX512', whether oneDNN has native bf16)."""
    cap = torch.backends.cpu.get_cpu_capability()
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return cap, native


def matmul_rates(n: int = 512, seconds: float = 0.25) -> tuple[float, float]:
    """GFLOP/s of an n x n matmul on the CPU in fp32 and under bf16 autocast.

    The two are timed in alternation and the best of each kept, so that other work on a
    shared machine slows both alike instead of deciding the comparison.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    best = [float("inf"), float("inf")]
    with torch.no_grad():
        for _ in range(3):  # warm-up: thread pool start, kernel selection, packing
            a @ b
            with bf16:
                a @ b
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for i, ctx in enumerate((contextlib.nullcontext(), bf16)):
                with ctx:
                    t0 = time.perf_counter()
                    a @ b
                    best[i] = min(best[i], time.perf_counter() - t0)
    return 2 * n ** 3 / best[0] / 1e9, 2 * n ** 3 / best[1] / 1e9


@functools.lru_cache(maxsize=None)
def _auto(device_type: str) -> Precision:
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "bf16: this CUDA GPU supports bf16")
        return Precision("fp32", "fp32: this CUDA GPU has no bf16 support")
    if device_type != "cpu":
        return Precision("fp32", f"fp32: bf16 autocast is not used on {device_type}")
    cap, native = cpu_bf16_facts()
    if not native:
        return Precision("fp32", f"fp32: this CPU has no native bf16 ({cap})")
    f32, b16 = matmul_rates()
    speedup = b16 / f32
    if speedup < CPU_BF16_MIN_SPEEDUP:
        return Precision("fp32", f"fp32: this CPU has native bf16 ({cap}) but its bf16 matmul "
                                 f"measured only {speedup:.1f}x fp32")
    return Precision("bf16", f"bf16: this CPU runs bf16 natively ({cap}); bf16 matmul measured "
                             f"{speedup:.1f}x fp32")


_logged: set[tuple[str, str]] = set()


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> Precision:
    """The precision to run in on ``device``: ``requested`` unless it is ``auto``.

    ``auto`` is decided once per process and device kind (see the module docstring); the
    choice and its reason are logged the first time.
    """
    check_precision(requested)
    device_type = torch.device(device).type
    slow = False
    if requested == "auto":
        p = _auto(device_type)
    elif requested == "fp32":
        p = Precision("fp32", "fp32: asked for (precision fp32)", "fp32")
    else:
        reason = "bf16: asked for (precision bf16)"
        if device_type == "cpu":
            cap, native = cpu_bf16_facts()
            slow = not native
            if slow:
                reason += f"; this CPU has no native bf16 ({cap}), so it runs slower than fp32"
        p = Precision("bf16", reason, "bf16")
    if (requested, device_type) not in _logged:
        _logged.add((requested, device_type))
        level = logging.WARNING if slow else logging.INFO if requested == "auto" else logging.DEBUG
        log.log(level, "precision %s", p.reason)
    return p


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast on ``device`` when ``precision`` (auto | fp32 | bf16) resolves to bf16."""
    return resolve_precision(precision, device).autocast(device)


# ------------------------------------------------------------------ the machine itself
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the platform's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the environment variables that restrict the instruction sets oneDNN / ATen / MKL use (how
# an AVX2-only CPU is emulated on a newer one)
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_facts() -> dict[str, Any]:
    """torch's CPU capability, native bf16, and any instruction-set restriction in force."""
    cap, native = cpu_bf16_facts()
    return {"capability": cap, "native_bf16": native,
            "restricted_by": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
