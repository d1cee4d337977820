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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pytest_neps._impl import Impl, state_of
from pytest_neps._linearize import Event

OUTCOMES = ("success", "failed", "crashed")
"""How a trial can be reported."""

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
    """The sequential NePS state: trials ``(id, state, worker)`` and the pending queue."""

    trials: tuple[tuple[str, str, str | None], ...] = ()
    pending: tuple[str, ...] = ()

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
        return f"trials {{{trials}}}, pending {list(state.pending)}"

    def step(self, state: NePSModelState, event: Event) -> tuple[NePSModelState, ...]:
        """The successor state, if ``event`` is legal in ``state`` (empty tuple if not)."""
        op = OPS.get(event.op)
        if op is None:
            raise ValueError(f"NePSModel: unknown operation {event.op!r} in {event}")
        if not (op.mutates or event.completed):
            return (state,)
        nxt = op.step(state, event)
        return () if nxt is None else (nxt,)


def _step_sample(s: NePSModelState, e: Event) -> NePSModelState | None:
    (n,) = e.args
    first = len(s.trials)
    ids = tuple(str(first + k) for k in range(1 if n is None else n))
    if e.completed and tuple(e.result) != ids:
        return None
    return NePSModelState(
        trials=s.trials + tuple((i, "pending", None) for i in ids), pending=s.pending + ids
    )


def _step_sample_claim(s: NePSModelState, e: Event) -> NePSModelState | None:
    (worker,) = e.args
    tid = str(len(s.trials))
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
    if k is None or (e.completed and e.result is not None):
        return None
    nxt = s.set(k, "pending", None)
    queued = {*s.pending, trial_id}
    return replace(nxt, pending=tuple(t[0] for t in nxt.trials if t[0] in queued))


def _step_corrupt(s: NePSModelState, e: Event) -> NePSModelState | None:
    (trial_id,) = e.args
    k = s.find(trial_id)
    if k is None or (e.completed and e.result is not None):
        return None
    nxt = s.set(k, "corrupted", s.trials[k][2])
    return replace(nxt, pending=tuple(p for p in s.pending if p != trial_id))


def _step_consolidate(s: NePSModelState, e: Event) -> NePSModelState | None:
    return s if not e.completed or e.result in (True, False) else None


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


@dataclass(frozen=True)
class Operation:
    """One operation: how to call, record, model and acknowledge it.

    ``params`` names the event's arguments: ``"worker"`` (the caller),
    ``"claimed"`` (the trial the caller holds), else a value a race plan draws
    from ``plan`` (no ``plan``: races never draw the operation). ``call`` returns
    the raw result, ``encode`` makes it JSON (:func:`from_json` reads it back for the
    model), ``step`` is its :class:`NePSModel` transition (``None``: illegal),
    ``mutates`` whether it writes the run directory, and ``leaves`` maps the
    trials an acknowledged call names to the state it left them in.
    """

    name: str
    params: tuple[str, ...]
    call: Callable[[Ctx, tuple[Any, ...]], Any]
    step: Callable[[NePSModelState, Event], NePSModelState | None]
    encode: Callable[[Any], Any] = _same
    leaves: Callable[[tuple[Any, ...], Any], dict[str, str]] = _nothing
    mutates: bool = True
    plan: tuple[tuple[Any, ...], ...] = ()

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
)

OPS: dict[str, Operation] = {op.name: op for op in _OPERATIONS}
"""Every operation by name; races draw those with a ``plan``, in this order."""
