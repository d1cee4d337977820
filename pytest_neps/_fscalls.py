"""Kills at the n-th file change of a process: fault injection for any implementation.

The reference calls ``neps_state``'s fault hook at named points; another
implementation does not, so kills at those points never happen there. This
module reaches any Python implementation: it wraps the calls that change files
(``os.open`` and ``open`` for writing, ``os.write`` and ``os.fsync`` on such a
descriptor, ``os.mkdir``, ``os.rename``, ``os.replace``, ``os.unlink``,
``os.remove``, ``os.rmdir``, ``os.truncate``; ``pathlib`` goes through them),
counts those that touch the run directory, and SIGKILLs the process just before
the ``n``-th one: every change before it happened, none after. Counting alone
(``nth=None``) tells how many changes an operation makes.

A descriptor is judged by the file it names (``/proc/self/fd``, so descriptors
opened before counting began are seen too). Writes through buffered file objects
are counted when the file is opened, not byte by byte; calls made through
``ctypes`` are not seen. A process uses one ``FsCallKiller`` at a time.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_CALLS = ("mkdir", "rmdir", "unlink", "remove", "truncate")
_PAIR_CALLS = ("rename", "replace")


class FsCallKiller:
    """Count the file changes under ``root``; SIGKILL this process before the ``nth``."""

    def __init__(
        self, root: Path, nth: int | None, before_dying: Callable[[str], object] | None = None
    ) -> None:
        """Watch ``root``; ``nth=None`` only counts."""
        self.root = os.path.abspath(root) + os.sep
        self.nth = nth
        self.before_dying = before_dying
        self.calls: list[str] = []
        self._fds: set[int] = set()
        self._saved: dict[tuple[Any, str], Any] = {}

    def _under(self, path: Any, dir_fd: int | None = None) -> bool:
        if dir_fd is not None:
            return self._fd_under(dir_fd)
        if isinstance(path, int):
            return self._fd_under(path)
        try:
            full = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return False
        return (full + os.sep).startswith(self.root)

    def _fd_under(self, fd: int) -> bool:
        if fd in self._fds:
            return True
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return (target + os.sep).startswith(self.root)

    def _count(self, what: str) -> None:
        if self.nth is not None and len(self.calls) + 1 == self.nth:
            if self.before_dying is not None:
                self.before_dying(what)
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls.append(what)

    def __enter__(self) -> FsCallKiller:  # noqa: PYI034 - no typing.Self on Python 3.10
        """Install the wrappers."""
        self._wrap(os, "open", self._os_open)
        self._wrap(os, "close", self._os_close)
        self._wrap(os, "write", self._fd_call("write"))
        self._wrap(os, "fsync", self._fd_call("fsync"))
        self._wrap(os, "ftruncate", self._fd_call("ftruncate"))
        for name in _PATH_CALLS:
            self._wrap(os, name, self._path_call(name))
        for name in _PAIR_CALLS:
            self._wrap(os, name, self._pair_call(name))
        self._wrap(builtins, "open", self._open)
        self._wrap(io, "open", self._open)
        return self

    def __exit__(self, *exc: object) -> None:
        """Restore the originals."""
        for (module, name), original in self._saved.items():
            setattr(module, name, original)
        self._saved.clear()

    def _wrap(self, module: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self._saved[(module, name)] = getattr(module, name)
        setattr(module, name, wrapper)

    def _original(self, module: Any, name: str) -> Any:
        return self._saved[(module, name)]

    def _os_open(self, path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        watched = self._under(path, kwargs.get("dir_fd"))
        if watched and flags & _WRITE_FLAGS:
            self._count(f"open {os.fsdecode(path)}")
        fd: int = self._original(os, "open")(path, flags, *args, **kwargs)
        if watched:
            self._fds.add(fd)
        return fd

    def _os_close(self, fd: int) -> None:
        self._fds.discard(fd)
        self._original(os, "close")(fd)

    def _fd_call(self, name: str) -> Callable[..., Any]:
        def call(fd: int, *args: Any) -> Any:
            if self._fd_under(fd):
                self._count(f"{name} fd {fd}")
            return self._original(os, name)(fd, *args)

        return call

    def _path_call(self, name: str) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if self._under(path, kwargs.get("dir_fd")):
                self._count(f"{name} {os.fsdecode(path) if not isinstance(path, int) else path}")
            return self._original(os, name)(path, *args, **kwargs)

        return call

    def _pair_call(self, name: str) -> Callable[..., Any]:
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if self._under(src, kwargs.get("src_dir_fd")) or self._under(
                dst, kwargs.get("dst_dir_fd")
            ):
                self._count(f"{name} {os.fsdecode(src)} -> {os.fsdecode(dst)}")
            return self._original(os, name)(src, dst, *args, **kwargs)

        return call

    def _open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writing = any(c in mode for c in "wax+")
        if writing and not isinstance(file, int) and self._under(file):
            self._count(f"open({mode}) {os.fsdecode(file)}")
        return self._original(builtins, "open")(file, mode, *args, **kwargs)
