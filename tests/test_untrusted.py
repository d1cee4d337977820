"""Run directories from people you do not trust: nothing in them runs, nothing leads out.

A pickle that names ``os.system`` is refused before anything is imported or called
(a canary file shows it never ran); a symbolic link is never followed, a FIFO never
waited on; a directory others can write is reported, and refused on request.
"""

from __future__ import annotations

import logging
import os
import pickle
import stat
from pathlib import Path

import pytest
from neps_test_helpers import make_state, run_cycle

from neps_state import (
    CorruptedFileError,
    NePSState,
    Settings,
    UnsafeFileError,
    UnsafePermissionsError,
)
from neps_state._journal import MAGIC, frame
from pytest_neps._checker import check_run_dir
from pytest_neps.cli import main

OS = Settings(durability="os")


def malicious(canary: Path) -> bytes:
    """A pickle that, unpickled by ``pickle.loads``, creates ``canary``."""
    return b"cos\nsystem\n(V" + f"touch {canary}".encode() + b"\ntR."


def test_the_malicious_pickle_really_runs_under_plain_pickle(tmp_path: Path) -> None:
    # The control: the canary works, so its absence below means something.
    canary = tmp_path / "canary"
    pickle.loads(malicious(canary))  # the point of this control
    assert canary.exists()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "code from the run directory ran"


def test_a_malicious_optimizer_state_is_refused_by_the_state_and_the_tools(
    run_dir: Path, canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_state(run_dir)
    (run_dir / "configs" / ".trial_cache.journal").write_bytes(MAGIC + bytes(16))  # no copy
    (run_dir / "optimizer_state.pkl").write_bytes(malicious(canary))
    with pytest.raises(
        UnsafeFileError, match=r"optimizer_state.pkl: refused to unpickle os.system"
    ):
        NePSState.create_or_load(run_dir, load_only=True, settings=OS)
    assert main(["check", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "[no code in data]" in out
    assert "refused to unpickle os.system" in out
    assert main(["show", str(run_dir)]) == 0


def test_a_malicious_journal_record_is_refused(
    run_dir: Path, canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_state(run_dir)
    run_cycle(state)
    journal = run_dir / "configs" / ".trial_cache.journal"
    journal.write_bytes(journal.read_bytes() + frame(malicious(canary)))  # a version-1 record
    with pytest.raises(UnsafeFileError, match=r"refused to unpickle os.system"):
        NePSState(run_dir, OS).lock_and_read_trials()
    assert main(["check", str(run_dir)]) == 1
    assert "refused to unpickle os.system" in capsys.readouterr().out


def test_a_symlinked_trial_folder_is_not_followed(run_dir: Path, tmp_path: Path) -> None:
    state = make_state(run_dir)
    run_cycle(state)
    state.lock_and_sample_trial(lambda **_: _sample("1"), worker_id="w0")  # type: ignore[arg-type]
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = run_dir / "configs" / "config_1"
    for name in os.listdir(folder):
        (folder / name).rename(outside / name)
    folder.rmdir()
    folder.symlink_to(outside)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    trial = state.lock_and_get_trial_by_id("1")
    trial.set_evaluating(time_started=1.0, worker_id="w0")
    with pytest.raises(CorruptedFileError, match="config_1: the trial folder is not a folder"):
        state.put_updated_trial(trial, hints="metadata")
    with pytest.raises(CorruptedFileError, match="config_1: is a symbolic link"):
        state.unsafe_retry_get_trial_by_id("1")
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert any("symbolic link" in str(v) for v in check_run_dir(run_dir))


def _sample(tid: str) -> object:
    from neps_state import SampledConfig  # noqa: PLC0415

    return SampledConfig(id=tid, config={"x": 1})


@pytest.mark.parametrize("name", ["optimizer_info.yaml", "configs/config_0/metadata.json"])
def test_a_fifo_named_like_a_state_file_is_refused_without_blocking(
    run_dir: Path, name: str
) -> None:
    state = make_state(run_dir)
    run_cycle(state)
    path = run_dir / name
    path.unlink()
    os.mkfifo(path)
    if name.startswith("configs"):
        with pytest.raises(CorruptedFileError, match=f"{name}: is a FIFO"):
            state.unsafe_retry_get_trial_by_id("0")
    else:
        with pytest.raises(CorruptedFileError, match=f"{name}: is a FIFO"):
            NePSState.create_or_load(run_dir, load_only=True, settings=OS)
    assert stat.S_ISFIFO(os.lstat(path).st_mode)  # left as it was


def test_a_directory_others_can_write_is_reported_and_refused_on_request(
    run_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    make_state(run_dir)
    run_dir.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="neps_state"):
        NePSState.create_or_load(run_dir, load_only=True, settings=OS)
    assert f"{run_dir} is writable by its group and others" in caplog.text
    with pytest.raises(UnsafePermissionsError, match="writable by its group and others"):
        NePSState.create_or_load(
            run_dir, load_only=True, settings=Settings(durability="os", strict_permissions=True)
        )
    assert main(["check", str(run_dir)]) == 0
    assert "note: " in capsys.readouterr().out
    run_dir.chmod(0o1777)  # the sticky bit: others cannot replace what is not theirs
    assert not [n for n in _notes(run_dir) if "writable" in n]


def _notes(run_dir: Path) -> list[str]:
    notes: list[str] = []
    check_run_dir(run_dir, notes=notes)
    return notes


def test_files_are_created_within_the_umask(run_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        state = make_state(run_dir)
        run_cycle(state, error=ValueError("x"))
    finally:
        os.umask(old)
    for path in [run_dir, *run_dir.rglob("*")]:
        assert not os.lstat(path).st_mode & 0o077, f"{path} is readable or writable by others"


class Custom:
    """A class of the user's, which the allowlist does not know."""


def test_the_allowlist_can_be_extended_for_a_trusted_file(run_dir: Path) -> None:
    make_state(run_dir)
    (run_dir / "configs" / ".trial_cache.journal").write_bytes(MAGIC + bytes(16))
    from neps_state import OptimizationState, SeedSnapshot  # noqa: PLC0415

    shared = OptimizationState(None, SeedSnapshot.new_capture(), {"mine": Custom()})
    (run_dir / "optimizer_state.pkl").write_bytes(pickle.dumps(shared))
    with pytest.raises(UnsafeFileError, match=r"refused to unpickle test_untrusted\.Custom"):
        NePSState.create_or_load(run_dir, load_only=True, settings=OS)
    trusted = Settings(durability="os", pickle_allow=("test_untrusted.Custom",))
    state = NePSState.create_or_load(run_dir, load_only=True, settings=trusted)
    assert isinstance(state.lock_and_get_optimizer_state().shared_state["mine"], Custom)
