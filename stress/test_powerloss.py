"""Power loss, in full: every crash state of every operation, and power cuts on LazyFS."""

from __future__ import annotations

import io

import pytest

from neps_state import NePSState
from pytest_neps._crashstates import enumerate_and_check, render
from pytest_neps.controls import SkipsJournalFsync, TrustsDerivedFiles
from pytest_neps.lazyfs import unavailable
from pytest_neps.powerloss import render as render_cuts
from pytest_neps.powerloss import run_powerloss

RANDOM_CUTS = 20
CUTS_PER_POINT = 3


def test_every_crash_state_of_every_operation(capsys: pytest.CaptureFixture[str]) -> None:
    stats = enumerate_and_check()
    table = io.StringIO()
    render(stats, table)
    with capsys.disabled():
        print(table.getvalue())
    assert all(s.ok for s in stats), table.getvalue()
    assert sum(s.checked for s in stats) > 1000


@pytest.mark.parametrize("control", [SkipsJournalFsync, TrustsDerivedFiles])
def test_crash_states_catch_the_control_in_most_operations(control: type[NePSState]) -> None:
    stats = enumerate_and_check(control, every=2)
    caught = [s.op for s in stats if s.inconsistent]
    assert len(caught) >= len(stats) // 2, caught


def test_power_cuts_on_lazyfs(capsys: pytest.CaptureFixture[str]) -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"LazyFS: {reason}")
    runs = run_powerloss(RANDOM_CUTS, point_runs=CUTS_PER_POINT)
    table = io.StringIO()
    render_cuts(runs, table, title="power cuts, the reference state, durability fsync")
    with capsys.disabled():
        print(table.getvalue())
    assert all(r.ok for r in runs), table.getvalue()


@pytest.mark.parametrize("control", [SkipsJournalFsync, TrustsDerivedFiles])
def test_power_cuts_catch_the_control_every_time(control: type[NePSState]) -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"LazyFS: {reason}")
    runs = run_powerloss(5, impl=control)
    assert not any(r.ok for r in runs), [r.describe() for r in runs]
