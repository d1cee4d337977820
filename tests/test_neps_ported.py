"""NePS's own state and runtime tests, re-expressed on the reference (``neps_patched``).

Every test here runs NePS 0.17's unchanged code (``DefaultWorker``, ``neps.run``,
``neps.status``, ``neps.import_trials``, the loaders, ``save_pipeline_results``, the
summary writer) with ``NePSState`` rebound to the reference by the ``neps_patched``
fixture, and makes the scenarios and assertions of NePS's ``tests/test_state`` and
``tests/test_runtime`` (written against NePS 0.16's names) in fresh code with 0.17's
names (``worker_*_to_spend``). Handles are made from the class the fixture yields;
NePS's functions find the rebound name themselves. Budgets are small, so the module
stays fast.

What re-expresses what, by upstream file:

``test_state/test_filebased_neps_state.py``
    ``test_create_with_new_filebased_neps_state``:
    ``test_a_new_run_holds_what_it_was_created_with``;
    ``test_create_or_load_with_load_filebased_neps_state``:
    ``test_loading_again_keeps_the_state_on_disk_over_the_one_passed``;
    ``test_load_on_existing_neps_state``: ``test_load_only_opens_the_same_run``;
    ``test_pipeline_space_written_and_reloaded``:
    ``test_every_handle_reads_the_same_saved_space``;
    ``test_new_or_load_on_existing_neps_state_with_different_optimizer_info``:
    ``test_another_optimizer_is_refused_on_an_existing_run``.
    Two handles of one run compare equal (``==``) as upstream's do; the tests also
    check what upstream's ``==`` stands for (the optimizer info and state on disk).
    The reference does not keep NePS's private ``_pipeline_space`` attribute (it
    unpickles the space only when asked), so the space is read with
    ``lock_and_get_search_space()``.

``test_state/test_neps_state.py``
    ``test_sample_trial``: ``test_sampled_trials_are_pending_and_read_back``, for a
    set of optimizers that covers classic and NePS spaces, fidelities and priors
    (not the whole matrix, whose other cells upstream marks xfail or, for
    ``ifbo``, need model weights downloaded at run time);
    ``test_get_valid_evaluated_trials``:
    ``test_only_reports_with_a_real_objective_are_valid``, with two changes: the
    space comes from ``lock_and_get_search_space()`` (upstream reads NePS's private
    ``_pipeline_space``, see above), and the two reported trials are marked
    evaluating first (upstream reports them while pending, which NePS's state
    takes and the reference refuses on purpose: a report is of a trial being
    evaluated).
    Not ported: ``test_optimizers_work_roughly`` (``AskAndTell`` in memory, no
    ``NePSState`` involved).

``test_state/test_rng.py``
    ``test_randomstate_consistent``: ``test_a_seed_snapshot_replays_after_a_trip_through_the_state``
    (the snapshot is stored in and read back from the state first: the reference
    keeps torch's RNG state as bytes and hands NePS tensors again).

``test_state/test_trial.py``
    The five tests of NePS's ``Trial`` class (no state):
    ``test_a_trials_life_reads_back_through_the_state`` (created, evaluated by
    another worker, then success, failed with NaN and inf, or crashed with an error
    and a traceback), each read back from the state.

``test_state/test_search_space_persistence.py``
    ``test_search_space_saved_and_loaded_pipeline_space``/``_search_space``:
    ``test_the_space_is_saved_and_read_back``;
    ``test_search_space_not_provided_backward_compatible``:
    ``test_a_run_without_a_space_saves_none``;
    ``test_load_pipeline_space_function_pipeline_space``/``_search_space``:
    ``test_load_pipeline_space_reads_the_saved_space``;
    ``test_load_pipeline_space_function_not_found``:
    ``test_load_pipeline_space_needs_a_run``;
    ``test_load_pipeline_space_function_no_space_saved``:
    ``test_load_pipeline_space_of_a_run_without_a_space``;
    ``test_load_optimizer_info_function``: ``test_load_optimizer_info_reads_the_run``;
    ``test_load_optimizer_info_function_not_found``:
    ``test_load_optimizer_info_needs_a_run``;
    ``test_import_trials_saves_search_space``: ``test_import_trials_saves_the_space``;
    ``test_import_trials_validates_search_space``:
    ``test_import_trials_refuses_another_space``;
    ``test_import_trials_without_space_loads_from_disk``:
    ``test_import_trials_takes_the_saved_space``;
    ``test_import_trials_without_space_fails_on_new_directory``:
    ``test_import_trials_on_a_new_run_needs_a_space``;
    ``test_import_trials_validates_provided_space_against_disk``:
    ``test_import_trials_accepts_the_same_space_and_refuses_another``.
    The refusal is a ``NePSError`` with NePS's words (``"pipeline space on disk does
    not match"``).

``test_state/test_search_space_validation.py``
    ``test_error_on_mismatched_search_space``: ``test_neps_run_refuses_another_space``
    (NePS's words, as above); ``test_success_without_search_space_when_on_disk``:
    ``test_neps_run_continues_with_the_saved_space``;
    ``test_error_when_no_space_provided_and_none_on_disk``:
    ``test_neps_run_on_a_new_run_needs_a_space``; ``test_load_only_does_not_validate``:
    ``test_load_only_does_not_check_the_space``;
    ``test_load_config_with_wrong_space_raises_error``:
    ``test_load_config_refuses_another_space``;
    ``test_load_config_without_space_auto_loads``:
    ``test_load_config_takes_the_saved_space``; ``test_ddp_runtime_loads_search_space``:
    ``test_a_load_only_handle_reads_the_space``; ``test_status_without_space_works``
    and ``test_status_handles_missing_search_space_gracefully``:
    ``test_status_needs_no_space``.

``test_runtime/test_default_report_values.py``
    ``test_default_values_on_error``: ``test_a_crash_is_reported_with_the_error_defaults``;
    ``test_default_values_on_not_specified``:
    ``test_missing_values_are_reported_with_their_defaults``;
    ``test_default_value_objective_to_minimize_curve_take_objective_to_minimize_value``:
    ``test_the_learning_curve_can_default_to_the_objective``.

``test_runtime/test_error_handling_strategies.py``
    ``test_worker_raises_when_error_in_self``: ``test_a_worker_raises_on_its_own_error``;
    ``test_worker_raises_when_error_in_other_worker``:
    ``test_a_worker_raises_on_another_workers_error``;
    ``test_worker_does_not_raise_when_error_in_other_worker``:
    ``test_a_worker_goes_on_after_another_workers_error``.

``test_runtime/test_save_evaluation_results.py``
    ``test_async_happy_path_changes_state``:
    ``test_results_saved_later_complete_evaluating_trials``.

``test_runtime/test_stopping_criterion.py``
    ``test_evaluations_to_spend_stopping_criterion``:
    ``test_a_worker_stops_after_its_evaluations``; ``test_multiple_criteria_set``:
    ``test_the_first_budget_reached_stops_a_worker``;
    ``test_include_in_progress_evaluations_towards_maximum_with_work_eval_count``:
    ``test_an_evaluating_trial_counts_towards_the_maximum``;
    ``test_worker_wallclock_time``: ``test_a_worker_stops_at_its_wallclock_limit``;
    ``test_max_worker_evaluation_time``:
    ``test_a_worker_stops_at_its_evaluation_time_limit``;
    ``test_fidelity_to_spend``: ``test_a_worker_stops_after_its_fidelity_budget``
    (without upstream's sleep in the evaluation, which nothing checks).

``test_runtime/test_worker_creation.py``
    ``test_create_worker_manual_id`` and ``test_create_worker_auto_id``:
    ``test_a_worker_records_its_id``.

``test_runtime/test_trajectory_and_metrics.py``
    ``test_basic_trajectory_functionality``, ``test_best_config_with_multiple_metrics``,
    ``test_results_directory_structure``: ``test_a_run_writes_its_summary``;
    ``test_trajectory_with_fidelity``: ``test_the_trajectory_of_a_run_with_a_fidelity``;
    ``test_cumulative_metrics_tracking``, ``test_trajectory_file_format`` and
    ``test_metric_values_are_reasonable``: ``test_the_trajectorys_format_and_values``;
    ``test_trajectory_with_failed_evaluations``:
    ``test_the_trajectory_with_failed_evaluations``; ``test_neps_hyperband_metrics``:
    ``test_the_trajectory_of_hyperband``; ``test_metrics_with_different_optimizers``:
    ``test_the_summary_is_the_same_for_either_random_search``;
    ``test_neps_revisit_run_with_trajectory``:
    ``test_a_continued_run_extends_its_trajectory``;
    ``test_continue_finished_run_with_higher_budget``:
    ``test_a_finished_run_continued_keeps_its_incumbent`` (three runs, not ten, with
    a smaller first budget); ``test_best_config_multiobjective_frontier``:
    ``test_best_config_lists_the_pareto_front`` (0.17's ``SummaryWriter.update``
    stands for 0.16's ``DefaultWorker.load_incumbent_trace``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import pickle
import random
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "neps", reason="upstream NePS is not installed: pip install 'neps-state[neps]' (see README)"
)

import neps
import numpy as np
import torch
from neps.exceptions import NePSError, TrialNotFoundError, WorkerRaiseError
from neps.optimizers import OptimizerInfo, load_optimizer
from neps.optimizers.algorithms import asha, random_search
from neps.runtime import DefaultWorker
from neps.space import HPOCategorical, HPOFloat, HPOInteger, SearchSpace
from neps.space.neps_spaces import neps_space
from neps.state import (
    BudgetInfo,
    DefaultReportValues,
    OnErrorPossibilities,
    OptimizationState,
    SeedSnapshot,
    Trial,
    WorkerSettings,
)
from neps.state.err_dump import ErrDump
from neps.state.pipeline_eval import UserResultDict
from neps.state.trial import MetaData
from neps.status.summary import SummaryWriter

State = Any  # a handle of the class the fixture yields (NePS's classes at its boundary)

# -- spaces ----------------------------------------------------------------------------


class OneFloat(neps.PipelineSpace):
    a = neps.Float(0, 1)


class Mixed(neps.PipelineSpace):
    a = neps.Float(0, 1)
    b = neps.Categorical(("a", "b", "c"))
    c = "a"
    d = neps.Integer(0, 10)


class MixedFid(neps.PipelineSpace):
    a = neps.Float(0, 1)
    b = neps.Categorical(("a", "b", "c"))
    c = "a"
    d = neps.Integer(0, 10)
    e = neps.IntegerFidelity(1, 10)


class MixedPrior(neps.PipelineSpace):
    a = neps.Float(0, 1, prior=0.5, prior_confidence="medium")
    b = neps.Categorical(("a", "b", "c"), prior=0, prior_confidence="medium")
    c = "a"
    d = neps.Integer(0, 10, prior=5, prior_confidence="medium")


class MixedFidPrior(neps.PipelineSpace):
    a = neps.Float(0, 1, prior=0.5, prior_confidence="medium")
    b = neps.Categorical(("a", "b", "c"), prior=0, prior_confidence="medium")
    c = "a"
    d = neps.Integer(0, 10, prior=5, prior_confidence="medium")
    e = neps.IntegerFidelity(1, 10)


class ThreeKinds(neps.PipelineSpace):
    a = neps.Float(0, 1)
    b = neps.Categorical(("x", "y", "z"))
    c = neps.Integer(0, 10)


class XY(neps.PipelineSpace):
    x = neps.Float(0.0, 1.0)
    y = neps.Integer(1, 10)


class Imported(neps.PipelineSpace):
    x = neps.Float(0, 10)
    y = neps.Integer(1, 10)


class ImportedWider(neps.PipelineSpace):  # y's range differs
    x = neps.Float(0, 10)
    y = neps.Integer(1, 20)


class AB(neps.PipelineSpace):
    a = neps.Float(0.0, 2.0)
    b = neps.Integer(5, 20)


class XYEpochs(neps.PipelineSpace):
    x = neps.Float(0.0, 1.0)
    y = neps.Integer(1, 10)
    epochs = neps.IntegerFidelity(1, 50)


def classic_space() -> SearchSpace:
    return SearchSpace(
        {"a": HPOFloat(0, 1), "b": HPOCategorical(["x", "y", "z"]), "c": HPOInteger(0, 10)}
    )


# -- helpers ---------------------------------------------------------------------------


def opt_state(budget: BudgetInfo | None = None, shared: dict[str, Any] | None = None) -> Any:
    return OptimizationState(
        budget=budget, seed_snapshot=SeedSnapshot.new_capture(), shared_state=shared
    )


def new_run(
    cls: type,
    root: Path,
    *,
    space: Any = None,
    info: OptimizerInfo | None = None,
    state: Any = None,
) -> State:
    """A new run at ``root`` (a space saved only if given)."""
    extra = {} if space is None else {"pipeline_space": space}
    return cls.create_or_load(
        path=root,
        optimizer_info=OptimizerInfo(name="blah", info={"nothing": "here"})
        if info is None
        else info,
        optimizer_state=opt_state() if state is None else state,
        **extra,
    )


def settings(**given: Any) -> WorkerSettings:
    """Worker settings: no budget, errors ignored, unless ``given`` says otherwise."""
    base: dict[str, Any] = {
        "on_error": OnErrorPossibilities.IGNORE,
        "default_report_values": DefaultReportValues(),
        "batch_size": None,
        "worker_evaluations_to_spend": None,
        "include_in_progress_evaluations_towards_maximum": False,
        "worker_cost_to_spend": None,
        "worker_fidelities_to_spend": None,
        "max_evaluation_time_total_seconds": None,
        "max_wallclock_time_seconds": None,
    }
    return WorkerSettings(**{**base, **given})


def worker(state: State, how: WorkerSettings, fn: Callable[..., Any], **kw: Any) -> Any:
    return DefaultWorker.new(
        state=state, optimizer=random_search(OneFloat()), evaluation_fn=fn, settings=how, **kw
    )


def done_by(state: State, worker_id: str) -> list[Any]:
    """The trials ``worker_id`` evaluated."""
    return [
        t
        for t in state.lock_and_read_trials().values()
        if t.metadata.evaluating_worker_id == worker_id
    ]


def assert_nothing_left(state: State, errors: int = 0) -> None:
    assert state.lock_and_get_next_pending_trial() is None
    assert len(state.lock_and_get_errors()) == errors


def fails(*_: Any, **__: Any) -> float:
    raise ValueError("This is an error")


def one(*_: Any, **__: Any) -> float:
    return 1.0


def x_plus_y(**config: Any) -> float:
    return config["x"] + config["y"]


def a_plus_b(**config: Any) -> float:
    return config["a"] + config["b"]


def metrics(x: float, y: int) -> dict[str, float]:
    return {
        "objective_to_minimize": x + y,
        "accuracy": max(0.0, 1.0 - (x + y) / 11.0),
        "training_time": x * 10 + y,
        "memory_usage": y * 100,
        "custom_metric": x * y,
    }


def metrics_at(x: float, y: int, epochs: int) -> dict[str, float]:
    share = epochs / 50.0
    return {
        "objective_to_minimize": (x + y) / share,
        "accuracy": min(1.0, share * (1.0 - (x + y) / 11.0)),
        "training_time": epochs * (x * 10 + y),
        "convergence_rate": 1.0 / epochs,
    }


def fails_at_the_edges(x: float, y: int) -> dict[str, float]:
    if x > 0.8 or y > 8:
        raise ValueError("Simulated failure for testing")
    return {"objective_to_minimize": x + y, "success_rate": 1.0}


def summary(root: Path) -> tuple[str, str]:
    """``best_config.txt`` and ``best_config_trajectory.txt`` of the run at ``root``."""
    folder = root / "summary"
    return (
        (folder / "best_config.txt").read_text(),
        (folder / "best_config_trajectory.txt").read_text(),
    )


OBJECTIVE = re.compile(r"Objective to minimize: ([\d.]+)")
CUMULATIVE = re.compile(r"Cumulative evaluations: (\d+)")
SEPARATOR = "-" * 80
HEADER = "Best configs and their objectives across evaluations:"


def random_run(root: Path, n: int, fn: Callable[..., Any] = metrics, **kw: Any) -> None:
    neps.run(
        evaluate_pipeline=fn,
        pipeline_space=XY(),
        optimizer=kw.pop("optimizer", neps.algorithms.neps_random_search),
        root_directory=str(root),
        worker_evaluations_to_spend=n,
        **kw,
    )


def one_eval_run(root: Path) -> None:
    neps.run(
        evaluate_pipeline=x_plus_y,
        pipeline_space=XY(),
        root_directory=str(root),
        worker_evaluations_to_spend=1,
    )


# -- test_state/test_filebased_neps_state.py -------------------------------------------

BUDGETS = pytest.mark.parametrize(
    "budget", [BudgetInfo(worker_cost_to_spend=10, used_cost_budget=0), None]
)
SHARED = pytest.mark.parametrize("shared", [{"a": "b"}, {}])
INFO = OptimizerInfo(name="blah", info={"a": "b"})


@BUDGETS
@SHARED
def test_a_new_run_holds_what_it_was_created_with(
    tmp_path: Path, neps_patched: type, budget: Any, shared: dict[str, Any]
) -> None:
    created = opt_state(budget, shared)
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), info=INFO, state=created)
    assert state.lock_and_get_optimizer_info() == INFO
    assert state.lock_and_get_optimizer_state() == created
    assert state.all_trial_ids() == []
    assert state.lock_and_read_trials() == {}
    assert state.lock_and_get_errors() == ErrDump(errs=[])
    assert state.lock_and_get_next_pending_trial() is None
    assert state.lock_and_get_next_pending_trial(n=10) == []
    with pytest.raises(TrialNotFoundError):
        state.lock_and_get_trial_by_id("1")


@BUDGETS
@SHARED
def test_loading_again_keeps_the_state_on_disk_over_the_one_passed(
    tmp_path: Path, neps_patched: type, budget: Any, shared: dict[str, Any]
) -> None:
    created = opt_state(budget, shared)
    first = new_run(neps_patched, tmp_path / "run", space=OneFloat(), info=INFO, state=created)
    other = opt_state(BudgetInfo(worker_cost_to_spend=20, used_cost_budget=10))
    second = new_run(neps_patched, tmp_path / "run", space=OneFloat(), info=INFO, state=other)
    assert second == first
    assert second.lock_and_get_optimizer_info() == first.lock_and_get_optimizer_info()
    assert second.lock_and_get_optimizer_state() == created
    assert second.lock_and_get_optimizer_state() != other


@BUDGETS
@SHARED
def test_load_only_opens_the_same_run(
    tmp_path: Path, neps_patched: type, budget: Any, shared: dict[str, Any]
) -> None:
    created = opt_state(budget, shared)
    first = new_run(neps_patched, tmp_path / "run", space=OneFloat(), info=INFO, state=created)
    second = neps_patched.create_or_load(path=tmp_path / "run", load_only=True)
    assert second == first
    assert second.lock_and_get_optimizer_info() == INFO
    assert second.lock_and_get_optimizer_state() == created
    assert second.lock_and_read_trials() == first.lock_and_read_trials() == {}


def test_every_handle_reads_the_same_saved_space(tmp_path: Path, neps_patched: type) -> None:
    budget = BudgetInfo(worker_cost_to_spend=10, used_cost_budget=0)
    first = new_run(
        neps_patched,
        tmp_path / "run",
        space=OneFloat(),
        info=OptimizerInfo(name="test", info={"a": "b"}),
        state=opt_state(budget, {}),
    )
    second = neps_patched.create_or_load(path=tmp_path / "run", load_only=True)
    assert second == first
    assert second.lock_and_get_optimizer_state() == first.lock_and_get_optimizer_state()
    spaces = [first.lock_and_get_search_space(), second.lock_and_get_search_space()]
    assert pickle.dumps(spaces[0]) == pickle.dumps(spaces[1])
    assert pickle.dumps(spaces[0].get_attrs()) == pickle.dumps(OneFloat().get_attrs())


@BUDGETS
@SHARED
def test_another_optimizer_is_refused_on_an_existing_run(
    tmp_path: Path, neps_patched: type, budget: Any, shared: dict[str, Any]
) -> None:
    created = opt_state(budget, shared)
    new_run(neps_patched, tmp_path / "run", space=OneFloat(), info=INFO, state=created)
    with pytest.raises(NePSError):
        new_run(
            neps_patched,
            tmp_path / "run",
            space=OneFloat(),
            info=OptimizerInfo(name="randomlll", info={"e": "f"}),
            state=created,
        )


# -- test_state/test_neps_state.py -----------------------------------------------------

# (optimizer, space): classic and NePS spaces, with and without fidelity and priors;
# every pair is one upstream runs without marking it xfail.
SAMPLERS = [
    ("random_search", Mixed),
    ("bayesian_optimization", Mixed),
    ("pibo", MixedPrior),
    ("asha", MixedFid),
    ("priorband", MixedFidPrior),
    ("neps_random_search", Mixed),
    ("neps_regularized_evolution", Mixed),
    ("neps_hyperband", MixedFid),
    ("neps_priorband", MixedFidPrior),
]
NEPS_SPACE_OPTIMIZERS = {"neps_random_search", "neps_regularized_evolution"} | {
    "neps_hyperband",
    "neps_priorband",
}


def assert_config_fits(config: dict[str, Any], space: Any, key: str) -> None:
    """Every value set, and every parameter of ``space`` in it (resolved, for NePS's)."""
    for name, value in config.items():
        assert value is not None, f"{name!r} is None in {config}"
    classic = neps_space.convert_neps_to_classic_search_space(space)
    if classic is not None and key not in NEPS_SPACE_OPTIMIZERS:
        for name in classic:
            assert name in config, f"{name!r} is not in {config}"
        return
    parsed = neps_space.NepsCompatConverter().from_neps_config(config)
    resolved, _ = neps_space.resolve(
        pipeline=space,
        domain_sampler=neps_space.OnlyPredefinedValuesSampler(
            predefined_samplings=parsed.predefined_samplings
        ),
        environment_values=parsed.environment_values,
    )
    for name in space.get_attrs():
        assert name in resolved.get_attrs(), f"{name!r} is not in {resolved.get_attrs()}"


STARTS = {  # (budget, shared state) of the run
    "budget": (BudgetInfo(worker_cost_to_spend=10, used_cost_budget=0), {"a": "b"}),
    "no-budget": (None, {}),
}


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("sampler", SAMPLERS, ids=[k for k, _ in SAMPLERS])
def test_sampled_trials_are_pending_and_read_back(
    tmp_path: Path, neps_patched: type, sampler: tuple[str, type], start: str
) -> None:
    state = new_run(
        neps_patched, tmp_path / "run", space=OneFloat(), info=INFO, state=opt_state(*STARTS[start])
    )
    key, space_class = sampler
    space = space_class()
    optimizer, _ = load_optimizer((key, {}), space)
    assert state.lock_and_read_trials() == {}
    assert state.lock_and_get_next_pending_trial() is None
    assert state.lock_and_get_next_pending_trial(n=10) == []
    assert state.all_trial_ids() == []

    first = state.lock_and_sample_trial(optimizer=optimizer, worker_id="1")
    assert_config_fits(first.config, space, key)
    assert state.lock_and_read_trials() == {first.id: first}
    assert state.lock_and_get_next_pending_trial() == first
    assert state.lock_and_get_next_pending_trial(n=10) == [first]
    assert state.all_trial_ids() == [first.id]

    second = state.lock_and_sample_trial(optimizer=optimizer, worker_id="1")
    assert_config_fits(second.config, space, key)
    assert first != second
    assert state.lock_and_read_trials() == {first.id: first, second.id: second}
    assert state.lock_and_get_next_pending_trial() == first
    assert state.lock_and_get_next_pending_trial(n=10) == [first, second]
    assert sorted(state.all_trial_ids()) == sorted([first.id, second.id])


def a_report(objective: float) -> Any:
    return Trial.Report(
        objective_to_minimize=objective,
        err=None,
        cost=0,
        learning_curve=[0],
        extra={},
        tb=None,
        reported_as="success",
        evaluation_duration=1,
    )


def test_only_reports_with_a_real_objective_are_valid(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(
        neps_patched,
        tmp_path / "run",
        space=OneFloat(),
        info=OptimizerInfo(name="random_search", info={}),
        state=opt_state(),
    )
    # (upstream takes NePS's private state._pipeline_space; the public read is the same)
    optimizer, _ = load_optimizer(("random_search", {}), state.lock_and_get_search_space())
    real, nan, unreported = (
        state.lock_and_sample_trial(optimizer=optimizer, worker_id="1") for _ in range(3)
    )
    # (upstream reports the pending trials; the reference takes a report only of a
    # trial being evaluated, so both are marked evaluating first)
    for trial in (real, nan):
        trial.set_evaluating(time_started=time.time(), worker_id="1")
        state.put_updated_trial(trial)
    state.lock_and_report_trial_evaluation(trial=real, report=a_report(0.5), worker_id="1")
    state.lock_and_report_trial_evaluation(trial=nan, report=a_report(float("nan")), worker_id="1")
    valid = state._trial_repo.get_valid_evaluated_trials()
    assert list(valid) == [real.id]
    assert nan.id not in valid
    assert unreported.id not in valid


# -- test_state/test_rng.py ------------------------------------------------------------


@pytest.mark.parametrize(
    "draw",
    [
        lambda: [random.randint(0, 100) for _ in range(10)],
        lambda: [int(i) for i in np.random.randint(0, 100, (10,))],  # noqa: NPY002
        lambda: [int(i) for i in torch.randint(0, 100, (10,))],
    ],
    ids=["python", "numpy", "torch"],
)
def test_a_seed_snapshot_replays_after_a_trip_through_the_state(
    tmp_path: Path, neps_patched: type, draw: Callable[[], list[int]]
) -> None:
    random.seed(42)
    np.random.seed(42)  # noqa: NPY002
    torch.manual_seed(42)
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), state=opt_state())
    before = draw()
    stored = state.lock_and_get_optimizer_state().seed_snapshot
    stored.set_as_global_seed_state()
    assert draw() == before


# -- test_state/test_trial.py ----------------------------------------------------------


def sampled_and_evaluating(cls: type, root: Path) -> tuple[State, Any]:
    """A run with one trial, sampled by worker ``42`` and evaluated by ``43`` since t=2."""
    state = new_run(cls, root, space=OneFloat())
    trial = state.lock_and_sample_trial(optimizer=random_search(OneFloat()), worker_id="42")
    assert trial.metadata.state == Trial.State.PENDING
    assert trial.metadata.sampling_worker_id == "42"
    assert trial.metadata.time_started is None
    assert trial.metadata.time_end is None
    assert state.lock_and_get_trial_by_id(trial.id) == trial
    trial.set_evaluating(time_started=2, worker_id="43")
    state.put_updated_trial(trial)
    return state, trial


EXTRA = {"picnic": "basket", "counts": [1, 2, 3]}
ENDINGS = {
    "success": (Trial.State.SUCCESS, {"objective_to_minimize": 427, "cost": -123.6}),
    "failed": (Trial.State.FAILED, {"objective_to_minimize": np.nan, "cost": np.inf}),
    "crashed": (
        Trial.State.CRASHED,
        {
            "objective_to_minimize": None,
            "cost": None,
            "err": ValueError("Something went wrong"),
            "tb": "some traceback",
        },
    ),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_trials_life_reads_back_through_the_state(
    tmp_path: Path, neps_patched: type, ending: str
) -> None:
    state, trial = sampled_and_evaluating(neps_patched, tmp_path / "run")
    after, values = ENDINGS[ending]
    given = {"err": None, "tb": None, **values}
    report = trial.set_complete(
        report_as=ending,
        time_end=3,
        learning_curve=None,
        evaluation_duration=1,
        extra=EXTRA,
        **given,
    )
    state.lock_and_report_trial_evaluation(trial=trial, report=report, worker_id="43")

    read = state.lock_and_get_trial_by_id(trial.id)
    assert read.id == trial.id
    assert read.config == trial.config
    assert read.metadata.state == after
    meta = read.metadata
    assert (meta.sampling_worker_id, meta.evaluating_worker_id) == ("42", "43")
    assert (meta.time_started, meta.time_end, meta.evaluation_duration) == (2, 3, 1)
    assert meta.time_sampled == trial.metadata.time_sampled
    got = read.report
    assert got is not None
    assert got.reported_as == ending
    assert got.extra == EXTRA
    assert got.learning_curve is None
    assert got.evaluation_duration == 1
    assert got.tb == given["tb"]
    for name in ("objective_to_minimize", "cost"):
        want, have = given[name], getattr(got, name)
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(have)
        else:
            assert have == want
    if given["err"] is None:
        assert got.err is None
    else:
        assert "Something went wrong" in str(got.err)


# -- test_state/test_search_space_persistence.py ---------------------------------------

BUDGET10 = BudgetInfo(worker_cost_to_spend=10, used_cost_budget=0)


def spaced_run(cls: type, root: Path, space: Any, info: OptimizerInfo | None = None) -> State:
    return new_run(
        cls,
        root,
        space=space,
        info=OptimizerInfo(name="test", info={}) if info is None else info,
        state=opt_state(BUDGET10, {}),
    )


def assert_has(space: Any, names: str) -> None:
    if isinstance(space, SearchSpace):
        for name in names:
            assert name in space
    else:
        assert isinstance(space, neps.PipelineSpace)
        for name in names:
            assert name in space.get_attrs()


@pytest.mark.parametrize("kind", ["pipeline", "classic"])
def test_the_space_is_saved_and_read_back(tmp_path: Path, neps_patched: type, kind: str) -> None:
    space = ThreeKinds() if kind == "pipeline" else classic_space()
    spaced_run(neps_patched, tmp_path / "run", space)
    assert (tmp_path / "run" / "pipeline_space.pkl").exists()
    loaded = neps_patched.create_or_load(
        path=tmp_path / "run", load_only=True
    ).lock_and_get_search_space()
    assert isinstance(loaded, type(space) if kind == "classic" else neps.PipelineSpace)
    assert_has(loaded, "abc")


def test_a_run_without_a_space_saves_none(tmp_path: Path, neps_patched: type) -> None:
    spaced_run(neps_patched, tmp_path / "run", None)
    assert not (tmp_path / "run" / "pipeline_space.pkl").exists()
    loaded = neps_patched.create_or_load(path=tmp_path / "run", load_only=True)
    assert loaded.lock_and_get_search_space() is None


@pytest.mark.parametrize("kind", ["pipeline", "classic"])
def test_load_pipeline_space_reads_the_saved_space(
    tmp_path: Path, neps_patched: type, kind: str
) -> None:
    space = ThreeKinds() if kind == "pipeline" else classic_space()
    spaced_run(neps_patched, tmp_path / "run", space)
    loaded = neps.load_pipeline_space(tmp_path / "run")
    assert loaded is not None
    assert isinstance(loaded, SearchSpace if kind == "classic" else neps.PipelineSpace)
    assert_has(loaded, "abc")


def test_load_pipeline_space_needs_a_run(tmp_path: Path, neps_patched: type) -> None:
    with pytest.raises(FileNotFoundError, match="No neps state found"):
        neps.load_pipeline_space(tmp_path / "nonexistent")


def test_load_pipeline_space_of_a_run_without_a_space(tmp_path: Path, neps_patched: type) -> None:
    spaced_run(neps_patched, tmp_path / "run", None)
    with pytest.raises(ValueError, match="No pipeline space was saved"):
        neps.load_pipeline_space(tmp_path / "run")


def test_load_optimizer_info_reads_the_run(tmp_path: Path, neps_patched: type) -> None:
    info = OptimizerInfo(
        name="bayesian_optimization", info={"acquisition": "EI", "initial_design_size": 10}
    )
    spaced_run(neps_patched, tmp_path / "run", ThreeKinds(), info)
    loaded = neps.load_optimizer_info(tmp_path / "run")
    assert loaded["name"] == "bayesian_optimization"
    assert loaded["info"] == {"acquisition": "EI", "initial_design_size": 10}


def test_load_optimizer_info_needs_a_run(tmp_path: Path, neps_patched: type) -> None:
    with pytest.raises(FileNotFoundError, match="No neps state found"):
        neps.load_optimizer_info(tmp_path / "nonexistent")


def imported(*points: tuple[float, int]) -> list[tuple[dict[str, Any], Any]]:
    return [({"x": x, "y": y}, UserResultDict(objective_to_minimize=x)) for x, y in points]


# NePS's words when a run's saved space is not the one given (the reference's too).
OTHER_SPACE = "pipeline space on disk does not match"


def test_import_trials_saves_the_space(tmp_path: Path, neps_patched: type) -> None:
    neps.import_trials(imported((1.0, 5), (2.0, 8)), tmp_path / "run", pipeline_space=Imported())
    loaded = neps.load_pipeline_space(tmp_path / "run")
    assert isinstance(loaded, Imported | SearchSpace)
    if isinstance(loaded, SearchSpace):
        assert_has(loaded, "xy")
    assert len(neps_patched.create_or_load(tmp_path / "run", load_only=True).all_trial_ids()) == 2


def test_import_trials_refuses_another_space(tmp_path: Path, neps_patched: type) -> None:
    trials = imported((1.0, 5))
    neps.import_trials(trials, tmp_path / "run", pipeline_space=Imported())
    with pytest.raises(NePSError, match=OTHER_SPACE):
        neps.import_trials(trials, tmp_path / "run", pipeline_space=ImportedWider())


def test_import_trials_takes_the_saved_space(tmp_path: Path, neps_patched: type) -> None:
    neps.import_trials(imported((1.0, 5)), tmp_path / "run", pipeline_space=Imported())
    neps.import_trials(imported((2.0, 8)), tmp_path / "run")
    assert neps.load_pipeline_space(tmp_path / "run") is not None
    assert len(neps_patched.create_or_load(tmp_path / "run", load_only=True).all_trial_ids()) == 2


def test_import_trials_on_a_new_run_needs_a_space(tmp_path: Path, neps_patched: type) -> None:
    with pytest.raises(ValueError, match="pipeline_space is required when importing trials"):
        neps.import_trials(imported((1.0, 5)), tmp_path / "run")


def test_import_trials_accepts_the_same_space_and_refuses_another(
    tmp_path: Path, neps_patched: type
) -> None:
    neps.import_trials(imported((1.0, 5)), tmp_path / "run", pipeline_space=Imported())
    neps.import_trials(imported((2.0, 8)), tmp_path / "run", pipeline_space=Imported())
    with pytest.raises(NePSError, match=OTHER_SPACE):
        neps.import_trials(imported((2.0, 8)), tmp_path / "run", pipeline_space=ImportedWider())


# -- test_state/test_search_space_validation.py ----------------------------------------


def test_neps_run_refuses_another_space(tmp_path: Path, neps_patched: type) -> None:
    one_eval_run(tmp_path / "run")
    with pytest.raises(NePSError, match=OTHER_SPACE):
        neps.run(
            evaluate_pipeline=a_plus_b,
            pipeline_space=AB(),
            root_directory=str(tmp_path / "run"),
            worker_evaluations_to_spend=2,
        )


def test_neps_run_continues_with_the_saved_space(tmp_path: Path, neps_patched: type) -> None:
    one_eval_run(tmp_path / "run")
    neps.run(
        evaluate_pipeline=x_plus_y,
        root_directory=str(tmp_path / "run"),
        worker_evaluations_to_spend=3,
    )
    df, _ = neps.status(str(tmp_path / "run"), print_summary=False)
    assert len(df) >= 2


def test_neps_run_on_a_new_run_needs_a_space(tmp_path: Path, neps_patched: type) -> None:
    with pytest.raises(ValueError, match="pipeline_space is required"):
        neps.run(
            evaluate_pipeline=x_plus_y,
            root_directory=str(tmp_path / "run"),
            worker_evaluations_to_spend=1,
        )


def test_load_only_does_not_check_the_space(
    tmp_path: Path, neps_patched: type, caplog: pytest.LogCaptureFixture
) -> None:
    one_eval_run(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        space = neps_patched.create_or_load(
            path=tmp_path / "run", load_only=True
        ).lock_and_get_search_space()
    assert not [r for r in caplog.records if "pipeline space on disk" in r.message.lower()]
    assert space is not None


def a_config_file(root: Path) -> Path:
    folders = [p for p in (root / "configs").iterdir() if p.is_dir() and p.name[0] != "."]
    assert folders
    return folders[0] / "config.yaml"


def test_load_config_refuses_another_space(tmp_path: Path, neps_patched: type) -> None:
    one_eval_run(tmp_path / "run")
    with pytest.raises(NePSError, match="pipeline_space provided does not match"):
        neps.load_config(config_path=a_config_file(tmp_path / "run"), pipeline_space=AB())


def test_load_config_takes_the_saved_space(tmp_path: Path, neps_patched: type) -> None:
    one_eval_run(tmp_path / "run")
    assert "x" in neps.load_config(config_path=a_config_file(tmp_path / "run"))


def test_a_load_only_handle_reads_the_space(tmp_path: Path, neps_patched: type) -> None:
    # (upstream's stand-in for a DDP rank that opens the run without creating it)
    one_eval_run(tmp_path / "run")
    handle = neps_patched.create_or_load(path=tmp_path / "run", load_only=True)
    assert isinstance(handle.lock_and_get_search_space(), neps.PipelineSpace | SearchSpace)


@pytest.mark.parametrize("space_file", ["kept", "deleted"])
def test_status_needs_no_space(tmp_path: Path, neps_patched: type, space_file: str) -> None:
    one_eval_run(tmp_path / "run")
    if space_file == "deleted":
        (tmp_path / "run" / "pipeline_space.pkl").unlink(missing_ok=True)
    df, _ = neps.status(str(tmp_path / "run"), print_summary=False)
    assert len(df) > 0


# -- test_runtime/test_default_report_values.py ----------------------------------------


def only_trial(state: State, want: Any) -> Any:
    trials = state.lock_and_read_trials()
    assert [t.metadata.state for t in trials.values()] == [want]
    (trial,) = trials.values()
    assert trial.report is not None
    return trial


def test_a_crash_is_reported_with_the_error_defaults(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), state=opt_state(shared={}))
    defaults = DefaultReportValues(
        objective_value_on_error=2.4, cost_value_on_error=2.4, learning_curve_on_error=[2.4, 2.5]
    )
    how = settings(default_report_values=defaults, worker_evaluations_to_spend=1)
    worker(state, how, fails).run()
    trial = only_trial(state, Trial.State.CRASHED)
    assert_nothing_left(state, errors=1)
    assert trial.report.objective_to_minimize == 2.4
    assert trial.report.cost == 2.4
    assert trial.report.learning_curve == [2.4, 2.5]


def test_missing_values_are_reported_with_their_defaults(
    tmp_path: Path, neps_patched: type
) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), state=opt_state(shared={}))
    defaults = DefaultReportValues(
        cost_if_not_provided=2.4, learning_curve_if_not_provided=[2.4, 2.5]
    )
    worker(
        state, settings(default_report_values=defaults, worker_evaluations_to_spend=1), one
    ).run()
    trial = only_trial(state, Trial.State.SUCCESS)
    assert_nothing_left(state)
    assert trial.report.cost == 2.4
    assert trial.report.learning_curve == [2.4, 2.5]


def test_the_learning_curve_can_default_to_the_objective(
    tmp_path: Path, neps_patched: type
) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), state=opt_state(shared={}))
    defaults = DefaultReportValues(learning_curve_if_not_provided="objective_to_minimize")
    worker(
        state, settings(default_report_values=defaults, worker_evaluations_to_spend=1), one
    ).run()
    trial = only_trial(state, Trial.State.SUCCESS)
    assert_nothing_left(state)
    assert trial.report.learning_curve == [1.0]


# -- test_runtime/test_error_handling_strategies.py ------------------------------------


@pytest.mark.parametrize(
    "on_error", [OnErrorPossibilities.RAISE_ANY_ERROR, OnErrorPossibilities.RAISE_WORKER_ERROR]
)
def test_a_worker_raises_on_its_own_error(
    tmp_path: Path, neps_patched: type, on_error: Any
) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    with pytest.raises(WorkerRaiseError):
        worker(state, settings(on_error=on_error, worker_evaluations_to_spend=1), fails).run()
    only_trial(state, Trial.State.CRASHED)
    assert_nothing_left(state, errors=1)


def test_a_worker_raises_on_another_workers_error(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    how = settings(on_error=OnErrorPossibilities.RAISE_ANY_ERROR, worker_evaluations_to_spend=1)
    first, second = worker(state, how, fails), worker(state, how, fails)
    with contextlib.suppress(WorkerRaiseError):
        first.run()
    with pytest.raises(WorkerRaiseError):
        second.run()  # evaluates nothing: the first worker's error is on record
    only_trial(state, Trial.State.CRASHED)
    assert_nothing_left(state, errors=1)


@pytest.mark.parametrize(
    "on_error", [OnErrorPossibilities.IGNORE, OnErrorPossibilities.RAISE_WORKER_ERROR]
)
def test_a_worker_goes_on_after_another_workers_error(
    tmp_path: Path, neps_patched: type, on_error: Any
) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    raising = [True]

    def evaluate(*_: Any, **__: Any) -> float:
        if raising[0]:
            raise ValueError("This is an error")
        return 10

    how = settings(on_error=on_error, worker_evaluations_to_spend=1)
    first, second = worker(state, how, evaluate), worker(state, how, evaluate)
    with contextlib.suppress(WorkerRaiseError):
        first.run()
    assert len(done_by(state, first.worker_id)) == 1
    raising[0] = False
    second.run()
    assert len(done_by(state, second.worker_id)) == 1
    states = sorted(t.metadata.state.value for t in state.lock_and_read_trials().values())
    assert states == sorted([Trial.State.SUCCESS.value, Trial.State.CRASHED.value])
    assert_nothing_left(state, errors=1)


# -- test_runtime/test_save_evaluation_results.py --------------------------------------


def test_results_saved_later_complete_evaluating_trials(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), state=opt_state(shared={}))
    later: dict[str, Callable[[dict[str, Any]], None]] = {}

    def hands_off(*_: Any, pipeline_id: str, pipeline_directory: Path, **__: Any) -> None:
        def save(result: dict[str, Any]) -> None:
            neps.save_pipeline_results(
                user_result=result, pipeline_id=pipeline_id, root_directory=Path(state.path)
            )

        later[pipeline_id] = save

    how = settings(
        default_report_values=DefaultReportValues(cost_if_not_provided=10),  # not applied
        worker_evaluations_to_spend=2,
        include_in_progress_evaluations_towards_maximum=True,
        worker_cost_to_spend=1,
    )
    DefaultWorker.new(
        state=state, optimizer=random_search(OneFloat()), evaluation_fn=hands_off, settings=how
    ).run()
    trials = state.lock_and_read_trials()
    assert len(trials) == 2
    assert sorted(later) == sorted(trials)
    for trial in trials.values():
        assert trial.metadata.state == Trial.State.EVALUATING
        assert trial.report is None

    first, second = sorted(later, key=lambda tid: trials[tid].metadata.time_sampled)
    later[first]({"objective_to_minimize": 0.3, "cost": 1.2})
    now = state.lock_and_read_trials()
    assert now[first].metadata.state == Trial.State.SUCCESS
    assert now[first].report.objective_to_minimize == 0.3
    assert now[first].report.cost == 1.2
    assert now[second].metadata.state == Trial.State.EVALUATING

    later[second]({"objective_to_minimize": 10})
    now = state.lock_and_read_trials()
    assert now[second].metadata.state == Trial.State.SUCCESS
    assert now[second].report.objective_to_minimize == 10
    assert now[second].report.cost is None


# -- test_runtime/test_stopping_criterion.py -------------------------------------------


def assert_all_report(trials: list[Any], objective: float, cost: float | None) -> None:
    for trial in trials:
        assert trial.metadata.state == Trial.State.SUCCESS
        assert trial.report is not None
        assert trial.report.objective_to_minimize == objective
        assert trial.report.cost == cost


def test_a_worker_stops_after_its_evaluations(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    how = settings(worker_evaluations_to_spend=3)  # the costs are not counted

    def costly(*_: Any, **__: Any) -> dict[str, float]:
        return {"objective_to_minimize": 1.0, "cost": 3.0}

    first = worker(state, how, costly)
    first.run()
    assert len(done_by(state, first.worker_id)) == 3
    assert_nothing_left(state)
    assert_all_report(list(state.lock_and_read_trials().values()), 1.0, 3.0)

    second = worker(state, how, costly)  # a new worker has a budget of its own
    second.run()
    assert len(done_by(state, second.worker_id)) == 3
    assert_nothing_left(state)


def test_the_first_budget_reached_stops_a_worker(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    how = settings(worker_evaluations_to_spend=5, worker_cost_to_spend=3)

    def costly(*_: Any, **__: Any) -> dict[str, float]:
        return {"objective_to_minimize": 1.0, "cost": 2.0}

    first = worker(state, how, costly)
    first.run()
    assert len(done_by(state, first.worker_id)) == 2  # cost 4 >= 3 after two
    assert_nothing_left(state)
    trials = list(state.lock_and_read_trials().values())
    assert len(trials) == 2
    assert_all_report(trials, 1.0, 2.0)

    second = worker(state, replace(how, worker_cost_to_spend=100), costly)
    second.run()
    assert len(done_by(state, second.worker_id)) == 5
    assert_nothing_left(state)


def test_an_evaluating_trial_counts_towards_the_maximum(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    how = settings(
        worker_evaluations_to_spend=2, include_in_progress_evaluations_towards_maximum=True
    )
    the_worker = worker(state, how, one, worker_id="test")
    busy = state.lock_and_sample_trial(random_search(OneFloat()), worker_id=the_worker.worker_id)
    busy.set_evaluating(time_started=0.0, worker_id=the_worker.worker_id)
    state.put_updated_trial(busy)

    the_worker.run()
    trials = state.lock_and_read_trials()
    assert len(trials) == 2
    assert len(done_by(state, the_worker.worker_id)) == 2
    assert_nothing_left(state)
    assert trials[busy.id] == busy
    assert trials[busy.id].metadata.state == Trial.State.EVALUATING
    assert trials[busy.id].report is None
    (other,) = (t for tid, t in trials.items() if tid != busy.id)
    assert other.metadata.state == Trial.State.SUCCESS
    assert other.report is not None
    assert other.report.objective_to_minimize == 1.0


def test_a_worker_stops_at_its_wallclock_limit(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    how = settings(worker_evaluations_to_spend=1000, max_wallclock_time_seconds=1)
    started = time.monotonic()
    worker(state, how, one, worker_id="dummy").run()
    assert time.monotonic() - started >= 1.0
    assert len(state.lock_and_read_trials()) > 0
    assert_nothing_left(state)


def test_a_worker_stops_at_its_evaluation_time_limit(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    how = settings(worker_evaluations_to_spend=100, max_evaluation_time_total_seconds=0.5)

    def slow(*_: Any, **__: Any) -> float:
        time.sleep(0.6)
        return 1.0

    the_worker = worker(state, how, slow, worker_id="dummy")
    the_worker.run()
    mine = done_by(state, the_worker.worker_id)
    assert len(mine) > 0
    # the last evaluation may go over the limit: one is allowed to
    assert 0.5 <= sum(t.metadata.evaluation_duration for t in mine) <= 1.0
    assert_nothing_left(state)


def test_a_worker_stops_after_its_fidelity_budget(tmp_path: Path, neps_patched: type) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat())
    optimizer = asha(
        pipeline_space=SearchSpace({"a": HPOFloat(0, 1), "b": HPOInteger(2, 10, is_fidelity=True)})
    )
    how = settings(worker_evaluations_to_spend=10, worker_fidelities_to_spend=2)

    def run(worker_id: str) -> list[Any]:
        DefaultWorker.new(
            state=state, optimizer=optimizer, evaluation_fn=one, settings=how, worker_id=worker_id
        ).run()
        return done_by(state, worker_id)

    mine = run("dummy")
    assert len(mine) == 1  # the lowest fidelity, 2, spends the budget
    assert 2 <= sum(t.config["b"] for t in mine) <= 10
    assert_nothing_left(state)

    how = replace(how, worker_fidelities_to_spend=4)
    assert 4 <= sum(t.config["b"] for t in run("dummy2")) <= 13
    assert_nothing_left(state)


# -- test_runtime/test_worker_creation.py ----------------------------------------------


@pytest.mark.parametrize("given", ["my_worker_123", None])
def test_a_worker_records_its_id(tmp_path: Path, neps_patched: type, given: str | None) -> None:
    state = new_run(neps_patched, tmp_path / "run", space=OneFloat(), state=opt_state(shared={}))
    how = settings(worker_evaluations_to_spend=1)
    the_worker = (
        worker(state, how, one) if given is None else worker(state, how, one, worker_id=given)
    )
    assert the_worker.worker_id == ("worker_0" if given is None else given)
    assert state.lock_and_get_optimizer_state().worker_ids == [the_worker.worker_id]


# -- test_runtime/test_trajectory_and_metrics.py ---------------------------------------


def test_a_run_writes_its_summary(tmp_path: Path, neps_patched: type) -> None:
    root = tmp_path / "run"
    random_run(root, 5, overwrite_root_directory=True)
    folder = root / "summary"
    assert folder.is_dir()
    for name in ("best_config_trajectory.txt", "best_config.txt"):
        assert (folder / name).is_file()
        assert (folder / name).read_text().strip()
    best, _ = summary(root)
    assert "Objective to minimize" in best
    assert "x" in best
    assert "y" in best
    csvs = list(folder.glob("*.csv"))
    assert csvs
    assert "objective_to_minimize" in csvs[0].read_text()


def test_the_trajectory_of_a_run_with_a_fidelity(tmp_path: Path, neps_patched: type) -> None:
    neps.run(
        evaluate_pipeline=metrics_at,
        pipeline_space=XYEpochs(),
        optimizer=("neps_random_search", {"ignore_fidelity": True}),
        root_directory=str(tmp_path / "run"),
        worker_evaluations_to_spend=10,
        overwrite_root_directory=True,
    )
    _, trajectory = summary(tmp_path / "run")
    assert "Config ID" in trajectory
    assert "Objective" in trajectory
    assert any(p in trajectory for p in ("x", "y", "epochs", "SAMPLING__Resolvable"))


def test_the_trajectorys_format_and_values(tmp_path: Path, neps_patched: type) -> None:
    random_run(tmp_path / "run", 5, overwrite_root_directory=True)
    _, trajectory = summary(tmp_path / "run")
    for part in (HEADER, "Config ID:", "Objective to minimize:", "Cumulative evaluations:"):
        assert part in trajectory
    assert "Config:" in trajectory
    assert SEPARATOR in trajectory
    objectives = [float(o) for o in OBJECTIVE.findall(trajectory)]
    assert objectives
    assert all(1.0 <= o <= 11.0 for o in objectives)  # x + y, x in [0, 1], y in [1, 10]


def test_the_trajectory_with_failed_evaluations(tmp_path: Path, neps_patched: type) -> None:
    random_run(
        tmp_path / "run", 15, fails_at_the_edges, overwrite_root_directory=True, ignore_errors=True
    )
    _, trajectory = summary(tmp_path / "run")
    assert len(trajectory.strip().split("\n")) >= 2
    assert "Objective to minimize" in trajectory


def test_the_trajectory_of_hyperband(tmp_path: Path, neps_patched: type) -> None:
    neps.run(
        evaluate_pipeline=metrics_at,
        pipeline_space=XYEpochs(),
        optimizer=neps.algorithms.neps_hyperband,
        root_directory=str(tmp_path / "run"),
        worker_fidelities_to_spend=20,
        overwrite_root_directory=True,
    )
    _, trajectory = summary(tmp_path / "run")
    assert "Objective" in trajectory
    assert any(p in trajectory for p in ("epochs", "SAMPLING__Resolvable"))
    assert len(trajectory.strip().split("\n")) >= 5


@pytest.mark.parametrize("optimizer", ["neps_random_search", "complex_random_search"])
def test_the_summary_is_the_same_for_either_random_search(
    tmp_path: Path, neps_patched: type, optimizer: str
) -> None:
    random_run(
        tmp_path / "run",
        5,
        optimizer=getattr(neps.algorithms, optimizer),
        overwrite_root_directory=True,
    )
    best, trajectory = summary(tmp_path / "run")
    for text in (best, trajectory):
        for part in ("Config ID:", "Objective to minimize:", "Cumulative evaluations:", "Config:"):
            assert part in text
    assert HEADER in trajectory


def test_a_continued_run_extends_its_trajectory(tmp_path: Path, neps_patched: type) -> None:
    root = tmp_path / "run"
    random_run(root, 3, overwrite_root_directory=True)
    _, before = summary(root)
    assert "Config ID:" in before
    assert "Objective to minimize:" in before
    random_run(root, 2, overwrite_root_directory=False)
    _, after = summary(root)
    assert len(after) >= len(before)
    assert "Config ID:" in after
    assert "Objective to minimize:" in after


@pytest.mark.parametrize("attempt", range(3))
def test_a_finished_run_continued_keeps_its_incumbent(
    tmp_path: Path, neps_patched: type, attempt: int
) -> None:
    # A long first run likely finds a good config; the short second one then likely
    # finds only worse ones, which must not become the incumbent.
    del attempt  # (each attempt samples anew: the seed differs per run)
    root = tmp_path / "run"
    first_budget, more = 12, 4
    random_run(root, first_budget, overwrite_root_directory=True)
    best, _ = summary(root)
    first_best = OBJECTIVE.search(best)
    first_count = CUMULATIVE.search(best)
    assert first_best is not None
    assert first_count is not None

    random_run(root, more, overwrite_root_directory=False)
    best, trajectory = summary(root)
    final_best, final_count = OBJECTIVE.search(best), CUMULATIVE.search(best)
    assert final_best is not None
    assert final_count is not None
    objective = float(final_best.group(1))
    assert objective <= float(first_best.group(1))
    assert int(first_count.group(1)) <= int(final_count.group(1)) <= first_budget + more

    steps = [float(o) for o in OBJECTIVE.findall(trajectory)]
    assert steps
    assert abs(objective - min(steps)) < 1e-10
    assert all(later <= earlier for earlier, later in itertools.pairwise(steps))
    assert "Config:" in best
    assert any(p in best for p in ("x", "y", "SAMPLING__Resolvable"))
    assert 1.0 <= objective <= 11.0
    assert HEADER in trajectory
    assert "Config ID:" in trajectory
    assert SEPARATOR in trajectory


def test_best_config_lists_the_pareto_front(tmp_path: Path, neps_patched: type) -> None:
    root = tmp_path / "mo"
    neps_patched.create_or_load(
        path=root,
        optimizer_info={"name": "test_opt", "info": {}},
        optimizer_state=opt_state(shared={}),
    )

    def finished(tid: str, sampled: float, config: dict[str, Any], objective: list[float]) -> Any:
        meta = MetaData(
            id=tid,
            location=str(root / "configs" / f"config_{tid}"),
            state=Trial.State.SUCCESS,
            previous_trial_id=None,
            previous_trial_location=None,
            sampling_worker_id="external",
            time_sampled=sampled,
        )
        trial = Trial(config=config, metadata=meta, report=None)
        trial.report = trial.set_complete(
            report_as="success",
            time_end=time.time(),
            objective_to_minimize=objective,
            cost=None,
            learning_curve=None,
            err=None,
            tb=None,
            extra={},
            evaluation_duration=0.0,
        )
        return trial

    # two objective vectors neither of which dominates the other
    trials = {
        "t1": finished("t1", 1.0, {"which": 0}, [1.0, 0]),
        "t2": finished("t2", 2.0, {"which": 1}, [0, 1]),
    }
    SummaryWriter(root_directory=root).update(trials)
    best = (root / "summary" / "best_config.txt").read_text()
    assert best.count("Config ID:") == 2
    assert "t1" in best
    assert "t2" in best
