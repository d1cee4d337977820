"""Swarm workers as tasks on a Dask ``distributed`` cluster (the ``dask`` extra).

    from distributed import Client
    result = run_swarm(config, run_dir, launcher=DaskLauncher(Client("tcp://host:8786")))

Each swarm worker runs the standard worker loop as one task, in a Dask worker
process, against a run directory every Dask worker reaches. A kill (planned, at a
fault point, or from outside) SIGKILLs that Dask worker process: its nanny starts
a new one, the task ends in ``KilledWorker`` (reported as a death by SIGKILL) and
the swarm starts a replacement task, as with local processes.

A scheduler on its defaults retries a task whose worker died (three times). A
retried swarm worker must not run its loop again under its name: each attempt
of a task first marks itself started on the scheduler (a ``Variable`` named by
the task's key), and a retry that finds the mark returns at once, reported as
the death it follows (SIGKILL), and the swarm starts a replacement as usual.
Each Dask worker should run one task at a time (``--nthreads 1``), and the
cluster needs at least as many worker threads as the swarm's workers and observers.
A scheduler that cannot be reached, or a cluster too small, is a
:class:`DaskSetupError` (the CLI prints it on one line and exits 2).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_neps._procs import ProcessOutcome
from pytest_neps._swarm import SwarmConfigError


def _distributed() -> Any:
    """The ``distributed`` package (the ``dask`` extra), imported when first used."""
    return importlib.import_module("distributed")


async def _die_if_running(key: str, dask_worker: Any = None) -> bool:
    """SIGKILL this Dask worker if it still runs task ``key`` (run by ``Client.run``).

    A kill is sent to the worker a task ran on; if that task ended meanwhile, the
    worker may already run another's (of this swarm or a later one on a shared
    cluster), which must not die for it. (A coroutine: ``Client.run(wait=False)``
    refuses plain functions.)
    """
    if not any(ts.key == key for ts in dask_worker.state.executing):
        return False
    os.kill(os.getpid(), signal.SIGKILL)
    return True


@dataclass(frozen=True)
class DaskBarrier:
    """Releases ``parties`` tasks together (a counter and an event on the scheduler)."""

    name: str
    parties: int

    def wait(self, timeout: float) -> None:
        """Count this task in; wait until every party has."""
        d = _distributed()

        with d.Lock(f"{self.name}-lock"):
            count = d.Variable(f"{self.name}-count")
            arrived = int(count.get(timeout=timeout)) + 1
            count.set(arrived)
        event = d.Event(f"{self.name}-go")
        if arrived == self.parties:
            event.set()
        if not event.wait(timeout):
            raise TimeoutError(f"{self.parties} parties never met at {self.name}")


RAN_ALREADY = "neps-swarm: this task ran already; the scheduler retried it after its worker died"
"""What a retried attempt of a swarm worker's task returns instead of running again."""


class DaskSetupError(SwarmConfigError):
    """The Dask cluster cannot run the swarm (unreachable, too few worker threads)."""


@dataclass(frozen=True)
class _Call:
    """What one swarm worker's task runs, and whether a retry of it may run again."""

    name: str
    prefix: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    once: bool = True


def _task(call: _Call, barrier: Any) -> Any:
    """Run ``call`` in a Dask worker, after saying where; once per task key."""
    d = _distributed()

    started = d.Variable(f"{call.prefix}started-{d.get_worker().get_current_task()}")
    try:
        started.get(timeout=0.2)
    except TimeoutError:
        started.set(os.getpid())
    else:
        if call.once:
            return RAN_ALREADY
    d.Variable(f"{call.prefix}{call.name}").set([d.get_worker().address, os.getpid()])
    if barrier is not None:
        barrier.wait(120.0)
    return call.fn(*call.args)


class DaskLauncher:
    """The swarm's ``Launcher`` on a ``distributed.Client``."""

    once: bool = True
    """A retried task returns at once (False only in the negative control of a test)."""

    def __init__(self, client: Any) -> None:
        """Use ``client``'s cluster (its scheduler may retry tasks: see the module)."""
        self.client = client
        self.prefix = f"neps-swarm-{secrets.token_hex(4)}-"
        self.futures: dict[str, Any] = {}
        self._calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...], Any]] = {}
        self._exited: set[str] = set()
        self._killed: set[str] = set()

    def barrier(self, parties: int) -> DaskBarrier:
        """A barrier on the scheduler; the cluster must run ``parties`` tasks at once."""
        d = _distributed()

        threads = sum(self.client.nthreads().values())
        if threads < parties:
            raise DaskSetupError(
                f"{parties} swarm workers start together, but the Dask cluster runs"
                f" {threads} task(s) at once: add Dask workers (one thread each)"
            )
        name = f"{self.prefix}barrier-{secrets.token_hex(2)}"
        count: Any = d.Variable(f"{name}-count")
        count.set(0)
        return DaskBarrier(name, parties)

    def start(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], barrier: Any) -> int:
        """Submit the worker as a task (never retried); returns 0 (its pid comes later)."""
        self._calls[name] = (fn, args, barrier)
        self._submit(name)
        return 0

    def _submit(self, name: str) -> None:
        fn, args, barrier = self._calls[name]
        key = f"{self.prefix}{name}-{secrets.token_hex(2)}"
        call = _Call(name, self.prefix, fn, args, self.once)
        self.futures[name] = self.client.submit(_task, call, barrier, key=key, pure=False)

    def _never_started(self, name: str) -> bool:
        """A task whose worker died before it ran a line (assigned to a dying worker)."""
        d = _distributed()

        future = self.futures[name]
        if future.status != "error" or name in self._killed:
            return False
        started = self._where(name, d.Variable) is not None
        return isinstance(future.exception(), d.KilledWorker) and not started

    def wait(self, timeout: float) -> list[str]:
        """Wait until a task ends (or ``timeout``); the names that ended since."""
        d = _distributed()

        waiter: Any = d.wait
        pending = [f for n, f in self.futures.items() if n not in self._exited and not f.done()]
        if pending:
            with contextlib.suppress(TimeoutError):
                waiter(pending, timeout=max(timeout, 0.001), return_when="FIRST_COMPLETED")
        done = []
        for name, future in list(self.futures.items()):
            if name in self._exited or not future.done():
                continue
            if self._never_started(name):
                self._submit(name)  # it ran nothing: run it now, elsewhere
                continue
            done.append(name)
        self._exited.update(done)
        return done

    def running(self) -> list[str]:
        """Tasks not ended yet."""
        return [n for n, f in self.futures.items() if not f.done()]

    def outcome(self, name: str, *, timed_out: bool = False) -> ProcessOutcome:
        """How a task ended: a value, an exception, or a SIGKILL of its worker."""
        d = _distributed()

        future = self.futures[name]
        where = self._where(name, d.Variable)
        pid = None if where is None else int(where[1])
        if future.status == "finished" and future.result() == RAN_ALREADY:
            return ProcessOutcome(name, pid, -signal.SIGKILL, timed_out=timed_out)
        if future.status == "finished":
            return ProcessOutcome(name, pid, 0, value=future.result(), timed_out=timed_out)
        error = future.exception() if future.status == "error" else None
        if isinstance(error, d.KilledWorker) or name in self._killed or error is None:
            return ProcessOutcome(name, pid, -signal.SIGKILL, timed_out=timed_out)
        tb = "".join(traceback.format_tb(future.traceback()))
        what = f"{type(error).__name__}: {error}"
        return ProcessOutcome(name, pid, 1, error=what, traceback=tb, timed_out=timed_out)

    def _where(self, name: str, variable: Any) -> list[Any] | None:
        try:
            where: list[Any] = variable(f"{self.prefix}{name}").get(timeout=1)
        except TimeoutError:
            return None
        return where

    def kill(self, name: str) -> None:
        """SIGKILL the Dask worker process running ``name``."""
        d = _distributed()

        where = self._where(name, d.Variable)
        self._killed.add(name)
        if where is None:
            self.futures[name].cancel()
            return
        key = self.futures[name].key
        with contextlib.suppress(Exception):  # the worker is gone, as asked
            self.client.run(_die_if_running, key, workers=[where[0]], wait=False)

    def kill_all(self) -> list[str]:
        """Kill every running task's worker; their names."""
        names = self.running()
        for name in names:
            self.kill(name)
        deadline = time.monotonic() + 60
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return names

    def close(self) -> None:
        """Kill what still runs; nothing of this swarm is left on the cluster."""
        self.kill_all()
        for future in self.futures.values():
            future.cancel()


@contextlib.contextmanager
def tcp_cluster(workers: int, tmp: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """``dask scheduler`` (its defaults) and ``workers`` ``dask worker`` processes on 127.0.0.1.

    Real processes over TCP, as a cluster's nodes would run them; yields the
    scheduler's address once every worker has joined. Everything started is
    killed afterwards, pass or fail.
    """
    dask = str(Path(sys.executable).with_name("dask"))
    file = tmp / "scheduler.json"
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", "0"]
    procs = [_start([*scheduler, "--dashboard-address", ":0", "--scheduler-file", str(file)])]
    try:
        deadline = time.monotonic() + timeout
        while not file.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise DaskSetupError(f"dask scheduler did not start (exit {procs[0].poll()})")
            time.sleep(0.1)
        worker = [dask, "worker", "--nthreads", "1", "--nworkers", "1", "--no-dashboard"]
        procs += [_start([*worker, "--scheduler-file", str(file)]) for _ in range(workers)]
        address = str(json.loads(file.read_text())["address"])
        with _distributed().Client(address, timeout=timeout) as client:
            client.wait_for_workers(workers, timeout=timeout)
        yield address
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(30)


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, start_new_session=True, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def connect(address: str) -> Iterator[DaskLauncher]:
    """A launcher on the scheduler at ``address``; the client is closed afterwards."""
    try:
        client = _distributed().Client(address, timeout=30)
    except ModuleNotFoundError as e:
        raise DaskSetupError(f"{e}: install the dask extra (pip install 'neps-state[dask]')") from e
    except (OSError, TimeoutError, ValueError) as e:
        raise DaskSetupError(f"cannot reach the Dask scheduler at {address}: {e}") from e
    try:
        launcher = DaskLauncher(client)
        try:
            yield launcher
        finally:
            launcher.close()
    finally:
        client.close()
