"""Functions that tests run in child processes (importable by spawned children)."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

from conftest import INFO, new_opt_state

from neps_state import (
    NePSError,
    NePSState,
    OptimizerInfo,
    OptimizerInfoMismatchError,
    SampledConfig,
    Settings,
    Trial,
)
from neps_state._journal import frame
from pytest_neps._faults import KillAt, call_with_hook, die
from pytest_neps._optimizers import random_search
from pytest_neps._swarm import resolve

SETTINGS = Settings(durability="os")


def create_rounds(
    root: Path, info: OptimizerInfo, rounds: int, barrier: Any, impl: str
) -> list[str]:
    """In each round, wait for the others, then create-or-load ``root/r<round>``."""
    cls: type[NePSState] = resolve(impl)
    outcomes = []
    for r in range(rounds):
        barrier.wait(60)
        try:
            cls.create_or_load(
                root / f"r{r}",
                optimizer_info=info,
                optimizer_state=new_opt_state(),
                settings=SETTINGS,
            )
            outcomes.append("ok")
        except OptimizerInfoMismatchError:
            outcomes.append("mismatch")
        except Exception as e:  # noqa: BLE001 - any other outcome is what the test looks for
            outcomes.append(f"other: {type(e).__name__}: {e}")
    return outcomes


def store_same_id_rounds(root: Path, rounds: int, barrier: Any, impl: str) -> list[str]:
    """In each round, every process samples a trial with the same id ``r<round>``."""
    cls: type[NePSState] = resolve(impl)
    state = cls.create_or_load(
        root, optimizer_info=INFO, optimizer_state=new_opt_state(), settings=SETTINGS
    )
    outcomes = []
    for r in range(rounds):

        def ask(trials: Any, budget_info: Any, n: int | None = None, r: int = r) -> SampledConfig:
            return SampledConfig(id=f"r{r}", config={"pid": os.getpid()})

        barrier.wait(60)
        try:
            state.lock_and_sample_trial(ask, worker_id=str(os.getpid()))
            outcomes.append("ok")
        except NePSError as e:
            outcomes.append(type(e).__name__)
        except Exception as e:  # noqa: BLE001 - any other outcome is what the test looks for
            outcomes.append(f"other: {type(e).__name__}: {e}")
    return outcomes


class Acks:
    """Appends one JSON line per acknowledged operation (survives SIGKILL: one write each)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, op: str, trial: Trial | None, state: str | None = None) -> None:
        line = {"op": op, "trial": trial.id if trial else None, "state": state}
        os.write(self.fd, json.dumps(line).encode() + b"\n")


def workload(root: Path, acks_path: Path, settings: Settings) -> None:
    """Create, sample (one and a batch), claim, report (success and error), update: repeatedly."""
    acks = Acks(acks_path)
    state = NePSState.create_or_load(
        root, optimizer_info=INFO, optimizer_state=new_opt_state(), settings=settings
    )
    acks("create", None)
    for round_ in range(8):
        sampled = (
            state.lock_and_sample_trial(random_search, worker_id="w", n=2)
            if round_ % 2
            else [state.lock_and_sample_trial(random_search, worker_id="w")]
        )
        for t in sampled:
            acks("sample", t, "pending")
        trial = state.lock_and_claim_next_pending_trial("w")
        acks("claim", trial, "evaluating")
        assert trial is not None
        err = ValueError(f"boom {round_}") if round_ % 3 == 0 else None
        report = trial.set_complete(
            report_as="crashed" if err else "success",
            time_end=time.time(),
            objective_to_minimize=None if err else 1.0,
            cost=1.0,
            learning_curve=None,
            err=err,
            tb="tb" if err else None,
            extra={},
            evaluation_duration=0.1,
        )
        state.lock_and_report_trial_evaluation(trial, report, worker_id="w")
        acks("report", trial, report.reported_as)
    pending = state.lock_and_get_next_pending_trial()
    assert pending is not None
    pending.set_evaluating(time_started=time.time(), worker_id="w")
    state.put_updated_trial(pending, hints="metadata")
    acks("update", pending, "evaluating")


def killed_workload(root: Path, acks_path: Path, settings: Settings, point: str, nth: int) -> str:
    """Run ``workload`` with a SIGKILL at the ``nth`` time ``point`` is reached."""
    acks = Acks(acks_path)
    hook = KillAt(point, nth, before_dying=lambda p: acks("killed", None, p))
    call_with_hook(hook, workload, root, acks_path, settings)
    return "finished without reaching the fault point"


def torn_append_workload(root: Path, acks_path: Path, settings: Settings, nth: int) -> str:
    """Die in the middle of the ``nth`` update's cache append, leaving half a record."""
    acks = Acks(acks_path)
    cache = root / "configs" / ".trial_cache.pkl"
    hits = 0

    def hook(point: str) -> None:
        nonlocal hits
        if point != "update.files_written":
            return
        hits += 1
        if hits == nth:
            record = frame(pickle.dumps(["an update that never completed"]))
            with cache.open("ab") as f:
                f.write(record[: len(record) // 2])
            acks("killed", None, "mid-append")
            die()

    call_with_hook(hook, workload, root, acks_path, settings)
    return "finished without reaching the fault point"


def locked_increments(lock_path: Path, counter: Path, occupancy: Path, n: int, noop: bool) -> int:
    """``n`` critical sections: mark occupancy (O_EXCL), read-modify-write a counter.

    Returns how many times the occupancy marker was found taken (an overlap).
    """
    from contextlib import nullcontext  # noqa: PLC0415

    from neps_state._locks import FileLocker  # noqa: PLC0415

    locker = FileLocker(lock_path, Settings(lock_timeout=60))
    overlaps = 0
    for _ in range(n):
        with nullcontext() if noop else locker.lock():
            try:
                fd = os.open(occupancy, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                owned = True
            except FileExistsError:
                overlaps += 1
                owned = False
            value = int(counter.read_text() or "0")
            os.sched_yield()
            counter.write_text(str(value + 1))
            if owned:
                occupancy.unlink()
    return overlaps


def hold_lock(lock_path: Path, release: Any, held: Any) -> None:
    """Take the lock, say so, and keep it until told to release it."""
    from neps_state._locks import FileLocker  # noqa: PLC0415

    with FileLocker(lock_path, Settings()).lock():
        held.set()
        release.wait(60)


def cycles_with_handle(state: NePSState, n: int) -> list[str]:
    """Use a handle that was pickled into this process."""
    from conftest import run_cycle  # noqa: PLC0415

    return [run_cycle(state, f"child-{os.getpid()}").id for _ in range(n)]
