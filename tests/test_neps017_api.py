"""NePS 0.17's API in the reference, beside the seed's: types, the new operations, the switch.

None of these needs NePS installed (``tests/test_neps_runtime.py`` runs NePS's own code
on the reference). Each new operation is one journaled commit: the kill matrix
(``tests/test_crash_recovery.py``) kills it at every fault point it reaches.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
from neps_test_helpers import completed, make_state, new_opt_state, run_cycle, tree_digest
from test_untrusted import malicious

from neps_state import (
    BudgetInfo,
    CorruptedFileError,
    KeptByNePSStateError,
    NePSState,
    OptimizationState,
    OptimizerInfo,
    OptimizerInfoMismatchError,
    SearchSpaceMismatchError,
    SeedSnapshot,
    Settings,
    Trial,
    TrialAlreadyExistsError,
    TrialNotFoundError,
    UsageError,
    WorkerIdExistsError,
    patch_neps,
)
from neps_state import _neps as neps_switch
from neps_state import _pickles as pickles
from pytest_neps._checker import check_run_dir
from pytest_neps._ops import Imported
from pytest_neps._optimizers import random_search
from pytest_neps._procs import Task, run_tasks
from pytest_neps.cli import main

OS = Settings(durability="os")


# -- types -------------------------------------------------------------------------------


def test_a_state_equals_its_string_and_prints_as_it() -> None:
    assert Trial.State.SUCCESS == "success"
    assert "pending" == Trial.State.PENDING  # noqa: SIM300 - both sides, on purpose
    assert {Trial.State.FAILED: 1}["failed"] == 1
    assert f"{Trial.State.CRASHED}" == str(Trial.State.CRASHED) == "crashed"
    assert Trial.State("external") is Trial.State.EXTERNAL
    assert Trial.State.SUCCESS != "failed"


def test_budget_info_has_nepss_fields_and_the_seeds_names() -> None:
    budget = BudgetInfo(max_evaluations=7, max_cost_total=2.5, worker_cost_to_spend=1.0)
    assert budget.total_evaluations_to_spend == budget.max_evaluations == 7
    assert budget.total_cost_to_spend == budget.max_cost_total == 2.5
    assert budget.worker_cost_to_spend == 1.0
    assert budget.worker_evaluations_to_spend is None
    assert budget.total_fidelities_to_spend is None
    budget.max_evaluations = 9
    assert budget.total_evaluations_to_spend == 9
    assert budget.clone() == budget
    assert budget.clone() is not budget


def test_a_budget_pickled_under_the_seeds_names_reads_as_today() -> None:
    old = BudgetInfo()
    old.__dict__ = {
        "max_cost_total": 3.0,
        "used_cost_budget": 1.0,
        "max_evaluations": 5,
        "used_evaluations": 2,
    }
    back = pickle.loads(pickle.dumps(old))
    assert back == BudgetInfo(
        used_cost_budget=1.0,
        used_evaluations=2,
        total_evaluations_to_spend=5,
        total_cost_to_spend=3.0,
    )


def test_an_optimization_state_has_worker_ids_and_a_snapshot_compares() -> None:
    state = OptimizationState(budget=None, seed_snapshot=SeedSnapshot.new_capture())
    assert state.worker_ids is None
    assert state.shared_state is None
    assert SeedSnapshot.new_capture() == SeedSnapshot.new_capture()
    a = SeedSnapshot.new_capture()
    math.sqrt(__import__("random").random())
    assert SeedSnapshot.new_capture() != a


def test_optimizer_info_is_a_mapping_with_derived() -> None:
    info = OptimizerInfo("bo", {"seed": 1}, {"fidelity": {"name": "epochs"}})
    assert dict(info) == {
        "name": "bo",
        "info": {"seed": 1},
        "derived": {"fidelity": {"name": "epochs"}},
    }
    assert info["name"] == "bo"
    assert info.get("derived") == {"fidelity": {"name": "epochs"}}
    assert info.fidelity_name == "epochs"
    assert dict(OptimizerInfo("bo")) == {"name": "bo", "info": {}}
    assert OptimizerInfo("bo") == {"name": "bo", "info": {}}
    assert OptimizerInfo.of({"name": "bo", "info": {"seed": 1}}) == OptimizerInfo("bo", {"seed": 1})
    with pytest.raises(UsageError, match="a string 'name'"):
        OptimizerInfo.of({"info": {}})


def test_nepss_lenient_matching_accepts_new_settings_only() -> None:
    on_disk = OptimizerInfo("bo", {"seed": 1, "n": [1, 2]})
    assert on_disk.accepts(OptimizerInfo("bo", {"n": (1, 2), "seed": 1}))
    assert on_disk.accepts(OptimizerInfo("bo", {"seed": 1, "n": [1, 2], "new": True}))
    assert not on_disk.accepts(OptimizerInfo("bo", {"seed": 2, "n": [1, 2]}))
    assert not on_disk.accepts(OptimizerInfo("bo", {"seed": 1}))
    assert not on_disk.accepts(OptimizerInfo("rs", {"seed": 1, "n": [1, 2]}))


# -- creation, infos as NePS passes them -----------------------------------------------


def test_a_run_is_created_from_nepss_dict_and_resumed_leniently(run_dir: Path) -> None:
    info = {"name": "bo", "info": {"seed": 1}, "derived": {"fidelity": {"name": "epochs"}}}
    state = NePSState.create_or_load(
        run_dir, optimizer_info=info, optimizer_state=new_opt_state(), settings=OS
    )
    assert state._optimizer_info == info
    assert state.fidelity_name == "epochs"
    more = {"name": "bo", "info": {"seed": 1, "added": 2}}
    again = NePSState.create_or_load(
        run_dir, optimizer_info=more, optimizer_state=new_opt_state(), settings=OS
    )
    assert again.lock_and_get_optimizer_info() == OptimizerInfo("bo", {"seed": 1})
    with pytest.raises(OptimizerInfoMismatchError):
        NePSState.create_or_load(
            run_dir,
            optimizer_info={"name": "bo", "info": {"seed": 2}},
            optimizer_state=new_opt_state(),
            settings=OS,
        )


def test_a_fidelity_name_a_later_worker_derived_is_recorded(run_dir: Path) -> None:
    make_state(run_dir, info=OptimizerInfo("bo", {"seed": 1}))
    assert NePSState.load(run_dir, settings=OS).fidelity_name is None
    derived = OptimizerInfo("bo", {"seed": 1}, {"fidelity": {"name": "epochs"}})
    NePSState.create_or_load(
        run_dir, optimizer_info=derived, optimizer_state=new_opt_state(), settings=OS
    )
    assert NePSState.load(run_dir, settings=OS).fidelity_name == "epochs"
    assert "epochs" in (run_dir / "optimizer_info.yaml").read_text()


# -- worker ids and budgets --------------------------------------------------------------


def test_worker_ids_are_given_out_in_order_and_never_twice(state: NePSState) -> None:
    assert [state.lock_and_set_new_worker_id() for _ in range(3)] == [
        "worker_0",
        "worker_1",
        "worker_2",
    ]
    assert state.lock_and_set_new_worker_id("mine") == "mine"
    with pytest.raises(WorkerIdExistsError, match="'mine' already exists"):
        state.lock_and_set_new_worker_id("mine")
    other = NePSState.load(state.path, settings=OS)
    assert other.lock_and_get_optimizer_state().worker_ids == [
        "worker_0",
        "worker_1",
        "worker_2",
        "mine",
    ]
    assert other.lock_and_set_new_worker_id() == "worker_4"


def take_ids(impl: str, root: Path, n: int) -> list[str]:
    """A worker process: ``n`` worker ids from its own handle."""
    from pytest_neps._impl import Impl  # noqa: PLC0415 - in the child

    state = Impl(impl).load(root, settings=OS)
    return [state.lock_and_set_new_worker_id() for _ in range(n)]


def _racing_ids(tmp_path: Path, impl: str) -> tuple[list[str], list[str]]:
    state = make_state(tmp_path / "run")
    tasks = [Task(f"w{k}", take_ids, (impl, state.path, 5)) for k in range(4)]
    outcomes = run_tasks(tasks, timeout=120)
    lost = [o.describe() for o in outcomes if not o.ok]
    assert not lost, "\n".join(lost)
    given = [wid for o in outcomes for wid in o.value]
    return given, state.lock_and_get_optimizer_state().worker_ids or []


def test_racing_processes_get_distinct_worker_ids(tmp_path: Path) -> None:
    given, recorded = _racing_ids(tmp_path, "neps_state:NePSState")
    assert sorted(given) == sorted(f"worker_{k}" for k in range(20))
    assert sorted(recorded) == sorted(given)


def test_racing_worker_ids_catch_the_unlocked_read_modify_write(tmp_path: Path) -> None:
    given, recorded = _racing_ids(tmp_path, "pytest_neps.controls:UnlockedWorkerIds")
    assert len(set(given)) < 20 or len(recorded) < 20, "the unlocked ids were not caught"


def test_global_budgets_are_set_and_read_back(state: NePSState) -> None:
    assert state.lock_and_get_global_budgets() == (None, None, None)
    state.lock_and_update_global_budgets(
        total_evaluations_to_spend=12, total_cost_to_spend=None, total_fidelities_to_spend=None
    )
    state.lock_and_update_global_budgets(
        total_evaluations_to_spend=None, total_cost_to_spend=3.5, total_fidelities_to_spend=None
    )
    digest = tree_digest(state.path)
    state.lock_and_update_global_budgets(
        total_evaluations_to_spend=None, total_cost_to_spend=None, total_fidelities_to_spend=None
    )
    assert tree_digest(state.path) == digest  # nothing given, nothing written
    assert NePSState.load(state.path, settings=OS).lock_and_get_global_budgets() == (12, 3.5, None)
    budget = state._get_optimizer_state().budget
    assert budget is not None
    assert budget.total_evaluations_to_spend == 12


# -- imports, resets and removals --------------------------------------------------------


def imported(tid: str, objective: float = 0.5) -> Imported:
    return Imported(tid, {"lr": 0.1}, {"objective_to_minimize": objective, "cost": 2.0})


def test_imported_trials_are_external_with_their_reports(state: NePSState) -> None:
    trials = state.lock_and_import_trials([imported("a"), imported("b", 0.2)], worker_id="ext")
    assert [t.id for t in trials] == ["a", "b"]
    read = NePSState.load(state.path, settings=OS).lock_and_read_trials()
    assert read["b"].metadata.state is Trial.State.EXTERNAL
    assert read["b"].metadata.previous_trial_id == "a"
    assert read["b"].report is not None
    assert read["b"].report.objective_to_minimize == 0.2
    assert read["b"].source == "imported"
    assert math.isnan(read["a"].metadata.time_sampled)
    assert check_run_dir(state.path) == []
    digest = tree_digest(state.path)
    with pytest.raises(TrialAlreadyExistsError):
        state.lock_and_import_trials([imported("c"), imported("a")], worker_id="ext")
    assert tree_digest(state.path) == digest  # all or nothing
    assert set(state._trial_repo.get_valid_evaluated_trials()) == {"a", "b"}


def test_a_reset_imported_trial_is_queued_after_the_sampled_ones(state: NePSState) -> None:
    state.lock_and_import_trials([imported("x")], worker_id="ext")
    state.lock_and_sample_trial(random_search, worker_id="w0")
    state.lock_and_reset_trial_by_id("x")
    pending = state.lock_and_get_next_pending_trial(2)
    assert [t.id for t in pending] == ["1", "x"]


def test_reset_by_id_drops_that_trials_error_records_only(state: NePSState) -> None:
    first = run_cycle(state, error=ValueError("first"))
    run_cycle(state, error=ValueError("second"))
    state.lock_and_reset_trial_by_id(first.id)
    other = NePSState.load(state.path, settings=OS)
    assert [e.err for e in other.lock_and_get_errors().errs] == ["second"]
    trial = other.lock_and_get_trial_by_id(first.id)
    assert trial.metadata.state is Trial.State.PENDING
    assert trial.report is None
    assert not (state.path / "configs" / f"config_{first.id}" / "report.yaml").exists()
    assert check_run_dir(state.path) == []
    again = other.lock_and_claim_next_pending_trial("w1")
    assert again is not None
    assert again.id == first.id


def test_remove_by_id_removes_the_folder_and_its_errors(state: NePSState) -> None:
    kept = run_cycle(state, error=ValueError("kept"))
    gone = run_cycle(state, error=ValueError("gone"))
    state.lock_and_remove_trial_by_id(gone.id)
    assert not (state.path / "configs" / f"config_{gone.id}").exists()
    other = NePSState.load(state.path, settings=OS)
    assert set(other.lock_and_read_trials()) == {kept.id}
    assert [e.trial_id for e in other.lock_and_get_errors().errs] == [kept.id]
    assert sorted(
        p.name for p in (state.path / "configs").iterdir() if not p.name.startswith(".")
    ) == [f"config_{kept.id}"]
    assert check_run_dir(state.path) == []
    digest = tree_digest(state.path)
    with pytest.raises(TrialNotFoundError):
        state.lock_and_remove_trial_by_id(gone.id)
    with pytest.raises(TrialNotFoundError):
        state.lock_and_reset_trial_by_id(gone.id)
    assert tree_digest(state.path) == digest


def clean_and_die(root: Path, trial_id: str, point: str) -> None:
    """A worker process killed at ``point`` inside a reset by id."""
    from neps_state import set_fault_hook  # noqa: PLC0415 - in the child
    from pytest_neps._faults import die  # noqa: PLC0415

    set_fault_hook(lambda p: die() if p == point else None)
    NePSState.load(root, settings=OS).lock_and_reset_trial_by_id(trial_id)


@pytest.mark.parametrize("point", ["clean.prepared", "clean.committed"])
def test_a_cleaning_cut_by_a_power_loss_is_rolled_back_or_forward(
    state: NePSState, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_cycle(state, error=ValueError("first"))
    run_cycle(state, error=ValueError("second"))
    [outcome] = run_tasks([Task("killed", clean_and_die, (state.path, first.id, point))])
    assert outcome.signal == 9, outcome.describe()
    # A new boot: the derived files are checked against the journal (not the marker).
    monkeypatch.setenv("NEPS_STATE_BOOT_ID", f"after-{point}")
    after = NePSState.load(state.path, settings=OS)
    errors = [e.err for e in after.lock_and_get_errors().errs]
    committed = point == "clean.committed"
    assert errors == (["second"] if committed else ["first", "second"])
    expected = Trial.State.PENDING if committed else Trial.State.CRASHED
    assert after.lock_and_get_trial_by_id(first.id).metadata.state is expected
    assert check_run_dir(state.path) == []
    assert not (state.path / "configs" / ".shared_errors.cleaned").exists()


# -- NePS's runtime's own steps ----------------------------------------------------------


def test_a_sample_and_the_store_after_it_are_one_commit(state: NePSState) -> None:
    with pytest.raises(UsageError, match="needs the optimizer lock"):
        state._sample_trial(random_search, worker_id="w", trials={}, n=None)
    before = state.lock_and_get_optimizer_state()
    with state._optimizer_lock.lock(worker_id="w"):
        with state._trial_lock.lock(worker_id="w"):
            trials = state._trial_repo.latest()
        state._sample_trial(random_search, worker_id="w", trials=trials, n=None)
        # No store: the lock is released, and nothing happened.
    after = NePSState.load(state.path, settings=OS)
    assert after.lock_and_read_trials() == {}
    assert after.lock_and_get_optimizer_state().seed_snapshot == before.seed_snapshot
    with state._optimizer_lock.lock(worker_id="w"):
        trial = state._sample_trial(random_search, worker_id="w", trials={}, n=None)
        with state._trial_lock.lock(worker_id="w"):
            trial.set_evaluating(time_started=1.0, worker_id="w")
            state._trial_repo.store_new_trial(trial)
    after = NePSState.load(state.path, settings=OS)
    assert after.lock_and_read_trials()["0"].metadata.state is Trial.State.EVALUATING
    assert after.lock_and_get_optimizer_state().seed_snapshot != before.seed_snapshot


def test_the_runtimes_report_and_reads(state: NePSState) -> None:
    trial = state.lock_and_sample_trial(random_search, worker_id="w", claim=True)
    with state._trial_lock.lock(worker_id="w"):
        state._report_trial_evaluation(trial, completed(trial), worker_id="w")
        assert set(state._trial_repo.get_valid_evaluated_trials()) == {"0"}
    nan = state.lock_and_sample_trial(random_search, worker_id="w", claim=True)
    report = nan.set_complete(
        report_as="success", time_end=1.0, objective_to_minimize=math.nan, cost=1.0,
        learning_curve=None, err=None, tb=None, extra=None, evaluation_duration=1.0,
    )  # fmt: skip
    state._report_trial_evaluation(nan, report, worker_id="w")  # (takes the lock itself)
    assert set(state._trial_repo.get_valid_evaluated_trials()) == {"0"}
    assert set(state._trial_repo.latest()) == {"0", "1"}
    assert state._trial_repo.load_trial_from_disk("1").metadata.state is Trial.State.SUCCESS


# -- the search space --------------------------------------------------------------------


class Space:
    """A stand-in for NePS's ``PipelineSpace``: parameters through ``get_attrs``."""

    def __init__(self, **params: object) -> None:
        self.params = params

    def get_attrs(self) -> dict[str, object]:
        return dict(self.params)


class Renamed(Space):
    """The same space under another class name (NePS accepts it)."""


def test_the_space_is_saved_where_neps_saves_it_and_checked(run_dir: Path) -> None:
    NePSState.create_or_load(
        run_dir,
        optimizer_info=OptimizerInfo("rs"),
        optimizer_state=new_opt_state(),
        pipeline_space=Space(lr=(0.0, 1.0)),
        settings=OS,
    )
    assert (run_dir / "pipeline_space.pkl").is_file()
    again = NePSState.create_or_load(
        run_dir,
        optimizer_info=OptimizerInfo("rs"),
        optimizer_state=new_opt_state(),
        pipeline_space=Renamed(lr=(0.0, 1.0)),
        settings=OS,
    )
    assert again.lock_and_get_search_space().params == {"lr": (0.0, 1.0)}
    with pytest.raises(SearchSpaceMismatchError, match="other parameters"):
        NePSState.create_or_load(
            run_dir,
            optimizer_info=OptimizerInfo("rs"),
            optimizer_state=new_opt_state(),
            pipeline_space=Space(lr=(0.0, 2.0)),
            settings=OS,
        )
    assert NePSState.load(run_dir, settings=OS).lock_and_get_search_space().params == {
        "lr": (0.0, 1.0)
    }


def test_only_asking_for_the_space_unpickles_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_state(run_dir)
    canary = tmp_path / "canary"
    (run_dir / "pipeline_space.pkl").write_bytes(malicious(canary))
    state = NePSState.load(run_dir, settings=OS)
    run_cycle(state)
    assert main(["check", str(run_dir)]) == 0
    assert main(["show", str(run_dir)]) == 0
    capsys.readouterr()
    assert not canary.exists(), "code from the run directory ran"
    state.lock_and_get_search_space()  # the one call that runs it, when asked for
    assert canary.exists()


# -- mixed fleets ----------------------------------------------------------------------


def test_nepss_own_reader_is_refused_by_the_state_file(state: NePSState) -> None:
    run_cycle(state)
    path = state.path / "optimizer_state.pkl"
    digest = tree_digest(state.path)
    with (
        pytest.raises(KeptByNePSStateError, match=r"neps_state.patch_neps\(\)"),
        path.open("rb") as f,
    ):
        pickle.load(f)  # what NePS's own state does with it
    assert tree_digest(state.path) == digest
    assert isinstance(pickles.loads(path.read_bytes(), path), OptimizationState)


def test_a_native_neps_cache_written_after_the_take_over_is_refused(state: NePSState) -> None:
    run_cycle(state)
    (state.path / "configs" / ".trial_cache.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(CorruptedFileError, match="written by NePS's own state"):
        state.lock_and_read_trials()


# -- the switch, without NePS --------------------------------------------------------------


def test_patching_without_neps_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise neps_switch.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(neps_switch.importlib.metadata, "version", missing)
    with pytest.raises(UsageError, match=r"pip install 'neps-state\[neps\]'"):
        patch_neps()


def test_patching_another_neps_version_names_the_supported_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(neps_switch.importlib.metadata, "version", lambda _: "0.16.2")
    with pytest.raises(
        UsageError, match=r"supports NePS 0\.17\.x; neural-pipeline-search 0\.16\.2"
    ):
        patch_neps()
    assert not neps_switch.is_patched()


def test_every_json_line_of_a_cleaned_dump_ends_a_line(state: NePSState) -> None:
    first = run_cycle(state, error=ValueError("a"))
    run_cycle(state, error=ValueError("b"))
    dump = state.path / "shared_errors.jsonl"
    dump.write_bytes(dump.read_bytes().rstrip(b"\n"))  # NePS writes its last line so
    state.lock_and_reset_trial_by_id(first.id)
    lines = dump.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["err"] for line in lines[:-1]] == ["b"]
    assert os.path.getsize(dump) == len(lines[0]) + 1
