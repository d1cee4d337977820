"""How reliably the suite reports each seed defect: its control, 20 runs at the CI budget.

    python stress/catch_rates.py [--runs 20] [--defects D1,D7] [--controls all|A,B]

Each run executes the suite's property for a defect against that defect's
negative control (``pytest_neps.controls.BY_DEFECT``) with the ``neps-ci``
budget (25 examples) and no example database; a run counts as caught when the
property fails and its message names the defect. With ``--controls``, the same for
the negative controls of ``tests/test_controls_caught.py`` (``catching.CASES``, each
at its own budget), a run counting as caught when the harness asserts. Prints one
line per defect or control and the wall time of each property.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_neps import catching, probes
from pytest_neps._impl import as_impl
from pytest_neps._pool import Pool
from pytest_neps._profiles import BUDGETS
from pytest_neps._swarm import SwarmConfig, run_swarm
from pytest_neps.catching import texts
from pytest_neps.controls import BY_DEFECT
from pytest_neps.defects import DEFECTS, named
from pytest_neps.races import CLAIM_RACE, check_race

CI = BUDGETS["neps-ci"]


def _swarm(impl: str, pool: Pool) -> None:
    del pool
    with tempfile.TemporaryDirectory() as tmp:
        config = SwarmConfig(impl=impl, workers=3, trials=60, observers=1, timeout=300)
        run_swarm(config, Path(tmp) / "run").assert_consistent()


def _claims(impl: str, pool: Pool) -> None:
    check_race(as_impl(impl), CLAIM_RACE, pool, repeats=3)
    catching.races(impl, pool, CI)


def _cost(impl: str) -> None:
    probes.check_cost_growth(as_impl(impl))


def _each(check: Callable[..., None], cases: list[tuple[object, ...]]) -> Callable[..., None]:
    def run(impl: str, pool: Pool) -> None:
        chosen = as_impl(impl)
        for case in cases:
            try:
                extra = (
                    (pool,)
                    if check in (probes.check_crash_inside_sample, probes.check_crash_inside_report)
                    else ()
                )
                check(chosen, *case, *extra)
            except probes.NotApplicable:
                continue

    return run


PROPERTIES: dict[str, Callable[[str, Pool], None]] = {
    "D1": lambda impl, pool: catching.model(impl, pool, CI),
    "D2": lambda impl, pool: catching.creation(impl, pool, CI),
    "D3": _swarm,
    "D4": _each(probes.check_torn_cache, [(t,) for t in probes.TORN_TAILS]),
    "D5": _each(probes.check_unsafe_id, [(t,) for t in probes.UNSAFE_IDS]),
    "D6": _each(
        probes.check_damaged_file, [(f, h) for f in probes.DAMAGED_FILES for h in probes.DAMAGES]
    ),
    "D7": _claims,
    "D8": lambda impl, _: _cost(impl),
    "D9": _each(probes.check_crash_inside_sample, [(n,) for n in range(1, 41)]),
    "D10": _each(probes.check_clean_by_id, [()]),
    "D11": _each(probes.check_crash_inside_report, [(n,) for n in range(1, 41)]),
}
"""The property of the suite that looks for each defect, as the suite runs it."""


def rate(defect: str, runs: int, pool: Pool) -> tuple[int, float]:
    """Runs (of ``runs``) that reported ``defect`` against its control; seconds per run."""
    impl = f"{catching.CONTROL}{BY_DEFECT[defect]}"
    caught = 0
    start = time.perf_counter()
    for _ in range(runs):
        try:
            PROPERTIES[defect](impl, pool)
        except BaseException as e:  # noqa: BLE001 - judged by the defect it names
            caught += defect in named("\n".join(texts(e)))
    return caught, (time.perf_counter() - start) / runs


def control_rates(names: str, runs: int, pool: Pool) -> None:
    """Print the catch rate of each case of ``catching.CASES`` whose control is named."""
    wanted = None if names == "all" else set(names.split(","))
    for prop, control, examples in catching.CASES:
        if wanted is not None and control not in wanted:
            continue
        start = time.perf_counter()
        caught = catching.catch_rate(prop, control, examples, pool, runs)
        seconds = (time.perf_counter() - start) / runs
        print(
            f"{control:<22} {prop.__name__:<12} {examples:>3} examples"
            f"  caught in {caught:>2} of {runs} runs  ({seconds:.1f} s a run)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per defect (default 20)")
    parser.add_argument("--defects", default=",".join(DEFECTS), help="comma-separated ids")
    parser.add_argument(
        "--controls",
        help="measure these controls of catching.CASES instead (comma-separated, or all)",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    pool = Pool(6, start_method="spawn")
    try:
        if args.controls:
            control_rates(args.controls, args.runs, pool)
            return
        for defect in args.defects.split(","):
            caught, seconds = rate(defect, args.runs, pool)
            print(
                f"{defect} {BY_DEFECT[defect]:<22} caught in {caught:>2} of {args.runs} runs"
                f"  ({seconds:.1f} s a run)  {DEFECTS[defect]}",
                flush=True,
            )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
