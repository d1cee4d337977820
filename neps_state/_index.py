"""A handle's in-memory view of the trials, with the indices that keep operations O(1).

Kept up to date incrementally from journal records: the trials by id, the ids
in each state, the pending trials ordered by sampling time (a heap with lazy
deletion) and the exact sum of reported costs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from fractions import Fraction

from neps_state._trial import State, Trial


class CostSum:
    """The sum of reported costs, exact (so independent of the order of updates)."""

    def __init__(self) -> None:
        self._finite = Fraction(0)
        self._nan = 0
        self._pos_inf = 0
        self._neg_inf = 0

    def add(self, cost: float, sign: int) -> None:
        """Add (``sign=1``) or remove (``sign=-1``) one cost."""
        if math.isnan(cost):
            self._nan += sign
        elif cost == math.inf:
            self._pos_inf += sign
        elif cost == -math.inf:
            self._neg_inf += sign
        else:
            self._finite += sign * Fraction(cost)

    @property
    def value(self) -> float:
        """The sum as a float (NaN when it holds a NaN or both infinities)."""
        if self._nan or (self._pos_inf and self._neg_inf):
            return math.nan
        if self._pos_inf:
            return math.inf
        if self._neg_inf:
            return -math.inf
        return float(self._finite)


def _cost(trial: Trial) -> float | None:
    report = trial.report
    return None if report is None or report.cost is None else report.cost


class TrialIndex(Mapping[str, Trial]):
    """Trials by id plus the derived indices; a read-only mapping for callers."""

    def __init__(self) -> None:
        self._trials: dict[str, Trial] = {}
        self._by_state: dict[State, dict[str, None]] = {s: {} for s in State}
        self._pending_heap: list[tuple[float, str, int]] = []
        self._pending_seq: dict[str, int] = {}
        self._seq = 0
        self.cost = CostSum()

    def __getitem__(self, trial_id: str) -> Trial:
        return self._trials[trial_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._trials)

    def __len__(self) -> int:
        return len(self._trials)

    # The dict's own views and lookups, not Mapping's generic ones through __getitem__
    # (reading every trial went through them once per trial).
    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self._trials

    def get(self, trial_id: str, default: Trial | None = None) -> Trial | None:  # type: ignore[override]
        return self._trials.get(trial_id, default)

    def keys(self) -> KeysView[str]:
        return self._trials.keys()

    def items(self) -> ItemsView[str, Trial]:
        return self._trials.items()

    def values(self) -> ValuesView[Trial]:
        return self._trials.values()

    def clear(self) -> None:
        """Forget everything."""
        self.__init__()  # type: ignore[misc]

    def put(self, trial: Trial) -> None:
        """Insert or replace one trial."""
        old = self._trials.get(trial.id)
        if old is not None:
            del self._by_state[old.metadata.state][old.id]
            cost = _cost(old)
            if cost is not None:
                self.cost.add(cost, -1)
        self._trials[trial.id] = trial
        state = trial.metadata.state
        self._by_state[state][trial.id] = None
        cost = _cost(trial)
        if cost is not None:
            self.cost.add(cost, 1)
        if state is State.PENDING:
            self._seq += 1
            self._pending_seq[trial.id] = self._seq
            sampled = trial.metadata.time_sampled
            # An imported trial was never sampled (NaN, as NePS writes it): it goes last.
            key = math.inf if math.isnan(sampled) else sampled
            heapq.heappush(self._pending_heap, (key, trial.id, self._seq))
            if len(self._pending_heap) > 2 * len(self._by_state[State.PENDING]) + 64:
                self._compact_heap()
        else:
            self._pending_seq.pop(trial.id, None)

    def ids_in(self, state: State) -> list[str]:
        """Ids of the trials in ``state``, oldest insertion first."""
        return list(self._by_state[state])

    def count(self, state: State) -> int:
        """How many trials are in ``state``."""
        return len(self._by_state[state])

    def earliest_pending(self, n: int) -> list[Trial]:
        """Up to ``n`` pending trials, earliest sampled first (ties by id)."""
        heap = self._pending_heap
        while heap and self._pending_seq.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
        if n == 1:
            return [self._trials[heap[0][1]]] if heap else []
        valid = (e for e in heap if self._pending_seq.get(e[1]) == e[2])
        return [self._trials[e[1]] for e in heapq.nsmallest(n, valid)]

    def _compact_heap(self) -> None:
        self._pending_heap = [e for e in self._pending_heap if self._pending_seq.get(e[1]) == e[2]]
        heapq.heapify(self._pending_heap)
