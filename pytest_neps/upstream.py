"""Upstream NePS's own ``NePSState`` behind the harness: an adapter that only translates types.

    neps-state powerloss --impl pytest_neps.upstream:UpstreamNePSState
    pytest --neps-impl pytest_neps.upstream:UpstreamNePSState

Needs ``neural-pipeline-search`` (tested with 0.17.0; ``pip install
'neps-state[neps]'``). The harness hands over this project's ``OptimizerInfo``
and ``OptimizationState``; NePS wants a mapping and its own classes, so those
are translated. Everything else is NePS's own code, defects included (see the
seed defects D1-D9 and 0.17's D10 in the project's design notes): nothing is fixed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neps_state import BudgetInfo, OptimizationState, OptimizerInfo


class UpstreamNePSState:
    """A NePS ``NePSState``; every attribute but ``create_or_load`` is NePS's own."""

    neps_errors = ("neps.exceptions:NePSError",)
    """NePS's own error root: a refusal of this class is typed, anything else is not."""

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

    # -- NePS 0.17's own members: its runtime's, and those neps.clean and neps.import use

    def lock_and_set_new_worker_id(self, worker_id: str | None = None) -> str:
        """NePS's worker ids."""
        wid: str = self._inner.lock_and_set_new_worker_id(worker_id)
        return wid

    def lock_and_update_global_budgets(self, **budgets: Any) -> None:
        """NePS's global budgets."""
        self._inner.lock_and_update_global_budgets(**budgets)

    def lock_and_get_global_budgets(self) -> Any:
        """NePS's global budgets."""
        return self._inner.lock_and_get_global_budgets()

    def lock_and_import_trials(self, imported_configs: Any, *, worker_id: str) -> Any:
        """NePS's import."""
        return self._inner.lock_and_import_trials(imported_configs, worker_id=worker_id)

    def lock_and_reset_trial_by_id(self, trial_id: str) -> None:
        """NePS's reset by id."""
        self._inner.lock_and_reset_trial_by_id(trial_id)

    def lock_and_remove_trial_by_id(self, trial_id: str) -> None:
        """NePS's removal by id."""
        self._inner.lock_and_remove_trial_by_id(trial_id)

    @property
    def _optimizer_lock(self) -> Any:
        return self._inner._optimizer_lock  # noqa: SLF001 - NePS's runtime's own access

    @property
    def _trial_lock(self) -> Any:
        return self._inner._trial_lock  # noqa: SLF001

    @property
    def _trial_repo(self) -> Any:
        return self._inner._trial_repo  # noqa: SLF001

    def _sample_trial(self, optimizer: Any, **kwargs: Any) -> Any:
        return self._inner._sample_trial(optimizer, **kwargs)  # noqa: SLF001

    def _report_trial_evaluation(self, trial: Any, report: Any, *, worker_id: str) -> None:
        self._inner._report_trial_evaluation(trial, report, worker_id=worker_id)  # noqa: SLF001

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


DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "lower": 1e-5, "upper": 1e-1, "log": True, "prior": 1e-3},
    "layers": {"type": "integer", "lower": 1, "upper": 8, "prior": 3},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"], "prior": 0},
    "epochs": {"type": "integer", "lower": 1, "upper": 9, "fidelity": True},
}
"""The toy space of the swarms' evaluations, with a fidelity (``epochs``)."""


@dataclass(frozen=True)
class NePSOptimizer:
    """A NePS optimizer by name, built in each worker process when first asked.

    Picklable: only the name, the space (a plain mapping, see ``DEFAULT_SPACE``) and
    the optimizer's keywords travel to worker processes, which need NePS installed.
    """

    name: str
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: DEFAULT_SPACE)
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, trials: Any, budget_info: Any, n: int | None = None) -> Any:
        """NePS's ask function (built once per process)."""
        key = (self.name, repr(sorted(self.space.items())), repr(sorted(self.kwargs.items())))
        ask = _ASKS.get(key)
        if ask is None:
            ask = _ASKS[key] = self.build()
        return ask(trials=trials, budget_info=budget_info, n=n)

    def build(self) -> Any:
        """NePS's ``load_optimizer`` on the space, converted as ``neps.run`` converts it."""
        from neps.optimizers import load_optimizer  # noqa: PLC0415 - optional dependency
        from neps.space.neps_spaces import neps_space  # noqa: PLC0415
        from neps.space.parsing import convert_to_space  # noqa: PLC0415

        choice = (self.name, dict(self.kwargs))
        space = pipeline_space(self.space)
        kind = neps_space.check_neps_space_compatibility(choice)
        if kind in ("both", "classic"):
            space = neps_space.convert_neps_to_classic_search_space(space) or space
        space = convert_to_space(space)
        if kind == "neps" and not isinstance(space, neps_space.PipelineSpace):
            space = neps_space.convert_classic_to_neps_search_space(space)
        if self.name == "neps_local_and_incumbent":
            choice[1].setdefault("local_prior", _prior_config(space))
        ask, _ = load_optimizer(choice, space)
        return ask


def _prior_config(space: Any) -> dict[str, Any]:
    """The space's priors as a config in NePS's own keys (a local prior, as a user gives it)."""
    from neps.space.neps_spaces import neps_space, sampling  # noqa: PLC0415

    sampler = sampling.PriorOrFallbackSampler(sampling.RandomSampler({}), always_use_prior=True)
    highest = {name: f.upper for name, f in space.fidelity_attrs.items()}
    _, context = neps_space.resolve(space, domain_sampler=sampler, environment_values=highest)
    return dict(neps_space.NepsCompatConverter.to_neps_config(context))


_ASKS: dict[tuple[str, str, str], Any] = {}


def neps_optimizer(
    name: str, space: Mapping[str, Mapping[str, Any]] | None = None, **kwargs: Any
) -> NePSOptimizer:
    """NePS's optimizer ``name`` (``"priorband"``, ...) for a swarm: ``optimizer=`` this.

    ``space`` maps names to ``{"type": "float" | "integer" | "categorical", "lower",
    "upper", "log", "choices", "prior", "prior_confidence", "fidelity"}``; the default
    is the swarms' toy space, whose ``epochs`` is a fidelity (so multi-fidelity
    optimizers continue earlier trials; those that refuse a fidelity get
    ``ignore_fidelity="highest_fidelity"``), with priors for the prior-based ones
    (priorband, pibo). ``kwargs`` go to NePS's optimizer.
    """
    if space is None:
        space = DEFAULT_SPACE if name in _PRIORS else _without_priors(DEFAULT_SPACE)
    if name in _NO_FIDELITY and any(s.get("fidelity") for s in space.values()):
        kwargs.setdefault("ignore_fidelity", "highest_fidelity")
    return NePSOptimizer(name, space, kwargs)


_NO_FIDELITY = frozenset(
    {
        "neps_regularized_evolution",
        "random_search",
        "bayesian_optimization",
        "grid_search",
        "pibo",
        "neps_random_search",
        "complex_random_search",
    }
)
"""NePS's optimizers that refuse a fidelity: they sample it at its highest here."""
_PRIORS = frozenset({"priorband", "pibo", "primo", "neps_priorband", "neps_local_and_incumbent"})
"""NePS's optimizers built on priors: the default space keeps its priors for them only
(``neps_local_and_incumbent``'s local prior is the space's priors, unless given)."""


def _without_priors(space: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in spec.items() if not k.startswith("prior")}
        for name, spec in space.items()
    }


def pipeline_space(space: Mapping[str, Mapping[str, Any]]) -> Any:
    """A NePS ``PipelineSpace`` instance from a plain mapping (see :func:`neps_optimizer`)."""
    import neps  # noqa: PLC0415 - optional dependency

    attrs: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        prior = {k: spec[k] for k in ("prior",) if k in spec}
        if prior:
            prior["prior_confidence"] = spec.get("prior_confidence", "medium")
        if kind == "categorical":
            attrs[name] = neps.Categorical(list(spec["choices"]), **prior)
            continue
        cls = {"float": neps.Float, "integer": neps.Integer}[kind]
        if spec.get("fidelity"):
            fidelity = neps.FloatFidelity if kind == "float" else neps.IntegerFidelity
            attrs[name] = fidelity(spec["lower"], spec["upper"], log=spec.get("log", False))
        else:
            attrs[name] = cls(spec["lower"], spec["upper"], log=spec.get("log", False), **prior)
    return type("SwarmSpace", (neps.PipelineSpace,), attrs)()
