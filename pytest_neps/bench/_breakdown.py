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

Medians per operation; each beside both floors (``x append``, ``x create``) and
beside *its own* floor (``x floor``): the disk work NePS's layout and the
durability promise leave it no way around, summed from primitives timed in the
same rounds on the same directory: ``append`` (one fsynced append: the commit),
``replace`` (a file of a trial's folder rewritten atomically: a temp file written
in the parent folder, renamed over the old one), ``create`` (a new file of a
trial's folder, made the same way), ``folder`` (a new trial folder of two files:
mkdir, two files made beside it and moved in, the folder renamed into place) and
``read`` (open, read and close a small file).
A sample commits, makes the trial's folder and replaces ``optimizer_state.pkl``;
a claim or a ``put_updated_trial`` commits and replaces ``metadata.json``; a
report commits, replaces ``metadata.json`` and creates ``report.yaml``; a read of
one trial is at best a small file's read; reading every trial has no disk floor
(it is served from memory; its cost per trial is printed instead).
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
from pytest_neps.bench._common import (
    OPS_TARGETS,
    WORKER,
    _quiet_optuna,
    _workdir,
    optuna_version,
    target,
)
from pytest_neps.bench._cost import _memory_journal, _Ours, _succeed
from pytest_neps.bench._report import target_line

FLOOR_BYTES = b"x" * 199 + b"\n"
OPTUNA_PARAMS = (1, 3, 10)
PRIMITIVES = ("append", "replace", "create", "folder", "read")
PAIRED_BASE = 1000
"""Above this size, a run of this size is timed in the same rounds: the cycles' growth."""
_SAMPLE = ("append", "folder", "replace")
_REPORT = ("append", "replace", "create")
FLOOR_OF: dict[str, tuple[str, ...]] = {
    "sample": _SAMPLE,
    "claim_next_pending": ("append", "replace"),
    "report": _REPORT,
    "sample_claim": _SAMPLE,
    "put_evaluating": ("append", "replace"),
    "get_trial_by_id": ("read",),
    "seed_cycle": (*_SAMPLE, "append", "replace", *_REPORT),
    "claim_cycle": (*_SAMPLE, *_REPORT),
}
"""Each operation's floor, as the primitives it cannot do without (see the module doc)."""


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

    def __init__(self, state: NePSState, rng: random.Random, trials: int) -> None:
        self.state = state
        self.rng = rng
        self.trials = trials  # ids 0 .. trials-1 exist (the prefill's)

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
        # (Not drawn from all_trial_ids(): a list of every id, built just before the
        # timed read, evicted the caches it then ran in: x3 at 100,000 trials.)
        some = str(self.rng.randrange(self.trials))
        timed("get_trial_by_id", lambda: s.lock_and_get_trial_by_id(some))
        timed("read_trials", s.lock_and_read_trials)
        return out

    def cycles(self, prefix: str = "") -> dict[str, int]:
        """The two cycle shapes, each timed once (ns)."""
        s = self.state

        def seed_cycle() -> None:
            trial = _evaluating(_sample(s))
            s.put_updated_trial(trial, hints="metadata")
            _report(s, trial)

        def claim_cycle() -> None:
            _report(s, s.lock_and_sample_trial(random_search, worker_id=WORKER, claim=True))

        out = {}
        for name, cycle in (("seed_cycle", seed_cycle), ("claim_cycle", claim_cycle)):
            t0 = time.perf_counter_ns()
            cycle()
            out[prefix + name] = time.perf_counter_ns() - t0
        return out


class _Floors:
    """The primitives of the floors, on the run's own directory (ns each).

    Done the cheapest way known on ext4, the way the state does them: files are
    made in a long-used folder (here ``.floors/``, there ``configs/``) and moved
    into the newest folder, which stands for a trial's.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory / ".floors"
        self.directory.mkdir()
        self.log = os.open(self.directory / "append", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.k = 0
        self.latest = self._name()
        self.latest.mkdir()
        self._write(self.latest / "a")

    def _write(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, FLOOR_BYTES)
        os.close(fd)

    def _name(self) -> Path:
        self.k += 1
        return self.directory / f"f{self.k}"

    def _moved_in(self, name: str) -> None:
        tmp = self._name()
        self._write(tmp)
        os.rename(tmp, self.latest / name)

    def append(self) -> None:
        os.write(self.log, FLOOR_BYTES)
        os.fsync(self.log)

    def replace(self) -> None:
        self._moved_in("a")

    def create(self) -> None:
        self._moved_in(f"c{self.k}")

    def folder(self) -> None:
        new = self._name()
        os.mkdir(new)
        for name in ("a", "b"):
            tmp = self._name()
            self._write(tmp)
            os.rename(tmp, new / name)
        self.latest = self._name()
        os.rename(new, self.latest)

    def read(self) -> None:
        fd = os.open(self.latest / "a", os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)

    def timed(self) -> dict[str, int]:
        out = {}
        for name in PRIMITIVES:
            step = getattr(self, name)
            t0 = time.perf_counter_ns()
            step()
            out[f"floor_{name}"] = time.perf_counter_ns() - t0
        return out

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
        rounds = _Round(ours.state, random.Random(0), trials)
        paired = None
        if trials > PAIRED_BASE:
            small = _Ours(base / "paired", durability)
            small.grow_to(PAIRED_BASE)
            paired = _Round(small.state, random.Random(1), PAIRED_BASE)
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
            for i in range(samples):
                for name, ns in rounds.run().items():
                    times.setdefault(name, []).append(ns)
                for name, ns in floors.timed().items():
                    times.setdefault(name, []).append(ns)
                # The cycles of both runs after the floors, in turn (ABBA), never right
                # after reading every trial: at 100,000 trials that read leaves the
                # caches cold and slows whatever comes next by half, the paired run's
                # cycles did not pay for it, and the read is timed on its own.
                runs = [(rounds, "")] + ([(paired, "paired_")] if paired else [])
                for run, prefix in runs[:: 1 if i % 2 else -1]:
                    for name, ns in run.cycles(prefix).items():
                        times.setdefault(name, []).append(ns)
                for k, study in others.items():
                    times.setdefault(f"optuna_{k}_params", []).append(study.cycle())
        finally:
            gc.unfreeze()
            floors.close()
    ms = {name: statistics.median(v) / 1e6 for name, v in times.items()}
    result = _result(ms, trials=trials, samples=samples, durability=durability)
    result["targets"] = ops_targets(result)
    return result


def _result(ms: dict[str, float], **head: Any) -> dict[str, Any]:
    """The medians as rows beside their floors, Optuna's cycles and the paired run."""
    primitive = {name: ms[f"floor_{name}"] for name in PRIMITIVES}
    append, create = primitive["append"], primitive["create"]
    rows = []
    for name, value in ms.items():
        if name.startswith(("floor_", "optuna_", "paired_")):
            continue
        row: dict[str, Any] = {"operation": name, "ms": value}
        row |= {"x_append": value / append, "x_create": value / create}
        parts = FLOOR_OF.get(name)
        if parts is not None:
            floor = sum(primitive[p] for p in parts)
            row |= {"floor_ms": floor, "x_floor": value / floor, "floor": " + ".join(parts)}
        rows.append(row)
    optuna_ms = {k: ms[f"optuna_{k}_params"] for k in OPTUNA_PARAMS if f"optuna_{k}_params" in ms}
    result = {
        **head,
        "floors_ms": {"append_fsync": append, **primitive},
        "operations": rows,
        "optuna_ms": optuna_ms,
        "seed_cycle_vs_optuna": {k: ms["seed_cycle"] / v for k, v in optuna_ms.items()},
        "claim_cycle_vs_optuna": {k: ms["claim_cycle"] / v for k, v in optuna_ms.items()},
    }
    if "paired_seed_cycle" in ms:
        result["paired_base"] = {"trials": PAIRED_BASE} | {
            f"{c}_x": ms[c] / ms[f"paired_{c}"] for c in ("seed_cycle", "claim_cycle")
        }
    return result


def ops_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's targets for one breakdown: each met, missed, or not measured (None)."""
    ops = {r["operation"]: r for r in result["operations"]}
    limit = OPS_TARGETS["x_floor"]
    out = [
        target(f"{name} <= {limit}x its floor", row["x_floor"], limit, "x", higher=False)
        for name, row in ops.items()
        if "x_floor" in row and not name.endswith("_cycle")
    ]
    claim, sample = ops["claim_next_pending"]["ms"], ops["sample"]["ms"]
    out.append(target("claim_next_pending <= sample (ms)", claim, sample, "ms", higher=False))
    paired = result.get("paired_base")
    if paired is not None:
        limit = OPS_TARGETS["seed_cycle_growth"]
        name = f"seed cycle @{result['trials']} <= {limit}x @{paired['trials']} (same rounds)"
        out.append(target(name, paired["seed_cycle_x"], limit, "x", higher=False))
    for k in (1, 3):
        limit = OPS_TARGETS[f"seed_cycle_vs_optuna_{k}"]
        value = result["seed_cycle_vs_optuna"].get(k)
        name = f"seed cycle <= {limit}x Optuna at {k} parameter(s)"
        out.append(target(name, value, limit, "x", higher=False))
    return out


def render_breakdown(result: dict[str, Any]) -> str:
    """The breakdown as a text table."""
    f = result["floors_ms"]
    primitives = ", ".join(f"{name} {f[name]:.3f}" for name in PRIMITIVES)
    head = (
        f"Operations at {result['trials']} trials ({result['durability']}, median of"
        f" {result['samples']}); floor primitives on the same directory, ms: {primitives}"
    )
    lines = [
        head,
        f"{'operation':<20} {'ms':>8} {'x append':>9} {'x create':>9} {'x floor':>8}  floor",
    ]
    for r in result["operations"]:
        if "x_floor" in r:
            mine = f"{r['x_floor']:8.2f}  {r['floor']}"
        else:
            mine = f"{'-':>8}  {r['ms'] * 1000 / result['trials']:.2f} us per trial"
        lines.append(
            f"{r['operation']:<20} {r['ms']:8.3f} {r['x_append']:9.1f} {r['x_create']:9.1f} {mine}"
        )
    for k, value in result["optuna_ms"].items():
        lines.append(
            f"Optuna ask + {k} suggestion(s) + tell: {value:.3f} ms; seed cycle"
            f" x{result['seed_cycle_vs_optuna'][k]:.2f}, claim cycle"
            f" x{result['claim_cycle_vs_optuna'][k]:.2f}"
        )
    paired = result.get("paired_base")
    if paired is not None:
        lines.append(
            f"Beside a run of {paired['trials']} trials timed in the same rounds: seed cycle"
            f" x{paired['seed_cycle_x']:.2f}, claim cycle x{paired['claim_cycle_x']:.2f}"
        )
    lines.append("Targets (issue 16)")
    lines += [f"  {target_line(t)}" for t in result["targets"]]
    return "\n".join(lines)
