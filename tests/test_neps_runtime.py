"""NePS 0.17's own code on the reference: ``neps.run`` with real worker processes, and the rest.

The user's script is ``tests/data/neps_tutorial.py``: NePS's tutorial plus
``neps_state.patch_neps()``. These need upstream NePS (the ``neps`` extra) and skip
without it; CI runs them (``.ci/run``, the upstream lane).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from neps_test_helpers import tree_digest

from neps_state import (
    NePSState,
    Settings,
    TrialAlreadyExistsError,
    is_patched,
    neps_patched,
    patch_neps,
    unpatch_neps,
)
from neps_state._neps import NePSBoundState, to_neps_trial
from pytest_neps._checker import check_run_dir
from pytest_neps._ops import Imported
from pytest_neps._swarm import run_swarm
from pytest_neps.defects import unexplained

neps = pytest.importorskip(
    "neps", reason="upstream NePS is not installed: pip install 'neps-state[neps]' (see README)"
)

DATA = Path(__file__).parent / "data"
SCRIPT = DATA / "neps_tutorial.py"
NEPS_RUN = DATA / "neps-0.17-run"
OS = Settings(durability="os")


@pytest.fixture
def neps_patched_state() -> Iterator[type[NePSState]]:
    """The plugin's ``neps_patched`` fixture, under a name the imported function leaves free."""
    with neps_patched() as cls:
        yield cls


def tutorial() -> ModuleType:
    """The user's script as a module (its space pickles by this module's name)."""
    module = sys.modules.get("neps_tutorial")
    if module is None:
        spec = importlib.util.spec_from_file_location("neps_tutorial", SCRIPT)
        assert spec is not None
        assert spec.loader is not None
        module = sys.modules["neps_tutorial"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def workers(
    root: Path, n: int, *args: str, timeout: float = 600
) -> list[subprocess.CompletedProcess[str]]:
    """Start ``n`` processes of the user's script on ``root`` together; wait for all."""
    command = [sys.executable, str(SCRIPT), str(root), *args]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(command, p.returncode, out, err))
    return done


def evaluations(root: Path) -> list[dict[str, object]]:
    """What the script's evaluate function ran, in order."""
    log = Path(f"{root}.evaluations.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def assert_ran(done: list[subprocess.CompletedProcess[str]]) -> None:
    failed = [f"exit {d.returncode}:\n{d.stderr[-3000:]}" for d in done if d.returncode]
    assert not failed, "\n".join(failed)


def test_a_users_script_with_four_workers_runs_on_the_reference(tmp_path: Path) -> None:
    root = tmp_path / "run"
    # Evaluations that take a while, so that no worker can finish the budget alone
    # before the others have started (each imports torch first).
    assert_ran(workers(root, 4, "--evaluations", "24", "--seconds", "0.5"))
    assert (root / "configs" / ".trial_cache.journal").is_file()  # the reference's record
    ran = evaluations(root)
    assert sorted(int(e["id"]) for e in ran) == list(range(1, 25))  # each once, none lost
    trials = NePSState.load(root, settings=OS).lock_and_read_trials()
    assert len(trials) == 24
    assert {t.metadata.state.value for t in trials.values()} <= {"success", "crashed"}
    assert len({t.metadata.evaluating_worker_id for t in trials.values()}) > 1
    assert check_run_dir(root) == []
    with neps_patched():
        _, summary = neps.status(root)
    assert summary["num_success"] + summary.get("num_crashed", 0) == 24


@pytest.mark.parametrize(
    "optimizer",
    ["random_search", "bayesian_optimization", "neps_random_search", "neps_regularized_evolution"],
)
def test_one_worker_proposes_the_same_configs_on_either_state(
    tmp_path: Path, optimizer: str
) -> None:
    native, ours = tmp_path / "native", tmp_path / "ours"
    options = ("--evaluations", "12", "--seed", "3", "--optimizer", optimizer)
    assert_ran(workers(native, 1, *options, "--native"))
    assert_ran(workers(ours, 1, *options))
    assert len(evaluations(ours)) == 12
    assert evaluations(ours) == evaluations(native)
    assert (ours / "configs" / ".trial_cache.journal").is_file()
    assert not (native / "configs" / ".trial_cache.journal").exists()


def test_the_configs_compared_above_depend_on_the_seed(tmp_path: Path) -> None:
    # The control of the comparison: another seed, other configs.
    assert_ran(workers(tmp_path / "a", 1, "--evaluations", "4", "--seed", "3"))
    assert_ran(workers(tmp_path / "b", 1, "--evaluations", "4", "--seed", "4"))
    assert evaluations(tmp_path / "a") != evaluations(tmp_path / "b")


def test_an_unpatched_worker_is_refused_a_run_the_reference_keeps(tmp_path: Path) -> None:
    root = tmp_path / "run"
    assert_ran(workers(root, 1, "--evaluations", "4"))
    before = tree_digest(root)
    [native] = workers(root, 1, "--evaluations", "8", "--native")
    assert native.returncode != 0
    assert "KeptByNePSStateError" in native.stderr
    assert "neps_state.patch_neps()" in native.stderr
    assert tree_digest(root) == before  # nothing read or written
    assert len(evaluations(root)) == 4


def test_a_patched_worker_takes_over_a_run_neps_wrote(tmp_path: Path) -> None:
    root = tmp_path / "run"
    assert_ran(workers(root, 1, "--evaluations", "5", "--native"))
    assert_ran(workers(root, 2, "--evaluations", "10"))
    assert sorted(int(e["id"]) for e in evaluations(root)) == list(range(1, 11))
    assert check_run_dir(root) == []
    # From now on NePS's own state is refused there, before it writes anything.
    before = tree_digest(root)
    [native] = workers(root, 1, "--evaluations", "12", "--native")
    assert "KeptByNePSStateError" in native.stderr
    assert tree_digest(root) == before


def test_the_recorded_priorband_run_continues_on_the_reference(tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(NEPS_RUN, root)
    with neps_patched() as cls:
        state = cls.create_or_load(root, load_only=True)
        before = len(state.lock_and_read_trials())
        trial = state.lock_and_get_trial_by_id("7_rung_1")
        assert isinstance(trial, neps.state.Trial)
        assert trial.metadata.state == neps.state.Trial.State.SUCCESS
    assert before == 14
    assert check_run_dir(root) == []


def test_nepss_classes_and_errors_at_the_boundary(tmp_path: Path) -> None:
    root = tmp_path / "run"
    assert_ran(workers(root, 1, "--evaluations", "3"))
    with neps_patched() as cls:
        state = neps.state.NePSState.create_or_load(root, load_only=True)
        assert type(state) is cls
        trials = state.lock_and_read_trials()
        assert all(isinstance(t, neps.state.Trial) for t in trials.values())
        assert all(isinstance(t.metadata.state, neps.state.Trial.State) for t in trials.values())
        assert isinstance(state.lock_and_get_optimizer_state(), neps.state.OptimizationState)
        assert isinstance(neps.load_optimizer_info(root), dict)
        with pytest.raises(neps.exceptions.TrialAlreadyExistsError) as e:
            state._trial_repo.store_new_trial(trials["1"])
        assert isinstance(e.value, TrialAlreadyExistsError)  # ours too
        with pytest.raises(neps.exceptions.NePSError):
            state.lock_and_get_trial_by_id("missing")
    assert not is_patched()


def test_patching_is_idempotent_and_undone() -> None:
    original = neps.runtime.NePSState
    cls = patch_neps()
    assert patch_neps() is cls
    names = ("runtime", "api", "state", "status.status", "status.summary", "clean.clean")
    for name in names:
        assert sys.modules[f"neps.{name}"].NePSState is cls, name
    unpatch_neps()
    assert neps.runtime.NePSState is original
    assert neps.state.neps_state.NePSState is original
    with neps_patched():
        assert neps.api.NePSState is cls
    assert neps.api.NePSState is original


def test_the_plugins_fixture_patches_for_one_test(request: pytest.FixtureRequest) -> None:
    cls = request.getfixturevalue("neps_patched")
    assert neps.runtime.NePSState is cls
    assert issubclass(cls, NePSState)


def test_clean_resets_failed_trials_and_their_errors(
    tmp_path: Path, neps_patched_state: type
) -> None:
    root = tmp_path / "run"
    assert_ran(workers(root, 1, "--evaluations", "20", "--seed", "1"))
    state = neps_patched_state.create_or_load(root, load_only=True)
    crashed = {
        tid for tid, t in state.lock_and_read_trials().items() if t.metadata.state == "crashed"
    }
    assert crashed, "seed 1 gives no crashed trial: pick another seed"
    assert {e.trial_id for e in state.lock_and_get_errors().errs} == crashed
    stats = neps.clean.clean_failed_trials(root)
    assert stats["total_removed"] == len(crashed)
    assert stats["errors_cleaned"] == len(crashed)
    after = NePSState.load(root, settings=OS)
    assert {
        tid for tid, t in after.lock_and_read_trials().items() if t.metadata.state == "pending"
    } == crashed
    assert not after.lock_and_get_errors().errs
    assert check_run_dir(root) == []
    first = min(crashed)
    neps.clean.clean_trials_by_id(root, [first], delete=True)
    assert first not in NePSState.load(root, settings=OS).lock_and_read_trials()
    assert check_run_dir(root) == []


def test_import_trials_and_the_loaders(tmp_path: Path, neps_patched_state: type) -> None:
    root = tmp_path / "run"
    neps.import_trials(
        [({"lr": 0.01, "units": 32}, {"objective_to_minimize": 0.1, "cost": 1.0})],
        root_directory=root,
        pipeline_space=tutorial().Space(),
        optimizer="random_search",
    )
    trials = NePSState.load(root, settings=OS).lock_and_read_trials()
    [imported] = trials.values()
    assert imported.metadata.state.value == "external"
    assert imported.report is not None
    assert imported.report.objective_to_minimize == 0.1
    assert neps.load_optimizer_info(root)["name"] == "random_search"
    assert neps.load_pipeline_space(root) is not None
    assert check_run_dir(root) == []


def test_save_pipeline_results_reports_an_evaluating_trial(
    tmp_path: Path, neps_patched_state: type
) -> None:
    root = tmp_path / "run"
    assert_ran(workers(root, 1, "--evaluations", "2"))
    state = neps_patched_state.create_or_load(root, load_only=True)
    state.lock_and_reset_trial_by_id("1")
    claimed = state.lock_and_claim_next_pending_trial("async-worker")
    assert claimed.id == "1"
    neps.save_pipeline_results({"objective_to_minimize": 0.5, "cost": 1.0}, "1", root)
    after = NePSState.load(root, settings=OS).lock_and_get_trial_by_id("1")
    assert after.metadata.state.value == "success"
    assert after.report is not None
    assert after.report.objective_to_minimize == 0.5
    assert check_run_dir(root) == []


@pytest.mark.parametrize(
    ("impl", "kills"),
    [
        # kill_rate 0.05 left a 24-trial swarm without any kill in a lane run (stop 30)
        # (the kill plans are per operation, the operations per worker vary): 0.1.
        ("neps_state:NePSState", {"kill_rate": 0.1}),
        (
            "neps_state:NePSState",
            {"kill_rate": 0.1, "kill_points": ("update.committed", "store.staged")},
        ),
        ("pytest_neps.upstream:UpstreamNePSState", {"kill_rate": 0.1}),
        ("pytest_neps.upstream:UpstreamNePSState", {"kill_rate": 0.1, "kill_fs": True}),
    ],
    ids=["reference", "reference-at-fault-points", "upstream", "upstream-at-file-changes"],
)
def test_a_swarm_runs_nepss_worker_loop_with_kills(
    tmp_path: Path, impl: str, kills: dict[str, object]
) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run",
        workers=3,
        trials=24,
        runtime="neps",
        impl=impl,
        seed=2,
        evaluation="pytest_neps._evaluate:flaky",
        timeout=600,
        **kills,
    )
    assert any(op.op == "neps_next" for op in result.ops)
    assert result.kills >= 1
    if impl.startswith("neps_state"):
        result.assert_consistent()
        # A killed worker's trial is taken back when NePS's loop picks its next one.
        assert result.stranded() == []
        return
    # NePS's own state may show its known defects (its creation races its readers, D2,
    # and rewrites its optimizer state in place, D3): true findings, named. Anything
    # else would be a false alarm of the harness.
    false = unexplained(result.problems())
    assert not false, "\n".join(false)


def test_a_swarm_of_nepss_worker_loop_catches_a_report_that_loses_errors(tmp_path: Path) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run",
        workers=2,
        trials=20,
        runtime="neps",
        impl="pytest_neps.controls:RuntimeReportsLoseErrors",
        evaluation="pytest_neps._evaluate:flaky",
        timeout=600,
    )
    lost = [v for v in result.violations if v.invariant == "one error record per error"]
    assert lost, "the lost error records were not caught:\n" + "\n".join(result.problems())


def test_a_report_of_a_trial_that_is_not_evaluating_is_refused(
    tmp_path: Path, neps_patched_state: type
) -> None:
    # Refused on purpose (NePS's own state accepts it): NePS's test of valid evaluated
    # trials reports pending trials directly (see docs/plugin.md).
    root = tmp_path / "run"
    assert_ran(workers(root, 1, "--evaluations", "1"))
    state = neps_patched_state.create_or_load(root, load_only=True)
    state.lock_and_reset_trial_by_id("1")
    pending = state.lock_and_get_trial_by_id("1")
    report = pending.set_complete(
        report_as="success", time_end=1.0, objective_to_minimize=0.1, cost=1.0,
        learning_curve=None, err=None, tb=None, extra=None, evaluation_duration=1.0,
    )  # fmt: skip
    before = tree_digest(root)
    with pytest.raises(neps.exceptions.NePSError, match="not being evaluated"):
        state.lock_and_report_trial_evaluation(pending, report, worker_id="w")
    assert tree_digest(root) == before


def _vandalize(trials: dict[str, Any]) -> None:
    """Mutate every part of every trial that a caller can reach."""
    for trial in trials.values():
        trial.config["x"] = "vandalized"
        trial.metadata.state = neps.state.Trial.State.CORRUPTED
        if trial.report is not None:
            trial.report.extra["vandal"] = 1
            trial.report.cost = -1.0
            if isinstance(trial.report.objective_to_minimize, list):
                trial.report.objective_to_minimize.append(99.0)


def _fingerprint(trials: dict[str, Any]) -> dict[str, str]:
    return {tid: repr((t.config, t.metadata, t.report)) for tid, t in trials.items()}


def leaked_mutations(state: Any) -> list[str]:
    """Where the trials a caller mutated came back mutated (nothing: every call copies)."""
    repo = state._trial_repo
    pristine = _fingerprint(repo.latest())
    problems = []
    for name in ("latest", "get_valid_evaluated_trials"):
        read = getattr(repo, name)
        first, second = read(), read()
        _vandalize(first)
        for label, got in (("a later call", read()), ("an earlier call", second)):
            seen = _fingerprint(got)
            if seen != {tid: pristine[tid] for tid in seen}:
                problems.append(f"{name}: {label} handed out a caller's mutations")
    return problems


def _a_run_with_a_multi_objective_trial(root: Path, cls: type) -> Any:
    assert_ran(workers(root, 1, "--evaluations", "3"))
    state = cls.create_or_load(root, load_only=True)
    result = {"objective_to_minimize": [0.1, 0.2], "cost": 1.0}
    state.lock_and_import_trials([Imported("mo", {"x": 0.5}, result)], worker_id="ext")
    return state


def test_handed_out_trials_are_copies_a_caller_may_mutate(
    tmp_path: Path, neps_patched_state: type
) -> None:
    state = _a_run_with_a_multi_objective_trial(tmp_path / "run", neps_patched_state)
    valid = state._trial_repo.get_valid_evaluated_trials()
    assert valid["mo"].report.objective_to_minimize == [0.1, 0.2]
    assert leaked_mutations(state) == []
    before = state._trial_repo.latest()["1"]
    state.lock_and_reset_trial_by_id("1")  # a new version of a trial handed out before
    after = state._trial_repo.latest()["1"]
    # (Trial 1 succeeded or crashed: the script fails one config in seven.)
    assert str(before.metadata.state) in {"success", "crashed"}
    assert str(after.metadata.state) == "pending"
    assert after.report is None
    assert "1" not in state._trial_repo.get_valid_evaluated_trials()


def test_handing_out_shared_trials_is_caught(tmp_path: Path) -> None:
    class SharedTrials(NePSBoundState):  # type: ignore[misc, valid-type]
        """Negative control: converts each trial once and hands the same object out again."""

        def _out_all(self, trials: Any, *, complete: bool) -> dict[str, Any]:
            del complete
            made = self.__dict__.setdefault("made", {})
            return {tid: made.setdefault((tid, id(t)), to_neps_trial(t)) for tid, t in trials}

    state = _a_run_with_a_multi_objective_trial(tmp_path / "run", SharedTrials)
    assert len(leaked_mutations(state)) == 4
