"""The trial cache ``configs/.trial_cache.journal``: a journal of framed records.

Layout: a 24-byte header (8-byte magic, 16-byte random token that names this
generation of the file), then records, each ``<u32 length><u32 crc32><payload>``
with a non-empty payload (zeros, as a power loss may leave, are not a record).
Appends happen under the trial lock; a consolidation writes a new generation
(new token) to a temp file, fsyncs it and renames it over the old one, whatever
the durability setting: a power loss never takes more than the records since.

A handle keeps the journal open and remembers how far it has read, so an
operation reads only what other processes appended since. A rename by another
process is seen as a different inode (the old one cannot be reused while this
handle keeps it open) and triggers a full re-read.
"""

from __future__ import annotations

import os
import secrets
import struct
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neps_state._errors import CorruptedFileError, ForeignCacheError, NePSError
from neps_state._io import (
    MAX_FILE_BYTES,
    fault_point,
    fsync_fd,
    open_regular,
    own_descriptor,
    truncate,
    write,
    write_atomic,
)
from neps_state._proc import pid

MAGIC = b"NEPSJRN1"
HEADER_SIZE = len(MAGIC) + 16
_FRAME = struct.Struct("<II")


def frame(payload: bytes) -> bytes:
    """One record as it is stored: length, checksum, payload."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def parse_frames(data: bytes, start: int, *, empty_ok: bool = False) -> tuple[list[bytes], int]:
    """Records in ``data[start:]`` up to the first short or damaged one; and where that is.

    An empty payload ends the records unless ``empty_ok``: it is what a run of
    zero bytes parses as, and journal records are never empty.
    """
    payloads: list[bytes] = []
    pos, end = start, len(data)
    while end - pos >= _FRAME.size:
        length, crc = _FRAME.unpack_from(data, pos)
        body = pos + _FRAME.size
        if end - body < length or (length == 0 and not empty_ok):
            break
        payload = data[body : body + length]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        pos = body + length
    return payloads, pos


@dataclass
class ReadResult:
    """What a refresh found: new payloads, whether they start a new generation, a bad tail."""

    payloads: list[bytes]
    reset: bool
    bad_tail: bytes


class Journal:
    """Reader and appender of the journal at ``path``; not thread-safe, lock held by caller."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self._pid = -1
        self._fd = -1
        self._closer: weakref.finalize[Any, Any] | None = None
        self._ident: tuple[int, int] | None = None
        self.token = b""
        self.offset = 0
        self.records = 0
        self.snapshot_end = 0
        self.unsynced = False

    def close(self) -> None:
        """Forget the open descriptor (the next refresh reopens and re-reads)."""
        if self._pid == pid() and self._closer is not None:
            self._closer()
        self._pid, self._fd, self._ident, self._closer = -1, -1, None, None

    def refresh(self) -> ReadResult | None:
        """Read what was appended since the last call; None if the file is missing.

        Raises ``ForeignCacheError`` if the file has no valid header.
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self.close()
            return None
        reset = self._pid != pid() or self._ident != (st.st_dev, st.st_ino)
        if reset:
            self._reopen()
        size = os.fstat(self._fd).st_size
        if size - self.offset > MAX_FILE_BYTES:
            raise CorruptedFileError(
                self.path, f"holds {size} bytes, more than a journal may grow (damaged?)"
            )
        data = os.pread(self._fd, size - self.offset, self.offset) if size > self.offset else b""
        payloads, used = parse_frames(data, 0)
        if reset and payloads:
            self.snapshot_end = self.offset + _FRAME.size + len(payloads[0])
        self.offset += used
        self.records += len(payloads)
        return ReadResult(payloads, reset, data[used:])

    def unread(self, result: ReadResult) -> None:
        """Forget what ``result`` read (a record in it is bad): the next refresh reads it again."""
        if result.reset:
            self.close()  # the next refresh reopens the file and starts over
            return
        self.offset -= sum(_FRAME.size + len(p) for p in result.payloads)
        self.records -= len(result.payloads)

    def _reopen(self) -> None:
        self.close()
        fd = open_regular(self.path, os.O_RDWR | os.O_APPEND)
        head = os.pread(fd, HEADER_SIZE, 0)
        if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
            os.close(fd)
            raise ForeignCacheError(f"{self.path} is not a neps_state journal")
        st = os.fstat(fd)
        self._pid, self._fd, self._ident = pid(), fd, (st.st_dev, st.st_ino)
        self._closer = own_descriptor(self, fd)
        self.token = head[len(MAGIC) :]
        self.offset = HEADER_SIZE
        self.snapshot_end = HEADER_SIZE
        self.records = 0

    def truncate_tail(self) -> None:
        """Cut the file back to the end of the last good record."""
        truncate(self._fd, self.offset)
        if self.fsync:
            fsync_fd(self._fd)

    def append(self, payload: bytes) -> None:
        """Append one record (not yet fsynced: see :meth:`flush`).

        The caller holds the lock and has just refreshed.
        """
        record = frame(payload)
        write(self._fd, record)
        self.unsynced = True
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        if end != self.offset + len(record):
            # With the lock held nobody else appends: this is a broken lock.
            raise NePSError(
                f"{self.path}: another process appended at the same time"
                f" (expected end {self.offset + len(record)}, found {end});"
                " the trial lock is not being respected"
            )
        self.offset = end
        self.records += 1

    def flush(self) -> None:
        """Make this handle's appends durable (with fsync durability).

        Meant to be called after the lock is released: concurrent flushes of several
        processes then share one disk commit (group commit). An operation is
        acknowledged only after its flush, so it is durable when it returns.
        """
        if self.unsynced and self.fsync:
            fsync_fd(self._fd)
        self.unsynced = False

    def rewrite(self, payloads: list[bytes]) -> None:
        """Atomically and durably replace the journal with a new generation of ``payloads``."""
        token = secrets.token_bytes(16)
        data = MAGIC + token + b"".join(frame(p) for p in payloads)
        write_atomic(self.path, data, fsync=True, fault="consolidate.written")
        fault_point("consolidate.renamed")
        self.unsynced = False  # everything appended is in the new, fsynced generation
        self.close()
        self._reopen()
        self.offset = len(data)
        self.snapshot_end = HEADER_SIZE + (len(frame(payloads[0])) if payloads else 0)
        self.records = len(payloads)

    @property
    def tail_bytes(self) -> int:
        """Bytes appended after the generation's first record (its snapshot)."""
        return self.offset - self.snapshot_end
