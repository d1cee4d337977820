"""The shared error dump: one JSON object per line in ``shared_errors.jsonl``.

The file only ever grows: records are appended under the errors lock, one
``write`` per record, and fsynced (``fsync`` durability) after the locks are
released, with the journal record that carries the same line. NePS writes its
last record without a newline: a last line that is a whole record is one (a
newline is added before the next record is appended). A last line that is not
is the trace of a writer killed mid-append; it is moved aside (never silently
dropped) under the lock.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from neps_state._errors import CorruptedFileError, SerializedError
from neps_state._io import (
    create,
    dump_json,
    fsync_fd,
    open_regular,
    read_file,
    save_aside,
    truncate,
    write,
)
from neps_state._locks import FileLocker

logger = logging.getLogger(__name__)


@dataclass
class SerializableTrialError:
    """One error record: which trial, which worker, the error's type, text and traceback."""

    trial_id: str
    worker_id: str
    err_type: str
    err: str
    tb: str | None

    def as_raisable(self) -> SerializedError:
        """An exception carrying this record's information."""
        return SerializedError(
            f"Trial {self.trial_id!r} failed in worker {self.worker_id!r}:"
            f"\n{self.tb or ''}\n{self.err_type}: {self.err}"
        )

    def to_line(self) -> bytes:
        """The record as one JSON line."""
        return dump_json(asdict(self)) + b"\n"


_RECORD_FIELDS = tuple(f.name for f in fields(SerializableTrialError))
_Record = SerializableTrialError  # for annotations inside ErrDump, whose attribute shadows it


@dataclass
class ErrDump:
    """All error records of a run, oldest first."""

    SerializableTrialError: ClassVar[type[_Record]] = SerializableTrialError

    errs: list[_Record] = field(default_factory=list)

    def append(self, err: _Record) -> None:
        """Add a record."""
        self.errs.append(err)

    def __len__(self) -> int:
        return len(self.errs)

    def __bool__(self) -> bool:
        return bool(self.errs)

    def empty(self) -> bool:
        """Whether there are no records."""
        return not self.errs

    def latest_err_as_raisable(self) -> SerializedError | None:
        """The newest record as an exception, if any."""
        return self.errs[-1].as_raisable() if self.errs else None


def parse_records(path: Path, data: bytes) -> tuple[list[SerializableTrialError], int]:
    """Parse complete lines; return the records and the length of the good prefix."""
    records: list[SerializableTrialError] = []
    end = data.rfind(b"\n") + 1
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptedFileError(path, f"line {number} is not valid JSON: {e}") from None
        records.append(record_from(path, number, obj))
    return records, end


def _whole_record(path: Path, line: bytes, number: int) -> SerializableTrialError | None:
    """The last line as a record if it is a whole one (NePS ends without a newline)."""
    try:
        return record_from(path, number, json.loads(line))
    except (ValueError, UnicodeDecodeError, CorruptedFileError):
        return None


def record_from(path: Path, number: int, obj: Any) -> SerializableTrialError:
    """One line's record, checked; ``CorruptedFileError`` naming ``path`` and the line."""
    if not isinstance(obj, dict):
        raise CorruptedFileError(path, f"line {number} is not a JSON object")
    missing = [k for k in _RECORD_FIELDS if k not in obj]
    if missing:
        raise CorruptedFileError(path, f"line {number} lacks {', '.join(missing)}")
    for key in ("trial_id", "worker_id", "err_type", "err"):
        if not isinstance(obj[key], str):
            raise CorruptedFileError(path, f"line {number}: {key} is not a string")
    if obj["tb"] is not None and not isinstance(obj["tb"], str):
        raise CorruptedFileError(path, f"line {number}: tb is not a string or null")
    return SerializableTrialError(**{k: obj[k] for k in _RECORD_FIELDS})


class ErrorLog:
    """The error dump file and its lock. Methods marked *locked* need ``lock``."""

    def __init__(self, path: Path, lock: FileLocker, *, fsync: bool) -> None:
        self.path = path
        self.lock = lock
        self.fsync = fsync
        self.unsynced = False

    def size(self) -> int:
        """Current size in bytes (0 when the file does not exist yet)."""
        try:
            return os.lstat(self.path).st_size
        except FileNotFoundError:
            return 0

    def read(self) -> ErrDump:
        """Every complete record (*locked*); a torn last line is moved aside."""
        if not os.path.lexists(self.path):
            return ErrDump()
        data = read_file(self.path)
        records, end = parse_records(self.path, data)
        if end < len(data):
            last = _whole_record(self.path, data[end:], data.count(b"\n") + 1)
            if last is None:
                self._drop_tail(end, data[end:])
            else:
                records.append(last)
        return ErrDump(records)

    def without(self, trial_id: str) -> bytes | None:
        """The dump's bytes without the records of ``trial_id`` (*locked*); None if it has none.

        A torn last line is moved aside first (as :meth:`read` does); every kept line
        ends in a newline.
        """
        self.read()
        if not os.path.lexists(self.path):
            return None
        data = read_file(self.path)
        kept: list[bytes] = []
        dropped = 0
        for number, line in enumerate(data.splitlines(keepends=True), start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except (ValueError, UnicodeDecodeError) as e:
                    raise CorruptedFileError(
                        self.path, f"line {number} is not valid JSON: {e}"
                    ) from None
                if record_from(self.path, number, obj).trial_id == trial_id:
                    dropped += 1
                    continue
            kept.append(line if line.endswith(b"\n") else line + b"\n")
        return b"".join(kept) if dropped else None

    def end_last_line(self) -> None:
        """End a last record written without its newline (NePS's) before appending (*locked*)."""
        try:
            fd = open_regular(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.lseek(fd, 0, os.SEEK_END)
                write(fd, b"\n")
                self.unsynced = True
        finally:
            os.close(fd)

    def append(self, line: bytes) -> None:
        """Append one record line (*locked*); durable after :meth:`flush`."""
        fd = create(self.path, flags=os.O_WRONLY | os.O_APPEND, exclusive=False)
        try:
            write(fd, line)
        finally:
            os.close(fd)
        self.unsynced = True

    def flush(self) -> None:
        """Make this handle's appends durable (with fsync durability); no lock needed."""
        if self.unsynced and self.fsync:
            self._fsync()
        self.unsynced = False

    def make_durable(self) -> int:
        """Fsync the dump whatever the durability, and return its size (*locked*)."""
        self._fsync()
        self.unsynced = False
        return self.size()

    def _fsync(self) -> None:
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            return
        try:
            fsync_fd(fd)
        finally:
            os.close(fd)

    def ensure_appended(self, size_before: int, line: bytes) -> None:
        """Finish an append a crashed writer began at ``size_before`` (*locked*)."""
        size = self.size()
        if size == size_before + len(line):
            return
        if size > size_before + len(line):
            # Someone appended after it: the record is there or can't be placed.
            logger.warning("%s grew past an interrupted append; left as it is", self.path)
            return
        if size > size_before:
            self._drop_tail(size_before, read_file(self.path)[size_before:])
        self.append(line)

    def _drop_tail(self, keep: int, tail: bytes) -> None:
        aside = save_aside(self.path, "torn", tail, fsync=self.fsync)
        fd = open_regular(self.path, os.O_WRONLY)
        try:
            truncate(fd, keep)
        finally:
            os.close(fd)
        logger.warning(
            "%s ended in %d bytes of an interrupted append; moved them to %s",
            self.path,
            len(tail),
            aside,
        )
