"""The conformance suite: run every harness property against an implementation.

In a test module of your project::

    from pytest_neps.suite import *  # noqa: F403

runs the model machine, the linearizability races, the creation races and the
consolidation property against ``neps_impl`` (``--neps-impl module:attr`` or a
fixture override); the races use the plugin's ``neps_pool`` of worker processes.
The properties carry their own settings (no deadline: an example starts
processes), so they pass under any profile; the budget is the profile's
(``--hypothesis-profile=neps-ci``, 25 examples; ``neps-stress``, 400), and 25 under
Hypothesis's ``default`` profile, so plain ``pytest`` runs them in CI time.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from pytest_neps._impl import as_impl
from pytest_neps._pool import Pool
from pytest_neps._profiles import suite_settings
from pytest_neps.machines import model_machine
from pytest_neps.plugin import POOL_SIZE
from pytest_neps.races import INFOS, check_consolidation, check_creation, check_race, race_plans

SETTINGS = suite_settings()
"""The settings of every property below (see the module's docstring)."""


def test_model_machine(neps_impl: str) -> None:
    """Every handle's view equals an in-memory model after every step."""
    machine = model_machine(neps_impl)
    run_state_machine_as_test(machine, settings=settings(SETTINGS, stateful_step_count=25))


@SETTINGS
@given(plan=race_plans(workers=3))
def test_races_are_linearizable(neps_impl: str, neps_pool: Pool, plan: dict[str, Any]) -> None:
    """Concurrent batches (with kills) leave a linearizable history."""
    check_race(as_impl(neps_impl), plan, neps_pool)


@SETTINGS
@given(infos=st.lists(st.sampled_from(sorted(INFOS)), min_size=2, max_size=POOL_SIZE))
def test_creation_race(neps_impl: str, neps_pool: Pool, infos: list[str]) -> None:
    """Exactly one optimizer info wins; every other creator gets a NePSError."""
    check_creation(as_impl(neps_impl), infos, neps_pool)


@SETTINGS
@given(
    steps=st.lists(st.sampled_from(["sample", "claim", "report"]), min_size=3, max_size=20),
    limit=st.integers(1, 4),
    crash=st.none()
    | st.tuples(st.sampled_from(["consolidate.written", "consolidate.renamed"]), st.integers(1, 3)),
    readers=st.integers(1, 2),
)
def test_consolidation(  # noqa: PLR0917 - Hypothesis passes drawn values by name
    neps_impl: str, neps_pool: Pool, steps: list[str], limit: int, crash: Any, readers: int
) -> None:
    """Consolidations under readers and crashes lose nothing; the cache is old or new."""
    check_consolidation(
        as_impl(neps_impl), steps=steps, limit=limit, crash=crash, readers=readers, pool=neps_pool
    )


__all__ = [
    "test_consolidation",
    "test_creation_race",
    "test_model_machine",
    "test_races_are_linearizable",
]
