"""SIGKILL at every fault point of every mutating operation (one run per cell here;
the stress suite runs 20). The state loads, nothing acknowledged is lost, at most
the in-flight trial is left evaluating, and a fresh swarm finishes the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from neps_state import FAULT_POINTS, NePSState, Settings
from neps_state._journal import frame
from pytest_neps._checker import check_run_dir
from pytest_neps._faults import die
from pytest_neps._killmatrix import (
    MATRIX,
    Acks,
    _one,
    count_hits,
    killed_workload,
    verify,
    workload,
)
from pytest_neps._procs import Task, run_tasks
from pytest_neps.controls import NoCrashRecovery

OS = Settings(durability="os")
FSYNC = Settings(durability="fsync")
CELLS = [(op, point) for op, points in MATRIX.items() for point in points]


def test_the_matrix_covers_every_fault_point() -> None:
    assert {point for _, point in CELLS} == set(FAULT_POINTS)
    hits = count_hits(OS)
    unreachable = [cell for cell in CELLS if not hits[cell]]
    assert not unreachable


@pytest.mark.parametrize(("op", "point"), CELLS, ids=[f"{op}-{point}" for op, point in CELLS])
def test_sigkill_inside_operation_at_fault_point(op: str, point: str) -> None:
    settings = FSYNC if len(point) % 2 else OS  # both durability settings across the cells
    nth = 1 + count_hits(settings)[(op, point)] // 2  # mid-run, not only the first time
    run = _one(op, point, nth, settings)
    assert run.ok, "\n".join(run.problems)


def test_a_state_that_keeps_a_dead_workers_trial_fails_the_matrix() -> None:
    # The negative control of the take-back check: NePS's way, trials left evaluating.
    keep = dataclasses.replace(OS, dead_worker_trials="keep")
    nth = 1 + count_hits(keep)[("claim", "update.committed")] // 2
    run = _one("claim", "update.committed", nth, keep)
    assert not run.ok
    assert "still evaluating after a take-back" in "\n".join(run.problems)


def torn_append_workload(root: Path, acks_path: Path, nth: int) -> str:
    """Die in the middle of the ``nth`` update's cache append, leaving half a record."""
    acks = Acks(acks_path)
    cache = root / "configs" / ".trial_cache.journal"
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

    from neps_state import set_fault_hook  # noqa: PLC0415

    set_fault_hook(hook)
    workload(root, acks, OS, lambda _: None)
    return "finished without reaching the fault point"


def test_crash_mid_append_truncates_the_torn_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, acks = tmp_path / "run", tmp_path / "acks.jsonl"
    [outcome] = run_tasks([Task("worker", torn_append_workload, (root, acks, 3))], timeout=60)
    assert outcome.signal == 9, outcome.describe()
    with caplog.at_level(logging.WARNING):
        problems = verify(root, acks, OS)
    assert not problems, problems
    assert "died holding the trial lock" in caplog.text
    assert "not a complete record" in caplog.text
    assert "Rebuilding" not in caplog.text  # a crash explains the tail: truncate, not rebuild
    assert len(list((root / "configs").glob(".trial_cache.journal.torn-*"))) == 1


@pytest.mark.parametrize(
    ("op", "point"), [("sample", "store.dir_renamed"), ("claim", "update.files_written")]
)
def test_recovery_check_catches_a_state_without_crash_recovery(
    tmp_path: Path, op: str, point: str
) -> None:
    root, acks = tmp_path / "run", tmp_path / "acks.jsonl"
    task = Task("worker", killed_workload, (root, acks, OS, (op, point, 2)))
    [outcome] = run_tasks([task], timeout=60)
    assert outcome.signal == 9, outcome.describe()
    assert json.loads(acks.read_bytes().splitlines()[-1])["op"] == "killed"
    NoCrashRecovery.create_or_load(root, load_only=True, settings=OS).lock_and_read_trials()
    broken = [v for v in check_run_dir(root) if v.invariant == "cache = folders"]
    assert broken, "the half-done operation was not detected"
    # The reference, opening the same directory, repairs it.
    NePSState.create_or_load(root, load_only=True, settings=OS).lock_and_read_trials()
    assert check_run_dir(root) == []
    assert os.path.exists(root / "configs")
