"""A lock-free reader: what external tools see when they read a live run directory.

Reads ``optimizer_info.yaml``, ``optimizer_state.pkl`` and random trial folders
in a loop, without any lock, until told to stop. Every file it reads must parse
completely (invariant 8: no reader ever sees a partially written file). Files
that vanish between listing and reading are skipped; the growing error dump and
cache are only read up to their last complete record, as their format intends.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from neps_state import _pickles as pickles

_MAX_PROBLEMS = 20


def _parse_yaml(data: bytes) -> None:
    if yaml.safe_load(data) is None:
        raise ValueError("empty YAML document")


def _parse_json(data: bytes) -> None:
    json.loads(data)


def _parse_pickle(data: bytes) -> None:
    pickles.loads(data, Path("optimizer_state.pkl"))


def _parse_text(data: bytes) -> None:
    if not data.strip():
        raise ValueError("empty")


_PARSERS: dict[str, Callable[[bytes], None]] = {
    "config.yaml": _parse_yaml,
    "report.yaml": _parse_yaml,
    "optimizer_info.yaml": _parse_yaml,
    "metadata.json": _parse_json,
    "optimizer_state.pkl": _parse_pickle,
    "previous_trial_id.txt": _parse_text,
}


def observe(run_dir: Path, stop_file: Path, seed: int = 0) -> dict[str, Any]:
    """Read without locks until ``stop_file`` exists; return the count and what failed."""
    rng = random.Random(seed)
    reads = 0
    problems: list[tuple[str, str]] = []
    configs = run_dir / "configs"
    while not stop_file.exists():
        paths = [run_dir / "optimizer_info.yaml", run_dir / "optimizer_state.pkl"]
        try:
            folders = [e for e in configs.iterdir() if e.name.startswith("config_")]
        except FileNotFoundError:
            folders = []
        for folder in rng.sample(folders, min(3, len(folders))):
            paths += [folder / name for name in ("config.yaml", "metadata.json", "report.yaml")]
        for path in paths:
            try:
                data = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                continue
            reads += 1
            try:
                _PARSERS[path.name](data)
            except Exception as e:  # noqa: BLE001 - every parse failure is the finding
                if len(problems) < _MAX_PROBLEMS:
                    problems.append((str(path), f"{len(data)} bytes, {type(e).__name__}: {e}"))
    return {"reads": reads, "problems": problems}
