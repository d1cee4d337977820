"""A user's NePS script as NePS's tutorial writes it, plus the line that puts it on neps_state.

    python neps_tutorial.py ROOT [--optimizer NAME] [--evaluations N] [--seed S] [--native]

Every worker runs this script (start it N times for N workers). ``--native`` leaves
out ``neps_state.patch_neps()``: NePS's own state. Each evaluation appends one
line (the trial's id and config, JSON) to ``ROOT.evaluations.jsonl``, one
``write`` with ``O_APPEND``, so a test can count what was evaluated and in which
order. One config in seven fails (a crashed trial, with an error record).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import neps
import numpy as np
import torch


class Space(neps.PipelineSpace):
    """Two hyperparameters of a toy pipeline."""

    lr = neps.Float(1e-4, 1e-1, log=True)
    units = neps.Integer(8, 64)


LOG: Path | None = None
SECONDS = 0.0


def evaluate(pipeline_id: str, lr: float, units: int) -> float:
    """A toy objective; fails for one config in seven."""
    if LOG is not None:
        line = json.dumps({"id": pipeline_id, "lr": lr, "units": units}) + "\n"
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    time.sleep(SECONDS)  # the training an evaluation stands for
    if units % 7 == 0:
        raise RuntimeError(f"units={units} is unlucky")
    return (np.log10(lr) + 2) ** 2 + (units - 32) ** 2 / 1000


def main() -> None:
    """Run one worker."""
    global LOG, SECONDS  # noqa: PLW0603 - the script's own settings, set once
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--optimizer", default="random_search")
    parser.add_argument("--evaluations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--seconds", type=float, default=0.0, help="each evaluation's sleep")
    args = parser.parse_args()
    if not args.native:
        import neps_state  # noqa: PLC0415 - the one line a user adds

        neps_state.patch_neps()
    if args.seed is not None:
        random.seed(args.seed)
        np.random.seed(args.seed)  # noqa: NPY002 - NePS snapshots the global generators
        torch.manual_seed(args.seed)
    LOG = Path(f"{args.root}.evaluations.jsonl")
    SECONDS = args.seconds
    neps.run(
        evaluate_pipeline=evaluate,
        pipeline_space=Space(),
        root_directory=args.root,
        optimizer=args.optimizer,
        total_evaluations_to_spend=args.evaluations,
        ignore_errors=True,
    )


if __name__ == "__main__":
    main()
