"""Damaged run directories: every file kind of a real run, damaged every way, read back.

:func:`damages` draws (file, damage) pairs: bit flips, truncation at any byte,
garbage appended, emptied, NUL bytes, a huge (sparse) file, a malicious pickle,
and the wrong kind of entry in its place (a folder, a FIFO, a symbolic link out of
the run). :func:`check_damaged` applies one to a copy of a real run and asserts
what a damaged directory must show:

- every reader of the state either works (recovering with a warning) or raises a
  ``NePSError`` subclass whose message names a file of the run;
- nothing but the damaged file changes (recovery may add files set aside);
- ``neps-state check`` exits non-zero when the damage is in a file it checks and
  the state refused it;
- no code from the directory ever runs (a canary file, which a pickle that ran
  would create, never appears).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from neps_state import NePSError, NePSState, Settings

FILES = (
    "optimizer_info.yaml",
    "optimizer_state.pkl",
    "shared_errors.jsonl",
    "configs/.trial_cache.journal",
    "configs/.trial_cache.intent",
    "configs/.trial_cache.boots",
    "configs/config_0/config.yaml",
    "configs/config_0/metadata.json",
    "configs/config_0/report.yaml",
    "configs/config_1/report.yaml",
    "configs/config_2/metadata.json",
    "configs/config_3/previous_trial_id.txt",
)
"""A file of every kind a run holds (``make_template`` makes a run that has them all)."""
KINDS = (
    "flip", "truncate", "append", "empty", "nul", "huge", "pickle", "folder", "fifo", "symlink",
)  # fmt: skip
ASIDE = (".torn-", ".old-", ".unacknowledged-", ".damaged-", ".trash-")
"""Names of the files a recovery may add (what it set aside)."""
SETTINGS = Settings(durability="os")


@dataclass(frozen=True)
class Damage:
    """One damage: which file, what kind, where (a byte offset or bit), and what bytes."""

    file: str
    kind: str
    at: int = 0
    data: bytes = b""

    def __str__(self) -> str:
        return f"{self.kind} {self.file} @{self.at} {self.data[:16]!r}"


def damages() -> st.SearchStrategy[Damage]:
    """Every damage of every file kind."""
    return st.builds(
        Damage,
        file=st.sampled_from(FILES),
        kind=st.sampled_from(KINDS),
        at=st.integers(min_value=0, max_value=1 << 16),
        data=st.binary(min_size=1, max_size=64),
    )


def make_template(root: Path) -> Path:
    """A real run with every file kind: trials pending to crashed, a chain, errors."""
    from pytest_neps._ops import complete  # noqa: PLC0415
    from pytest_neps._optimizers import batch_sampler  # noqa: PLC0415

    state = NePSState.create_or_load(
        root,
        optimizer_info=_info(),
        optimizer_state=_opt_state(),
        settings=SETTINGS,
    )
    for i in range(3):
        trial = state.lock_and_sample_trial(batch_sampler, worker_id="w0", claim=True)
        err = RuntimeError("boom") if i == 1 else None
        report = complete(
            trial, "crashed" if err else "success", time_end=1.0,
            objective=None if err else 0.5, learning_curve=[1.0, 0.5], err=err,
            tb="Traceback ..." if err else None, extra={"seed": i}, evaluation_duration=0.1,
        )  # fmt: skip
        state.lock_and_report_trial_evaluation(trial, report, worker_id="w0")
    state.lock_and_sample_trial(batch_sampler, worker_id="w0", n=2)
    return root


def _info() -> Any:
    from neps_state import OptimizerInfo  # noqa: PLC0415

    return OptimizerInfo(name="fuzz", info={"seed": 0})


def _opt_state() -> Any:
    from neps_state import OptimizationState, SeedSnapshot  # noqa: PLC0415

    return OptimizationState(budget=None, seed_snapshot=SeedSnapshot.new_capture())


def _flip(data: bytes, d: Damage) -> bytes:
    buf = bytearray(data or b"\0")
    buf[d.at % len(buf)] ^= 1 << (d.at % 8)
    return bytes(buf)


def _nul(data: bytes, d: Damage) -> bytes:
    cut = d.at % (len(data) + 1)
    return data[:cut] + bytes(len(d.data)) + data[cut:]


def _truncate(data: bytes, d: Damage) -> bytes:
    return data[: d.at % (len(data) + 1)]


def _append(data: bytes, d: Damage) -> bytes:
    return data + d.data


def _empty(data: bytes, d: Damage) -> bytes:
    del data, d
    return b""


def _same(data: bytes, d: Damage) -> bytes:
    del d
    return data


_BYTES = {
    "flip": _flip,
    "truncate": _truncate,
    "append": _append,
    "empty": _empty,
    "nul": _nul,
    "huge": _same,
}


def apply(damage: Damage, root: Path, canary: Path, outside: Path) -> None:
    """Damage the file ``damage.file`` below ``root`` in place."""
    path = root / damage.file
    data = path.read_bytes() if path.is_file() else b""
    if damage.kind in ("folder", "fifo", "symlink"):
        path.unlink(missing_ok=True)
        if damage.kind == "folder":
            path.mkdir()
        elif damage.kind == "fifo":
            os.mkfifo(path)
        else:
            outside.write_bytes(data)
            path.symlink_to(outside)
        return
    if damage.kind == "pickle":
        path.write_bytes(b"cos\nsystem\n(V" + f"touch {canary}".encode() + b"\ntR.")
        return
    path.write_bytes(_BYTES[damage.kind](data, damage))
    if damage.kind == "huge":
        with path.open("r+b") as f:
            f.truncate((2 << 30) + damage.at)  # sparse: costs no disk


def _digest(root: Path, skip: str) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in files + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel == skip or any(a in name for a in ASIDE) or name.endswith(".lock"):
                continue
            if p.is_symlink() or not p.is_file():
                out[rel] = "<entry>"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def read_everything(root: Path) -> None:
    """Every reader of the state, as a worker would use them."""
    state = NePSState.create_or_load(root, load_only=True, settings=SETTINGS)
    trials = state.lock_and_read_trials()
    state.lock_and_get_errors()
    state.lock_and_get_optimizer_state()
    state.lock_and_get_optimizer_info()
    for tid in trials:
        state.unsafe_retry_get_trial_by_id(tid)


def check_damaged(damage: Damage, template: Path, work: Path) -> list[str]:
    """Everything wrong with how the state and the tools take ``damage``; empty if fine."""
    from pytest_neps.cli import main  # noqa: PLC0415

    shutil.rmtree(work, ignore_errors=True)
    root, canary, outside = work / "run", work / "canary", work / "outside"
    shutil.copytree(template, root, symlinks=True)
    apply(damage, root, canary, outside)
    before = _digest(root, damage.file)
    outside_before = outside.read_bytes() if outside.exists() else None
    problems = []
    with redirect_stdout(io.StringIO()):
        code = main(["check", str(root)])
    try:
        read_everything(root)
        refused = False
    except NePSError as e:
        refused = True
        if str(root) not in str(e):
            problems.append(f"the error does not name a file of the run: {e}")
    except Exception as e:  # noqa: BLE001 - an untyped error is the finding
        problems.append(f"untyped {type(e).__name__}: {e}")
        refused = True
    if refused and code == 0 and damage.file != "configs/.trial_cache.boots":
        problems.append("check exited 0 on a directory the state refused")
    after = _digest(root, damage.file)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        problems.append(f"files other than the damaged one changed: {changed}")
    if outside.exists() and outside.read_bytes() != outside_before:
        problems.append("a file outside the run (a symlink's target) changed")
    if canary.exists():
        problems.append("CODE FROM THE RUN DIRECTORY RAN (the canary exists)")
    return problems


@dataclass
class FuzzStats:
    """What a run of damaged inputs showed."""

    tried: int = 0
    untyped: int = 0
    canary: int = 0
    collateral: int = 0
    unnoticed: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, damage: Damage, problems: list[str]) -> None:
        """Add one damaged input's problems."""
        self.tried += 1
        self.untyped += any(p.startswith(("untyped", "the error does not")) for p in problems)
        self.canary += any("CODE FROM" in p for p in problems)
        self.collateral += any("changed" in p for p in problems)
        self.unnoticed += any(p.startswith("check exited 0") for p in problems)
        self.failures += [f"{damage}: {p}" for p in problems]


def fuzz(count: int, seed: int = 0) -> FuzzStats:
    """``count`` damaged inputs, every (file, kind) in turn with random places and bytes."""
    rng = random.Random(seed)
    stats = FuzzStats()
    work = Path(tempfile.mkdtemp(prefix="neps-fuzz-"))
    try:
        template = make_template(work / "template")
        pairs = [(f, k) for f in FILES for k in KINDS]
        for i in range(count):
            file, kind = pairs[i % len(pairs)]
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            damage = Damage(file, kind, rng.randrange(1 << 16), data)
            stats.count(damage, check_damaged(damage, template, work / "case"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats
