"""The kill matrix: SIGKILL at every fault point of every mutating operation.

A child process runs a workload (create, then rounds of sample, claim, report,
update and consolidate) and is SIGKILLed the ``nth`` time it reaches ``point``
while inside ``op``. Afterwards the state must load (recovering what the child
left half-done), every acknowledged operation must be there (the one in flight
may have happened), the directory must pass the invariant checker, and a fresh
swarm must be able to finish the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from neps_state import (
    NePSState,
    NotARunDirectoryError,
    Settings,
    Trial,
    set_fault_hook,
)
from pytest_neps._checker import check_run_dir
from pytest_neps._faults import die
from pytest_neps._impl import Impl
from pytest_neps._ops import OPS, Ctx, complete
from pytest_neps._optimizers import random_search
from pytest_neps._procs import Task, run_tasks
from pytest_neps._swarm import run_swarm

MATRIX: dict[str, tuple[str, ...]] = {
    "create": ("lock.acquired", "create.state_written", "create.info_written"),
    "sample": (
        "lock.acquired",
        "sample.optimizer_state_written",
        "store.staged",
        "store.dir_renamed",
        "store.committed",
    ),
    "claim": ("lock.acquired", "update.files_written", "update.committed"),
    "report": (
        "lock.acquired",
        "update.files_written",
        "update.committed",
        "report.error_appended",
    ),
    "update": ("lock.acquired", "update.files_written", "update.committed"),
    "consolidate": ("lock.acquired", "consolidate.written", "consolidate.renamed"),
}
"""Operation -> the fault points reached inside it."""

WORKER = "killed-worker"
ROUNDS = 6
ONE_STEP = {
    ("pending", "evaluating"),
    ("evaluating", "success"),
    ("evaluating", "failed"),
    ("evaluating", "crashed"),
}


class Acks:
    """Appends one JSON line per acknowledged operation (one write each: SIGKILL-safe)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, op: str, trial: str | None = None, state: str | None = None) -> None:
        """Record that ``op`` returned (for ``trial``, leaving it in ``state``)."""
        line = json.dumps({"op": op, "trial": trial, "state": state})
        os.write(self.fd, line.encode() + b"\n")


def workload(root: Path, acks: Acks, settings: Settings, mark: Callable[[str], None]) -> None:
    """Create the run, then rounds of sample, claim, report, update and consolidate."""
    mark("create")
    state = Impl().create(root, settings=settings)
    acks("create")
    ctx = Ctx(Impl(), state, WORKER, random_search)
    for r in range(ROUNDS):
        _run(ctx, "sample", (1 + r % 2,), acks, mark)
        trial = _run(ctx, "claim", (WORKER,), acks, mark)
        if trial is None:
            raise AssertionError("the workload found nothing to claim")
        mark("report")
        err = RuntimeError(f"round {r}") if r % 2 else None
        report = complete(
            trial, "crashed" if err else "success", time_end=time.time(),
            objective=None if err else 1.0, err=err, tb="Traceback ..." if err else None,
            evaluation_duration=0.1,
        )  # fmt: skip
        state.lock_and_report_trial_evaluation(trial, report, worker_id=WORKER)
        acks("report", trial.id, report.reported_as)
        mark("update")
        pending = state.lock_and_get_next_pending_trial()
        if pending is not None:
            pending.set_evaluating(time_started=time.time(), worker_id=WORKER)
            state.put_updated_trial(pending, hints="metadata")
            acks("update", pending.id, "evaluating")
        _run(ctx, "consolidate", (), acks, mark)
        mark("")


def _run(
    ctx: Ctx, name: str, args: tuple[Any, ...], acks: Acks, mark: Callable[[str], None]
) -> Any:
    """Registry operation ``name`` inside ``mark(name)``; ack each trial it leaves (or itself)."""
    op = OPS[name]
    mark(name)
    raw = op.call(ctx, args)
    leaves = op.leaves(args, op.encode(raw))
    for tid, state in leaves.items():
        acks(name, tid, state)
    if not leaves:
        acks(name)
    return raw


class _Hook:
    """Counts (operation, point) hits; kills at the ``nth`` hit of the target, if given."""

    def __init__(self, target: tuple[str, str, int] | None, acks: Acks | None) -> None:
        self.target = target
        self.acks = acks
        self.op = ""
        self.hits: Counter[tuple[str, str]] = Counter()

    def mark(self, op: str) -> None:
        self.op = op

    def __call__(self, point: str) -> None:
        key = (self.op, point)
        self.hits[key] += 1
        if self.target is not None and (*key, self.hits[key]) == self.target:
            if self.acks is not None:
                self.acks("killed", None, f"{self.op}/{point}")
            die()


def count_hits(settings: Settings) -> Counter[tuple[str, str]]:
    """How often each (operation, point) is reached by one run of the workload."""
    tmp = Path(tempfile.mkdtemp(prefix="neps-kill-count-"))
    hook = _Hook(None, None)
    previous = set_fault_hook(hook)
    try:
        workload(tmp / "run", Acks(tmp / "acks"), settings, hook.mark)
    finally:
        set_fault_hook(previous)
        shutil.rmtree(tmp, ignore_errors=True)
    return hook.hits


def killed_workload(root: Path, acks_path: Path, settings: Settings, target: Any) -> str:
    """Run the workload with a SIGKILL at ``target`` = (op, point, nth) (in a child)."""
    acks = Acks(acks_path)
    hook = _Hook(tuple(target), acks)
    set_fault_hook(hook)
    workload(root, acks, settings, hook.mark)
    return "finished without reaching the fault point"


def verify(root: Path, acks_path: Path, settings: Settings, *, swarm_trials: int = 8) -> list[str]:
    """Everything wrong with the run directory a killed workload left."""
    acks = [json.loads(line) for line in acks_path.read_bytes().splitlines()]
    if not acks or acks[-1]["op"] != "killed":
        return ["the process was not killed at its fault point"]
    try:
        state = NePSState.create_or_load(root, load_only=True, settings=settings)
    except NotARunDirectoryError:
        if any(a["op"] == "create" for a in acks):
            return ["an acknowledged create is lost"]
        state = Impl().create(root, settings=settings)
    trials = state.lock_and_read_trials()
    problems = _lost(acks, trials) + [str(v) for v in check_run_dir(root)]
    if problems:
        return problems
    # The killed worker's trial, if it was left evaluating, is reset as a supervisor
    # would; then a fresh swarm must finish the run.
    for trial in trials.values():
        if trial.metadata.state is Trial.State.EVALUATING:
            trial.reset()
            state.put_updated_trial(trial)
    result = run_swarm(
        run_dir=root, workers=2, trials=len(trials) + swarm_trials, timeout=120, settings=settings
    )
    return result.problems()


def _lost(acks: list[dict[str, Any]], trials: dict[str, Trial]) -> list[str]:
    expected = {a["trial"]: a["state"] for a in acks[:-1] if a["trial"] is not None}
    problems = [f"acknowledged trial {t} is lost" for t in expected if t not in trials]
    ahead = [
        (t, s, trials[t].metadata.state.value)
        for t, s in expected.items()
        if t in trials and trials[t].metadata.state.value != s
    ]
    # The operation in flight may have committed: one trial may be one legal step ahead.
    if len(ahead) > 1 or any((s, now) not in ONE_STEP for _, s, now in ahead):
        problems.append(f"acknowledged states changed: {ahead}")
    return problems


@dataclass
class KillRun:
    """One cell run of the matrix."""

    op: str
    point: str
    nth: int
    problems: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        """The state recovered and a fresh swarm finished the run."""
        return not self.problems


def run_matrix(
    runs: int = 20,
    *,
    settings: Settings | None = None,
    cells: list[tuple[str, str]] | None = None,
    progress: Callable[[KillRun], None] | None = None,
    directory: Path | None = None,
) -> list[KillRun]:
    """Run every (operation, point) cell ``runs`` times, at different occurrences.

    Each run's directory is made in ``directory`` (a temp dir if None).
    """
    settings = settings or Settings(durability="os")
    hits = count_hits(settings)
    chosen = cells or [(op, point) for op, points in MATRIX.items() for point in points]
    out = []
    for op, point in chosen:
        reachable = hits[(op, point)]
        if not reachable:
            raise ValueError(f"the workload never reaches {point} inside {op}")
        for r in range(runs):
            nth = 1 + (r * 7) % reachable  # spread over the run's occurrences
            out.append(_one(op, point, nth, settings, directory))
            if progress is not None:
                progress(out[-1])
    return out


def _one(
    op: str, point: str, nth: int, settings: Settings, directory: Path | None = None
) -> KillRun:
    tmp = Path(tempfile.mkdtemp(prefix="neps-kill-", dir=directory))
    start = time.monotonic()
    try:
        root, acks = tmp / "run", tmp / "acks.jsonl"
        task = Task("worker", killed_workload, (root, acks, settings, (op, point, nth)))
        [outcome] = run_tasks([task], timeout=60)
        if outcome.signal != 9:
            problems = [f"not killed: {outcome.describe()}"]
        else:
            problems = verify(root, acks, settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return KillRun(op, point, nth, problems, time.monotonic() - start)


def render_matrix(runs: list[KillRun], out: TextIO) -> None:
    """The matrix as a table: operation x point, runs, outcome."""
    out.write(f"\n{'operation':<12}{'fault point':<32}{'runs':>6}{'recovered':>11}{'failed':>8}\n")
    cells: dict[tuple[str, str], list[KillRun]] = {}
    for run in runs:
        cells.setdefault((run.op, run.point), []).append(run)
    for (op, point), rs in cells.items():
        ok = sum(r.ok for r in rs)
        out.write(f"{op:<12}{point:<32}{len(rs):>6}{ok:>11}{len(rs) - ok:>8}\n")
    failures = [r for r in runs if not r.ok]
    out.writelines(
        f"  FAILED {r.op}/{r.point} #{r.nth}: {'; '.join(r.problems)[:300]}\n"
        for r in failures[:20]
    )
    total_ok = sum(r.ok for r in runs)
    out.write(f"{len(runs)} runs, {total_ok} recovered, {len(runs) - total_ok} failed\n")
