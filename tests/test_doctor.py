"""``neps-state doctor``: each check passes here and fails against a broken variant."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_neps import cli, doctor


def pretend_to_hold(path: str, held: Any, release: Any) -> None:
    """A lock that does not exclude (as ``flock`` on some network file systems)."""
    Path(path).touch()
    held.set()
    release.wait(30)


def replace_in_place(tmp: Path, target: Path, data: bytes) -> None:
    """A replacement that truncates and writes the file in place."""
    del tmp
    with target.open("wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        f.write(data[len(data) // 2 :])


def append_without_o_append(path: str, n: int, mark: int) -> None:
    """Appends at a position read first: two writers overwrite each other."""
    record = bytes([mark]) * 63 + b"\n"
    for _ in range(n):
        fd = os.open(path, os.O_WRONLY)
        os.lseek(fd, os.path.getsize(path), os.SEEK_SET)
        time.sleep(0.0002)  # a slow writer: the other one appends meanwhile
        os.write(fd, record)
        os.close(fd)


def test_this_file_system_is_safe(tmp_path: Path) -> None:
    result = doctor.diagnose(tmp_path)
    assert result.safe, result.render()
    assert {c.name for c in result.checks} == {"flock", "rename", "append", "fsync", "exchange"}
    assert set(result.timings_ms) == {"fsynced append", "file creation"}
    assert list(tmp_path.iterdir()) == []  # the scratch folders are removed


def test_locks_that_do_not_exclude_are_unsafe(tmp_path: Path) -> None:
    check = doctor.check_flock(tmp_path, hold=pretend_to_hold)
    assert not check.ok
    assert "took a lock another one held" in check.detail


def test_a_replacement_in_place_is_seen_partial(tmp_path: Path) -> None:
    check = doctor.check_rename(tmp_path, rounds=2000, replace=replace_in_place)
    assert not check.ok, check.detail


def test_appends_that_overwrite_each_other_are_unsafe(tmp_path: Path) -> None:
    check = doctor.check_append(tmp_path, n=500, append=append_without_o_append)
    assert not check.ok, check.detail


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", str(tmp_path)]) == 0
    assert "verdict: safe for neps_state" in capsys.readouterr().out
    assert cli.main(["doctor", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_without_renameat2_the_fallback_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("neps_state._io._RENAMEAT2", None)
    check = doctor.check_exchange(tmp_path)
    assert check.ok
    assert "fallback" in check.detail
    assert not check.required
