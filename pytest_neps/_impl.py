"""How the harness drives a state implementation: the adapter behind ``--neps-impl``.

An implementation is any class with NePS's ``NePSState`` API (``create_or_load``,
``lock_and_sample_trial``, ...). The harness needs a few things beyond that API,
and this adapter supplies them with fallbacks, so a downstream state needs no
changes to be tested:

- ``claim``: the atomic ``lock_and_claim_next_pending_trial`` if the class has it,
  else the seed's two steps (get the next pending trial, then put it evaluating);
- ``sample(claim=True)``: sampling a trial already evaluating, in one commit, if
  the class supports it, else the seed's two steps;
- ``settings``: passed to ``create_or_load`` only if it takes them;
- ``consolidate``: ``lock_and_consolidate_cache`` if the class has it.

Give ``--neps-impl`` either such a class or an :class:`Impl` (``module:attribute``).
Implementation settings travel as environment variables, which worker processes
inherit (the reference reads ``NEPS_STATE_*``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neps_state import OptimizationState, OptimizerInfo, SeedSnapshot, Settings
from pytest_neps._reference import REFERENCE

DEFAULT_INFO = OptimizerInfo(name="pytest-neps", info={"loop": "claim-or-sample"})
"""The optimizer info of every run the harness creates (fixtures, swarms, machines)."""


def resolve(obj: Any) -> Any:
    """An object given directly, or as an import path ``"package.module:attribute"``."""
    if not isinstance(obj, str):
        return obj
    module, _, attr = obj.partition(":")
    if not attr:
        raise ValueError(f"{obj!r} is not of the form 'package.module:attribute'")
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


@functools.cache
def _accepts(fn: Any, name: str) -> bool:
    # Called with unbound functions (class attributes), so the cache holds one
    # entry per implementation, not per call.
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Impl:
    """A state implementation, named by import path so worker processes can load it."""

    target: str = REFERENCE

    @property
    def cls(self) -> Any:
        """The implementation's class."""
        return resolve(self.target)

    def create(
        self,
        path: Path,
        info: OptimizerInfo = DEFAULT_INFO,
        settings: Settings | None = None,
        optimizer_state: OptimizationState | None = None,
    ) -> Any:
        """Create (or load, if it exists with the same info) a run directory."""
        fresh = OptimizationState(budget=None, seed_snapshot=SeedSnapshot.new_capture())
        return self.cls.create_or_load(
            path,
            optimizer_info=info,
            optimizer_state=optimizer_state or fresh,
            **self._settings(settings),
        )

    def load(self, path: Path, settings: Settings | None = None) -> Any:
        """Open another handle on an existing run directory."""
        return self.cls.create_or_load(path, load_only=True, **self._settings(settings))

    def _settings(self, settings: Settings | None) -> dict[str, Any]:
        # Only the reference (and look-alikes) take settings; others read the environment.
        if settings is None or not _accepts(self.cls.create_or_load, "settings"):
            return {}
        return {"settings": settings}

    def sample(self, state: Any, ask: Any, worker: str, n: int, *, claim: bool) -> list[Any]:
        """Sample ``n`` trials; with ``claim`` the first is evaluating by ``worker``.

        Atomic where the implementation supports ``claim=True``; else the seed's two
        steps (sample, then put the trial evaluating), whose race the harness reports.
        """
        if claim and _accepts(type(state).lock_and_sample_trial, "claim"):
            return list(state.lock_and_sample_trial(ask, worker_id=worker, n=n, claim=True))
        trials = list(state.lock_and_sample_trial(ask, worker_id=worker, n=n))
        if claim and trials:
            trials[0].set_evaluating(time_started=time.time(), worker_id=worker)
            state.put_updated_trial(trials[0], hints="metadata")
        return trials

    def claim(self, state: Any, worker: str) -> Any:
        """Take the next pending trial and mark it evaluating by ``worker``."""
        claim = getattr(state, "lock_and_claim_next_pending_trial", None)
        if claim is not None:
            return claim(worker)
        trial = state.lock_and_get_next_pending_trial()
        if trial is not None:
            trial.set_evaluating(time_started=time.time(), worker_id=worker)
            state.put_updated_trial(trial, hints="metadata")
        return trial

    def consolidate(self, state: Any) -> bool:
        """Force a cache consolidation; False if the implementation has no such operation."""
        consolidate = getattr(state, "lock_and_consolidate_cache", None)
        if consolidate is None:
            return False
        consolidate()
        return True


def state_of(trial: Any) -> str:
    """A trial's state as its string value, for any implementation's trial class."""
    state = trial.metadata.state
    return str(getattr(state, "value", state))


def is_trial(value: Any) -> bool:
    """Whether ``value`` looks like a trial of some implementation (id, config, metadata)."""
    return all(hasattr(value, name) for name in ("id", "config", "metadata"))


def as_impl(obj: Any) -> Impl:
    """An :class:`Impl` from an ``Impl``, a class, or an import path to either."""
    if isinstance(obj, Impl):
        return obj
    if isinstance(obj, str):
        target = resolve(obj)
        return target if isinstance(target, Impl) else Impl(obj)
    return Impl(f"{obj.__module__}:{obj.__qualname__}")
