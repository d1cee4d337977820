"""Every file kind of a real run, damaged every way: a typed error or a recovery, nothing run.

A short budget here; ``stress/test_fuzz_files.py`` tries 10,000 damaged inputs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from pytest_neps._fuzz import Damage, check_damaged, damages, make_template


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("fuzz") / "template")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    # Recoveries warn, as they should; thousands of warnings say nothing here.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage=damages())
def test_a_damaged_run_is_refused_typed_or_recovered_and_runs_nothing(
    template: Path, damage: Damage
) -> None:
    work = Path(tempfile.mkdtemp(prefix="neps-fuzz-"))
    problems = check_damaged(damage, template, work)
    assert not problems, f"{damage}: {problems}"


def test_the_canary_of_the_fuzzer_can_fire(template: Path, tmp_path: Path) -> None:
    # A negative control: with plain pickle (what this project did before), the
    # malicious optimizer state runs, and check_damaged says so.
    import pickle  # noqa: PLC0415

    from neps_state import _pickles  # noqa: PLC0415

    def unsafe(data: bytes, path: Path, *, allow: object = ()) -> object:
        del path, allow
        return pickle.loads(data)  # the control

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_pickles, "loads", unsafe)
        problems = check_damaged(Damage("optimizer_state.pkl", "pickle"), template, tmp_path)
    assert any("CODE FROM THE RUN DIRECTORY RAN" in p for p in problems)
