"""A trial's folder, ``configs/config_<id>/``, in NePS's file formats.

``config.yaml`` (the config), ``metadata.json`` (``MetaData``, state as its
string), ``report.yaml`` (only once reported) and ``previous_trial_id.txt``
(only when there is a previous trial).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

from neps_state._errors import (
    CorruptedFileError,
    InvalidTrialIdError,
    TrialNotFoundError,
    UsageError,
)
from neps_state._io import dump_json, dump_yaml, is_real_dir, load_json, load_yaml
from neps_state._trial import MetaData, Report, State, Trial, validate_trial_id

TrialWriteHint = Literal["config", "metadata", "report"]
HINTS: frozenset[str] = frozenset(get_args(TrialWriteHint))

CONFIG_FILE = "config.yaml"
METADATA_FILE = "metadata.json"
REPORT_FILE = "report.yaml"
PREVIOUS_FILE = "previous_trial_id.txt"
PREFIX = "config_"

# Which files each hint covers.
_FILES_OF_HINT: dict[str, tuple[str, ...]] = {
    "config": (CONFIG_FILE,),
    "metadata": (METADATA_FILE, PREVIOUS_FILE),
    "report": (REPORT_FILE,),
}
ALL_FILES = (CONFIG_FILE, METADATA_FILE, PREVIOUS_FILE, REPORT_FILE)


@functools.lru_cache(maxsize=4096)
def trial_dir(configs: Path, trial_id: str) -> Path:
    """The folder of ``trial_id``; the id is validated so the path stays inside ``configs``.

    Remembered: an operation asks for the same folder several times, and a cycle's
    operations for the same trial (an invalid id raises, and is never remembered).
    """
    return configs / f"{PREFIX}{validate_trial_id(trial_id)}"


def normalize_hints(hints: Iterable[str] | str | None) -> tuple[str, ...]:
    """The files named by write hints (None: all of them); unknown hints raise."""
    if hints is None:
        return ALL_FILES
    names = [hints] if isinstance(hints, str) else list(hints)
    unknown = [h for h in names if h not in HINTS]
    if unknown:
        raise UsageError(f"Unknown write hint(s) {unknown}; expected some of {sorted(HINTS)}")
    return tuple(f for h in names for f in _FILES_OF_HINT[h])


def changed_files(old: Trial, new: Trial) -> tuple[str, ...]:
    """The files whose content differs between two versions of a trial."""
    out: list[str] = []
    if old.config != new.config:
        out.append(CONFIG_FILE)
    if old.metadata != new.metadata:
        out += [METADATA_FILE, PREVIOUS_FILE]
    if old.report != new.report or (old.report is None) != (new.report is None):
        out.append(REPORT_FILE)
    return tuple(out)


def render(trial: Trial, directory: Path, files: Iterable[str]) -> dict[str, bytes | None]:
    """The bytes of each named file (None: the file must not exist)."""
    out: dict[str, bytes | None] = {}
    for name in dict.fromkeys(files):
        if name == CONFIG_FILE:
            out[name] = dump_yaml(trial.config, directory / name)
        elif name == METADATA_FILE:
            out[name] = dump_json(trial.metadata.to_dict())
        elif name == PREVIOUS_FILE:
            prev = trial.metadata.previous_trial_id
            out[name] = None if prev is None else prev.encode("utf-8")
        elif name == REPORT_FILE:
            report = trial.report
            out[name] = None if report is None else dump_yaml(report.to_dict(), directory / name)
    return out


def read_trial(configs: Path, trial_id: str) -> Trial:
    """Load ``trial_id`` from its folder; a bad or missing file is a ``CorruptedFileError``."""
    directory = trial_dir(configs, trial_id)
    if not is_real_dir(directory):
        if os.path.islink(directory):
            raise CorruptedFileError(directory, "is a symbolic link (not followed)")
        raise TrialNotFoundError(trial_id, directory)
    meta_path = directory / METADATA_FILE
    metadata = metadata_from(meta_path, load_json(meta_path))
    if metadata.id != trial_id:
        raise CorruptedFileError(
            meta_path, f"holds id {metadata.id!r}, not the folder's {trial_id!r}"
        )
    config_path = directory / CONFIG_FILE
    config = load_yaml(config_path)
    if config is None:
        # We write an empty config as "{}": an empty file is a damaged one.
        raise CorruptedFileError(config_path, "is empty")
    if not isinstance(config, dict):
        raise CorruptedFileError(config_path, "is not a mapping")
    report_path = directory / REPORT_FILE
    has_report = os.path.lexists(report_path)
    report = report_from(report_path, load_yaml(report_path)) if has_report else None
    if report is None and metadata.state.carries_report:
        raise CorruptedFileError(
            report_path, f"is missing, but the trial is {metadata.state.value}"
        )
    return Trial(config=config, metadata=metadata, report=report)


def list_trial_ids(configs: Path) -> list[str]:
    """The ids of every ``config_<id>`` folder (hidden temp folders are not listed)."""
    out = []
    for entry in os.scandir(configs):
        name = entry.name
        if name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False):
            try:
                out.append(validate_trial_id(name[len(PREFIX) :]))
            except InvalidTrialIdError:
                continue
    return out


_META_REQUIRED: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "location": (str,),
    "state": (str,),
    "sampling_worker_id": (str,),
    "time_sampled": (int, float),
}
_META_OPTIONAL: dict[str, tuple[type, ...]] = {
    "previous_trial_id": (str,),
    "previous_trial_location": (str,),
    "evaluating_worker_id": (str,),
    "evaluation_duration": (int, float),
    "time_submitted": (int, float),
    "time_started": (int, float),
    "time_end": (int, float),
}


def metadata_from(path: Path, obj: Any) -> MetaData:
    """A ``MetaData`` from its JSON form, checked; ``CorruptedFileError`` naming ``path``."""
    if not isinstance(obj, dict):
        raise CorruptedFileError(path, "is not a JSON object")
    values: dict[str, Any] = {}
    for key, types in _META_REQUIRED.items():
        if key not in obj:
            raise CorruptedFileError(path, f"lacks the key {key!r}")
        values[key] = _typed(path, key, obj[key], types)
    for key, types in _META_OPTIONAL.items():
        value = obj.get(key)
        values[key] = None if value is None else _typed(path, key, value, types)
    try:
        values["state"] = State(values["state"])
    except ValueError:
        raise CorruptedFileError(path, f"has an unknown state {values['state']!r}") from None
    return MetaData(**values)


def _typed(path: Path, key: str, value: Any, types: tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        raise CorruptedFileError(path, f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def report_from(path: Path, obj: Any) -> Report:
    """A ``Report`` from its YAML form, checked; ``CorruptedFileError`` naming ``path``."""
    if not isinstance(obj, dict):
        raise CorruptedFileError(path, "is not a mapping")
    fields = (
        "objective_to_minimize",
        "cost",
        "learning_curve",
        "extra",
        "err",
        "tb",
        "reported_as",
        "evaluation_duration",
    )
    missing = [k for k in fields if k not in obj]
    if missing:
        raise CorruptedFileError(path, f"lacks {', '.join(missing)}")
    if obj["reported_as"] not in ("success", "failed", "crashed"):
        raise CorruptedFileError(path, f"reported_as is {obj['reported_as']!r}")
    for key in ("cost", "evaluation_duration"):
        if obj[key] is not None and not _is_number(obj[key]):
            raise CorruptedFileError(path, f"{key} is not a number")
    if obj["extra"] is not None and not isinstance(obj["extra"], dict):
        raise CorruptedFileError(path, "extra is not a mapping")
    for key in ("err", "tb"):
        if obj[key] is not None and not isinstance(obj[key], str):
            raise CorruptedFileError(path, f"{key} is not text")
    values = {k: obj[k] for k in fields}
    values["extra"] = values["extra"] or {}
    return Report(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
