"""SIGKILL at every named fault point: the state loads, nothing acknowledged is lost,
at most the in-flight trial is left evaluating, and a new worker can carry on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from _targets import killed_workload, torn_append_workload
from conftest import INFO, new_opt_state, run_cycle

from neps_state import FAULT_POINTS, NePSState, NotARunDirectoryError, Settings, Trial
from neps_state._journal import HEADER_SIZE, parse_frames
from pytest_neps._checker import check_run_dir
from pytest_neps._procs import Task, run_tasks
from pytest_neps.controls import NoCrashRecovery

OS = Settings(durability="os")
FSYNC = Settings(durability="fsync")
CONSOLIDATING = Settings(durability="os", consolidation_limit=2, consolidation_ratio=0)

ONE_STEP = {
    ("pending", "evaluating"),
    ("evaluating", "success"),
    ("evaluating", "failed"),
    ("evaluating", "crashed"),
}

CASES = [
    ("lock.acquired", 1, OS),
    ("lock.acquired", 9, OS),
    ("lock.acquired", 31, FSYNC),
    ("create.state_written", 1, OS),
    ("create.info_written", 1, OS),
    ("sample.optimizer_state_written", 1, OS),
    ("sample.optimizer_state_written", 4, OS),
    ("store.staged", 1, OS),
    ("store.staged", 2, FSYNC),
    ("store.dir_renamed", 1, OS),
    ("store.dir_renamed", 2, OS),
    ("store.committed", 2, OS),
    ("update.files_written", 1, OS),
    ("update.files_written", 2, FSYNC),
    ("update.committed", 3, OS),
    ("report.error_appended", 1, OS),
    ("report.error_appended", 2, FSYNC),
    ("consolidate.written", 1, CONSOLIDATING),
    ("consolidate.written", 3, CONSOLIDATING),
    ("consolidate.renamed", 2, CONSOLIDATING),
]


def test_every_fault_point_is_covered() -> None:
    assert {point for point, _, _ in CASES} == set(FAULT_POINTS)


def read_acks(path: Path) -> list[dict[str, str | None]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def reopen_after_crash(root: Path, settings: Settings, cls: type[NePSState]) -> NePSState:
    try:
        return cls.create_or_load(root, load_only=True, settings=settings)
    except NotARunDirectoryError:
        # Killed before the run was created: creating it now must work.
        return cls.create_or_load(
            root, optimizer_info=INFO, optimizer_state=new_opt_state(), settings=settings
        )


def verify_recovery(
    root: Path,
    acks: list[dict[str, str | None]],
    settings: Settings,
    cls: type[NePSState] = NePSState,
) -> None:
    assert acks
    assert acks[-1]["op"] == "killed", f"the process died before its fault point: {acks[-1]}"
    state = reopen_after_crash(root, settings, cls)
    trials = state.lock_and_read_trials()
    expected: dict[str, str] = {}
    for ack in acks[:-1]:
        if ack["trial"] is not None:
            expected[ack["trial"]] = str(ack["state"])
    for tid in expected:
        assert tid in trials, f"acknowledged trial {tid} was lost"
    # The operation in flight at the kill may have committed: one trial may be one
    # legal step ahead of what was acknowledged for it.
    ahead = [
        (expected[tid], trials[tid].metadata.state.value)
        for tid in expected
        if trials[tid].metadata.state.value != expected[tid]
    ]
    assert len(ahead) <= 1, ahead
    assert all(step in ONE_STEP for step in ahead), ahead
    unacknowledged_evaluating = [
        t.id
        for t in trials.values()
        if t.metadata.state is Trial.State.EVALUATING and expected.get(t.id) != "evaluating"
    ]
    assert len(unacknowledged_evaluating) <= 1
    assert check_run_dir(root) == []
    cache = root / "configs" / ".trial_cache.pkl"
    _, end = parse_frames(cache.read_bytes(), HEADER_SIZE)
    assert end == cache.stat().st_size
    errors = state.lock_and_get_errors()
    errored = [t for t in trials.values() if t.report is not None and t.report.err is not None]
    assert sorted(e.trial_id for e in errors.errs) == sorted(t.id for t in errored)
    for _ in range(3):
        run_cycle(state, "new-worker")
    assert check_run_dir(root) == []


@pytest.mark.parametrize(
    ("point", "nth", "settings"),
    CASES,
    ids=[f"{p}-{n}-{s.durability}" for p, n, s in CASES],
)
def test_sigkill_at_fault_point(
    tmp_path: Path, point: str, nth: int, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    root, acks = tmp_path / "run", tmp_path / "acks.jsonl"
    [outcome] = run_tasks(
        [Task("worker", killed_workload, (root, acks, settings, point, nth))], timeout=60
    )
    assert outcome.signal == 9, outcome.describe()
    with caplog.at_level(logging.WARNING):
        verify_recovery(root, read_acks(acks), settings)


def test_crash_mid_append_truncates_the_torn_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, acks = tmp_path / "run", tmp_path / "acks.jsonl"
    [outcome] = run_tasks([Task("worker", torn_append_workload, (root, acks, OS, 3))], timeout=60)
    assert outcome.signal == 9, outcome.describe()
    with caplog.at_level(logging.WARNING):
        verify_recovery(root, read_acks(acks), OS)
    assert "died holding the trial lock" in caplog.text
    assert "not a complete record" in caplog.text
    assert "Rebuilding" not in caplog.text  # a crash explains the tail: truncate, not rebuild
    assert len(list((root / "configs").glob(".trial_cache.pkl.torn-*"))) == 1


@pytest.mark.parametrize("point", ["store.dir_renamed", "update.files_written"])
def test_recovery_check_catches_a_state_without_crash_recovery(tmp_path: Path, point: str) -> None:
    root, acks = tmp_path / "run", tmp_path / "acks.jsonl"
    [outcome] = run_tasks([Task("worker", killed_workload, (root, acks, OS, point, 2))], timeout=60)
    assert outcome.signal == 9, outcome.describe()
    state = reopen_after_crash(root, OS, NoCrashRecovery)
    state.lock_and_read_trials()
    broken = [v for v in check_run_dir(root) if v.invariant == "cache = folders"]
    assert broken, "the half-done operation was not detected"
