"""A pool of worker processes that run one call each per round, released together.

Starting a process costs far more than one race, so property tests keep a pool
and send each example's calls to it. A worker killed during a round (SIGKILL
from a fault hook) is reported like any other outcome and replaced before the
next round.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from pytest_neps._procs import ProcessOutcome

Call = tuple[Callable[..., Any], tuple[Any, ...]]


WARM_UP = ("numpy", "neps_state", "pytest_neps.races")
"""Imported by each worker at start, so the first round's calls start as aligned as later ones."""


def _serve(conn: Any, warm: tuple[str, ...]) -> None:
    os.setpgid(0, 0)
    for module in warm:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    while True:
        try:
            call = conn.recv()
        except EOFError:
            return
        if call is None:
            return
        fn, args = call
        conn.send("ready")
        if conn.recv() != "go":
            return
        try:
            conn.send(("ok", fn(*args), None))
        except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))


class Pool:
    """``size`` long-lived worker processes (each the leader of its process group)."""

    def __init__(
        self, size: int, start_method: str = "spawn", warm: tuple[str, ...] = WARM_UP
    ) -> None:
        self.ctx: Any = multiprocessing.get_context(start_method)
        self.warm = warm
        self.procs: list[Any] = [None] * size
        self.conns: list[Any] = [None] * size
        for i in range(size):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=_serve, args=(child, self.warm), name=f"pool-{i}", daemon=True
        )
        proc.start()
        child.close()
        self.procs[i], self.conns[i] = proc, parent

    def _kill(self, i: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].join(10)

    def run(self, calls: Sequence[Call], timeout: float = 60.0) -> list[ProcessOutcome]:
        """Run ``calls[i]`` in worker ``i``, all released at once; return every outcome."""
        if len(calls) > len(self.procs):
            raise ValueError(f"{len(calls)} calls for a pool of {len(self.procs)}")
        deadline = time.monotonic() + timeout
        self._dispatch(calls, deadline)
        results = self._gather(len(calls), deadline)
        for i in range(len(calls)):
            if i not in results:
                self._kill(i)
                results[i] = ProcessOutcome(f"pool-{i}", self.procs[i].pid, None, timed_out=True)
        return [results[i] for i in range(len(calls))]

    def _dispatch(self, calls: Sequence[Call], deadline: float) -> None:
        for i, call in enumerate(calls):
            if not self.procs[i].is_alive():
                self._spawn(i)
            self.conns[i].send(call)
        for i in range(len(calls)):
            if not self.conns[i].poll(max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"pool worker {i} did not get ready")
            self.conns[i].recv()
        # Released back to back: the calls start within microseconds of each other.
        for i in range(len(calls)):
            self.conns[i].send("go")

    def _gather(self, n: int, deadline: float) -> dict[int, ProcessOutcome]:
        results: dict[int, ProcessOutcome] = {}
        while len(results) < n and time.monotonic() < deadline:
            owner: dict[Any, int] = {}
            for i in range(n):
                if i not in results:
                    owner[self.conns[i]] = i
                    owner[self.procs[i].sentinel] = i
            ready = multiprocessing.connection.wait(
                list(owner), timeout=max(deadline - time.monotonic(), 0)
            )
            for obj in ready:
                i = owner[obj]
                if i not in results:
                    results[i] = self._collect(i)
        return results

    def _collect(self, i: int) -> ProcessOutcome:
        name, proc, conn = f"pool-{i}", self.procs[i], self.conns[i]
        try:
            if conn.poll():
                kind, value, tb = conn.recv()
                if kind == "ok":
                    return ProcessOutcome(name, proc.pid, 0, value=value)
                return ProcessOutcome(name, proc.pid, 1, error=value, traceback=tb)
        except (EOFError, OSError):
            pass
        proc.join(10)
        return ProcessOutcome(name, proc.pid, proc.exitcode)

    def close(self) -> None:
        """Stop every worker."""
        for i, conn in enumerate(self.conns):
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
            self.procs[i].join(2)
            if self.procs[i].is_alive():
                self._kill(i)
