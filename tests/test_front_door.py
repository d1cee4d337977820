"""What a new user meets first: the plugin's cost, misuse errors, bad results, settings."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from neps_test_helpers import INFO, make_state, new_opt_state, run_cycle

import neps_state
from neps_state import (
    IllegalTransitionError,
    InvalidReportError,
    NePSError,
    NePSState,
    NotARunDirectoryError,
    UsageError,
)
from pytest_neps._evaluate import BadResultError, evaluate
from pytest_neps._impl import Impl
from pytest_neps._optimizers import random_search
from pytest_neps._profiles import BUDGETS, suite_settings
from pytest_neps._swarm import SwarmConfig, SwarmConfigError, run_swarm

PLUGIN_MODULES = {"pytest_neps", "pytest_neps.plugin", "pytest_neps._reference"}


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """Every pytest run of a project that installs us loads the plugin: it stays tiny."""
    code = (
        "import sys, pytest\n"
        "before = set(sys.modules)\n"
        "import pytest_neps.plugin\n"
        "print(*sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == PLUGIN_MODULES


def test_package_names_are_imported_on_first_use() -> None:
    import pytest_neps  # noqa: PLC0415

    for name in pytest_neps.__all__:
        assert getattr(pytest_neps, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = pytest_neps.nothing_here


def test_suite_settings_need_no_profile() -> None:
    """Under Hypothesis's default profile: no deadline, the CI budget."""
    previous = settings.get_current_profile_name()
    try:
        settings.load_profile("default")
        default = suite_settings()
        settings.register_profile("neps-test-tiny", max_examples=3)
        settings.load_profile("neps-test-tiny")
        tiny = suite_settings()
    finally:
        settings.load_profile(previous)
    assert default.deadline is None
    assert default.max_examples == BUDGETS["neps-ci"]
    assert tiny.deadline is None
    assert tiny.max_examples == 3


def test_load_opens_an_existing_run(tmp_path: Path) -> None:
    with pytest.raises(NotARunDirectoryError):
        NePSState.load(tmp_path / "none")
    run_cycle(make_state(tmp_path / "run"))
    assert len(NePSState.load(tmp_path / "run").lock_and_read_trials()) == 1


def test_misuse_is_a_neps_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs optimizer_info and optimizer_state"):
        NePSState.create_or_load(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    state = make_state(tmp_path / "run")
    state.lock_and_sample_trial(random_search, worker_id="w0")
    trial = state.lock_and_claim_next_pending_trial("w0")
    assert trial is not None
    with pytest.raises(UsageError, match="Unknown write hint"):
        state.put_updated_trial(trial, hints="nonsense")  # type: ignore[arg-type]
    assert issubclass(UsageError, NePSError)


def test_every_error_class_lives_in_one_module() -> None:
    errors = [
        obj
        for obj in vars(neps_state).values()
        if isinstance(obj, type) and issubclass(obj, NePSError)
    ]
    assert len(errors) >= 15
    assert {e.__module__ for e in errors} == {"neps_state._errors"}


def _claimed(tmp_path: Path) -> tuple[NePSState, neps_state.Trial]:
    state = make_state(tmp_path / "run")
    state.lock_and_sample_trial(random_search, worker_id="w1")
    trial = state.lock_and_claim_next_pending_trial("w1")
    assert trial is not None
    return state, trial


def _complete(trial: neps_state.Trial, **changes: object) -> neps_state._trial.Report:
    fields: dict[str, object] = {
        "report_as": "success",
        "time_end": time.time(),
        "objective_to_minimize": 0.5,
        "cost": 1.0,
        "learning_curve": None,
        "err": None,
        "tb": None,
        "extra": {},
        "evaluation_duration": 1.0,
        **changes,
    }
    return trial.set_complete(**fields)  # type: ignore[arg-type]


def test_a_report_by_another_worker_is_refused_like_a_takeover(tmp_path: Path) -> None:
    state, trial = _claimed(tmp_path)
    taken = trial.clone()
    taken.metadata.evaluating_worker_id = "w2"
    with pytest.raises(IllegalTransitionError, match="already evaluated by worker 'w1', not 'w2'"):
        state.put_updated_trial(taken)
    finished = taken.clone()
    finished.report = _complete(finished)
    with pytest.raises(IllegalTransitionError, match="already evaluated by worker 'w1', not 'w2'"):
        state.put_updated_trial(finished)
    report = _complete(trial)
    with pytest.raises(IllegalTransitionError, match="already evaluated by worker 'w1', not 'w2'"):
        state.lock_and_report_trial_evaluation(trial, report, worker_id="w2")
    assert state.lock_and_get_trial_by_id(trial.id).metadata.state.value == "evaluating"
    state.lock_and_report_trial_evaluation(trial, report, worker_id="w1")
    assert state.lock_and_get_trial_by_id(trial.id).metadata.state.value == "success"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time_end", ...),
        ("time_end", None),
        ("time_end", "now"),
        ("time_end", True),
        ("objective_to_minimize", "0.3"),
        ("objective_to_minimize", [0.1, "x"]),
        ("cost", object()),
        ("learning_curve", [[0.1], ["x"]]),
        ("evaluation_duration", "1s"),
        ("report_as", "great"),
        ("extra", [1, 2]),
        ("err", 3),
        ("tb", 3),
    ],
)
def test_set_complete_refuses_what_a_trial_cannot_store(
    tmp_path: Path, field: str, value: object
) -> None:
    _, trial = _claimed(tmp_path)
    before = trial.clone()
    with pytest.raises(InvalidReportError, match=f"{field}=") as e:
        _complete(trial, **{field: value})
    assert e.value.trial_id == trial.id
    assert trial.metadata == before.metadata


def test_set_complete_takes_numbers_of_any_real_type(tmp_path: Path) -> None:
    state, trial = _claimed(tmp_path)
    report = _complete(
        trial, objective_to_minimize=[1, 2.5], learning_curve=[[1, 2], [3]], time_end=12
    )
    state.lock_and_report_trial_evaluation(trial, report, worker_id="w1")


def returns_text(config: object) -> str:
    return "0.3 maybe"


def test_a_result_that_is_not_a_number_fails_the_trial() -> None:
    outcome = evaluate(returns_text, {"x": 1})
    assert outcome.report_as == "failed"
    assert isinstance(outcome.err, BadResultError)
    assert "test_front_door.returns_text returned '0.3 maybe'" in str(outcome.err)
    bad_cost = {"objective_to_minimize": 1.0, "cost": "x"}
    assert evaluate(lambda _: bad_cost, {}).report_as == "failed"
    assert evaluate(lambda _: [0.1, 0.2], {}).report_as == "success"


def test_a_swarm_whose_evaluation_returns_text_fails_its_trials(tmp_path: Path) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run", workers=2, trials=6, evaluation="builtins:str", timeout=60
    )
    result.assert_consistent()
    trials = NePSState.load(tmp_path / "run").lock_and_read_trials()
    assert len(trials) == 6
    assert {t.metadata.state.value for t in trials.values()} == {"failed"}
    assert all("builtins.str returned" in str(t.report.err) for t in trials.values() if t.report)


@pytest.mark.parametrize("name", ["optimizer", "evaluation", "impl"])
def test_unimportable_code_is_one_error_before_any_worker(tmp_path: Path, name: str) -> None:
    overrides: dict[str, Any] = {name: "no_such_module_xyz:thing"}
    with pytest.raises(SwarmConfigError) as e:
        run_swarm(replace(SwarmConfig(), **overrides), tmp_path / "run")
    message = str(e.value)
    assert f"SwarmConfig.{name}='no_such_module_xyz:thing' cannot be imported" in message
    assert "ModuleNotFoundError" in message
    assert "pythonpath" in message
    assert not (tmp_path / "run").exists()


def test_a_misspelt_attribute_is_reported_too(tmp_path: Path) -> None:
    with pytest.raises(SwarmConfigError, match="AttributeError"):
        run_swarm(run_dir=tmp_path / "run", optimizer="pytest_neps._optimizers:random_serach")


def test_create_or_load_still_takes_a_missing_state_as_misuse(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        NePSState.create_or_load(tmp_path / "r", optimizer_info=INFO)
    with pytest.raises(UsageError):
        NePSState.create_or_load(tmp_path / "r", optimizer_state=new_opt_state())


def test_pytest_fixtures_documents_every_fixture(pytester: pytest.Pytester) -> None:
    """``pytest --fixtures`` prints a docstring's first paragraph: it says how to use each."""
    pytester.makepyfile("def test_nothing(): pass\n")
    out = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider").stdout.str()
    names = re.findall(r"^(neps_\w+)(?: \[\w+ scope\])? -- ", out, re.MULTILINE)
    assert sorted(names) == sorted(NEPS_FIXTURES)
    for name in NEPS_FIXTURES:
        shown = out.split(f"\n{name}", 1)[1].split("\n\n", 1)[0].split("\n", 1)[1]
        assert len(shown.split()) >= 20, f"{name}: {shown!r}"


NEPS_FIXTURES = (
    "neps_impl",
    "neps_lazyfs",
    "neps_patched",
    "neps_pool",
    "neps_power_cut",
    "neps_run_dir",
    "neps_state",
    "neps_state_factory",
    "neps_swarm",
)


def test_kills_at_file_changes_work_without_fault_hooks(tmp_path: Path) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run", workers=3, trials=60, kill_rate=0.1, kill_fs=True, timeout=120
    )
    result.assert_consistent()
    assert result.kills > 0
    points = {k.point for w in result.workers for k in w.kills}
    assert points
    assert all(p.startswith("fs:") for p in points), points


def test_kills_at_fault_points_are_refused_where_they_cannot_happen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Impl, "calls_fault_hook", lambda _: False)
    with pytest.raises(SwarmConfigError, match="never calls neps_state's fault hook"):
        run_swarm(run_dir=tmp_path / "run", kill_rate=0.1, kill_points=("store.committed",))
    assert not (tmp_path / "run").exists()
