"""Properties that probe any implementation for the seed's defects, through its API only.

Each takes an implementation (``_impl.Impl``) and drawn parameters and fails with
:func:`pytest_neps.defects.finding` when it sees a defect:

- :func:`check_unsafe_id` (D5): a sample whose id could leave the run directory
  must be refused with the implementation's own error, and nothing written
  outside the run directory;
- :func:`check_damaged_file` (D6): a damaged file of the run must be read back, or
  refused with the implementation's own error naming the file;
- :func:`check_torn_cache` (D4): bytes of a record cut short at the end of the
  trial cache (``configs/.trial_cache*``, NePS's layout) must not hide a trial;
- :func:`check_crash_inside_sample` (D9): a sample killed before its ``n``-th file
  change (``_fscalls``: no fault hook needed) must leave no trial without its folder;
- :func:`check_crash_inside_report` (D11): a crashed trial's report killed before
  its ``n``-th file change leaves the report and its error record both or neither;
- :func:`check_batch_order`: the trials of one sample are claimed in the order the
  optimizer proposed them, by any handle (not a seed defect: a contract);
- :func:`check_cost_growth` (D8): a cycle must not cost more at hundreds of
  trials than at a few, timed side by side.

A probe that cannot run on an implementation raises :class:`NotApplicable`
(the suite turns it into a skip that says why); it never passes silently.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neps_state import SampledConfig
from pytest_neps._fscalls import FsCallKiller
from pytest_neps._impl import Impl, state_of
from pytest_neps._ops import complete
from pytest_neps._pool import Pool
from pytest_neps.defects import finding
from pytest_neps.machines import ask, cache_files

UNSAFE_IDS = (
    "../../../../escape",
    "x/../../../../escape",
    "a/b",
    "x\x00y",
    "x" * 300,
    "",
)
"""Trial ids that would leave the run directory, or name no folder at all."""

DAMAGED_FILES = (
    "optimizer_info.yaml",
    "optimizer_state.pkl",
    "configs/config_0/config.yaml",
    "configs/config_0/metadata.json",
    "configs/config_0/report.yaml",
)
DAMAGES = ("garbage", "half", "empty")
GROWTH_LIMIT = 2.5
"""The most a cycle may cost at 3000 trials over one at 20 (upstream NePS: ~4x; the
reference ~1x, up to ~2x on a machine busy with other work)."""
TORN_TAILS = (b"\x80", b"\x80\x05\x95\x10\x00\x00", b"\x00" * 20, b"J\x10\x00\x00\x00{")
"""Ends of records cut short: of a pickle, of zeros, of a JSON frame."""


class NotApplicable(Exception):  # noqa: N818 - reads as what it says
    """A probe cannot run on this implementation (the message says why)."""


@contextmanager
def _run_dir(depth: int = 0) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="neps-probe-"))
    try:
        yield tmp.joinpath(*["d"] * depth, "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cycles(impl: Impl, state: Any, n: int, worker: str = "w0") -> list[str]:
    """Sample, claim and report ``n`` trials; return their ids."""
    ids = []
    for _ in range(n):
        trial = impl.sample(state, ask, worker, 1, claim=True)[0]
        state.lock_and_report_trial_evaluation(trial, complete(trial, "success"), worker_id=worker)
        ids.append(trial.id)
    return ids


def _fixed(trial_id: str) -> Any:
    def ask_fixed(trials: Any, budget_info: Any, n: int | None = None) -> Any:
        del trials, budget_info
        sample = SampledConfig(id=trial_id, config={"i": 0})
        return sample if n is None else [sample]

    return ask_fixed


def _outside(top: Path, root: Path) -> set[str]:
    """Every path under ``top`` that is neither in ``root`` nor one of its parents."""
    keep = {str(p) for p in root.parents}
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path != str(root) and not path.startswith(str(root) + os.sep) and path not in keep:
                out.add(path)
    return out


def check_unsafe_id(impl: Impl, trial_id: str) -> None:
    """D5: an unsafe id is refused with a typed error, and nothing leaves the run."""
    with _run_dir(depth=4) as root:
        top = root.parents[3]
        state = impl.create(root)
        before = _outside(top, root)
        error: BaseException | None = None
        try:
            state.lock_and_sample_trial(_fixed(trial_id), worker_id="w0")
        except Exception as e:  # noqa: BLE001 - judged below
            error = e
        escaped = sorted(_outside(top, root) - before)
        if escaped:
            raise finding("D5", f"sampling id {trial_id!r} created {escaped} outside the run")
        if error is None:
            raise finding("D5", f"id {trial_id!r} was accepted as a trial id")
        if not impl.is_typed(error):
            raise finding(
                "D5", f"id {trial_id!r} was used unchecked: {type(error).__name__}: {error}"
            )


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    new = {"garbage": b"\x00\xff{[: not: [a, file", "half": data[: len(data) // 2], "empty": b""}
    path.write_bytes(new[how])


def check_damaged_file(impl: Impl, name: str, how: str) -> None:
    """D6: a damaged file is read back, or refused by a typed error that names it."""
    with _run_dir() as root:
        state = impl.create(root)
        _cycles(impl, state, 2)
        target = root / name
        if not target.is_file():
            raise NotApplicable(f"the run has no file {name} (NePS's layout)")
        _damage(target, how)
        reads: list[tuple[str, Callable[[], object]]] = [
            ("create_or_load(load_only=True)", lambda: impl.load(root)),
            ("lock_and_read_trials()", lambda: impl.load(root).lock_and_read_trials()),
            (
                "lock_and_get_trial_by_id('0')",
                lambda: impl.load(root).lock_and_get_trial_by_id("0"),
            ),
            (
                "unsafe_retry_get_trial_by_id('0')",
                lambda: impl.load(root).unsafe_retry_get_trial_by_id("0"),
            ),
        ]
        for what, call in reads:
            try:
                call()
            except Exception as e:  # noqa: BLE001 - judged below
                where = f"{what} with {name} {how}"
                if not impl.is_typed(e):
                    raise finding("D6", f"{where}: {type(e).__name__}: {e}") from None
                if os.path.basename(name) not in str(e):
                    raise finding("D6", f"{where}: the error does not name the file: {e}") from None
                return


@contextmanager
def _cached_run(impl: Impl) -> Iterator[tuple[Path, Any, list[str], list[Path]]]:
    """A run of three finished cycles: its root, handle, trial ids and cache files."""
    with _run_dir() as root:
        state = impl.create(root)
        ids = _cycles(impl, state, 3)
        caches = cache_files(root)
        if not caches:
            raise NotApplicable("no trial cache configs/.trial_cache* (NePS's layout)")
        yield root, state, ids, caches


def _lost(ids: list[str], seen: Mapping[str, Any]) -> list[str]:
    """The ids of ``ids`` (all finished) that ``seen`` lacks or shows unfinished."""
    return [t for t in ids if t not in seen or state_of(seen[t]) != "success"]


def check_torn_cache(impl: Impl, tail: bytes) -> None:
    """D4: bytes of a cut-short record at the cache's end hide no acknowledged trial."""
    with _cached_run(impl) as (root, _, ids, caches):
        for cache in caches:
            with cache.open("ab") as f:
                f.write(tail)
        try:
            seen = impl.load(root).lock_and_read_trials()
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            raise finding(
                "D4",
                f"after {len(tail)} torn bytes at the end of the cache, a read raised"
                f" {type(e).__name__}: {e}",
            ) from None
        if lost := _lost(ids, seen):
            raise finding("D4", f"after {len(tail)} torn bytes, trials {lost} are lost")


def check_lost_cache(impl: Impl) -> None:
    """D1: with the trial cache deleted, a read still returns every trial (from the folders).

    The model machine finds this too, but only when its random steps lose the cache
    before a read, and it stops at the first defect it meets: this probe always looks.
    """
    with _cached_run(impl) as (root, state, ids, caches):
        for cache in caches:
            cache.unlink()
        # The open handle first: its read is the one that finds the cache gone.
        reads = {"the open handle": state.lock_and_read_trials()}
        reads["a new handle"] = impl.load(root).lock_and_read_trials()
        for who, seen in reads.items():
            if lost := _lost(ids, seen):
                raise finding(
                    "D1", f"after the trial cache was deleted, {who} read no trials {lost}"
                )


def check_clean_by_id(impl: Impl) -> None:
    """D10: resetting and removing trials by id leave every other trial and error record.

    Four finished trials, two of them crashed (an error record each); the second
    crashed one is reset, then the first success removed. The open handle and a new
    one must still see the other two, and the error record of the other crash.
    """
    with _run_dir() as root:
        state = impl.create(root)
        if not all(
            hasattr(state, m) for m in ("lock_and_reset_trial_by_id", "lock_and_remove_trial_by_id")
        ):
            raise NotApplicable(
                "no lock_and_reset_trial_by_id / lock_and_remove_trial_by_id (NePS 0.17's)"
            )
        ids = []
        for k, outcome in enumerate(("success", "crashed", "success", "crashed")):
            trial = impl.sample(state, ask, "w0", 1, claim=True)[0]
            err = None if outcome == "success" else RuntimeError(f"crash {k}")
            report = complete(trial, outcome, err=err, tb=None if err is None else "Traceback")
            state.lock_and_report_trial_evaluation(trial, report, worker_id="w0")
            ids.append(trial.id)
        state.lock_and_reset_trial_by_id(ids[3])
        state.lock_and_remove_trial_by_id(ids[0])
        for who, handle in (("the open handle", state), ("a new handle", impl.load(root))):
            seen = handle.lock_and_read_trials()
            kept = {t: state_of(seen[t]) if t in seen else "gone" for t in ids[1:3]}
            if kept != {ids[1]: "crashed", ids[2]: "success"}:
                raise finding("D10", f"after a reset and a removal by id, {who} sees {kept}")
            errors = [e.trial_id for e in handle.lock_and_get_errors().errs]
            if errors != [ids[1]]:
                raise finding(
                    "D10",
                    f"after a reset and a removal by id, {who} has error records {errors}"
                    f" (expected those of {ids[1]!r} alone)",
                )


BATCH = ("7", "10", "3")
"""A batch's ids in the optimizer's order: neither numeric nor string order."""


def _batch(trials: Any, budget_info: Any, n: int | None = None) -> Any:
    del trials, budget_info, n
    return [SampledConfig(id=tid, config={"i": int(tid)}) for tid in BATCH]


def check_batch_order(impl: Impl) -> None:
    """A batch's trials are claimed in the order the optimizer proposed them.

    One sample of three pending trials (ids 7, 10, 3); the open handle claims one,
    a new handle the next (after a consolidation where the implementation has one),
    a third handle the last. Sorting by id, as a tie of their sample times would,
    gives 10, 3, 7 or 3, 7, 10.
    """
    with _run_dir() as root:
        state = impl.create(root)
        impl.sample(state, _batch, "sampler", len(BATCH), claim=False)
        claimed = [impl.claim(state, "w0")]
        impl.consolidate(state)
        claimed += [impl.claim(impl.load(root), f"w{k}") for k in (1, 2)]
        order = tuple(None if t is None else t.id for t in claimed)
        if order != BATCH:
            raise AssertionError(
                f"a batch proposed as {list(BATCH)} was claimed as {list(order)}:"
                " the order of one sample's trials is lost"
            )


def _sample_killed(impl: Impl, root: Path, nth: int, marker: Path) -> int:
    """In a pool process: sample one trial, SIGKILLed before the ``nth`` file change."""
    state = impl.load(root)
    with FsCallKiller(root, nth, before_dying=marker.write_text) as killer:
        impl.sample(state, ask, "w1", 1, claim=False)
    return len(killer.calls)


def check_crash_inside_sample(impl: Impl, nth: int, pool: Pool) -> None:
    """D9: a sample killed at any file change leaves no trial without its folder."""
    with _run_dir() as root:
        state = impl.create(root)
        _cycles(impl, state, 1)
        marker = root.parent / "killed-at"
        [outcome] = pool.run([(_sample_killed, (impl, root, nth, marker))], timeout=60)
        if outcome.ok:
            raise NotApplicable(f"a sample made {outcome.value} file changes, fewer than {nth}")
        if outcome.signal != 9:
            raise AssertionError(f"the sampling process failed: {outcome.describe()}")
        where = f"a sample killed before file change {nth} ({marker.read_text()})"
        try:
            trials = impl.load(root).lock_and_read_trials()
        except Exception as e:  # noqa: BLE001 - a run a crash bricked is the finding
            raise AssertionError(f"after {where}, the run does not load: {e!r}") from None
        for tid in trials:
            folder = root / "configs" / f"config_{tid}"
            if not (folder / "config.yaml").is_file():
                raise finding("D9", f"after {where}, trial {tid} is listed without {folder.name}/")


def _report_killed(impl: Impl, root: Path, trial: Any, nth: int, marker: Path) -> int:
    """In a pool process: report ``trial`` crashed, SIGKILLed before the ``nth`` file change."""
    state = impl.load(root)
    report = complete(trial, "crashed", err=RuntimeError("boom"), tb="Traceback")
    with FsCallKiller(root, nth, before_dying=marker.write_text) as killer:
        state.lock_and_report_trial_evaluation(trial, report, worker_id="w0")
    return len(killer.calls)


def check_crash_inside_report(impl: Impl, nth: int, pool: Pool) -> None:
    """D11: a crashed trial's report killed at any file change keeps report and record together.

    After the kill the trial is either still evaluating with no error record, or
    crashed with exactly one.
    """
    with _run_dir() as root:
        state = impl.create(root)
        trial = impl.sample(state, ask, "w0", 1, claim=True)[0]
        marker = root.parent / "killed-at"
        [outcome] = pool.run([(_report_killed, (impl, root, trial, nth, marker))], timeout=60)
        if outcome.ok:
            raise NotApplicable(f"a report made {outcome.value} file changes, fewer than {nth}")
        if outcome.signal != 9:
            raise AssertionError(f"the reporting process failed: {outcome.describe()}")
        where = f"a crashed report killed before file change {nth} ({marker.read_text()})"
        handle = impl.load(root)
        now = state_of(handle.lock_and_get_trial_by_id(trial.id))
        records = [e.trial_id for e in handle.lock_and_get_errors().errs].count(trial.id)
        if (now, records) not in (("evaluating", 0), ("crashed", 1)):
            raise finding("D11", f"after {where}, the trial is {now} with {records} error records")


def check_cost_growth(impl: Impl, *, small: int = 20, large: int = 3000, cycles: int = 25) -> float:
    """D8: a cycle at ``large`` trials costs at most 2.5x one at ``small``, side by side.

    Returns the ratio (medians of alternating cycles on the two runs). A cycle's cost is
    the process's CPU time: waits for the disk or the scheduler are other jobs' noise (on a
    busy machine they moved the wall-clock ratio of an unchanged run from 1.0 to 0.3).
    """
    with _run_dir() as a, _run_dir() as b:
        runs = {small: impl.create(a), large: impl.create(b)}
        for size, state in runs.items():
            while len(state.lock_and_read_trials()) < size:
                missing = size - len(state.lock_and_read_trials())
                impl.sample(state, ask, "w0", min(50, missing), claim=False)
        times: dict[int, list[float]] = {small: [], large: []}
        for _ in range(cycles):
            for size, state in runs.items():
                start = time.process_time()
                _cycles(impl, state, 1)
                times[size].append(time.process_time() - start)
        ratio = statistics.median(times[large]) / statistics.median(times[small])
        if ratio > GROWTH_LIMIT:
            raise finding(
                "D8", f"a cycle costs {ratio:.1f}x at {large} trials what it costs at {small}"
            )
        return ratio
