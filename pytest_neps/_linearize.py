"""A linearizability checker: can a sequential model explain a concurrent history.

The search is Wing & Gong's: pick an event that may come next (no unplaced event
completed before it was invoked), apply it to the model, recurse, backtrack on
failure. Lowe's memoization makes it practical: a (set of placed events, model
state) pair that failed once fails again, so each pair is expanded at most once.

An event whose process was killed (``complete is None``) is *indeterminate*: it
may have taken effect at any point after its invocation, or never. The search
may place it anywhere after its invocation or leave it out; it never has to
precede anything. The history is linearizable once every completed event is
placed. The NePS state's model, :class:`~pytest_neps._ops.NePSModel`, lives
with the registry of operations it steps.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

S = TypeVar("S", bound=Hashable)

__all__ = [
    "Event",
    "Model",
    "Verdict",
    "check",
    "format_event",
    "format_history",
]


@dataclass(frozen=True)
class Event:
    """One operation of one process: what it was called with, what it returned, and when."""

    process: str
    op: str
    args: tuple[Any, ...]
    result: Any
    invoke: int
    complete: int | None

    @property
    def completed(self) -> bool:
        """Whether the operation returned (False: its process was killed in flight)."""
        return self.complete is not None


class Model(Protocol[S]):
    """A sequential specification: an initial state and a (possibly branching) transition.

    States must be hashable. A model may also define ``format_state(state) -> str``,
    used in explanations instead of ``repr``.
    """

    def init(self) -> S:
        """The initial state."""
        ...

    def step(self, state: S, event: Event) -> Iterable[S]:
        """Successor states if ``event`` is legal in ``state`` (any result if not completed)."""
        ...


@dataclass
class Verdict:
    """The outcome of a check: a witness order when ok, an explanation when not.

    ``abandoned`` means the search hit ``max_states`` (undecided, reported as not ok);
    ``states`` counts the (placed set, state) pairs explored.
    """

    ok: bool
    order: list[Event] | None
    explanation: str
    abandoned: bool = False
    states: int = 0

    def __bool__(self) -> bool:
        return self.ok


# -- formatting -------------------------------------------------------------------


def _us(t: int, t0: int) -> str:
    return f"{(t - t0) / 1000:.1f}"


def format_event(event: Event, t0: int = 0, width: int = 0) -> str:
    """One event as ``process  op(args) -> result  [invoke, complete] us`` (relative to t0)."""
    call = f"{event.process:<{width}}  {event.op}({', '.join(repr(a) for a in event.args)})"
    if event.complete is None:
        return f"{call} -> ? (killed)  [{_us(event.invoke, t0)}, -] us"
    return f"{call} -> {event.result!r}  [{_us(event.invoke, t0)}, {_us(event.complete, t0)}] us"


def format_history(history: Iterable[Event]) -> str:
    """One line per event, by invocation, times in microseconds after the first invocation."""
    events = sorted(history, key=lambda e: e.invoke)
    if not events:
        return "(empty history)"
    t0 = events[0].invoke
    width = max(len(e.process) for e in events)
    return "\n".join(format_event(e, t0, width) for e in events)


def _state_text(model: object, state: object) -> str:
    fmt = getattr(model, "format_state", None)
    return str(fmt(state)) if callable(fmt) else repr(state)


# -- the search -------------------------------------------------------------------


@dataclass
class _Frame(Generic[S]):
    mask: int
    state: S
    lo_inv: int  # first unplaced event in invocation order
    lo_comp: int  # first unplaced completed event in completion order
    n_done: int  # completed events placed
    children: Iterator[tuple[int, S]] = field(repr=False)


class _Search(Generic[S]):
    """One depth-first search over (placed set, model state) pairs."""

    def __init__(self, history: Sequence[Event], model: Model[S], max_states: int) -> None:
        for e in history:
            if e.complete is not None and e.complete < e.invoke:
                raise ValueError(f"event completes before it is invoked: {e}")
        self.model = model
        self.max_states = max_states
        self.events = sorted(history, key=lambda e: e.invoke)
        self.invoke = [e.invoke for e in self.events]
        self.by_comp = sorted(
            (i for i, e in enumerate(self.events) if e.complete is not None),
            key=lambda i: self.events[i].complete or 0,
        )
        self.n_completed = len(self.by_comp)
        self.visited: set[tuple[int, S]] = set()

    def _horizon(self, lo_comp: int) -> float:
        """The earliest completion among unplaced completed events (inf if none)."""
        if lo_comp >= self.n_completed:
            return math.inf
        c = self.events[self.by_comp[lo_comp]].complete
        return math.inf if c is None else c

    def candidates(self, mask: int, lo_inv: int, lo_comp: int) -> list[int]:
        """Unplaced events that may come next: completed ones first, then indeterminate."""
        horizon = self._horizon(lo_comp)
        done: list[int] = []
        maybe: list[int] = []
        for i in range(lo_inv, len(self.events)):
            if self.invoke[i] > horizon:
                break
            if not mask >> i & 1:
                (done if self.events[i].complete is not None else maybe).append(i)
        return done + maybe

    def _children(self, state: S, cands: list[int]) -> Iterator[tuple[int, S]]:
        for i in cands:
            event = self.events[i]
            for nxt in self.model.step(state, event):
                if event.complete is None and nxt == state:
                    continue  # taking effect as a no-op is the same as never happening
                yield i, nxt

    def _frame(self, mask: int, state: S, lo_inv: int, lo_comp: int, n_done: int) -> _Frame[S]:
        n = len(self.events)
        while lo_inv < n and mask >> lo_inv & 1:
            lo_inv += 1
        while lo_comp < self.n_completed and mask >> self.by_comp[lo_comp] & 1:
            lo_comp += 1
        cands = self.candidates(mask, lo_inv, lo_comp)
        return _Frame(mask, state, lo_inv, lo_comp, n_done, self._children(state, cands))

    def run(self) -> Verdict:
        """Search for a linearization; explain the deepest dead end if there is none."""
        root = self._frame(0, self.model.init(), 0, 0, 0)
        self.visited.add((0, root.state))
        stack = [root]
        path: list[int] = []
        best: tuple[int, int, list[int], _Frame[S]] = (0, 0, [], root)
        while stack:
            top = stack[-1]
            if top.lo_comp >= self.n_completed:
                return Verdict(
                    ok=True,
                    order=[self.events[i] for i in path],
                    explanation="linearizable",
                    states=len(self.visited),
                )
            nxt = next(top.children, None)
            if nxt is None:
                stack.pop()
                if path:
                    path.pop()
                continue
            i, state = nxt
            mask = top.mask | 1 << i
            if (mask, state) in self.visited:
                continue
            if len(self.visited) >= self.max_states:
                return self._abandoned(best)
            self.visited.add((mask, state))
            path.append(i)
            n_done = top.n_done + (self.events[i].complete is not None)
            frame = self._frame(mask, state, top.lo_inv, top.lo_comp, n_done)
            stack.append(frame)
            if (n_done, -len(path)) > best[:2]:  # most completed, fewest killed events
                best = (n_done, -len(path), list(path), frame)
        return Verdict(
            ok=False,
            order=None,
            explanation=self._explain(best, abandoned=False),
            states=len(self.visited),
        )

    def _abandoned(self, best: tuple[int, int, list[int], _Frame[S]]) -> Verdict:
        text = (
            f"search abandoned after {len(self.visited)} (placed set, state) pairs "
            f"(max_states={self.max_states}): linearizability is UNDECIDED, not refuted.\n"
            + self._explain(best, abandoned=True)
        )
        return Verdict(
            ok=False, order=None, explanation=text, abandoned=True, states=self.max_states
        )

    def _explain(self, best: tuple[int, int, list[int], _Frame[S]], *, abandoned: bool) -> str:
        n_done, _, path, frame = best
        t0 = self.events[0].invoke if self.events else 0
        width = max((len(e.process) for e in self.events), default=0)

        def fmt(i: int) -> str:
            return format_event(self.events[i], t0, width)

        head = "deepest point reached" if abandoned else "not linearizable"
        lines = [
            (
                f"{head}: at best {n_done} of {self.n_completed} completed events "
                f"({len(self.events)} events in all) could be linearized."
            ),
            f"longest linearizable prefix ({len(path)} events):",
        ]
        lines += [f"  {k + 1:>3}. {fmt(i)}" for k, i in enumerate(path)] or ["  (none)"]
        lines.append(f"model state there: {_state_text(self.model, frame.state)}")
        cands = self.candidates(frame.mask, frame.lo_inv, frame.lo_comp)
        lines.append("events that could not be placed next:")
        for i in cands:
            legal = any(True for _ in self.model.step(frame.state, self.events[i]))
            if not legal:
                why = "illegal in this state"
            elif abandoned:
                why = "legal here; not fully explored"
            else:
                why = "legal here, but nothing after it works"
            lines.append(f"    - {fmt(i)}  ({why})")
        if frame.lo_comp < self.n_completed:
            blocker = self.by_comp[frame.lo_comp]
            later = [
                i
                for i in range(frame.lo_inv, len(self.events))
                if not frame.mask >> i & 1 and i not in cands
            ]
            if later:
                lines.append(
                    f"events invoked after this one completed come after it: {fmt(blocker)}"
                )
                lines += [f"    - {fmt(i)}" for i in later]
        return "\n".join(lines)


def check(history: Sequence[Event], model: Model[S], *, max_states: int = 1_000_000) -> Verdict:
    """Whether ``history`` is linearizable with respect to ``model``.

    Real-time order is respected: if ``a.complete < b.invoke``, ``a`` is linearized
    before ``b``. Indeterminate events (``complete is None``) are placed anywhere
    after their invocation, or dropped. When more than ``max_states`` (placed set,
    state) pairs are explored, the verdict is ``ok=False, abandoned=True``.
    """
    return _Search(history, model, max_states).run()
