"""What the optimizer shares through the state: its info, its state, its samples."""

from __future__ import annotations

import copy
import importlib.util
import pickle
import random
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from neps_state import _pickles
from neps_state._errors import KeptByNePSStateError, UsageError
from neps_state._trial import to_plain

if TYPE_CHECKING:
    from neps_state._trial import Trial


@dataclass(frozen=True, eq=False)
class OptimizerInfo(Mapping[str, Any]):
    """Which optimizer a run belongs to (``optimizer_info.yaml``).

    Also a mapping with NePS's keys (``name``, ``info`` and, if set, ``derived``),
    so NePS's code reads it as its own ``OptimizerInfo`` dict. ``derived`` holds
    what the optimizer computed from its settings (e.g. the fidelity's name); it
    is informational and never compared. Two infos are equal when their names are
    equal and their ``info`` mappings hold the same data: key order does not
    matter, nor tuple versus list (YAML stores both as a list).
    """

    name: str
    info: Mapping[str, Any] = field(default_factory=dict)
    derived: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, value: OptimizerInfo | Mapping[str, Any]) -> OptimizerInfo:
        """``value`` as an ``OptimizerInfo``: itself, or a mapping with NePS's keys."""
        if isinstance(value, OptimizerInfo):
            return value
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise UsageError(
                f"optimizer_info must be an OptimizerInfo or a mapping with a string 'name':"
                f" {value!r}"
            )
        derived = value.get("derived")
        return cls(
            name=value["name"],
            info=dict(value.get("info") or {}),
            derived=None if derived is None else dict(derived),
        )

    def __getitem__(self, key: str) -> Any:
        if key in ("name", "info") or (key == "derived" and self.derived is not None):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from ("name", "info") if self.derived is None else ("name", "info", "derived")

    def __len__(self) -> int:
        return 2 if self.derived is None else 3

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping) and not isinstance(other, OptimizerInfo):
            try:
                other = OptimizerInfo.of(other)
            except UsageError:
                return False
        if not isinstance(other, OptimizerInfo):
            return NotImplemented
        return self.name == other.name and to_plain(self.info) == to_plain(other.info)

    def __hash__(self) -> int:
        return hash(self.name)

    def accepts(self, provided: OptimizerInfo) -> bool:
        """Whether a run made with this info may go on with ``provided`` (NePS's rule).

        The names are equal and every setting recorded here has the same value in
        ``provided``; settings only ``provided`` has are accepted (a newer optimizer
        version records more). ``derived`` is not compared.
        """
        if self.name != provided.name:
            return False
        mine, theirs = to_plain(self.info), to_plain(provided.info)
        return all(k in theirs and theirs[k] == v for k, v in mine.items())

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready form: ``{name: ..., info: {...}}`` (and ``derived`` if set)."""
        out = {"name": self.name, "info": to_plain(self.info)}
        if self.derived is not None:
            out["derived"] = to_plain(self.derived)
        return out

    @property
    def fidelity_name(self) -> str | None:
        """The config key of the fidelity, as ``derived`` records it (NePS's place)."""
        fidelity = (self.derived or {}).get("fidelity") or {}
        name = fidelity.get("name") if isinstance(fidelity, Mapping) else None
        return name if isinstance(name, str) else None


_BUDGET_ALIASES = {
    "max_cost_total": "total_cost_to_spend",
    "max_evaluations": "total_evaluations_to_spend",
}
"""The seed's names of the run's budget, and NePS 0.17's (renamed in NePS in 2025)."""


@dataclass(init=False)
class BudgetInfo:
    """The run's budgets and how much of them the trials used so far.

    NePS 0.17's fields: each worker's budget (``worker_*_to_spend``) and the whole
    run's (``total_*_to_spend``). The seed's names still work, as aliases:
    ``max_cost_total`` is ``total_cost_to_spend``, ``max_evaluations`` is
    ``total_evaluations_to_spend``.
    """

    worker_cost_to_spend: float | None
    used_cost_budget: float
    worker_evaluations_to_spend: int | None
    used_evaluations: int
    worker_fidelities_to_spend: float | None
    total_evaluations_to_spend: int | None
    total_cost_to_spend: float | None
    total_fidelities_to_spend: float | None

    def __init__(  # noqa: PLR0917 - NePS's fields, positional as in its dataclass
        self,
        worker_cost_to_spend: float | None = None,
        used_cost_budget: float = 0.0,
        worker_evaluations_to_spend: int | None = None,
        used_evaluations: int = 0,
        worker_fidelities_to_spend: float | None = None,
        total_evaluations_to_spend: int | None = None,
        total_cost_to_spend: float | None = None,
        total_fidelities_to_spend: float | None = None,
        *,
        max_cost_total: float | None = None,
        max_evaluations: int | None = None,
    ) -> None:
        """NePS's keywords, or the seed's ``max_cost_total`` / ``max_evaluations``."""
        self.worker_cost_to_spend = worker_cost_to_spend
        self.used_cost_budget = used_cost_budget
        self.worker_evaluations_to_spend = worker_evaluations_to_spend
        self.used_evaluations = used_evaluations
        self.worker_fidelities_to_spend = worker_fidelities_to_spend
        self.total_evaluations_to_spend = (
            max_evaluations if total_evaluations_to_spend is None else total_evaluations_to_spend
        )
        self.total_cost_to_spend = (
            max_cost_total if total_cost_to_spend is None else total_cost_to_spend
        )
        self.total_fidelities_to_spend = total_fidelities_to_spend

    @property
    def max_cost_total(self) -> float | None:
        """The seed's name of ``total_cost_to_spend``."""
        return self.total_cost_to_spend

    @max_cost_total.setter
    def max_cost_total(self, value: float | None) -> None:
        self.total_cost_to_spend = value

    @property
    def max_evaluations(self) -> int | None:
        """The seed's name of ``total_evaluations_to_spend``."""
        return self.total_evaluations_to_spend

    @max_evaluations.setter
    def max_evaluations(self, value: int | None) -> None:
        self.total_evaluations_to_spend = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A budget pickled under the seed's names (before NePS 0.17's) reads as today's.
        fresh = BudgetInfo()
        for key, value in state.items():
            setattr(fresh, _BUDGET_ALIASES.get(key, key), value)
        self.__dict__.update(fresh.__dict__)

    def clone(self) -> BudgetInfo:
        """A copy."""
        return copy.copy(self)


def _torch() -> Any:
    """torch, when it is importable (NePS always imports it); None otherwise."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if importlib.util.find_spec("torch") is None:
        return None
    import torch  # noqa: PLC0415 - optional, and costly to import: only when installed

    return torch


@dataclass(eq=False)
class SeedSnapshot:
    """The global RNG states: Python's ``random`` and, when installed, numpy's and torch's.

    NePS's fields, so NePS's optimizers sample the same sequence on either state.
    torch's states are kept as bytes (a tensor would need torch's own unpickler,
    which runs any code): ``torch_rng`` the CPU generator's, ``torch_cuda_rng``
    one per CUDA device.
    """

    py_rng: tuple[Any, ...]
    np_rng: tuple[Any, ...] | None = None
    torch_rng: bytes | None = None
    torch_cuda_rng: list[bytes] | None = None

    @classmethod
    def new_capture(cls) -> SeedSnapshot:
        """Capture the current global RNG states."""
        snapshot = cls(py_rng=random.getstate())
        snapshot.recapture()
        return snapshot

    def set_as_global_seed_state(self) -> None:
        """Restore the captured RNG states as the process's global ones."""
        random.setstate(self.py_rng)
        if self.np_rng is not None:
            np = _numpy()
            if np is not None:
                np.random.set_state(self.np_rng)
        torch = None if self.torch_rng is None and self.torch_cuda_rng is None else _torch()
        if torch is not None:
            if self.torch_rng is not None:
                torch.random.set_rng_state(_tensor(torch, self.torch_rng))
            if self.torch_cuda_rng is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([_tensor(torch, s) for s in self.torch_cuda_rng])

    def recapture(self) -> None:
        """Replace the snapshot with the current global RNG states."""
        self.py_rng = random.getstate()
        self.np_rng = _numpy_state()
        torch = _torch()
        if torch is not None:
            self.torch_rng = _bytes(torch.random.get_rng_state())
            if torch.cuda.is_available():
                self.torch_cuda_rng = [_bytes(s) for s in torch.cuda.get_rng_state_all()]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeedSnapshot):
            return NotImplemented
        return (
            self.py_rng == other.py_rng
            and _same_np_state(self.np_rng, other.np_rng)
            and (self.torch_rng, self.torch_cuda_rng) == (other.torch_rng, other.torch_cuda_rng)
        )

    __hash__ = None  # type: ignore[assignment]


def _bytes(tensor: Any) -> bytes:
    return bytes(tensor.numpy().tobytes())


def _tensor(torch: Any, data: bytes) -> Any:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _same_np_state(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    # (name, keys array, pos, has_gauss, cached_gaussian): the array compares elementwise.
    return len(a) == len(b) and all(
        bool((x == y).all()) if hasattr(x, "shape") else x == y for x, y in zip(a, b, strict=True)
    )


def _numpy() -> Any:
    # numpy is optional; importing it costs ~0.1 s, so only when it is installed
    # and the snapshot needs it.
    if "numpy" in sys.modules:
        return sys.modules["numpy"]
    try:
        import numpy as np  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return np


def _numpy_state() -> tuple[Any, ...] | None:
    np = _numpy()
    if np is None:
        return None
    name, keys, *rest = np.random.get_state(legacy=True)
    return (name, keys.copy(), *rest)


@dataclass
class OptimizationState:
    """The optimizer's state shared by all workers (``optimizer_state.pkl``).

    ``worker_ids`` are the ids given out by ``lock_and_set_new_worker_id``, in order.
    """

    budget: BudgetInfo | None
    seed_snapshot: SeedSnapshot
    shared_state: dict[str, Any] | None = None
    worker_ids: list[str] | None = None


def kept_by_neps_state(data: bytes) -> Any:
    """What ``optimizer_state.pkl`` unpickles to: its state, when neps_state reads it.

    The file a state of this package writes is a pickle of a call to this function
    with the state's own pickle, so that NePS's own state (unpatched, say in a worker
    that did not call ``neps_state.patch_neps()``) is refused by a clear error before
    it reads or writes anything, instead of misreading the run.
    """
    reader = _pickles.loading()
    if reader is None:
        if "neps.exceptions" in sys.modules:
            from neps_state._neps import neps_error  # noqa: PLC0415 - NePS is loaded

            raise neps_error(KeptByNePSStateError())
        raise KeptByNePSStateError
    path, allow = reader
    return _pickles.loads(data, path, allow=allow)


class _Kept:
    """Pickles as ``kept_by_neps_state(data)``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (kept_by_neps_state, (self.data,))


def state_file_bytes(data: bytes) -> bytes:
    """The bytes of ``optimizer_state.pkl`` for the state pickled as ``data``."""
    return pickle.dumps(_Kept(data), protocol=pickle.HIGHEST_PROTOCOL)


def adopt_state(obj: object) -> OptimizationState | None:
    """``obj`` as this package's ``OptimizationState``, if it is one of any implementation.

    NePS writes its own class (with its own budget fields and RNG snapshot); a run
    NePS wrote is read through this. None when ``obj`` is no optimization state.
    """
    if isinstance(obj, OptimizationState):
        return obj
    if type(obj).__name__ != "OptimizationState" or not hasattr(obj, "seed_snapshot"):
        return None
    seed, budget = getattr(obj, "seed_snapshot", None), getattr(obj, "budget", None)
    return OptimizationState(
        budget=None if budget is None else adopt_budget(budget),
        # (NePS's torch states are tensors, read as stand-ins: torch's stream restarts.)
        seed_snapshot=SeedSnapshot(
            py_rng=getattr(seed, "py_rng", None) or random.getstate(),
            np_rng=getattr(seed, "np_rng", None),
        ),
        shared_state=getattr(obj, "shared_state", None),
        worker_ids=getattr(obj, "worker_ids", None),
    )


_BUDGET_FIELDS = tuple(f.name for f in fields(BudgetInfo))


def adopt_budget(budget: object) -> BudgetInfo:
    """Any implementation's budget (NePS's of any version) as this package's."""
    if isinstance(budget, BudgetInfo):
        return budget
    out = BudgetInfo()
    for old, new in (*_BUDGET_ALIASES.items(), ("cost_to_spend", "worker_cost_to_spend")):
        value = getattr(budget, old, None)
        if value is not None:
            setattr(out, new, value)
    for name in _BUDGET_FIELDS:
        value = getattr(budget, name, None)
        if value is not None:
            setattr(out, name, value)
    return out


@dataclass(frozen=True)
class SampledConfig:
    """A configuration proposed by the optimizer, under the id it chose."""

    id: str
    config: Mapping[str, Any]
    previous_config_id: str | None = None


class AskFunction(Protocol):
    """The optimizer: proposes one config (``n=None``) or a list of ``n``."""

    def __call__(
        self,
        trials: Mapping[str, Trial],
        budget_info: BudgetInfo | None,
        n: int | None = None,
    ) -> SampledConfig | list[SampledConfig]:
        """Propose configurations given every trial so far."""
        ...
