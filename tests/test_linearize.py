"""The linearizability checker: hand-written histories, the NePS model, and properties."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_neps._linearize import (
    Event,
    Model,
    Verdict,
    check,
    format_history,
)
from pytest_neps._ops import NePSModel

# -- helpers ----------------------------------------------------------------------


def ev(  # noqa: PLR0917 - short positional rows read like a table
    process: str,
    op: str,
    args: tuple[Any, ...],
    result: Any,
    invoke: int,
    complete: int | None,
) -> Event:
    return Event(process, op, args, result, invoke, complete)


class Register:
    """One integer register, initially 0: write(v) -> None, read() -> v."""

    def init(self) -> int:
        return 0

    def step(self, state: int, event: Event) -> Iterable[int]:
        if event.op == "write":
            return [event.args[0]]
        if event.op == "read":
            return [state] if event.complete is None or event.result == state else []
        raise ValueError(event.op)


class Counter:
    """A counter: inc() -> new value (any when killed), get() -> value."""

    def init(self) -> int:
        return 0

    def step(self, state: int, event: Event) -> Iterable[int]:
        if event.op == "inc":
            return [state + 1] if event.complete is None or event.result == state + 1 else []
        if event.op == "get":
            return [state] if event.complete is None or event.result == state else []
        raise ValueError(event.op)


def assert_witness(history: Sequence[Event], verdict: Verdict, model: Model[Any]) -> None:
    """The verdict's order is a linearization: complete, real-time ordered, legal."""
    assert verdict.ok, verdict.explanation
    order = verdict.order
    assert order is not None
    ids = [id(e) for e in order]
    assert len(set(ids)) == len(ids)
    assert set(ids) <= {id(e) for e in history}
    assert {id(e) for e in history if e.completed} <= set(ids)
    for k, a in enumerate(order):
        for b in order[k + 1 :]:
            assert not (b.complete is not None and b.complete < a.invoke), (a, b)
    states = {model.init()}
    for e in order:
        states = {nxt for s in states for nxt in model.step(s, e)}
        assert states, f"illegal witness step {e}"


# -- (a) small hand-written histories ---------------------------------------------


def test_empty_history_is_linearizable() -> None:
    verdict = check([], Register())
    assert verdict.ok
    assert verdict.order == []


def test_sequential_history_ok() -> None:
    h = [
        ev("a", "write", (1,), None, 0, 10),
        ev("b", "read", (), 1, 20, 30),
        ev("a", "write", (2,), None, 40, 50),
        ev("b", "read", (), 2, 60, 70),
    ]
    verdict = check(h, Register())
    assert_witness(h, verdict, Register())
    assert verdict.order == h


@pytest.mark.parametrize("seen", [0, 1])
def test_overlapping_read_may_see_either_value(seen: int) -> None:
    h = [ev("a", "write", (1,), None, 0, 100), ev("b", "read", (), seen, 10, 50)]
    assert_witness(h, check(h, Register()), Register())


def test_overlap_order_follows_results() -> None:
    # Two overlapping writes, then a read: whichever write is read was linearized last.
    for last in (1, 2):
        h = [
            ev("a", "write", (1,), None, 0, 100),
            ev("b", "write", (2,), None, 10, 90),
            ev("c", "read", (), last, 200, 210),
        ]
        verdict = check(h, Register())
        assert_witness(h, verdict, Register())
        assert verdict.order is not None
        assert verdict.order[1].args == (last,)


def test_stale_read_after_completed_write_is_rejected() -> None:
    h = [ev("a", "write", (1,), None, 0, 10), ev("b", "read", (), 0, 20, 30)]
    verdict = check(h, Register())
    assert not verdict.ok
    assert not verdict.abandoned
    assert verdict.order is None
    assert "read() -> 0" in verdict.explanation
    assert "illegal in this state" in verdict.explanation
    assert "model state there: 1" in verdict.explanation


def test_real_time_order_is_respected() -> None:
    # w(1) completes before w(2) starts: a later read of 1 is stale.
    h = [
        ev("a", "write", (1,), None, 0, 10),
        ev("b", "write", (2,), None, 20, 30),
        ev("c", "read", (), 1, 40, 50),
    ]
    assert not check(h, Register()).ok
    # Overlapping writes may be ordered either way.
    h[1] = replace(h[1], invoke=5)
    assert_witness(h, check(h, Register()), Register())


def test_touching_intervals_are_concurrent() -> None:
    # a.complete == b.invoke does not order them.
    h = [ev("a", "write", (1,), None, 0, 10), ev("b", "read", (), 0, 10, 20)]
    assert check(h, Register()).ok


def test_counter_needs_every_increment() -> None:
    h = [
        ev("a", "inc", (), 1, 0, 10),
        ev("b", "inc", (), 2, 5, 15),
        ev("c", "get", (), 2, 20, 30),
    ]
    assert check(h, Counter()).ok
    assert not check([*h[:2], replace(h[2], result=1)], Counter()).ok
    # Two increments cannot both return 1.
    assert not check([h[0], replace(h[1], result=1)], Counter()).ok


def test_indeterminate_event_may_be_dropped() -> None:
    h = [ev("a", "write", (1,), None, 0, None), ev("b", "read", (), 0, 20, 30)]
    verdict = check(h, Register())
    assert_witness(h, verdict, Register())
    assert verdict.order == [h[1]]


def test_indeterminate_event_may_be_applied_late() -> None:
    # Killed at t=0, yet its effect shows up between two later reads.
    h = [
        ev("a", "write", (1,), None, 0, None),
        ev("b", "read", (), 0, 20, 30),
        ev("b", "read", (), 1, 40, 50),
    ]
    verdict = check(h, Register())
    assert_witness(h, verdict, Register())
    assert verdict.order is not None
    assert [e.op for e in verdict.order] == ["read", "write", "read"]


def test_indeterminate_event_cannot_be_undone_or_precede_its_invocation() -> None:
    undone = [
        ev("a", "write", (1,), None, 0, None),
        ev("b", "read", (), 1, 20, 30),
        ev("b", "read", (), 0, 40, 50),
    ]
    assert not check(undone, Register()).ok
    early = [ev("b", "read", (), 1, 0, 10), ev("a", "write", (1,), None, 20, None)]
    assert not check(early, Register()).ok


def test_killed_increment_result_is_ignored() -> None:
    h = [ev("a", "inc", (), "garbage", 0, None), ev("b", "get", (), 1, 10, 20)]
    assert check(h, Counter()).ok


def test_event_completing_before_invocation_is_an_error() -> None:
    with pytest.raises(ValueError, match="completes before"):
        check([ev("a", "read", (), 0, 10, 5)], Register())


def test_search_abandoned_is_not_a_verdict_of_linearizable() -> None:
    h = [ev(f"p{k}", "write", (k,), None, 0, 100) for k in range(8)]
    h.append(ev("r", "read", (), 99, 200, 300))
    verdict = check(h, Register(), max_states=20)
    assert not verdict.ok
    assert verdict.abandoned
    assert "abandoned" in verdict.explanation
    assert "UNDECIDED" in verdict.explanation
    assert "deepest point reached" in verdict.explanation
    assert "not linearizable" not in verdict.explanation
    full = check(h, Register())
    assert not full.ok
    assert not full.abandoned


def test_format_history() -> None:
    h = [
        ev("worker-2", "read", (), 1, 3_500, 4_000),
        ev("w1", "write", (1,), None, 1_000, 2_500),
        ev("w1", "write", (2,), None, 5_000, None),
    ]
    lines = format_history(h).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("w1 ")
    assert "write(1) -> None  [0.0, 1.5] us" in lines[0]
    assert "read() -> 1  [2.5, 3.0] us" in lines[1]
    assert "write(2) -> ? (killed)  [4.0, -] us" in lines[2]
    assert format_history([]) == "(empty history)"


# -- (b) the NePS model -----------------------------------------------------------

NEPS = NePSModel()


def test_neps_valid_concurrent_history() -> None:
    h = [
        ev("w0", "sample", (2,), ("0", "1"), 0, 100),
        ev("w1", "sample", (1,), ("2",), 50, 150),
        ev("w2", "claim", ("w2",), "0", 120, 200),
        ev("w0", "claim", ("w0",), "1", 110, 210),
        ev(
            "w1", "read", (), (("0", "evaluating"), ("1", "evaluating"), ("2", "pending")), 220, 230
        ),
        ev("w2", "report", ("w2", "0", "success"), True, 240, 300),
        ev("w1", "claim", ("w1",), "2", 250, 260),
        ev("w0", "report", ("w0", "1", "failed"), True, 260, 320),
        ev("w1", "report", ("w1", "0", "crashed"), "IllegalTransitionError", 310, 330),
        ev("w2", "get", ("1",), "failed", 330, 340),
        ev("w0", "get", ("9",), "TrialNotFoundError", 330, 340),
        ev("w0", "claim", ("w0",), None, 350, 360),
        ev("w1", "read", (), (("0", "success"), ("1", "failed"), ("2", "evaluating")), 350, 370),
    ]
    verdict = check(h, NEPS)
    assert_witness(h, verdict, NEPS)


def test_neps_double_claim_is_rejected_and_named() -> None:
    h = [
        ev("w0", "sample", (1,), ("0",), 0, 100),
        ev("w1", "claim", ("w1",), "0", 150, 250),
        ev("w2", "claim", ("w2",), "0", 160, 240),
    ]
    verdict = check(h, NEPS)
    assert not verdict.ok
    text = verdict.explanation
    assert "2 of 3 completed events" in text
    assert "sample(1) -> ('0',)" in text
    assert "claim('w" in text
    # One claim is in the prefix, the other cannot be placed after it.
    placed, rest = text.split("events that could not be placed next:")
    assert ("claim('w1')" in placed) != ("claim('w2')" in placed)
    assert "illegal in this state" in rest
    assert "0:evaluating@w" in text


def test_neps_read_missing_completed_sample_is_rejected() -> None:
    h = [
        ev("w0", "sample", (2,), ("0", "1"), 0, 100),
        ev("w1", "read", (), (("0", "pending"),), 150, 200),
    ]
    verdict = check(h, NEPS)
    assert not verdict.ok
    assert "read() -> (('0', 'pending'),)" in verdict.explanation
    # ... while a read overlapping the sample may miss it entirely.
    h[1] = ev("w1", "read", (), (), 50, 200)
    assert check(h, NEPS).ok


@pytest.mark.parametrize("took_effect", [True, False])
def test_neps_killed_sample_is_indeterminate(took_effect: bool) -> None:
    after = (("0", "pending"), ("1", "pending")) if took_effect else ()
    h = [
        ev("w0", "sample", (2,), None, 0, None),
        ev("w1", "read", (), (), 10, 20),
        ev("w1", "read", (), after, 100, 200),
        ev("w1", "claim", ("w1",), "0" if took_effect else None, 300, 400),
    ]
    assert_witness(h, check(h, NEPS), NEPS)


def test_neps_killed_sample_is_all_or_nothing() -> None:
    h = [
        ev("w0", "sample", (2,), None, 0, None),
        ev("w1", "read", (), (("0", "pending"),), 100, 200),
    ]
    assert not check(h, NEPS).ok


def test_neps_killed_claim_may_have_taken_the_head() -> None:
    h = [
        ev("w0", "sample", (2,), ("0", "1"), 0, 10),
        ev("w1", "claim", ("w1",), None, 20, None),
        ev("w2", "claim", ("w2",), "1", 30, 40),
    ]
    assert check(h, NEPS).ok
    assert not check(h[:1] + h[2:], NEPS).ok


def test_neps_report_rules() -> None:
    base = [ev("w0", "sample", (1,), ("0",), 0, 10)]
    report = ev("w1", "report", ("w1", "0", "success"), True, 20, 30)
    assert not check([*base, report], NEPS).ok  # not evaluating
    illegal = replace(report, result="IllegalTransitionError")
    assert check([*base, illegal], NEPS).ok
    missing = ev("w1", "report", ("w1", "7", "failed"), "TrialNotFoundError", 20, 30)
    assert check([*base, missing], NEPS).ok
    claim = ev("w1", "claim", ("w1",), "0", 12, 15)
    by_other = ev("sup", "report", ("sup", "0", "crashed"), True, 20, 30)
    get = ev("w1", "get", ("0",), "crashed", 40, 50)
    assert check([*base, claim, by_other, get], NEPS).ok


def test_neps_unknown_op_and_bad_outcome_raise() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        check([ev("w", "frobnicate", (), None, 0, 1)], NEPS)
    with pytest.raises(ValueError, match="outcome"):
        check(
            [
                ev("w", "sample", (1,), ("0",), 0, 1),
                ev("w", "report", ("w", "0", "meh"), True, 2, 3),
            ],
            NEPS,
        )


# -- (c) properties ---------------------------------------------------------------


class _Reference:
    """An independent sequential NePS state, to produce the results of a run."""

    def __init__(self) -> None:
        self.trials: dict[str, str] = {}
        self.pending: list[str] = []

    def apply(self, op: str, args: tuple[Any, ...]) -> Any:  # noqa: PLR0911
        if op == "sample":
            ids = tuple(str(len(self.trials) + k) for k in range(args[0]))
            for i in ids:
                self.trials[i] = "pending"
            self.pending += ids
            return ids
        if op == "claim":
            if not self.pending:
                return None
            tid = self.pending.pop(0)
            self.trials[tid] = "evaluating"
            return tid
        if op == "report":
            _, tid, outcome = args
            if tid not in self.trials:
                return "TrialNotFoundError"
            if self.trials[tid] != "evaluating":
                return "IllegalTransitionError"
            self.trials[tid] = outcome
            return True
        if op == "read":
            return tuple(sorted(self.trials.items()))
        assert op == "get"
        return self.trials.get(args[0], "TrialNotFoundError")

    def evaluating(self) -> list[str]:
        return [t for t, s in self.trials.items() if s == "evaluating"]


@dataclass(frozen=True)
class Step:
    kind: str
    proc: int
    pick: int
    n: int
    outcome: str
    before: int  # how far the invocation may reach back
    after: int  # how far the completion may reach forward
    killed: bool
    took_effect: bool


steps = st.builds(
    Step,
    kind=st.sampled_from(["sample", "claim", "claim", "report", "report", "read", "get"]),
    proc=st.integers(0, 3),
    pick=st.integers(0, 20),
    n=st.integers(1, 3),
    outcome=st.sampled_from(["success", "failed", "crashed"]),
    before=st.integers(0, 400),
    after=st.integers(0, 400),
    killed=st.booleans(),
    took_effect=st.booleans(),
)


_Call = tuple[str, str, tuple[Any, ...], Any, bool, bool]  # proc, op, args, result, killed, effect


def _execute(plan: Sequence[Step], *, kills: bool) -> list[_Call]:
    """Run ``plan`` against the reference, one op at a time."""
    ref = _Reference()
    calls: list[_Call] = []
    incarnation = [0] * 4
    for s in plan:
        proc = f"w{s.proc}.{incarnation[s.proc]}"
        killed = kills and s.killed and s.pick % 4 == 0
        if s.kind == "sample":
            args: tuple[Any, ...] = (s.n,)
        elif s.kind == "claim":
            args = (proc,)
        elif s.kind == "report":
            evaluating = ref.evaluating()
            ids = evaluating if evaluating and s.pick % 5 else [*ref.trials, "missing"]
            args = (proc, ids[s.pick % len(ids)], s.outcome)
        elif s.kind == "get":
            args = ([*ref.trials, "missing"][s.pick % (len(ref.trials) + 1)],)
        else:
            args = ()
        effect = not killed or s.took_effect
        result = ref.apply(s.kind, args) if effect else None
        calls.append((proc, s.kind, args, result, killed, effect))
        if killed:  # a killed worker comes back under a new name
            incarnation[s.proc] += 1
    return calls


def _intervals(calls: Sequence[_Call], plan: Sequence[Step], *, concurrent: bool) -> list[int]:
    """Invocation and completion times (flat) around the points 100, 200, ... of each op."""
    points = [100 * k + 100 for k in range(len(calls))]
    if not concurrent:
        return [t for p in points for t in (p, p + 1)]
    times: list[int] = []
    last: dict[str, int] = {}
    for k, ((proc, *_), s) in enumerate(zip(calls, plan, strict=True)):
        nxt = next((j for j in range(k + 1, len(calls)) if calls[j][0] == proc), None)
        bound = points[nxt] - 1 if nxt is not None else points[k] + s.after
        times += [
            max(points[k] - s.before, last.get(proc, -1) + 1),
            min(points[k] + s.after, bound),
        ]
        last[proc] = times[-1]
    return times


def run_sequentially(
    plan: Sequence[Step], *, concurrent: bool, kills: bool
) -> tuple[list[Event], list[Event]]:
    """Execute ``plan`` one op at a time; return (history, the order it took effect in).

    Op k takes effect at time 100*(k+1); with ``concurrent`` its interval is widened
    around that point (never overlapping its own process's other ops), so the
    execution order stays a valid linearization.
    """
    calls = _execute(plan, kills=kills)
    times = _intervals(calls, plan, concurrent=concurrent)
    history: list[Event] = []
    order: list[Event] = []
    for k, (proc, op, args, result, killed, effect) in enumerate(calls):
        invoke, complete = times[2 * k], times[2 * k + 1]
        e = Event(proc, op, args, None if killed else result, invoke, None if killed else complete)
        history.append(e)
        if effect:
            order.append(e)
    return history, order


def _mutated(e: Event, pick: int) -> Any:
    """A different result for ``e`` (illegal, as each completed op has one legal result)."""
    r = e.result
    if e.op == "sample":
        return tuple(str(int(i) + 1 + pick % 2) for i in r)
    if e.op == "claim":
        return str(int(r) + 1 + pick % 3) if r is not None else str(pick % 3)
    if e.op == "read":
        if r and pick % 2:
            return r[:-1]
        return (*r, ("999", "pending"))
    if e.op == "get":
        return "success" if r != "success" else "pending"
    return True if r != True else "IllegalTransitionError"  # noqa: E712 - a result, not a flag


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(steps, min_size=1, max_size=30))
def test_widened_sequential_runs_are_accepted(plan: list[Step]) -> None:
    history, _ = run_sequentially(plan, concurrent=True, kills=True)
    shuffled = random.Random(len(plan)).sample(history, len(history))  # input order is irrelevant
    assert_witness(history, check(shuffled, NEPS), NEPS)


@settings(max_examples=150, deadline=None)
@given(plan=st.lists(steps, min_size=1, max_size=30), where=st.integers(0), pick=st.integers(0))
def test_one_wrong_result_is_rejected(plan: list[Step], where: int, pick: int) -> None:
    history, _ = run_sequentially(plan, concurrent=False, kills=False)
    assert_witness(history, check(history, NEPS), NEPS)
    k = where % len(history)
    bad = _mutated(history[k], pick)
    assert bad != history[k].result
    history[k] = replace(history[k], result=bad)
    verdict = check(history, NEPS)
    assert not verdict.ok
    assert not verdict.abandoned
    assert f"{k} of {len(history)} completed events" in verdict.explanation


def _random_plan(rng: random.Random, n: int, *, kills: bool) -> list[Step]:
    kinds = ["sample", "claim", "claim", "report", "report", "read", "get"]
    return [
        Step(
            kind=rng.choice(kinds),
            proc=k % 4,
            pick=rng.randrange(20),
            n=rng.randint(1, 2),
            outcome=rng.choice(["success", "failed", "crashed"]),
            before=rng.randrange(1000),
            after=rng.randrange(1000),
            killed=kills and rng.random() < 0.3,
            took_effect=rng.random() < 0.5,
        )
        for k in range(n)
    ]


@pytest.mark.parametrize("kills", [False, True])
def test_sixty_events_over_four_processes_are_fast(kills: bool) -> None:
    start = time.perf_counter()
    for seed in range(3):
        plan = _random_plan(random.Random(seed), 60, kills=kills)
        history, effective = run_sequentially(plan, concurrent=True, kills=kills)
        assert len(history) == 60
        assert len({e.process.split(".")[0] for e in history}) == 4
        verdict = check(history, NEPS)
        assert_witness(history, verdict, NEPS)
        assert verdict.states < 10_000
        # A wrong final read is rejected only after every alternative failed.
        read = Event("r", "read", (), (("x", "y"),), 10**6, 10**6 + 1)
        assert not check([*history, read], NEPS).ok
        # So is (most likely) a wrong result in the middle: at least it terminates.
        k = next(k for k in range(30, 60) if history[k].completed)
        history[k] = replace(history[k], result=_mutated(history[k], seed))
        assert not check(history, NEPS).abandoned
        assert effective
    assert time.perf_counter() - start < 30  # generous: about 0.05 s here


def test_memoization_collapses_orderings() -> None:
    # 10 fully concurrent writes, then an impossible read: 10! orders to try, but
    # only (placed set, last value written) pairs matter: 10 * 2**9 of them.
    writes = [ev(f"p{k}", "write", (k,), None, 0, 100) for k in range(10)]
    verdict = check([*writes, ev("r", "read", (), 99, 200, 300)], Register())
    assert not verdict.ok
    assert not verdict.abandoned
    assert verdict.states <= 10 * 2**9 + 1
