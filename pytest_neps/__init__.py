"""pytest-neps: test NePS states and optimizers under real multi-process races.

The pytest plugin itself lives in :mod:`pytest_neps.plugin` (entry point ``pytest11``).
Every name below is imported on first use, so loading the plugin (in every pytest
run of a project that installs this package) costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_neps._checker import Violation, check_run_dir
    from pytest_neps._evaluate import EvaluationFailedError
    from pytest_neps._faults import KillAt
    from pytest_neps._history import Op
    from pytest_neps._impl import Impl, as_impl
    from pytest_neps._optimizers import batch_sampler, random_search
    from pytest_neps._procs import ProcessOutcome
    from pytest_neps._profiles import register_profiles
    from pytest_neps._swarm import (
        Launcher,
        LocalLauncher,
        SwarmConfig,
        SwarmResult,
        WorkerRecord,
        run_swarm,
    )

_WHERE = {
    "Violation": "_checker",
    "check_run_dir": "_checker",
    "EvaluationFailedError": "_evaluate",
    "KillAt": "_faults",
    "Op": "_history",
    "Impl": "_impl",
    "as_impl": "_impl",
    "batch_sampler": "_optimizers",
    "random_search": "_optimizers",
    "ProcessOutcome": "_procs",
    "register_profiles": "_profiles",
    "Launcher": "_swarm",
    "LocalLauncher": "_swarm",
    "SwarmConfig": "_swarm",
    "SwarmResult": "_swarm",
    "WorkerRecord": "_swarm",
    "run_swarm": "_swarm",
}

__all__ = [
    "EvaluationFailedError",
    "Impl",
    "KillAt",
    "Launcher",
    "LocalLauncher",
    "Op",
    "ProcessOutcome",
    "SwarmConfig",
    "SwarmResult",
    "Violation",
    "WorkerRecord",
    "as_impl",
    "batch_sampler",
    "check_run_dir",
    "random_search",
    "register_profiles",
    "run_swarm",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_neps' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pytest_neps.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
