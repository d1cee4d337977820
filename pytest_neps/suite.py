"""The conformance suite: run every harness property against an implementation.

In a test module of your project::

    from pytest_neps.suite import *  # noqa: F403

runs the model machine, the linearizability races, the creation races, the
consolidation property and the probes for the seed's defects (``probes``: unsafe
ids, damaged files, a lost cache, a torn cache tail, a crash at every file change of a sample,
cost growth) against ``neps_impl`` (``--neps-impl module:attr`` or a fixture
override); the races use the plugin's ``neps_pool`` of worker processes. A
failure that is a known seed defect names it (``D1``-``D11``, ``pytest_neps.defects``).
The properties carry their own settings (no deadline: an example starts
processes), so they pass under any profile; the budget is the profile's
(``--hypothesis-profile=neps-ci``, 25 examples; ``neps-stress``, 400), and 25 under
Hypothesis's ``default`` profile, so plain ``pytest`` runs them in CI time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from pytest_neps._impl import as_impl
from pytest_neps._pool import Pool
from pytest_neps._profiles import suite_settings
from pytest_neps._swarm import SwarmConfig, run_swarm
from pytest_neps.machines import model_machine
from pytest_neps.plugin import POOL_SIZE
from pytest_neps.probes import (
    DAMAGED_FILES,
    DAMAGES,
    TORN_TAILS,
    UNSAFE_IDS,
    NotApplicable,
    check_batch_order,
    check_clean_by_id,
    check_cost_growth,
    check_crash_inside_report,
    check_crash_inside_sample,
    check_damaged_file,
    check_lost_cache,
    check_torn_cache,
    check_unsafe_id,
)
from pytest_neps.races import (
    CLAIM_RACE,
    INFOS,
    check_claim_storm,
    check_consolidation,
    check_creation,
    check_race,
    consolidation_crashes,
    race_plans,
)

SETTINGS = suite_settings()
"""The settings of every property below (see the module's docstring)."""


def test_model_machine(neps_impl: str) -> None:
    """Every handle's view equals an in-memory model after every step."""
    machine = model_machine(neps_impl)
    run_state_machine_as_test(machine, settings=settings(SETTINGS, stateful_step_count=25))


@SETTINGS
@given(data=st.data())
def test_races_are_linearizable(neps_impl: str, neps_pool: Pool, data: st.DataObject) -> None:
    """Concurrent batches (with kills) leave a linearizable history.

    Kills are at file changes (any implementation) and, for one that calls
    ``neps_state``'s fault hook, at its named fault points.
    """
    impl = as_impl(neps_impl)
    plan = data.draw(race_plans(workers=3, fault_points=impl.calls_fault_hook()), label="plan")
    check_race(impl, plan, neps_pool)


def test_workers_claiming_at_once_take_different_trials(neps_impl: str, neps_pool: Pool) -> None:
    """Three workers claim two pending trials at once: never one trial twice (D7)."""
    check_race(as_impl(neps_impl), CLAIM_RACE, neps_pool, repeats=3)


def test_a_claim_storm_takes_each_trial_once(neps_impl: str, neps_pool: Pool) -> None:
    """Three workers claim 500 pending trials at once until none is left: each once (D7)."""
    check_claim_storm(as_impl(neps_impl), neps_pool)


@SETTINGS
@given(infos=st.lists(st.sampled_from(sorted(INFOS)), min_size=2, max_size=POOL_SIZE))
def test_creation_race(neps_impl: str, neps_pool: Pool, infos: list[str]) -> None:
    """Exactly one optimizer info wins; every other creator gets a NePSError."""
    check_creation(as_impl(neps_impl), infos, neps_pool)


@SETTINGS
@given(
    steps=st.lists(st.sampled_from(["sample", "claim", "report"]), min_size=3, max_size=20),
    limit=st.integers(1, 4),
    readers=st.integers(1, 2),
    data=st.data(),
)
def test_consolidation(  # noqa: PLR0917 - Hypothesis passes drawn values by name
    neps_impl: str, neps_pool: Pool, steps: list[str], limit: int, readers: int, data: Any
) -> None:
    """Consolidations under readers and crashes lose nothing; the cache is old or new."""
    impl = as_impl(neps_impl)
    crash = data.draw(consolidation_crashes(fault_points=impl.calls_fault_hook()), label="crash")
    check_consolidation(
        impl, steps=steps, limit=limit, crash=crash, readers=readers, pool=neps_pool
    )


@pytest.mark.parametrize("trial_id", UNSAFE_IDS, ids=repr)
def test_unsafe_trial_ids_are_refused(neps_impl: str, trial_id: str) -> None:
    """An id that would leave the run directory is refused; nothing is written outside."""
    check_unsafe_id(as_impl(neps_impl), trial_id)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", DAMAGED_FILES)
def test_a_damaged_file_is_a_typed_error_naming_it(neps_impl: str, name: str, how: str) -> None:
    """A damaged file is read back, or refused by the implementation's own error naming it."""
    _applicable(check_damaged_file, as_impl(neps_impl), name, how)


@pytest.mark.parametrize("tail", TORN_TAILS, ids=repr)
def test_a_torn_cache_tail_hides_no_trial(neps_impl: str, tail: bytes) -> None:
    """Bytes of a record cut short at the end of the cache break no reader."""
    _applicable(check_torn_cache, as_impl(neps_impl), tail)


def test_a_lost_cache_hides_no_trial(neps_impl: str) -> None:
    """With the trial cache deleted, a read still returns every trial."""
    _applicable(check_lost_cache, as_impl(neps_impl))


def test_a_clean_by_id_loses_nothing_else(neps_impl: str) -> None:
    """Resetting and removing trials by id (``neps.clean``) leave the other trials' records."""
    _applicable(check_clean_by_id, as_impl(neps_impl))


def test_a_batch_is_claimed_in_the_order_it_was_proposed(neps_impl: str) -> None:
    """One sample's trials (ids 7, 10, 3) are claimed in that order, by any handle."""
    check_batch_order(as_impl(neps_impl))


def _at_every_file_change(check: Any, impl: Any, pool: Pool, what: str) -> None:
    """``check(impl, nth, pool)`` for nth = 1, 2, ... until the operation has no nth change."""
    for nth in range(1, MAX_FILE_CHANGES + 1):
        try:
            check(impl, nth, pool)
        except NotApplicable:
            if nth == 1:
                raise
            return
    pytest.fail(f"a {what} made more than {MAX_FILE_CHANGES} file changes: raise the bound")


def test_a_crash_at_every_file_change_of_a_sample(neps_impl: str, neps_pool: Pool) -> None:
    """A sample killed before each of its file changes leaves no trial without its folder."""
    _at_every_file_change(check_crash_inside_sample, as_impl(neps_impl), neps_pool, "sample")


def test_a_crash_at_every_file_change_of_a_report(neps_impl: str, neps_pool: Pool) -> None:
    """A crashed report killed before each of its file changes keeps report and record together."""
    _at_every_file_change(check_crash_inside_report, as_impl(neps_impl), neps_pool, "report")


def test_a_swarm_never_shows_a_half_written_file(neps_impl: str, tmp_path: Path) -> None:
    """3 workers and a lock-free reader: no file is ever seen partially written (D3)."""
    result = run_swarm(
        SwarmConfig(impl=neps_impl, workers=3, trials=60, observers=1, timeout=300),
        tmp_path / "run",
    )
    result.assert_consistent()


def test_a_cycle_costs_the_same_at_3000_trials(neps_impl: str) -> None:
    """A cycle at 3000 trials costs at most 2.5x one at 20 (medians, side by side)."""
    check_cost_growth(as_impl(neps_impl))


MAX_FILE_CHANGES = 40


def _applicable(check: Any, *args: Any) -> None:
    try:
        check(*args)
    except NotApplicable as e:
        pytest.skip(f"cannot run on this implementation: {e}")


__all__ = [
    "test_a_batch_is_claimed_in_the_order_it_was_proposed",
    "test_a_claim_storm_takes_each_trial_once",
    "test_a_clean_by_id_loses_nothing_else",
    "test_a_crash_at_every_file_change_of_a_report",
    "test_a_crash_at_every_file_change_of_a_sample",
    "test_a_cycle_costs_the_same_at_3000_trials",
    "test_a_damaged_file_is_a_typed_error_naming_it",
    "test_a_lost_cache_hides_no_trial",
    "test_a_swarm_never_shows_a_half_written_file",
    "test_a_torn_cache_tail_hides_no_trial",
    "test_consolidation",
    "test_creation_race",
    "test_model_machine",
    "test_races_are_linearizable",
    "test_unsafe_trial_ids_are_refused",
    "test_workers_claiming_at_once_take_different_trials",
]
