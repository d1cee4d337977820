"""The worker process of a swarm: the standard loop, recorded, with its kill plan.

The loop: claim the earliest pending trial; if there is none, sample (one trial:
sampled already claimed, in one commit; a batch: stored pending, then claimed);
evaluate; report. Until the trial budget is sampled and nothing is pending.
Every state operation is recorded (see ``_history``); a kill plan SIGKILLs the
worker after ``k`` operations or at a named fault point inside a later one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neps_state import (
    NePSState,
    Settings,
    Trial,
    set_fault_hook,
)
from pytest_neps._evaluate import evaluate
from pytest_neps._faults import die
from pytest_neps._fscalls import FsCallKiller
from pytest_neps._history import HistoryWriter
from pytest_neps._impl import as_impl, is_trial, resolve
from pytest_neps._ops import complete


@dataclass(frozen=True)
class KillPlan:
    """Kill after ``after_ops`` state operations; at ``point`` during a later one, if given.

    ``point`` is a fault point of ``neps_state``, or ``"fs:N"``: just before the
    ``N``-th file change of an operation (``_fscalls``: any implementation).

    With ``freeze`` the worker stops itself (SIGSTOP) at the point instead of dying,
    after announcing it: the swarm then cuts the power of every worker at once.
    """

    after_ops: int
    point: str | None = None
    freeze: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; picklable."""

    worker_id: str
    run_dir: Path
    history: Path
    impl: Any
    optimizer: Any
    evaluation: Any
    budget: int
    batch: int
    settings: Settings
    kill: KillPlan | None = None
    log_level: int = logging.WARNING


class _Budgeted:
    """Wraps the ask function so that no more than ``budget`` trials are ever sampled."""

    def __init__(self, ask: Callable[..., Any], budget: int) -> None:
        self.ask = ask
        self.budget = budget

    def __call__(self, trials: Mapping[str, Trial], budget_info: Any, n: int | None = None) -> Any:
        room = self.budget - len(trials)
        if room <= 0:
            return []
        # One trial is asked for as NePS's runtime does (n=None): some of NePS's
        # optimizers (the bracket ones) refuse a batch size, even of one.
        k = min(n or 1, room)
        proposed = self.ask(trials=trials, budget_info=budget_info, n=None if k == 1 else k)
        return proposed if isinstance(proposed, list) else [proposed]


class _Recorder:
    """Records each state operation and fires the worker's kill plan."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.history = HistoryWriter(spec.history, spec.worker_id)
        self.done = 0
        self._hooked = False
        self._previous: Callable[[str], None] | None = None

    def close(self) -> None:
        """Give back the fault hook this worker set, and close its history.

        A process that runs other tasks afterwards (a Dask worker's) must not keep a
        kill plan that this worker never reached: the next task would die by it.
        """
        if self._hooked:
            set_fault_hook(self._previous)
            self._hooked = False
        self.history.close()

    def run(self, op: str, fn: Callable[[], Any], trials: Sequence[str] = ()) -> Any:
        plan = self.spec.kill
        killer: Any = contextlib.nullcontext()
        if plan is not None and plan.point is not None and self.done >= plan.after_ops:
            if plan.point.startswith(FS_POINT):
                nth = int(plan.point[len(FS_POINT) :])
                killer = FsCallKiller(self.spec.run_dir, nth, before_dying=self._announce)
            else:
                previous = set_fault_hook(self._kill_at(plan.point))
                if not self._hooked:
                    self._previous, self._hooked = previous, True
        seq = self.history.start(op, trials)
        try:
            with killer:
                value = fn()
        except BaseException as e:
            self.history.end(seq, ok=False, trials=trials, result=f"{type(e).__name__}: {e}")
            raise
        ids = _ids(value) or list(trials)
        self.history.end(seq, ok=True, trials=ids, result=_result(op, value))
        self.done += 1
        if plan is not None and plan.point is None and self.done == plan.after_ops:
            self.history.kill("after-op", self.done)
            die()
        return value

    def _announce(self, what: str) -> None:
        self.history.kill(f"{FS_POINT}{what}", self.done)

    def _kill_at(self, point: str) -> Callable[[str], None]:
        freeze = self.spec.kill is not None and self.spec.kill.freeze

        def hook(reached: str) -> None:
            if reached == point:
                self.history.kill(point, self.done)
                if freeze:
                    os.kill(os.getpid(), signal.SIGSTOP)
                die()

        return hook


def _ids(value: Any) -> list[str]:
    if is_trial(value):
        return [value.id]
    if isinstance(value, list):
        return [t.id for t in value if is_trial(t)]
    return []


def _result(op: str, value: Any) -> str:
    if op == "claim" and value is None:
        return "none"
    if op == "report":
        return str(value)
    return "ok"


def resolve_optimizer(spec: Any) -> Any:
    """The ask function: an object, ``"module:attribute"``, or ``"neps:NAME"`` (NePS's own)."""
    if isinstance(spec, str) and spec.startswith(NEPS_PREFIX):
        from pytest_neps.upstream import neps_optimizer  # noqa: PLC0415 - needs NePS

        return neps_optimizer(spec[len(NEPS_PREFIX) :])
    return resolve(spec)


NEPS_PREFIX = "neps:"
FS_POINT = "fs:"


def worker_main(spec: WorkerSpec) -> dict[str, int]:
    """The standard worker loop; returns how many trials this worker evaluated.

    Claim the earliest pending trial; if there is none, sample (one trial: sampled
    already claimed, in one commit; a batch: stored pending, then claimed).
    """
    logging.getLogger("neps_state").setLevel(spec.log_level)
    rec = _Recorder(spec)
    try:
        return _loop(spec, rec)
    finally:
        rec.close()


def _loop(spec: WorkerSpec, rec: _Recorder) -> dict[str, int]:
    impl = as_impl(spec.impl)
    ask = _Budgeted(resolve_optimizer(spec.optimizer), spec.budget)
    fn = resolve(spec.evaluation)
    wid = spec.worker_id
    state: NePSState = rec.run("create", lambda: impl.create(spec.run_dir, settings=spec.settings))
    evaluated = 0
    while True:
        trial: Trial | None = rec.run("claim", lambda: impl.claim(state, wid))
        if trial is None:
            claim = spec.batch == 1
            op = "sample_claim" if claim else "sample"
            sample = functools.partial(impl.sample, state, ask, wid, spec.batch, claim=claim)
            sampled = rec.run(op, sample)
            if not sampled:
                break
            if not claim:
                continue
            trial = sampled[0]
        outcome = evaluate(fn, trial.config)
        report = complete(
            trial,
            outcome.report_as,
            time_end=time.time(),
            objective=outcome.objective,
            cost=outcome.cost,
            err=outcome.err,
            tb=outcome.tb,
            evaluation_duration=outcome.duration,
        )
        rec.run("report", functools.partial(_report, state, trial, report, wid), [trial.id])
        evaluated += 1
    return {"evaluated": evaluated}


def _report(state: NePSState, trial: Trial, report: Any, worker_id: str) -> str:
    state.lock_and_report_trial_evaluation(trial, report, worker_id=worker_id)
    return str(report.reported_as)
