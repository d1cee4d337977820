"""Who else can change a run directory: a warning (or, if asked, an error) on opening.

A run directory others can write is a run they can change under the workers'
feet: plant or replace trial folders, swap files. Nothing in it runs code any
more (``_pickles``), but its results are only as trustworthy as its writers.
Files and folders are created with the process's umask (never wider than
``0o644``/``0o777`` before it).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from neps_state._errors import UnsafePermissionsError

logger = logging.getLogger(__name__)

STRICT_ENV = "NEPS_STATE_STRICT_PERMISSIONS"


def risks(root: Path, folders: tuple[str, ...] = ("", "configs")) -> list[str]:
    """What lets other users change the run at ``root`` (empty when nothing does)."""
    out = []
    me = os.geteuid()
    for name in folders:
        path = root / name if name else root
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != me:
            out.append(f"{path} is owned by uid {st.st_uid}, not by this process's ({me})")
        writable = [who for bit, who in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others"))
                    if st.st_mode & bit]  # fmt: skip
        if writable and not st.st_mode & stat.S_ISVTX:
            mode = stat.filemode(st.st_mode)
            out.append(f"{path} is writable by its {' and '.join(writable)} ({mode})")
    return out


def check(root: Path, *, strict: bool) -> None:
    """Warn about (``strict``: refuse) a run directory other users can change."""
    found = risks(root)
    if not found:
        return
    if strict:
        raise UnsafePermissionsError(found)
    for risk in found:
        logger.warning(
            "%s: other users can change this run (set %s=1 to refuse such a directory)",
            risk,
            STRICT_ENV,
        )
