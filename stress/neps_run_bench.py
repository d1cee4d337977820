"""``neps.run`` with 4 workers on NePS's own state and on the reference, side by side.

    python stress/neps_run_bench.py --trials 100,1000,10000 --evals 40 [--dir D] [--json F]

Needs the ``neps`` extra. For each size, a run is prefilled with that many evaluated
trials (through NePS's own ``state._trial_repo.store_new_trial``, the same call for
both states; on NePS's state, whose store writes no report, the reports are then
written into the folders as NePS writes them), then 4 worker processes run NePS's
``neps.run`` (``random_search``) for ``--evals`` more evaluations, on NePS's state
and on the reference (patched), in the order NePS, reference, reference, NePS
(``--repeats 2``: each state twice, the median taken). Each worker times every call
NePS's runtime makes into the state (``_trial_repo.*``, ``_sample_trial``,
``_report_trial_evaluation``, ``_get_optimizer_state``, ``lock_and_*``): the
*state's overhead per evaluation* is the time inside those calls, less the
optimizer's own ``ask`` and less the time spent waiting for a lock (other workers'
work), summed over the workers, divided by the evaluations. Lock waits are reported
beside it. Also counted: evaluations lost (run but not in the state, finished) or
done twice (the evaluate function logs each call), and ``neps-state check``
violations. The target: the reference's overhead at most 0.1x NePS's at 10,000
trials. Exit 1 if anything was lost or duplicated, or a reference run has a
violation or a worker that died (a worker that dies on NePS's own state is reported,
with its error, as a finding).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import neps

WORKERS = 4
TIMED = {
    "state": (
        "_sample_trial",
        "_report_trial_evaluation",
        "_get_optimizer_state",
        "lock_and_get_errors",
        "lock_and_set_new_worker_id",
        "lock_and_update_global_budgets",
        "lock_and_get_global_budgets",
    ),
    "repo": ("latest", "update_trial", "store_new_trial", "get_valid_evaluated_trials"),
}
"""What NePS's runtime calls in the state (``neps/runtime.py``), by the object it is on."""


# -- inside a worker process ---------------------------------------------------------------


class Timer:
    """Time inside the outermost timed call, less lock waits and the optimizer's ask."""

    def __init__(self) -> None:
        """Nothing timed yet."""
        self.local = threading.local()
        self.state_s = 0.0
        self.wait_s = 0.0
        self.ask_s = 0.0
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def depth(self) -> int:
        """How many timed calls this thread is inside."""
        return int(getattr(self.local, "depth", 0))

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed as ``name``."""

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            outer = self.depth() == 0
            self.local.depth = self.depth() + 1
            if outer:
                self.local.excluded = 0.0
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.local.depth -= 1
                if outer:
                    spent = time.perf_counter() - start - self.local.excluded
                    self.state_s += spent
                    self.seconds[name] += spent
                    self.calls[name] += 1

        return call

    @contextlib.contextmanager
    def excluded(self, kind: str) -> Iterator[None]:
        """Time not the state's own (``"wait"`` for a lock, else the optimizer's ask)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            if kind == "wait":
                self.wait_s += spent
            else:
                self.ask_s += spent
            if self.depth() > 0:
                self.local.excluded += spent


def _instrument(timer: Timer, state_cls: type) -> None:
    """Time ``state_cls``'s methods; its repo's and lock's once the first state exists.

    Both states keep their trial repo in ``_trial_repo`` and their lock in
    ``_trial_lock``, so their classes are read off the first instance.
    """
    for name in TIMED["state"]:
        setattr(state_cls, name, timer.timed(name, getattr(state_cls, name)))
    init = state_cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def first_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        state_cls.__init__ = init  # type: ignore[misc]
        repo_cls = type(self._trial_repo)
        for name in TIMED["repo"]:
            setattr(repo_cls, name, timer.timed(f"repo.{name}", getattr(repo_cls, name)))
        _instrument_lock(timer, type(self._trial_lock))

    state_cls.__init__ = first_init  # type: ignore[misc]


def _instrument_lock(timer: Timer, locker_cls: type) -> None:
    lock = getattr(locker_cls, "lock")  # noqa: B009 - either state's locker class

    @contextlib.contextmanager
    def timed_lock(self: Any, *args: Any, **kwargs: Any) -> Iterator[None]:
        cm = lock(self, *args, **kwargs)
        with timer.excluded("wait"):
            cm.__enter__()
        try:
            yield
        finally:
            # (Giving a lock back is the state's work: the reference fsyncs then.)
            start = time.perf_counter()
            cm.__exit__(None, None, None)
            if timer.depth() == 0:
                spent = time.perf_counter() - start
                timer.state_s += spent
                timer.seconds["lock release"] += spent
                timer.calls["lock release"] += 1

    setattr(locker_cls, "lock", timed_lock)  # noqa: B010


def evaluate(log: str, pipeline_id: str, x: float, y: float, z: int) -> float:
    """The trivial evaluation: one line per call in the log (O_APPEND), then a number."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{pipeline_id}\n".encode())
    finally:
        os.close(fd)
    return (x - 0.3) ** 2 + (y - 0.6) ** 2 + z / 100


class BenchSpace(neps.PipelineSpace):  # type: ignore[misc]  # (NePS is untyped here)
    """Three parameters; at module level, so its pickle (NePS saves the space) loads."""

    x = neps.Float(0.0, 1.0)
    y = neps.Float(0.0, 1.0)
    z = neps.Integer(1, 10)


def _space() -> Any:
    return BenchSpace()


def worker(root: str, total: int, reference: bool, out: str) -> None:
    """One NePS worker, timed; its totals written to ``out``."""
    import neps.runtime  # noqa: PLC0415

    if reference:
        import neps_state  # noqa: PLC0415

        cls: type = neps_state.patch_neps()
    else:
        from neps.state import NePSState  # noqa: PLC0415

        cls = NePSState
    timer = Timer()
    _instrument(timer, cls)
    new = neps.runtime.DefaultWorker.new.__func__

    def timed_new(klass: Any, /, **kwargs: Any) -> Any:
        ask = kwargs["optimizer"]

        def timed_ask(*args: Any, **kw: Any) -> Any:
            with timer.excluded("ask"):
                return ask(*args, **kw)

        kwargs["optimizer"] = timed_ask
        return new(klass, **kwargs)

    neps.runtime.DefaultWorker.new = classmethod(timed_new)
    log = f"{root}.evaluations"
    neps.run(
        evaluate_pipeline=functools.partial(evaluate, log),
        pipeline_space=_space(),
        root_directory=root,
        optimizer="random_search",
        total_evaluations_to_spend=total,
    )
    result = {
        "state_s": timer.state_s,
        "wait_s": timer.wait_s,
        "ask_s": timer.ask_s,
        "calls": dict(timer.calls),
        "seconds": dict(timer.seconds),
    }
    Path(out).write_text(json.dumps(result))


def prefill(root: str, n: int, reference: bool) -> None:
    """A run with ``n`` evaluated trials, stored the way NePS's runtime stores trials.

    ``neps.run`` with no budget left makes the run as the workers will see it (its
    optimizer info, state and space); the trials are then stored in one call.
    """
    from neps.state import Trial  # noqa: PLC0415

    if reference:
        import neps_state  # noqa: PLC0415

        neps_state.patch_neps()
    neps.run(
        evaluate_pipeline=functools.partial(evaluate, f"{root}.prefill"),
        pipeline_space=_space(),
        root_directory=root,
        optimizer="random_search",
        total_evaluations_to_spend=0,
    )
    state = neps.state.NePSState.create_or_load(Path(root), load_only=True)
    trials = []
    for k in range(1, n + 1):
        trial = Trial.new(
            trial_id=str(k),
            config={"x": k / (n + 1), "y": 0.5, "z": 1 + k % 10},
            location=str(Path(root) / "configs" / f"config_{k}"),
            previous_trial=None,
            previous_trial_location=None,
            time_sampled=time.time(),
            worker_id="prefill",
        )
        trial.set_evaluating(time_started=time.time(), worker_id="prefill")
        trial.report = trial.set_complete(
            report_as="success", time_end=time.time(), objective_to_minimize=k / n,
            cost=1.0, learning_curve=None, err=None, tb=None, extra={}, evaluation_duration=0.0,
        )  # fmt: skip
        trials.append(trial)
    with state._trial_lock.lock():  # noqa: SLF001 - as NePS's runtime stores trials
        state._trial_repo.store_new_trial(trials)  # noqa: SLF001
    if not reference:  # NePS's store writes a trial's config and metadata, not its report
        from neps.state.filebased import ReaderWriterTrial  # noqa: PLC0415

        for trial in trials:
            ReaderWriterTrial.write(trial, Path(trial.metadata.location), hints="report")


# -- the parent ----------------------------------------------------------------------------


def _python(*args: str) -> list[str]:
    return [sys.executable, __file__, *args]


def one_run(directory: Path, n: int, evals: int, reference: bool, tag: str) -> dict[str, Any]:
    """Prefill a run to ``n`` trials, then time ``evals`` evaluations by 4 workers."""
    root = directory / f"{tag}-{n}"
    subprocess.run(_python("--prefill", str(root), str(n), str(int(reference))), check=True)
    outs = [directory / f"{tag}-{n}.w{k}.json" for k in range(WORKERS)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            _python("--worker", str(root), str(n + evals), str(int(reference)), str(out)),
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    failures = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            failures.append(err[-2000:])
    wall = time.monotonic() - start
    figures = [json.loads(o.read_text()) for o in outs if o.exists()]
    return {
        "root": str(root),
        "n": n,
        "evals": evals,
        "wall_s": wall,
        "state_s": sum(f["state_s"] for f in figures),
        "wait_s": sum(f["wait_s"] for f in figures),
        "ask_s": sum(f["ask_s"] for f in figures),
        "calls": dict(sum((Counter(f["calls"]) for f in figures), Counter())),
        "seconds": dict(sum((Counter(f["seconds"]) for f in figures), Counter())),
        "worker_failures": failures,
        **_judge(root, n, evals),
    }


def _judge(root: Path, n: int, evals: int) -> dict[str, Any]:
    """Lost and duplicated evaluations, and the checker's violations, of a finished run."""
    from neps_state import NePSState, Settings  # noqa: PLC0415
    from pytest_neps import check_run_dir  # noqa: PLC0415

    violations = [str(v) for v in check_run_dir(root)]
    log = Path(f"{root}.evaluations")
    ran = log.read_text().split() if log.exists() else []
    done = Counter(ran)
    if (root / "configs" / ".trial_cache.journal").exists():
        trials = NePSState.load(root, settings=Settings(durability="os")).lock_and_read_trials()
        finished = {t for t, v in trials.items() if v.metadata.state.value == "success"}
        count = len(trials)
    else:  # NePS's own run: its folders (reading it with the reference would take it over)
        finished = set()
        for folder in (root / "configs").glob("config_*"):
            meta = json.loads((folder / "metadata.json").read_text())
            if meta["state"] == "success":
                finished.add(meta["id"])
        count = len(list((root / "configs").glob("config_*")))
    return {
        "evaluated": len(ran),
        "duplicated": sorted(t for t, c in done.items() if c > 1),
        "lost": sorted(t for t in done if t not in finished),
        "trials": count,
        "expected_trials": n + evals,
        "violations": violations,
    }


def per_eval_ms(run: dict[str, Any], key: str) -> float:
    """A run's total ``key`` seconds over its evaluations, in ms per evaluation."""
    return 1000 * float(run[key]) / max(int(run["evaluated"]), 1)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the benchmark (or, internally, a worker)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], int(argv[2]), argv[3] == "1", argv[4])
        return 0
    if argv[:1] == ["--prefill"]:
        prefill(argv[1], int(argv[2]), argv[3] == "1")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", default="100,1000,10000", help="run sizes, comma-separated")
    parser.add_argument("--evals", type=int, default=40, help="evaluations timed per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each state per size")
    parser.add_argument("--dir", help="where the run directories go (default: a temp dir)")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--markdown", help="write the report as a markdown page here")
    args = parser.parse_args(argv)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="neps-run-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.trials.split(",")]
    runs: list[dict[str, Any]] = []
    for n in sizes:
        order = [False, True, True, False] * ((args.repeats + 1) // 2)
        seen: Counter[bool] = Counter()
        for reference in order:
            if seen[reference] == args.repeats:
                continue
            seen[reference] += 1
            tag = f"{'reference' if reference else 'neps'}{seen[reference]}"
            run = one_run(directory, n, args.evals, reference, tag)
            run["state"] = "reference" if reference else "neps"
            runs.append(run)
            print(
                f"{run['state']:<10} n={n:>6}  state {per_eval_ms(run, 'state_s'):8.2f} ms/eval"
                f"  waits {per_eval_ms(run, 'wait_s'):8.2f}  wall {run['wall_s']:6.1f} s",
                file=sys.stderr,
            )
    report = render(runs, sizes, " ".join(["python", "stress/neps_run_bench.py", *argv]), directory)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(report)
    bad = any(r["lost"] or r["duplicated"] for r in runs)
    bad |= any(r["violations"] or r["worker_failures"] for r in runs if r["state"] == "reference")
    return 1 if bad else 0


def render(runs: list[dict[str, Any]], sizes: list[int], command: str, directory: Path) -> str:
    """The report: per size and state, the medians; the ratio; what went wrong."""
    from pytest_neps.bench import machine_info  # noqa: PLC0415
    from pytest_neps.bench._report import machine_line  # noqa: PLC0415

    lines = [
        "# `neps.run` on NePS's own state and on the reference",
        "",
        f"    {command}",
        "",
        machine_line(machine_info(directory)),
        "",
        (
            "| trials | state | overhead ms/eval | lock waits ms/eval | wall s | evaluated"
            " | lost | twice | check violations |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for n in sizes:
        medians = {}
        for state in ("neps", "reference"):
            rs = [r for r in runs if r["n"] == n and r["state"] == state]
            medians[state] = statistics.median(per_eval_ms(r, "state_s") for r in rs)
            wait = statistics.median(per_eval_ms(r, "wait_s") for r in rs)
            wall = statistics.median(r["wall_s"] for r in rs)
            lost = sum(len(r["lost"]) for r in rs)
            twice = sum(len(r["duplicated"]) for r in rs)
            bad = sum(len(r["violations"]) for r in rs)
            evaluated = "+".join(str(r["evaluated"]) for r in rs)
            lines.append(
                f"| {n:,} | {state} | {medians[state]:.2f} | {wait:.2f} | {wall:.1f}"
                f" | {evaluated} | {lost} | {twice} | {bad} |"
            )
        ratios.append((n, medians["reference"] / medians["neps"]))
    lines += ["", "Reference / NePS, state overhead per evaluation (medians):", ""]
    lines += [f"- {n:,} trials: x{r:.3f}" for n, r in ratios]
    target = ratios[-1][1] <= 0.1 if ratios and ratios[-1][0] >= 10_000 else None
    verdict = {True: "met", False: "MISSED", None: "not measured (no 10,000-trial size)"}[target]
    lines += ["", f"Target (reference at most 0.1x NePS at 10,000 trials): {verdict}", ""]
    if sizes:
        lines += breakdown(runs, sizes[-1])
    failures = [(r["state"], r["n"], f) for r in runs for f in r["worker_failures"]]
    if failures:
        lines += ["Workers that died (on NePS's state, a finding; on the reference, a failure):"]
        lines += ["", *(f"- {s}, {n:,} trials: {_last_frame(f)}" for s, n, f in failures), ""]
    return "\n".join(lines)


def breakdown(runs: list[dict[str, Any]], n: int) -> list[str]:
    """Where the overhead goes at ``n`` trials: ms per evaluation and calls, per state call."""
    lines = [f"Where the overhead goes at {n:,} trials (ms per evaluation, calls per evaluation):"]
    lines += ["", "| call | neps ms | neps calls | reference ms | reference calls |"]
    lines.append("|---|---|---|---|---|")
    per: dict[str, dict[str, tuple[float, float]]] = {}
    for state in ("neps", "reference"):
        rs = [r for r in runs if r["n"] == n and r["state"] == state]
        evals = sum(r["evaluated"] for r in rs) or 1
        for r in rs:
            for name, spent in r["seconds"].items():
                ms, calls = per.setdefault(name, {}).get(state, (0.0, 0.0))
                made = r["calls"].get(name, 0) / evals
                per[name][state] = (ms + 1000 * spent / evals, calls + made)
    order = sorted(per, key=lambda k: -max(v[0] for v in per[k].values()))
    for name in order:
        cells = [per[name].get(state, (0.0, 0.0)) for state in ("neps", "reference")]
        row = " | ".join(f"{ms:.2f} | {calls:.2f}" for ms, calls in cells)
        lines.append(f"| {name} | {row} |")
    return [*lines, ""]


def _last_frame(stderr: str) -> str:
    """A traceback's last frame and error, on one line."""
    tail = [line.strip() for line in stderr.strip().splitlines()[-4:]]
    return " | ".join(line for line in tail if line and set(line) != {"^"})


if __name__ == "__main__":
    sys.exit(main())
