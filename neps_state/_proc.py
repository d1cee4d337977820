"""The process id and a source of unique names, both without a system call.

``os.getpid`` is a system call on every use (glibc stopped caching it), and a
sample asked for it some thirty times; ``secrets.token_hex`` reads the kernel's
random source. The pid is remembered and renewed in a forked child, and names
are a random token drawn once per process followed by a counter, so they never
repeat within a process nor collide with another live process's (the pid is part
of them) or a dead one's (a 64-bit random token is too).
"""

from __future__ import annotations

import itertools
import os
import secrets

_pid = os.getpid()
_token = secrets.token_hex(8)
_counter = itertools.count()


def _after_fork() -> None:
    global _pid, _token, _counter
    _pid, _token, _counter = os.getpid(), secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_after_fork)


def pid() -> int:
    """The id of the calling process."""
    return _pid


def unique() -> str:
    """A name part no other call, in this or any other process, returns."""
    return f"{_pid:x}-{_token}-{next(_counter):x}"
