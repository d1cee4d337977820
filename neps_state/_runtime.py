"""What NePS 0.17's runtime reaches inside a state besides its public methods.

NePS's ``DefaultWorker`` takes ``state._optimizer_lock`` and ``state._trial_lock``
itself and, holding them, calls ``state._trial_repo`` (``latest``,
``update_trial``, ``store_new_trial``, ``get_valid_evaluated_trials``),
``state._sample_trial`` and ``state._report_trial_evaluation``. Here those calls
are the reference's own critical sections: a call made without its lock takes it
(re-entrant within a handle), and the sample and the store that follows it are
one journal commit (the store carries the optimizer state the sample left).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neps_state._owners import release_dead
from neps_state._trialfiles import TrialWriteHint, list_trial_ids, read_trial

if TYPE_CHECKING:
    from neps_state._optimizer import OptimizationState
    from neps_state._state import NePSState
    from neps_state._trial import Trial


@dataclass(frozen=True)
class SampleStash:
    """What ``_sample_trial`` asked for and the state after it, until it is stored."""

    ids: tuple[str, ...]
    state_bytes: bytes
    state: OptimizationState


def _valid_objective(objective: object) -> bool:
    if objective is None:
        return False
    if isinstance(objective, list | tuple):
        return all(o is not None and not math.isnan(o) for o in objective)
    return isinstance(objective, int | float) and not math.isnan(objective)


def valid_evaluated(trials: Mapping[str, Trial]) -> Iterator[tuple[str, Trial]]:
    """The trials reported without an error and with an objective that is not NaN."""
    for tid, trial in trials.items():
        report = trial.report
        if (
            report is not None
            and report.err is None
            and _valid_objective(report.objective_to_minimize)
        ):
            yield tid, trial


class RuntimeRepo:
    """``state._trial_repo`` as NePS's runtime calls it; each method one critical section."""

    def __init__(self, state: NePSState) -> None:
        self._state = state

    @property
    def directory(self) -> Path:
        """The ``configs/`` folder."""
        return self._state._repo.directory  # noqa: SLF001 - the state's own repo

    @property
    def cache_path(self) -> Path:
        """The journal (NePS's own cache is ``.trial_cache.pkl`` there)."""
        return self._state._repo.cache_path  # noqa: SLF001

    def latest(self, *, create_cache_if_missing: bool = True) -> dict[str, Any]:
        """Every trial, as copies the caller may keep and mutate."""
        del create_cache_if_missing  # the journal is never missing: it is rebuilt if lost
        state = self._state
        # Holding both locks, NePS's worker reads the trials to pick its next one:
        # there, as in a claim, the trials of dead workers are taken back first.
        picking = state._optimizer_lock.held and state._trial_lock.held  # noqa: SLF001
        with state._trials():  # noqa: SLF001
            repo = state._repo  # noqa: SLF001
            if picking:
                release_dead(repo, state.settings.dead_worker_trials)
            repo.sync()
            return state._out_all(repo.view.items(), complete=True)  # noqa: SLF001

    def list_trial_ids(self) -> list[str]:
        """The ids of the trial folders on disk."""
        return list_trial_ids(self.directory)

    def load_trial_from_disk(self, trial_id: str) -> Any:
        """A trial read from its folder (not from the journal)."""
        return self._state._hand(read_trial(self.directory, trial_id))  # noqa: SLF001

    def get_valid_evaluated_trials(self) -> dict[str, Any]:
        """The trials reported without an error and with an objective that is not NaN."""
        return self._state._valid_evaluated()  # noqa: SLF001

    def store_new_trial(self, trial: Any) -> None:
        """Store new trials (all or none): after ``_sample_trial``, with its optimizer state."""
        batch = (
            list(trial)
            if isinstance(trial, Iterable) and not hasattr(trial, "metadata")
            else [trial]
        )
        self._state._store_new(batch)  # noqa: SLF001

    def update_trial(
        self,
        trial: Any,
        *,
        hints: Iterable[TrialWriteHint] | TrialWriteHint | None = ("report", "metadata"),
    ) -> None:
        """Store a new version of a trial (only legal state changes)."""
        state = self._state
        with state._trials():  # noqa: SLF001
            state._repo.update_trial(state._in(trial), hints=hints)  # noqa: SLF001
