"""How reliably each negative control is caught: 20 runs of each property's budget."""

from __future__ import annotations

import pytest

from pytest_neps._pool import Pool
from pytest_neps.catching import CASES, PropertyRun, catch_rate

RUNS = 20


@pytest.mark.parametrize(
    ("prop", "control", "examples"), CASES, ids=[f"{p.__name__}-{c}" for p, c, _ in CASES]
)
def test_catch_rate(
    neps_pool: Pool,
    prop: PropertyRun,
    control: str,
    examples: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rate = catch_rate(prop, control, examples, neps_pool, RUNS)
    with capsys.disabled():
        print(f"\n{prop.__name__:<14}{control:<22} caught in {rate}/{RUNS} runs")
    assert rate == RUNS
