"""The registry of operations: one entry drives races, the model and the machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_neps._history import HistoryWriter, read_history
from pytest_neps._impl import Impl
from pytest_neps._linearize import Event, check, format_history
from pytest_neps._ops import OPS, Ctx, NePSModel, NePSModelState, Operation
from pytest_neps.machines import model_machine
from pytest_neps.races import _event, _run_ops

MODEL = NePSModel()


def race(tmp_path: Path, plan: list[tuple[Any, ...]]) -> list[Event]:
    """Run ``plan`` through the race runner's dispatch on the reference; its history."""
    impl = Impl()
    state = impl.create(tmp_path / "run")
    history = tmp_path / "w0.jsonl"
    _run_ops(impl, state, "w0", plan, HistoryWriter(history, "w0"))
    return [_event(op) for op in read_history(history, "w0")[0]]


def test_every_operation_is_dispatched_and_modelled(tmp_path: Path) -> None:
    plan = [
        ("sample", 2),
        ("pending", 3),
        ("claim",),
        ("get", "0"),
        ("reset", "0"),  # the worker no longer holds trial 0 ...
        ("report", "failed"),  # ... so this report is skipped
        ("claim",),
        ("report", "failed"),
        ("corrupt", "1"),
        ("sample_claim",),
        ("consolidate",),
        ("worker_id",),
        ("budget", 5),
        ("get_budget",),
        ("import", "a"),
        ("neps_next",),  # nothing pending: samples trial 4, evaluating
        ("neps_report", "success"),
        ("reset_by_id", "4"),
        ("neps_next",),  # takes trial 4 again
        ("remove", "1"),
        ("sample", 1),  # trial 4 exists: refused
        ("read",),
    ]
    assert {p[0] for p in plan} == set(OPS)
    events = race(tmp_path, plan)
    ops = ["sample", "pending", "claim", "get", "reset", "claim", "report", "corrupt"]
    ops += ["sample_claim", "consolidate", "worker_id", "budget", "get_budget", "import"]
    ops += ["neps_next", "neps_report", "reset_by_id", "neps_next", "remove", "sample"]
    assert [e.op for e in events] == [*ops, "read"]
    assert check(events, MODEL).ok, format_history(events)
    assert events[-2].result == "TrialAlreadyExistsError"
    assert events[-1].result == (
        ("0", "failed"),
        ("2", "evaluating"),
        ("4", "evaluating"),
        ("imported-a", "external"),
    )


def test_races_draw_the_operations_with_a_plan() -> None:
    raced = [name for name, op in OPS.items() if op.plan]
    assert raced == [
        *("sample", "sample_claim", "claim", "report", "read", "pending"),
        *("worker_id", "budget", "get_budget", "import", "neps_next", "neps_report"),
    ]
    readers = ("read", "get", "pending", "get_budget")
    assert all(op.mutates == (name not in readers) for name, op in OPS.items())


def test_an_operation_added_to_the_registry_is_raced_and_modelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = Operation(
        "count",
        (),
        lambda ctx, _: len(ctx.state.lock_and_read_trials()),
        lambda s, e: s if e.result == len(s.trials) else None,
        mutates=False,
        plan=((),),
    )
    monkeypatch.setitem(OPS, "count", count)
    events = race(tmp_path, [("count",), ("sample", 2), ("count",), ("sample_claim",), ("count",)])
    assert [e.result for e in events if e.op == "count"] == [0, 2, 3]
    assert check(events, MODEL).ok
    events[2] = replace(events[2], result=1)
    verdict = check(events, MODEL)
    assert not verdict.ok
    assert "count() -> 1" in verdict.explanation
    assert "illegal in this state" in verdict.explanation


def test_the_machine_drives_its_rules_through_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    called: list[str] = []

    def spy(op: Operation) -> Operation:
        def call(ctx: Ctx, args: tuple[Any, ...]) -> Any:
            called.append(op.name)
            return op.call(ctx, args)

        return replace(op, call=call)

    for name, op in list(OPS.items()):
        monkeypatch.setitem(OPS, name, spy(op))
    machine = model_machine()()
    try:
        first = machine.create()
        assert machine.sample(first, 2).values == ("0", "1")
        (tid,) = machine.claim(machine.open_handle(), 1).values
        machine.put_updated(first, tid, "reset")
        machine.report(first, tid, "failed")  # no longer evaluating: refused, as the model says
        (tid,) = machine.claim(first, 2).values
        machine.report(first, tid, "failed")
        machine.put_updated(first, "1", "corrupt")
        machine.consolidate(first)
        machine.next_pending(first, 3)
        machine.state_matches_model()
        assert machine.import_trial(first, "a").values == ("imported-a",)
        machine.worker_and_budget(first, 5)
        (tid,) = machine.neps_next(first, 1).values
        machine.neps_report(first, tid, "crashed")
        machine.clean(first, tid, "reset_by_id")
        machine.state_matches_model()
        machine.clean(first, "1", "remove")
        machine.state_matches_model()
    finally:
        machine.teardown()
    assert set(called) == set(OPS) - {"sample_claim", "get"}
    assert machine.model.snapshot() == (
        ("0", "failed"),
        ("3", "pending"),
        ("imported-a", "external"),
    )
    assert machine.reports == {"0": ("failed", "failed at 0"), "imported-a": ("success", None)}


S = NePSModelState(
    trials=(("0", "evaluating", "w0"), ("1", "pending", None), ("2", "success", "w1")),
    pending=("1",),
)


def ev(op: str, args: tuple[Any, ...], result: Any, *, killed: bool = False) -> Event:
    return Event("w", op, args, result, 0, None if killed else 1)


@pytest.mark.parametrize(
    "event",
    [
        ev("sample", (1,), ("4",)),
        ev("sample_claim", ("w",), ("0",)),
        ev("claim", ("w",), "0"),
        ev("claim", ("w",), None),
        ev("report", ("w", "1", "success"), True),
        ev("report", ("w", "0", "success"), "IllegalTransitionError"),
        ev("report", ("w", "0", "success"), "NePSError"),
        ev("read", (), (("0", "evaluating"), ("1", "pending"))),
        ev("get", ("2",), "failed"),
        ev("get", ("0",), "TrialNotFoundError"),
        ev("reset", ("9",), None),
        ev("reset", ("0",), "OSError"),
        ev("corrupt", ("1",), "OSError"),
        ev("consolidate", (), "OSError"),
        ev("sample", (1,), "TrialAlreadyExistsError"),
        ev("worker_id", (), "worker_1"),
        ev("get_budget", (), 5),
        ev("import", ("a",), "TrialAlreadyExistsError"),
        ev("remove", ("9",), None),
        ev("reset_by_id", ("9",), None),
        ev("neps_next", ("w",), "3"),
    ],
    ids=lambda e: f"{e.op}->{e.result!r}",
)
def test_the_model_rejects_an_illegal_result(event: Event) -> None:
    assert MODEL.step(S, event) == ()


def test_killed_operations_take_their_effect_or_none() -> None:
    assert MODEL.step(S, ev("read", (), "garbage", killed=True)) == (S,)
    (reset,) = MODEL.step(S, ev("reset", ("2",), "garbage", killed=True))
    assert reset.trials[2] == ("2", "pending", None)
    assert reset.pending == ("1", "2")
    (corrupt,) = MODEL.step(reset, ev("corrupt", ("1",), None))
    assert corrupt.pending == ("2",)
    (claim,) = MODEL.step(corrupt, ev("claim", ("w",), "2"))
    assert claim.trials[2] == ("2", "evaluating", "w")
