"""The harness must be able to fail: each deliberately broken state is caught.

Every property of the conformance suite runs here against the negative controls
of ``pytest_neps.controls`` (with no example database, so nothing is replayed from
an earlier run) and must report a failure within a bounded budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from neps_state import NePSError
from pytest_neps._impl import as_impl
from pytest_neps._pool import Pool
from pytest_neps.machines import model_machine
from pytest_neps.races import INFOS, check_consolidation, check_creation, check_race, race_plans

CONTROL = "pytest_neps.controls:"


def budget(max_examples: int, *, shrink: bool = False) -> settings:
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    return settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    p = Pool(6)
    yield p
    p.close()


def model(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    run_state_machine_as_test(
        model_machine(impl),
        settings=settings(budget(examples, shrink=shrink), stateful_step_count=25),
    )


def races(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    @budget(examples, shrink=shrink)
    @given(plan=race_plans(workers=3))
    def prop(plan: dict[str, Any]) -> None:
        # While shrinking, a race must show up again: give each plan more chances.
        check_race(as_impl(impl), plan, pool, repeats=5 if shrink else 2)

    prop()


def creation(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
    @budget(examples, shrink=shrink)
    @given(infos=st.lists(st.sampled_from(sorted(INFOS)), min_size=2, max_size=6))
    def prop(infos: list[str]) -> None:
        check_creation(as_impl(impl), infos, pool)

    prop()


def consolidation(impl: str, pool: Pool, examples: int, *, shrink: bool = False) -> None:
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


def caught(error: BaseException) -> bool:
    """Whether a failure is a finding: an assertion of the harness, or the state's own
    error where the model expects success (not a crash of the harness itself).
    """
    if isinstance(error, AssertionError | Flaky | NePSError):
        return True
    return any(caught(e) for e in getattr(error, "exceptions", ()))


PropertyRun = Callable[..., None]
CASES: list[tuple[PropertyRun, str, int]] = [
    (races, "UnlockedSampling", 50),
    (races, "StaleCacheRead", 50),
    (model, "StaleCacheRead", 50),
    (model, "LossyConsolidation", 50),
    (consolidation, "LossyConsolidation", 30),
    (model, "EmptyAfterCacheLoss", 50),
    (creation, "UnlockedCreate", 50),
]


@pytest.mark.parametrize(
    ("prop", "control", "examples"), CASES, ids=[f"{p.__name__}-{c}" for p, c, _ in CASES]
)
def test_control_is_caught(pool: Pool, prop: PropertyRun, control: str, examples: int) -> None:
    with pytest.raises(BaseException) as info:
        prop(CONTROL + control, pool, examples)
    assert caught(info.value), f"not an assertion of the harness: {info.value!r}"


@pytest.mark.parametrize("prop", [model, races, creation, consolidation])
def test_reference_passes_the_same_budget(pool: Pool, prop: PropertyRun) -> None:
    prop("neps_state:NePSState", pool, 10)


def _texts(error: BaseException) -> list[str]:
    """The messages and notes of an error and of every error it groups."""
    out = [str(error), *getattr(error, "__notes__", [])]
    for sub in getattr(error, "exceptions", ()):
        out += _texts(sub)
    return out


def test_a_race_failure_shrinks_to_a_small_plan_and_prints_the_history(pool: Pool) -> None:
    with pytest.raises(BaseException) as info:
        races(CONTROL + "UnlockedSampling", pool, 50, shrink=True)
    assert caught(info.value)
    text = "\n".join(_texts(info.value))
    assert "plan: {'prefix'" in text  # the (shrunk) plan ...
    assert "not linearizable" in text  # ... the verdict ...
    assert "w0 " in text or "w1 " in text or "w2 " in text  # ... and the history, per worker
    plans = [t for t in _texts(info.value) if t.startswith("plan: ")]
    assert min(t.count("(") for t in plans) <= 8  # shrunk to a handful of operations
