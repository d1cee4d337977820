"""The remembered pid and the unique names stay right across fork; the collector's pause."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from neps_test_helpers import make_state

from neps_state import NePSState, Settings
from neps_state._proc import gc_paused, pid, unique
from pytest_neps._optimizers import random_search


def test_pid_and_names_are_renewed_in_a_forked_child() -> None:
    assert pid() == os.getpid()
    mine = {unique() for _ in range(1000)}
    assert len(mine) == 1000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        report = {"pid": pid(), "real": os.getpid(), "names": [unique() for _ in range(1000)]}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(data)
    assert report["pid"] == report["real"] == child
    assert not mine & set(report["names"])
    assert pid() == os.getpid()


def _collections_during(fn: Callable[[], Any]) -> tuple[Any, list[int]]:
    """What ``fn`` returned, and the generation of each collection while it ran."""
    started: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(note)
    try:
        return fn(), started
    finally:
        gc.callbacks.remove(note)


def test_loading_and_reading_many_trials_pause_the_collector(tmp_path: Path) -> None:
    make_state(tmp_path / "run").lock_and_sample_trial(random_search, worker_id="w", n=3000)
    assert gc.isenabled()
    settings = Settings(durability="os")
    ids, loading = _collections_during(
        lambda: NePSState.load(tmp_path / "run", settings=settings).all_trial_ids()
    )
    state = NePSState.load(tmp_path / "run", settings=settings)
    trials, reading = _collections_during(state.lock_and_read_trials)
    assert len(ids) == len(trials) == 3000
    # Unpaused, each builds some 15,000 objects: a collection every 700 of them. Paused,
    # one at most (at the first allocation after the pause, over what was built).
    assert len(loading) <= 1, loading
    assert len(reading) <= 1, reading
    assert gc.isenabled()


def test_the_pause_ends_with_its_block_and_leaves_a_disabled_collector_alone() -> None:
    def fail_while_paused() -> None:
        with gc_paused():
            assert not gc.isenabled()
            raise KeyError("x")

    with pytest.raises(KeyError):
        fail_while_paused()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
