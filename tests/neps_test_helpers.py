"""Helpers shared by the project's own tests, and by the children they spawn.

Imported as ``neps_test_helpers`` under every import mode: ``tests`` is on
``sys.path`` through pytest's ``pythonpath`` option (see pyproject.toml), which
spawned children inherit. Fixtures and hooks stay in ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from neps_state import (
    BudgetInfo,
    NePSState,
    OptimizationState,
    OptimizerInfo,
    SeedSnapshot,
    Settings,
    Trial,
)
from neps_state._trial import Report
from pytest_neps._optimizers import random_search

INFO = OptimizerInfo(name="random_search", info={"seed": 0})


def new_opt_state(max_evaluations: int | None = None) -> OptimizationState:
    budget = None if max_evaluations is None else BudgetInfo(max_evaluations=max_evaluations)
    return OptimizationState(budget=budget, seed_snapshot=SeedSnapshot.new_capture())


def make_state(
    path: Path,
    *,
    cls: type[NePSState] = NePSState,
    settings: Settings | None = None,
    info: OptimizerInfo = INFO,
    max_evaluations: int | None = None,
) -> NePSState:
    return cls.create_or_load(
        path,
        optimizer_info=info,
        optimizer_state=new_opt_state(max_evaluations),
        settings=settings or Settings(durability="os"),
    )


def run_cycle(state: NePSState, worker: str = "w0", *, error: Exception | None = None) -> Trial:
    """Sample, claim and report one trial; return it as reported."""
    state.lock_and_sample_trial(random_search, worker_id=worker)
    trial = state.lock_and_claim_next_pending_trial(worker)
    assert trial is not None
    state.lock_and_report_trial_evaluation(trial, completed(trial, error), worker_id=worker)
    return trial


def completed(trial: Trial, error: Exception | None = None) -> Report:
    """Complete ``trial`` (a success, or a crash with ``error``); return its report."""
    return trial.set_complete(
        report_as="success" if error is None else "crashed",
        time_end=1.0,
        objective_to_minimize=None if error else 0.5,
        cost=1.0,
        learning_curve=None,
        err=error,
        tb=None if error is None else "Traceback...",
        extra={},
        evaluation_duration=0.1,
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Every file below ``root`` with a hash of its bytes (lock files excluded)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".lock"):
                continue
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
