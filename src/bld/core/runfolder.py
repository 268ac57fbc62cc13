"""A run folder: its checkpoints/step_NNNNNN folders, the `latest` pointer, pruning, and the
run.lock that keeps a second run out.

    <run>/
        checkpoints/step_000123/   one checkpoint each (`bld.core.checkpoint`); complete once it
                                   holds config.json, which save_checkpoint writes last
        latest                     the newest checkpoint's path, relative to the run folder
        run.lock                   held by the run writing here (RunLock): an advisory flock,
                                   so a second run is refused, and a lock left by a killed
                                   process (the kernel drops it) is taken over

Every change is atomic: `latest` is replaced by a rename, a pruned checkpoint is renamed to
a hidden name before it is deleted, and a save killed between its two renames is undone
(`recover_interrupted`). Imports no bld module; `bld.core.checkpoint` imports this one and
exports its names.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

logger = logging.getLogger("bld.core.checkpoint")

CONFIG_FILE = "config.json"
LATEST_FILE = "latest"
CHECKPOINTS_SUBDIR = "checkpoints"
LOCK_FILE = "run.lock"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""



def fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def _stale_siblings(path: Path, tag: str) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.{tag}-*"))


def recover_interrupted(path: Path) -> None:
    """If a save was killed between moving the old checkpoint away and moving the new one in,
    put the old one back under its name."""
    if path.exists():
        return
    for old in _stale_siblings(path, "old"):
        if (old / CONFIG_FILE).is_file():
            logger.warning("restoring %s from %s (an earlier save was interrupted)", path, old)
            os.rename(old, path)
            return



def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """run_dir/checkpoints/step_000123."""
    return Path(run_dir) / CHECKPOINTS_SUBDIR / f"step_{int(step):06d}"


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step_* checkpoints (holding config.json), oldest first. Hidden temp folders
    (.step_*.tmp-*, .step_*.old-*) never match."""
    folder = run_dir / CHECKPOINTS_SUBDIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / CONFIG_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_latest(run_dir: str | os.PathLike, step_dir: str | os.PathLike) -> None:
    """Atomically point run_dir/latest at step_dir (stored relative to run_dir when inside it)."""
    run_dir, step_dir = Path(run_dir), Path(step_dir)
    try:
        target = step_dir.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        target = str(step_dir.resolve())
    fd, tmp = tempfile.mkstemp(prefix=f".{LATEST_FILE}.tmp-", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(target + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / LATEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(run_dir)


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint run_dir/latest names, if complete; else the highest-step complete
    checkpoints/step_* folder; None if there is none."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST_FILE
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        target = run_dir / name if name else None
        if target is not None and (target / CONFIG_FILE).is_file():
            return target
        logger.warning("%s names %r, which is not a complete checkpoint; using the newest step folder",
                       latest, name)
    dirs = _step_dirs(run_dir)
    return dirs[-1][1] if dirs else None


def resume_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints to try when resuming, best first: the one `latest` names (or the newest),
    then the other complete step folders, newest first."""
    first = find_latest(run_dir)
    rest = [p for _, p in reversed(_step_dirs(Path(run_dir))) if first is None or p != first]
    return ([first] if first is not None else []) + rest


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` highest-step checkpoints (never the one `latest` names).
    Each is renamed to a hidden name before deletion, so no half-deleted folder keeps a
    checkpoint's name. Leftovers of killed saves/deletions (hidden .*.tmp-*, .*.old-*,
    .*.deleting-* folders) are removed too, so call it only while no save is running.
    Returns the deleted checkpoint paths."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINTS_SUBDIR
    if folder.is_dir():
        for p in list(folder.iterdir()):
            m = re.fullmatch(r"\.(.+)\.(tmp|old|deleting)-\w+", p.name)
            if m and p.is_dir():
                if m.group(2) == "old":
                    recover_interrupted(folder / m.group(1))  # the only copy if its save was killed
                if p.exists():
                    shutil.rmtree(p, ignore_errors=True)
    latest = find_latest(run_dir)
    protected = latest.resolve() if latest is not None else None
    removed = []
    for _, p in _step_dirs(run_dir)[:-keep]:
        if p.resolve() == protected:
            continue
        doomed = p.parent / f".{p.name}.deleting-{uuid.uuid4().hex[:8]}"
        os.rename(p, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    return removed



class RunLock:
    """An exclusive advisory lock on a run folder, held from acquire() to release().

    `run.lock` holds the owner's pid and host (for the message a second run gets). The lock is
    a `flock` on that file, which the kernel drops when the process dies, so a lock left by a
    killed run never blocks the next one: its file is simply taken over.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
                raise RunLockedError(
                    f"{self.path.parent} is in use by another run ({who}; lock file {self.path}). "
                    "Wait for it to finish, or choose another --out folder.") from None
            try:  # the holder may have removed the file between our open and flock: retry
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = os.read(fd, 200).decode(errors="replace").split()
        if stale:
            logger.warning("taking over %s left by pid %s on %s, which no longer holds it",
                           self.path, *(stale + ["?"])[:2])
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked, so no one inherits a stale file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
