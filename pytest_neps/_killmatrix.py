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
from pytest_neps._optimizers import fresh_ids
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
    "worker_id": ("lock.acquired", "state.written", "state.committed"),
    "budget": ("lock.acquired", "state.written", "state.committed"),
    "import": ("lock.acquired", "store.staged", "store.dir_renamed", "store.committed"),
    "neps_next": (
        "lock.acquired",
        "sample.optimizer_state_written",
        "store.staged",
        "store.dir_renamed",
        "store.committed",
        "update.files_written",
        "update.committed",
    ),
    "neps_report": (
        "lock.acquired",
        "update.files_written",
        "update.committed",
        "report.error_appended",
    ),
    **dict.fromkeys(
        ("reset_by_id", "remove"),
        (
            "lock.acquired",
            "clean.prepared",
            "consolidate.written",
            "consolidate.renamed",
            "clean.committed",
        ),
    ),
}
"""Operation -> the fault points reached inside it."""

WORKER = "killed-worker"
ROUNDS = 6
BUDGET = 10
"""Round ``r`` sets the run's total evaluations to ``BUDGET + r``."""
ONE_STEP = {
    ("pending", "evaluating"),
    ("evaluating", "success"),
    ("evaluating", "failed"),
    ("evaluating", "crashed"),
}
RESET_STEPS = {(s, "pending") for s in ("evaluating", "success", "failed", "crashed")}
"""What a reset by id in flight may have done to its trial."""


class Acks:
    """Appends one JSON line per acknowledged operation (one write each: SIGKILL-safe)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(
        self, op: str, trial: str | None = None, state: str | None = None, value: Any = None
    ) -> None:
        """Record that ``op`` returned (for ``trial``, leaving it in ``state``; or ``value``)."""
        line = json.dumps({"op": op, "trial": trial, "state": state, "value": value})
        os.write(self.fd, line.encode() + b"\n")


def workload(root: Path, acks: Acks, settings: Settings, mark: Callable[[str], None]) -> None:
    """Create the run, then rounds of sample, claim, report, update and consolidate.

    Each round also takes NePS 0.17's operations: a worker id, a budget, an import,
    NePS's runtime's own steps, and a reset or a removal by id.
    """
    mark("create")
    state = Impl().create(root, settings=settings)
    acks("create")
    ctx = Ctx(Impl(), state, WORKER, fresh_ids)
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
        _nepses_round(ctx, r, acks, mark)
        mark("")


def _nepses_round(ctx: Ctx, r: int, acks: Acks, mark: Callable[[str], None]) -> None:
    """NePS 0.17's operations, one round of them."""
    _run(ctx, "worker_id", (), acks, mark)
    _run(ctx, "budget", (BUDGET + r,), acks, mark)
    _run(ctx, "import", (f"r{r}",), acks, mark)
    trial = _run(ctx, "neps_next", (WORKER,), acks, mark)
    _run(ctx, "neps_report", (WORKER, trial.id, "crashed" if r % 2 else "success"), acks, mark)
    if r % 2:
        _run(ctx, "reset_by_id", (trial.id,), acks, mark)
        trial = _run(ctx, "neps_next", (WORKER,), acks, mark)  # takes it again
        _run(ctx, "neps_report", (WORKER, trial.id, "success"), acks, mark)
    else:
        _run(ctx, "remove", (f"imported-r{r}",), acks, mark)


def _run(
    ctx: Ctx, name: str, args: tuple[Any, ...], acks: Acks, mark: Callable[[str], None]
) -> Any:
    """Registry operation ``name`` inside ``mark(name)``; ack each trial it leaves (or itself)."""
    op = OPS[name]
    mark(name)
    raw = op.call(ctx, args)
    value = op.encode(raw)
    leaves = op.leaves(args, value)
    for tid, state in leaves.items():
        acks(name, tid, state)
    if not leaves:
        acks(name, value=value if name == "worker_id" else args[0] if args else None)
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
    problems = (
        _lost(acks, trials) + _lost_state(acks, state) + [str(v) for v in check_run_dir(root)]
    )
    if problems:
        return problems
    # What the killed worker left evaluating is provably its own, and it is dead: the
    # state takes all of it back; then a fresh swarm must finish the run.
    state.lock_and_release_dead_workers_trials()
    left = [
        t.id
        for t in state.lock_and_read_trials().values()
        if t.metadata.state is Trial.State.EVALUATING
    ]
    if left:
        return [f"trials {left} of the killed worker are still evaluating after a take-back"]
    result = run_swarm(
        run_dir=root, workers=2, trials=len(trials) + swarm_trials, timeout=120, settings=settings
    )
    return result.problems()


def _lost(acks: list[dict[str, Any]], trials: dict[str, Trial]) -> list[str]:
    expected = {a["trial"]: a["state"] for a in acks[:-1] if a["trial"] is not None}
    # The operation in flight may have committed.
    in_flight = str(acks[-1]["state"]).partition("/")[0]
    gone = [t for t, s in expected.items() if t not in trials and s != "removed"]
    if in_flight == "remove" and len(gone) == 1 and expected[gone[0]] == "external":
        gone = []  # (the workload removes imported trials)
    problems = [f"acknowledged trial {t} is lost" for t in gone]
    removed = [t for t, s in expected.items() if s == "removed" and t in trials]
    if removed:
        problems.append(f"acknowledged removals undone: {removed}")
    ahead = [
        (t, s, trials[t].metadata.state.value)
        for t, s in expected.items()
        if t in trials and s != "removed" and trials[t].metadata.state.value != s
    ]
    # One trial may be one legal step ahead.
    steps = ONE_STEP | (RESET_STEPS if in_flight == "reset_by_id" else set())
    if len(ahead) > 1 or any((s, now) not in steps for _, s, now in ahead):
        problems.append(f"acknowledged states changed: {ahead}")
    return problems


def _lost_state(acks: list[dict[str, Any]], state: Any) -> list[str]:
    """Acknowledged worker ids and budgets the optimizer state no longer has."""
    opt = state.lock_and_get_optimizer_state()
    ids = [a["value"] for a in acks[:-1] if a["op"] == "worker_id"]
    problems = [
        f"acknowledged worker id {w} is lost" for w in ids if w not in (opt.worker_ids or [])
    ]
    budgets = [a["value"] for a in acks[:-1] if a["op"] == "budget"]
    if budgets:
        # (The budget being set when the process was killed may have been set too.)
        now = None if opt.budget is None else opt.budget.total_evaluations_to_spend
        if now not in (budgets[-1], budgets[-1] + 1):
            problems.append(f"acknowledged budget {budgets[-1]} is now {now}")
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
