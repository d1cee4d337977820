"""pytest-neps: test NePS states and optimizers under real multi-process races.

The pytest plugin itself lives in :mod:`pytest_neps.plugin` (entry point ``pytest11``).
"""

from pytest_neps._checker import Violation, check_run_dir
from pytest_neps._evaluate import EvaluationFailedError
from pytest_neps._faults import KillAt
from pytest_neps._history import Op
from pytest_neps._optimizers import batch_sampler, random_search
from pytest_neps._swarm import (
    Launcher,
    LocalLauncher,
    SwarmConfig,
    SwarmResult,
    WorkerRecord,
    run_swarm,
)

__all__ = [
    "EvaluationFailedError",
    "KillAt",
    "Launcher",
    "LocalLauncher",
    "Op",
    "SwarmConfig",
    "SwarmResult",
    "Violation",
    "WorkerRecord",
    "batch_sampler",
    "check_run_dir",
    "random_search",
    "run_swarm",
]
