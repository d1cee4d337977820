"""Settings of a state handle: a frozen value, with environment overrides.

Environment variables are read by :meth:`Settings.from_env`, never at import:

====================================  ============================================
``NEPS_STATE_LOCK_TIMEOUT``           seconds to wait for a lock; ``none`` waits forever
``NEPS_STATE_CONSOLIDATION_LIMIT``    records appended before the cache is rewritten
``NEPS_STATE_CONSOLIDATION_RATIO``    ... and at least this many per trial
``NEPS_STATE_DURABILITY``             ``fsync`` (every commit on disk) or ``os``
``NEPS_STATE_PICKLE_ALLOW``           ``module.name`` or ``module.*``, comma-separated:
                                      more globals a pickle may name
``NEPS_STATE_STRICT_PERMISSIONS``     ``1``: refuse a run others can write or own
``NEPS_STATE_DEAD_WORKER_TRIALS``     ``pending``, ``crashed`` or ``keep``: what
                                      becomes of a dead worker's trial
====================================  ============================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from neps_state._errors import SettingsError

Durability = Literal["fsync", "os"]
DeadWorkerTrials = Literal["pending", "crashed", "keep"]

ENV_PREFIX = "NEPS_STATE_"
LOCK_TIMEOUT_ENV = ENV_PREFIX + "LOCK_TIMEOUT"


@dataclass(frozen=True)
class Settings:
    """How a state handle locks, consolidates its cache and flushes to disk."""

    lock_timeout: float | None = 120.0
    """Seconds to wait for a lock before raising ``LockTimeoutError``; None waits forever."""

    consolidation_limit: int = 30
    """Cache records appended since the last rewrite before the cache is rewritten."""

    consolidation_ratio: float = 1.0
    """The rewrite also waits for this many records per trial, keeping its cost amortized O(1)."""

    durability: Durability = "fsync"
    """``fsync``: every acknowledged commit is on stable storage; ``os``: left to the OS."""

    strict_permissions: bool = False
    """Refuse (not only warn about) a run directory other users can write or own."""

    pickle_allow: tuple[str, ...] = ()
    """Globals (``module.name`` or ``module.*``) the optimizer state's pickle may name,
    beyond the built-in allowlist (see ``neps_state._pickles``). Only for files you trust."""

    dead_worker_trials: DeadWorkerTrials = "pending"
    """What a claim does first with the trials of worker processes that provably died
    evaluating them (``neps_state._owners``): ``pending``, claimed again; ``crashed``,
    reported crashed; ``keep``, left evaluating (NePS's own behaviour)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _problem(f.name, getattr(self, f.name))
            if problem:
                raise SettingsError(f"{f.name} {problem}")

    @property
    def fsync(self) -> bool:
        """Whether commits are flushed to stable storage before they are acknowledged."""
        return self.durability == "fsync"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the defaults overridden by ``NEPS_STATE_*`` variables."""
        env = os.environ if environ is None else environ
        parsers: dict[str, Callable[[str], object]] = {
            "lock_timeout": _optional_float,
            "consolidation_limit": int,
            "consolidation_ratio": float,
            "durability": str.lower,
            "pickle_allow": _names,
            "strict_permissions": _flag,
            "dead_worker_trials": str.lower,
        }
        values: dict[str, object] = {}
        for field in fields(cls):
            name = ENV_PREFIX + field.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            try:
                value = parsers[field.name](raw.strip())
            except ValueError as e:
                raise SettingsError(f"{name}={raw!r}: {e}") from None
            problem = _problem(field.name, value)
            if problem:
                raise SettingsError(f"{name}={raw!r}: {problem}")
            values[field.name] = value
        return cls(**values)  # type: ignore[arg-type]


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lock_timeout": (
        lambda v: v is None or (isinstance(v, int | float) and v > 0),
        "must be a positive number of seconds or None",
    ),
    "consolidation_limit": (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
    "consolidation_ratio": (
        lambda v: isinstance(v, int | float) and 0 <= v < math.inf,
        "must be a number >= 0",
    ),
    "durability": (lambda v: v in ("fsync", "os"), "must be 'fsync' or 'os'"),
    "strict_permissions": (lambda v: isinstance(v, bool), "must be True or False"),
    "dead_worker_trials": (
        lambda v: v in ("pending", "crashed", "keep"),
        "must be 'pending', 'crashed' or 'keep'",
    ),
    "pickle_allow": (
        lambda v: isinstance(v, tuple) and all(isinstance(x, str) and "." in x for x in v),
        "must be a tuple of 'module.name' or 'module.*' strings",
    ),
}


def _problem(name: str, value: object) -> str:
    """What is wrong with ``value`` for the setting ``name`` ('' when nothing)."""
    ok, message = _CHECKS[name]
    return "" if ok(value) else f"{message}, not {value!r}"


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/true/yes/on or 0/false/no/off")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _optional_float(raw: str) -> float | None:
    return None if raw.lower() in ("none", "null", "") else float(raw)
