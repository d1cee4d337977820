"""Worker histories: each operation's invocation and completion, as they happen.

A worker appends one JSON line when an operation starts and one when it ends,
each with a single ``write`` to a file opened with ``O_APPEND``: a SIGKILL
between the two leaves the invocation without completion, which the checkers
read as *indeterminate* (the operation may or may not have taken effect).
Times are ``time.monotonic_ns()``: one clock for every process of a machine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Op:
    """One operation of one worker: what, on which trials, when, and how it ended."""

    worker: str
    op: str
    trials: tuple[str, ...]
    start_ns: int
    end_ns: int | None = None
    ok: bool = False
    result: str = ""
    pid: int = 0
    args: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def completed(self) -> bool:
        """Whether the completion was recorded (False: killed in flight)."""
        return self.end_ns is not None

    def __str__(self) -> str:
        what = f"{self.worker}: {self.op}({', '.join(self.trials)})"
        if not self.completed:
            return f"{what} [in flight when killed]"
        return f"{what} -> {self.result or ('ok' if self.ok else 'error')}"


@dataclass(frozen=True)
class Kill:
    """A planned SIGKILL a worker announced just before dying."""

    worker: str
    point: str
    ops_done: int


class HistoryWriter:
    """Appends the events of one worker to its history file."""

    def __init__(self, path: Path, worker: str) -> None:
        self.path = path
        self.worker = worker
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._seq = 0

    def _emit(self, event: dict[str, Any]) -> None:
        os.write(self._fd, json.dumps(event, separators=(",", ":")).encode() + b"\n")

    def start(self, op: str, trials: Sequence[str] = (), **args: Any) -> int:
        """Record an invocation; return its sequence number."""
        self._seq += 1
        self._emit(
            {
                "ev": "start",
                "i": self._seq,
                "op": op,
                "trials": list(trials),
                "t": time.monotonic_ns(),
                "pid": os.getpid(),
                "args": args,
            }
        )
        return self._seq

    def end(self, seq: int, *, ok: bool, trials: Sequence[str] = (), result: str = "") -> None:
        """Record the completion of invocation ``seq``."""
        self._emit(
            {
                "ev": "end",
                "i": seq,
                "ok": ok,
                "trials": list(trials),
                "result": result,
                "t": time.monotonic_ns(),
            }
        )

    def kill(self, point: str, ops_done: int) -> None:
        """Announce a planned kill (written before the signal is sent)."""
        self._emit({"ev": "kill", "point": point, "ops": ops_done})

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def read_history(path: Path, worker: str) -> tuple[list[Op], list[Kill]]:
    """Parse one worker's history file into operations and announced kills."""
    starts: dict[int, dict[str, Any]] = {}
    ends: dict[int, dict[str, Any]] = {}
    kills: list[Kill] = []
    for line in path.read_bytes().splitlines():
        event = json.loads(line)
        if event["ev"] == "start":
            starts[event["i"]] = event
        elif event["ev"] == "end":
            ends[event["i"]] = event
        else:
            kills.append(Kill(worker, event["point"], event["ops"]))
    ops = []
    for i, s in sorted(starts.items()):
        e = ends.get(i)
        ops.append(
            Op(
                worker=worker,
                op=s["op"],
                trials=tuple(e["trials"] if e and e["trials"] else s["trials"]),
                start_ns=s["t"],
                end_ns=None if e is None else e["t"],
                ok=bool(e and e["ok"]),
                result="" if e is None else e["result"],
                pid=s["pid"],
                args=s.get("args", {}),
            )
        )
    return ops, kills


def merge(histories: Iterable[Sequence[Op]]) -> list[Op]:
    """All operations of all workers, ordered by invocation time."""
    return sorted((op for h in histories for op in h), key=lambda op: op.start_ns)
