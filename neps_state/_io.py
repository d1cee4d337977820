"""File primitives of a run directory: every change to one goes through this module.

Every rewrite is a complete file given its name in one step: :func:`write_atomic`
(a temp file in the same directory, fsync when durability asks for it,
``os.replace``, an fsync of the directory) or a spare placed by :func:`exchange`
or a rename. Readers therefore see the old file or the new one, never a part.

Because every create, write, rename, unlink and fsync of a run directory is one
of the functions below, a *tracer* (:func:`set_tracer`) sees each of them in
order: the crash-state enumerator of ``pytest_neps`` replays subsets of such a
trace to build every state a file system may persist after a power loss.

Fault points: :func:`fault_point` marks the instants at which a crash is most
interesting (between the trial-directory write and the cache record, during a
consolidation, while a lock is held). They do nothing unless a test harness
installs a hook with :func:`set_fault_hook`, e.g. one that SIGKILLs the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import stat
import sys
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from neps_state import _pickles as pickles
from neps_state._errors import CorruptedFileError
from neps_state._fastyaml import FastYaml
from neps_state._proc import unique

FAULT_POINTS: tuple[str, ...] = (
    "lock.acquired",
    "create.state_written",
    "create.info_written",
    "sample.optimizer_state_written",
    "store.staged",
    "store.dir_renamed",
    "store.committed",
    "update.files_written",
    "update.committed",
    "report.error_appended",
    "consolidate.written",
    "consolidate.renamed",
    "state.written",
    "state.committed",
    "clean.prepared",
    "clean.committed",
)
"""Every named point at which a harness may inject a fault."""

FaultHook = Callable[[str], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> FaultHook | None:
    """Install ``hook`` (called with the point's name) and return the previous one."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def fault_point(name: str) -> None:
    """Give an installed fault hook the chance to act at the point ``name``."""
    if _fault_hook is not None:
        _fault_hook(name)


def own_descriptor(owner: object, fd: int) -> weakref.finalize[Any, Any]:
    """Tie ``fd`` to ``owner``: closed when ``owner`` is garbage collected, or when called."""
    return weakref.finalize(owner, _close_quietly, fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class Tracer(Protocol):
    """Sees every change to the file system made through this module, after it succeeded."""

    def __call__(self, op: str, **args: Any) -> None:
        """Called after each change.

        ``op`` is one of ``create mkdir write truncate fallocate fsync rename exchange
        link unlink rmdir``; ``args`` name the paths (``path``, ``src``, ``dst``) or the
        descriptor (``fd``) and, for data, ``offset`` and ``data`` (or ``size``).
        """


_tracer: Tracer | None = None


def set_tracer(tracer: Tracer | None) -> Tracer | None:
    """Install ``tracer`` (None: none) and return the previous one."""
    global _tracer
    previous, _tracer = _tracer, tracer
    return previous


_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Flags of every open in a run directory: never follow a symbolic link, never block
on a FIFO (``open_regular`` then refuses anything but a regular file)."""


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open a regular file of a run directory; ``CorruptedFileError`` for anything else.

    A symbolic link is not followed, a FIFO or device is not waited on: each is refused
    naming the path (so a crafted entry never leads outside the run or blocks).
    """
    try:
        fd = os.open(path, flags | _SAFE, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptedFileError(path, "is a symbolic link (not followed)") from None
        if e.errno == errno.ENXIO:
            raise CorruptedFileError(path, "is a FIFO or socket, not a file") from None
        if e.errno == errno.EISDIR:
            raise CorruptedFileError(path, "is a directory, not a file") from None
        raise
    if flags & os.O_CREAT and flags & os.O_EXCL:
        return fd  # created by this call: a regular file, nothing else can be there
    mode_now = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode_now):
        os.close(fd)
        raise CorruptedFileError(path, f"is a {_kind(mode_now)}, not a regular file")
    return fd


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"


def is_real_dir(path: Path) -> bool:
    """Whether ``path`` is a folder itself (a symbolic link to one is not)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def create(path: Path, *, flags: int = os.O_WRONLY, exclusive: bool = True) -> int:
    """Open ``path`` with ``O_CREAT`` (and ``O_EXCL`` unless ``exclusive=False``).

    As :func:`open_regular`: a symbolic link, FIFO or device there is refused.
    """
    flags |= os.O_CREAT | (os.O_EXCL if exclusive else 0)
    if _tracer is None:
        return open_regular(path, flags)
    existed = not exclusive and os.path.lexists(path)
    fd = open_regular(path, flags)
    if not existed:
        _tracer("create", path=Path(path))
    return fd


def write(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` at the descriptor's position (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if _tracer is not None and data:
        end = os.lseek(fd, 0, os.SEEK_CUR)
        _tracer("write", fd=fd, offset=end - len(data), data=bytes(data))


def pwrite(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` (a positioned write, same size in the common case)."""
    view, at = memoryview(data), offset
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n
    if _tracer is not None and data:
        _tracer("write", fd=fd, offset=offset, data=bytes(data))


def truncate(fd: int, size: int) -> None:
    """Cut (or extend with zeros) the open file to ``size`` bytes."""
    os.ftruncate(fd, size)
    if _tracer is not None:
        _tracer("truncate", fd=fd, size=size)


def preallocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes for ``fd`` ahead of the write, where the file system can."""
    # ext4 forces writeback of delayed-allocation data when a rename replaces a
    # file (auto_da_alloc); allocating the blocks up front avoids that stall
    # (measured: ~120 -> ~70 us per replace). Not every filesystem supports it.
    if not size:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        return
    if _tracer is not None:
        _tracer("fallocate", fd=fd, size=size)


def fsync_fd(fd: int) -> None:
    """Make the open file's data durable."""
    os.fsync(fd)
    if _tracer is not None:
        _tracer("fsync", fd=fd)


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` durable (a rename is only durable then)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def rename(src: Path, dst: Path) -> None:
    """Give ``src`` the name ``dst``, replacing a file there, in one atomic step."""
    os.replace(src, dst)
    if _tracer is not None:
        _tracer("rename", src=Path(src), dst=Path(dst))


def link(src: Path, dst: Path) -> None:
    """Give the file ``src`` the second name ``dst``."""
    os.link(src, dst)
    if _tracer is not None:
        _tracer("link", src=Path(src), dst=Path(dst))


def unlink(path: Path, *, missing_ok: bool = True) -> None:
    """Remove the name ``path``; a missing one is fine unless ``missing_ok=False``."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return
    if _tracer is not None:
        _tracer("unlink", path=Path(path))


def mkdir(path: Path, *, exist_ok: bool = False) -> None:
    """Create the folder ``path``."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if exist_ok and os.path.isdir(path):
            return
        raise
    if _tracer is not None:
        _tracer("mkdir", path=Path(path))


def rmdir(path: Path) -> None:
    """Remove the empty folder ``path``."""
    os.rmdir(path)
    if _tracer is not None:
        _tracer("rmdir", path=Path(path))


TMP_INFIX = ".tmp-"
"""Temp files are named ``.<name>.tmp-<random>``; readers never look at them."""


def tmp_sibling(path: Path) -> Path:
    """A fresh, unique temp path in the same directory as ``path``."""
    return path.with_name(f".{path.name}{TMP_INFIX}{unique()}")


def write_atomic(
    path: Path,
    data: bytes,
    *,
    fsync: bool,
    sync_dir: bool = True,
    fault: str = "",
    tmp_dir: Path | None = None,
) -> None:
    """Replace ``path`` with ``data`` so that readers see all of it or none of it.

    With ``sync_dir=False`` the caller fsyncs the directory once for several files;
    ``fault`` names a fault point between the complete temp file and the rename;
    ``tmp_dir`` (same file system) holds the temp file instead of ``path``'s folder.
    """
    tmp = tmp_sibling(path) if tmp_dir is None else tmp_dir / tmp_sibling(path).name
    fd = create(tmp)
    try:
        try:
            preallocate(fd, len(data))
            write(fd, data)
            if fsync:
                fsync_fd(fd)
        finally:
            os.close(fd)
        if fault:
            fault_point(fault)
        try:
            rename(tmp, path)
        except (IsADirectoryError, NotADirectoryError) as e:
            raise CorruptedFileError(path, f"cannot be replaced: {e.strerror}") from None
    except BaseException:
        unlink(tmp)
        raise
    if fsync and sync_dir:
        fsync_dir(path.parent)
        if tmp_dir is not None and tmp_dir != path.parent:
            fsync_dir(tmp_dir)


def _load_renameat2() -> Any:
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no C library, or one older than glibc 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_CANNOT_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV})


def exchange(a: Path, b: Path) -> bool:
    """Swap the files named ``a`` and ``b`` in one atomic step; False where the system can't.

    Linux's ``renameat2(RENAME_EXCHANGE)``. Unlike a rename over ``b``, it frees
    nothing (the old ``b`` is left at ``a``), and ext4 does not write the new
    file out at once, as it does for a rename that replaces a file (auto_da_alloc).
    A missing name raises ``FileNotFoundError``; nothing is changed when it fails.
    """
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        if _tracer is not None:
            _tracer("exchange", src=Path(a), dst=Path(b))
        return True
    err = ctypes.get_errno()
    if err in _CANNOT_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def remove_tree(path: Path) -> None:
    """Remove a directory so that it vanishes at once: rename it away, then delete."""
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    try:
        rename(path, trash)
    except FileNotFoundError:
        return
    _delete_tree(trash)


def _delete_tree(path: Path) -> None:
    """Delete a folder no one else uses, bottom-up; what vanishes meanwhile is fine."""
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _delete_tree(Path(entry.path))
        else:
            unlink(Path(entry.path))
    with contextlib.suppress(OSError):
        rmdir(path)


def save_aside(path: Path, suffix: str, data: bytes, *, fsync: bool) -> Path:
    """Keep bytes we are about to drop in a sibling file, for forensics; return its path."""
    target = path.with_name(f"{path.name}.{suffix}-{secrets.token_hex(4)}")
    write_atomic(target, data, fsync=fsync)
    return target


_YAML_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_text(obj: object) -> str:
    text: str = yaml.dump(obj, Dumper=_YAML_DUMPER, sort_keys=False, allow_unicode=True)
    return text


_FAST_YAML = FastYaml(_yaml_text)


def dump_yaml(obj: object, path: Path) -> bytes:
    """Serialize to YAML, or raise ``CorruptedFileError`` naming the file it was for."""
    text = _FAST_YAML.dump(obj)
    if text is None:
        try:
            text = _yaml_text(obj)
        except yaml.YAMLError as e:
            raise CorruptedFileError(path, f"cannot be written as YAML: {e}") from None
    return text.encode("utf-8")


_JSON = json.JSONEncoder(separators=(",", ":"))


def dump_json(obj: object) -> bytes:
    """Serialize to compact JSON (NaN and infinities allowed, as Python's json does)."""
    return _JSON.encode(obj).encode("utf-8")


MAX_FILE_BYTES = 1 << 30
"""Files of a run directory larger than this are refused, not read into memory."""


def read_file(path: Path) -> bytes:
    """Read a whole regular file; ``CorruptedFileError`` naming it if missing or odd."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise CorruptedFileError(path, "is missing") from None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_FILE_BYTES:
            raise CorruptedFileError(path, f"holds {size} bytes, more than a run's file may")
        chunks = []
        while chunk := os.read(fd, max(size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_yaml(path: Path, data: bytes | None = None) -> Any:
    """Parse a YAML file; any problem is a ``CorruptedFileError`` naming the file."""
    raw = read_file(path) if data is None else data
    try:
        return yaml.load(raw, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CorruptedFileError(path, f"is not valid YAML: {_one_line(e)}") from None


def load_json(path: Path, data: bytes | None = None) -> Any:
    """Parse a JSON file; any problem is a ``CorruptedFileError`` naming the file."""
    raw = read_file(path) if data is None else data
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptedFileError(path, f"is not valid JSON: {_one_line(e)}") from None


def load_pickle(path: Path, data: bytes | None = None, *, allow: Iterable[str] = ()) -> Any:
    """Unpickle a file through the allowlist (``_pickles``); a ``CorruptedFileError`` else.

    ``UnsafeFileError`` (a ``CorruptedFileError``) names a global that was refused.
    """
    return pickles.loads(read_file(path) if data is None else data, path, allow=allow)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def create_file(path: Path, data: bytes, *, replacing: bool = False) -> None:
    """Write a file that must not exist yet (in a private staging folder, or a temp name).

    ``replacing``: it will be renamed over a file, so its blocks are allocated
    now (see :func:`preallocate`), not by that rename, under the caller's lock.
    """
    fd = create(path)
    try:
        if replacing:
            preallocate(fd, len(data))
        write(fd, data)
    finally:
        os.close(fd)
