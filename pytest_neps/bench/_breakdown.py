"""Where a cycle's milliseconds go: each operation beside the disk's floor, in one run.

One run of the reference, grown to ``trials`` finished trials, then ``samples``
rounds; each round times every operation once, the two floors measured on the
same directory (one 200-byte append then ``fsync``; the creation of a 200-byte
file), the two cycle shapes users run, and Optuna's ask + ``k`` suggestions +
tell at 1, 3 and 10 parameters on a journal prefilled with as many trials:

- ``sample``: ``lock_and_sample_trial`` (a pending trial);
- ``claim_next_pending``: ``lock_and_claim_next_pending_trial`` (takes it);
- ``report``: ``lock_and_report_trial_evaluation``;
- ``sample_claim``: ``lock_and_sample_trial(claim=True)``;
- ``put_evaluating``: ``put_updated_trial`` of a sampled trial, marked evaluating;
- ``get_trial_by_id``, ``read_trials``: reads;
- ``seed_cycle``: sample, ``put_updated_trial`` evaluating, report (NePS's runtime);
- ``claim_cycle``: sample already claimed, report.

Medians per operation; each beside both floors (``x append``, ``x create``).
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neps_state import NePSState, Trial
from pytest_neps._optimizers import random_search
from pytest_neps.bench._common import WORKER, _quiet_optuna, _workdir, optuna_version
from pytest_neps.bench._cost import _memory_journal, _Ours, _succeed

FLOOR_BYTES = b"x" * 199 + b"\n"
OPTUNA_PARAMS = (1, 3, 10)


def _sample(state: NePSState) -> Trial:
    trial: Trial = state.lock_and_sample_trial(random_search, worker_id=WORKER)
    return trial


def _report(state: NePSState, trial: Trial) -> None:
    state.lock_and_report_trial_evaluation(trial, _succeed(trial, time.time()), worker_id=WORKER)


def _evaluating(trial: Trial) -> Trial:
    trial.set_evaluating(time_started=time.time(), worker_id=WORKER)
    return trial


class _Round:
    """One round of the operations on one state, each timed once (ns)."""

    def __init__(self, state: NePSState, rng: random.Random) -> None:
        self.state = state
        self.rng = rng

    def run(self) -> dict[str, int]:
        s = self.state
        out: dict[str, int] = {}

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t0 = time.perf_counter_ns()
            value = fn()
            out[name] = time.perf_counter_ns() - t0
            return value

        timed("sample", lambda: _sample(s))
        claimed = timed("claim_next_pending", lambda: s.lock_and_claim_next_pending_trial(WORKER))
        timed("report", lambda: _report(s, claimed))
        trial = timed(
            "sample_claim",
            lambda: s.lock_and_sample_trial(random_search, worker_id=WORKER, claim=True),
        )
        _report(s, trial)
        pending = _evaluating(_sample(s))
        timed("put_evaluating", lambda: s.put_updated_trial(pending, hints="metadata"))
        _report(s, pending)
        some = str(self.rng.randrange(len(s.all_trial_ids())))
        timed("get_trial_by_id", lambda: s.lock_and_get_trial_by_id(some))
        timed("read_trials", s.lock_and_read_trials)

        def seed_cycle() -> None:
            trial = _evaluating(_sample(s))
            s.put_updated_trial(trial, hints="metadata")
            _report(s, trial)

        def claim_cycle() -> None:
            _report(s, s.lock_and_sample_trial(random_search, worker_id=WORKER, claim=True))

        timed("seed_cycle", seed_cycle)
        timed("claim_cycle", claim_cycle)
        return out


class _Floors:
    """The two floors, on the run's own directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = os.open(directory / ".floor-append", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.k = 0

    def append_fsync(self) -> int:
        t0 = time.perf_counter_ns()
        os.write(self.log, FLOOR_BYTES)
        os.fsync(self.log)
        return time.perf_counter_ns() - t0

    def create(self) -> int:
        self.k += 1
        path = self.directory / f".floor-create-{self.k}"
        t0 = time.perf_counter_ns()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, FLOOR_BYTES)
        os.close(fd)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        os.close(self.log)


class _OptunaK:
    """Optuna's journal with ``k`` float parameters, prefilled with ``n`` trials."""

    def __init__(self, path: Path, k: int, n: int) -> None:
        import optuna  # noqa: PLC0415 - optional dependency
        from optuna.distributions import FloatDistribution  # noqa: PLC0415
        from optuna.storages.journal import (  # noqa: PLC0415
            JournalFileBackend,
            JournalStorage,
        )

        _quiet_optuna()
        self.space: dict[str, Any] = {f"x{i}": FloatDistribution(0.0, 1.0) for i in range(k)}
        memory = _memory_journal()
        staging = JournalStorage(memory)
        study_id = staging.create_new_study([optuna.study.StudyDirection.MINIMIZE], "bench")
        rng = random.Random(k)
        for _ in range(n):
            params = {name: rng.random() for name in self.space}
            template = optuna.trial.create_trial(
                value=sum(params.values()), params=params, distributions=self.space
            )
            staging.create_new_trial(study_id, template_trial=template)
        backend = JournalFileBackend(str(path))
        backend.append_logs(memory.logs)
        self.study = optuna.load_study(
            study_name="bench",
            storage=JournalStorage(backend),
            sampler=optuna.samplers.RandomSampler(seed=k),
        )

    def cycle(self) -> int:
        t0 = time.perf_counter_ns()
        trial = self.study.ask()
        value = sum(trial.suggest_float(name, 0.0, 1.0) for name in self.space)
        self.study.tell(trial, value)
        return time.perf_counter_ns() - t0


def breakdown(
    *,
    trials: int = 1000,
    samples: int = 100,
    durability: str = "fsync",
    optuna: bool = True,
    directory: Path | str | None = None,
) -> dict[str, Any]:
    """Every operation's median ms at ``trials`` trials, beside the floors and Optuna."""
    with _workdir(directory) as base:
        ours = _Ours(base / "ours", durability)
        ours.grow_to(trials)
        rounds = _Round(ours.state, random.Random(0))
        floors = _Floors(base / "ours")
        others = (
            {k: _OptunaK(base / f"optuna-{k}.log", k, trials) for k in OPTUNA_PARAMS}
            if optuna and optuna_version() is not None
            else {}
        )
        os.sync()
        times: dict[str, list[int]] = {}
        gc.collect()
        gc.freeze()
        try:
            for _ in range(samples):
                for name, ns in rounds.run().items():
                    times.setdefault(name, []).append(ns)
                times.setdefault("floor_append_fsync", []).append(floors.append_fsync())
                times.setdefault("floor_create", []).append(floors.create())
                for k, study in others.items():
                    times.setdefault(f"optuna_{k}_params", []).append(study.cycle())
        finally:
            gc.unfreeze()
            floors.close()
    ms = {name: statistics.median(v) / 1e6 for name, v in times.items()}
    append, create = ms["floor_append_fsync"], ms["floor_create"]
    rows = [
        {"operation": name, "ms": value, "x_append": value / append, "x_create": value / create}
        for name, value in ms.items()
        if not name.startswith(("floor_", "optuna_"))
    ]
    optuna_ms = {k: ms[f"optuna_{k}_params"] for k in others}
    return {
        "trials": trials,
        "samples": samples,
        "durability": durability,
        "floors_ms": {"append_fsync": append, "create": create},
        "operations": rows,
        "optuna_ms": optuna_ms,
        "seed_cycle_vs_optuna": {k: ms["seed_cycle"] / v for k, v in optuna_ms.items()},
        "claim_cycle_vs_optuna": {k: ms["claim_cycle"] / v for k, v in optuna_ms.items()},
    }


def render_breakdown(result: dict[str, Any]) -> str:
    """The breakdown as a text table."""
    f = result["floors_ms"]
    head = (
        f"Operations at {result['trials']} trials ({result['durability']}, median of"
        f" {result['samples']}); floors on the same directory: fsynced append"
        f" {f['append_fsync']:.3f} ms, file creation {f['create']:.3f} ms"
    )
    lines = [head, f"{'operation':<20} {'ms':>8} {'x append':>9} {'x create':>9}"]
    lines += [
        f"{r['operation']:<20} {r['ms']:8.3f} {r['x_append']:9.1f} {r['x_create']:9.1f}"
        for r in result["operations"]
    ]
    for k, value in result["optuna_ms"].items():
        lines.append(
            f"Optuna ask + {k} suggestion(s) + tell: {value:.3f} ms; seed cycle"
            f" x{result['seed_cycle_vs_optuna'][k]:.2f}, claim cycle"
            f" x{result['claim_cycle_vs_optuna'][k]:.2f}"
        )
    return "\n".join(lines)
