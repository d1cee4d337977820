"""The harness must be able to fail: each deliberately broken state is caught.

Every property of the conformance suite runs here against the negative controls
of ``pytest_neps.controls`` (with no example database, so nothing is replayed from
an earlier run) and must report a failure within a bounded budget.
"""

from __future__ import annotations

import pytest

from pytest_neps._pool import Pool
from pytest_neps.catching import (
    CASES,
    CONTROL,
    PropertyRun,
    caught,
    consolidation,
    creation,
    model,
    races,
    texts,
)


@pytest.mark.parametrize(
    ("prop", "control", "examples"), CASES, ids=[f"{p.__name__}-{c}" for p, c, _ in CASES]
)
def test_control_is_caught(neps_pool: Pool, prop: PropertyRun, control: str, examples: int) -> None:
    with pytest.raises(BaseException) as info:
        prop(CONTROL + control, neps_pool, examples)
    assert caught(info.value), f"not an assertion of the harness: {info.value!r}"


@pytest.mark.parametrize("prop", [model, races, creation, consolidation])
def test_reference_passes_the_same_budget(neps_pool: Pool, prop: PropertyRun) -> None:
    prop("neps_state:NePSState", neps_pool, 10)


def test_a_race_failure_shrinks_to_a_small_plan_and_prints_the_history(neps_pool: Pool) -> None:
    with pytest.raises(BaseException) as info:
        races(CONTROL + "UnlockedSampling", neps_pool, 50, shrink=True)
    assert caught(info.value)
    text = "\n".join(texts(info.value))
    assert "plan: {'prefix'" in text  # the (shrunk) plan ...
    assert "the race broke an invariant" in text  # ... the verdict ...
    assert "history:\n" in text  # ... and the history, one line per operation
    assert "w0 " in text or "w1 " in text or "w2 " in text
    # A note of the final replay, or a line of the failure's message: a race that did
    # not reproduce in the replay (Hypothesis's FlakyFailure) has no notes.
    lines = [line for t in texts(info.value) for line in t.splitlines()]
    plans = [line for line in lines if line.startswith("plan: ")]
    assert min(t.count("(") for t in plans) <= 8  # shrunk to a handful of operations
