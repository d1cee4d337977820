"""Make the NePS 0.17 run directory the tests read (``neps-0.17-run/``), with real NePS.

    pip install 'neps-state[neps]'   # a CPU torch first, see the README
    python tests/data/make_neps_run.py [TARGET]

Two NePS workers (processes) run priorband, a multi-fidelity optimizer whose trials
continue earlier ones, on a three-parameter space; one configuration in five fails,
so the run has error records. The result is written by NePS alone.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import neps

HERE = Path(__file__).resolve().parent
TARGET = HERE / "neps-0.17-run"
EVALUATIONS = 14


class Space(neps.PipelineSpace):
    """The search space, with a fidelity so that trials continue others."""

    lr = neps.Float(1e-4, 1e-1, log=True, prior=1e-2, prior_confidence="medium")
    units = neps.Integer(8, 64, prior=32, prior_confidence="medium")
    epochs = neps.IntegerFidelity(1, 9)


def evaluate(lr: float, units: int, epochs: int) -> float:
    """A toy objective; fails for one configuration in five."""
    if units % 5 == 0:
        raise RuntimeError(f"units={units} is unlucky")
    return (math.log10(lr) + 2) ** 2 + (units - 32) ** 2 / 1000 + 1 / epochs


def worker(target: Path) -> None:
    """One NePS worker on the shared directory."""
    neps.run(
        evaluate_pipeline=evaluate,
        pipeline_space=Space(),
        root_directory=target,
        optimizer="priorband",
        total_evaluations_to_spend=EVALUATIONS,
        ignore_errors=True,
    )


def main(target: Path = TARGET) -> int:
    """Write a fresh run directory with two worker processes.

    The second starts once the first has sampled a trial: NePS's creation is not
    safe against a second creator (the seed's defect D2: its optimizer state is read
    while being written), and this script is to record a run, not to race creators.
    """
    shutil.rmtree(target, ignore_errors=True)
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=worker, args=(target,)) for _ in range(2)]
    procs[0].start()
    deadline = time.monotonic() + 300
    while not any((target / "configs").glob("config_*")) and procs[0].is_alive():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    procs[1].start()
    for p in procs:
        p.join()
    return max(p.exitcode or 0 for p in procs)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET))
