"""Functions that tests run in child processes (importable by spawned children)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from neps_test_helpers import INFO, new_opt_state, run_cycle

from neps_state import (
    NePSError,
    NePSState,
    OptimizerInfo,
    OptimizerInfoMismatchError,
    SampledConfig,
    Settings,
)
from pytest_neps._impl import resolve

SETTINGS = Settings(durability="os")


def create_rounds(
    root: Path, info: OptimizerInfo, rounds: int, barrier: Any, impl: str
) -> list[str]:
    """In each round, wait for the others, then create-or-load ``root/r<round>``."""
    cls: type[NePSState] = resolve(impl)
    outcomes = []
    for r in range(rounds):
        barrier.wait(60)
        try:
            cls.create_or_load(
                root / f"r{r}",
                optimizer_info=info,
                optimizer_state=new_opt_state(),
                settings=SETTINGS,
            )
            outcomes.append("ok")
        except OptimizerInfoMismatchError:
            outcomes.append("mismatch")
        except Exception as e:  # noqa: BLE001 - any other outcome is what the test looks for
            outcomes.append(f"other: {type(e).__name__}: {e}")
    return outcomes


def store_same_id_rounds(root: Path, rounds: int, barrier: Any, impl: str) -> list[str]:
    """In each round, every process samples a trial with the same id ``r<round>``."""
    cls: type[NePSState] = resolve(impl)
    state = cls.create_or_load(
        root, optimizer_info=INFO, optimizer_state=new_opt_state(), settings=SETTINGS
    )
    outcomes = []
    for r in range(rounds):

        def ask(trials: Any, budget_info: Any, n: int | None = None, r: int = r) -> SampledConfig:
            return SampledConfig(id=f"r{r}", config={"pid": os.getpid()})

        barrier.wait(60)
        try:
            state.lock_and_sample_trial(ask, worker_id=str(os.getpid()))
            outcomes.append("ok")
        except NePSError as e:
            outcomes.append(type(e).__name__)
        except Exception as e:  # noqa: BLE001 - any other outcome is what the test looks for
            outcomes.append(f"other: {type(e).__name__}: {e}")
    return outcomes


def cycles_with_handle(state: NePSState, n: int) -> list[str]:
    """Use a handle that was pickled into this process."""
    return [run_cycle(state, f"child-{os.getpid()}").id for _ in range(n)]


def hold_spares(root: Path, held: Any, release: Any) -> None:
    """Open the run, create the spares of a sample, say so, and keep them until told."""
    state = NePSState.create_or_load(root, load_only=True, settings=SETTINGS)
    with state._state_spare.ahead(), state._repo.store_ahead():
        held.set()
        release.wait(600)


def record_pid_then_wait(path: str, seconds: float) -> int:
    """Append this process's pid to ``path``, then wait (a task to kill mid-run)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()
