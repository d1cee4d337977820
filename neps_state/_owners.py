"""Which process evaluates each claimed trial, and whether that process is provably dead.

Every process that claims a trial holds an exclusive ``flock`` on its own *alive
file*, ``configs/.workers/<token>.alive``, for as long as it lives; the token names
one process start (its pid, a random part), and the file says which (host, pid,
boot, start time), for people reading it. A claim first writes
``configs/.workers/<id>.claim``: ``"<token> <time_started>"``.

A trial is its worker's *provably dead* one when it is evaluating, its claim file
names this very claim (the same ``time_started``), and the alive file's lock can be
taken. The kernel frees a ``flock`` when the last descriptor of it closes, that
is when the process ends, however it ends (SIGKILL included), before it is
reaped: a pid reused by a later process, or a zombie, cannot pass for the owner.
(The lock is free once the process's last thread has closed its files, a few
milliseconds after its pid shows as a zombie; until then its trial is kept.)
A live process never loses its lock, stopped or slow as it may be, so its trial
is never taken. A trial claimed by a process that left no claim file (NePS's own
state, an older reference) is never judged dead.

Across machines, the lock lives on the file server: NFSv4 frees a client's locks
when the lease its kernel renews lapses (by default 90 s after it stops
renewing), so a dead machine's trials come back then and a live one's never.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from neps_state._boot import current_boot
from neps_state._errdump import SerializableTrialError
from neps_state._proc import pid, unique
from neps_state._settings import DeadWorkerTrials
from neps_state._trial import State, Trial

if TYPE_CHECKING:
    from neps_state._repo import TrialRepo

logger = logging.getLogger(__name__)

WORKERS_DIR = ".workers"
"""``configs/.workers/``: the alive files and the claim files."""
ALIVE_SUFFIX = ".alive"
CLAIM_SUFFIX = ".claim"

_mine: dict[Path, tuple[int, str, int]] = {}
"""Per folder: (pid, token, descriptor holding the lock) of this process's alive file."""
_taken: dict[tuple[Path, str], int] = {}
"""Alive files of dead processes whose lock this process took (descriptors kept)."""


def _start_ticks() -> str:
    try:
        stat = Path(f"/proc/{pid()}/stat").read_text()
    except OSError:
        return "unknown"
    return stat.rsplit(")", 1)[1].split()[19]


def _token(folder: Path) -> str:
    """The token of this process, its alive file made (and locked) on first use."""
    mine = _mine.get(folder)
    if mine is not None and mine[0] == pid():
        return mine[1]
    _close_removed()
    token = unique()
    folder.mkdir(exist_ok=True)
    temp = folder / f".{token}.tmp"
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        about = {
            "host": socket.gethostname(),
            "pid": pid(),
            "start_ticks": _start_ticks(),
            "boot": current_boot(),
            "since": time.time(),
        }
        os.write(fd, json.dumps(about).encode())
        os.rename(temp, folder / f"{token}{ALIVE_SUFFIX}")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _mine[folder] = (pid(), token, fd)
    return token


def _close_removed() -> None:
    """Let go of alive files whose run was removed (a long-lived process sees many runs)."""
    for folder, (_, _, fd) in list(_mine.items()):
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            del _mine[folder]


def _after_fork() -> None:
    """A forked child drops its parent's locks: the parent's death must show."""
    for _, _, fd in _mine.values():
        os.close(fd)
    for fd in _taken.values():
        os.close(fd)
    _mine.clear()
    _taken.clear()


os.register_at_fork(after_in_child=_after_fork)


def _claim_text(token: str, time_started: float | None) -> str:
    return f"{token} {time_started!r}"


def mark_claims(configs: Path, trials: list[Trial], old: Trial | None = None) -> None:
    """Write which process claims each of ``trials`` (evaluating, and not so in ``old``)."""
    if old is not None and old.metadata.state is State.EVALUATING:
        return
    folder = configs / WORKERS_DIR
    for trial in trials:
        if trial.metadata.state is not State.EVALUATING:
            continue
        text = _claim_text(_token(folder), trial.metadata.time_started).encode()
        temp = folder / f".{unique()}.tmp"
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        os.rename(temp, folder / f"{trial.id}{CLAIM_SUFFIX}")


def _owner(configs: Path, trial_id: str, time_started: float | None) -> str | None:
    """The token of the process that made this claim, if its claim file says so."""
    path = configs / WORKERS_DIR / f"{trial_id}{CLAIM_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        text = os.read(fd, 256).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    token, _, started = text.partition(" ")
    return token if started == repr(time_started) else None


def is_dead(configs: Path, trial_id: str, time_started: float | None) -> bool:
    """Whether the process that claimed ``trial_id`` at ``time_started`` has provably ended."""
    folder = configs / WORKERS_DIR
    token = _owner(configs, trial_id, time_started)
    if token is None:
        return False
    if (folder, token) in _taken:
        return True
    mine = _mine.get(folder)
    if mine is not None and mine[0] == pid() and mine[1] == token:
        return False
    try:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(folder / f"{token}{ALIVE_SUFFIX}", flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _taken[(folder, token)] = fd
    return True


def forget(configs: Path, trial_ids: list[str]) -> None:
    """Remove the claim files of ``trial_ids`` and the alive files of dead owners (lock held)."""
    folder = configs / WORKERS_DIR
    for trial_id in trial_ids:
        with contextlib.suppress(OSError):
            os.unlink(folder / f"{trial_id}{CLAIM_SUFFIX}")
    for (where, token), fd in list(_taken.items()):
        if where != folder:
            continue
        with contextlib.suppress(OSError):
            os.unlink(folder / f"{token}{ALIVE_SUFFIX}")
        os.close(fd)
        del _taken[(where, token)]


def release_dead(repo: TrialRepo, mode: DeadWorkerTrials) -> list[str]:
    """Return the trials of provably dead processes (trial lock held); their ids.

    ``pending``: each is pending again (as ``neps.clean`` resets it), to be claimed
    anew; ``crashed``: each is reported crashed, with an error record; ``keep``:
    nothing is done. Each trial is one journaled commit.
    """
    if mode == "keep":
        return []
    repo.sync()
    view = repo.view
    configs = repo.directory
    dead = [
        view[tid]
        for tid in view.ids_in(State.EVALUATING)
        if is_dead(configs, tid, view[tid].metadata.time_started)
    ]
    for old in dead:
        new = old.clone()
        error = None
        if mode == "pending":
            new.reset()
        else:
            worker = old.metadata.evaluating_worker_id
            err = RuntimeError(f"worker {worker!r} died while evaluating trial {old.id!r}")
            new.report = new.set_complete(
                report_as="crashed",
                time_end=time.time(),
                objective_to_minimize=None,
                cost=None,
                learning_curve=None,
                err=err,
                tb=None,
                extra=None,
                evaluation_duration=None,
            )
            error = SerializableTrialError(
                trial_id=old.id,
                worker_id=str(worker),
                err_type=type(err).__name__,
                err=str(err),
                tb=None,
            )
        repo.update_trial(new, hints=("metadata", "report"), error=error)
    forget(configs, [t.id for t in dead])
    if dead:
        logger.warning(
            "%s: trial(s) %s were being evaluated by worker processes that died; now %s",
            configs.parent,
            ", ".join(t.id for t in dead),
            mode,
        )
    return [t.id for t in dead]
