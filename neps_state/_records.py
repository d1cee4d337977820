"""Journal records: the trials one commit stored, and what it made durable with them.

A record is what one journal frame holds. Besides the trials it may carry the
optimizer state the commit leaves behind (a sample's), and the error line the
commit appended to ``shared_errors.jsonl`` with the dump's size before it (a
report's). With them the journal, whose appends are fsynced, can rebuild every
other file of the run after a power loss (see ``TrialRepo.recover``).

Two encodings are read: version 1 (a bare pickled list of trials, as written
before version 2) and version 2 (``b"R"`` + a pickled tuple); version 2 is written.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from neps_state._errors import CorruptedFileError
from neps_state._trial import Trial

_V2 = b"R"


@dataclass
class Record:
    """One commit: trials (new or updated versions), and optionally state and error."""

    trials: list[Trial]
    optimizer_state: bytes | None = None
    """The pickled ``OptimizationState`` after this commit (a sample's)."""
    error: tuple[int, bytes] | None = None
    """(size of the error dump before the append, the line appended)."""
    errors_size: int | None = None
    """A snapshot's: the size of the error dump, made durable before the snapshot."""


def encode(record: Record) -> bytes:
    """The payload of one journal frame."""
    fields = (record.trials, record.optimizer_state, record.error, record.errors_size)
    return _V2 + pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)


def decode(payload: bytes, path: Path) -> Record:
    """Read a payload of either version; ``CorruptedFileError`` naming ``path`` if it is bad."""
    v2 = payload[:1] == _V2
    try:
        obj = pickle.loads(payload[1:] if v2 else payload)  # noqa: S301 - written by this module
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same
        raise CorruptedFileError(path, f"a record does not unpickle: {e!r}") from None
    if not v2:
        obj = (obj, None, None, None)
    if not isinstance(obj, tuple) or len(obj) != 4:
        raise CorruptedFileError(path, "a record is not a list of trials")
    trials, state, error, errors_size = obj
    if not isinstance(trials, list) or not all(isinstance(t, Trial) for t in trials):
        raise CorruptedFileError(path, "a record is not a list of trials")
    if state is not None and not isinstance(state, bytes):
        raise CorruptedFileError(path, "a record's optimizer state is not bytes")
    if error is not None and not (
        isinstance(error, tuple)
        and len(error) == 2
        and isinstance(error[0], int)
        and isinstance(error[1], bytes)
    ):
        raise CorruptedFileError(path, "a record's error entry is malformed")
    if errors_size is not None and not isinstance(errors_size, int):
        raise CorruptedFileError(path, "a record's error dump size is not an integer")
    return Record(trials, state, error, errors_size)
