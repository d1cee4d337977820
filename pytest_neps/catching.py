"""Negative controls against the suite's properties, with a fixed budget.

Each property runs against a deliberately broken state (``pytest_neps.controls``)
with no example database (nothing replayed from an earlier run); a control is
*caught* when the property fails with an assertion of the harness or the state's
own error where the model expects success. Used by the project's tests and by
the stress suite, which measures how reliably each control is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from neps_state import NePSError
from pytest_neps._impl import as_impl
from pytest_neps._pool import Pool
from pytest_neps.machines import model_machine
from pytest_neps.probes import check_batch_order
from pytest_neps.races import (
    INFOS,
    check_claim_storm,
    check_consolidation,
    check_creation,
    check_race,
    race_plans,
)

CONTROL = "pytest_neps.controls:"


def budget(max_examples: int, *, shrink: bool = False) -> settings:
    """Hypothesis settings for a bounded, non-replaying run (shrinking only if asked)."""
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    return settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )


def model(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    """The model machine against ``impl`` (in-process: ``pool`` is unused)."""
    del pool
    run_state_machine_as_test(
        model_machine(impl),
        settings=settings(budget(examples, shrink=shrink), stateful_step_count=25),
    )


def races(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    """The linearizability races against ``impl``."""
    hooks = as_impl(impl).calls_fault_hook()

    @budget(examples, shrink=shrink)
    @given(plan=race_plans(workers=3, fault_points=hooks))
    def prop(plan: dict[str, Any]) -> None:
        # While shrinking, a race must show up again: give each plan more chances.
        check_race(as_impl(impl), plan, pool, repeats=5 if shrink else 2)

    prop()


def creation(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    """The creation races against ``impl``."""

    @budget(examples, shrink=shrink)
    @given(infos=st.lists(st.sampled_from(sorted(INFOS)), min_size=2, max_size=6))
    def prop(infos: list[str]) -> None:
        check_creation(as_impl(impl), infos, pool)

    prop()


def consolidation(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    """The consolidation property against ``impl``."""

    @budget(examples, shrink=shrink)
    @given(
        steps=st.lists(st.sampled_from(["sample", "claim", "report"]), min_size=3, max_size=20),
        limit=st.integers(1, 4),
        readers=st.integers(1, 2),
    )
    def prop(steps: list[str], limit: int, readers: int) -> None:
        check_consolidation(
            as_impl(impl), steps=steps, limit=limit, crash=None, readers=readers, pool=pool
        )

    prop()


def claim_storm(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    """The claim storm against ``impl``, ``examples`` storms at most (the first finding ends it)."""
    del shrink
    for _ in range(examples):
        check_claim_storm(as_impl(impl), pool)


def batch_order(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    """The batch-order probe against ``impl`` (deterministic: one run says it all)."""
    del pool, examples, shrink
    check_batch_order(as_impl(impl))


def texts(error: BaseException) -> list[str]:
    """The messages and notes of an error and of every error it groups."""
    out = [str(error), *getattr(error, "__notes__", [])]
    for sub in getattr(error, "exceptions", ()):
        out += texts(sub)
    return out


def caught(error: BaseException) -> bool:
    """Whether a failure is a finding (not a crash of the harness itself).

    A finding is an assertion of the harness, or the state's own error where the
    model expects success.
    """
    if isinstance(error, AssertionError | Flaky | NePSError):
        return True
    return any(caught(e) for e in getattr(error, "exceptions", ()))


PropertyRun = Callable[..., None]
CASES: list[tuple[PropertyRun, str, int]] = [
    (races, "UnlockedSampling", 50),
    (races, "StaleCacheRead", 50),
    (model, "StaleCacheRead", 100),
    (model, "LossyConsolidation", 100),
    (consolidation, "LossyConsolidation", 30),
    (model, "EmptyAfterCacheLoss", 50),
    (model, "CleanLosesErrors", 200),
    (creation, "UnlockedCreate", 150),
    (model, "StaleConsolidation", 100),
    (batch_order, "EqualBatchTimes", 1),
    (claim_storm, "SplitClaim", 1),
]


def catch_rate(prop: PropertyRun, control: str, examples: int, pool: Pool, runs: int) -> int:
    """In how many of ``runs`` runs the property caught the control."""
    caught_runs = 0
    for _ in range(runs):
        try:
            prop(CONTROL + control, pool, examples)
        except BaseException as e:  # noqa: BLE001 - judged by `caught`
            caught_runs += caught(e)
    return caught_runs
