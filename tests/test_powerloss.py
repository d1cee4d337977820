"""Power loss: what a crash of the machine may leave, and that the next boot recovers it.

Without LazyFS: the crash-state model (every state a POSIX file system may persist,
built from a trace of the file-system changes), direct damage as a power loss leaves
it, and the repair command. The LazyFS harness has its own tests (test_lazyfs.py).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
from neps_test_helpers import make_state, run_cycle

from neps_state import CorruptedFileError, NePSState, Settings
from neps_state import _io as io
from neps_state._boot import BOOT_ID_ENV
from pytest_neps._checker import check_run_dir
from pytest_neps._crashstates import _states_at, _Workload, enumerate_and_check
from pytest_neps._fsmodel import Recorder, Tree
from pytest_neps._optimizers import random_search
from pytest_neps.cli import main
from pytest_neps.controls import SkipsJournalFsync, TrustsDerivedFiles

FSYNC = Settings(durability="fsync")
OS = Settings(durability="os")


def files(tree: Tree) -> frozenset[tuple[str, bytes]]:
    return frozenset((path, bytes(node.data)) for path, node in tree.walk() if node.kind == "f")


def states_after(root: Path, changes: object) -> set[frozenset[tuple[str, bytes]]]:
    """Every crash state (as {path: bytes}) the changes made by ``changes()`` may leave."""
    recorder = Recorder(root)
    previous = io.set_tracer(recorder)
    try:
        changes()  # type: ignore[operator]
    finally:
        io.set_tracer(previous)
    trace = recorder.trace
    return {files(t) for t in _states_at(trace, recorder.initial, len(trace), 0)}


# -- the model -----------------------------------------------------------------------


def test_unsynced_write_and_rename_may_leave_any_prefix_and_either_data(tmp_path: Path) -> None:
    def changes() -> None:
        fd = io.create(tmp_path / "a")
        io.write(fd, b"hello")
        os.close(fd)
        io.rename(tmp_path / "a", tmp_path / "b")

    assert states_after(tmp_path, changes) == {
        frozenset(),
        frozenset({("a", b"")}),
        frozenset({("a", b"hello")}),
        frozenset({("b", b"")}),
        frozenset({("b", b"hello")}),
        frozenset({("b", b"he")}),  # the write torn in half
    }


def test_fsync_of_file_and_folder_leaves_one_state(tmp_path: Path) -> None:
    def changes() -> None:
        fd = io.create(tmp_path / "a")
        io.write(fd, b"hello")
        io.fsync_fd(fd)
        os.close(fd)
        io.rename(tmp_path / "a", tmp_path / "b")
        io.fsync_dir(tmp_path)

    assert states_after(tmp_path, changes) == {frozenset({("b", b"hello")})}


def test_a_preallocated_file_may_read_as_zeros(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"x")

    def changes() -> None:
        fd = io.create(tmp_path / "a")
        io.preallocate(fd, 3)
        io.write(fd, b"abc")
        os.close(fd)
        io.fsync_dir(tmp_path)

    states = states_after(tmp_path, changes)
    assert frozenset({("old", b"x"), ("a", b"\0\0\0")}) in states
    assert frozenset({("old", b"x"), ("a", b"abc")}) in states
    assert all(("old", b"x") in s for s in states)  # what was there before stays


# -- every operation's crash states -----------------------------------------------------

STEPS = ["create", *[name for name, _ in _Workload().steps() if name != "damage"]]


@pytest.mark.parametrize("step", STEPS)
def test_every_crash_state_of_an_operation_recovers(step: str) -> None:
    # Every third distinct state here; `neps-state crashstates` and the stress suite
    # check all of them.
    [stats] = enumerate_and_check(steps=[step], every=3)
    assert stats.traced > 0
    assert stats.checked > 0
    assert not stats.inconsistent, "\n".join(stats.inconsistent[:5])


@pytest.mark.parametrize(
    ("control", "step"),
    [(SkipsJournalFsync, "sample"), (SkipsJournalFsync, "report"), (TrustsDerivedFiles, "report")],
    ids=["skips-journal-fsync-sample", "skips-journal-fsync-report", "trusts-derived-files"],
)
def test_negative_controls_are_caught(control: type[NePSState], step: str) -> None:
    [stats] = enumerate_and_check(control, steps=[step], every=3)
    assert stats.inconsistent


def test_an_implementation_that_cannot_be_traced_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for a state that does not write through neps_state._io: nothing is traced.
    monkeypatch.setattr("pytest_neps._crashstates.set_tracer", lambda _: None)
    [stats] = enumerate_and_check(steps=["sample"])
    assert not stats.ok
    assert "no file-system change was traced" in stats.inconsistent[0]


# -- recovery of a damaged run directory -------------------------------------------------


@pytest.fixture
def new_boot(monkeypatch: pytest.MonkeyPatch) -> object:
    def reboot(name: str = "after-the-power-loss") -> None:
        monkeypatch.setenv(BOOT_ID_ENV, name)

    monkeypatch.setenv(BOOT_ID_ENV, "before")
    return reboot


def lose_unsynced_data(run: Path) -> None:
    """As LazyFS: every trial file and the optimizer state empty, a torn record at the end."""
    for path in (run / "configs").glob("config_*/*"):
        path.write_bytes(b"")
    (run / "optimizer_state.pkl").write_bytes(b"")
    with (run / "configs" / ".trial_cache.journal").open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00")


def test_a_new_boot_rebuilds_what_a_power_loss_emptied(run_dir: Path, new_boot: object) -> None:
    state = make_state(run_dir, settings=FSYNC)
    for i in range(4):
        run_cycle(state, error=RuntimeError("boom") if i % 2 else None)
    state.lock_and_sample_trial(random_search, worker_id="w1")
    trials = state.lock_and_read_trials()
    opt = pickle.dumps(state.lock_and_get_optimizer_state())
    errors = state.lock_and_get_errors().errs
    lose_unsynced_data(run_dir)
    assert check_run_dir(run_dir)
    new_boot()  # type: ignore[operator]
    again = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert again.lock_and_read_trials() == trials
    assert pickle.dumps(again.lock_and_get_optimizer_state()) == opt
    assert again.lock_and_get_errors().errs == errors
    assert not check_run_dir(run_dir)
    run_cycle(again)
    assert not check_run_dir(run_dir)


def test_a_recovery_logs_one_warning_saying_what_it_rebuilt(
    run_dir: Path, new_boot: object, caplog: pytest.LogCaptureFixture
) -> None:
    # 300 trials whose files a power loss emptied: one warning line for the whole
    # recovery (what, how many files, from what), the per-file detail at debug level
    state = make_state(run_dir, settings=FSYNC)
    for _ in range(30):
        state.lock_and_sample_trial(random_search, worker_id="w1", n=10)
    trials = state.lock_and_read_trials()
    files = len(list((run_dir / "configs").glob("config_*/*")))
    lose_unsynced_data(run_dir)
    new_boot()  # type: ignore[operator]
    with caplog.at_level(logging.DEBUG, logger="neps_state"):
        again = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
        assert again.lock_and_read_trials() == trials
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    [line] = [r.getMessage() for r in warnings]
    assert str(run_dir) in line
    assert f"{files + 1} files rewritten from the journal" in line, line
    assert "cut 6 bytes" in line, line
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) >= files + 1
    assert not check_run_dir(run_dir)


def test_the_same_boot_does_not_look_and_the_checker_and_repair_do(
    run_dir: Path, new_boot: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # Within one boot nothing but a power loss empties these files, so opening the run
    # does not read them all; `check` says a repair is needed, `repair` does it.
    state = make_state(run_dir, settings=FSYNC)
    run_cycle(state)
    (run_dir / "configs" / "config_0" / "report.yaml").write_bytes(b"")
    NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert (run_dir / "configs" / "config_0" / "report.yaml").read_bytes() == b""
    assert main(["check", str(run_dir)]) == 1
    assert "a repair is needed: `neps-state repair" in capsys.readouterr().out
    assert main(["repair", "--dry-run", str(run_dir)]) == 0
    assert "report.yaml: rewritten from the journal: empty" in capsys.readouterr().out
    assert (run_dir / "configs" / "config_0" / "report.yaml").read_bytes() == b""
    assert main(["repair", str(run_dir)]) == 0
    assert "changed 1 file(s)" in capsys.readouterr().out
    assert not check_run_dir(run_dir)


def test_folders_of_commits_that_never_completed_are_removed(
    run_dir: Path, new_boot: object
) -> None:
    state = make_state(run_dir, settings=FSYNC)
    run_cycle(state)
    stray = run_dir / "configs" / "config_99"
    stray.mkdir()
    (stray / "metadata.json").write_bytes(b"")
    new_boot()  # type: ignore[operator]
    again = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert not stray.exists()
    assert sorted(again.lock_and_read_trials()) == ["0"]


def test_os_durability_keeps_folders_the_journal_lost_and_refuses_what_it_cannot_rebuild(
    run_dir: Path, new_boot: object
) -> None:
    state = make_state(run_dir, settings=OS)
    run_cycle(state)
    state.lock_and_consolidate_cache()  # durable in every mode
    run_cycle(state)  # "1": only in records after the snapshot
    run_cycle(state)  # "2"
    journal = run_dir / "configs" / ".trial_cache.journal"
    size = _snapshot_end(journal)
    with journal.open("r+b") as f:
        f.truncate(size)  # the power loss took every record since the consolidation
    (run_dir / "configs" / "config_2" / "config.yaml").write_bytes(b"")
    new_boot()  # type: ignore[operator]
    with pytest.raises(CorruptedFileError, match=r"config_2/config.yaml: is empty; .*repair"):
        NePSState.create_or_load(run_dir, load_only=True, settings=OS)
    repairs = NePSState.repair(run_dir, settings=OS)
    assert any("moved aside" in r.action and r.path.name == "config_2" for r in repairs)
    again = NePSState.create_or_load(run_dir, load_only=True, settings=OS)
    trials = again.lock_and_read_trials()
    assert sorted(trials) == ["0", "1"]  # "1" survived in its folder and is back
    assert trials["1"].metadata.state.value == "success"
    assert not check_run_dir(run_dir)


def _snapshot_end(journal: Path) -> int:
    from neps_state._journal import HEADER_SIZE, parse_frames  # noqa: PLC0415

    payloads, _ = parse_frames(journal.read_bytes(), HEADER_SIZE)
    return HEADER_SIZE + 8 + len(payloads[0])


def test_error_records_follow_the_journal(run_dir: Path, new_boot: object) -> None:
    state = make_state(run_dir, settings=FSYNC)
    run_cycle(state, error=ValueError("first"))
    run_cycle(state, error=ValueError("second"))
    dump = run_dir / "shared_errors.jsonl"
    lines = dump.read_bytes().splitlines(keepends=True)
    orphan = json.dumps(
        {"trial_id": "0", "worker_id": "w9", "err_type": "E", "err": "x", "tb": None}
    )
    dump.write_bytes(lines[0] + orphan.encode() + b"\n")  # lost the second, gained an orphan
    new_boot()  # type: ignore[operator]
    again = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert [e.err for e in again.lock_and_get_errors().errs] == ["first", "second"]
    assert not check_run_dir(run_dir)


def test_recovery_logs_each_repair(
    run_dir: Path, new_boot: object, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(run_dir, settings=FSYNC)
    run_cycle(state)
    (run_dir / "configs" / "config_0" / "metadata.json").write_bytes(b"\0" * 10)
    new_boot()  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="neps_state"):
        NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert any(
        "metadata.json: rewritten from the journal: zero-filled" in m for m in caplog.messages
    )


def test_a_journal_of_the_previous_version_is_still_read(run_dir: Path) -> None:
    # Version 1 records are bare pickled lists of trials, without optimizer state.
    from neps_state._journal import MAGIC, frame  # noqa: PLC0415

    state = make_state(run_dir, settings=FSYNC)
    for _ in range(3):
        run_cycle(state)
    trials = state.lock_and_read_trials()
    records = [pickle.dumps([t]) for t in trials.values()]
    journal = run_dir / "configs" / ".trial_cache.journal"
    journal.write_bytes(MAGIC + bytes(16) + b"".join(frame(r) for r in records))
    again = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert again.lock_and_read_trials() == trials
    run_cycle(again)  # the optimizer state comes from the file, then from the journal
    assert not check_run_dir(run_dir)


def test_a_journal_under_the_old_name_is_moved_and_a_neps_cache_left_alone(
    run_dir: Path,
) -> None:
    state = make_state(run_dir, settings=FSYNC)
    run_cycle(state)
    configs = run_dir / "configs"
    (configs / ".trial_cache.journal").rename(configs / ".trial_cache.pkl")
    assert not check_run_dir(run_dir)  # the checker reads it there too
    again = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert sorted(again.lock_and_read_trials()) == ["0"]
    assert (configs / ".trial_cache.journal").read_bytes().startswith(b"NEPSJRN1")
    assert not (configs / ".trial_cache.pkl").exists()
    # NePS's own cache under that name is NePS's: read around (folders), never touched.
    neps_cache = pickle.dumps({"0": {"config": {}}})
    (configs / ".trial_cache.pkl").write_bytes(neps_cache)
    (configs / ".trial_cache.journal").unlink()
    third = NePSState.create_or_load(run_dir, load_only=True, settings=FSYNC)
    assert sorted(third.lock_and_read_trials()) == ["0"]
    assert (configs / ".trial_cache.pkl").read_bytes() == neps_cache


@pytest.mark.parametrize(
    "config",
    [
        {"lr": 0.1, "layers": [1, 2, (3, 4)], "nested": {"a": {"b": None}}},
        {1: "int key", (2, 3): "tuple key", "\x00odd": "a NUL key"},
        {"when": __import__("datetime").datetime(2026, 1, 2, 3, 4, 5), "raw": b"\x00\xff"},
        {"nan": float("nan"), "inf": float("inf"), "neg": -0.0, "big": 2**70},
    ],
    ids=["nested", "odd-keys", "dates-bytes", "floats"],
)
def test_every_yaml_safe_config_round_trips_through_the_journal(
    run_dir: Path, config: dict[object, object]
) -> None:
    from neps_state import SampledConfig  # noqa: PLC0415

    state = make_state(run_dir)
    state.lock_and_sample_trial(
        lambda **_: SampledConfig(id="x", config=config),
        worker_id="w0",  # type: ignore[arg-type]
    )
    written = state.lock_and_read_trials()["x"].config
    again = NePSState(run_dir, OS).lock_and_read_trials()["x"].config  # decoded from the journal
    assert pickle.dumps(again) == pickle.dumps(written)
