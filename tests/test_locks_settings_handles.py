"""Locks across processes, settings from the environment, handles sent to other processes."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import threading
import time
from pathlib import Path

import pytest
from _targets import cycles_with_handle
from neps_test_helpers import INFO, make_state, new_opt_state, run_cycle

from neps_state import LockTimeoutError, NePSState, Settings, SettingsError
from neps_state._journal import Journal
from neps_state._locks import FileLocker
from pytest_neps._checker import check_run_dir
from pytest_neps._lockcheck import contend, hold_lock, wait_after_killed_holder
from pytest_neps._procs import Group, Task, run_tasks


def test_lock_excludes_other_processes(tmp_path: Path) -> None:
    assert contend(tmp_path, procs=4, n=150) == (4 * 150, 0)


def test_lock_check_catches_a_missing_lock(tmp_path: Path) -> None:
    total, overlaps = contend(tmp_path, procs=4, n=150, noop=True)
    assert total < 4 * 150 or overlaps > 0


def test_lock_timeout_names_the_lock_and_how_to_wait_longer(tmp_path: Path) -> None:
    lock_path = tmp_path / ".configs.lock"
    group = Group("spawn")
    try:
        release, held = group.ctx.Event(), group.ctx.Event()
        group.start(Task("holder", hold_lock, (lock_path, release, held)))
        assert held.wait(60)
        locker = FileLocker(lock_path, Settings(lock_timeout=0.3))
        start = time.monotonic()
        with pytest.raises(LockTimeoutError) as info, locker.lock():
            pass
        assert 0.3 <= time.monotonic() - start < 5
        message = str(info.value)
        assert str(lock_path) in message
        assert "0.3 s" in message
        assert "NEPS_STATE_LOCK_TIMEOUT" in message
        assert isinstance(info.value, TimeoutError)
        release.set()
        group.wait_any(60)
        with locker.lock():  # released by the holder: free again
            pass
    finally:
        group.close()


def waiter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("neps-state ")]


def test_a_wait_that_timed_out_is_taken_over_and_its_lock_released(tmp_path: Path) -> None:
    """Two timed-out waits share one waiting thread; the lock it gets later is not kept."""
    lock_path = tmp_path / "x.lock"
    group = Group("spawn")
    before = set(waiter_threads())
    try:
        release, held = group.ctx.Event(), group.ctx.Event()
        group.start(Task("holder", hold_lock, (lock_path, release, held)))
        assert held.wait(60)
        locker = FileLocker(lock_path, Settings(lock_timeout=0.2))
        for _ in range(2):
            with pytest.raises(LockTimeoutError), locker.lock():
                pass
        # (Another test's waiting thread may end meanwhile: count only new ones.)
        assert len(set(waiter_threads()) - before) == 1
        release.set()
        while group.running():
            group.wait_any(60)
        # The waiting thread got the lock for nobody and gave it back at once.
        with FileLocker(lock_path, Settings(lock_timeout=5)).lock():
            pass
        other = FileLocker(lock_path, Settings(lock_timeout=0.2))
        with locker.lock(), pytest.raises(LockTimeoutError), other.lock():
            pass  # asked again, our locker holds it exclusively
    finally:
        group.close()


def test_the_waiting_thread_ends_with_its_lock(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    holder = FileLocker(lock_path, Settings())
    locker = FileLocker(lock_path, Settings(lock_timeout=0.05))
    before = set(waiter_threads())
    with holder.lock(), pytest.raises(LockTimeoutError), locker.lock():
        pass
    [waiter] = set(waiter_threads()) - before
    del locker
    gc.collect()
    waiter.join(10)
    assert not waiter.is_alive()


def test_a_lock_freed_while_it_is_tried_again_is_taken_without_the_waiting_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock_path = tmp_path / "x.lock"
    holder = FileLocker(lock_path, Settings())
    locker = FileLocker(lock_path, Settings(lock_timeout=2))
    held = contextlib.ExitStack()
    held.enter_context(holder.lock())
    yields = []

    def release_on_first_yield() -> None:
        # The holder lets go while the locker tries again: it must take the lock itself.
        held.close()
        yields.append(1)

    monkeypatch.setattr(os, "sched_yield", release_on_first_yield)
    before = set(waiter_threads())
    with held, locker.lock():
        assert yields
    assert set(waiter_threads()) - before == set()


def test_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    assert wait_after_killed_holder(tmp_path / ".configs.lock") < 1


def test_lock_is_reentrant_in_one_thread_and_exclusive_across_threads(tmp_path: Path) -> None:
    locker = FileLocker(tmp_path / "x.lock", Settings(lock_timeout=5))
    inside = threading.Event()
    entered_by_other: list[float] = []

    def other() -> None:
        inside.wait()
        with locker.lock():
            entered_by_other.append(time.monotonic())

    thread = threading.Thread(target=other)
    thread.start()
    with locker.lock(), locker.lock():
        inside.set()
        time.sleep(0.2)
        released_at = time.monotonic()
    thread.join(10)
    assert entered_by_other
    assert entered_by_other[0] >= released_at


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_handle_is_sent_to_another_process(run_dir: Path, method: str) -> None:
    state = make_state(run_dir)
    run_cycle(state)
    [outcome] = run_tasks([Task("child", cycles_with_handle, (state, 3))], start_method=method)
    assert outcome.ok, outcome.describe()
    assert len(state.lock_and_read_trials()) == 4
    assert check_run_dir(run_dir) == []


def test_incremental_reads_only_new_records_and_rereads_after_consolidation(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(durability="os", consolidation_limit=1000)
    a, b = make_state(run_dir, settings=settings), make_state(run_dir, settings=settings)
    for _ in range(20):
        run_cycle(a)
    a.lock_and_read_trials()
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        if fd != a._repo._intent._fd:  # count the journal's reads, not the marker's
            reads.append(len(data))
        return data

    monkeypatch.setattr("neps_state._journal.os.pread", counting_pread)
    cache = run_dir / "configs" / ".trial_cache.journal"
    size = cache.stat().st_size
    run_cycle(b)  # b appends three records (sample, claim, report)
    appended = cache.stat().st_size - size
    reads.clear()
    assert len(a.lock_and_read_trials()) == 21
    assert sum(reads) == appended  # a read what b appended, and nothing else
    b.lock_and_consolidate_cache()
    reads.clear()
    trials = a.lock_and_read_trials()  # a notices the new generation ...
    assert sum(reads) == cache.stat().st_size  # ... and reads it whole, once
    assert trials == b.lock_and_read_trials()


def test_settings_from_environment() -> None:
    env = {
        "NEPS_STATE_LOCK_TIMEOUT": "none",
        "NEPS_STATE_CONSOLIDATION_LIMIT": "7",
        "NEPS_STATE_CONSOLIDATION_RATIO": "0.5",
        "NEPS_STATE_DURABILITY": "OS",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        lock_timeout=None,
        consolidation_limit=7,
        consolidation_ratio=0.5,
        durability="os",
    )
    assert Settings.from_env({}) == Settings()
    with pytest.raises(AttributeError):
        s.lock_timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEPS_STATE_LOCK_TIMEOUT", "soon"),
        ("NEPS_STATE_LOCK_TIMEOUT", "-1"),
        ("NEPS_STATE_CONSOLIDATION_LIMIT", "1.5"),
        ("NEPS_STATE_CONSOLIDATION_LIMIT", "0"),
        ("NEPS_STATE_DURABILITY", "sometimes"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_state_reads_settings_from_environment(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEPS_STATE_CONSOLIDATION_LIMIT", "3")
    state = NePSState.create_or_load(run_dir, optimizer_info=INFO, optimizer_state=new_opt_state())
    assert state.settings.consolidation_limit == 3
    assert pickle.loads(pickle.dumps(state)).settings.consolidation_limit == 3


def test_journal_refuses_appends_that_race_it(run_dir: Path) -> None:
    make_state(run_dir)
    path = run_dir / "configs" / ".trial_cache.journal"
    first, second = Journal(path, fsync=False), Journal(path, fsync=False)
    assert first.refresh() is not None
    assert second.refresh() is not None
    first.append(b"one")
    with pytest.raises(Exception, match="lock is not being respected"):
        second.append(b"two")


def test_dropped_handles_release_their_descriptors(run_dir: Path) -> None:
    import gc  # noqa: PLC0415

    make_state(run_dir)
    gc.collect()
    before = _open_files()
    for _ in range(20):
        handle = make_state(run_dir)
        run_cycle(handle)
        handle.lock_and_consolidate_cache()
    del handle
    gc.collect()
    after = _open_files()
    # One descriptor stays, for the process's life: the lock on its alive file, which
    # says that this process, which claimed trials, still lives (neps_state._owners).
    alive = [p for p in after - before if p.endswith(".alive")]
    assert len(alive) == 1
    assert after - before == set(alive)


def _open_files() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            continue
    return out
