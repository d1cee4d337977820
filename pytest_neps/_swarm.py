"""Worker swarms: N real processes running the standard worker loop on one run directory.

The worker loop: claim the earliest pending trial, or sample new ones when there
is none; evaluate; report. Until the trial budget is sampled and nothing is
pending (see ``_worker``). Faults: a worker can be SIGKILLed after ``k``
operations, at a random operation, at a named point inside an operation, or from
outside at a random instant (``kill_every``); a replacement worker then starts,
and the run must still finish. A *power cut* instead SIGKILLs every worker at one
instant (after ``power_cut_after`` seconds, or when a worker reaches
``power_cut_point``) and calls ``on_power_cut`` (e.g. ``LazyFS.power_loss``); the
swarm then stops, and whoever cut the power checks what the next boot finds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from neps_state import (
    FAULT_POINTS,
    ErrDump,
    Settings,
    Trial,
)
from pytest_neps._checker import Violation, check_run_dir
from pytest_neps._history import Kill, Op, merge, read_history
from pytest_neps._impl import as_impl, resolve, state_of
from pytest_neps._observer import observe
from pytest_neps._procs import Group, ProcessOutcome, Task
from pytest_neps._reference import REFERENCE
from pytest_neps._worker import FS_POINT, NEPS_PREFIX, KillPlan, WorkerSpec, worker_main
from pytest_neps.defects import finding

_REPORTED = ("success", "failed", "crashed")
RUNTIMES = {
    "own": "pytest_neps._worker:worker_main",
    "neps": "pytest_neps._nepsworker:neps_worker_main",
}
"""The worker loops a swarm can run, by ``SwarmConfig.runtime``."""


class Launcher(Protocol):
    """How worker processes are started, awaited and killed (local processes, or a cluster)."""

    def barrier(self, parties: int) -> Any:
        """A barrier that releases ``parties`` workers together."""

    def start(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], barrier: Any) -> int:
        """Start ``fn(*args)`` as worker ``name``; return its pid (or another handle id)."""

    def wait(self, timeout: float) -> list[str]:
        """Block until a worker exits or ``timeout``; return the names that exited."""

    def running(self) -> list[str]:
        """Workers that have not exited."""

    def outcome(self, name: str, *, timed_out: bool = False) -> ProcessOutcome:
        """How an exited worker ended."""

    def kill(self, name: str) -> None:
        """SIGKILL one worker (and everything it started)."""

    def kill_all(self) -> list[str]:
        """Kill every running worker (and everything it started); return their names."""

    def close(self) -> None:
        """Release resources; nothing may be left running."""


class LocalLauncher:
    """Workers as local processes, each leading its own process group."""

    def __init__(self, start_method: str = "spawn") -> None:
        self._group = Group(start_method)

    def barrier(self, parties: int) -> Any:
        """A multiprocessing barrier."""
        return self._group.barrier(parties)

    def start(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], barrier: Any) -> int:
        """Start a process."""
        return self._group.start(Task(name, fn, args), barrier)

    def wait(self, timeout: float) -> list[str]:
        """Wait for an exit."""
        return self._group.wait_any(timeout)

    def running(self) -> list[str]:
        """Running workers."""
        return self._group.running()

    def outcome(self, name: str, *, timed_out: bool = False) -> ProcessOutcome:
        """An exited worker's outcome."""
        return self._group.outcome(name, timed_out=timed_out)

    def kill(self, name: str) -> None:
        """SIGKILL one process group."""
        self._group.kill(name)

    def kill_all(self) -> list[str]:
        """SIGKILL every process group."""
        return self._group.kill_all()

    def close(self) -> None:
        """Kill and clean up."""
        self._group.close()


@dataclass
class SwarmConfig:
    """What a swarm runs: how many workers, how many trials, which code, which faults.

    Code is given as an object or as ``"module:attribute"`` (imported in every
    worker process, and once in the parent first, to fail early).
    """

    workers: int = 4
    """Worker processes running at once (a killed one is replaced)."""
    trials: int = 100
    """The trial budget: the run ends when this many trials are sampled and evaluated."""
    optimizer: Any = "pytest_neps._optimizers:random_search"
    """The ask function ``(trials, budget_info, n=None) -> SampledConfig(s)``, or
    ``"neps:NAME"`` for one of NePS's optimizers (the ``neps`` extra)."""
    evaluation: Any = "pytest_neps._evaluate:quadratic"
    """``config -> number`` (or a mapping with ``objective_to_minimize``, ``cost``);
    raising is a crashed trial, ``EvaluationFailedError`` a failed one."""
    impl: Any = REFERENCE
    """The state implementation: a class with NePS's API or an ``Impl``."""
    batch: int = 1
    """Trials per sample: 1 samples a trial already claimed; more stores them pending."""
    observers: int = 0
    """Lock-free reader processes that check no file is ever seen half-written."""
    kill_after: int | None = None
    """SIGKILL every worker (originals and replacements) after this many operations."""
    kill_rate: float = 0.0
    """Probability, per operation, that the worker is SIGKILLed there (and replaced)."""
    kill_every: float | None = None
    """Also SIGKILL a random worker from outside every this many seconds (on average)."""
    kill_points: tuple[str, ...] = ()
    """Fault points (``neps_state.FAULT_POINTS``) a planned kill may happen at, instead of
    after an operation; empty: kills happen between operations only. Only for an
    implementation that calls ``neps_state``'s fault hook (refused otherwise)."""
    kill_fs: bool = False
    """Planned kills happen just before a random file change (1-8) inside an operation,
    for any implementation (``pytest_neps._fscalls``)."""
    max_kills: int | None = None
    """Stop killing after this many kills."""
    seed: int = 0
    """Seeds the kill plans and the observers."""
    timeout: float = 120.0
    """Hard wall-clock limit in seconds: every worker is killed and the swarm fails."""
    start_method: str = "spawn"
    """How worker processes start: ``spawn``, ``forkserver`` or ``fork``."""
    settings: Settings = field(default_factory=lambda: Settings(durability="os"))
    """Settings of the reference state, passed to workers as ``NEPS_STATE_*`` variables."""
    worker_log_level: int = logging.WARNING
    """Log level of ``neps_state`` in the workers."""
    power_cut_after: float | None = None
    """Cut the power this many seconds after the start (SIGKILL every worker at once)."""
    power_cut_point: str | None = None
    """Or when a worker reaches this fault point (frozen there) after ``power_cut_ops`` ops."""
    power_cut_ops: int = 0
    runtime: str = "own"
    """Whose worker loop each worker process runs: ``"own"`` (the harness's, above) or
    ``"neps"`` (NePS's ``DefaultWorker``, as ``neps.run`` runs it; the ``neps`` extra)."""

    @property
    def cuts_power(self) -> bool:
        """Whether this swarm ends in a power cut."""
        return self.power_cut_after is not None or self.power_cut_point is not None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {sorted(RUNTIMES)}, not {self.runtime!r}")
        if self.workers < 1 or self.trials < 0 or self.batch < 1:
            raise ValueError("workers and batch must be >= 1, trials >= 0")
        if not 0 <= self.kill_rate < 1:
            raise ValueError("kill_rate must be in [0, 1)")
        if self.kill_every is not None and not self.kill_every > 0:
            raise ValueError("kill_every must be a positive number of seconds")
        unknown = set(self.kill_points) - set(FAULT_POINTS)
        if unknown:
            raise ValueError(f"unknown fault points {sorted(unknown)}; known: {FAULT_POINTS}")
        if self.kill_fs and self.kill_points:
            raise ValueError("kill_fs and kill_points choose where kills happen: give one")
        if self.power_cut_point is not None and self.power_cut_point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {self.power_cut_point!r}; known: {FAULT_POINTS}")
        kills = self.kill_after is not None or self.kill_rate > 0 or self.kill_every is not None
        if self.cuts_power and kills:
            raise ValueError("a power cut kills every worker: give no other kills with it")


@dataclass
class WorkerRecord:
    """One worker process (an original or a replacement) and how it ended."""

    worker_id: str
    outcome: ProcessOutcome
    kills: list[Kill]
    ops: list[Op]
    replaces: str | None = None
    killed_externally: bool = False

    @property
    def kill_requested(self) -> bool:
        """A kill was planned: announced by the worker, or sent by the swarm at random.

        (A random kill that reached a worker which had already finished does not count.)
        """
        return bool(self.kills) or (self.killed_externally and self.outcome.exitcode != 0)

    @property
    def killed_as_planned(self) -> bool:
        """A planned kill happened: the worker died by SIGKILL."""
        return self.kill_requested and self.outcome.signal == 9

    @property
    def failed(self) -> bool:
        """Died or raised without a planned kill (a lost worker)."""
        return not self.outcome.ok and not self.killed_as_planned

    def in_flight(self) -> Op | None:
        """The operation this worker was inside when it ended, if any."""
        return next((op for op in reversed(self.ops) if not op.completed), None)


@dataclass
class SwarmResult:
    """Everything a swarm produced, and the checks over it."""

    config: SwarmConfig
    run_dir: Path
    workers: list[WorkerRecord]
    trials: dict[str, Trial]
    errors: ErrDump
    wall_s: float
    timed_out: bool
    load_error: str | None = None
    violations: list[Violation] = field(default_factory=list)
    observers: list[ProcessOutcome] = field(default_factory=list)
    power_cut_s: float | None = None
    """When the power was cut (seconds after the start); None if it was not."""
    power_cut_frozen: bool = False
    """Whether the cut came because a worker reached ``power_cut_point``."""

    @property
    def ops(self) -> list[Op]:
        """Every operation of every worker, by invocation time."""
        return merge(w.ops for w in self.workers)

    @property
    def kills(self) -> int:
        """Planned kills that happened (announced and died by SIGKILL)."""
        return sum(w.killed_as_planned for w in self.workers)

    @property
    def kills_requested(self) -> int:
        """Planned kills: announced in the histories, or sent at random by the swarm."""
        return sum(w.kill_requested for w in self.workers)

    @property
    def replacements(self) -> int:
        """Replacement workers started."""
        return sum(w.replaces is not None for w in self.workers)

    @property
    def cycles(self) -> int:
        """Reports that completed (one per evaluated trial)."""
        return sum(1 for op in self.ops if op.op == "report" and op.ok)

    @property
    def cycles_per_s(self) -> float:
        """Completed cycles per wall-clock second."""
        return self.cycles / self.wall_s if self.wall_s > 0 else 0.0

    def latencies_ms(self, op: str) -> list[float]:
        """Durations of the completed operations ``op``, in ms."""
        return [(o.end_ns - o.start_ns) / 1e6 for o in self.ops if o.op == op and o.end_ns]

    def stranded(self) -> list[str]:
        """Trials left evaluating by a killed worker (allowed, and reported as such)."""
        killed = {w.worker_id for w in self.workers if w.killed_as_planned}
        return sorted(
            t.id
            for t in self.trials.values()
            if state_of(t) == "evaluating" and t.metadata.evaluating_worker_id in killed
        )

    def problems(self) -> list[str]:
        """Everything wrong with this swarm, as readable lines."""
        out = []
        if self.timed_out:
            out.append(f"swarm timed out after {self.config.timeout:g} s; still running:")
            out += [
                f"  {w.worker_id}: last op {w.in_flight() or (w.ops[-1] if w.ops else 'none')}"
                for w in self.workers
                if w.outcome.timed_out
            ]
        for w in self.workers:
            if w.failed and not w.outcome.timed_out:
                lost = f"worker lost: {w.outcome.describe()}"
                if "optimizer_state" in lost:
                    lost = str(finding("D3", lost))
                out.append(lost)
        out += [f"observer lost: {o.describe()}" for o in self.observers if not o.ok]
        if self.config.cuts_power:
            if self.power_cut_s is None:
                out.append("the power was never cut (the run ended first)")
            return out  # what survived is checked after the reboot, by the caller
        if self.load_error:
            out.append(f"the run directory does not load: {self.load_error}")
        out += [str(v) for v in self.violations]
        if not self.timed_out and not self.load_error:
            out += self._budget_problems()
        if not (self.kills_requested == self.kills == self.replacements):
            out.append(
                f"kill accounting: {self.kills_requested} requested, {self.kills} seen,"
                f" {self.replacements} replacements"
            )
        return out

    def _budget_problems(self) -> list[str]:
        out = []
        states = Counter(state_of(t) for t in self.trials.values())
        if len(self.trials) != self.config.trials:
            out.append(f"budget: {len(self.trials)} trials, expected {self.config.trials}")
        if states["pending"]:
            out.append(f"budget: {states['pending']} trials still pending")
        stranded = set(self.stranded())
        other = [
            t.id
            for t in self.trials.values()
            if state_of(t) == "evaluating" and t.id not in stranded
        ]
        if other:
            out.append(f"trials evaluating with no killed worker to blame: {sorted(other)}")
        return out

    def assert_consistent(self) -> None:
        """Raise ``AssertionError`` listing every problem, if there is any."""
        problems = self.problems()
        if problems:
            raise AssertionError(
                f"swarm on {self.run_dir} is not consistent ({len(problems)} problems):\n  "
                + "\n  ".join(problems)
            )

    def summary(self) -> dict[str, Any]:
        """The figures of the run as a JSON-ready mapping."""
        lat = {}
        for op in ("sample", "sample_claim", "claim", "report"):
            values = sorted(self.latencies_ms(op))
            if values or op != "sample_claim":
                lat[op] = {f"p{q}": _percentile(values, q) for q in (50, 95, 99)}
        states = Counter(state_of(t) for t in self.trials.values())
        return {
            "workers": self.config.workers,
            "trials": len(self.trials),
            "cycles": self.cycles,
            "wall_s": self.wall_s,
            "cycles_per_s": self.cycles_per_s,
            "latency_ms": lat,
            "kills": self.kills,
            "replacements": self.replacements,
            "stranded": self.stranded(),
            "states": dict(states),
            "errors": len(self.errors),
            "timed_out": self.timed_out,
            "violations": self.problems(),
        }


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    k = max(0, math.ceil(q / 100 * len(values)) - 1)
    return values[k]


class Swarm:
    """Runs one swarm; see :func:`run_swarm`."""

    def __init__(
        self,
        config: SwarmConfig,
        run_dir: Path,
        launcher: Launcher | None = None,
        progress: Callable[[int, SwarmConfig, int], None] | None = None,
        on_power_cut: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.launcher = launcher or LocalLauncher(config.start_method)
        self.progress = progress
        self.on_power_cut = on_power_cut
        self.power_cut_s: float | None = None
        self._frozen = 0
        self.rng = random.Random(config.seed)
        self.history_dir = Path(tempfile.mkdtemp(prefix="neps-swarm-"))
        self.specs: dict[str, WorkerSpec] = {}
        self.replaces: dict[str, str] = {}
        self.external: set[str] = set()
        self.kills_planned = 0
        self._read_to: dict[str, int] = {}
        self._reported = 0

    def _plan(self) -> KillPlan | None:
        c = self.config
        if c.power_cut_point is not None:
            return KillPlan(c.power_cut_ops, c.power_cut_point, freeze=True)
        if c.max_kills is not None and self.kills_planned >= c.max_kills:
            return None
        plan = None
        if c.kill_after is not None:
            plan = KillPlan(c.kill_after, self._point(c.kill_points))
        elif c.kill_rate > 0:
            after = 1 + int(math.log(1 - self.rng.random()) / math.log(1 - c.kill_rate))
            plan = KillPlan(after, self._point((*c.kill_points, None)))
        if plan is not None:
            self.kills_planned += 1
        return plan

    def _point(self, points: tuple[str | None, ...]) -> str | None:
        if self.config.kill_fs:
            return f"{FS_POINT}{self.rng.randint(1, 8)}"
        return self.rng.choice(points) if points else None

    def _start(self, worker_id: str, barrier: Any = None) -> None:
        c = self.config
        spec = WorkerSpec(
            worker_id=worker_id,
            run_dir=self.run_dir,
            history=self.history_dir / f"{worker_id}.jsonl",
            impl=c.impl,
            optimizer=c.optimizer,
            evaluation=c.evaluation,
            budget=c.trials,
            batch=c.batch,
            settings=c.settings,
            kill=self._plan(),
            log_level=c.worker_log_level,
        )
        self.specs[worker_id] = spec
        main = worker_main if c.runtime == "own" else resolve(RUNTIMES[c.runtime])
        self.launcher.start(worker_id, main, (spec,), barrier)

    def run(self) -> SwarmResult:
        """Start the workers, replace the killed ones, and collect everything."""
        c = self.config
        stop = self.history_dir / "stop"
        try:
            barrier = self.launcher.barrier(c.workers)
            for i in range(c.workers):
                self._start(f"w{i}", barrier)
            for i in range(c.observers):
                self.launcher.start(f"obs{i}", observe, (self.run_dir, stop, c.seed + i), None)
            start = time.monotonic()
            deadline = start + c.timeout
            next_kill = self._next_kill(start)
            cut = start + (math.inf if c.power_cut_after is None else c.power_cut_after)
            while time.monotonic() < deadline:
                now = time.monotonic()
                if now >= cut or (c.power_cut_point is not None and self._someone_froze()):
                    self._cut_power(now - start)
                    return self._collect(now - start, set())
                if now >= next_kill:
                    self._kill_one_at_random()
                    next_kill = self._next_kill(now)
                wait = min(0.25, deadline - now, max(next_kill - now, 0.0), max(cut - now, 0.0))
                if c.power_cut_point is not None:
                    wait = min(wait, 0.005)
                # A worker may die between the wait and the running check: look once
                # more before leaving, so that no exit goes unhandled (and unreplaced).
                quiet = not self._handle_exits(wait) and not self._workers_running()
                if quiet and not self._handle_exits(0.0):
                    break
            wall = time.monotonic() - start
            stop.touch()
            while self.launcher.running() and time.monotonic() < deadline:
                self.launcher.wait(deadline - time.monotonic())
            timed_out = set(self.launcher.kill_all())
            return self._collect(wall, timed_out)
        finally:
            self.launcher.close()
            shutil.rmtree(self.history_dir, ignore_errors=True)

    def _handle_exits(self, wait: float) -> bool:
        exited = [n for n in self.launcher.wait(wait) if n in self.specs]
        for name in exited:
            self._maybe_replace(name)
        if self.progress is not None:
            self.progress(self._reports_done(), self.config, len(self.replaces))
        return bool(exited)

    def _someone_froze(self) -> bool:
        """Whether a worker announced that it stopped itself at the power-cut point."""
        self._read_histories()
        return self._frozen > 0

    def _cut_power(self, at: float) -> None:
        """SIGKILL every worker at one instant, then let ``on_power_cut`` drop the cache."""
        victims = self.launcher.kill_all()
        self.external.update(v for v in victims if v in self.specs)
        self.power_cut_s = at
        if self.on_power_cut is not None:
            self.on_power_cut()

    def _next_kill(self, now: float) -> float:
        c = self.config
        if c.kill_every is None:
            return math.inf
        if c.max_kills is not None and self.kills_planned >= c.max_kills:
            return math.inf
        return now + self.rng.expovariate(1 / c.kill_every)

    def _kill_one_at_random(self) -> None:
        """SIGKILL a random running worker, wherever it is (any instruction)."""
        alive = sorted(n for n in self.launcher.running() if n in self.specs)
        if not alive:
            return
        victim = self.rng.choice(alive)
        self.kills_planned += 1
        self.external.add(victim)
        self.launcher.kill(victim)

    def _workers_running(self) -> bool:
        return any(name in self.specs for name in self.launcher.running())

    def _maybe_replace(self, name: str) -> None:
        outcome = self.launcher.outcome(name)
        history = self.specs[name].history
        _, kills = read_history(history, name) if history.exists() else ([], [])
        if (kills or name in self.external) and outcome.signal == 9:
            base = name.split("r", maxsplit=1)[0]
            new = f"{base}r{sum(1 for r in self.replaces if r.startswith(base + 'r')) + 1}"
            self.replaces[new] = name
            self._start(new)

    def _reports_done(self) -> int:
        self._read_histories()
        return self._reported

    def _read_histories(self) -> None:
        # Histories only grow by whole lines: read each one from where we stopped.
        for name, spec in self.specs.items():
            if not spec.history.exists():
                continue
            with spec.history.open("rb") as f:
                f.seek(self._read_to.get(name, 0))
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            self._read_to[name] = self._read_to.get(name, 0) + len(whole)
            for line in whole.splitlines():
                event = json.loads(line)
                if event["ev"] == "end" and event["result"] in _REPORTED:
                    self._reported += 1
                elif event["ev"] == "kill":
                    self._frozen += 1

    def _collect(self, wall: float, timed_out: set[str]) -> SwarmResult:
        records = []
        for name, spec in self.specs.items():
            ops, kills = read_history(spec.history, name) if spec.history.exists() else ([], [])
            outcome = self.launcher.outcome(name, timed_out=name in timed_out)
            records.append(
                WorkerRecord(
                    name, outcome, kills, ops, self.replaces.get(name), name in self.external
                )
            )
        result = SwarmResult(
            config=self.config,
            run_dir=self.run_dir,
            workers=records,
            trials={},
            errors=ErrDump(),
            wall_s=wall,
            timed_out=bool(timed_out),
            power_cut_s=self.power_cut_s,
            power_cut_frozen=self._frozen > 0,
        )
        if self.config.cuts_power:
            return result
        try:
            final = as_impl(self.config.impl).load(self.run_dir, settings=self.config.settings)
            result.trials = final.lock_and_read_trials()
            result.errors = final.lock_and_get_errors()
        except Exception as e:  # noqa: BLE001 - a run directory that does not load is a finding
            result.load_error = f"{type(e).__name__}: {e}"
        result.violations = check_run_dir(self.run_dir, result.ops)
        for i in range(self.config.observers):
            out = self.launcher.outcome(f"obs{i}", timed_out=f"obs{i}" in timed_out)
            result.observers.append(out)
            if out.ok:
                result.violations += [
                    Violation("no partial reads", path, str(finding("D3", detail)))
                    for path, detail in out.value["problems"]
                ]
        return result


class SwarmConfigError(ValueError):
    """A swarm's configuration names code that cannot be imported."""


def check_importable(cfg: SwarmConfig) -> None:
    """Import what the workers will import, once, in this process.

    Also refuses kills at fault points for an implementation that never reaches
    one (they would silently never happen).
    """
    if cfg.runtime == "neps" and importlib.util.find_spec("neps") is None:
        raise SwarmConfigError(
            "SwarmConfig.runtime='neps' runs NePS's own worker loop: install the 'neps' extra"
            " (pip install 'neps-state[neps]')"
        )
    for name in ("optimizer", "evaluation", "impl"):
        spec = getattr(cfg, name)
        if not isinstance(spec, str):
            continue
        if spec.startswith(NEPS_PREFIX):
            if importlib.util.find_spec("neps") is None:
                raise SwarmConfigError(
                    f"SwarmConfig.{name}={spec!r} needs NePS: install the 'neps' extra"
                    " (neural-pipeline-search)"
                )
            continue
        try:
            resolve(spec)
        except Exception as e:  # noqa: BLE001 - any failure to import is reported the same way
            raise SwarmConfigError(
                f"SwarmConfig.{name}={spec!r} cannot be imported: {type(e).__name__}: {e}."
                " Worker processes import it too: its module must be importable (installed,"
                " or on sys.path, e.g. through pytest's 'pythonpath' ini option)"
            ) from None
    points = cfg.kill_points or (() if cfg.power_cut_point is None else (cfg.power_cut_point,))
    if points and not as_impl(cfg.impl).calls_fault_hook():
        raise SwarmConfigError(
            f"kills at fault points {list(points)} cannot happen: {cfg.impl} never calls"
            " neps_state's fault hook. Use kill_fs=True (a kill at a file change, for any"
            " implementation), kill_rate or kill_after alone (between operations), or"
            " kill_every (from outside)"
        )


def run_swarm(
    config: SwarmConfig | None = None,
    run_dir: Path | str | None = None,
    *,
    launcher: Launcher | None = None,
    progress: Callable[[int, SwarmConfig, int], None] | None = None,
    on_power_cut: Callable[[], None] | None = None,
    **overrides: Any,
) -> SwarmResult:
    """Run a swarm of worker processes on ``run_dir`` (a fresh temp dir if None).

    ``optimizer``, ``evaluation`` and ``impl`` given as ``"module:attribute"`` are
    imported here first: one that cannot be is a ``SwarmConfigError`` before any
    worker starts.
    """
    cfg = replace(config or SwarmConfig(), **overrides)
    check_importable(cfg)
    path = (
        Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="neps-run-")) / "run"
    )
    return Swarm(cfg, path, launcher, progress, on_power_cut).run()
