"""Lock behaviour under contention and under killed holders."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_neps._lockcheck import contend, wait_after_killed_holder


def test_eight_processes_five_hundred_sections_no_overlap_no_lost_increment(
    tmp_path: Path,
) -> None:
    assert contend(tmp_path, procs=8, n=500) == (8 * 500, 0)


def test_the_same_check_catches_no_lock(tmp_path: Path) -> None:
    total, overlaps = contend(tmp_path, procs=8, n=500, noop=True)
    assert total < 8 * 500
    assert overlaps > 0


@pytest.mark.parametrize("attempt", range(10))
def test_a_killed_holder_never_blocks_the_next_waiter(tmp_path: Path, attempt: int) -> None:
    assert wait_after_killed_holder(tmp_path / f"{attempt}.lock") < 1.0
