"""Journal records: the trials one commit stored, and what it made durable with them.

A record is what one journal frame holds. Besides the trials it may carry the
optimizer state the commit leaves behind (a sample's), and the error line the
commit appended to ``shared_errors.jsonl`` with the dump's size before it (a
report's). With them the journal, whose appends are fsynced, can rebuild every
other file of the run after a power loss (see ``TrialRepo.recover``).

Version 2 (written): ``b"J"``, the length of a JSON document (``<u32``), the JSON
document (the trials, as in their folders, plus the error entry), then the
optimizer state's bytes, if any. Values JSON lacks (mappings with keys that are
not strings, dates, bytes) are tagged. Decoding builds every trial through the
same typed checks as reading its folder: a damaged record is a
``CorruptedFileError`` naming the journal, and nothing in it can run code.
Version 1 (a pickled list of trials, written by 0.1) is still read, through the
allowlisted unpickler (``_pickles``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neps_state import _pickles
from neps_state._errors import CorruptedFileError, UsageError
from neps_state._trial import Trial
from neps_state._trialfiles import metadata_from, report_from

_JSON = b"J"
_LEN = struct.Struct("<I")
_TAG = "\x00neps:"  # (a key of a user's mapping that starts with NUL is tagged too)
_MAP, _DATETIME, _DATE, _BYTES = (f"{_TAG}{k}" for k in ("map", "datetime", "date", "bytes"))


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
    errors_digest: str | None = None
    """A snapshot that rewrote the error dump (records removed): the new dump's SHA-256."""


def encode(record: Record) -> bytes:
    """The payload of one journal frame; ``ValueError`` for a value JSON cannot carry."""
    body: dict[str, Any] = {"t": [_trial_json(t) for t in record.trials]}
    if record.error is not None:
        body["e"] = [record.error[0], record.error[1].decode("utf-8")]
    if record.errors_size is not None:
        body["z"] = record.errors_size
    if record.errors_digest is not None:
        body["d"] = record.errors_digest
    doc = _ENCODER.encode(body).encode("utf-8")
    return b"".join((_JSON, _LEN.pack(len(doc)), doc, record.optimizer_state or b""))


def decode(payload: bytes, path: Path) -> Record:
    """Read a payload of any version; ``CorruptedFileError`` naming ``path`` if it is bad."""
    if payload[:1] == _JSON:
        return _decode_json(payload, path)
    return _decode_pickled(payload, path)


def _trial_json(trial: Trial) -> dict[str, Any]:
    report = trial.report
    return {
        "c": _jsonable(trial.config),
        "m": trial.metadata.to_dict(),
        "r": None if report is None else _jsonable(report.to_dict()),
        "s": trial.source,
    }


_PLAIN = frozenset({str, int, float, bool, type(None)})
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    """``value`` in JSON's types, tagging what JSON lacks; ``ValueError`` if impossible."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict or kind is list or kind is tuple:
        return _container(value)
    if isinstance(value, str | bool | int | float):  # subclasses (enums of str, ...)
        return value
    return _tagged(value)


def _container(value: Any) -> Any:
    if type(value) is not dict:
        plain = all(type(v) in _PLAIN for v in value)
        return value if plain else [_jsonable(v) for v in value]
    if not all(type(k) is str and k[:1] != "\x00" for k in value):
        return {_MAP: [[_jsonable(k), _jsonable(v)] for k, v in value.items()]}
    if all(type(v) in _PLAIN for v in value.values()):
        return value  # the common case: a flat mapping of scalars, as it is
    return {k: _jsonable(v) for k, v in value.items()}


def _tagged(value: Any) -> dict[str, str]:
    if isinstance(value, dt.datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dt.date):
        return {_DATE: value.isoformat()}
    if isinstance(value, bytes):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    raise UsageError(f"a {type(value).__name__} cannot be stored in a trial: {value!r}")


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) != 1:
        return obj
    [(key, value)] = obj.items()
    if not key.startswith(_TAG):
        return obj
    if key == _MAP:
        return {_hashable(k): v for k, v in value}
    if key == _DATETIME:
        return dt.datetime.fromisoformat(value)
    if key == _DATE:
        return dt.date.fromisoformat(value)
    if key == _BYTES:
        return base64.b64decode(value, validate=True)
    raise ValueError(f"unknown tag {key[len(_TAG) :]!r}")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _decode_json(payload: bytes, path: Path) -> Record:
    if len(payload) < 1 + _LEN.size:
        raise CorruptedFileError(path, "a record is cut short")
    (size,) = _LEN.unpack_from(payload, 1)
    start = 1 + _LEN.size
    if start + size > len(payload):
        raise CorruptedFileError(path, "a record is cut short")
    try:
        body = json.loads(payload[start : start + size], object_hook=_untag)
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CorruptedFileError(path, f"a record is not valid JSON: {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("t"), list):
        raise CorruptedFileError(path, "a record holds no list of trials")
    trials = [_trial_from(path, t) for t in body["t"]]
    error = body.get("e")
    if error is not None:
        if not (
            isinstance(error, list)
            and len(error) == 2
            and isinstance(error[0], int)
            and isinstance(error[1], str)
        ):
            raise CorruptedFileError(path, "a record's error entry is malformed")
        error = (error[0], error[1].encode("utf-8"))
    errors_size = body.get("z")
    if errors_size is not None and (type(errors_size) is not int or errors_size < 0):
        raise CorruptedFileError(path, "a record's error dump size is not a size")
    digest = body.get("d")
    if digest is not None and not isinstance(digest, str):
        raise CorruptedFileError(path, "a record's error dump digest is not text")
    state = payload[start + size :] or None
    return Record(trials, state, error, errors_size, digest)


def _trial_from(path: Path, obj: Any) -> Trial:
    if not isinstance(obj, dict) or not isinstance(obj.get("c"), dict):
        raise CorruptedFileError(path, "a record's trial is not an object with a config")
    source = obj.get("s", "run")
    if not isinstance(source, str):
        raise CorruptedFileError(path, "a record's trial source is not text")
    report = obj.get("r")
    return Trial(
        config=obj["c"],
        metadata=metadata_from(path, obj.get("m")),
        report=None if report is None else report_from(path, report),
        source=source,
    )


def _decode_pickled(payload: bytes, path: Path) -> Record:
    """Version 1: a pickled list of trials."""
    trials = _pickles.loads(payload, path)
    if not isinstance(trials, list) or not all(isinstance(t, Trial) for t in trials):
        raise CorruptedFileError(path, "a record is not a list of trials")
    return Record(trials)
