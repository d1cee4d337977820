"""The invariant checker: what a run directory (and, optionally, worker histories) must show.

It reads the files with the state's file-level readers, not through a ``NePSState``:
no lock is taken and no recovery runs. Trial folders are read as the state reads them
(no symbolic link followed, no FIFO waited on, sizes capped), the optimizer state
through the allowlisted unpickler, our journal frame by frame if there is one, the
error dump line by line. These accept what NePS writes, so it also checks run
directories that NePS wrote. Every problem, a file that cannot be read included, is a
:class:`Violation` naming the file it concerns.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from neps_state import (
    CorruptedFileError,
    NePSError,
    Settings,
    Trial,
    UnsafeFileError,
    validate_trial_id,
)
from neps_state import _pickles as pickles
from neps_state._errdump import record_from
from neps_state._io import is_real_dir, read_file
from neps_state._journal import HEADER_SIZE, MAGIC, parse_frames
from neps_state._optimizer import adopt_state
from neps_state._permissions import risks as permission_risks
from neps_state._records import decode
from neps_state._trialfiles import PREFIX, PREVIOUS_FILE, read_trial
from pytest_neps._history import Op
from pytest_neps.defects import finding


@dataclass(frozen=True)
class Violation:
    """One broken invariant: which, where, and what was found."""

    invariant: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.path}: {self.detail}"


@dataclass
class Snapshot:
    """What the checker read: the trials from their folders and from the cache."""

    folders: dict[str, Trial]
    cache: dict[str, Trial] | None
    errors: list[dict[str, Any]]


def check_run_dir(
    path: Path | str, histories: Sequence[Op] | None = None, *, notes: list[str] | None = None
) -> list[Violation]:
    """Every violation of the run directory's invariants (empty when it is clean).

    ``notes`` collects what could not be verified here and is no violation (a pickle
    whose classes come from a package that is not installed).
    """
    root = Path(path)
    out: list[Violation] = []
    problem = run_dir_problem(root)
    if problem is not None:
        return [Violation("layout", str(root), problem)]
    notes = [] if notes is None else notes
    notes += [f"{risk}: other users can change this run" for risk in permission_risks(root)]
    _check_optimizer_files(root, out, notes)
    snap = read_run_dir(root, out)
    _check_trials(root, snap, out)
    killed = {
        t for op in histories or () if op.op == "report" and not op.completed for t in op.trials
    }
    _check_errors(root, snap, out, killed)
    if histories is not None:
        out += check_histories(root, snap.folders, snap.errors, histories)
    return out


def run_dir_problem(root: Path) -> str | None:
    """Why ``root`` cannot be read as a run directory at all (``None`` if it can be listed)."""
    try:
        os.scandir(root).close()
    except FileNotFoundError:
        return "is a symbolic link to nothing" if os.path.islink(root) else "does not exist"
    except NotADirectoryError:
        return "is not a directory" if os.path.lexists(root) else "does not exist"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return None


def _check_optimizer_files(root: Path, out: list[Violation], notes: list[str]) -> None:
    info = root / "optimizer_info.yaml"
    raw = _read(info, out)
    try:
        data = None if raw is None else yaml.safe_load(raw)
        ok = (
            isinstance(data, dict)
            and isinstance(data.get("name"), str)
            and isinstance(data.get("info", "missing") or {}, dict)
        )
        if raw is not None and not ok:
            detail = "not a mapping with a string name and an info mapping"
            out.append(Violation("files parse", str(info), detail))
    except yaml.YAMLError as e:
        out.append(Violation("files parse", str(info), _short(e)))
    state = root / "optimizer_state.pkl"
    raw = _read(state, out)
    if raw is not None:
        try:
            # Through the allowlist: nothing a pickle names is imported or run unless it
            # is a known data class (ours, NePS's by a stand-in, numpy's).
            obj = pickles.loads(raw, state, allow=_extra_allowed())
            if adopt_state(obj) is None:
                out.append(Violation("files parse", str(state), f"holds a {type(obj).__name__}"))
        except UnsafeFileError as e:
            out.append(Violation("no code in data", str(state), e.problem))
        except CorruptedFileError as e:
            if e.problem.startswith("needs the package"):
                notes.append(f"{state}: not verified: it {e.problem}")
            else:
                out.append(Violation("files parse", str(state), e.problem))


def _read(path: Path, out: list[Violation], *, optional: bool = False) -> bytes | None:
    """A file's bytes (``read_file``: no link followed, no FIFO waited on, size capped)."""
    if optional and not os.path.lexists(path):
        return None
    try:
        return read_file(path)
    except CorruptedFileError as e:
        out.append(Violation("files parse", str(path), e.problem))
    except OSError as e:
        out.append(_unreadable(path, e))
    return None


def _unreadable(path: Path | str, e: OSError) -> Violation:
    """The violation of a file (the one ``e`` names, else ``path``) that cannot be read."""
    return Violation(
        "files readable", str(e.filename or path), f"cannot be read: {e.strerror or e}"
    )


def _extra_allowed() -> tuple[str, ...]:
    """What the user added to the allowlist (``NEPS_STATE_PICKLE_ALLOW``), if valid."""
    try:
        return Settings.from_env().pickle_allow
    except NePSError:
        return ()


def read_run_dir(root: Path, out: list[Violation]) -> Snapshot:
    """Read the trial folders, the cache and the error dump; note unreadable parts in ``out``."""
    configs = root / "configs"
    folders: dict[str, Trial] = {}
    if not is_real_dir(configs):
        out.append(Violation("layout", str(configs), _not_a_folder(configs)))
        return Snapshot(folders, None, _read_errors(root, out))
    try:
        entries = sorted(os.scandir(configs), key=lambda e: e.name)
    except OSError as e:
        out.append(_unreadable(configs, e))
        return Snapshot(folders, None, _read_errors(root, out))
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        if not entry.is_dir(follow_symlinks=False):
            what = "a symbolic link (not followed)" if entry.is_symlink() else "not a folder"
            out.append(Violation("files parse", entry.path, f"is {what}"))
            continue
        tid = entry.name[len(PREFIX) :]
        try:
            validate_trial_id(tid)
            folders[tid] = read_trial(configs, tid)
        except NePSError as e:
            out.append(Violation("files parse", entry.path, str(e)))
        except OSError as e:
            out.append(_unreadable(entry.path, e))
    return Snapshot(folders, _read_cache(configs, out), _read_errors(root, out))


def _not_a_folder(path: Path) -> str:
    """Why ``path``, which is no folder itself, is not one."""
    if os.path.islink(path):
        return "is a symbolic link (not followed), not a folder"
    return "is not a folder" if os.path.lexists(path) else "is missing"


def _check_intent(configs: Path, out: list[Violation]) -> None:
    intent = configs / ".trial_cache.intent"
    marker = _read(intent, out, optional=True) or b""
    if marker:
        payloads, _ = parse_frames(marker, 0, empty_ok=True)
        if not payloads or payloads[0]:
            out.append(Violation("recovery", str(intent), "a writer died; recovery is pending"))


def _read_cache(configs: Path, out: list[Violation]) -> dict[str, Trial] | None:
    path = configs / ".trial_cache.journal"
    _check_intent(configs, out)
    if not os.path.lexists(path):
        # A journal of an earlier version, under NePS's cache name; NePS's own cache
        # there is not ours to check (the folders are).
        legacy = configs / ".trial_cache.pkl"
        data = _read(legacy, [], optional=True) or b""
        if not data.startswith(MAGIC):
            return None
        path = legacy
    else:
        found = _read(path, out)
        if found is None:  # unreadable, and reported so: nothing to say about its framing
            return None
        if not found.startswith(MAGIC):
            out.append(Violation("cache framing", str(path), "is not a neps_state journal"))
            return None
        data = found
    payloads, end = parse_frames(data, HEADER_SIZE)
    if end != len(data):
        out.append(Violation("cache framing", str(path), f"{len(data) - end} bytes of torn tail"))
    cache: dict[str, Trial] = {}
    for payload in payloads:
        try:
            for trial in decode(payload, path).trials:
                cache[trial.id] = trial
        except NePSError as e:
            out.append(Violation("cache framing", str(path), str(e)))
    return cache


def _read_errors(root: Path, out: list[Violation]) -> list[dict[str, Any]]:
    path = root / "shared_errors.jsonl"
    data = _read(path, out, optional=True)
    if data is None:
        return []
    records = []
    # NePS writes its last record without a newline: a last line is judged by what it
    # holds (a torn one does not parse), not by its ending.
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            rec = json.loads(line)
        except ValueError as e:
            out.append(Violation("error dump", f"{path}:{number}", _short(e)))
            continue
        try:
            record_from(path, number, rec)  # NePS's record: its five fields, typed
        except CorruptedFileError as e:
            out.append(Violation("error dump", str(path), e.problem))
            continue
        records.append(rec)
    return records


def _check_trials(root: Path, snap: Snapshot, out: list[Violation]) -> None:
    configs = root / "configs"
    for tid, trial in snap.folders.items():
        out += _folder_violations(configs / f"{PREFIX}{tid}", trial, snap.folders)
    if snap.cache is None:
        return
    cache_path = str(configs / ".trial_cache.journal")
    out += [
        Violation("cache = folders", cache_path, f"trial {tid!r} has no folder")
        for tid in snap.cache.keys() - snap.folders.keys()
    ]
    out += [
        Violation("cache = folders", str(configs / f"{PREFIX}{tid}"), "not in the cache")
        for tid in snap.folders.keys() - snap.cache.keys()
    ]
    for tid in snap.folders.keys() & snap.cache.keys():
        diff = _differences(snap.cache[tid], snap.folders[tid])
        if diff:
            out.append(Violation("cache = folders", str(configs / f"{PREFIX}{tid}"), diff))


def _folder_violations(folder: Path, trial: Trial, trials: dict[str, Trial]) -> list[Violation]:
    out = []
    where = str(folder)
    state = trial.metadata.state
    report = trial.report
    if state.carries_report and report is None:
        out.append(Violation("report iff finished", where, f"{state.value} but no report"))
    if state in (Trial.State.PENDING, Trial.State.EVALUATING) and report is not None:
        # (A corrupted or unknown trial may keep the report it had.)
        out.append(Violation("report iff finished", where, f"{state.value} with a report"))
    if report is not None and state.is_finished and report.reported_as != state.value:
        detail = f"{state.value} reported as {report.reported_as}"
        out.append(Violation("report iff finished", where, detail))
    prev = trial.metadata.previous_trial_id
    if prev is not None and prev not in trials:
        out.append(Violation("previous trial exists", where, f"previous {prev!r} is missing"))
    elif prev is not None and trials[prev].metadata.time_sampled > trial.metadata.time_sampled:
        # A continuation (a higher fidelity of a config) is sampled after what it continues.
        detail = f"continues {prev!r}, which was sampled after it"
        out.append(Violation("previous trial exists", where, detail))
    prev_file = folder / PREVIOUS_FILE
    written = _read(prev_file, out, optional=True) if prev is not None else None
    if written is not None and written.decode("utf-8", "replace").strip() != prev:
        out.append(Violation("previous trial exists", str(prev_file), "differs from metadata"))
    return out


def _differences(cached: Trial, folder: Trial) -> str:
    parts = []
    if _plain(cached.config) != _plain(folder.config):
        parts.append("config")
    if cached.metadata != folder.metadata:
        a, b = cached.metadata.to_dict(), folder.metadata.to_dict()
        keys = [k for k in a if a[k] != b.get(k)]
        parts.append("metadata (" + ", ".join(f"{k}: {a[k]!r} vs {b.get(k)!r}" for k in keys) + ")")
    if cached.report != folder.report:
        parts.append("report")
    return "" if not parts else "cache and folder differ in " + "; ".join(parts)


def _plain(value: Any) -> Any:
    # The folder holds what YAML round-trips; compare the cache the same way.
    return yaml.safe_load(yaml.safe_dump(value))


def _check_errors(
    root: Path, snap: Snapshot, out: list[Violation], killed_reports: set[str]
) -> None:
    """Error records against the trials; ``killed_reports``: trials whose reporter was killed."""
    path = str(root / "shared_errors.jsonl")
    recorded = Counter(rec["trial_id"] for rec in snap.errors)
    out += [
        Violation("one error record per error", path, f"record for unknown trial {tid!r}")
        for tid in recorded.keys() - snap.folders.keys()
    ]
    for tid, trial in snap.folders.items():
        if trial.report is None or trial.report.err is None or recorded[tid]:
            continue
        detail = f"no record for trial {tid!r}"
        if tid in killed_reports:  # a report and its record committed apart
            detail = str(finding("D11", f"{detail} (its reporter was killed)"))
        out.append(Violation("one error record per error", path, detail))


def check_histories(
    root: Path,
    trials: dict[str, Trial],
    errors: Iterable[dict[str, Any]],
    histories: Sequence[Op],
) -> list[Violation]:
    """Violations that only worker histories reveal: double evaluation, lost operations."""
    where = str(root)
    out: list[Violation] = []
    claims: dict[str, list[Op]] = defaultdict(list)
    errored: Counter[str] = Counter()
    for op in histories:
        if not (op.completed and op.ok):
            continue
        for tid in op.trials:
            final = trials.get(tid)
            if final is None:
                out.append(Violation("no acknowledged op lost", where, f"{op} but {tid!r} is gone"))
            elif op.op in ("claim", "sample_claim", "neps_next"):
                claims[tid].append(op)
            elif op.op == "report":
                if final.metadata.state.value != op.result:
                    detail = f"{op} but the trial is {final.metadata.state.value}"
                    out.append(Violation("no acknowledged op lost", where, detail))
                errored[tid] += op.result in ("failed", "crashed")
    out += _claim_violations(where, trials, claims, histories)
    out += _error_count_violations(where, errors, errored, histories)
    return out


def _worker_ends(histories: Sequence[Op]) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Each worker's last event, and the (worker, trial) pairs of acknowledged reports."""
    last: dict[str, int] = {}
    reported: set[tuple[str, str]] = set()
    for op in histories:
        last[op.worker] = max(last.get(op.worker, 0), op.end_ns or op.start_ns)
        if op.op == "report" and op.completed:
            reported.update((op.worker, t) for t in op.trials)  # (one killed in flight: no)
    return last, reported


def _taken_back(
    tid: str, ops: list[Op], last: dict[str, int], reported: set[tuple[str, str]]
) -> bool:
    """Whether each claim of ``tid`` but the last was its worker's last act (it died with it).

    A state may give a dead worker's trial to another worker (the reference does:
    ``neps_state._owners``). The earlier claimer then never reported it, and did
    nothing at all after the next claim was acknowledged; a live worker reports.
    """
    chain = sorted(ops, key=lambda op: op.start_ns)
    return all(
        a.worker != b.worker
        and (a.worker, tid) not in reported
        and b.end_ns is not None
        and last[a.worker] <= b.end_ns
        for a, b in itertools.pairwise(chain)
    )


def _claim_violations(
    where: str, trials: dict[str, Trial], claims: dict[str, list[Op]], histories: Sequence[Op]
) -> list[Violation]:
    out = []
    last, reported = _worker_ends(histories)
    for tid, all_ops in claims.items():
        ops = all_ops
        if len(ops) > 1 and _taken_back(tid, ops, last, reported):
            ops = sorted(ops, key=lambda op: op.start_ns)[-1:]
        if len(ops) > 1:
            workers = sorted(op.worker for op in ops)
            detail = f"trial {tid!r} claimed {len(ops)} times, by {workers}"
            if any(op.op == "claim" for op in ops):
                detail = str(finding("D7", detail))
            out.append(Violation("one evaluator per trial", where, detail))
        elif trials[tid].metadata.evaluating_worker_id != ops[0].worker:
            evaluator = trials[tid].metadata.evaluating_worker_id
            detail = f"{ops[0]} but the trial is evaluated by {evaluator!r}"
            out.append(Violation("no acknowledged op lost", where, detail))
    return out


def _error_count_violations(
    where: str, errors: Iterable[dict[str, Any]], errored: Counter[str], histories: Sequence[Op]
) -> list[Violation]:
    recorded = Counter(rec["trial_id"] for rec in errors)
    # A reporter killed after its commit may have left one unacknowledged record.
    unfinished = Counter(
        tid for op in histories if op.op == "report" and not op.completed for tid in op.trials
    )
    out = []
    for tid, count in errored.items():
        in_flight = unfinished[tid]
        if not count <= recorded[tid] <= count + in_flight:
            detail = f"trial {tid!r}: {count} errored reports, {recorded[tid]} records"
            out.append(Violation("one error record per error", where, detail))
    return out


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())[:300]
