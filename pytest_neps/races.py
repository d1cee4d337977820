"""Hypothesis properties that race real processes against one run directory.

- :func:`check_race`: a drawn plan (a sequential prefix, then one batch of
  operations per worker) runs with the batches in K processes released together;
  the recorded history (killed operations are indeterminate) must be
  linearizable against :class:`~pytest_neps._linearize.NePSModel`.
- :func:`check_creation`: drawn groups of processes call ``create_or_load`` on
  one new directory with equal, reordered and different optimizer infos.
- :func:`check_consolidation`: drawn updates under a drawn consolidation limit,
  with concurrent readers and crashes mid-consolidation.

Each takes an implementation (see ``_impl``) and a :class:`~pytest_neps._pool.Pool`.
A failing example reports (``hypothesis.note``) the plan and the history, and
Hypothesis shrinks the plan; each plan runs ``repeats`` times so that a race
that shows up once shows up again while shrinking.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from neps_state import OptimizerInfo, Settings, set_fault_hook
from neps_state import _pickles as pickles
from pytest_neps._checker import check_run_dir
from pytest_neps._faults import KillAt
from pytest_neps._fscalls import FsCallKiller
from pytest_neps._history import HistoryWriter, Op, read_history
from pytest_neps._impl import Impl
from pytest_neps._linearize import Event, check, format_history
from pytest_neps._ops import OPS, Ctx, NePSModel, Operation, from_json
from pytest_neps._pool import Call, Pool
from pytest_neps.defects import finding
from pytest_neps.machines import ask


def note(text: str) -> None:
    """Hypothesis's ``note`` inside a property; nothing when called from a plain test."""
    try:
        hypothesis_note(text)
    except InvalidArgument:
        return


CLAIM_PAUSE = 0.05
"""Seconds a two-step claim pauses between its steps in a race."""
FS_KILL = "fs"
"""A kill before a file change (``_fscalls``), not at a named fault point."""
KILL_POINTS = (
    "lock.acquired",
    "store.staged",
    "store.dir_renamed",
    "store.committed",
    "update.files_written",
    "update.committed",
)

# -- races: linearizability ----------------------------------------------------------


def _planned(op: Operation) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.sampled_from(op.plan).map(lambda drawn: (op.name, *drawn))


op_strategy = st.one_of(*(_planned(op) for op in OPS.values() if op.plan))


def race_plans(workers: int = 3, *, fault_points: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """A sequential prefix, one batch per worker, and maybe a kill in one worker.

    A kill is before the ``n``-th file change of the worker's batch (``"fs"``, any
    implementation) or, with ``fault_points`` (an implementation that calls
    ``neps_state``'s fault hook), the ``n``-th time it reaches a named point.
    """
    where = st.tuples(st.integers(0, workers - 1), st.just(FS_KILL), st.integers(1, 30))
    if fault_points:
        where |= st.tuples(
            st.integers(0, workers - 1), st.sampled_from(KILL_POINTS), st.integers(1, 3)
        )
    return st.fixed_dictionaries(
        {
            "prefix": st.lists(op_strategy, max_size=4),
            "batches": st.lists(
                st.lists(op_strategy, min_size=1, max_size=5), min_size=workers, max_size=workers
            ),
            "kill": st.none() | where,
        }
    )


def _run_ops(impl: Impl, state: Any, worker: str, ops: list[Any], rec: HistoryWriter) -> None:
    ctx = Ctx(impl, state, worker, ask)
    claimed: str | None = None
    for name, *drawn in ops:
        op = OPS[name]
        if "claimed" in op.params and claimed is None:
            continue  # only a trial this worker claimed can be reported
        if not op.supported_by(state):
            continue  # (NePS 0.17's operations, on a state without them: see the suite)
        args = op.args(drawn, worker, claimed)
        seq = rec.start(name, op.trials(args), args=list(args))
        try:
            value = op.encode(op.call(ctx, args))
        except Exception as e:  # noqa: BLE001 - a raised error is a result to be judged
            rec.end(seq, ok=False, result=type(e).__name__)
            continue
        for tid, now in op.leaves(args, value).items():
            if now == "evaluating":
                claimed = tid  # this worker holds what it left evaluating ...
            elif tid == claimed:
                claimed = None  # ... until it moves the trial on
        rec.end(seq, ok=True, result=json.dumps(value))


@dataclass(frozen=True)
class RaceJob:
    """One worker's part of a race: its batch, where it records, and maybe a kill."""

    impl: Impl
    root: Path
    worker: str
    ops: list[Any]
    history: Path
    kill: tuple[str, int] | None = None


def race_worker(job: RaceJob) -> None:
    """One worker's batch (runs in a pool process); a kill plan SIGKILLs it mid-batch."""
    # The model has no deaths: a killed worker's trial is left as it is (NePS's way).
    state = job.impl.load(job.root, Settings(dead_worker_trials="keep"))
    rec = HistoryWriter(job.history, job.worker)
    if job.kill is not None and job.kill[0] == FS_KILL:
        with FsCallKiller(job.root, job.kill[1]):
            _run_ops(job.impl, state, job.worker, job.ops, rec)
        return
    if job.kill is not None and not job.impl.calls_fault_hook():
        raise AssertionError(
            f"a kill at {job.kill[0]} cannot happen: {job.impl.target} never calls"
            " neps_state's fault hook (plan kills with race_plans(fault_points=False))"
        )
    previous = set_fault_hook(None if job.kill is None else KillAt(*job.kill))
    try:
        _run_ops(job.impl, state, job.worker, job.ops, rec)
    finally:
        set_fault_hook(previous)


def _event(op: Op) -> Event:
    result: Any = None
    if op.completed:
        # An error is its type's name, which the model only accepts where NePS raises it.
        result = from_json(json.loads(op.result)) if op.ok else op.result
    return Event(op.worker, op.op, tuple(op.args.get("args", [])), result, op.start_ns, op.end_ns)


def run_race(impl: Impl, plan: dict[str, Any], pool: Pool, root: Path) -> list[Event]:
    """Run a plan once and return its history (prefix, batches, a final read)."""
    tmp = root.parent
    state = impl.create(root)
    prefix = tmp / "prefix.jsonl"
    _run_ops(impl, state, "prefix", plan["prefix"], HistoryWriter(prefix, "prefix"))
    kill = plan["kill"]
    calls: list[Call] = []
    for k, ops in enumerate(plan["batches"]):
        plan_k = (kill[1], kill[2]) if kill is not None and kill[0] == k else None
        job = RaceJob(impl, root, f"w{k}", ops, tmp / f"w{k}.jsonl", plan_k)
        calls.append((race_worker, (job,)))
    outcomes = pool.run(calls, timeout=60)
    problems = [o.describe() for o in outcomes if not o.ok and o.signal != 9]
    killed_unplanned = [o for o in outcomes if o.signal == 9 and kill is None]
    if problems or killed_unplanned:
        text = "race workers failed:\n" + "\n".join(problems)
        if any("optimizer_state" in p for p in problems):
            raise finding("D3", "a worker failed reading the optimizer state\n" + text)
        raise AssertionError(text)
    if kill is not None and not any(o.signal == 9 for o in outcomes):
        note(f"the planned kill {kill} did not happen (the batch ended first)")
    final = tmp / "final.jsonl"
    _run_ops(impl, impl.load(root), "final", [("read",)], HistoryWriter(final, "final"))
    events = []
    for path in [prefix, *(tmp / f"w{k}.jsonl" for k in range(len(calls))), final]:
        if path.exists():
            events += [_event(op) for op in read_history(path, path.stem)[0]]
    return events


def check_race(impl: Impl, plan: dict[str, Any], pool: Pool, repeats: int = 2) -> None:
    """Run ``plan`` (up to ``repeats`` times); fail unless every history is linearizable.

    A claim made in the seed's two steps pauses between them (``Impl.pause``), so
    two workers claiming at once meet in that window whenever they can.
    """
    note(f"plan: {plan}")
    impl = dataclasses.replace(impl, pause=CLAIM_PAUSE)
    for attempt in range(repeats):
        tmp = Path(tempfile.mkdtemp(prefix="neps-race-"))
        try:
            events = run_race(impl, plan, pool, tmp / "run")
            verdict = check(events, NePSModel())
            violations = check_run_dir(tmp / "run")
            if not verdict.ok or violations:
                # In the message itself: a race that does not reproduce while Hypothesis
                # replays it (a Flaky failure) still shows what happened.
                what = verdict.explanation if not verdict.ok else "the history is linearizable"
                text = (
                    f"the race broke an invariant (attempt {attempt + 1} of {repeats})"
                    f"\nplan: {plan}\nhistory:\n{format_history(events)}\n{what}"
                    + "".join(f"\n{v}" for v in violations)
                )
                double = _double_claims(events)
                if double:
                    raise finding("D7", f"{double}\n{text}")
                if impl.two_step_claims() and any(
                    e.op in ("claim", "sample_claim") for e in events
                ):
                    raise finding("D7", f"with claims in two steps, {text}")
                raise AssertionError(text)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _double_claims(events: list[Event]) -> str:
    """Trials two completed claims took, or claims that failed: the two-step claim's race."""
    taken: dict[str, list[str]] = {}
    failed = []
    for e in events:
        if e.op not in ("claim", "sample_claim") or e.complete is None:
            continue
        if isinstance(e.result, str) and not e.result.isdigit():  # the races' ids are numbers
            failed.append(f"{e.process}'s {e.op} raised {e.result}")
            continue
        ids = e.result if isinstance(e.result, tuple) else (e.result,)
        for tid in ids:
            if tid is not None:
                taken.setdefault(tid, []).append(e.process)
    twice = [f"trial {t} was claimed by {w}" for t, w in taken.items() if len(w) > 1]
    return "; ".join(twice + failed)


CLAIM_RACE: dict[str, Any] = {
    "prefix": [("sample", 2)],
    "batches": [[("claim",)], [("claim",)], [("claim",)]],
    "kill": None,
}
"""Two pending trials, three workers claiming at once: at most one each, one left out."""


def _claim_until_none(impl: Impl, root: Path, worker: str, start_at: float) -> list[str]:
    """In a pool process: claim trials until none is pending; their ids, in order."""
    state = impl.load(root)
    time.sleep(max(0.0, start_at - time.time()))
    ids = []
    while (trial := impl.claim(state, worker)) is not None:
        ids.append(trial.id)
    return ids


def check_claim_storm(impl: Impl, pool: Pool, *, workers: int = 3, trials: int = 500) -> None:
    """D7: ``workers`` processes claim ``trials`` pending trials at once, each until none is left.

    Every trial must be taken exactly once, and no claim may fail. A claim whose
    take and mark are two critical sections loses when another worker takes the
    lock between them, which under this contention happens within a few claims.
    """
    with tempfile.TemporaryDirectory(prefix="neps-storm-") as tmp:
        root = Path(tmp) / "run"
        state = impl.create(root)
        while len(state.lock_and_read_trials()) < trials:
            impl.sample(
                state,
                ask,
                "sampler",
                min(20, trials - len(state.lock_and_read_trials())),
                claim=False,
            )
        start_at = time.time() + 0.5
        calls: list[Call] = [
            (_claim_until_none, (impl, root, f"w{k}", start_at)) for k in range(workers)
        ]
        outcomes = pool.run(calls, timeout=120)
        failed = [f"w{k}: {o.describe()}" for k, o in enumerate(outcomes) if not o.ok]
        taken: dict[str, list[str]] = {}
        for k, outcome in enumerate(outcomes):
            for tid in outcome.value if outcome.ok else ():
                taken.setdefault(tid, []).append(f"w{k}")
        twice = {t: w for t, w in taken.items() if len(w) > 1}
        if failed or twice:
            raise finding(
                "D7",
                f"{workers} workers claiming {trials} trials at once: "
                + "; ".join([*(f"trial {t} taken by {w}" for t, w in twice.items()), *failed]),
            )
        left = trials - len(taken)
        if left:
            raise AssertionError(f"{left} of {trials} trials were never claimed")


# -- creation races --------------------------------------------------------------

INFOS: dict[str, OptimizerInfo] = {
    "A": OptimizerInfo("A", {"x": 1, "y": [1, 2], "z": {"p": 1, "q": 2}}),
    "A-reordered": OptimizerInfo("A", {"z": {"q": 2, "p": 1}, "y": (1, 2), "x": 1}),
    "B": OptimizerInfo("B", {"x": 1}),
    "A-different": OptimizerInfo("A", {"x": 2, "y": [1, 2], "z": {"p": 1, "q": 2}}),
}
_FAMILY = {"A": "A", "A-reordered": "A", "B": "B", "A-different": "A2"}


def create_worker(impl: Impl, root: Path, info: str) -> str:
    """Call ``create_or_load``: "ok", "typed: <its own error>", or "other: <any other>"."""
    try:
        impl.create(root, INFOS[info])
    except Exception as e:  # noqa: BLE001 - judged by the caller
        kind = "typed" if impl.is_typed(e) else "other"
        return f"{kind}: {type(e).__name__}: {e}"
    return "ok"


def check_creation(impl: Impl, infos: list[str], pool: Pool) -> None:
    """Racing creators: one info wins, every other gets the implementation's own error.

    The optimizer files are whole. Any failure here is the seed's D2.
    """
    tmp = Path(tempfile.mkdtemp(prefix="neps-create-"))
    root = tmp / "run"
    try:
        _check_creation(impl, infos, pool, root)
    except AssertionError as e:
        raise finding("D2", str(e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_creation(impl: Impl, infos: list[str], pool: Pool, root: Path) -> None:
    outcomes = pool.run([(create_worker, (impl, root, name)) for name in infos], timeout=60)
    lost = [o.describe() for o in outcomes if not o.ok]
    assert not lost, "creator processes died:\n" + "\n".join(lost)
    results = [o.value for o in outcomes]
    note(f"creators: {list(zip(infos, results, strict=True))}")
    try:
        on_disk = yaml.safe_load((root / "optimizer_info.yaml").read_bytes())
        state = root / "optimizer_state.pkl"
        pickles.loads(state.read_bytes(), state)
    except Exception as e:  # a file that does not parse is the finding
        raise AssertionError(f"the optimizer files are not whole: {e!r}") from e
    winners = {_FAMILY[n] for n, r in zip(infos, results, strict=True) if r == "ok"}
    assert len(winners) == 1, f"{len(winners)} infos won: {sorted(winners)}"
    family = winners.pop()
    info = next(INFOS[n] for n in infos if _FAMILY[n] == family)
    assert OptimizerInfo(on_disk["name"], on_disk["info"]) == info, "the file is not the winner's"
    for name, result in zip(infos, results, strict=True):
        if _FAMILY[name] == family:
            assert result == "ok", f"{name}: {result}, expected ok"
        else:
            assert result.startswith("typed: "), f"{name}: {result}, expected a typed refusal"


# -- consolidation under concurrent readers and crashes --------------------------------


@dataclass(frozen=True)
class ConsolidationJob:
    """The writer's part: its updates, the consolidation limit, maybe a crash."""

    impl: Impl
    root: Path
    steps: list[str]
    limit: int
    acks: Path
    done: Path
    crash: tuple[str, int] | None = None


def consolidation_writer(job: ConsolidationJob) -> None:
    """Apply the steps with consolidation every ``limit`` records; maybe die mid-consolidation."""
    saved = dict(os.environ)
    os.environ.update(job.impl.env(consolidation_limit=job.limit, consolidation_ratio=0))
    try:
        state = job.impl.load(job.root)
    finally:  # pool processes serve later examples: leave their environment as it was
        os.environ.clear()
        os.environ.update(saved)
    rec = HistoryWriter(job.acks, "writer")
    steps = [_simplest(s) for s in job.steps]
    if job.crash is not None and job.crash[0] == FS_KILL:
        try:
            with FsCallKiller(job.root, job.crash[1], before_dying=lambda _: job.done.touch()):
                _run_ops(job.impl, state, "writer", steps, rec)
        finally:
            job.done.touch()
        return
    hook = None
    if job.crash is not None:
        hook = KillAt(job.crash[0], job.crash[1], before_dying=lambda _: job.done.touch())
    previous = set_fault_hook(hook)
    try:
        _run_ops(job.impl, state, "writer", steps, rec)
    finally:
        set_fault_hook(previous)
        job.done.touch()


def consolidation_crashes(*, fault_points: bool) -> st.SearchStrategy[tuple[str, int] | None]:
    """No crash, a crash before a file change, or (fault hooks) inside a consolidation."""
    crashes = st.none() | st.tuples(st.just(FS_KILL), st.integers(1, 60))
    if fault_points:
        points = st.sampled_from(["consolidate.written", "consolidate.renamed"])
        crashes |= st.tuples(points, st.integers(1, 3))
    return crashes


def _simplest(name: str) -> tuple[Any, ...]:
    """Operation ``name`` with its first plan values (sample one, report success)."""
    return (name, *OPS[name].plan[0])


def consolidation_reader(impl: Impl, root: Path, history: Path, done: Path) -> None:
    """Read every trial in a loop until the writer is done (or died)."""
    state = impl.load(root)
    rec = HistoryWriter(history, history.stem)
    reads = 0
    while not done.exists() and reads < 2000:
        _run_ops(impl, state, history.stem, [("read",)], rec)
        reads += 1


_RANK = {"pending": 0, "evaluating": 1, "success": 2}


def check_consolidation(
    impl: Impl, *, steps: list[str], limit: int, crash: Any, readers: int, pool: Pool
) -> None:
    """No acknowledged record is lost, readers never miss one, the cache is old or new."""
    tmp = Path(tempfile.mkdtemp(prefix="neps-consolidate-"))
    root, done = tmp / "run", tmp / "done"
    try:
        impl.create(root)
        job = ConsolidationJob(impl, root, steps, limit, tmp / "writer.jsonl", done, crash)
        calls: list[Call] = [(consolidation_writer, (job,))]
        calls += [
            (consolidation_reader, (impl, root, tmp / f"reader{i}.jsonl", done))
            for i in range(readers)
        ]
        outcomes = pool.run(calls, timeout=60)
        lost = [o.describe() for o in outcomes if not o.ok and not (o.signal == 9 and crash)]
        if any("optimizer_state" in text for text in lost):
            raise finding("D3", "a process failed reading the optimizer state:\n" + "\n".join(lost))
        assert not lost, "processes died:\n" + "\n".join(lost)
        acked = _acknowledged(tmp / "writer.jsonl")
        _check_cache_generation(impl, root, acked)
        for i in range(readers):
            _check_reads(tmp / f"reader{i}.jsonl", acked)
        try:
            _check_after(impl, root, acked)
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            if crash is not None and _incomplete_folder(text):
                raise finding("D9", f"after a crash ({crash}), {text}") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_after(impl: Impl, root: Path, acked: dict[str, tuple[str, int]]) -> None:
    """Every acknowledged trial is there, no state went back; the directory is clean."""
    final = {t.id: t.metadata.state.value for t in impl.load(root).lock_and_read_trials().values()}
    for tid, (state, _) in acked.items():
        assert tid in final, f"acknowledged trial {tid} is lost"
        assert _RANK[final[tid]] >= _RANK[state], f"trial {tid} went back to {final[tid]}"
    violations = check_run_dir(root)
    assert not violations, "\n".join(map(str, violations))


def _incomplete_folder(text: str) -> bool:
    """Whether a failure is a trial folder missing a file (a crash between its steps)."""
    return "config_" in text and ("is missing" in text or "No such file" in text)


def _acknowledged(path: Path) -> dict[str, tuple[str, int]]:
    """Trial -> (state acknowledged last, when) from the writer's completed operations."""
    acked: dict[str, tuple[str, int]] = {}
    for op in read_history(path, "writer")[0] if path.exists() else []:
        if op.completed and op.ok and op.end_ns is not None:
            event = _event(op)
            for tid, state in OPS[op.op].leaves(event.args, event.result).items():
                acked[tid] = (state, op.end_ns)
    return acked


def _check_reads(path: Path, acked: dict[str, tuple[str, int]]) -> None:
    for op in read_history(path, path.stem)[0]:
        if not op.completed:
            continue
        assert op.ok, f"{path.stem}: a read failed: {op.result}"
        seen = dict(json.loads(op.result))
        for tid, (state, when) in acked.items():
            if when < op.start_ns:
                assert tid in seen, f"{path.stem} missed acknowledged trial {tid}"
                assert _RANK[seen[tid]] >= _RANK[state], f"{path.stem} saw {tid} {seen[tid]}"


def _check_cache_generation(impl: Impl, root: Path, acked: dict[str, tuple[str, int]]) -> None:
    # Before anyone recovers: the cache must be a whole (old or new) generation
    # holding every acknowledged trial, where the harness can read the cache.
    ids = impl.cache_trial_ids(root)
    if ids is None:
        note(f"the cache of {impl.target} is not read by the harness: not checked")
        return
    missing = set(acked) - ids
    assert not missing, f"the cache lost acknowledged trials {sorted(missing)}"
