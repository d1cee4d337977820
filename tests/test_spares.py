"""Spares: files created before a lock is taken, so that only writes and renames happen under it.

Nothing of them may outlive an operation, a failed one included; a sweeper removes
those of dead processes and never those of live ones; an owner whose spare was
removed by mistake falls back to creating its files under the lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from _targets import hold_spares
from neps_test_helpers import completed, make_state, run_cycle, tree_digest

import neps_state._spare as spare_module
from neps_state import IllegalTransitionError, NePSState, SampledConfig, Trial
from neps_state._io import exchange, remove_tree
from neps_state._spare import SPARE_INFIX, SpareFile, retire, sweep
from neps_state._trial import State
from pytest_neps._checker import check_run_dir
from pytest_neps._optimizers import random_search
from pytest_neps._procs import Group, ProcessOutcome, Task

Sweeper = Callable[[Path], int]


def leftovers(root: Path) -> list[str]:
    """Every spare and temp file or folder below ``root``."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        out += [
            str(Path(dirpath, name).relative_to(root))
            for name in dirs + files
            if SPARE_INFIX in name or ".tmp-" in name
        ]
    return sorted(out)


def remove_spares(root: Path) -> None:
    for name in leftovers(root):
        path = root / name
        if path.is_dir():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)


def sweep_ignoring_locks(directory: Path) -> int:
    """A broken sweeper: removes every spare, its owner alive or not."""
    names = [e.name for e in directory.iterdir() if SPARE_INFIX in e.name]
    remove_spares(directory)
    return len(names)


def test_sample_and_report_leave_no_spare_or_temp_file(state: NePSState, run_dir: Path) -> None:
    for _ in range(3):
        run_cycle(state)
    trial = state.lock_and_sample_trial(random_search, worker_id="w1", claim=True)
    report = completed(trial)
    state.lock_and_report_trial_evaluation(trial, report, worker_id="w1")
    assert leftovers(run_dir) == []
    assert check_run_dir(run_dir) == []


def test_a_failed_sample_changes_nothing(state: NePSState, run_dir: Path) -> None:
    run_cycle(state)
    before = tree_digest(run_dir)

    def broken(trials: Mapping[str, Trial], budget_info: Any, n: int | None = None) -> Any:
        raise RuntimeError("a bug in the optimizer")

    with pytest.raises(RuntimeError, match="a bug in the optimizer"):
        state.lock_and_sample_trial(broken, worker_id="w0")
    assert tree_digest(run_dir) == before
    assert leftovers(run_dir) == []


def test_a_refused_report_changes_nothing(state: NePSState, run_dir: Path) -> None:
    trial = run_cycle(state)
    before = tree_digest(run_dir)
    assert trial.report is not None
    with pytest.raises(IllegalTransitionError):
        state.lock_and_report_trial_evaluation(trial, trial.report, worker_id="w0")
    assert tree_digest(run_dir) == before
    assert leftovers(run_dir) == []


def test_writes_fall_back_when_their_spares_were_swept(state: NePSState, run_dir: Path) -> None:
    """A spare removed between its creation and its use (a sweep by mistake)."""

    def ask_after_a_sweep(
        trials: Mapping[str, Trial], budget_info: Any, n: int | None = None
    ) -> Any:
        assert leftovers(run_dir), "the spares exist while the optimizer runs"
        remove_spares(run_dir)
        return SampledConfig(id=str(len(trials)), config={"x": len(trials)})

    for _ in range(2):
        trial = state.lock_and_sample_trial(ask_after_a_sweep, worker_id="w0", claim=True)
        assert state.lock_and_get_trial_by_id(trial.id) == trial
    assert isinstance(state.lock_and_get_optimizer_state().seed_snapshot.py_rng, tuple)
    assert leftovers(run_dir) == []
    assert check_run_dir(run_dir) == []


def test_updates_fall_back_when_their_prepared_files_vanished(
    state: NePSState, run_dir: Path
) -> None:
    trial = state.lock_and_sample_trial(random_search, worker_id="w0", claim=True)
    trial.report = completed(trial)
    trial.metadata.state = State.SUCCESS
    repo = state._repo
    prepared = repo.prepare_update(trial, ("report", "metadata"))
    assert set(prepared.temps) == {"report.yaml", "metadata.json"}
    remove_spares(run_dir)
    with state._trial_lock.lock():
        repo.update_trial(trial, prepared=prepared)
    prepared.discard()
    assert state.lock_and_get_trial_by_id(trial.id) == trial
    assert leftovers(run_dir) == []
    assert check_run_dir(run_dir) == []


def kill_and_reap(group: Group, name: str) -> ProcessOutcome:
    group.kill(name)
    deadline = time.monotonic() + 60
    while name in group.running() and time.monotonic() < deadline:
        group.wait_any(deadline - time.monotonic())
    return group.outcome(name)


def live_spares_survive(root: Path, sweeper: Sweeper) -> tuple[bool, bool]:
    """Sweep while another process holds spares, then after it was SIGKILLed.

    Returns (the live spares survived, the dead ones were removed).
    """
    make_state(root)
    group = Group("spawn")
    try:
        held, release = group.ctx.Event(), group.ctx.Event()
        group.start(Task("owner", hold_spares, (root, held, release)))
        assert held.wait(60), "the owner never created its spares"
        live = leftovers(root)
        # The state file; the folder, and its two files made beside it.
        assert len(live) == 4, live
        sweeper(root)
        sweeper(root / "configs")
        sweeper(root / "configs" / ".scratch")
        survived = leftovers(root) == live
        outcome = kill_and_reap(group, "owner")
        assert outcome.signal == 9, outcome.describe()
        sweeper(root)
        sweeper(root / "configs")
        sweeper(root / "configs" / ".scratch")
        return survived, leftovers(root) == []
    finally:
        group.close()


def test_sweep_removes_the_spares_of_dead_processes_only(tmp_path: Path) -> None:
    assert live_spares_survive(tmp_path / "run", sweep) == (True, True)


def test_negative_control_a_sweep_without_the_lock_check_removes_live_spares(
    tmp_path: Path,
) -> None:
    assert live_spares_survive(tmp_path / "run", sweep_ignoring_locks) == (False, True)


def test_consolidation_and_opening_sweep_dead_spares(tmp_path: Path) -> None:
    root = tmp_path / "run"
    make_state(root)
    group = Group("spawn")
    try:
        held, release = group.ctx.Event(), group.ctx.Event()
        group.start(Task("owner", hold_spares, (root, held, release)))
        assert held.wait(60)
        kill_and_reap(group, "owner")
    finally:
        group.close()
    assert len(leftovers(root)) == 4  # as in live_spares_survive
    state = make_state(root)  # opening for writing sweeps the run directory's root
    assert [p for p in leftovers(root) if "/" not in p] == []
    state.lock_and_consolidate_cache()
    assert leftovers(root) == []


def test_a_forked_child_leaves_its_parents_spares_alone(tmp_path: Path) -> None:
    """The child inherits the spare and its cleanup; neither may touch the parent's file."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from neps_test_helpers import make_state
        from pathlib import Path
        state = make_state(Path({str(tmp_path / "run")!r}))
        spare = state._state_spare
        with spare.ahead():
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # leaves the with block and runs the exit handlers
            os.waitpid(pid, 0)
            print("kept" if spare._held is not None and spare._held.path.exists() else "gone")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kept"
    assert leftovers(tmp_path / "run") == []


def test_a_retired_file_is_a_second_name_that_any_sweep_removes(tmp_path: Path) -> None:
    target = tmp_path / "optimizer_state.pkl"
    target.write_bytes(b"old")
    retired = retire(target, tmp_path)
    assert retired is not None
    assert SPARE_INFIX in retired.name
    target.write_bytes(b"new")  # the same file under both names
    assert retired.read_bytes() == b"new"
    assert os.stat(retired).st_ino == os.stat(target).st_ino
    assert sweep(tmp_path) == 1
    assert not retired.exists()
    assert target.read_bytes() == b"new"
    assert retire(tmp_path / "missing", tmp_path) is None


def test_an_optimizer_that_samples_inside_ask_leaves_no_spare(
    state: NePSState, run_dir: Path
) -> None:
    def nested(trials: Mapping[str, Trial], budget_info: Any, n: int | None = None) -> Any:
        if not trials:
            state.lock_and_sample_trial(random_search, worker_id="inner")
        return SampledConfig(id=str(len(trials) + 1), config={"x": 1})

    state.lock_and_sample_trial(nested, worker_id="outer")
    assert sorted(state.lock_and_read_trials()) == ["0", "2"]
    assert leftovers(run_dir) == []
    assert check_run_dir(run_dir) == []


@pytest.mark.parametrize("swaps", [True, False], ids=["exchange", "retire-and-rename"])
def test_a_placed_spare_replaces_its_target_whole_and_frees_the_old_one_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swaps: bool
) -> None:
    calls: list[Path] = []

    def unsupported(a: Path, b: Path) -> bool:
        calls.append(a)
        return False

    if not swaps:
        monkeypatch.setattr(spare_module, "exchange", unsupported)
    target = tmp_path / "optimizer_state.pkl"
    old = b"old" * 2000
    target.write_bytes(old)
    spare = SpareFile(target)
    with target.open("rb") as reader:  # opened before the replace
        previous = old
        for new in (b"new", b"newer"):
            with spare.ahead():
                assert spare.place(new, fsync=False)
                assert target.read_bytes() == new
                # Still inside the operation: the old file lives on under a spare name.
                [kept] = leftovers(tmp_path)
                assert (tmp_path / kept).read_bytes() == previous
            assert leftovers(tmp_path) == []
            previous = new
        assert reader.read() == old
    # Unsupported once: the spare stops asking and renames from then on.
    assert len(calls) == (0 if swaps else 1)


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_exchange_swaps_two_names_or_changes_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    assert exchange(a, b)
    assert (a.read_bytes(), b.read_bytes()) == (b"B", b"A")
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "missing", b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert b.read_bytes() == b"A"
