"""Each seed defect's negative control is reported by the suite, by the defect's id.

The probes (``pytest_neps.probes``) run against the control of each defect they
look for and must fail naming it; against the reference they find nothing
(``tests/test_suite.py`` runs the whole suite there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_neps import catching, probes
from pytest_neps._impl import Impl, as_impl
from pytest_neps._pool import Pool
from pytest_neps._swarm import SwarmConfig, run_swarm
from pytest_neps.catching import CONTROL, texts
from pytest_neps.controls import BY_DEFECT
from pytest_neps.defects import DEFECTS, finding, named
from pytest_neps.races import CLAIM_RACE, check_race


def control(defect: str) -> Impl:
    return as_impl(f"pytest_neps.controls:{BY_DEFECT[defect]}")


def findings(check: object, *cases: tuple[object, ...]) -> list[str]:
    """The defects named by the failures of ``check`` over ``cases``."""
    out = []
    for args in cases:
        try:
            check(*args)  # type: ignore[operator]
        except AssertionError as e:
            out += named(str(e))
        except probes.NotApplicable:
            continue
    return out


def test_every_defect_has_a_control() -> None:
    assert sorted(BY_DEFECT) == sorted(DEFECTS) == sorted(f"D{i}" for i in range(1, 12))
    assert named(str(finding("D3", "x"))) == ["D3"]


def test_unchecked_ids_are_d5() -> None:
    impl = control("D5")
    found = findings(probes.check_unsafe_id, *((impl, tid) for tid in probes.UNSAFE_IDS))
    assert found
    assert set(found) == {"D5"}


def test_raw_parse_errors_are_d6() -> None:
    impl = control("D6")
    cases = [(impl, f, how) for f in probes.DAMAGED_FILES for how in probes.DAMAGES]
    found = findings(probes.check_damaged_file, *cases)
    assert len(found) >= 5
    assert set(found) == {"D6"}


def test_a_torn_tail_that_breaks_readers_is_d4() -> None:
    impl = control("D4")
    found = findings(probes.check_torn_cache, *((impl, t) for t in probes.TORN_TAILS))
    assert found == ["D4"] * len(probes.TORN_TAILS)


def test_an_empty_read_after_cache_loss_is_d1_in_the_probe_too() -> None:
    assert findings(probes.check_lost_cache, (control("D1"),)) == ["D1"]


def test_a_cache_record_before_its_folder_is_d9(neps_pool: Pool) -> None:
    impl = control("D9")
    cases = [(impl, n, neps_pool) for n in range(1, 30)]
    assert findings(probes.check_crash_inside_sample, *cases) == ["D9"]


def test_rereading_everything_is_d8() -> None:
    with pytest.raises(AssertionError) as e:
        probes.check_cost_growth(control("D8"))
    assert named(str(e.value)) == ["D8"]


def test_a_clean_that_loses_error_records_is_d10() -> None:
    assert findings(probes.check_clean_by_id, (control("D10"),)) == ["D10"]


def test_a_report_whose_error_record_is_a_second_step_is_d11(neps_pool: Pool) -> None:
    impl = control("D11")
    cases = [(impl, n, neps_pool) for n in range(1, 30)]
    found = findings(probes.check_crash_inside_report, *cases)
    assert found  # (killed at each file change of the second step: several of them)
    assert set(found) == {"D11"}


@pytest.mark.parametrize("defect", ["D1", "D4", "D5", "D6", "D9", "D10", "D11"])
def test_the_reference_has_none_of_them(defect: str, neps_pool: Pool) -> None:
    impl = as_impl("neps_state:NePSState")
    cases = {
        "D1": (probes.check_lost_cache, [(impl,)]),
        "D4": (probes.check_torn_cache, [(impl, t) for t in probes.TORN_TAILS]),
        "D5": (probes.check_unsafe_id, [(impl, t) for t in probes.UNSAFE_IDS]),
        "D6": (
            probes.check_damaged_file,
            [(impl, f, h) for f in probes.DAMAGED_FILES for h in probes.DAMAGES],
        ),
        "D9": (probes.check_crash_inside_sample, [(impl, n, neps_pool) for n in range(1, 30)]),
        "D10": (probes.check_clean_by_id, [(impl,)]),
        "D11": (probes.check_crash_inside_report, [(impl, n, neps_pool) for n in range(1, 30)]),
    }
    check, args = cases[defect]
    assert findings(check, *args) == []


def _named_failure(run: object, *args: object) -> list[str]:
    with pytest.raises(BaseException) as info:
        run(*args)  # type: ignore[operator]
    return named("\n".join(texts(info.value)))


def test_a_read_after_cache_loss_is_d1(neps_pool: Pool) -> None:
    found = _named_failure(catching.model, CONTROL + BY_DEFECT["D1"], neps_pool, 50)
    assert "D1" in found


def test_unlocked_creation_is_d2(neps_pool: Pool) -> None:
    found = _named_failure(catching.creation, CONTROL + BY_DEFECT["D2"], neps_pool, 150)
    assert set(found) == {"D2"}


def test_in_place_rewrites_are_d3(tmp_path: Path) -> None:
    result = run_swarm(
        SwarmConfig(impl=CONTROL + BY_DEFECT["D3"], workers=3, trials=120, observers=1),
        tmp_path / "run",
    )
    assert "D3" in named("\n".join(result.problems()))


def test_a_two_step_claim_is_d7(neps_pool: Pool) -> None:
    impl = as_impl(CONTROL + BY_DEFECT["D7"])
    assert _named_failure(check_race, impl, CLAIM_RACE, neps_pool) == ["D7"]
    found = _named_failure(catching.races, CONTROL + BY_DEFECT["D7"], neps_pool, 50)
    assert "D7" in found
