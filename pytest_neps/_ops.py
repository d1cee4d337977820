"""The operations the harness drives, in one registry (:data:`OPS`).

Each :class:`Operation` says how to call it on an implementation (through
:class:`~pytest_neps._impl.Impl`), how its result is written to a JSON history,
how it steps :class:`NePSModel` (the sequential specification both the
linearizability checker and the model machine judge results by), whether it
writes the run directory, and which trials a successful call leaves in which
state. The race runner, the model machine and the kill matrix dispatch through
it, so an operation added here is driven and modelled everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pytest_neps._impl import Impl, state_of
from pytest_neps._linearize import Event

OUTCOMES = ("success", "failed", "crashed")
"""How a trial can be reported."""
IMPORTED = "imported-"
"""The id prefix of the trials the ``import`` operation adds."""

R_co = TypeVar("R_co", covariant=True)


class Completable(Protocol[R_co]):
    """A trial of any implementation: ``set_complete`` returns its report."""

    def set_complete(
        self,
        *,
        report_as: Any,
        time_end: Any,
        objective_to_minimize: Any,
        cost: Any,
        learning_curve: Any,
        err: Any,
        tb: Any,
        extra: Any,
        evaluation_duration: Any,
    ) -> R_co:
        """Set the trial's final state; return the report."""
        ...


def complete(
    trial: Completable[R_co],
    outcome: str,
    *,
    time_end: float = 0.0,
    objective: float | None = 1.0,
    cost: float | None = 1.0,
    learning_curve: list[float] | None = None,
    err: BaseException | None = None,
    tb: str | None = None,
    extra: Mapping[str, Any] | None = None,
    evaluation_duration: float = 0.0,
) -> R_co:
    """The report of ``trial`` finished as ``outcome``: ``trial.set_complete`` with every field.

    The defaults are the races' values (``extra`` defaults to ``{}``).
    """
    return trial.set_complete(
        report_as=outcome,
        time_end=time_end,
        objective_to_minimize=objective,
        cost=cost,
        learning_curve=learning_curve,
        err=err,
        tb=tb,
        extra={} if extra is None else extra,
        evaluation_duration=evaluation_duration,
    )


def _plain_report(trial: Any, outcome: str) -> Any:
    """The races' report: an error named after the outcome unless a success."""
    err = None if outcome == "success" else RuntimeError(outcome)
    return complete(trial, outcome, err=err)


@dataclass(frozen=True)
class Ctx:
    """Where and as whom an operation runs: a handle of an implementation, one worker."""

    impl: Impl
    state: Any
    worker: str
    optimizer: Any
    """The ask function of the sampling operations (the model expects ``machines.ask``'s ids)."""
    reporter: Callable[[Any, str], Any] = _plain_report
    """Builds the report of ``(trial, outcome)``."""


# -- the sequential model -------------------------------------------------------------


@dataclass(frozen=True)
class NePSModelState:
    """The sequential NePS state: trials ``(id, state, worker)`` and the pending queue.

    Also the worker ids given out and the run's total evaluation budget.
    """

    trials: tuple[tuple[str, str, str | None], ...] = ()
    pending: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    budget: int | None = None

    def find(self, trial_id: str) -> int | None:
        """The position of trial ``trial_id``, or None."""
        for k, t in enumerate(self.trials):
            if t[0] == trial_id:
                return k
        return None

    def set(self, k: int, state: str, worker: str | None) -> NePSModelState:
        """A copy with trial number ``k`` in ``state`` (evaluated by ``worker``)."""
        trials = list(self.trials)
        trials[k] = (trials[k][0], state, worker)
        return replace(self, trials=tuple(trials))

    def snapshot(self) -> tuple[tuple[str, str], ...]:
        """What a read returns: ``tuple(sorted((id, state) for every trial))``."""
        return tuple(sorted((t[0], t[1]) for t in self.trials))


class NePSModel:
    """The NePS state as the harness drives it, one operation of :data:`OPS` at a time.

    Operations (``Event.op``, ``args`` -> ``result``):

    - ``sample (n,) -> ids``: the toy optimizer names trials ``str(len(trials))``
      onwards, so ``ids`` must be the next ``n`` ids (``n=None`` means 1); they are
      appended to the pending queue in that order. All-or-nothing: an
      indeterminate sample adds all ``n`` (or, dropped by the checker, none).
    - ``sample_claim (worker,) -> (id,)``: samples one trial (the next id) that is
      evaluating by ``worker`` at once, never pending.
    - ``claim (worker,) -> id | None``: takes the first pending trial, which
      becomes evaluating by ``worker``; None iff nothing is pending.
    - ``report (worker, id, outcome) -> True``: legal iff the trial is evaluating
      (by any worker: a supervisor may report); its state becomes ``outcome``
      (success, failed or crashed). ``-> "IllegalTransitionError"``: legal iff
      the trial exists and is not evaluating; ``-> "TrialNotFoundError"``: legal
      iff there is no such trial. Neither changes the state.
    - ``read () -> tuple(sorted((id, state) for every trial))``: must equal the model's.
    - ``get (id,) -> state | "TrialNotFoundError"``.
    - ``pending (n,) -> ids``: the ``n`` earliest sampled pending trials, in order.
    - ``reset (id,) -> None``: the trial is pending again, queued in sample order.
    - ``corrupt (id,) -> None``: the trial is corrupted (and no longer queued).
    - ``consolidate () -> bool``: changes nothing.
    - ``worker_id () -> "worker_<k>"``: ``k`` is the number of ids given out before.
    - ``budget (n,) -> None`` sets the run's total evaluations; ``get_budget () -> n``.
    - ``import (tag,) -> (id,)``: trial ``imported-<tag>`` is added, ``external``;
      ``-> "TrialAlreadyExistsError"`` iff it exists.
    - ``reset_by_id (id,)`` as ``reset``, ``remove (id,)``: the trial is gone; both
      ``-> "TrialNotFoundError"`` iff there is no such trial.
    - ``neps_next (worker,) -> id``: NePS's runtime's own step: a claim if a trial
      is pending, else a sample claimed at once.
    - ``neps_report``: ``report`` through NePS's runtime's own step.

    A sample whose next id exists (after a removal) must raise
    ``TrialAlreadyExistsError`` and changes nothing.

    An indeterminate (killed) operation ignores its result: it takes the effect
    a successful call would have had at its linearization point (a read-only one
    has none). Unknown operations raise ``ValueError``.
    """

    def init(self) -> NePSModelState:
        """No trials."""
        return NePSModelState()

    def format_state(self, state: NePSModelState) -> str:
        """The state, readably: trials by id with their worker, then the pending queue."""
        trials = ", ".join(f"{t}:{s}" + (f"@{w}" if w else "") for t, s, w in state.trials)
        extra = f", workers {list(state.workers)}" if state.workers else ""
        if state.budget is not None:
            extra += f", budget {state.budget}"
        return f"trials {{{trials}}}, pending {list(state.pending)}{extra}"

    def step(self, state: NePSModelState, event: Event) -> tuple[NePSModelState, ...]:
        """The successor state, if ``event`` is legal in ``state`` (empty tuple if not)."""
        op = OPS.get(event.op)
        if op is None:
            raise ValueError(f"NePSModel: unknown operation {event.op!r} in {event}")
        if not (op.mutates or event.completed):
            return (state,)
        nxt = op.step(state, event)
        return () if nxt is None else (nxt,)


def _next_ids(s: NePSModelState, n: int | None) -> tuple[str, ...]:
    """The ids the toy optimizer proposes next (``len(trials)`` onwards)."""
    first = len(s.trials)
    return tuple(str(first + k) for k in range(1 if n is None else n))


def _taken(s: NePSModelState, e: Event, ids: tuple[str, ...]) -> bool | None:
    """Whether one of ``ids`` exists (True: the sample must have failed; None: illegal)."""
    if not any(s.find(i) is not None for i in ids):
        return False
    return True if not e.completed or e.result == "TrialAlreadyExistsError" else None


def _step_sample(s: NePSModelState, e: Event) -> NePSModelState | None:
    (n,) = e.args
    ids = _next_ids(s, n)
    taken = _taken(s, e, ids)
    if taken is None:
        return None
    if taken:
        return s
    if e.completed and tuple(e.result) != ids:
        return None
    return replace(
        s,
        trials=s.trials + tuple((i, "pending", None) for i in ids),
        pending=_queue(s.pending + ids),
    )


def _queue(ids: tuple[str, ...]) -> tuple[str, ...]:
    """Pending ids in sample order; imported trials were never sampled, and go last."""
    return tuple(sorted(ids, key=lambda tid: tid.startswith(IMPORTED)))


def _step_sample_claim(s: NePSModelState, e: Event) -> NePSModelState | None:
    (worker,) = e.args
    (tid,) = _next_ids(s, None)
    taken = _taken(s, e, (tid,))
    if taken is None:
        return None
    if taken:
        return s
    if e.completed and tuple(e.result) != (tid,):
        return None
    return replace(s, trials=(*s.trials, (tid, "evaluating", worker)))


def _step_claim(s: NePSModelState, e: Event) -> NePSModelState | None:
    (worker,) = e.args
    if not s.pending:
        return s if not e.completed or e.result is None else None
    head = s.pending[0]
    if e.completed and e.result != head:
        return None
    k = s.find(head)
    if k is None:  # pragma: no cover - the queue only holds existing trials
        return None
    return replace(s.set(k, "evaluating", worker), pending=s.pending[1:])


def _step_report(s: NePSModelState, e: Event) -> NePSModelState | None:
    _worker, trial_id, outcome = e.args
    if outcome not in OUTCOMES:
        raise ValueError(f"NePSModel: report outcome must be one of {sorted(OUTCOMES)}: {e}")
    k = s.find(trial_id)
    evaluating = k is not None and s.trials[k][1] == "evaluating"
    if not e.completed:
        return s.set(k, outcome, s.trials[k][2]) if k is not None and evaluating else s
    if e.result is True:
        return s.set(k, outcome, s.trials[k][2]) if k is not None and evaluating else None
    if e.result == "IllegalTransitionError":
        return s if k is not None and not evaluating else None
    if e.result == "TrialNotFoundError":
        return s if k is None else None
    return None


def _step_read(s: NePSModelState, e: Event) -> NePSModelState | None:
    got = tuple(sorted(tuple(p) for p in e.result))
    return s if got == s.snapshot() else None


def _step_get(s: NePSModelState, e: Event) -> NePSModelState | None:
    (trial_id,) = e.args
    k = s.find(trial_id)
    expected = "TrialNotFoundError" if k is None else s.trials[k][1]
    return s if e.result == expected else None


def _step_pending(s: NePSModelState, e: Event) -> NePSModelState | None:
    (n,) = e.args
    return s if not e.completed or tuple(e.result) == s.pending[:n] else None


def _step_reset(s: NePSModelState, e: Event) -> NePSModelState | None:
    (trial_id,) = e.args
    k = s.find(trial_id)
    if k is None:
        return _step_not_found(s, e)
    if e.completed and e.result is not None:
        return None
    nxt = s.set(k, "pending", None)
    queued = {*s.pending, trial_id}
    return replace(nxt, pending=_queue(tuple(t[0] for t in nxt.trials if t[0] in queued)))


def _step_corrupt(s: NePSModelState, e: Event) -> NePSModelState | None:
    (trial_id,) = e.args
    k = s.find(trial_id)
    if k is None:
        return _step_not_found(s, e)
    if e.completed and e.result is not None:
        return None
    nxt = s.set(k, "corrupted", s.trials[k][2])
    return replace(nxt, pending=tuple(p for p in s.pending if p != trial_id))


def _step_consolidate(s: NePSModelState, e: Event) -> NePSModelState | None:
    return s if not e.completed or e.result in (True, False) else None


def _step_worker_id(s: NePSModelState, e: Event) -> NePSModelState | None:
    wid = f"worker_{len(s.workers)}"
    if e.completed and e.result != wid:
        return None
    return replace(s, workers=(*s.workers, wid))


def _step_budget(s: NePSModelState, e: Event) -> NePSModelState | None:
    (n,) = e.args
    return None if e.completed and e.result is not None else replace(s, budget=n)


def _step_get_budget(s: NePSModelState, e: Event) -> NePSModelState | None:
    return s if e.result == s.budget else None


def _step_import(s: NePSModelState, e: Event) -> NePSModelState | None:
    (tag,) = e.args
    tid = f"{IMPORTED}{tag}"
    if s.find(tid) is not None:
        return s if not e.completed or e.result == "TrialAlreadyExistsError" else None
    if e.completed and tuple(e.result) != (tid,):
        return None
    return replace(s, trials=(*s.trials, (tid, "external", e.process)))


def _step_not_found(s: NePSModelState, e: Event) -> NePSModelState | None:
    """A clean of a trial that does not exist: it must say so, and change nothing."""
    return s if not e.completed or e.result == "TrialNotFoundError" else None


def _step_reset_by_id(s: NePSModelState, e: Event) -> NePSModelState | None:
    if s.find(e.args[0]) is None:
        return _step_not_found(s, e)
    return _step_reset(s, e)


def _step_remove(s: NePSModelState, e: Event) -> NePSModelState | None:
    (trial_id,) = e.args
    if s.find(trial_id) is None:
        return _step_not_found(s, e)
    if e.completed and e.result is not None:
        return None
    return replace(
        s,
        trials=tuple(t for t in s.trials if t[0] != trial_id),
        pending=tuple(p for p in s.pending if p != trial_id),
    )


def _step_neps_next(s: NePSModelState, e: Event) -> NePSModelState | None:
    if s.pending and e.completed and e.result in s.pending and e.result.startswith(IMPORTED):
        # NePS sorts pending trials by their sampling time, NaN for an imported one:
        # where those go is up to the sort. It is claimed, out of the queue.
        (worker,) = e.args
        k = s.find(e.result)
        if k is None:  # pragma: no cover - the queue only holds existing trials
            return None
        return replace(
            s.set(k, "evaluating", worker), pending=tuple(p for p in s.pending if p != e.result)
        )
    if s.pending:
        return _step_claim(s, e)
    return _step_sample_claim(s, replace(e, op="sample_claim", result=_as_ids(e.result)))


def _as_ids(result: Any) -> Any:
    return [result] if isinstance(result, str) and not result.endswith("Error") else result


# -- calling an implementation --------------------------------------------------------


def _call_sample(ctx: Ctx, args: tuple[Any, ...]) -> list[Any]:
    (n,) = args
    result = ctx.state.lock_and_sample_trial(ctx.optimizer, worker_id=ctx.worker, n=n)
    return [result] if n is None else list(result)


def _call_report(ctx: Ctx, args: tuple[Any, ...]) -> bool:
    _worker, trial_id, outcome = args
    trial = ctx.state.lock_and_get_trial_by_id(trial_id)
    report = ctx.reporter(trial, outcome)
    ctx.state.lock_and_report_trial_evaluation(trial, report, worker_id=ctx.worker)
    return True


@dataclass(frozen=True)
class Imported:
    """A config evaluated elsewhere, as NePS's ``import_trials`` hands it to the state."""

    id: str
    config: dict[str, Any]
    result: dict[str, Any]


def _call_import(ctx: Ctx, args: tuple[Any, ...]) -> list[Any]:
    (tag,) = args
    item = Imported(f"{IMPORTED}{tag}", {"imported": tag}, {"objective_to_minimize": 1.0})
    return list(ctx.state.lock_and_import_trials([item], worker_id=ctx.worker))


def _call_neps_next(ctx: Ctx, args: tuple[Any, ...]) -> Any:
    """NePS 0.17's ``DefaultWorker._get_next_trial``, step by step, without NePS."""
    (worker,) = args
    state = ctx.state
    with state._optimizer_lock.lock(worker_id=worker):  # noqa: SLF001 - NePS's protocol
        with state._trial_lock.lock(worker_id=worker):  # noqa: SLF001
            trials = state._trial_repo.latest()  # noqa: SLF001
            pending = [t for t in trials.values() if state_of(t) == "pending"]
            if pending:
                earliest = min(pending, key=lambda t: t.metadata.time_sampled)
                earliest.set_evaluating(time_started=time.time(), worker_id=worker)
                state._trial_repo.update_trial(earliest, hints="metadata")  # noqa: SLF001
                return earliest
        sampled = state._sample_trial(  # noqa: SLF001
            ctx.optimizer, worker_id=worker, trials=trials, n=None
        )
        with state._trial_lock.lock(worker_id=worker):  # noqa: SLF001
            sampled.set_evaluating(time_started=time.time(), worker_id=worker)
            state._trial_repo.store_new_trial(sampled)  # noqa: SLF001
        return sampled


def _call_neps_report(ctx: Ctx, args: tuple[Any, ...]) -> bool:
    """NePS 0.17's runtime's report: ``_report_trial_evaluation`` in the trial lock."""
    _worker, trial_id, outcome = args
    state = ctx.state
    trial = state.lock_and_get_trial_by_id(trial_id)
    report = ctx.reporter(trial, outcome)
    with state._trial_lock.lock(worker_id=ctx.worker):  # noqa: SLF001 - NePS's protocol
        state._report_trial_evaluation(trial, report, worker_id=ctx.worker)  # noqa: SLF001
    return True


def _call_reset(ctx: Ctx, args: tuple[Any, ...]) -> None:
    trial = ctx.state.lock_and_get_trial_by_id(args[0])
    trial.reset()
    ctx.state.put_updated_trial(trial)


def _call_corrupt(ctx: Ctx, args: tuple[Any, ...]) -> None:
    trial = ctx.state.lock_and_get_trial_by_id(args[0])
    trial.set_corrupted()
    ctx.state.put_updated_trial(trial)


def _ids(trials: list[Any]) -> list[str]:
    return [t.id for t in trials]


def _same(value: Any) -> Any:
    return value


def _nothing(_args: tuple[Any, ...], _value: Any) -> dict[str, str]:
    return {}


def from_json(value: Any) -> Any:
    """A result read back from JSON as the model compares it: lists become tuples."""
    return tuple(from_json(v) for v in value) if isinstance(value, list) else value


# -- the registry ---------------------------------------------------------------------

_RUNTIME = (
    "_optimizer_lock",
    "_trial_lock",
    "_trial_repo",
    "_sample_trial",
    "_report_trial_evaluation",
)
"""What NePS 0.17's runtime reaches inside a state besides its public methods."""


@dataclass(frozen=True)
class Operation:
    """One operation: how to call, record, model and acknowledge it.

    ``params`` names the event's arguments: ``"worker"`` (the caller),
    ``"claimed"`` (the trial the caller holds), else a value a race plan draws
    from ``plan`` (no ``plan``: races never draw the operation). ``call`` returns
    the raw result, ``encode`` makes it JSON (:func:`from_json` reads it back for the
    model), ``step`` is its :class:`NePSModel` transition (``None``: illegal),
    ``mutates`` whether it writes the run directory, and ``leaves`` maps the
    trials an acknowledged call names to the state it left them in. ``needs`` lists
    the members of NePS 0.17's state it calls: an implementation without them is
    not driven through it (the suite says so).
    """

    name: str
    params: tuple[str, ...]
    call: Callable[[Ctx, tuple[Any, ...]], Any]
    step: Callable[[NePSModelState, Event], NePSModelState | None]
    encode: Callable[[Any], Any] = _same
    leaves: Callable[[tuple[Any, ...], Any], dict[str, str]] = _nothing
    mutates: bool = True
    plan: tuple[tuple[Any, ...], ...] = ()
    needs: tuple[str, ...] = ()
    """What the state must have beyond the seed's API (NePS 0.17's members)."""

    def supported_by(self, state: Any) -> bool:
        """Whether ``state`` has every member this operation calls."""
        return all(hasattr(state, name) for name in self.needs)

    def args(self, drawn: Any, worker: str, claimed: str | None) -> tuple[Any, ...]:
        """The event's arguments for a call by ``worker`` holding ``claimed``."""
        rest = iter(drawn)
        return tuple(
            worker if p == "worker" else claimed if p == "claimed" else next(rest)
            for p in self.params
        )

    def trials(self, args: tuple[Any, ...]) -> tuple[str, ...]:
        """The trial ids ``args`` name."""
        return tuple(a for p, a in zip(self.params, args, strict=True) if p in ("claimed", "trial"))


_OPERATIONS = (
    Operation(
        "sample",
        ("n",),
        _call_sample,
        _step_sample,
        encode=_ids,
        leaves=lambda _, ids: dict.fromkeys(ids, "pending"),
        plan=((1,), (2,)),
    ),
    Operation(
        "sample_claim",
        ("worker",),
        lambda ctx, _: ctx.impl.sample(ctx.state, ctx.optimizer, ctx.worker, 1, claim=True),
        _step_sample_claim,
        encode=_ids,
        leaves=lambda _, ids: dict.fromkeys(ids, "evaluating"),
        plan=((),),
    ),
    Operation(
        "claim",
        ("worker",),
        lambda ctx, _: ctx.impl.claim(ctx.state, ctx.worker),
        _step_claim,
        encode=lambda trial: None if trial is None else trial.id,
        leaves=lambda _, tid: {} if tid is None else {tid: "evaluating"},
        plan=((),),
    ),
    Operation(
        "report",
        ("worker", "claimed", "outcome"),
        _call_report,
        _step_report,
        leaves=lambda args, _: {args[1]: args[2]},
        plan=tuple((o,) for o in OUTCOMES),
    ),
    Operation(
        "read",
        (),
        lambda ctx, _: ctx.state.lock_and_read_trials(),
        _step_read,
        encode=lambda trials: sorted([t.id, state_of(t)] for t in trials.values()),
        mutates=False,
        plan=((),),
    ),
    Operation(
        "get",
        ("trial",),
        lambda ctx, args: ctx.state.lock_and_get_trial_by_id(args[0]),
        _step_get,
        encode=state_of,
        mutates=False,
    ),
    Operation(
        "pending",
        ("n",),
        lambda ctx, args: ctx.state.lock_and_get_next_pending_trial(args[0]),
        _step_pending,
        encode=_ids,
        mutates=False,
        plan=((1,), (3,)),
    ),
    Operation(
        "reset",
        ("trial",),
        _call_reset,
        _step_reset,
        leaves=lambda args, _: {args[0]: "pending"},
    ),
    Operation(
        "corrupt",
        ("trial",),
        _call_corrupt,
        _step_corrupt,
        leaves=lambda args, _: {args[0]: "corrupted"},
    ),
    Operation("consolidate", (), lambda ctx, _: ctx.impl.consolidate(ctx.state), _step_consolidate),
    Operation(
        "worker_id",
        (),
        lambda ctx, _: ctx.state.lock_and_set_new_worker_id(),
        _step_worker_id,
        plan=((),),
        needs=("lock_and_set_new_worker_id",),
    ),
    Operation(
        "budget",
        ("evaluations",),
        lambda ctx, args: ctx.state.lock_and_update_global_budgets(
            total_evaluations_to_spend=args[0],
            total_cost_to_spend=None,
            total_fidelities_to_spend=None,
        ),
        _step_budget,
        plan=((5,), (9,)),
        needs=("lock_and_update_global_budgets",),
    ),
    Operation(
        "get_budget",
        (),
        lambda ctx, _: ctx.state.lock_and_get_global_budgets()[0],
        _step_get_budget,
        mutates=False,
        plan=((),),
        needs=("lock_and_get_global_budgets",),
    ),
    Operation(
        "import",
        ("tag",),
        _call_import,
        _step_import,
        encode=_ids,
        leaves=lambda _, ids: dict.fromkeys(ids, "external") if isinstance(ids, list) else {},
        plan=(("a",), ("b",)),
        needs=("lock_and_import_trials",),
    ),
    Operation(
        "reset_by_id",
        ("trial",),
        lambda ctx, args: ctx.state.lock_and_reset_trial_by_id(args[0]),
        _step_reset_by_id,
        leaves=lambda args, _: {args[0]: "pending"},
        needs=("lock_and_reset_trial_by_id",),
    ),
    Operation(
        "remove",
        ("trial",),
        lambda ctx, args: ctx.state.lock_and_remove_trial_by_id(args[0]),
        _step_remove,
        leaves=lambda args, _: {args[0]: "removed"},
        needs=("lock_and_remove_trial_by_id",),
    ),
    Operation(
        "neps_next",
        ("worker",),
        _call_neps_next,
        _step_neps_next,
        encode=lambda trial: trial.id,
        leaves=lambda _, tid: {tid: "evaluating"},
        plan=((),),
        needs=_RUNTIME,
    ),
    Operation(
        "neps_report",
        ("worker", "claimed", "outcome"),
        _call_neps_report,
        _step_report,
        leaves=lambda args, _: {args[1]: args[2]},
        plan=tuple((o,) for o in OUTCOMES),
        needs=_RUNTIME,
    ),
)

OPS: dict[str, Operation] = {op.name: op for op in _OPERATIONS}
"""Every operation by name; races draw those with a ``plan``, in this order."""
