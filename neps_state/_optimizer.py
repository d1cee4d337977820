"""What the optimizer shares through the state: its info, its state, its samples."""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from neps_state._trial import to_plain

if TYPE_CHECKING:
    from neps_state._trial import Trial


@dataclass(frozen=True, eq=False)
class OptimizerInfo:
    """Which optimizer a run belongs to (``optimizer_info.yaml``).

    Two infos are equal when their names are equal and their ``info`` mappings
    hold the same data: key order does not matter, nor tuple versus list (YAML
    stores both as a list).
    """

    name: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OptimizerInfo):
            return NotImplemented
        return self.name == other.name and to_plain(self.info) == to_plain(other.info)

    def __hash__(self) -> int:
        return hash(self.name)

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready form: ``{name: ..., info: {...}}``."""
        return {"name": self.name, "info": to_plain(self.info)}


@dataclass
class BudgetInfo:
    """The run's budget and how much of it the trials used so far."""

    max_cost_total: float | None = None
    used_cost_budget: float = 0.0
    max_evaluations: int | None = None
    used_evaluations: int = 0

    def clone(self) -> BudgetInfo:
        """A copy."""
        return replace(self)


@dataclass
class SeedSnapshot:
    """The global RNG states: Python's ``random`` and, when installed, numpy's."""

    py_rng: tuple[Any, ...]
    np_rng: tuple[Any, ...] | None = None

    @classmethod
    def new_capture(cls) -> SeedSnapshot:
        """Capture the current global RNG states."""
        return cls(py_rng=random.getstate(), np_rng=_numpy_state())

    def set_as_global_seed_state(self) -> None:
        """Restore the captured RNG states as the process's global ones."""
        random.setstate(self.py_rng)
        if self.np_rng is not None:
            np = _numpy()
            if np is not None:
                np.random.set_state(self.np_rng)

    def recapture(self) -> None:
        """Replace the snapshot with the current global RNG states."""
        self.py_rng = random.getstate()
        self.np_rng = _numpy_state()


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
    return None if np is None else tuple(np.random.get_state())


@dataclass
class OptimizationState:
    """The optimizer's state shared by all workers (``optimizer_state.pkl``)."""

    budget: BudgetInfo | None
    seed_snapshot: SeedSnapshot
    shared_state: dict[str, Any] | None = None


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
        budget=None if budget is None else _adopt_budget(budget),
        seed_snapshot=SeedSnapshot(
            py_rng=getattr(seed, "py_rng", None) or random.getstate(),
            np_rng=getattr(seed, "np_rng", None),
        ),
        shared_state=getattr(obj, "shared_state", None),
    )


def _adopt_budget(budget: object) -> BudgetInfo:
    def first(*names: str) -> Any:
        return next(
            (getattr(budget, n) for n in names if getattr(budget, n, None) is not None), None
        )

    return BudgetInfo(
        max_cost_total=first("max_cost_total", "total_cost_to_spend"),
        used_cost_budget=first("used_cost_budget") or 0.0,
        max_evaluations=first("max_evaluations", "total_evaluations_to_spend"),
        used_evaluations=first("used_evaluations") or 0,
    )


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
