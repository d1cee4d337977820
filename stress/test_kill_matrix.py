"""The kill matrix: 20 SIGKILLs at every fault point of every mutating operation."""

from __future__ import annotations

import io

import pytest

from pytest_neps._killmatrix import render_matrix, run_matrix

RUNS_PER_CELL = 20


def test_kill_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    runs = run_matrix(RUNS_PER_CELL)
    table = io.StringIO()
    render_matrix(runs, table)
    with capsys.disabled():
        print(table.getvalue())
    assert len(runs) >= 20 * 21
    failed = [r for r in runs if not r.ok]
    assert not failed, table.getvalue()
