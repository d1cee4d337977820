"""Toy optimizers that allocate ids the way NePS's do: from the number of trials seen.

Because the id is ``len(trials)``, two workers that sample from the same view
(a broken sampling lock, a stale cache) propose the same id, and the race shows.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from neps_state import BudgetInfo, SampledConfig, Trial


def _config() -> dict[str, Any]:
    return {
        "learning_rate": 10 ** random.uniform(-5, -1),
        "layers": random.randint(1, 8),
        "optimizer": random.choice(["adam", "sgd"]),
    }


def random_search(
    trials: Mapping[str, Trial], budget_info: BudgetInfo | None, n: int | None = None
) -> SampledConfig | list[SampledConfig]:
    """Propose uniformly random configs with ids ``len(trials)``, ``len(trials)+1``, ..."""
    del budget_info
    first = len(trials)
    configs = [SampledConfig(id=str(first + i), config=_config()) for i in range(n or 1)]
    return configs[0] if n is None else configs


def batch_sampler(
    trials: Mapping[str, Trial], budget_info: BudgetInfo | None, n: int | None = None
) -> SampledConfig | list[SampledConfig]:
    """Like :func:`random_search`, but names the trial before it as previous, if it exists."""
    del budget_info
    first = len(trials)
    out = []
    for k in range(first, first + (n or 1)):
        previous = str(k - 1) if str(k - 1) in trials else None
        out.append(SampledConfig(id=str(k), config=_config(), previous_config_id=previous))
    return out[0] if n is None else out


def fresh_ids(
    trials: Mapping[str, Trial], budget_info: BudgetInfo | None, n: int | None = None
) -> SampledConfig | list[SampledConfig]:
    """Like :func:`random_search`, with ids past the largest numeric one.

    No id is used twice, even when trials are removed (as ``neps.clean`` does).
    """
    del budget_info
    first = 1 + max((int(t) for t in trials if t.isdigit()), default=-1)
    configs = [SampledConfig(id=str(first + i), config=_config()) for i in range(n or 1)]
    return configs[0] if n is None else configs
