"""The run's pipeline space (NePS's search space), saved where NePS saves it.

``<root>/pipeline_space.pkl`` is a pickle of the user's space classes, so reading
it runs code from the run directory: only :func:`load` does, when the caller asks
for the space (``lock_and_get_search_space``). A space given to a later
``create_or_load`` is checked against the saved one without unpickling it: first
byte for byte, then by the digest of its parameters (NePS's comparison, which
allows a renamed space class) that the reference records beside it at creation
(``.pipeline_space.digest``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

from neps_state._errors import CorruptedFileError, SearchSpaceMismatchError
from neps_state._io import read_file, write_atomic

SPACE_FILE = "pipeline_space.pkl"
DIGEST_FILE = ".pipeline_space.digest"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _attrs_digest(space: Any) -> str | None:
    """The digest of the space's parameters (NePS's ``PipelineSpace.get_attrs``), if any."""
    get_attrs = getattr(space, "get_attrs", None)
    if not callable(get_attrs):
        return None
    return _digest(pickle.dumps(get_attrs(), protocol=pickle.HIGHEST_PROTOCOL))


def save(path: Path, space: Any) -> None:
    """Save ``space`` (durably: it is written once, at creation) and its digest."""
    data = pickle.dumps(space, protocol=pickle.HIGHEST_PROTOCOL)
    digest = {"pickle": _digest(data), "attrs": _attrs_digest(space)}
    write_atomic(path.with_name(DIGEST_FILE), json.dumps(digest).encode(), fsync=True)
    write_atomic(path, data, fsync=True)


def check(path: Path, space: Any) -> None:
    """Raise ``SearchSpaceMismatchError`` unless ``space`` is the one saved at ``path``."""
    if not os.path.lexists(path):
        return  # (a run made before spaces were saved: nothing to compare with)
    data = pickle.dumps(space, protocol=pickle.HIGHEST_PROTOCOL)
    if read_file(path) == data:
        return
    try:
        recorded = json.loads(read_file(path.with_name(DIGEST_FILE)))
    except (CorruptedFileError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        raise SearchSpaceMismatchError(
            path,
            "differs byte for byte from the one provided (and has no digest of its parameters)",
        )
    attrs = _attrs_digest(space)
    if attrs is None or recorded.get("attrs") != attrs:
        raise SearchSpaceMismatchError(path, "has other parameters than the one provided")


def load(path: Path) -> Any:
    """The saved space, unpickled in full (runs code from the file); None if none was saved."""
    if not os.path.lexists(path):
        return None
    return pickle.loads(read_file(path))  # noqa: S301 - the caller asked for the user's space
