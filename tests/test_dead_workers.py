"""Trials of dead workers come back: a claim first takes back what a dead process held.

Real processes: a child claims a trial and then dies (SIGKILL, not reaped yet: a
zombie), stops (SIGSTOP: alive but slow), or lives on. Only a dead one's trial
is taken back, by the next claim of another process, in one commit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neps_state import NePSState, Settings, SettingsError
from neps_state._owners import WORKERS_DIR, is_dead
from pytest_neps._impl import as_impl, state_of
from pytest_neps._swarm import SwarmConfig, run_swarm
from pytest_neps.catching import CONTROL
from pytest_neps.machines import ask

CTX = multiprocessing.get_context("spawn")


IMPL = as_impl("neps_state:NePSState")


def _create(root: Path, settings: Settings | None = None) -> NePSState:
    state: NePSState = IMPL.create(root, settings=settings)
    return state


def _claim_and_wait(root: str, ready: str) -> None:
    state = NePSState.create_or_load(Path(root), load_only=True)
    trial = state.lock_and_claim_next_pending_trial("child")
    Path(ready).write_text("" if trial is None else trial.id)
    time.sleep(600)


@pytest.fixture
def child_holding(tmp_path: Path) -> Iterator[tuple[NePSState, multiprocessing.Process, str]]:
    """A run with two pending trials; a child process has claimed the first and waits."""
    root = tmp_path / "run"
    state = _create(root)
    state.lock_and_sample_trial(ask, worker_id="sampler", n=2)
    ready = tmp_path / "ready"
    child = CTX.Process(target=_claim_and_wait, args=(str(root), str(ready)))
    child.start()
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        assert child.is_alive(), f"the child died first: exit code {child.exitcode}"
        assert time.monotonic() < deadline, "the child never claimed"
        time.sleep(0.02)
    yield state, child, ready.read_text()
    if child.is_alive():
        os.kill(child.pid or 0, signal.SIGKILL)
    child.join()


def _states(state: NePSState) -> dict[str, tuple[str, str | None]]:
    return {
        tid: (t.metadata.state.value, t.metadata.evaluating_worker_id)
        for tid, t in state.lock_and_read_trials().items()
    }


def test_a_dead_workers_trial_is_claimed_again_before_its_zombie_is_reaped(
    child_holding: tuple[NePSState, multiprocessing.Process, str],
) -> None:
    state, child, held = child_holding
    os.kill(child.pid or 0, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}").exists() and "Z" not in _proc_state(child.pid or 0):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert Path(f"/proc/{child.pid}").exists(), "reaped already: the zombie case is not tested"
    # The pid shows as a zombie a few milliseconds before its last thread has closed
    # its files (and so freed the lock): until then its trial is rightly kept.
    started = state.lock_and_get_trial_by_id(held).metadata.time_started
    while not is_dead(state.path / "configs", held, started):
        assert time.monotonic() < deadline, "the dead child's lock was never freed"
        time.sleep(0.002)
    assert "Z" in _proc_state(child.pid or 0), "reaped meanwhile: the zombie case is not tested"
    taken = state.lock_and_claim_next_pending_trial("w1")
    assert taken is not None
    assert taken.id == held  # the dead worker's trial first: it was sampled earliest
    assert _states(state)[held] == ("evaluating", "w1")
    assert _states(_create(state.path))[held] == ("evaluating", "w1")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_a_stopped_worker_keeps_its_trial(
    child_holding: tuple[NePSState, multiprocessing.Process, str],
) -> None:
    state, child, held = child_holding
    os.kill(child.pid or 0, signal.SIGSTOP)
    try:
        other = state.lock_and_claim_next_pending_trial("w1")
        assert other is not None
        assert other.id != held
        assert state.lock_and_claim_next_pending_trial("w2") is None
        assert state.lock_and_release_dead_workers_trials() == []
        assert _states(state)[held] == ("evaluating", "child")
    finally:
        os.kill(child.pid or 0, signal.SIGCONT)


def test_a_dead_workers_trial_is_reported_crashed_when_so_set(
    child_holding: tuple[NePSState, multiprocessing.Process, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, child, held = child_holding
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join()
    crashing = NePSState.create_or_load(
        state.path, load_only=True, settings=Settings(dead_worker_trials="crashed")
    )
    with caplog.at_level(logging.WARNING, logger="neps_state"):
        assert crashing.lock_and_release_dead_workers_trials() == [held]
    assert [r.getMessage() for r in caplog.records if held in r.getMessage()]
    trial = _create(state.path).lock_and_get_trial_by_id(held)
    assert trial.metadata.state.value == "crashed"
    assert trial.report is not None
    assert "died while evaluating" in str(trial.report.err)
    assert [e.trial_id for e in crashing.lock_and_get_errors().errs] == [held]
    # What it released is forgotten: its alive file and claim link are gone.
    assert sorted(p.name for p in (state.path / "configs" / WORKERS_DIR).iterdir()) == []


def test_keep_leaves_a_dead_workers_trial_evaluating(
    child_holding: tuple[NePSState, multiprocessing.Process, str],
) -> None:
    state, child, held = child_holding
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join()
    keeping = NePSState.create_or_load(
        state.path, load_only=True, settings=Settings(dead_worker_trials="keep")
    )
    other = keeping.lock_and_claim_next_pending_trial("w1")
    assert other is not None
    assert other.id != held
    assert _states(keeping)[held] == ("evaluating", "child")


def test_a_live_process_keeps_the_trials_it_claimed(tmp_path: Path) -> None:
    # Handles of one live process: its own claims are never taken back.
    state = _create(tmp_path / "run")
    first = IMPL.sample(state, ask, "w0", 1, claim=True)[0]
    assert IMPL.load(state.path).lock_and_release_dead_workers_trials() == []
    assert _states(state)[first.id] == ("evaluating", "w0")


def test_a_claim_without_a_link_is_never_judged_dead(
    child_holding: tuple[NePSState, multiprocessing.Process, str],
) -> None:
    # NePS's own state, or an older reference, claims without a link: unknown, kept.
    state, child, held = child_holding
    (state.path / "configs" / WORKERS_DIR / f"{held}.claim").unlink()
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join()
    assert state.lock_and_release_dead_workers_trials() == []
    assert _states(state)[held] == ("evaluating", "child")


@pytest.mark.parametrize("mode", ["pending", "keep"])
def test_a_swarm_with_kills_leaves_nothing_evaluating(tmp_path: Path, mode: str) -> None:
    # "keep" (NePS's way) is the negative control: the same kills strand trials.
    settings = Settings(durability="os", dead_worker_trials=mode)  # type: ignore[arg-type]
    config = SwarmConfig(
        workers=3, trials=60, kill_rate=0.1, seed=3, max_kills=4, settings=settings
    )
    result = run_swarm(config, tmp_path / "run")
    result.assert_consistent()
    assert result.kills >= 2
    if mode == "keep":
        assert result.stranded(), "no kill left a trial evaluating: nothing was tested"
        return
    assert result.stranded() == []
    assert {state_of(t) for t in result.trials.values()} <= {"success", "failed", "crashed"}
    assert len(result.trials) == 60


def test_taking_back_a_live_workers_trial_is_caught(tmp_path: Path) -> None:
    # The negative control: a claim that takes back trials of live workers.
    result = run_swarm(
        SwarmConfig(impl=CONTROL + "TakesBackFromTheLiving", workers=3, trials=40),
        tmp_path / "run",
    )
    problems = "\n".join(result.problems())
    assert "not being evaluated" in problems or "claimed 2 times" in problems, problems


def test_the_setting_is_read_from_the_environment_and_checked() -> None:
    env = {"NEPS_STATE_DEAD_WORKER_TRIALS": "Crashed"}
    assert Settings.from_env(env).dead_worker_trials == "crashed"
    with pytest.raises(SettingsError, match="NEPS_STATE_DEAD_WORKER_TRIALS='later'"):
        Settings.from_env({"NEPS_STATE_DEAD_WORKER_TRIALS": "later"})
