"""Settings of a state handle: a frozen value, with environment overrides.

Environment variables are read by :meth:`Settings.from_env`, never at import:

================================  ============================================
``NEPS_STATE_LOCK_TIMEOUT``       seconds to wait for a lock; ``none`` waits forever
``NEPS_STATE_CONSOLIDATION_LIMIT``  records appended before the cache is rewritten
``NEPS_STATE_CONSOLIDATION_RATIO``  ... and at least this many per trial
``NEPS_STATE_DURABILITY``         ``fsync`` (every commit on disk) or ``os``
================================  ============================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Literal, TypeVar

from neps_state._errors import SettingsError

Durability = Literal["fsync", "os"]

ENV_PREFIX = "NEPS_STATE_"
LOCK_TIMEOUT_ENV = ENV_PREFIX + "LOCK_TIMEOUT"

T = TypeVar("T")


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


def _problem(name: str, value: object) -> str:
    """What is wrong with ``value`` for the setting ``name`` ('' when nothing)."""
    if name == "lock_timeout" and value is not None:
        ok = isinstance(value, int | float) and value > 0
        return "" if ok else f"must be a positive number of seconds or None, not {value!r}"
    if name == "consolidation_limit":
        ok = isinstance(value, int) and value >= 1
        return "" if ok else f"must be an integer >= 1, not {value!r}"
    if name == "consolidation_ratio":
        ok = isinstance(value, int | float) and 0 <= value < math.inf
        return "" if ok else f"must be a number >= 0, not {value!r}"
    if name == "durability":
        return "" if value in ("fsync", "os") else f"must be 'fsync' or 'os', not {value!r}"
    return ""


def _optional_float(raw: str) -> float | None:
    return None if raw.lower() in ("none", "null", "") else float(raw)
