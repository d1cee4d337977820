"""The in-flight marker ``configs/.trial_cache.intent``: a dirty bit with undo data.

A writer holding the trial lock records what it is about to change before it
touches any file, and clears the record after its journal append (the commit).
The next holder of the lock that finds a record knows that a writer died inside
its critical section, and exactly which trials it may have left half-written.
The record is one journal frame at offset 0 holding a JSON object (bytes after it
are ignored); an empty frame or an empty file means clean, a damaged frame is
recognised as such (and answered by a full check).
Neither write changes the file's size in the common case, and neither is fsynced:
a process crash keeps the page cache, and the journal, not this file, carries
durability.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neps_state._io import create, own_descriptor, pwrite
from neps_state._journal import frame, parse_frames
from neps_state._proc import pid

_MAX_READ = 1 << 20
_FIRST_READ = 4096
_CLEAN = frame(b"")


@dataclass(frozen=True)
class Intent:
    """What a writer was doing: which trials, from which journal position."""

    op: str
    pid: int
    token: bytes
    offset: int
    ids: tuple[str, ...]
    errors_size: int | None = None
    error_line: bytes | None = None


UNREADABLE = Intent(op="unreadable", pid=-1, token=b"", offset=-1, ids=())
"""Stands for a marker that exists but cannot be parsed."""


def _to_json(intent: Intent) -> bytes:
    line = intent.error_line
    doc = {
        "op": intent.op,
        "pid": intent.pid,
        "token": intent.token.hex(),
        "offset": intent.offset,
        "ids": list(intent.ids),
        "errors_size": intent.errors_size,
        "error_line": None if line is None else line.decode("utf-8"),
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _from_json(doc: dict[str, Any]) -> Intent:
    line, size = doc["error_line"], doc["errors_size"]
    intent = Intent(
        op=str(doc["op"]),
        pid=int(doc["pid"]),
        token=bytes.fromhex(doc["token"]),
        offset=int(doc["offset"]),
        ids=tuple(str(i) for i in doc["ids"]),
        errors_size=None if size is None else int(size),
        error_line=None if line is None else str(line).encode("utf-8"),
    )
    if not all(isinstance(i, str) for i in doc["ids"]):
        raise ValueError("ids must be text")
    return intent


class IntentFile:
    """The marker file; every method is called with the trial lock held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid = -1
        self._fd = -1

    def _descriptor(self) -> int:
        if self._pid != pid():
            self._fd = create(self.path, flags=os.O_RDWR, exclusive=False)
            own_descriptor(self, self._fd)
            self._pid = pid()
        return self._fd

    def read(self) -> Intent | None:
        """The recorded intent, ``UNREADABLE``, or None when clean."""
        fd = self._descriptor()
        data = os.pread(fd, _FIRST_READ, 0)
        if len(data) >= 4:
            # One frame: read the rest of it only when it is longer than the first read.
            end = min(int.from_bytes(data[:4], "little") + 8, _MAX_READ)
            if end > len(data) == _FIRST_READ:
                data += os.pread(fd, end - len(data), len(data))
        if not data:
            return None
        payloads, _ = parse_frames(data, 0, empty_ok=True)
        if not payloads:
            return UNREADABLE
        if not payloads[0]:
            return None
        try:
            return _from_json(json.loads(payloads[0]))
        except (ValueError, TypeError, KeyError):  # any damage means the same: unreadable
            return UNREADABLE

    def begin(self, intent: Intent) -> None:
        """Record ``intent`` before any file is changed."""
        pwrite(self._descriptor(), frame(_to_json(intent)), 0)

    def clear(self) -> None:
        """Mark clean (a lost clear only causes a harmless, idempotent recovery)."""
        pwrite(self._descriptor(), _CLEAN, 0)
