"""A swarm worker that runs NePS's own worker loop (``DefaultWorker``), as ``neps.run`` does.

``SwarmConfig(runtime="neps")``. The state under test is NePS's ``NePSState`` in the
worker: the reference (or a subclass of it, such as a negative control) through
``neps_state.patch_neps``, or NePS's own state for the upstream adapter. NePS's
runtime then does what it does in production: gives the worker an id, sets the
run's budget, claims or samples under its locks, evaluates, reports. Its two
state steps (the next trial, the report) are recorded in the worker's history,
with the worker's kill plan, so the checker judges the run as any swarm's.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from neps_state import NePSState, Settings, patch_neps
from pytest_neps._evaluate import evaluate
from pytest_neps._impl import as_impl, resolve
from pytest_neps._worker import WorkerSpec, _Recorder, resolve_optimizer

INFO = {"name": "pytest-neps-swarm", "info": {"loop": "neps.runtime.DefaultWorker"}}
"""The optimizer info of a run made by NePS's runtime in a swarm."""


class NePSEvaluation:
    """The swarm's ``config -> number`` as NePS calls it: ``fn(**config)``.

    A failed or crashed evaluation raises (NePS reports it crashed, with the error).
    """

    def __init__(self, fn: Callable[[Mapping[str, Any]], Any]) -> None:
        self.fn = fn

    def __call__(self, **config: Any) -> dict[str, Any]:
        outcome = evaluate(self.fn, config)
        if outcome.report_as != "success":
            raise outcome.err or RuntimeError(outcome.report_as)
        return {"objective_to_minimize": outcome.objective, "cost": outcome.cost}


def _settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``NEPS_STATE_*`` variables ``create_or_load`` reads."""
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = int(value)
        out[f"NEPS_STATE_{f.name.upper()}"] = "none" if value is None else str(value)
    return out


def neps_worker_main(spec: WorkerSpec) -> dict[str, int]:
    """NePS's ``DefaultWorker`` on the state under test; how many trials it evaluated."""
    logging.getLogger("neps_state").setLevel(spec.log_level)
    logging.getLogger("neps").setLevel(spec.log_level)
    os.environ.update(_settings_env(spec.settings))
    cls = as_impl(spec.impl).cls
    if isinstance(cls, type) and issubclass(cls, NePSState):
        patch_neps(cls)
    neps_state = importlib.import_module("neps.state")
    runtime = importlib.import_module("neps.runtime")
    rec = _Recorder(spec)
    try:
        return _run(spec, rec, neps_state, runtime)
    finally:
        rec.close()


def _run(spec: WorkerSpec, rec: _Recorder, neps_state: Any, runtime: Any) -> dict[str, int]:
    """The body of :func:`neps_worker_main`, recorded by ``rec``."""
    state = rec.run(
        "create",
        lambda: neps_state.NePSState.create_or_load(
            spec.run_dir,
            optimizer_info=dict(INFO),
            optimizer_state=neps_state.OptimizationState(
                budget=neps_state.BudgetInfo(),
                seed_snapshot=neps_state.SeedSnapshot.new_capture(),
                shared_state=None,
                worker_ids=None,
            ),
        ),
    )
    rec.run(
        "budget",
        lambda: state.lock_and_update_global_budgets(
            total_evaluations_to_spend=spec.budget,
            total_cost_to_spend=None,
            total_fidelities_to_spend=None,
        ),
    )
    settings = neps_state.WorkerSettings(
        on_error=neps_state.OnErrorPossibilities.IGNORE,
        batch_size=None if spec.batch == 1 else spec.batch,
        default_report_values=runtime._make_default_report_values(),  # noqa: SLF001
        worker_evaluations_to_spend=None,
        worker_fidelities_to_spend=None,
        include_in_progress_evaluations_towards_maximum=True,
        worker_cost_to_spend=None,
        max_evaluation_time_total_seconds=None,
        max_wallclock_time_seconds=None,
    )
    worker = rec.run(
        "worker_id",
        lambda: runtime.DefaultWorker.new(
            state=state,
            optimizer=resolve_optimizer(spec.optimizer),
            settings=settings,
            evaluation_fn=NePSEvaluation(resolve(spec.evaluation)),
            worker_id=spec.worker_id,
        ),
    )
    next_trial = worker._get_next_trial  # noqa: SLF001 - NePS's own step, recorded
    worker._get_next_trial = lambda: rec.run("neps_next", next_trial)  # noqa: SLF001
    report_step = state._report_trial_evaluation  # noqa: SLF001
    evaluated = 0

    def recorded_report(*, trial: Any, report: Any, worker_id: str) -> None:
        nonlocal evaluated

        def call() -> str:
            report_step(trial=trial, report=report, worker_id=worker_id)
            return str(report.reported_as)

        rec.run("report", call, [trial.id])
        evaluated += 1

    state._report_trial_evaluation = recorded_report  # noqa: SLF001
    worker.run()
    return {"evaluated": evaluated}
