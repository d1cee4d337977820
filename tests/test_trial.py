"""The Trial data model: construction, state changes, equality, id validation."""

from __future__ import annotations

import math
import pickle

import pytest

from neps_state import (
    IllegalTransitionError,
    InvalidReportError,
    InvalidTrialIdError,
    NePSError,
    Trial,
    validate_trial_id,
)
from neps_state._trial import check_transition, to_plain


def new_trial(trial_id: str = "1") -> Trial:
    return Trial.new(
        trial_id=trial_id,
        config={"a": 1, "b": (1, 2)},
        location=f"/run/configs/config_{trial_id}",
        previous_trial=None,
        previous_trial_location=None,
        time_sampled=10.0,
        worker_id=3,
    )


def complete(trial: Trial, *, report_as: str = "success", err: Exception | None = None):
    return trial.set_complete(
        report_as=report_as,  # type: ignore[arg-type]
        time_end=20.0,
        objective_to_minimize=float("nan"),
        cost=2,
        learning_curve=[1, 2.5],
        err=err,
        tb=None,
        extra={"k": (1, 2)},
        evaluation_duration=1.5,
    )


def test_new_trial_is_pending_with_plain_config() -> None:
    t = new_trial()
    assert t.id == "1"
    assert t.metadata.state is Trial.State.PENDING
    assert t.metadata.sampling_worker_id == "3"
    assert t.report is None
    assert t.source == "run"
    assert t.config == {"a": 1, "b": [1, 2]}  # tuples stored as YAML stores them


def test_set_evaluating_then_complete() -> None:
    t = new_trial()
    t.set_evaluating(time_started=11.0, worker_id="w1")
    assert t.metadata.state is Trial.State.EVALUATING
    assert t.metadata.evaluating_worker_id == "w1"
    report = complete(t)
    assert t.metadata.state is Trial.State.SUCCESS
    assert t.metadata.time_end == 20.0
    assert report.cost == 2.0
    assert isinstance(report.cost, float)
    assert report.learning_curve == [1.0, 2.5]
    assert report.extra == {"k": [1, 2]}
    assert t.report is None  # set_complete returns the report; reporting attaches it


@pytest.mark.parametrize("report_as", ["success", "failed", "crashed"])
def test_set_complete_sets_the_reported_state(report_as: str) -> None:
    t = new_trial()
    t.set_evaluating(time_started=11.0, worker_id="w1")
    complete(t, report_as=report_as)
    assert t.metadata.state.value == report_as


def test_set_complete_rejects_unknown_outcome() -> None:
    with pytest.raises(InvalidReportError, match="report_as='great'"):
        complete(new_trial(), report_as="great")


def test_report_equality_treats_nan_as_equal_and_errors_by_message() -> None:
    a = complete(new_trial(), err=ValueError("boom"))
    b = complete(new_trial(), err=RuntimeError("boom"))
    assert a == b
    c = complete(new_trial(), err=ValueError("other"))
    assert a != c
    b.cost = 3.0
    assert a != b


def test_report_pickles_error_as_text() -> None:
    class Unpicklable(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}/{b}")

    report = complete(new_trial(), err=Unpicklable(1, 2))
    back = pickle.loads(pickle.dumps(report))
    assert back == report
    assert str(back.err) == "1/2"


def test_reset_clears_evaluation_and_report() -> None:
    t = new_trial()
    t.set_evaluating(time_started=11.0, worker_id="w1")
    t.report = complete(t)
    t.reset()
    assert t.metadata.state is Trial.State.PENDING
    assert t.metadata.evaluating_worker_id is None
    assert t.metadata.time_end is None
    assert t.report is None
    assert t.metadata.time_sampled == 10.0


def test_clone_shares_nothing_mutable() -> None:
    t = new_trial()
    t.set_evaluating(time_started=11.0, worker_id="w1")
    t.report = complete(t)
    c = t.clone()
    assert c == t
    c.config["a"] = 99
    c.metadata.state = Trial.State.CORRUPTED
    assert c.report is not None
    c.report.extra["k"] = 0
    assert t.config["a"] == 1
    assert t.metadata.state is Trial.State.SUCCESS
    assert t.report is not None
    assert t.report.extra == {"k": [1, 2]}


@pytest.mark.parametrize(
    ("trial_id", "problem"),
    [
        ("", "empty"),
        ("../../x", "separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        (" a", "whitespace"),
        ("x" * 201, "longer"),
        ("é" * 101, "longer"),
        (5, "str"),
    ],
)
def test_bad_trial_ids_are_rejected(trial_id: object, problem: str) -> None:
    with pytest.raises(InvalidTrialIdError, match=problem) as info:
        validate_trial_id(trial_id)
    assert isinstance(info.value, NePSError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("trial_id", ["0", "12_rung_3", "a.b", "x" * 200, "trial-α"])
def test_good_trial_ids_are_accepted(trial_id: str) -> None:
    assert validate_trial_id(trial_id) == trial_id


def test_trial_new_validates_its_id() -> None:
    with pytest.raises(InvalidTrialIdError):
        new_trial("../escape")


@pytest.mark.parametrize(
    ("old", "new", "legal"),
    [
        ("pending", "evaluating", True),
        ("pending", "success", False),
        ("evaluating", "success", True),
        ("evaluating", "failed", True),
        ("evaluating", "crashed", True),
        ("success", "evaluating", False),
        ("success", "failed", False),
        ("crashed", "pending", True),
        ("success", "corrupted", True),
        ("evaluating", "pending", True),
    ],
)
def test_transitions(old: str, new: str, legal: bool) -> None:
    a, b = new_trial(), new_trial()
    a.metadata.state = Trial.State(old)
    b.metadata.state = Trial.State(new)
    for t in (a, b):
        if t.metadata.state.is_finished:
            t.report = complete(new_trial())
            t.metadata.state = Trial.State(old if t is a else new)
    if legal:
        check_transition(a, b)
    else:
        with pytest.raises(IllegalTransitionError):
            check_transition(a, b)


def test_two_workers_cannot_both_evaluate() -> None:
    a, b = new_trial(), new_trial()
    a.set_evaluating(time_started=1.0, worker_id="w1")
    b.set_evaluating(time_started=2.0, worker_id="w2")
    with pytest.raises(IllegalTransitionError, match="w1"):
        check_transition(a, b)


def test_to_plain_converts_numpy_and_tuples() -> None:
    np = pytest.importorskip("numpy")
    out = to_plain({"a": np.float64(1.5), "b": (np.int64(2), [np.bool_(True)])})
    assert out == {"a": 1.5, "b": [2, [True]]}
    assert type(out["a"]) is float
    assert type(out["b"][0]) is int
    assert math.isclose(out["a"], 1.5)
