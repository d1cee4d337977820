"""Throughput: cycles per second of N worker processes, ours beside Optuna's journal."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neps_state import (
    Settings,
)
from pytest_neps._evaluate import quadratic
from pytest_neps._procs import Task, run_tasks
from pytest_neps._swarm import SwarmResult, run_swarm
from pytest_neps.bench._common import (
    STUDY,
    _durabilities,
    _fmt,
    _optuna_sampler,
    _optuna_space,
    _prefixed,
    _quiet_optuna,
    _ratio,
    _workdir,
    optuna_version,
)

logger = logging.getLogger(__name__)


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
    settle: float = 0.0,
) -> list[dict[str, Any]]:
    """Cycles per second of ``w`` worker processes on one run, ours beside Optuna.

    Ours: ``run_swarm`` (the standard worker loop: claim, else sample; evaluate;
    report) with ``w * cycles_per_worker`` trials; cycles/s = completed reports
    / (last report's end - first operation's start after ``create``), from the
    workers' monotonic-clock histories, so process start-up is excluded. Optuna:
    ``w`` spawned processes that open the study, meet at a barrier and do
    ``cycles_per_worker`` ask+tell each on one journal file; cycles/s = cycles /
    (last end - first start). With ``repeats`` > 1 each figure is the median run
    (every run's figure is kept in ``*_runs``) and the ratio is the median of
    the ratios of the runs measured back to back.

    Every run leaves the file system slower for the next one (on ext4 without a
    journal, each file creation scans past the inodes freed in the last minutes),
    so the runs go in ABBA order (each side first in every other repeat), and
    run directories are deleted only after the last run. ``settle`` seconds of
    pause before every run let the inodes freed before it (by the other side, or
    by whatever ran before the benchmark) stop counting as recent (ext4 without
    a journal: about 35-50 s), so that neither side pays for the other's deletions.
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
                plan = [*names, "optuna"] if use_optuna else list(names)
                # ABBA order: each side goes first in every other repeat.
                for who in plan if i % 2 else plan[::-1]:
                    if settle > 0:
                        time.sleep(settle)
                    if who == "optuna":
                        run = _optuna_throughput(
                            root / f"optuna-{w}-{i}.log",
                            w,
                            cycles_per_worker,
                            with_params=optuna_params,
                            timeout=timeout,
                        )
                    else:
                        run = _ours_swarm(
                            root / f"swarm-{who}-{w}-{i}", w, cycles_per_worker, who, timeout
                        )
                    logger.info("%s x%d: %s cycles/s", who, w, _fmt(run["cycles_per_s"]))
                    runs[who].append(run)
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
    # The run directory stays until every run is timed (see ``throughput``).
    ours = _ours_throughput(result)
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
