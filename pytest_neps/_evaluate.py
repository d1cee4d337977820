"""Toy evaluation functions for swarms, and how a worker turns an outcome into a report."""

from __future__ import annotations

import math
import time
import traceback
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class EvaluationFailedError(Exception):
    """Raise from an evaluation function to report the trial as *failed* (not crashed)."""


def quadratic(config: Mapping[str, Any]) -> float:
    """A smooth objective of the toy configs: always succeeds."""
    lr = float(config.get("learning_rate", 1e-3))
    return (math.log10(lr) + 3) ** 2 + float(config.get("layers", 1)) / 10


def _bucket(config: Mapping[str, Any]) -> int:
    return zlib.crc32(repr(sorted(config.items())).encode()) % 10


def flaky(config: Mapping[str, Any]) -> float:
    """Fails for ~10% of configs and crashes for another ~10% (deterministic per config)."""
    bucket = _bucket(config)
    if bucket == 0:
        raise EvaluationFailedError(f"diverged at layers={config.get('layers')}")
    if bucket == 1:
        raise RuntimeError("CUDA out of memory (simulated)")
    return quadratic(config)


def always_crashes(config: Mapping[str, Any]) -> float:
    """Every evaluation crashes."""
    raise ZeroDivisionError(f"config {dict(config)} divides by zero")


@dataclass
class Outcome:
    """What an evaluation produced, ready for ``Trial.set_complete``."""

    report_as: str
    objective: float | None = None
    cost: float | None = None
    err: BaseException | None = None
    tb: str | None = None
    duration: float = 0.0


def evaluate(fn: Callable[[Mapping[str, Any]], Any], config: Mapping[str, Any]) -> Outcome:
    """Run ``fn``: a value is a success, ``EvaluationFailedError`` a failure, else a crash."""
    start = time.perf_counter()
    try:
        value = fn(config)
    except EvaluationFailedError as e:
        return Outcome(
            "failed", err=e, tb=traceback.format_exc(), duration=time.perf_counter() - start
        )
    except Exception as e:  # noqa: BLE001 - a crashing evaluation is an outcome, not our error
        return Outcome(
            "crashed", err=e, tb=traceback.format_exc(), duration=time.perf_counter() - start
        )
    duration = time.perf_counter() - start
    if isinstance(value, Mapping):
        return Outcome(
            "success",
            objective=value.get("objective_to_minimize"),
            cost=value.get("cost"),
            duration=duration,
        )
    return Outcome("success", objective=float(value), cost=duration, duration=duration)
