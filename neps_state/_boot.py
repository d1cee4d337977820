"""Which boot of the machine wrote a run directory, so that a power loss is noticed.

Trial folders and the optimizer state file are not fsynced; only the journal
is. A process crash keeps them (the page cache survives it), a power loss may
not. A power loss always ends a boot, so ``configs/.trial_cache.boots`` lists
the boots whose handles have checked the run: a handle that finds its machine's
current boot missing checks (and repairs) every file derived from the journal,
under the locks, then adds its boot. Several machines sharing the run directory
each add theirs.

The boot is Linux's ``/proc/sys/kernel/random/boot_id``, or the environment
variable ``NEPS_STATE_BOOT_ID`` (a power-loss simulation that does not reboot
the machine, such as LazyFS, sets a new value). Where neither exists every new
handle checks the run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
from pathlib import Path

from neps_state._io import read_file, rename, write_atomic

logger = logging.getLogger(__name__)

BOOT_ID_ENV = "NEPS_STATE_BOOT_ID"
BOOTS_FILE = ".trial_cache.boots"
_KEEP = 32
"""Boots remembered: more than the machines of any run that share one directory."""


@functools.cache
def _kernel_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def current_boot() -> str | None:
    """The current boot of the machine (None where it cannot be known)."""
    return os.environ.get(BOOT_ID_ENV) or _kernel_boot_id()


def checked_boots(configs: Path) -> list[str]:
    """The boots recorded as having checked the run (an unreadable record: none)."""
    try:
        data = json.loads(read_file(configs / BOOTS_FILE))
    except (OSError, ValueError):  # (CorruptedFileError is a ValueError)
        return []
    if not isinstance(data, list) or not all(isinstance(b, str) for b in data):
        return []
    return data


def is_checked(configs: Path, boot: str | None) -> bool:
    """Whether a handle of ``boot`` has checked the run since that boot began."""
    return boot is not None and boot in checked_boots(configs)


def record_checked(configs: Path, boot: str | None) -> None:
    """Add ``boot`` to the record, durably (the caller holds the trial lock)."""
    if boot is None:
        return
    path = configs / BOOTS_FILE
    if (os.path.lexists(path) and not os.path.isfile(path)) or os.path.islink(path):
        # Not a file of ours (a folder, a link...): set aside, never followed.
        rename(path, path.with_name(f"{BOOTS_FILE}.damaged-{secrets.token_hex(4)}"))
    boots = [*[b for b in checked_boots(configs) if b != boot][-(_KEEP - 1) :], boot]
    write_atomic(path, json.dumps(boots).encode(), fsync=True)
