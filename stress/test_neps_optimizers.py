"""NePS's own optimizers in swarms of this state: 4 workers, 200 trials, kills.

Needs the optional extra ``neps`` (``tox -e neps``); skips without it. Each swarm's
figures are printed; every one must have no violation and meet its budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neps_state import Settings
from pytest_neps._swarm import run_swarm

pytest.importorskip(
    "neps.optimizers", reason="upstream NePS is not installed: pip install 'neps-state[neps]'"
)

OPTIMIZERS = ["random_search", "bayesian_optimization", "hyperband", "asha", "priorband"]
TRIALS = 200


@pytest.mark.timeout(3600)  # NePS's Bayesian optimization fits a GP at every sample
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_neps_optimizer_in_a_swarm_with_kills(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run",
        workers=4,
        trials=TRIALS,
        optimizer=f"neps:{name}",
        kill_rate=0.02,
        timeout=3600,
        seed=7,
        # A sample holds the optimizer lock while the optimizer thinks: NePS's Bayesian
        # optimization fits a GP there (tens of seconds on 2 busy cores), and the
        # workers queued behind it would outwait the default 120 s (NePS's default too).
        settings=Settings(durability="os", lock_timeout=None),
    )
    s = result.summary()
    chains = sum(t.metadata.previous_trial_id is not None for t in result.trials.values())
    with capsys.disabled():
        print(
            f"\n{name:<24} trials {s['trials']:>4}  kills {s['kills']:>2}"
            f"  continuations {chains:>3}  {s['cycles_per_s']:6.1f} cycles/s"
            f"  violations {len(s['violations'])}"
        )
    result.assert_consistent()
    assert s["kills"] > 0
