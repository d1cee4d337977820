"""LazyFS: a FUSE file system that loses every unsynced byte on command (a power loss).

LazyFS (github.com/dsrhaslab/lazyfs) keeps written data in its own cache until
the writer fsyncs it; ``lazyfs::clear-cache`` drops everything unsynced, as a
machine losing power would. Names (create, rename, unlink) pass through to the
backing folder at once, so it models lost data, not lost renames (the crash-state
enumeration of ``neps-state crashstates`` covers those).

:class:`LazyFS` mounts it over a backing folder, drops the cache, remounts it (a
reboot) and always unmounts. It needs Linux, root (or a FUSE setup that allows
mounting) and ``/dev/fuse``. The binary is found through ``NEPS_LAZYFS`` (its
path) or, if that is unset, by running the build script named by
``NEPS_LAZYFS_BUILD`` (which prints the binary's path, building it once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LAZYFS_ENV = "NEPS_LAZYFS"
BUILD_ENV = "NEPS_LAZYFS_BUILD"
HOW_TO_ENABLE = (
    f"set {LAZYFS_ENV}=/path/to/lazyfs, or {BUILD_ENV}=/path/to/build.sh"
    " (the project's CI builds it with ../shared/tools/lazyfs/build.sh); needs Linux,"
    " root and /dev/fuse"
)


class LazyFSError(RuntimeError):
    """LazyFS could not be found, mounted, told to drop its cache, or unmounted."""


def find_lazyfs() -> str:
    """The LazyFS binary; ``LazyFSError`` saying why not and how to enable it."""
    binary = os.environ.get(LAZYFS_ENV)
    if not binary:
        script = os.environ.get(BUILD_ENV)
        if not script:
            raise LazyFSError(f"LazyFS is not configured: {HOW_TO_ENABLE}")
        try:
            done = subprocess.run(
                [shutil.which("bash") or "/bin/bash", script],
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise LazyFSError(f"{BUILD_ENV}={script} failed ({e}): {HOW_TO_ENABLE}") from None
        binary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if not (binary and os.access(binary, os.X_OK)):
        raise LazyFSError(f"{binary!r} is not an executable LazyFS: {HOW_TO_ENABLE}")
    return binary


def unavailable() -> str | None:
    """Why LazyFS cannot run here (one line, with how to enable it), or None if it can."""
    if sys.platform != "linux":
        return f"LazyFS needs Linux: {HOW_TO_ENABLE}"
    if not os.path.exists("/dev/fuse"):
        return f"no /dev/fuse: {HOW_TO_ENABLE}"
    if shutil.which("fusermount3") is None:
        return f"no fusermount3 (Debian: apt-get install fuse3): {HOW_TO_ENABLE}"
    if os.geteuid() != 0:
        return f"mounting LazyFS needs root here: {HOW_TO_ENABLE}"
    try:
        find_lazyfs()
    except LazyFSError as e:
        return str(e)
    return None


_CONFIG = """[faults]
fifo_path="{fifo}"
fifo_path_completed="{done}"
[cache]
apply_eviction=false
[cache.simple]
custom_size="{cache_size}"
blocks_per_page=1
[filesystem]
log_all_operations=false
logfile=""
"""


def _control_dir() -> Path:
    """A private folder for the config and FIFOs whose path does not contain ``-o``.

    LazyFS ignores ``--config-path P`` when P contains ``-o`` in any case (it takes
    it for a mount option), as in pytest's ``/tmp/pytest-of-root``.
    """
    for base in (tempfile.gettempdir(), "/tmp", "/dev/shm"):  # noqa: S108 - private mkdtemp
        if "-o" not in base.lower() and os.path.isdir(base):
            return Path(tempfile.mkdtemp(prefix="neps_lazyfs_", dir=base))
    raise LazyFSError("no temporary folder whose path LazyFS accepts (it must not contain '-o')")


class LazyFS:
    """LazyFS mounted at ``mountpoint`` over ``backing``; a context manager that unmounts.

    Use :meth:`power_loss` to drop every unsynced byte and remount (what a reboot
    after a power cut shows); the processes writing there must be dead first.
    LazyFS runs single-threaded (``-s``): multi-threaded, this version crashed
    (segfault in its page cache) in about 1 of 50 swarms of 4 workers.
    """

    def __init__(
        self, backing: Path, mountpoint: Path, *, binary: str | None = None, cache: str = "1gb"
    ) -> None:
        """Prepare (not mount) LazyFS over ``backing``; ``cache``: LazyFS's cache size."""
        self.backing = Path(backing).absolute()
        self.mountpoint = Path(mountpoint).absolute()
        self.binary = binary or find_lazyfs()
        self._control = _control_dir()
        self._fifo = self._control / "faults.fifo"
        self._done = self._control / "done.fifo"
        self._config = self._control / "config.toml"
        self._log = self._control / "lazyfs.log"
        self._config.write_text(_CONFIG.format(fifo=self._fifo, done=self._done, cache_size=cache))
        os.mkfifo(self._fifo)
        os.mkfifo(self._done)
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies = -1
        self.mounts = 0

    def __enter__(self) -> LazyFS:  # noqa: PYI034 - a final class in practice
        """Mount."""
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Unmount, whatever happened."""
        self.close()

    @property
    def alive(self) -> bool:
        """Whether LazyFS is running and mounted (a crashed LazyFS leaves a dead mount)."""
        return self._proc is not None and self._proc.poll() is None and self.mounted

    @property
    def mounted(self) -> bool:
        """Whether the mount point is a mount right now."""
        target = str(self.mountpoint)
        with open("/proc/mounts") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 1)

    def mount(self, timeout: float = 15.0) -> None:
        """Start LazyFS and wait until the mount is there."""
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        log = self._log.open("ab")
        self._proc = subprocess.Popen(
            [
                self.binary, str(self.mountpoint), "--config-path", str(self._config),
                "-o", f"allow_other,modules=subdir,subdir={self.backing}", "-f", "-s",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        # LazyFS opens the reply FIFO for writing before it reads any command, and a
        # reply written with no reader would kill it: keep a reader for its lifetime.
        self._replies = os.open(self._done, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + timeout
        while not self.mounted:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop_process()
                raise LazyFSError(f"LazyFS did not mount {self.mountpoint}: {self._log_tail()}")
            time.sleep(0.02)
        self.mounts += 1

    def clear_cache(self, timeout: float = 30.0) -> None:
        """Drop every byte not fsynced (LazyFS's ``lazyfs::clear-cache``), and wait for it."""
        if self._proc is None or self._proc.poll() is not None:
            raise LazyFSError(f"LazyFS is not running: {self._log_tail()}")
        with open(self._fifo, "w") as f:
            f.write("lazyfs::clear-cache\n")
        reply = b""
        deadline = time.monotonic() + timeout
        while b"finished::clear-cache" not in reply:
            if time.monotonic() > deadline:
                raise LazyFSError(f"LazyFS did not confirm clear-cache: {self._log_tail()}")
            with contextlib.suppress(BlockingIOError):
                reply += os.read(self._replies, 4096)
            time.sleep(0.01)

    def unmount(self, timeout: float = 15.0) -> None:
        """Unmount and stop LazyFS (lazily if something still holds files open)."""
        if self.mounted:
            fusermount = shutil.which("fusermount3") or "fusermount3"
            result = subprocess.run(
                [fusermount, "-u", str(self.mountpoint)], capture_output=True, check=False
            )
            if result.returncode != 0:
                logger.warning("fusermount3 -u failed (%s); unmounting lazily", result.stderr)
                subprocess.run(
                    [fusermount, "-uz", str(self.mountpoint)], capture_output=True, check=False
                )
        self._stop_process(timeout)

    def power_loss(self) -> None:
        """Drop every unsynced byte, then unmount and mount again (the reboot)."""
        self.clear_cache()
        self.unmount()
        self.mount()

    def close(self) -> None:
        """Unmount (whatever happened) and remove the control files."""
        try:
            self.unmount()
        finally:
            shutil.rmtree(self._control, ignore_errors=True)

    def _stop_process(self, timeout: float = 15.0) -> None:
        if self._replies >= 0:
            os.close(self._replies)
            self._replies = -1
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tail(self) -> str:
        """The last lines LazyFS printed (why it failed, if it did)."""
        return self._log_tail()

    def _log_tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:])
