"""The process id and unique names without a system call; the collector's pause.

``os.getpid`` is a system call on every use (glibc stopped caching it), and a
sample asked for it some thirty times; ``secrets.token_hex`` reads the kernel's
random source. The pid is remembered and renewed in a forked child, and names
are a random token drawn once per process followed by a counter, so they never
repeat within a process nor collide with another live process's (the pid is part
of them) or a dead one's (a 64-bit random token is too).

Building the copies of 100,000 trials let the cyclic garbage collector run over
and over through what was built so far: reading them took 0.9 s, 0.5 s with it
paused (one collection at the end). Trials hold no reference cycles, so nothing
is left uncollected meanwhile; NePS's runtime pauses it around its reads too.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import secrets
from collections.abc import Iterator

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


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, unless it is off already, until the block ends."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
