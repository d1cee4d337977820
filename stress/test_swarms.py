"""Swarms of 2 to 16 workers over thousands of trials, with and without kills."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from neps_state import Settings
from pytest_neps import run_swarm

TRIALS = 2000


@pytest.mark.parametrize("kills", [False, True], ids=["no-kills", "kills"])
@pytest.mark.parametrize("workers", [2, 4, 8, 16])
def test_swarm_finishes_with_no_violation(
    tmp_path: Path, workers: int, kills: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run",
        workers=workers,
        trials=TRIALS,
        observers=1,
        evaluation="pytest_neps._evaluate:flaky",
        kill_rate=0.003 if kills else 0.0,
        kill_points=("store.dir_renamed", "update.files_written", "lock.acquired") if kills else (),
        kill_every=3.0 if kills else None,
        timeout=1800,
        seed=workers,
        settings=Settings(durability="fsync"),
        worker_log_level=logging.ERROR,
    )
    s = result.summary()
    with capsys.disabled():
        print(
            f"\n{workers:>2} workers, kills={kills}: {s['trials']} trials, {s['cycles']} cycles,"
            f" {s['cycles_per_s']:.0f} cycles/s, {s['kills']} kills / {s['replacements']}"
            f" restarts, {len(s['stranded'])} left evaluating, {len(s['violations'])} problems"
        )
    result.assert_consistent()  # every violation, lost worker, unmet budget, kill miscount
    assert len(result.trials) == TRIALS
    assert not [w for w in result.workers if w.failed]
    if kills:
        assert result.kills > 0
        assert result.kills == result.replacements
    else:
        assert result.kills == 0
        assert result.cycles == TRIALS
