"""The switch: NePS's own code (``neps.run``, its worker, status, clean) on the reference.

:func:`patch_neps` rebinds the name ``NePSState`` in the NePS modules that create
states to :class:`NePSBoundState`: the reference, handing NePS its own classes at
the boundary. NePS's ``Trial``, ``Report``, ``OptimizationState``, ``BudgetInfo``
and ``SeedSnapshot`` go out and come back; an error of the reference is raised as
a class that is both NePS's and the reference's (``TrialAlreadyExistsError`` is
``neps.exceptions.TrialAlreadyExistsError`` too, a lock timeout is portalocker's
``LockException``, every other error is a ``neps.exceptions.NePSError``), so
NePS's ``isinstance`` checks and ``except`` clauses behave as on its own state.
One call at the top of the user's script covers every worker of a run (each
worker runs the script).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from neps_state import _errors
from neps_state._errdump import ErrDump
from neps_state._optimizer import (
    BudgetInfo,
    OptimizationState,
    OptimizerInfo,
    SeedSnapshot,
    adopt_budget,
)
from neps_state._proc import gc_paused
from neps_state._runtime import RuntimeRepo
from neps_state._state import NePSState
from neps_state._trial import MetaData, Report, State, Trial

SUPPORTED_NEPS = ("0.17",)
"""The NePS releases (``major.minor``) whose runtime :func:`patch_neps` is made for."""
NEPS_DIST = "neural-pipeline-search"
_REBOUND = (
    "neps.state.neps_state",
    "neps.state",
    "neps.runtime",
    "neps.api",
    "neps.status.summary",
    "neps.status.status",
    "neps.clean.clean",
)
"""The modules whose name ``NePSState`` is rebound (each imports it by name)."""
_saved: dict[str, Any] = {}

F = TypeVar("F", bound=Callable[..., Any])


def _neps() -> Any:
    """NePS's modules, after checking that a supported version is installed."""
    try:
        version = importlib.metadata.version(NEPS_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise _errors.UsageError(
            "NePS is not installed; for NePS on neps_state: pip install 'neps-state[neps]'"
        ) from None
    if ".".join(version.split(".")[:2]) not in SUPPORTED_NEPS:
        raise _errors.UsageError(
            f"neps_state.patch_neps() supports NePS {', '.join(f'{v}.x' for v in SUPPORTED_NEPS)};"
            f" {NEPS_DIST} {version} is installed (pip install 'neps-state[neps]' installs"
            " a supported one)"
        )
    return importlib.import_module("neps.state")


def patch_neps(state_class: type[NePSState] | None = None) -> type[NePSState]:
    """Make NePS's code in this process use the reference state; idempotent.

    ``state_class``: the reference (default) or a subclass of it (the harness
    passes its negative controls). Raises ``UsageError`` naming the fix if NePS is
    missing or of another version.
    """
    _neps()
    cls = bound(NePSState if state_class is None else state_class)
    for name in _REBOUND:
        module = importlib.import_module(name)
        if name not in _saved:
            _saved[name] = getattr(module, "NePSState")  # noqa: B009 - a module's name
        setattr(module, "NePSState", cls)  # noqa: B010
    return cls


def unpatch_neps() -> None:
    """Give NePS back its own state (a no-op if it was not patched)."""
    for name, original in list(_saved.items()):
        setattr(importlib.import_module(name), "NePSState", original)  # noqa: B010
        del _saved[name]


def is_patched() -> bool:
    """Whether NePS's code in this process uses the reference state."""
    return bool(_saved)


@contextmanager
def neps_patched(state_class: type[NePSState] | None = None) -> Iterator[type[NePSState]]:
    """:func:`patch_neps` for the ``with`` block (as it was before, afterwards)."""
    before = {name: getattr(importlib.import_module(name), "NePSState") for name in _saved}  # noqa: B009
    cls = patch_neps(state_class)
    try:
        yield cls
    finally:
        if before:
            for name, was in before.items():
                setattr(importlib.import_module(name), "NePSState", was)  # noqa: B010
        else:
            unpatch_neps()


# -- NePS's classes ---------------------------------------------------------------------


@functools.cache
def _classes() -> dict[str, Any]:
    trial = importlib.import_module("neps.state.trial")
    optimizer = importlib.import_module("neps.state.optimizer")
    return {
        "Trial": trial.Trial,
        "MetaData": trial.MetaData,
        "Report": trial.Report,
        "State": trial.State,
        "BudgetInfo": optimizer.BudgetInfo,
        "OptimizationState": optimizer.OptimizationState,
        "SeedSnapshot": importlib.import_module("neps.state.seed_snapshot").SeedSnapshot,
        "ErrDump": importlib.import_module("neps.state.err_dump").ErrDump,
    }


@functools.cache
def _neps_states() -> dict[State, Any]:
    neps_state = _classes()["State"]
    return {s: neps_state(s.value) for s in State}


def _new(cls: type, attrs: dict[str, Any]) -> Any:
    # A dataclass instance with its fields set directly: reading every trial builds
    # one of these per trial, and __init__ costs several times as much.
    obj: Any = object.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def to_neps_trial(trial: Trial) -> Any:
    """A copy of ``trial`` in NePS's classes."""
    c = _classes()
    meta = dict(trial.metadata.__dict__)
    meta["state"] = _neps_states()[trial.metadata.state]
    report = trial.report
    neps_report = None
    if report is not None:
        fields = dict(report.__dict__)
        fields["extra"] = dict(report.extra)
        for key, value in fields.items():
            if isinstance(value, list):  # a multi-objective value or a learning curve
                fields[key] = list(value)
        neps_report = _new(c["Report"], fields)
    return _new(
        c["Trial"],
        {
            "config": dict(trial.config),
            "metadata": _new(c["MetaData"], meta),
            "report": neps_report,
            "source": trial.source,
        },
    )


_Made = tuple[Trial, dict[str, Any], dict[str, Any] | None, tuple[str, ...], dict[str, Any], Any]
"""A view trial's conversion: the trial, NePS's metadata and report fields, the
report's list fields, the config and the source."""


class Copies:
    """NePS's trials made from the view's, each trial converted once per version of it.

    A trial of the view is never mutated (a new version is a new object), so its
    conversion is kept while the view holds that object. Every call still hands out
    new objects with new dicts and lists, which the caller may keep and mutate.
    """

    def __init__(self) -> None:
        """No trial converted yet."""
        self._made: dict[str, _Made] = {}

    @staticmethod
    def _convert(trial: Trial) -> _Made:
        converted = to_neps_trial(trial)
        report = converted.report
        fields = None if report is None else report.__dict__
        lists = () if fields is None else tuple(k for k, v in fields.items() if isinstance(v, list))
        return (trial, converted.metadata.__dict__, fields, lists, converted.config, trial.source)

    def hand_out(self, trials: Iterable[tuple[str, Trial]], *, complete: bool) -> dict[str, Any]:
        """New NePS trials for ``trials`` (``complete``: the whole view, so forget the rest)."""
        c = _classes()
        trial_cls, meta_cls, report_cls = c["Trial"], c["MetaData"], c["Report"]
        new = object.__new__
        made = self._made
        kept: dict[str, _Made] = {} if complete else made
        out: dict[str, Any] = {}
        for tid, trial in trials:
            entry = made.get(tid)
            if entry is None or entry[0] is not trial:
                entry = self._convert(trial)
            kept[tid] = entry
            _, meta, fields, lists, config, source = entry
            metadata = new(meta_cls)
            metadata.__dict__ = meta.copy()
            report = None
            if fields is not None:
                report = new(report_cls)
                copied = fields.copy()
                copied["extra"] = dict(copied["extra"])
                for key in lists:
                    copied[key] = list(copied[key])
                report.__dict__ = copied
            neps_trial = new(trial_cls)
            neps_trial.__dict__ = {
                "config": config.copy(),
                "metadata": metadata,
                "report": report,
                "source": source,
            }
            out[tid] = neps_trial
        self._made = kept
        return out


def from_neps_trial(trial: Any) -> Trial:
    """A trial of any class (NePS's) in this package's classes."""
    if isinstance(trial, Trial):
        return trial
    meta = dict(trial.metadata.__dict__)
    meta["state"] = State(str(getattr(meta["state"], "value", meta["state"])))
    report = trial.report
    return Trial(
        config=trial.config,
        metadata=MetaData(**meta),
        report=None if report is None else Report(**report.__dict__),
        source=trial.source,
    )


def _tensor_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return bytes(value.numpy().tobytes())


def from_neps_state(state: Any) -> OptimizationState:
    """NePS's ``OptimizationState`` (or this package's) as this package's."""
    if isinstance(state, OptimizationState):
        return state
    seed = state.seed_snapshot
    cuda = getattr(seed, "torch_cuda_rng", None)
    return OptimizationState(
        budget=None if state.budget is None else adopt_budget(state.budget),
        seed_snapshot=SeedSnapshot(
            py_rng=seed.py_rng,
            np_rng=seed.np_rng,
            torch_rng=_tensor_bytes(getattr(seed, "torch_rng", None)),
            torch_cuda_rng=None if cuda is None else [_tensor_bytes(t) or b"" for t in cuda],
        ),
        shared_state=state.shared_state,
        worker_ids=getattr(state, "worker_ids", None),
    )


def to_neps_budget(budget: BudgetInfo) -> Any:
    """A copy of ``budget`` in NePS's class."""
    return _classes()["BudgetInfo"](**dataclasses.asdict(budget))


def to_neps_state(state: OptimizationState) -> Any:
    """``state`` in NePS's classes (torch's RNG states as tensors again)."""
    c = _classes()
    seed = state.seed_snapshot

    def tensor(data: bytes) -> Any:
        torch = importlib.import_module("torch")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    return c["OptimizationState"](
        budget=None if state.budget is None else to_neps_budget(state.budget),
        seed_snapshot=c["SeedSnapshot"](
            np_rng=seed.np_rng,
            py_rng=seed.py_rng,
            torch_rng=None if seed.torch_rng is None else tensor(seed.torch_rng),
            torch_cuda_rng=None
            if seed.torch_cuda_rng is None
            else [tensor(s) for s in seed.torch_cuda_rng],
        ),
        shared_state=state.shared_state,
        worker_ids=None if state.worker_ids is None else list(state.worker_ids),
    )


# -- errors -----------------------------------------------------------------------------


_DUALS: dict[type[BaseException], type[BaseException]] = {}


def _dual(cls: type[BaseException]) -> type[BaseException]:
    """``cls`` (the reference's) joined with NePS's class of the same meaning (made once)."""
    dual = _DUALS.get(cls)
    if dual is None:
        dual = _DUALS[cls] = _join(cls)
    return dual


def _join(cls: type[BaseException]) -> type[BaseException]:
    exceptions = importlib.import_module("neps.exceptions")
    theirs: type[BaseException] = {
        _errors.TrialAlreadyExistsError: exceptions.TrialAlreadyExistsError,
        _errors.TrialNotFoundError: exceptions.TrialNotFoundError,
    }.get(cls, exceptions.NePSError)
    if issubclass(cls, _errors.LockTimeoutError):
        # NePS's runtime retries a lock timeout (portalocker's) and stops on its own errors.
        theirs = importlib.import_module("portalocker.exceptions").LockException

    def reduce(self: BaseException) -> Any:
        # Pickled as the reference's class alone (the joined one is made per process).
        return (cls, *cls.__reduce__(self)[1:])

    return type(
        cls.__name__,
        (theirs, cls),
        {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__str__": cls.__str__,
            "__reduce__": reduce,
        },
    )


def neps_error(error: _errors.NePSError) -> _errors.NePSError:
    """``error`` as one of NePS's errors too (see :func:`_dual`), the same object."""
    # (The joined class subclasses the error's own, so the object stays what it was.)
    error.__class__ = _dual(type(error))  # type: ignore[assignment]
    return error


def _translating(fn: F) -> F:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _errors.NePSError as e:
            neps_error(e)
            raise

    return call  # type: ignore[return-value]


# -- the state NePS gets ----------------------------------------------------------------


class _BoundRuntimeRepo(RuntimeRepo):
    """``state._trial_repo``, raising NePS's errors."""


for _name in (
    "latest",
    "list_trial_ids",
    "load_trial_from_disk",
    "get_valid_evaluated_trials",
    "store_new_trial",
    "update_trial",
):
    setattr(_BoundRuntimeRepo, _name, _translating(getattr(RuntimeRepo, _name)))


class _Boundary(NePSState):
    """The reference state as NePS's code sees it: NePS's classes in and out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As ``NePSState``'s."""
        super().__init__(*args, **kwargs)
        self._trial_repo = _BoundRuntimeRepo(self)
        self._copies = Copies()

    def _out(self, trial: Trial) -> Any:
        return to_neps_trial(trial)

    def _out_all(self, trials: Iterable[tuple[str, Trial]], *, complete: bool) -> dict[str, Any]:
        with gc_paused():
            return self._copies.hand_out(trials, complete=complete)

    def _hand(self, trial: Trial) -> Any:
        return to_neps_trial(trial)

    def _in(self, trial: Any) -> Trial:
        return from_neps_trial(trial)

    def _out_state(self, state: OptimizationState) -> Any:
        return to_neps_state(state)

    def _in_state(self, state: Any) -> OptimizationState:
        return from_neps_state(state)

    def _out_budget(self, budget: BudgetInfo) -> Any:
        return to_neps_budget(budget)

    def lock_and_get_optimizer_info(self) -> Any:
        """The optimizer info on disk, as NePS's dict."""
        return OptimizerInfo.to_dict(super().lock_and_get_optimizer_info())

    def lock_and_get_errors(self) -> Any:
        """Every error record of the run, in NePS's classes."""
        dump: ErrDump = super().lock_and_get_errors()
        cls = _classes()["ErrDump"]
        return cls([cls.SerializableTrialError(**e.__dict__) for e in dump.errs])


_TRANSLATED = (
    "put_updated_trial",
    "all_trial_ids",
    "unsafe_retry_get_trial_by_id",
    "_sample_trial",
    "_report_trial_evaluation",
    "_get_optimizer_state",
)
_BOUND: dict[type[NePSState], type[NePSState]] = {}


def bound(cls: type[NePSState] = NePSState) -> type[NePSState]:
    """``cls`` (the reference or a subclass of it) handing NePS its own classes (made once).

    Its errors are NePS's too (see :func:`_dual`).
    """
    made = _BOUND.get(cls)
    if made is not None:
        return made
    name = "NePSBoundState" if cls is NePSState else f"NePSBound{cls.__name__}"
    made = type(name, (_Boundary, cls), {"__module__": __name__, "__qualname__": name})
    for name in [*(n for n in dir(made) if n.startswith("lock_and_")), *_TRANSLATED]:
        setattr(made, name, _translating(getattr(made, name)))
    for name in ("create_or_load", "load", "repair"):
        method = getattr(made, name).__func__
        setattr(made, name, classmethod(_translating(method)))
    _BOUND[cls] = made
    globals()[made.__name__] = made  # (pickled by name: a handle travels to workers)
    return made


NePSBoundState = bound()
"""The reference as :func:`patch_neps` gives it to NePS."""

__all__ = [
    "SUPPORTED_NEPS",
    "NePSBoundState",
    "bound",
    "is_patched",
    "neps_patched",
    "patch_neps",
    "unpatch_neps",
]
