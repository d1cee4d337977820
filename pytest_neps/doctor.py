"""Whether a directory's file system gives the state what it relies on, tried there.

    neps-state doctor DIR

Each check runs in a fresh folder inside ``DIR`` (removed afterwards), with real
processes where it is about processes:

- ``flock``: a second process cannot take a lock a first one holds, and takes it
  once released (the state's only mutual exclusion);
- ``rename``: a file replaced by a rename is never seen missing or partial by a
  reader process polling it;
- ``append``: two processes appending whole records with ``O_APPEND`` lose and
  interleave none;
- ``fsync``: files and folders can be fsynced;
- ``exchange``: ``renameat2(RENAME_EXCHANGE)`` swaps two names (where it cannot,
  the state falls back to a link and a rename, tried too);
- timings: a file creation and an fsynced append (medians of 30).

A failed check of the first four makes the verdict *unsafe* (the command exits 1):
the state would not be correct there. A missing ``exchange`` or slow operations
are notes.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neps_state._io import exchange

RECORD = b"r" * 63 + b"\n"


@dataclass
class Check:
    """One check: its name, whether it passed, what was seen."""

    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass
class Diagnosis:
    """Every check of one directory."""

    directory: Path
    checks: list[Check] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def safe(self) -> bool:
        """Every required check passed."""
        return all(c.ok for c in self.checks if c.required)

    def render(self) -> str:
        """A line per check, the timings, then the verdict."""
        lines = [f"{self.directory}:"]
        for c in self.checks:
            mark = "ok" if c.ok else ("UNSAFE" if c.required else "note")
            lines.append(f"  [{mark:>6}] {c.name}: {c.detail}")
        lines += [f"  {name}: {ms:.3f} ms (median of 30)" for name, ms in self.timings_ms.items()]
        verdict = "safe for neps_state" if self.safe else "UNSAFE for neps_state"
        lines.append(f"verdict: {verdict}")
        return "\n".join(lines)


def _pass(name: str, detail: str) -> Check:
    return Check(name, ok=True, detail=detail)


def _fail(name: str, detail: str) -> Check:
    return Check(name, ok=False, detail=detail)


@contextlib.contextmanager
def _scratch(directory: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=".neps-doctor-", dir=directory))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _context() -> Any:
    return multiprocessing.get_context("spawn")


def _hold_lock(path: str, held: Any, release: Any) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(30)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def check_flock(work: Path, hold: Callable[..., None] = _hold_lock) -> Check:
    """A lock held by one process (``hold``) excludes another; released, it is granted."""
    ctx = _context()
    path = work / "lock"
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=hold, args=(str(path), held, release))
    holder.start()
    try:
        if not held.wait(30):
            return _fail("flock", "the first process never got the lock")
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                excluded = True
            else:
                excluded = False
            release.set()
            holder.join(30)
            if not excluded:
                return _fail("flock", "a second process took a lock another one held")
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)
    finally:
        release.set()
        holder.join(30)
    return _pass("flock", "excludes across processes, granted once released")


def _poll(path: str, stop: Any, sizes: Any, ready: Any) -> None:
    bad = 0
    ready.set()  # (the writer starts only now: a reader still starting up sees nothing)
    while not stop.is_set():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            bad += 1
            continue
        if len(data) not in (4096, 8192) or len(set(data)) != 1:
            bad += 1
    sizes.put(bad)


def _replace(tmp: Path, target: Path, data: bytes) -> None:
    tmp.write_bytes(data)
    os.replace(tmp, target)


def check_rename(
    work: Path, rounds: int = 300, replace: Callable[[Path, Path, bytes], None] = _replace
) -> Check:
    """A reader never sees a file replaced (``replace``: write a temp, rename) partial."""
    ctx = _context()
    target = work / "target"
    target.write_bytes(b"a" * 4096)
    stop, out, ready = ctx.Event(), ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=_poll, args=(str(target), stop, out, ready))
    reader.start()
    try:
        ready.wait(60)
        for k in range(rounds):
            replace(work / f"tmp-{k}", target, bytes([97 + k % 2]) * (4096 if k % 2 else 8192))
    finally:
        stop.set()
        bad = out.get(timeout=30)
        reader.join(30)
    if bad:
        return _fail("rename", f"a reader saw the file missing or partial {bad} times")
    return _pass("rename", f"{rounds} replacements, never seen missing or partial")


def _append(path: str, n: int, mark: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    record = bytes([mark]) * 63 + b"\n"
    for _ in range(n):
        os.write(fd, record)
    os.close(fd)


def _together(start: Any, append: Callable[..., None], path: str, n: int, mark: int) -> None:
    start.wait(60)
    append(path, n, mark)


def check_append(work: Path, n: int = 2000, append: Callable[..., None] = _append) -> Check:
    """Two processes' records (``append``: with ``O_APPEND``) all arrive whole.

    The two start appending together (a barrier), so that their appends interleave.
    """
    ctx = _context()
    path = work / "log"
    path.touch()
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_together, args=(start, append, str(path), n, mark)) for mark in (65, 66)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = path.read_bytes().split(b"\n")[:-1]
    whole = [line for line in lines if len(line) == 63 and len(set(line)) == 1]
    if len(lines) != 2 * n or len(whole) != 2 * n:
        return _fail(
            "append", f"{2 * n} records appended, {len(whole)} whole of {len(lines)} lines"
        )
    return _pass("append", f"{2 * n} records from 2 processes, all whole")


def check_fsync(work: Path) -> Check:
    """Files and folders can be fsynced."""
    path = work / "synced"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, RECORD)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        dfd = os.open(work, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        return _fail("fsync", f"a folder cannot be fsynced: {e}")
    return _pass("fsync", "files and folders")


def check_exchange(work: Path) -> Check:
    """``renameat2(RENAME_EXCHANGE)``, else the fallback (a link, then a rename)."""
    a, b = work / "a", work / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    if exchange(a, b):
        swapped = a.read_bytes() == b"B" and b.read_bytes() == b"A"
        return Check("exchange", ok=swapped, detail="renameat2 swaps two names", required=False)
    os.link(b, work / "b-old")
    os.replace(a, b)
    ok = b.read_bytes() == b"A" and (work / "b-old").read_bytes() == b"B"
    what = "renameat2 unavailable: the fallback (link + rename) works"
    return Check("exchange", ok=ok, detail=what, required=False)


def _median_ms(fn: Callable[[int], None], n: int = 30) -> float:
    times = []
    for k in range(n):
        t0 = time.perf_counter_ns()
        fn(k)
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def diagnose(directory: Path | str) -> Diagnosis:
    """Run every check in ``directory``."""
    root = Path(directory)
    out = Diagnosis(root)
    for check in (check_flock, check_rename, check_append, check_fsync, check_exchange):
        with _scratch(root) as work:
            try:
                out.checks.append(check(work))
            except OSError as e:
                out.checks.append(_fail(check.__name__[6:], f"failed: {e}"))
    with _scratch(root) as work:
        fd = os.open(work / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

        def append(_: int) -> None:
            os.write(fd, RECORD)
            os.fsync(fd)

        def create(k: int) -> None:
            os.close(os.open(work / f"c{k}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))

        try:
            out.timings_ms["fsynced append"] = _median_ms(append)
            out.timings_ms["file creation"] = _median_ms(create)
        finally:
            os.close(fd)
    return out
