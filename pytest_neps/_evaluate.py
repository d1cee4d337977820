"""Toy evaluation functions for swarms, and how a worker turns an outcome into a report."""

from __future__ import annotations

import math
import numbers
import time
import traceback
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class EvaluationFailedError(Exception):
    """Raise from an evaluation function to report the trial as *failed* (not crashed)."""


class BadResultError(EvaluationFailedError):
    """An evaluation function returned something that is not a result (the trial fails)."""


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


def two_objectives(config: Mapping[str, Any]) -> dict[str, Any]:
    """Two objectives (for multi-objective optimizers): :func:`quadratic` and the depth."""
    return {
        "objective_to_minimize": [quadratic(config), float(config.get("layers", 1))],
        "cost": 1.0,
    }


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
        objective, cost = value.get("objective_to_minimize"), value.get("cost")
    else:
        objective, cost = value, duration
    problem = _bad_result(objective, cost)
    if problem is not None:
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        err = BadResultError(f"{name} returned {value!r}: {problem}")
        return Outcome("failed", err=err, tb=None, duration=duration)
    return Outcome("success", objective=objective, cost=cost, duration=duration)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bad_result(objective: object, cost: object) -> str | None:
    """What is wrong with an evaluation's result, or None when a trial can store it."""
    many = isinstance(objective, list | tuple) and all(_is_number(x) for x in objective)
    if not (_is_number(objective) or (many and objective)):
        return (
            "expected a number, a list of numbers, or a mapping whose"
            " 'objective_to_minimize' is one"
        )
    if cost is not None and not _is_number(cost):
        return "'cost' must be a number or None"
    return None
