"""Fault injection: SIGKILL a process at a named point inside a state operation.

``neps_state`` calls :func:`neps_state.set_fault_hook`'s hook at every point
listed in :data:`neps_state.FAULT_POINTS`; these hooks decide when to die.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from neps_state import FAULT_POINTS


def die() -> None:
    """SIGKILL the current process: no cleanup, no finally blocks, no flushing."""
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class KillAt:
    """A fault hook that kills the process the ``nth`` time ``point`` is reached."""

    point: str
    nth: int = 1
    before_dying: Callable[[str], None] | None = None
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {self.point!r}; known: {FAULT_POINTS}")

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.hits += 1
        if self.hits == self.nth:
            if self.before_dying is not None:
                self.before_dying(point)
            die()
