"""Every state a file system may persist after a power loss, for each mutating operation.

In the spirit of ALICE (Pillai et al., OSDI '14). A workload (create, samples,
claims, reports, an update, a consolidation, a recovery) runs once on a real
folder while :class:`~pytest_neps._fsmodel.Recorder` traces every change. Then,
for each crash point inside each operation (after every traced change), the
states a POSIX file system may leave are built from the trace:

- names (create, mkdir, rename, exchange, link, unlink, rmdir, and fallocate)
  persist in the order issued: a prefix of them, at least up to the last one
  made durable by an fsync of its folder;
- each file's unsynced bytes persist all or not at all (absent: the file holds
  what its last fsync left, or zeros where it was preallocated), and the last
  unsynced write of a file may be torn in half.

Every combination for the files the operation itself wrote is built (above 6
such files: none, all, each one alone dropped, each one alone kept), the
unsynced files of earlier operations all kept or all dropped, the name prefixes
that end inside the operation plus the shortest and the one that ends before it.
Equal states are checked once. Each is checked like the machine's next boot:
the state loads (a new boot id, so recovery runs), every acknowledged operation
is there (the one in flight may have happened), the optimizer state is the last
acknowledged one (or the in-flight one's), the checker finds nothing, and one
more sample-claim-report works.

Only implementations that change files through ``neps_state._io`` can be traced
(the reference and its subclasses); for any other, the trace is empty and the
run fails saying so.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from neps_state import NotARunDirectoryError, Settings, Trial
from neps_state import _io as io
from neps_state._boot import BOOT_ID_ENV
from neps_state._io import set_tracer
from pytest_neps._checker import check_run_dir
from pytest_neps._fsmodel import FsOp, Recorder, Tree
from pytest_neps._impl import DEFAULT_INFO, Impl, as_impl
from pytest_neps._ops import complete
from pytest_neps._optimizers import random_search
from pytest_neps._reference import REFERENCE

logger = logging.getLogger(__name__)

DAMAGE = "damage"
"""The workload step that damages files (durably) for the next recovery; not checked."""
EXHAUSTIVE_FILES = 6
"""Above this many unsynced files written by one operation, data choices are reduced."""

_ONE_STEP = {
    ("pending", "evaluating"),
    ("evaluating", "success"),
    ("evaluating", "failed"),
    ("evaluating", "crashed"),
}

Step = Callable[[Any, Impl], dict[str, str]]
"""A workload step: runs one operation on the state; returns {trial id: state it left}."""


def _complete(trial: Trial, error: Exception | None) -> Any:
    return complete(
        trial, "crashed" if error else "success", time_end=time.time(),
        objective=None if error else 0.25, err=error, tb="Traceback ..." if error else None,
        evaluation_duration=0.1,
    )  # fmt: skip


class _Workload:
    """The operations traced, each on the trials the previous ones left."""

    def __init__(self) -> None:
        self.claimed: list[Trial] = []

    def steps(self) -> list[tuple[str, Step]]:
        return [
            ("sample", self.sample),
            ("sample-batch", self.sample_batch),
            ("claim", self.claim),
            ("report", self.report),
            ("sample-claim", self.sample_claim),
            ("report-error", self.report_error),
            ("update", self.update),
            ("consolidate", self.consolidate),
            ("recover", self.recover),
            (DAMAGE, self.damage),
            ("repair", self.recover),
        ]

    def sample(self, state: Any, impl: Impl) -> dict[str, str]:
        return {t.id: "pending" for t in impl.sample(state, random_search, "w1", 1, claim=False)}

    def sample_batch(self, state: Any, impl: Impl) -> dict[str, str]:
        return {t.id: "pending" for t in impl.sample(state, random_search, "w1", 2, claim=False)}

    def sample_claim(self, state: Any, impl: Impl) -> dict[str, str]:
        trials = impl.sample(state, random_search, "w1", 1, claim=True)
        self.claimed.append(trials[0])
        return {trials[0].id: "evaluating"}

    def claim(self, state: Any, impl: Impl) -> dict[str, str]:
        trial = impl.claim(state, "w1")
        if trial is None:
            raise AssertionError("the workload found nothing to claim")
        self.claimed.append(trial)
        return {trial.id: "evaluating"}

    def _report(self, state: Any, error: Exception | None) -> dict[str, str]:
        trial = self.claimed.pop(0)
        report = _complete(trial, error)
        state.lock_and_report_trial_evaluation(trial, report, worker_id="w1")
        return {trial.id: str(report.reported_as)}

    def report(self, state: Any, impl: Impl) -> dict[str, str]:
        del impl
        return self._report(state, None)

    def report_error(self, state: Any, impl: Impl) -> dict[str, str]:
        del impl
        return self._report(state, RuntimeError("the evaluation failed"))

    def update(self, state: Any, impl: Impl) -> dict[str, str]:
        del impl
        trial = state.lock_and_get_next_pending_trial()
        trial.set_evaluating(time_started=time.time(), worker_id="w2")
        state.put_updated_trial(trial, hints="metadata")
        return {trial.id: "evaluating"}

    def consolidate(self, state: Any, impl: Impl) -> dict[str, str]:
        if not impl.consolidate(state):
            raise AssertionError("the implementation has no lock_and_consolidate_cache")
        return {}

    def recover(self, state: Any, impl: Impl) -> dict[str, str]:
        # The first operation of a new boot: the recovery checks every file.
        with _boot(f"workload-{uuid.uuid4()}"):
            impl.load(state.path, settings=state.settings)
        return {}

    def damage(self, state: Any, impl: Impl) -> dict[str, str]:
        """What a power loss does, made durable: the next recovery has files to rebuild."""
        del impl
        root = Path(state.path)
        configs = root / "configs"
        for path, size in (
            (root / "optimizer_state.pkl", 0),
            (configs / "config_0" / "metadata.json", 0),
            (configs / "config_3" / "report.yaml", 0),
            (configs / "config_1" / "config.yaml", 7),
        ):
            fd = os.open(path, os.O_WRONLY)
            try:
                io.truncate(fd, 0)
                io.write(fd, bytes(size))
                io.fsync_fd(fd)
            finally:
                os.close(fd)
        io.remove_tree(configs / "config_2")
        io.fsync_dir(configs)
        fd = os.open(configs / ".trial_cache.journal", os.O_WRONLY | os.O_APPEND)
        try:
            io.write(fd, b"\x20\x00\x00\x00half a record")
            io.fsync_fd(fd)
        finally:
            os.close(fd)
        return {}


@contextmanager
def _boot(boot_id: str) -> Iterator[None]:
    old = os.environ.get(BOOT_ID_ENV)
    os.environ[BOOT_ID_ENV] = boot_id
    try:
        yield
    finally:
        if old is None:
            del os.environ[BOOT_ID_ENV]
        else:
            os.environ[BOOT_ID_ENV] = old


@dataclass
class OpStats:
    """What was enumerated for one operation."""

    op: str
    traced: int = 0
    points: int = 0
    built: int = 0
    checked: int = 0
    distinct: int = 0
    inconsistent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every state checked was consistent (and there was one to check)."""
        return self.checked > 0 and not self.inconsistent

    def summary(self) -> dict[str, Any]:
        """The figures as a JSON-ready mapping."""
        return {
            "operation": self.op,
            "changes": self.traced,
            "crash_points": self.points,
            "states": self.built,
            "distinct": self.distinct,
            "checked": self.checked,
            "inconsistent": self.inconsistent,
        }


@dataclass
class _Ack:
    step: str
    trials: dict[str, str]
    optimizer_state: bytes | None


def record_workload(root: Path, impl: Impl, settings: Settings) -> tuple[Recorder, str | None]:
    """Run the workload on ``root`` (an empty folder) with a recorder.

    Returns the recorder and, if a step raised (the workload stops there), what it raised.
    """
    root.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(root)
    previous = set_tracer(recorder)
    name = "create"
    try:
        recorder.mark("begin", step=name)
        state = impl.create(root / "run", DEFAULT_INFO, settings)
        recorder.mark("ack", step=name, trials={}, opt=_optimizer_state(state))
        for name, step in _Workload().steps():
            recorder.mark("begin", step=name)
            trials = step(state, impl)
            opt = _optimizer_state(state) if name.startswith("sample") else None
            recorder.mark("ack", step=name, trials=trials, opt=opt)
    except Exception as e:  # noqa: BLE001 - a step that fails is a finding, reported per step
        return recorder, f"{name} raised {type(e).__name__}: {e}"
    finally:
        set_tracer(previous)
    return recorder, None


def _optimizer_state(state: Any) -> bytes:
    return pickle.dumps(state.lock_and_get_optimizer_state())


def _ranges(trace: list[FsOp]) -> list[tuple[str, int, int, _Ack]]:
    """Each step: its name, the trace positions of its begin and ack markers, the ack."""
    out = []
    begin = 0
    for i, op in enumerate(trace):
        if op.op != "mark":
            continue
        if op.label == "begin":
            begin = i
        else:
            ack = _Ack(op.info["step"], op.info["trials"], op.info["opt"])
            out.append((ack.step, begin, i, ack))
    return out


@dataclass
class _Point:
    """What a crash after ``trace[:point]`` may keep: the durable facts of that prefix."""

    issued: list[FsOp]
    initial: Tree
    last_sync: dict[int, int] = field(default_factory=dict)
    meta: list[int] = field(default_factory=list)
    forced: int = 0
    unsynced: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, op in enumerate(self.issued):
            if op.op == "fsync":
                self.last_sync[op.ino] = i
        self.meta = [i for i, op in enumerate(self.issued) if op.is_meta]
        for n, i in enumerate(self.meta):
            op = self.issued[i]
            covers = (op.ino,) if op.op == "fallocate" else op.folders()
            if any(self.last_sync.get(f, -1) > i for f in covers):
                self.forced = n + 1  # names persist in order: all before it too
        for i, op in enumerate(self.issued):
            if op.is_data and not self.synced(i):
                self.unsynced.setdefault(op.ino, []).append(i)

    def synced(self, i: int) -> bool:
        """Whether the data change ``i`` was made durable by a later fsync of its file."""
        return i <= self.last_sync.get(self.issued[i].ino, -1)

    def build(self, names: int, kept: set[int], torn: int | None = None) -> Tree:
        """The tree after the first ``names`` name changes and the data of ``kept`` files."""
        tree = self.initial.copy()
        meta = set(self.meta[:names])
        for i, op in enumerate(self.issued):
            # (A file whose creation was not kept takes no data.)
            if op.is_meta:
                if i in meta and (op.op != "fallocate" or op.ino in tree.nodes):
                    tree.apply(op)
            elif op.is_data and op.ino in tree.nodes and (self.synced(i) or op.ino in kept):
                tree.apply(op if i != torn else _half(op))
        return tree


def _states_at(trace: list[FsOp], initial: Tree, point: int, start: int) -> Iterator[Tree]:
    p = _Point(trace[:point], initial)
    before = max(p.forced, sum(1 for i in p.meta if i < start))
    prefixes = sorted({p.forced, *range(before, len(p.meta) + 1)})
    current = sorted(ino for ino, ops in p.unsynced.items() if ops[-1] >= start)
    older = {ino for ino in p.unsynced if ino not in current}
    for keep in _data_choices(current):
        for old in (older, set()) if older else (set(),):
            for names in prefixes:
                yield p.build(names, keep | old)
    for ino in current:
        last = p.unsynced[ino][-1]
        if trace[last].op == "write" and len(trace[last].data) > 1:
            yield p.build(len(p.meta), set(p.unsynced), torn=last)


def _data_choices(files: list[int]) -> Iterator[set[int]]:
    if len(files) <= EXHAUSTIVE_FILES:
        for n in range(len(files) + 1):
            for combo in itertools.combinations(files, n):
                yield set(combo)
        return
    yield set()
    yield set(files)
    for ino in files:
        yield {ino}
        yield set(files) - {ino}


def _half(op: FsOp) -> FsOp:
    return FsOp("write", ino=op.ino, offset=op.offset, data=op.data[: len(op.data) // 2])


def enumerate_and_check(
    impl: Any = REFERENCE,
    *,
    settings: Settings | None = None,
    steps: list[str] | None = None,
    every: int = 1,
    progress: Callable[[OpStats], None] | None = None,
) -> list[OpStats]:
    """Trace the workload, then build and check the crash states of each step.

    ``steps`` restricts the steps checked (all are traced); ``every`` checks only
    every n-th distinct state of a step (the others are counted, not checked).
    """
    impl = as_impl(impl)
    settings = settings or Settings(durability="fsync")
    work = Path(tempfile.mkdtemp(prefix="neps-crash-"))
    out = []
    try:
        recorder, failure = record_workload(work / "traced", impl, settings)
        if failure is not None:
            stats = OpStats(failure.split(" ", 1)[0], inconsistent=[f"the workload: {failure}"])
            if steps is None or stats.op in steps:
                out.append(stats)
        acks: list[_Ack] = []
        for name, start, end, ack in _ranges(recorder.trace):
            if name != DAMAGE and (steps is None or name in steps):
                stats = _check_step(
                    recorder,
                    name,
                    (start, end),
                    acks=acks,
                    in_flight=ack,
                    impl=impl,
                    settings=settings,
                    every=every,
                )
                out.append(stats)
                if progress is not None:
                    progress(stats)
            acks.append(ack)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_step(
    recorder: Recorder,
    name: str,
    span: tuple[int, int],
    *,
    acks: list[_Ack],
    in_flight: _Ack,
    impl: Impl,
    settings: Settings,
    every: int,
) -> OpStats:
    start, end = span
    stats = OpStats(name)
    stats.traced = sum(1 for op in recorder.trace[start:end] if op.op != "mark")
    if all(op.op == "mark" for op in recorder.trace):
        stats.inconsistent.append(
            f"{name}: no file-system change was traced; {impl.target} does not write"
            " through neps_state._io, so its crash states cannot be enumerated"
        )
        return stats
    seen: set[str] = set()
    stats.points = stats.traced + 1
    for point in range(start + 1, end + 1):
        acked = acks + ([in_flight] if point == end else [])
        flying = None if point == end else in_flight
        for tree in _states_at(recorder.trace, recorder.initial, point, start):
            stats.built += 1
            digest = tree.digest()
            if digest in seen:
                continue
            seen.add(digest)
            stats.distinct += 1
            if (len(seen) - 1) % every:
                continue
            stats.checked += 1
            problems = check_crash_state(tree, acked, flying, impl, settings)
            if problems:
                where = f"{name} after {point - start} of {end - start} changes"
                stats.inconsistent.append(f"{where}: {'; '.join(problems)}")
    return stats


def check_crash_state(
    tree: Tree, acked: list[_Ack], in_flight: _Ack | None, impl: Impl, settings: Settings
) -> list[str]:
    """Everything wrong with one crash state, as the next boot sees it."""
    work = Path(tempfile.mkdtemp(prefix="neps-crashstate-"))
    try:
        tree.materialize(work)
        run = work / "run"
        with _boot(f"crash-{uuid.uuid4()}"):
            return _check_loaded(run, acked, in_flight, impl, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_loaded(
    run: Path, acked: list[_Ack], in_flight: _Ack | None, impl: Impl, settings: Settings
) -> list[str]:
    created = any(a.step == "create" for a in acked)
    try:
        state = impl.load(run, settings=settings)
    except NotARunDirectoryError:
        return ["an acknowledged create is lost"] if created else []
    except Exception as e:  # noqa: BLE001 - a state that does not load is the finding
        return [f"does not load: {type(e).__name__}: {e}"]
    try:
        trials = state.lock_and_read_trials()
        opt = _optimizer_state(state)
    except Exception as e:  # noqa: BLE001 - idem
        return [f"does not read: {type(e).__name__}: {e}"]
    problems = _lost(trials, acked, in_flight)
    allowed = [a.optimizer_state for a in acked if a.optimizer_state is not None][-1:]
    if in_flight is not None and in_flight.optimizer_state is not None:
        allowed.append(in_flight.optimizer_state)
    if allowed and opt not in allowed:
        problems.append("the optimizer state is not the last acknowledged one")
    problems += [str(v) for v in check_run_dir(run)]
    problems += _orphan_errors(state, trials)
    if problems:
        return problems
    try:
        [trial] = impl.sample(state, random_search, "next-boot", 1, claim=True)
        state.lock_and_report_trial_evaluation(trial, _complete(trial, None), worker_id="next-boot")
    except Exception as e:  # noqa: BLE001 - a run that cannot go on is the finding
        return [f"cannot continue: {type(e).__name__}: {e}"]
    return [f"after continuing: {v}" for v in check_run_dir(run)]


def _lost(trials: dict[str, Trial], acked: list[_Ack], in_flight: _Ack | None) -> list[str]:
    expected: dict[str, str] = {}
    for ack in acked:
        expected.update(ack.trials)
    flying = {} if in_flight is None else in_flight.trials
    problems = [f"acknowledged trial {t} is lost" for t in expected if t not in trials]
    for tid, state in expected.items():
        now = trials[tid].metadata.state.value if tid in trials else state
        if now != state and not (tid in flying and (state, now) in _ONE_STEP):
            problems.append(f"trial {tid} is {now}, acknowledged as {state}")
    extra = sorted(set(trials) - set(expected) - set(flying))
    if extra:
        problems.append(f"trials no operation created: {extra}")
    return problems


def _orphan_errors(state: Any, trials: dict[str, Trial]) -> list[str]:
    errs = state.lock_and_get_errors().errs
    orphans = [
        e.trial_id
        for e in errs
        if trials.get(e.trial_id) is None or trials[e.trial_id].report is None
    ]
    return [f"error records of trials without an error report: {orphans}"] if orphans else []


def render(stats: list[OpStats], out: TextIO) -> None:
    """The per-operation table."""
    out.write(
        f"\n{'operation':<14}{'changes':>9}{'crash points':>14}{'states':>9}{'distinct':>10}"
        f"{'checked':>9}{'inconsistent':>14}\n"
    )
    out.writelines(
        f"{s.op:<14}{s.traced:>9}{s.points:>14}{s.built:>9}{s.distinct:>10}{s.checked:>9}"
        f"{len(s.inconsistent):>14}\n"
        for s in stats
    )
    total = sum(s.checked for s in stats)
    bad = sum(len(s.inconsistent) for s in stats)
    out.write(f"{total} distinct crash states checked, {bad} inconsistent\n")
    for s in stats:
        out.writelines(f"  {s.op}: {line[:400]}\n" for line in s.inconsistent[:5])
