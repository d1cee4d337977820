"""Benchmarks: the cost of one cycle as a run grows, and throughput with N workers.

Every figure of ours is measured beside Optuna's ``JournalFileBackend`` in the
same run and quoted as a ratio, so that results from a noisy machine still mean
something. One *cycle* is what a worker does per trial:

- ours: ``lock_and_sample_trial(random_search, claim=True)`` (sampled and marked
  evaluating in one commit, as Optuna's ``ask`` creates a running trial),
  ``set_complete``, ``lock_and_report_trial_evaluation``;
- Optuna: ``study.ask(space)`` (the same three-parameter space, so both sample
  and store a config; ``optuna_params=False`` asks without one) and ``study.tell``,
  with ``RandomSampler`` (the default TPE sampler costs O(trials) per ask; we
  measure storage, not samplers).

Runs are grown to the measured sizes by a bulk prefill of finished trials (ours:
``TrialRepo.store_new_trial`` in batches; Optuna: the journal records of
``add_trials`` built in memory and appended in batches), then measured with real
cycles. Optuna has no durability setting: its file backend fsyncs every append.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from neps_state import (
    NePSState,
    OptimizationState,
    OptimizerInfo,
    SeedSnapshot,
    Settings,
    Trial,
    TrialRepo,
)
from pytest_neps._evaluate import quadratic
from pytest_neps._optimizers import random_search
from pytest_neps._procs import Task, run_tasks
from pytest_neps._swarm import SwarmResult, run_swarm

logger = logging.getLogger(__name__)

BENCH_INFO = OptimizerInfo(name="neps-state-bench", info={"optimizer": "random_search"})
DURABILITIES: tuple[str, ...] = ("fsync", "os")
PREFILL_BATCH = 1000
"""Trials per ``store_new_trial`` call (and Optuna records per append) in the prefill."""
BATCH_SIZE = 5
"""Cycles per run per round of the cycle-cost timing (small: pairs the runs closely)."""
RECORDS_PER_CYCLE = 3
"""Journal records one cycle appends: the sample, the claim and the report."""
WORKER = "bench"
STUDY = "neps-state-bench"
QUICK: dict[str, Any] = {
    "trials": (100, 1000),
    "workers": (1, 2),
    "cycles": 50,
    "samples": 60,
}
DEFAULTS: dict[str, Any] = {
    "trials": (100, 1000, 10000),
    "workers": (1, 2, 4, 8),
    "cycles": 250,
    "samples": 200,
}
TARGETS = {
    "cost_10k": (10_000, 1.3),
    "cost_100k": (100_000, 1.5),
    "ms_10k_fsync": (10_000, 3.0),
    "throughput_4_vs_optuna": (4, 1.5),
}


# -- measurement helpers --------------------------------------------------------


def _durabilities(durability: str | Sequence[str]) -> tuple[str, ...]:
    names = (durability,) if isinstance(durability, str) else tuple(durability)
    if names == ("both",):
        return DURABILITIES
    unknown = [d for d in names if d not in DURABILITIES]
    if unknown or not names:
        raise ValueError(f"durability must be 'fsync', 'os' or 'both', got {durability!r}")
    return names


def _summary(times_ns: Sequence[int], size: int) -> dict[str, float]:
    """Median of the means of batches of ``size`` cycles, mean and p95 of single cycles, in ms."""
    means = [
        statistics.fmean(times_ns[i : i + size]) for i in range(0, len(times_ns) - size + 1, size)
    ] or [statistics.fmean(times_ns)]
    ordered = sorted(times_ns)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "ms": statistics.median(means) / 1e6,
        "mean_ms": statistics.fmean(times_ns) / 1e6,
        "p95_ms": p95 / 1e6,
        "min_batch_ms": min(means) / 1e6,
    }


def optuna_version() -> str | None:
    """The installed Optuna's version, or None if it cannot be imported."""
    try:
        import optuna  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return str(optuna.__version__)


def _optuna_space() -> dict[str, Any]:
    """The space of ``random_search`` as Optuna distributions."""
    from optuna.distributions import (  # noqa: PLC0415 - optional dependency
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    return {
        "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
        "layers": IntDistribution(1, 8),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
    }


def _random_config(rng: random.Random) -> dict[str, Any]:
    """A config from the space of ``random_search``."""
    return {
        "learning_rate": 10 ** rng.uniform(-5, -1),
        "layers": rng.randint(1, 8),
        "optimizer": rng.choice(["adam", "sgd"]),
    }


def _optuna_sampler() -> Any:
    """Random sampling, as ``random_search``: the default TPE costs O(trials) per ask."""
    import optuna  # noqa: PLC0415 - optional dependency

    return optuna.samplers.RandomSampler()


def _quiet_optuna() -> None:
    import optuna  # noqa: PLC0415 - optional dependency

    # Optuna logs every tell at INFO; formatting and writing it is not storage cost.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def _workdir(directory: Path | str | None) -> Iterator[Path]:
    """A fresh directory (inside ``directory`` if given), removed afterwards."""
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="neps-bench-", dir=directory))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- one-process runners ----------------------------------------------------------


class _Runner:
    """A run that can be grown in bulk and advanced by one real cycle."""

    name: str
    path: Path
    count: int

    def fresh(self, path: Path, name: str) -> _Runner:
        """A new, empty run of the same kind at ``path``."""
        raise NotImplementedError

    def grow_to(self, n: int) -> None:
        """Add finished trials in bulk until the run holds ``n``."""
        raise NotImplementedError

    def cycle(self) -> None:
        """One real cycle."""
        raise NotImplementedError


class _Ours(_Runner):
    def __init__(self, root: Path, durability: str, name: str | None = None) -> None:
        self.name = name or f"ours-{durability}"
        self.path = root
        self.durability = durability
        self.settings = Settings(durability=durability)  # type: ignore[arg-type]
        self.state = NePSState.create_or_load(
            root,
            optimizer_info=BENCH_INFO,
            optimizer_state=OptimizationState(
                budget=None, seed_snapshot=SeedSnapshot.new_capture()
            ),
            settings=self.settings,
        )
        self.rng = random.Random(0)
        self.count = 0

    def fresh(self, path: Path, name: str) -> _Ours:
        return _Ours(path, self.durability, name)

    def grow_to(self, n: int) -> None:
        if self.count >= n:
            return
        # A second handle on the same trials, dropped afterwards (its view would double
        # the heap). The prefill runs in this process alone, between cycles, so it
        # needs no lock; the state's handle reads the records from the journal.
        repo = TrialRepo(self.path / "configs", settings=self.settings)
        now = time.time()
        while self.count < n:
            size = min(PREFILL_BATCH, n - self.count)
            batch = [self._finished(repo.directory, self.count + i, now) for i in range(size)]
            repo.store_new_trial(batch)
            self.count += size

    def _finished(self, directory: Path, k: int, now: float) -> Trial:
        # Ids 0..n-1: ``random_search`` names the next trial ``len(trials)``.
        tid = str(k)
        trial = Trial.new(
            trial_id=tid,
            config=_random_config(self.rng),
            location=str(directory / f"config_{tid}"),
            previous_trial=None,
            previous_trial_location=None,
            time_sampled=now,
            worker_id="prefill",
        )
        trial.set_evaluating(time_started=now, worker_id="prefill")
        trial.report = trial.set_complete(
            report_as="success",
            time_end=now,
            objective_to_minimize=quadratic(trial.config),
            cost=1.0,
            learning_curve=None,
            err=None,
            tb=None,
            extra={},
            evaluation_duration=0.0,
        )
        return trial

    def cycle(self) -> None:
        state = self.state
        trial = state.lock_and_sample_trial(random_search, worker_id=WORKER, claim=True)
        report = trial.set_complete(
            report_as="success",
            time_end=time.time(),
            objective_to_minimize=quadratic(trial.config),
            cost=1.0,
            learning_curve=None,
            err=None,
            tb=None,
            extra={},
            evaluation_duration=0.0,
        )
        state.lock_and_report_trial_evaluation(trial, report, worker_id=WORKER)
        self.count += 1

    def consolidate_ms(self) -> float:
        """Time one rewrite of the whole trial cache, in ms."""
        start = time.perf_counter_ns()
        self.state.lock_and_consolidate_cache()
        return (time.perf_counter_ns() - start) / 1e6

    def cycles_between_consolidations(self) -> float | None:
        """Cycles from one cache rewrite to the next at the current size (None: never)."""
        s = self.settings
        spare = RECORDS_PER_CYCLE - s.consolidation_ratio
        if spare <= 0:
            return None
        # After a rewrite the journal holds 1 record; after k cycles 1 + 3k records
        # and count + k trials; it is rewritten when the records exceed both bounds.
        k = max(
            (s.consolidation_limit - 1) / RECORDS_PER_CYCLE,
            (s.consolidation_ratio * self.count - 1) / spare,
        )
        return max(k, 1.0)


def _memory_journal() -> Any:
    """An in-memory Optuna journal backend, to build prefill records without disk I/O."""
    from optuna.storages.journal import BaseJournalBackend  # noqa: PLC0415 - optional

    class MemoryJournal(BaseJournalBackend):
        def __init__(self) -> None:
            self.logs: list[dict[str, Any]] = []

        def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
            return self.logs[log_number_from:]

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            self.logs.extend(logs)

    return MemoryJournal()


class _Optuna(_Runner):
    def __init__(self, path: Path, *, with_params: bool, name: str = "optuna") -> None:
        import optuna  # noqa: PLC0415 - optional dependency
        from optuna.storages.journal import (  # noqa: PLC0415 - optional dependency
            JournalFileBackend,
            JournalStorage,
        )

        _quiet_optuna()
        self.name = name
        self.path = path
        self.space = _optuna_space() if with_params else {}
        self.backend = JournalFileBackend(str(path))
        self.study = optuna.create_study(
            study_name=STUDY,
            storage=JournalStorage(self.backend),
            direction="minimize",
            sampler=_optuna_sampler(),
        )
        self.rng = random.Random(0)
        self.count = 0

    def fresh(self, path: Path, name: str) -> _Optuna:
        return _Optuna(path, with_params=bool(self.space), name=name)

    def grow_to(self, n: int) -> None:
        import optuna  # noqa: PLC0415 - optional dependency
        from optuna.storages.journal import JournalStorage  # noqa: PLC0415 - optional

        if self.count >= n:
            return
        memory = _memory_journal()
        storage = JournalStorage(memory)
        # The only study of either journal, so its records carry the same study id.
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], STUDY)
        first = len(memory.logs)
        space = _optuna_space()
        for _ in range(n - self.count):
            config = _random_config(self.rng)
            params = config if self.space else {}
            template = optuna.trial.create_trial(
                value=quadratic(config),
                params=params,
                distributions={k: space[k] for k in params},
            )
            storage.create_new_trial(study_id, template_trial=template)
        logs = memory.logs[first:]
        for i in range(0, len(logs), PREFILL_BATCH):
            self.backend.append_logs(logs[i : i + PREFILL_BATCH])
        self.count = n

    def cycle(self) -> None:
        trial = self.study.ask(self.space)
        self.study.tell(trial, quadratic(trial.params))
        self.count += 1


# -- cycle cost -------------------------------------------------------------------


def cycle_cost(
    trials_points: Sequence[int] = (100, 1000, 10000),
    durability: str | Sequence[str] = "fsync",
    samples: int = 200,
    directory: Path | str | None = None,
    *,
    optuna: bool = True,
    optuna_params: bool = True,
    paired: bool = True,
    batch_size: int = BATCH_SIZE,
    warmup: int = 10,
) -> list[dict[str, Any]]:
    """Milliseconds per cycle at each run size, ours (per durability) beside Optuna.

    One process and one handle per run. At each size every run is prefilled,
    warmed up by ``warmup`` cycles, then measured over ``samples`` cycles taken
    in rounds of ``batch_size`` cycles per run, alternating between the runs so
    that a slow phase of the machine hits all of them. ``ms`` is the median of
    the batch means (robust), ``mean_ms`` the mean. Rows carry ratios against the
    smallest size (``*_vs_base``) and, with ``paired``, against a fresh run of
    the smallest size measured in the same rounds (``*_vs_paired_base``: immune
    to drift of the machine between sizes). The prefilled objects are frozen out
    of the cyclic GC while timing, so that one run's heap does not bill its
    collections to another run's cycles.
    """
    names = _durabilities(durability)
    points = sorted(set(trials_points))
    if not points or points[0] < 0 or samples < 1 or batch_size < 1:
        raise ValueError("trials_points must be sizes >= 0; samples and batch_size >= 1")
    use_optuna = optuna and optuna_version() is not None
    rows: list[dict[str, Any]] = []
    with _workdir(directory) as root:
        mains: dict[str, _Runner] = {f"ours-{d}": _Ours(root / f"ours-{d}", d) for d in names}
        if use_optuna:
            mains["optuna"] = _Optuna(root / "optuna.log", with_params=optuna_params)
        base = points[0]
        for n in points:
            refs = {
                key: run.fresh(root / f"ref-{n}-{key}", f"{key}@{base}")
                for key, run in mains.items()
                if paired
            }
            plan = [(run, n) for run in mains.values()] + [(run, base) for run in refs.values()]
            try:
                measured = _measure_point(plan, samples, batch_size, warmup)
            finally:
                gc.unfreeze()
            for key, ref in refs.items():
                fig = measured[key]
                fig["paired_base_ms"] = measured[ref.name]["ms"]
                fig["paired_base_mean_ms"] = measured[ref.name]["mean_ms"]
                fig["ms_vs_paired_base"] = _ratio(fig["ms"], fig["paired_base_ms"])
                _remove(ref.path)
            for d in names:
                runner = mains[f"ours-{d}"]
                if not isinstance(runner, _Ours):
                    raise TypeError(runner)
                row: dict[str, Any] = {"trials": n, "durability": d, "samples": samples}
                row.update(measured[runner.name])
                between = runner.cycles_between_consolidations()
                row["consolidate_ms"] = runner.consolidate_ms()
                row["cycles_between_consolidations"] = between
                row["amortized_ms"] = row["ms"] + (
                    row["consolidate_ms"] / between if between else 0.0
                )
                rows.append(_prefixed(row, "ours_", keep=("trials", "durability", "samples")))
                rows[-1].update(_prefixed(measured.get("optuna", {}), "optuna_"))
    _add_cost_ratios(rows)
    return rows


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        for p in path.parent.glob(path.name + "*"):
            p.unlink(missing_ok=True)


def _measure_point(
    plan: Sequence[tuple[_Runner, int]], samples: int, batch_size: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Grow each run to its size, then time ``samples`` cycles of each, round-robin."""
    figures: dict[str, dict[str, Any]] = {}
    prefilled = 0
    for runner, n in plan:
        start = time.perf_counter()
        prefilled += max(0, n - runner.count)
        runner.grow_to(n)
        prefill_s = time.perf_counter() - start
        for _ in range(warmup):
            runner.cycle()
        figures[runner.name] = {"trials_measured": runner.count, "prefill_s": prefill_s}
        logger.info("%s: %d trials (prefill %.1f s)", runner.name, runner.count, prefill_s)
    if prefilled >= PREFILL_BATCH:
        # The prefill left thousands of dirty files; their writeback would stall the
        # fsyncs and renames of the measured cycles.
        os.sync()
    times: dict[str, list[int]] = {r.name: [] for r, _ in plan}
    gc.collect()
    gc.freeze()
    done = 0
    while done < samples:
        k = min(batch_size, samples - done)
        for runner, _ in plan:
            out = times[runner.name]
            for _ in range(k):
                t0 = time.perf_counter_ns()
                runner.cycle()
                out.append(time.perf_counter_ns() - t0)
        done += k
    for runner, n in plan:
        figures[runner.name].update(_summary(times[runner.name], batch_size))
        logger.info("%s @%d: %.3f ms/cycle", runner.name, n, figures[runner.name]["ms"])
    return figures


def _prefixed(d: Mapping[str, Any], prefix: str, keep: Sequence[str] = ()) -> dict[str, Any]:
    return {k if k in keep else prefix + k: v for k, v in d.items()}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _add_cost_ratios(rows: list[dict[str, Any]]) -> None:
    for d in {r["durability"] for r in rows}:
        mine = [r for r in rows if r["durability"] == d]
        base = min(mine, key=lambda r: r["trials"])
        for r in mine:
            r["base_trials"] = base["trials"]
            for key in ("ms", "mean_ms", "amortized_ms"):
                r[f"ours_{key}_vs_base"] = _ratio(r[f"ours_{key}"], base[f"ours_{key}"])
            if "optuna_ms" in r:
                for key in ("ms", "mean_ms"):
                    r[f"optuna_{key}_vs_base"] = _ratio(r[f"optuna_{key}"], base[f"optuna_{key}"])
                r["ours_over_optuna"] = _ratio(r["ours_ms"], r["optuna_ms"])


# -- throughput -------------------------------------------------------------------


def _ours_throughput(result: SwarmResult) -> dict[str, Any]:
    """Cycles/s from the first state operation after ``create`` to the last report."""
    ops = result.ops
    reports = [o for o in ops if o.op == "report" and o.ok and o.end_ns is not None]
    work = [o for o in ops if o.op != "create"]
    problems = result.problems()
    if not reports or not work:
        return {"cycles": 0, "cycles_per_s": None, "window_s": None, "problems": problems}
    start = min(o.start_ns for o in work)
    end = max(o.end_ns for o in reports if o.end_ns is not None)
    window = (end - start) / 1e9
    lat = result.summary()["latency_ms"]
    return {
        "cycles": len(reports),
        "cycles_per_s": len(reports) / window if window > 0 else None,
        "window_s": window,
        "wall_cycles_per_s": result.cycles_per_s,
        "latency_ms": lat,
        "problems": problems,
    }


def _optuna_worker(
    path: str, cycles: int, with_params: bool, barrier: Any, barrier_timeout: float
) -> dict[str, int]:
    """One Optuna worker: open the study, wait for the others, ``cycles`` ask+tell cycles."""
    import optuna  # noqa: PLC0415 - optional dependency
    from optuna.storages.journal import (  # noqa: PLC0415 - optional dependency
        JournalFileBackend,
        JournalStorage,
    )

    _quiet_optuna()
    study = optuna.load_study(
        study_name=STUDY,
        storage=JournalStorage(JournalFileBackend(path)),
        sampler=_optuna_sampler(),
    )
    space = _optuna_space() if with_params else {}
    barrier.wait(barrier_timeout)
    start = time.monotonic_ns()
    for _ in range(cycles):
        trial = study.ask(space)
        study.tell(trial, quadratic(trial.params))
    return {"start_ns": start, "end_ns": time.monotonic_ns(), "cycles": cycles}


def _optuna_throughput(
    path: Path, workers: int, cycles: int, *, with_params: bool, timeout: float
) -> dict[str, Any]:
    """Cycles/s of ``workers`` processes from the first worker's start to the last's end.

    Each worker opens the study before the barrier (as ours excludes ``create``).
    """
    import optuna  # noqa: PLC0415 - optional dependency
    from optuna.storages.journal import (  # noqa: PLC0415 - optional dependency
        JournalFileBackend,
        JournalStorage,
    )

    _quiet_optuna()
    optuna.create_study(
        study_name=STUDY,
        storage=JournalStorage(JournalFileBackend(str(path))),
        direction="minimize",
    )
    barrier = multiprocessing.get_context("spawn").Barrier(workers)
    args = (str(path), cycles, with_params, barrier, timeout)
    tasks = [Task(f"optuna{i}", _optuna_worker, args) for i in range(workers)]
    outcomes = run_tasks(tasks, start_method="spawn", timeout=timeout, together=False)
    failed = [o.describe() for o in outcomes if not o.ok]
    values = [o.value for o in outcomes if o.ok]
    if failed or not values:
        return {"cycles": 0, "cycles_per_s": None, "window_s": None, "problems": failed}
    start = min(v["start_ns"] for v in values)
    end = max(v["end_ns"] for v in values)
    done = sum(v["cycles"] for v in values)
    window = (end - start) / 1e9
    return {
        "cycles": done,
        "cycles_per_s": done / window if window > 0 else None,
        "window_s": window,
        "problems": [],
    }


def throughput(
    workers: Sequence[int] = (1, 2, 4, 8),
    cycles_per_worker: int = 250,
    durability: str | Sequence[str] = "fsync",
    *,
    optuna: bool = True,
    optuna_params: bool = True,
    repeats: int = 1,
    directory: Path | str | None = None,
    timeout: float = 600.0,
) -> list[dict[str, Any]]:
    """Cycles per second of ``w`` worker processes on one run, ours beside Optuna.

    Ours: ``run_swarm`` (the standard worker loop: claim, else sample; evaluate;
    report) with ``w * cycles_per_worker`` trials; cycles/s = completed reports
    / (last report's end - first operation's start after ``create``), from the
    workers' monotonic-clock histories, so process start-up is excluded. Optuna:
    ``w`` spawned processes that open the study, meet at a barrier and do
    ``cycles_per_worker`` ask+tell each on one journal file; cycles/s = cycles /
    (last end - first start). The runs alternate; with ``repeats`` > 1 each
    figure is the median run (every run's figure is kept in ``*_runs``) and the
    ratio is the median of the ratios of the runs measured back to back.
    """
    names = _durabilities(durability)
    if not workers or min(workers) < 1 or cycles_per_worker < 1 or repeats < 1:
        raise ValueError("workers, cycles_per_worker and repeats must be >= 1")
    use_optuna = optuna and optuna_version() is not None
    rows: list[dict[str, Any]] = []
    with _workdir(directory) as root:
        for w in workers:
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("optuna", *names)}
            for i in range(repeats):
                if use_optuna:
                    opt = _optuna_throughput(
                        root / f"optuna-{w}-{i}.log",
                        w,
                        cycles_per_worker,
                        with_params=optuna_params,
                        timeout=timeout,
                    )
                    logger.info("optuna x%d: %s cycles/s", w, _fmt(opt["cycles_per_s"]))
                    runs["optuna"].append(opt)
                for d in names:
                    ours = _ours_swarm(
                        root / f"swarm-{d}-{w}-{i}", w, cycles_per_worker, d, timeout
                    )
                    logger.info("ours-%s x%d: %s cycles/s", d, w, _fmt(ours["cycles_per_s"]))
                    runs[d].append(ours)
            opt_row = _prefixed(_median_run(runs["optuna"]), "optuna_") if use_optuna else {}
            for d in names:
                row: dict[str, Any] = {"workers": w, "durability": d}
                row.update(_prefixed(_median_run(runs[d]), "ours_"))
                row.update(opt_row)
                # The median of the ratios of runs measured back to back: the disk
                # of a shared machine drifts by several times within minutes.
                row["ours_over_optuna"] = _median_ratio(
                    [r["cycles_per_s"] for r in runs[d]],
                    [r["cycles_per_s"] for r in runs["optuna"]],
                )
                rows.append(row)
    _add_scaling(rows)
    return rows


def _ours_swarm(
    run_dir: Path, workers: int, cycles: int, durability: str, timeout: float
) -> dict[str, Any]:
    result = run_swarm(
        run_dir=run_dir,
        workers=workers,
        trials=workers * cycles,
        settings=Settings(durability=durability),  # type: ignore[arg-type]
        timeout=timeout,
    )
    try:
        ours = _ours_throughput(result)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    for p in ours["problems"]:
        logger.warning("ours-%s x%d: %s", durability, workers, p)
    return ours


def _median_ratio(ours: Sequence[float | None], theirs: Sequence[float | None]) -> float | None:
    """The median of the pairwise ratios ours[i] / theirs[i] (None if none can be formed)."""
    ratios = sorted(
        a / b for a, b in zip(ours, theirs, strict=False) if a is not None and b and b > 0
    )
    return ratios[(len(ratios) - 1) // 2] if ratios else None


def _median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median cycles/s, plus every run's figure and every problem."""
    speeds = [r["cycles_per_s"] for r in runs]
    valid = sorted(
        (r for r in runs if r["cycles_per_s"] is not None), key=lambda r: r["cycles_per_s"]
    )
    chosen = dict(valid[(len(valid) - 1) // 2] if valid else runs[0])
    chosen["runs_cycles_per_s"] = speeds
    chosen["problems"] = [p for r in runs for p in r["problems"]]
    if len(valid) < len(runs):
        chosen["cycles_per_s"] = None
    return chosen


def _add_scaling(rows: list[dict[str, Any]]) -> None:
    for d in {r["durability"] for r in rows}:
        mine = [r for r in rows if r["durability"] == d]
        base = min(mine, key=lambda r: r["workers"])
        for r in mine:
            r["base_workers"] = base["workers"]
            for who in ("ours", "optuna"):
                key = f"{who}_cycles_per_s"
                r[f"{who}_scaling_vs_base"] = _ratio(r.get(key), base.get(key))


# -- the whole benchmark ----------------------------------------------------------


def _filesystem(path: Path) -> str | None:
    """The filesystem type holding ``path`` (from /proc/mounts), if known."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def machine_info(directory: Path | str | None = None) -> dict[str, Any]:
    """What the figures depend on: CPUs, Python, OS, the filesystem of the run directories."""
    where = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "directory": str(where),
        "filesystem": _filesystem(where),
    }


def run_bench(
    trials: Sequence[int] = DEFAULTS["trials"],
    workers: Sequence[int] = DEFAULTS["workers"],
    cycles: int = DEFAULTS["cycles"],
    durability: str = "fsync",
    samples: int = DEFAULTS["samples"],
    *,
    optuna: bool = True,
    optuna_params: bool = True,
    paired: bool = True,
    repeats: int = 1,
    directory: Path | str | None = None,
) -> dict[str, Any]:
    """Run the cycle-cost and throughput benchmarks; a JSON-ready result with headline ratios.

    An empty ``trials`` or ``workers`` skips that part.
    """
    names = _durabilities(durability)
    version = optuna_version()
    use_optuna = optuna and version is not None
    started = time.perf_counter()
    if use_optuna:
        note = None
    elif version is None:
        note = "skipped: optuna is not importable (pip install 'neps-state[bench]')"
    else:
        note = "skipped: not asked for (--no-optuna)"
    result: dict[str, Any] = {
        "created": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(directory),
        "durability": list(names),
        "settings": {
            "batch_size": BATCH_SIZE,
            "trials": list(trials),
            "workers": list(workers),
            "samples": samples,
            "cycles_per_worker": cycles,
            "paired": paired,
            "repeats": repeats,
        },
        "cycle": {
            "ours": "lock_and_sample_trial(random_search, claim=True)"
            " + set_complete + lock_and_report_trial_evaluation",
            "optuna": "study.ask(the same 3-parameter space) + study.tell, RandomSampler"
            if optuna_params
            else "study.ask() + study.tell (no parameter), RandomSampler",
        },
        "optuna": {
            "available": version is not None,
            "used": use_optuna,
            "version": version,
            "backend": "JournalStorage(JournalFileBackend), default symlink lock,"
            " fsync on every append (no durability setting)",
            "note": note,
        },
        "cycle_cost": [],
        "throughput": [],
    }
    if trials:
        result["cycle_cost"] = cycle_cost(
            trials,
            names,
            samples,
            directory,
            optuna=use_optuna,
            optuna_params=optuna_params,
            paired=paired,
        )
    if workers:
        result["throughput"] = throughput(
            workers,
            cycles,
            names,
            optuna=use_optuna,
            optuna_params=optuna_params,
            repeats=repeats,
            directory=directory,
        )
    result["headline"] = _headline(result)
    result["targets"] = _targets(result)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _row(rows: Iterable[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _cost_ratio(row: Mapping[str, Any], who: str = "ours") -> float | None:
    """Ratio to the smallest size: to the paired base run if measured, else to the first size."""
    paired = row.get(f"{who}_ms_vs_paired_base")
    return row.get(f"{who}_ms_vs_base") if paired is None else paired


def _headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The few ratios to quote, each by durability."""
    cost, tput = result["cycle_cost"], result["throughput"]
    out: dict[str, Any] = {}
    if cost:
        base = cost[0]["base_trials"]
        largest = max(r["trials"] for r in cost)
        out["base_trials"] = base
        out["cost_ratio_basis"] = (
            "a fresh run of base size measured in the same rounds"
            if "ours_ms_vs_paired_base" in cost[0]
            else "the first size"
        )
        out[f"cost_ratio_{largest}_over_{base}"] = {
            r["durability"]: _cost_ratio(r) for r in cost if r["trials"] == largest
        }
        tens = [r for r in cost if r["trials"] == 10_000]
        if tens:
            out[f"cost_ratio_10k_over_{base}"] = {r["durability"]: _cost_ratio(r) for r in tens}
            out["ms_per_cycle_10k"] = {r["durability"]: r["ours_ms"] for r in tens}
            out["ms_per_cycle_10k_ours_over_optuna"] = {
                r["durability"]: r.get("ours_over_optuna") for r in tens
            }
    fours = [r for r in tput if r["workers"] == 4]
    if fours:
        out["throughput_ratio_4_workers_vs_optuna"] = {
            r["durability"]: r["ours_over_optuna"] for r in fours
        }
    return out


def _target(
    name: str, value: float | None, limit: float, unit: str, *, higher: bool
) -> dict[str, Any]:
    met = None if value is None else (value >= limit if higher else value <= limit)
    return {"name": name, "value": value, "limit": limit, "unit": unit, "met": met}


def _targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets of our issues, each met, missed, or not measured (``met`` None)."""
    cost, tput = result["cycle_cost"], result["throughput"]
    base = cost[0]["base_trials"] if cost else 100
    out: list[dict[str, Any]] = []
    for d in result["durability"]:
        for key in ("cost_10k", "cost_100k"):
            n, limit = TARGETS[key]
            r = _row(cost, trials=n, durability=d)
            value = None if r is None else _cost_ratio(r)
            name = f"ms/cycle @{n} within {limit}x of @{base} ({d})"
            out.append(_target(name, value, limit, "x", higher=False))
        if d == "fsync":
            n, limit = TARGETS["ms_10k_fsync"]
            r = _row(cost, trials=n, durability=d)
            value = None if r is None else r["ours_ms"]
            name = f"ms/cycle @{n} <= {limit} ms (fsync)"
            out.append(_target(name, value, limit, "ms", higher=False))
        w, limit = TARGETS["throughput_4_vs_optuna"]
        r = _row(tput, workers=w, durability=d)
        value = None if r is None else r["ours_over_optuna"]
        name = f"{w} workers >= {limit}x Optuna journal cycles/s ({d})"
        out.append(_target(name, value, limit, "x", higher=True))
    return out


# -- report, plot, command line ---------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _table(stream: IO[str], header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    stream.write(line + "\n" + "-" * len(line) + "\n")
    for r in rows:
        stream.write("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + "\n")


def render_report(result: Mapping[str, Any], stream: IO[str]) -> None:
    """Write every figure and ratio of ``result`` as readable text tables to ``stream``."""
    m, opt = result["machine"], result["optuna"]
    stream.write(
        f"neps-state bench: Python {m['python']}, {m['cpus_usable']} usable CPUs"
        f" ({m['cpu_count']} total), {m['filesystem'] or '?'} at {m['directory']}\n"
    )
    stream.write(f"  cycle, ours:   {result['cycle']['ours']}\n")
    if opt["used"]:
        stream.write(f"  cycle, optuna: {result['cycle']['optuna']}\n")
        stream.write(f"  optuna {opt['version']}: {opt['backend']}\n")
    else:
        stream.write(f"  optuna: {opt['note']}\n")
    if result["cycle_cost"]:
        _render_cost(result, stream)
    if result["throughput"]:
        _render_throughput(result, stream)
    stream.write("\nTargets\n")
    for t in result["targets"]:
        status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        stream.write(f"  [{status:>12}] {t['name']}: {value}\n")
    stream.write(f"\nelapsed: {result.get('elapsed_s', 0.0):.0f} s\n")


def _render_cost(result: Mapping[str, Any], stream: IO[str]) -> None:
    cost = sorted(result["cycle_cost"], key=lambda r: (r["durability"], r["trials"]))
    base = cost[0]["base_trials"]
    stream.write(
        f"\nCost of one cycle, ms, 1 process, {result['settings']['samples']} cycles per size:"
        f" ms = median of the means of batches of {result['settings']['batch_size']};"
        " ref = a fresh run of"
        f" {base} trials timed in the same rounds; xref = ms / ref; x{base} = ratio to the"
        f" first size's same column\n"
    )
    header = ["trials", "durab.", "ms", "mean", "p95", "ref", "xref", f"x{base}"]
    header += [f"mean x{base}", "consol", "amort", f"amort x{base}", "ours/optuna"]
    rows = [
        [
            str(r["trials"]),
            r["durability"],
            _fmt(r["ours_ms"], ".3f"),
            _fmt(r["ours_mean_ms"], ".3f"),
            _fmt(r["ours_p95_ms"], ".3f"),
            _fmt(r.get("ours_paired_base_ms"), ".3f"),
            _fmt(r.get("ours_ms_vs_paired_base")),
            _fmt(r["ours_ms_vs_base"]),
            _fmt(r["ours_mean_ms_vs_base"]),
            _fmt(r["ours_consolidate_ms"], ".1f"),
            _fmt(r["ours_amortized_ms"], ".3f"),
            _fmt(r["ours_amortized_ms_vs_base"]),
            _fmt(r.get("ours_over_optuna")),
        ]
        for r in cost
    ]
    stream.write("ours (neps_state)\n")
    _table(stream, header, rows)
    stream.write(
        "  consol = one rewrite of the whole trial cache, ms; amort = ms + consol spread over"
        " the cycles between two rewrites\n"
    )
    optuna_rows = {r["trials"]: r for r in cost if r.get("optuna_ms") is not None}
    if optuna_rows:
        header = ["trials", "ms", "mean", "p95", "ref", "xref", f"x{base}", f"mean x{base}"]
        rows = [
            [
                str(n),
                _fmt(r["optuna_ms"], ".3f"),
                _fmt(r["optuna_mean_ms"], ".3f"),
                _fmt(r["optuna_p95_ms"], ".3f"),
                _fmt(r.get("optuna_paired_base_ms"), ".3f"),
                _fmt(r.get("optuna_ms_vs_paired_base")),
                _fmt(r["optuna_ms_vs_base"]),
                _fmt(r["optuna_mean_ms_vs_base"]),
            ]
            for n, r in sorted(optuna_rows.items())
        ]
        stream.write("Optuna journal (always fsync; measured in the same rounds as every row)\n")
        _table(stream, header, rows)


def _render_throughput(result: Mapping[str, Any], stream: IO[str]) -> None:
    tput = sorted(result["throughput"], key=lambda r: (r["durability"], r["workers"]))
    s = result["settings"]
    stream.write(
        f"\nThroughput, cycles/s, {s['cycles_per_worker']} cycles per worker"
        f" ({s['repeats']} run(s), median): window = first operation after start-up to the last"
        " report; x1 = ratio to the same column with the fewest workers\n"
    )
    header = ["workers", "durab.", "ours", "x1", "optuna", "x1", "ours/optuna", "problems"]
    rows = [
        [
            str(r["workers"]),
            r["durability"],
            _fmt(r["ours_cycles_per_s"], ".1f"),
            _fmt(r["ours_scaling_vs_base"]),
            _fmt(r.get("optuna_cycles_per_s"), ".1f"),
            _fmt(r.get("optuna_scaling_vs_base")),
            _fmt(r.get("ours_over_optuna")),
            str(len(r["ours_problems"]) + len(r.get("optuna_problems", []))),
        ]
        for r in tput
    ]
    _table(stream, header, rows)
    for r in tput:
        for p in (*r["ours_problems"], *r.get("optuna_problems", [])):
            stream.write(f"  problem ({r['durability']}, {r['workers']} workers): {p}\n")


Series = tuple[str, str, str, str, list[Mapping[str, Any]]]
"""Who (``ours`` or ``optuna``), label, line style, color, rows."""

_STYLES = {"fsync": "-", "os": "--"}


def plot(result: Mapping[str, Any], path: Path | str) -> None:
    """Two panels: ms per cycle vs trials (log x), cycles/s vs workers; ours beside Optuna."""
    import matplotlib as mpl  # noqa: PLC0415 - optional dependency

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - optional dependency

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    _plot_cost(left, result)
    _plot_throughput(right, result)
    m = result["machine"]
    fig.suptitle(
        f"neps_state vs Optuna JournalFileBackend: {m['cpus_usable']} CPUs,"
        f" {m['filesystem'] or '?'}, Python {m['python']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(result: Mapping[str, Any], part: str, x: str, optuna_key: str) -> list[Series]:
    rows = result[part]
    out: list[Series] = [
        (
            "ours",
            f"neps_state ({d})",
            _STYLES[d],
            "tab:blue",
            sorted((r for r in rows if r["durability"] == d), key=lambda r: r[x]),
        )
        for d in result["durability"]
    ]
    # Optuna's figures repeat on the rows of every durability: one line.
    optuna_rows = {r[x]: r for r in rows if r.get(optuna_key) is not None}
    out.append(
        (
            "optuna",
            "Optuna journal (fsync)",
            "-",
            "tab:orange",
            sorted(optuna_rows.values(), key=lambda r: r[x]),
        )
    )
    return [s for s in out if s[4]]


def _not_measured(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _plot_cost(ax: Any, result: Mapping[str, Any]) -> None:
    cost = result["cycle_cost"]
    if not cost:
        _not_measured(ax, "Cost of one cycle")
        return
    base = cost[0]["base_trials"]
    for who, label, style, color, rows in _series(result, "cycle_cost", "trials", "optuna_ms"):
        xs = [r["trials"] for r in rows]
        marker = "s" if who == "optuna" else "o"
        ax.plot(xs, [r[f"{who}_ms"] for r in rows], style, marker=marker, color=color, label=label)
        refs = [r.get(f"{who}_paired_base_ms") for r in rows]
        if None in refs:
            continue
        # The fresh base-size run timed in the same rounds shows the machine's drift.
        ax.plot(xs, refs, ":", color=color, alpha=0.5, label=f"{label}: {base}-trial ref")
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(
                f"x{r[f'{who}_ms_vs_paired_base']:.2f}",
                (x, r[f"{who}_ms"]),
                textcoords="offset points",
                xytext=(6, 6 if who == "ours" else -14),
                fontsize=8,
                color=color,
            )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("trials in the run (log scale)")
    ax.set_ylabel("ms per cycle (median of batches)")
    ax.set_title("Cost of one cycle as the run grows (1 process; xN = vs the ref)")
    ax.grid(visible=True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_throughput(ax: Any, result: Mapping[str, Any]) -> None:
    tput = result["throughput"]
    if not tput:
        _not_measured(ax, "Throughput")
        return
    for who, label, style, color, rows in _series(
        result, "throughput", "workers", "optuna_cycles_per_s"
    ):
        done = [r for r in rows if r.get(f"{who}_cycles_per_s") is not None]
        xs = [r["workers"] for r in done]
        ys = [r[f"{who}_cycles_per_s"] for r in done]
        runs = [[v for v in r.get(f"{who}_runs_cycles_per_s", []) if v is not None] for r in done]
        # Repeated runs: the bar spans the slowest to the fastest run.
        lows = [y - min(v, default=y) for y, v in zip(ys, runs, strict=True)]
        highs = [max(v, default=y) - y for y, v in zip(ys, runs, strict=True)]
        marker = "s" if who == "optuna" else "o"
        ax.errorbar(
            xs,
            ys,
            yerr=[lows, highs],
            fmt=style,
            marker=marker,
            color=color,
            capsize=3,
            label=label,
        )
        for x, y, r in zip(xs, ys, done, strict=True):
            if who == "ours" and r.get("ours_over_optuna") is not None:
                ax.annotate(
                    f"x{r['ours_over_optuna']:.2f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(6, 6 if style == _STYLES["os"] else -12),
                    fontsize=8,
                    color=color,
                )
    ax.set_xscale("log", base=2)
    ticks = sorted({r["workers"] for r in tput})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("cycles per second")
    ax.set_title("Throughput of N workers on one run (xN = neps_state / Optuna)")
    ax.grid(visible=True, alpha=0.3)
    ax.legend(fontsize=8)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``neps-state bench`` to ``parser``."""
    d = DEFAULTS
    parser.add_argument(
        "--trials",
        type=_int_list,
        help=f"run sizes for the cycle cost, comma-separated (default {_csv(d['trials'])})",
    )
    parser.add_argument(
        "--workers",
        type=_int_list,
        help=f"worker counts for the throughput (default {_csv(d['workers'])})",
    )
    parser.add_argument(
        "--cycles", type=int, help=f"cycles per worker in the throughput (default {d['cycles']})"
    )
    parser.add_argument(
        "--samples", type=int, help=f"cycles timed at each run size (default {d['samples']})"
    )
    parser.add_argument(
        "--durability",
        choices=("fsync", "os", "both"),
        default="fsync",
        help="durability setting(s) of ours (default fsync)",
    )
    parser.add_argument("--no-optuna", action="store_true", help="do not measure Optuna")
    parser.add_argument(
        "--repeats", type=int, default=1, help="throughput runs per figure, median (default 1)"
    )
    parser.add_argument(
        "--no-paired",
        action="store_true",
        help="do not time a fresh base-size run beside each size (faster, drift-prone ratios)",
    )
    parser.add_argument(
        "--optuna-bare",
        action="store_true",
        help="Optuna cycle = ask() + tell() with no parameter (default: the same 3-param space)",
    )
    parser.add_argument("--skip-cost", action="store_true", help="skip the cycle-cost benchmark")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="skip the throughput benchmark"
    )
    parser.add_argument("--dir", type=Path, help="where to create the runs (default: temp dir)")
    parser.add_argument("--plot", type=Path, help="write a PNG with both panels here")
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke size: trials {_csv(QUICK['trials'])}, workers {_csv(QUICK['workers'])},"
        f" cycles {QUICK['cycles']}, samples {QUICK['samples']} (explicit options win)",
    )


def _csv(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def main_bench(args: argparse.Namespace) -> int:
    """Run the benchmark as asked by the parsed options; print the report; 0 on success."""
    sizes = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return sizes[name] if value is None else value

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if min(pick("cycles"), pick("samples"), args.repeats) < 1:
        sys.stderr.write("bench: --cycles, --samples and --repeats must be >= 1\n")
        return 2
    result = run_bench(
        trials=() if args.skip_cost else pick("trials"),
        workers=() if args.skip_throughput else pick("workers"),
        cycles=pick("cycles"),
        durability=args.durability,
        samples=pick("samples"),
        optuna=not args.no_optuna,
        optuna_params=not args.optuna_bare,
        paired=not args.no_paired,
        repeats=args.repeats,
        directory=args.dir,
    )
    render_report(result, sys.stdout)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        sys.stdout.write(f"wrote {args.json}\n")
    if args.plot is not None:
        try:
            plot(result, args.plot)
        except ImportError:
            sys.stderr.write("bench: matplotlib is not installed; no plot written\n")
        else:
            sys.stdout.write(f"wrote {args.plot}\n")
    return 0
