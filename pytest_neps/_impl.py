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
- ``consolidate``: ``lock_and_consolidate_cache`` if the class has it;
- ``errors``: the implementation's own error classes, by which the harness tells
  a typed refusal from a crash: ``cls.neps_errors`` (classes or import paths) if
  the class declares them, else the ``NePSError`` of the package of the class or
  of one of its bases.

Give ``--neps-impl`` either such a class or an :class:`Impl` (``module:attribute``).
Implementation settings travel as environment variables, which worker processes
inherit (the reference reads ``NEPS_STATE_*``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neps_state import (
    NePSState,
    OptimizationState,
    OptimizerInfo,
    SampledConfig,
    SeedSnapshot,
    Settings,
    TrialRepo,
    set_fault_hook,
)
from neps_state._journal import HEADER_SIZE, MAGIC, parse_frames
from neps_state._records import decode
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
    pause: float = 0.0
    """Seconds between the two steps of the seed's claim (the fallback), so that a
    race that needs another worker in between happens every time it can."""

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
            time.sleep(self.pause)
            trials[0].set_evaluating(time_started=time.time(), worker_id=worker)
            state.put_updated_trial(trials[0], hints="metadata")
        return trials

    def two_step_claims(self) -> bool:
        """Whether claiming (or sampling a claimed trial) falls back to the seed's two steps."""
        cls = self.cls
        atomic_claim = callable(getattr(cls, "lock_and_claim_next_pending_trial", None))
        return not (atomic_claim and _accepts(cls.lock_and_sample_trial, "claim"))

    def claim(self, state: Any, worker: str) -> Any:
        """Take the next pending trial and mark it evaluating by ``worker``."""
        claim = getattr(state, "lock_and_claim_next_pending_trial", None)
        if claim is not None:
            return claim(worker)
        trial = state.lock_and_get_next_pending_trial()
        if trial is not None:
            time.sleep(self.pause)
            trial.set_evaluating(time_started=time.time(), worker_id=worker)
            state.put_updated_trial(trial, hints="metadata")
        return trial

    def env(self, **settings: object) -> dict[str, str]:
        """Environment variables that carry ``settings`` (``Settings`` field names).

        ``cls.neps_settings_env(**settings)`` if the class defines it, else the
        reference's ``NEPS_STATE_<NAME>`` (which other implementations ignore).
        """
        mapper = getattr(self.cls, "neps_settings_env", None)
        if mapper is not None:
            return {str(k): str(v) for k, v in mapper(**settings).items()}
        return {f"NEPS_STATE_{k.upper()}": str(v) for k, v in settings.items()}

    def cache_trial_ids(self, root: Path) -> set[str] | None:
        """The trial ids in the run's cache file as written (before any recovery).

        ``cls.neps_cache_trial_ids(root)`` if the class defines it; the reference's
        journal for the reference and its subclasses; None (not checked) otherwise.
        A cache that does not parse raises ``AssertionError``.
        """
        reader = getattr(self.cls, "neps_cache_trial_ids", None)
        if reader is not None:
            return set(reader(root))
        if isinstance(self.cls, type) and issubclass(self.cls, NePSState):
            return _journal_ids(root)
        return None

    def calls_fault_hook(self) -> bool:
        """Whether the implementation reaches ``neps_state``'s fault points (tried once)."""
        return _calls_fault_hook(self.target)

    def errors(self) -> tuple[type[BaseException], ...]:
        """The implementation's own error classes (see the module's docstring)."""
        return _errors_of(self.cls)

    def is_typed(self, error: BaseException) -> bool:
        """Whether ``error`` is one of the implementation's own errors."""
        return isinstance(error, self.errors())

    def consolidate(self, state: Any) -> bool:
        """Force a cache consolidation; False if the implementation has no such operation."""
        consolidate = getattr(state, "lock_and_consolidate_cache", None)
        if consolidate is None:
            return False
        consolidate()
        return True


def _journal_ids(root: Path) -> set[str]:
    data = (root / "configs" / TrialRepo.CACHE_FILE_NAME).read_bytes()
    if not data.startswith(MAGIC):
        raise AssertionError("the cache has no journal header")
    payloads, end = parse_frames(data, HEADER_SIZE)
    if end != len(data):
        raise AssertionError(f"the cache ends in {len(data) - end} unparsable bytes")
    return {t.id for p in payloads for t in decode(p, root).trials}


@functools.cache
def _calls_fault_hook(target: str) -> bool:
    impl = Impl(target)
    reached: list[str] = []
    previous = set_fault_hook(reached.append)
    try:
        with tempfile.TemporaryDirectory(prefix="neps-hook-probe-") as tmp:
            state = impl.create(Path(tmp) / "run")
            impl.sample(state, _probe_ask, "probe", 1, claim=False)
    finally:
        set_fault_hook(previous)
    return bool(reached)


def _probe_ask(trials: Any, budget_info: Any, n: int | None = None) -> Any:
    del budget_info
    sample = SampledConfig(id=str(len(trials)), config={"i": len(trials)})
    return sample if n is None else [sample]


@functools.cache
def _errors_of(cls: Any) -> tuple[type[BaseException], ...]:
    declared = getattr(cls, "neps_errors", None)
    if declared is not None:
        return tuple(resolve(e) for e in declared)
    for klass in cls.__mro__:
        package = importlib.import_module(klass.__module__.partition(".")[0])
        root = getattr(package, "NePSError", None)
        if isinstance(root, type) and issubclass(root, BaseException):
            return (root,)
    return ()


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
