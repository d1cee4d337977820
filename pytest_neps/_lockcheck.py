"""Lock checks across processes: overlap detected two ways, and killed holders.

Each critical section claims an occupancy marker (``O_EXCL`` create, removed at
the end) and does a read-modify-write of a counter file. With a working lock
there is never an overlap and never a lost increment.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from neps_state import Settings
from neps_state._locks import FileLocker
from pytest_neps._procs import Group, Task, run_tasks


def critical_sections(lock_path: Path, directory: Path, n: int, *, noop: bool = False) -> int:
    """Run ``n`` critical sections; return how many found the occupancy marker taken."""
    locker = FileLocker(lock_path, Settings(lock_timeout=120))
    counter, occupancy = directory / "counter", directory / "occupied"
    overlaps = 0
    for _ in range(n):
        section: AbstractContextManager[Any] = nullcontext() if noop else locker.lock()
        with section:
            try:
                os.close(os.open(occupancy, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                owned = True
            except FileExistsError:
                overlaps += 1
                owned = False
            value = int(counter.read_text() or "0")
            os.sched_yield()  # widen the read-modify-write window
            counter.write_text(str(value + 1))
            if owned:
                occupancy.unlink()
    return overlaps


def contend(
    directory: Path, *, procs: int = 8, n: int = 500, noop: bool = False, timeout: float = 600
) -> tuple[int, int]:
    """``procs`` processes x ``n`` sections; return (final counter, overlaps seen)."""
    (directory / "counter").write_text("0")
    lock = directory / "x.lock"
    tasks = [
        Task(f"p{i}", critical_sections, (lock, directory, n), {"noop": noop}) for i in range(procs)
    ]
    outcomes = run_tasks(tasks, timeout=timeout)
    lost = [o.describe() for o in outcomes if not o.ok]
    if lost:
        raise AssertionError("contending processes died:\n" + "\n".join(lost))
    return int((directory / "counter").read_text()), sum(o.value for o in outcomes)


def hold_lock(lock_path: Path, release: Any, held: Any) -> None:
    """Take the lock, say so, and keep it until told to release it."""
    with FileLocker(lock_path, Settings()).lock():
        held.set()
        release.wait(600)


def wait_after_killed_holder(lock_path: Path, timeout: float = 30) -> float:
    """Kill a process holding ``lock_path`` mid-section; return how long the next taker waited."""
    group = Group("spawn")
    try:
        release, held = group.ctx.Event(), group.ctx.Event()
        group.start(Task("holder", hold_lock, (lock_path, release, held)))
        if not held.wait(timeout):
            raise AssertionError("the holder never took the lock")
        group.kill("holder")
        start = time.monotonic()
        with FileLocker(lock_path, Settings(lock_timeout=timeout)).lock():
            return time.monotonic() - start
    finally:
        group.close()
