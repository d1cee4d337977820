"""Upstream NePS's own ``NePSState`` behind the harness: an adapter that only translates types.

    neps-state powerloss --impl pytest_neps.upstream:UpstreamNePSState
    pytest --neps-impl pytest_neps.upstream:UpstreamNePSState

Needs ``neural-pipeline-search`` (tested with 0.17.0; ``pip install
'neps-state[neps]'``). The harness hands over this project's ``OptimizerInfo``
and ``OptimizationState``; NePS wants a mapping and its own classes, so those
are translated. Everything else is NePS's own code, defects included (see the
seed defects D1-D9 in the project's design notes): nothing is fixed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neps_state import BudgetInfo, OptimizationState, OptimizerInfo


class UpstreamNePSState:
    """A NePS ``NePSState``; every attribute but ``create_or_load`` is NePS's own."""

    def __init__(self, inner: Any) -> None:
        """Wrap the NePS state ``inner``."""
        self._inner = inner
        self.path = Path(inner.path)

    @classmethod
    def create_or_load(
        cls,
        path: Path | str,
        *,
        load_only: bool = False,
        optimizer_info: OptimizerInfo | None = None,
        optimizer_state: OptimizationState | None = None,
    ) -> UpstreamNePSState:
        """NePS's ``create_or_load``, with the info and state in NePS's types."""
        from neps.state import NePSState  # noqa: PLC0415 - an optional dependency

        return cls(
            NePSState.create_or_load(
                Path(path),
                load_only=load_only,
                optimizer_info=None if optimizer_info is None else _info(optimizer_info),
                optimizer_state=None if optimizer_state is None else _state(optimizer_state),
            )
        )

    # -- the seed API, NePS's own code -----------------------------------------------

    def lock_and_sample_trial(self, optimizer: Any, *, worker_id: str, n: int | None = None) -> Any:
        """NePS's sampling (it reads ``id``, ``config``, ``previous_config_id`` of a sample)."""
        return self._inner.lock_and_sample_trial(optimizer, worker_id=worker_id, n=n)

    def lock_and_report_trial_evaluation(self, trial: Any, report: Any, *, worker_id: str) -> None:
        """NePS's report."""
        self._inner.lock_and_report_trial_evaluation(trial, report, worker_id=worker_id)

    def put_updated_trial(self, trial: Any, *, hints: Any = None) -> None:
        """NePS's update."""
        self._inner.put_updated_trial(trial, hints=hints)

    def lock_and_read_trials(self) -> dict[str, Any]:
        """NePS's read."""
        trials: dict[str, Any] = self._inner.lock_and_read_trials()
        return trials

    def all_trial_ids(self) -> list[str]:
        """NePS's ids."""
        ids: list[str] = self._inner.all_trial_ids()
        return ids

    def lock_and_get_trial_by_id(self, trial_id: str) -> Any:
        """NePS's read of one trial."""
        return self._inner.lock_and_get_trial_by_id(trial_id)

    def unsafe_retry_get_trial_by_id(self, trial_id: str) -> Any:
        """NePS's unlocked read of one trial."""
        return self._inner.unsafe_retry_get_trial_by_id(trial_id)

    def lock_and_get_next_pending_trial(self, n: int | None = None) -> Any:
        """NePS's next pending trial(s)."""
        if n is None:
            return self._inner.lock_and_get_next_pending_trial()
        return self._inner.lock_and_get_next_pending_trial(n)

    def lock_and_get_current_evaluating_trials(self) -> list[Any]:
        """NePS's evaluating trials."""
        trials: list[Any] = self._inner.lock_and_get_current_evaluating_trials()
        return trials

    def lock_and_get_errors(self) -> Any:
        """NePS's error dump."""
        return self._inner.lock_and_get_errors()

    def lock_and_get_optimizer_info(self) -> OptimizerInfo:
        """NePS's optimizer info, as this project's ``OptimizerInfo``."""
        info = self._inner.lock_and_get_optimizer_info()
        return OptimizerInfo(name=info["name"], info=info.get("info") or {})

    def lock_and_get_optimizer_state(self) -> Any:
        """NePS's optimizer state (its own class)."""
        return self._inner.lock_and_get_optimizer_state()

    def __reduce__(self) -> tuple[Any, ...]:
        """Only the path travels: the new process opens NePS's state there."""
        return (_load, (str(self.path),))

    def __repr__(self) -> str:
        """The class and the run directory."""
        return f"UpstreamNePSState({str(self.path)!r})"


def _load(path: str) -> UpstreamNePSState:
    return UpstreamNePSState.create_or_load(path, load_only=True)


def _info(info: OptimizerInfo) -> dict[str, Any]:
    return {"name": info.name, "info": dict(info.info)}


def _state(state: OptimizationState) -> Any:
    from neps.state import BudgetInfo as NepsBudget  # noqa: PLC0415 - optional dependency
    from neps.state import OptimizationState as NepsState  # noqa: PLC0415
    from neps.state import SeedSnapshot  # noqa: PLC0415

    budget: BudgetInfo | None = state.budget
    return NepsState(
        budget=None
        if budget is None
        else NepsBudget(
            total_cost_to_spend=budget.max_cost_total,
            used_cost_budget=budget.used_cost_budget,
            total_evaluations_to_spend=budget.max_evaluations,
            used_evaluations=budget.used_evaluations,
        ),
        seed_snapshot=SeedSnapshot.new_capture(),
        shared_state=state.shared_state,
    )
