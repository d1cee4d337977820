"""The cost of one cycle as a run grows, ours beside Optuna's journal, in one process."""

from __future__ import annotations

import gc
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neps_state import (
    NePSState,
    OptimizationState,
    SeedSnapshot,
    Settings,
    Trial,
    TrialRepo,
)
from neps_state._trial import Report
from pytest_neps._evaluate import quadratic
from pytest_neps._ops import complete
from pytest_neps._optimizers import random_search
from pytest_neps.bench._common import (
    BATCH_SIZE,
    BENCH_INFO,
    PREFILL_BATCH,
    RECORDS_PER_CYCLE,
    STUDY,
    WORKER,
    _durabilities,
    _optuna_sampler,
    _optuna_space,
    _prefixed,
    _quiet_optuna,
    _random_config,
    _ratio,
    _summary,
    _workdir,
    optuna_version,
)

logger = logging.getLogger(__name__)


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


def _succeed(trial: Trial, time_end: float) -> Report:
    """Complete ``trial`` as a success of the toy objective; return its report."""
    return complete(trial, "success", time_end=time_end, objective=quadratic(trial.config))


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
        trial.report = _succeed(trial, now)
        return trial

    def cycle(self) -> None:
        state = self.state
        trial = state.lock_and_sample_trial(random_search, worker_id=WORKER, claim=True)
        report = _succeed(trial, time.time())
        state.lock_and_report_trial_evaluation(trial, report, worker_id=WORKER)
        self.count += 1

    def consolidate_ms(self) -> float:
        """Time one rewrite of the whole trial cache, in ms."""
        start = time.perf_counter_ns()
        self.state.lock_and_consolidate_cache()
        return (time.perf_counter_ns() - start) / 1e6

    def cycles_between_consolidations(self) -> float | None:
        """Cycles from one cache rewrite to the next at the current size, by record count.

        An upper bound: the journal is also rewritten when its tail outgrows a byte
        bound (``TrialRepo._maybe_consolidate``), which large runs reach sooner.
        None: the record count alone never triggers a rewrite.
        """
        s = self.settings
        spare = RECORDS_PER_CYCLE - s.consolidation_ratio
        if spare <= 0:
            return None
        # After a rewrite the journal holds 1 record; after k cycles it holds
        # 1 + RECORDS_PER_CYCLE * k records and count + k trials, and the record count
        # triggers a rewrite once it exceeds both the limit and ratio x trials.
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
