"""Benchmark neps_state against Optuna's journal: ``python stress/bench.py --help``.

Same options as ``neps-state bench``; see ``pytest_neps.bench``.
"""

from __future__ import annotations

import argparse
import sys

from pytest_neps.bench import add_bench_arguments, main_bench


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(
        prog="stress/bench.py",
        description="Cost per cycle as a run grows, and throughput of N workers,"
        " each beside Optuna's JournalFileBackend measured in the same run.",
    )
    add_bench_arguments(parser)
    return main_bench(parser.parse_args(argv))


if __name__ == "__main__":
    # The spawned worker processes re-import this file; the guard keeps them from re-running it.
    sys.exit(main())
