"""10,000 damaged run directories: untyped errors, canary executions, collateral changes."""

from __future__ import annotations

import logging

import pytest

from pytest_neps._fuzz import fuzz

INPUTS = 10_000


@pytest.mark.timeout(3600)  # ~10 minutes on 2 cores
def test_ten_thousand_damaged_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    logging.disable(logging.WARNING)
    try:
        stats = fuzz(INPUTS, seed=1)
    finally:
        logging.disable(logging.NOTSET)
    with capsys.disabled():
        print(
            f"\ndamaged inputs {stats.tried}: untyped exceptions {stats.untyped}, canary"
            f" executions {stats.canary}, other files changed {stats.collateral},"
            f" check exit 0 on a refused directory {stats.unnoticed}"
        )
    assert stats.tried == INPUTS
    assert not stats.failures, "\n".join(stats.failures[:20])
