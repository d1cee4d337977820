"""Spares: files and folders created before a lock is taken, filled and renamed under it.

Creating a file is the dearest step of a write on some file systems: ext4 without
a journal scans past every inode freed in the last minutes at each creation (0.1
to 1 ms per file on the benchmark machine, against ~20 us for a rename). A spare
is created empty outside the critical section, so that inside it only writes and
one rename remain.

The owner holds a ``flock`` on its spare until the spare is placed, so that
:func:`sweep` removes only the spares of processes that died. A spare swept by
mistake (one created but not yet locked) costs nothing but the fallback: its
owner then writes the file under the lock, the usual way.

Replacing a file frees the old one, which costs as much again there (its blocks
are freed and discarded). So a placed spare *swaps* names with the file it
replaces (:func:`~neps_state._io.exchange`): the old file keeps the spare's name
until it is removed after the lock (anybody may remove it at any time). A file
replaced again within seconds, like the optimizer state, is then never written
to disk at all. Where names can't be swapped, the old file is first *retired*
(given a second, spare-like name) and the spare renamed over it.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neps_state._io import (
    create,
    exchange,
    fsync_fd,
    link,
    mkdir,
    preallocate,
    remove_tree,
    rename,
    unlink,
    write,
)
from neps_state._proc import pid, unique

logger = logging.getLogger(__name__)

SPARE_INFIX = ".spare-"
"""Spares are named ``.<target name>.spare-<random>`` (files) or ``.spare-<random>`` (folders)."""


@dataclass
class _Held:
    """A created spare: its path, the descriptors its owner keeps, and its cleanup."""

    path: Path
    lock_fd: int
    fds: dict[str, int] = field(default_factory=dict)
    outside: dict[str, Path] = field(default_factory=dict)
    """A folder's files made beside it, each moved in when filled."""
    cleanup: weakref.finalize[Any, Any] | None = None

    def close(self) -> None:
        """Forget the spare: close its descriptors (releasing the flock), keep the path."""
        if self.cleanup is not None:
            self.cleanup.detach()
        _close_all([self.lock_fd, *self.fds.values()])

    def discard(self) -> None:
        """Remove the spare and close its descriptors."""
        self.close()
        for path in (self.path, *self.outside.values()):
            _remove(path)


def _close_all(fds: list[int]) -> None:
    for fd in dict.fromkeys(fds):
        with contextlib.suppress(OSError):
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir():
        remove_tree(path)
    else:
        unlink(path)


def _discard_at_exit(paths: list[Path], fds: list[int], owner: int) -> None:
    # Runs when the owner is garbage collected or the interpreter exits; a forked
    # child inherits the finalizer but must leave its parent's spare alone.
    if pid() == owner:
        _close_all(fds)
        for path in paths:
            _remove(path)


def retire(path: Path, into: Path) -> Path | None:
    """Give the file at ``path`` a second name in the folder ``into``; None if there is none.

    A rename over ``path`` then frees nothing: the caller unlinks the second name
    later, outside its critical section.
    """
    retired = into / f"{SPARE_INFIX}{unique()}"
    try:
        link(path, retired)
    except FileNotFoundError:
        return None
    return retired


def unlink_all(paths: list[Path]) -> None:
    """Remove these names (retired or unused files); those already gone are fine."""
    for path in paths:
        unlink(path)
    paths.clear()


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def hold_file(directory: Path, name: str, data: bytes) -> tuple[Path, int]:
    """A new file ``.<name>.spare-<unique>`` in ``directory`` holding ``data``; and its descriptor.

    Locked like a spare (:func:`sweep` leaves it alone) until the descriptor is
    closed; the caller renames it into place, or removes it, before closing.
    """
    path = directory / f".{name}{SPARE_INFIX}{unique()}"
    fd = create(path)
    try:
        _lock(fd)
        preallocate(fd, len(data))
        write(fd, data)
    except BaseException:
        _close_all([fd])
        unlink(path)
        raise
    return path, fd


class _Spare(abc.ABC):
    """What both kinds share: a spare for the span of one operation, taken at most once."""

    def __init__(self) -> None:
        self._held: _Held | None = None
        self._pid = -1
        self._retired: list[Path] = []

    @contextmanager
    def ahead(self) -> Iterator[None]:
        """Create the spare (enter before taking the lock); remove it at exit if unused.

        Failing to create it only logs: the write then creates its file under the lock.
        Nested (an optimizer that samples from inside ``ask``), the outer spare serves.
        """
        if self._held is not None and self._pid == pid():
            yield
            return
        self._held, self._pid = None, pid()
        try:
            held = self._create()
        except OSError as e:
            logger.debug("No spare (%s): the write will create its file under the lock", e)
        else:
            held.cleanup = weakref.finalize(
                self,
                _discard_at_exit,
                [held.path, *held.outside.values()],
                [held.lock_fd, *held.fds.values()],
                self._pid,
            )
            self._held = held
        try:
            yield
        finally:
            unused = self._take()
            if unused is not None:
                unused.discard()
            unlink_all(self._retired)

    @abc.abstractmethod
    def _create(self) -> _Held:
        """Create the spare and lock it."""

    def _take(self) -> _Held | None:
        held = self._held if self._pid == pid() else None
        self._held = None
        return held


class SpareFile(_Spare):
    """A spare for the file ``target``, created next to it."""

    def __init__(self, target: Path) -> None:
        super().__init__()
        self.target = target
        self._swaps = True  # until the file system says it can't

    def _create(self) -> _Held:
        path = self.target.with_name(f".{self.target.name}{SPARE_INFIX}{unique()}")
        fd = create(path)
        try:
            _lock(fd)
        except OSError:
            _close_all([fd])
            unlink(path)
            raise
        return _Held(path, fd)

    def place(self, data: bytes, *, fsync: bool) -> bool:
        """Replace the target with ``data`` through the spare; False if there is none."""
        held = self._take()
        if held is None:
            return False
        try:
            if not self._swaps:
                preallocate(held.lock_fd, len(data))
            write(held.lock_fd, data)
            if fsync:
                fsync_fd(held.lock_fd)
            self._swaps = self._swaps and exchange(held.path, self.target)
            if self._swaps:
                self._retired.append(held.path)  # now the old file
            else:
                retired = retire(self.target, self.target.parent)
                if retired is not None:
                    self._retired.append(retired)
                rename(held.path, self.target)
        except FileNotFoundError:
            held.discard()
            return False
        except BaseException:
            held.discard()
            raise
        held.close()
        return True


class SpareFolder(_Spare):
    """A spare for a new folder in ``parent``, with empty files named ``names``.

    The files are made in ``parent``, beside the folder, and moved into it when
    filled: on ext4 a new file in a folder just created costs up to ten times one
    in a long-used folder (its inodes come from a block group not yet in use).
    """

    def __init__(self, parent: Path, names: tuple[str, ...]) -> None:
        super().__init__()
        self.parent = parent
        self.names = names

    def _create(self) -> _Held:
        token = unique()
        path = self.parent / f"{SPARE_INFIX}{token}"
        mkdir(path)
        held = _Held(path, -1)
        try:
            held.lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            _lock(held.lock_fd)
            for name in self.names:
                beside = self.parent / f"{SPARE_INFIX}{token}-{name}"
                held.fds[name] = fd = create(beside)
                held.outside[name] = beside
                _lock(fd)
        except OSError:
            held.discard()
            raise
        return held

    def fill(self, files: dict[str, bytes | None]) -> Path | None:
        """Write ``files`` (None: no such file) into the spare; its path, or None if there is none.

        The caller renames the returned folder into place (and falls back to a
        folder of its own if that rename finds it gone).
        """
        held = self._take()
        if held is None:
            return None
        try:
            for name, data in files.items():
                fd = held.fds.get(name)
                if data is None:
                    if fd is not None:
                        unlink(held.outside.pop(name), missing_ok=False)
                elif fd is None:
                    fd = held.fds[name] = create(held.path / name)
                    write(fd, data)
                else:
                    write(fd, data)
                    rename(held.outside.pop(name), held.path / name)
            for name in held.fds.keys() - files.keys():
                unlink(held.outside.pop(name), missing_ok=False)
        except FileNotFoundError:
            held.discard()
            return None
        except BaseException:
            held.discard()
            raise
        held.close()
        return held.path


def sweep(directory: Path) -> int:
    """Remove the spares in ``directory`` whose owners are gone; return how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if SPARE_INFIX not in entry.name:
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                _lock(fd)
            except BlockingIOError:
                continue
            # Only the name is removed: if the owner placed the spare meanwhile,
            # the name is gone and the placed file is not touched.
            _remove(Path(entry.path))
            removed += 1
        finally:
            _close_all([fd])
    if removed:
        logger.info("Removed %d spare(s) left by dead processes in %s", removed, directory)
    return removed
