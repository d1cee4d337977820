"""Run functions in real processes and collect every outcome.

Each child becomes the leader of its own process group (so anything it starts
dies with it), waits on a barrier so that all children start together, and
writes its return value or exception to a result file. The parent waits on the
process sentinels with a hard deadline; at the deadline every remaining group
is SIGKILLed. Nothing is left behind and nothing is silently ignored: a child
that died shows its exit code, one that raised shows the exception and traceback.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

StartMethod = str


@dataclass
class ProcessOutcome:
    """How one child process ended."""

    name: str
    pid: int | None
    exitcode: int | None
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Exited 0 after returning normally."""
        return self.exitcode == 0 and self.error is None and not self.timed_out

    @property
    def signal(self) -> int | None:
        """The signal that ended the process, if one did."""
        return -self.exitcode if self.exitcode is not None and self.exitcode < 0 else None

    def describe(self) -> str:
        """One readable line (plus the traceback, if any)."""
        if self.timed_out:
            head = f"{self.name} (pid {self.pid}): still running at the deadline, killed"
        elif self.signal is not None:
            head = f"{self.name} (pid {self.pid}): killed by {signal.Signals(self.signal).name}"
        elif self.error is not None:
            head = f"{self.name} (pid {self.pid}): raised {self.error}"
        else:
            head = f"{self.name} (pid {self.pid}): exit code {self.exitcode}"
        return head if not self.traceback else f"{head}\n{self.traceback}"


@dataclass
class Task:
    """A picklable function to run in a child, with its arguments."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _child(task: Task, result_path: str, barrier: Any, barrier_timeout: float) -> None:
    os.setpgid(0, 0)
    try:
        if barrier is not None:
            barrier.wait(barrier_timeout)
        value = task.fn(*task.args, **task.kwargs)
        payload: tuple[str, Any, str | None] = ("ok", value, None)
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        payload = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
        _write_result(result_path, payload)
        os._exit(1)
    _write_result(result_path, payload)


def _write_result(path: str, payload: tuple[Any, ...]) -> None:
    try:
        data = pickle.dumps(payload)
    except Exception as e:  # noqa: BLE001 - an unpicklable value is itself a result
        data = pickle.dumps(("error", f"result does not pickle: {e!r}", None))
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Group:
    """Started child processes, each in its own process group."""

    def __init__(self, start_method: StartMethod = "spawn") -> None:
        self.ctx: Any = multiprocessing.get_context(start_method)
        self._dir = Path(tempfile.mkdtemp(prefix="neps-procs-"))
        self.procs: dict[str, Any] = {}
        self._results: dict[str, Path] = {}
        self._exited: set[str] = set()

    def barrier(self, parties: int) -> Any:
        """A barrier that releases ``parties`` children together."""
        return self.ctx.Barrier(parties)

    def start(self, task: Task, barrier: Any = None, barrier_timeout: float = 60.0) -> int:
        """Start ``task`` in a new process; return its pid."""
        if task.name in self.procs:
            raise ValueError(f"duplicate process name {task.name!r}")
        result = self._dir / f"{len(self.procs)}.pkl"
        proc = self.ctx.Process(
            target=_child, args=(task, str(result), barrier, barrier_timeout), name=task.name
        )
        proc.start()
        self.procs[task.name] = proc
        self._results[task.name] = result
        return int(proc.pid)

    def running(self) -> list[str]:
        """Names of children that have not exited yet."""
        return [n for n, p in self.procs.items() if p.exitcode is None]

    def wait_any(self, timeout: float) -> list[str]:
        """Wait until a child exits (or ``timeout``); return every newly exited name."""
        alive = [p.sentinel for n, p in self.procs.items() if n not in self._exited]
        if alive:
            multiprocessing.connection.wait(alive, timeout=max(timeout, 0.0))
        done = []
        for name, proc in self.procs.items():
            if name not in self._exited and proc.exitcode is not None:
                proc.join()
                self._exited.add(name)
                done.append(name)
        return done

    def kill(self, name: str) -> None:
        """SIGKILL the child's whole process group."""
        pid = self.procs[name].pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def kill_all(self) -> list[str]:
        """SIGKILL every child still running; return their names."""
        victims = self.running()
        for name in victims:
            self.kill(name)
        for name in victims:
            self.procs[name].join(10)
        return victims

    def outcome(self, name: str, *, timed_out: bool = False) -> ProcessOutcome:
        """The outcome of an exited child."""
        proc = self.procs[name]
        out = ProcessOutcome(name=name, pid=proc.pid, exitcode=proc.exitcode, timed_out=timed_out)
        path = self._results[name]
        if path.exists():
            kind, value, tb = pickle.loads(path.read_bytes())  # noqa: S301 - our own children
            if kind == "ok":
                out.value = value
            else:
                out.error, out.traceback = value, tb
        return out

    def run(
        self, tasks: Sequence[Task], *, timeout: float = 120.0, together: bool = True
    ) -> list[ProcessOutcome]:
        """Start ``tasks`` (released together), wait for all or the deadline, and report."""
        barrier = self.barrier(len(tasks)) if together else None
        for task in tasks:
            self.start(task, barrier, barrier_timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            self.wait_any(deadline - time.monotonic())
        late = set(self.kill_all())
        return [self.outcome(t.name, timed_out=t.name in late) for t in tasks]

    def close(self) -> None:
        """Kill what still runs, release every process's descriptors, remove the results."""
        self.kill_all()
        for proc in self.procs.values():
            proc.join()
            proc.close()
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()


def run_tasks(
    tasks: Sequence[Task],
    *,
    start_method: StartMethod = "spawn",
    timeout: float = 120.0,
    together: bool = True,
) -> list[ProcessOutcome]:
    """Run every task in its own process (released together) and return all outcomes.

    Tasks still running at ``timeout`` are killed and reported as timed out.
    """
    group = Group(start_method)
    try:
        return group.run(tasks, timeout=timeout, together=together)
    finally:
        group.close()
