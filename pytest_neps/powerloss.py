"""Power-loss runs: a swarm on LazyFS, the power cut at one instant, then the next boot.

One run: a swarm of workers (fsync durability by default) works on a run
directory on LazyFS, keeping its histories (every acknowledged operation)
outside the mount; the power is cut (every worker SIGKILLed at one instant,
then every unsynced byte dropped and the file system mounted again) at a random
instant or when a worker reaches a named fault point. Then, as the next boot
(a new boot id, ``NEPS_STATE_BOOT_ID``):

1. the state loads (if any worker's create was acknowledged);
2. every acknowledged operation is there (``check_histories``: no acknowledged
   sample, claim or report lost, one evaluator per trial, one error record per error);
3. the invariant checker finds nothing;
4. the run continues: the trials left evaluating are reset (as a supervisor
   would) and a fresh swarm evaluates every pending trial and ``CONTINUE`` more.

``neps-state powerloss`` runs many of these and prints a table; the
``neps_lazyfs`` fixture and :func:`power_cut` do one inside a test.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from neps_state import FAULT_POINTS, Settings
from neps_state._boot import BOOT_ID_ENV
from pytest_neps._checker import check_histories, check_run_dir
from pytest_neps._impl import as_impl, state_of
from pytest_neps._reference import REFERENCE
from pytest_neps._swarm import SwarmConfig, run_swarm
from pytest_neps.lazyfs import LazyFS

SWARM_POINTS = tuple(p for p in FAULT_POINTS if not p.startswith(("create.", "state.", "clean.")))
"""Fault points a swarm's workers reach after their first operation (creation is the
kill matrix's: it happens once per run; so are the optimizer state's own operations and
cleanings, which the swarm's loop never calls)."""
ACK_LOST = "no acknowledged op lost"
CONTINUE = 20
"""Trials a fresh swarm adds after the reboot (the run's own budget is never reached)."""
POINT_TIMEOUT = 30.0
"""Seconds a cut at a fault point waits for a worker to reach it."""


@dataclass
class CutRun:
    """One power cut and what the next boot found."""

    kind: str
    cut_at_s: float | None
    acked: int
    loaded: bool
    lost: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    continued: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    harness_error: str | None = None
    """LazyFS itself failed: the run says nothing about the state (and is not ``ok``)."""

    @property
    def ok(self) -> bool:
        """Loaded, nothing acknowledged lost, checker clean, and the run went on."""
        return (
            self.harness_error is None
            and self.loaded
            and not self.lost
            and not self.violations
            and self.continued
            and not self.problems
        )

    def describe(self) -> str:
        """Everything wrong, on one line."""
        harness = [] if self.harness_error is None else [f"HARNESS: {self.harness_error}"]
        return "; ".join([*harness, *self.problems, *self.lost, *self.violations])[:600]

    def assert_recovered(self) -> None:
        """Raise ``AssertionError`` listing what went wrong, if anything did."""
        if not self.ok:
            raise AssertionError(f"power cut ({self.kind}): {self.describe()}")


@contextlib.contextmanager
def boot(boot_id: str) -> Iterator[None]:
    """Run the block as the boot ``boot_id`` (for this process and the workers it starts)."""
    old = os.environ.get(BOOT_ID_ENV)
    os.environ[BOOT_ID_ENV] = boot_id
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BOOT_ID_ENV, None)
        else:
            os.environ[BOOT_ID_ENV] = old


def power_cut(
    fs: LazyFS,
    *,
    impl: Any = REFERENCE,
    workers: int = 4,
    trials: int = 100_000,
    cut_after: float | None = None,
    point: str | None = None,
    point_after_ops: int = 5,
    evaluation: str = "pytest_neps._evaluate:flaky",
    settings: Settings | None = None,
    seed: int = 0,
    timeout: float = 120.0,
    precreate: bool = False,
) -> CutRun:
    """Run a swarm on ``fs`` (mounted), cut the power, and check what the next boot finds.

    The cut comes ``cut_after`` seconds after the start, or when a worker reaches the
    fault ``point`` after ``point_after_ops`` of its operations (a point not reached
    within ``POINT_TIMEOUT`` seconds is a failure). The default evaluation fails or
    crashes now and then, so reports with errors are cut too. With ``precreate``
    the run is created first, in the backing folder while LazyFS is unmounted (so
    all of it is on disk, as a run created long before the power cut would be);
    else the workers create it, and the cut may find its creation unsynced.
    """
    start = time.monotonic()
    settings = settings or Settings(durability="fsync")
    impl = as_impl(impl)
    run_dir = fs.mountpoint / f"run-{uuid.uuid4().hex[:8]}"
    kind = "random instant" if point is None else point
    if cut_after is None:
        cut_after = POINT_TIMEOUT if point is not None else 1.0
    config = SwarmConfig(
        workers=workers, trials=trials, impl=impl, evaluation=evaluation, settings=settings,
        seed=seed, timeout=timeout, power_cut_after=cut_after, power_cut_point=point,
        power_cut_ops=point_after_ops,
    )  # fmt: skip
    run = CutRun(kind, None, 0, loaded=False)
    try:
        with boot(f"before-{uuid.uuid4()}"):
            if precreate:
                fs.unmount()
                impl.create(fs.backing / run_dir.name, settings=settings)
                fs.mount()
            cut = run_swarm(config, run_dir, on_power_cut=fs.power_loss)
        run.cut_at_s = cut.power_cut_s
        run.acked = sum(op.completed and op.ok for op in cut.ops)
        run.problems += cut.problems()
        if point is not None and cut.power_cut_s is not None and not cut.power_cut_frozen:
            run.problems.append(f"no worker reached {point} within {config.power_cut_after:g} s")
        if cut.power_cut_s is not None:
            with boot(f"after-{uuid.uuid4()}"):
                _next_boot(run, run_dir, cut.ops, impl, config)
    except OSError as e:
        if fs.alive:
            raise
        run.harness_error = f"LazyFS died ({e}); its log: {fs.log_tail()}"
    if run.harness_error is None and not fs.alive:
        run.harness_error = f"LazyFS died during the run; its log: {fs.log_tail()}"
    run.seconds = time.monotonic() - start
    return run


def _next_boot(run: CutRun, run_dir: Path, ops: Any, impl: Any, config: SwarmConfig) -> None:
    created = any(op.op == "create" and op.completed and op.ok for op in ops)
    try:
        state = impl.load(run_dir, settings=config.settings)
        found = state.lock_and_read_trials()
        errors = [asdict(e) for e in state.lock_and_get_errors().errs]
    except FileNotFoundError:  # (NotARunDirectoryError, or NePS's own)
        if created:
            run.problems.append("an acknowledged create is lost: the run does not load")
            return
        run.loaded = True
        found, errors, state = {}, [], None
    except Exception as e:  # noqa: BLE001 - a run that does not load is the finding
        run.problems.append(f"does not load: {type(e).__name__}: {e}")
        return
    else:
        run.loaded = True
    history = check_histories(run_dir, found, errors, ops)
    run.lost = [str(v) for v in history if v.invariant == ACK_LOST]
    run.violations = [str(v) for v in history if v.invariant != ACK_LOST]
    if state is not None:
        run.violations += [str(v) for v in check_run_dir(run_dir)]
        for trial in found.values():
            if state_of(trial) == "evaluating":  # left by a dead worker
                trial.reset()
                state.put_updated_trial(trial)
    after = run_swarm(
        SwarmConfig(
            workers=2, trials=len(found) + CONTINUE, impl=config.impl, settings=config.settings,
            timeout=config.timeout,
        ),
        run_dir,
    )  # fmt: skip
    # Continued: the fresh swarm did its work (no lost worker, budget met); what the
    # checker finds after it counts against "clean", not against "continued".
    found_after = [str(v) for v in after.violations]
    problems = [p for p in after.problems() if p not in found_after]
    run.continued = not problems
    run.problems += [f"continuing: {p}" for p in problems]
    run.violations += [f"after continuing: {v}" for v in found_after]


def run_powerloss(
    runs: int,
    *,
    point_runs: int = 0,
    points: tuple[str, ...] = SWARM_POINTS,
    impl: Any = REFERENCE,
    workers: int = 4,
    trials: int = 100_000,
    window: tuple[float, float] = (1.0, 6.0),
    settings: Settings | None = None,
    seed: int = 0,
    precreate: bool = False,
    progress: Callable[[CutRun], None] | None = None,
) -> list[CutRun]:
    """``runs`` cuts at random instants in ``window`` seconds, ``point_runs`` at each point.

    Each run gets a LazyFS mount of its own (unmounted whatever happens).
    """
    rng = random.Random(seed)
    plan: list[tuple[float | None, str | None]] = [
        (rng.uniform(*window), None) for _ in range(runs)
    ]
    plan += [(None, p) for p in points for _ in range(point_runs)]
    out = []
    for i, (after, point) in enumerate(plan):
        work = Path(tempfile.mkdtemp(prefix="neps-powerloss-"))
        try:
            with LazyFS(work / "backing", work / "mnt") as fs:
                run = power_cut(
                    fs, impl=impl, workers=workers, trials=trials, cut_after=after, point=point,
                    point_after_ops=rng.randint(2, 12), settings=settings, seed=seed + i,
                    precreate=precreate,
                )  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.append(run)
        if progress is not None:
            progress(run)
    return out


def render(runs: list[CutRun], out: TextIO, *, title: str = "") -> None:
    """One row per kind of cut: runs, loaded, acknowledged operations, lost, clean, continued."""
    if title:
        out.write(f"\n{title}\n")
    out.write(
        f"{'power cut':<34}{'runs':>6}{'loaded':>8}{'acked ops':>11}{'lost':>6}"
        f"{'clean':>7}{'continued':>11}{'LazyFS failed':>15}\n"
    )
    rows: dict[str, list[CutRun]] = {}
    for run in runs:
        rows.setdefault(run.kind, []).append(run)
    out.writelines(
        f"{kind:<34}{len(rs):>6}{sum(r.loaded for r in rs):>8}{sum(r.acked for r in rs):>11}"
        f"{sum(len(r.lost) for r in rs):>6}{sum(not r.violations for r in rs):>7}"
        f"{sum(r.continued for r in rs):>11}{sum(r.harness_error is not None for r in rs):>15}\n"
        for kind, rs in rows.items()
    )
    failures = [r for r in runs if not r.ok]
    out.writelines(f"  FAILED {r.kind}: {r.describe()}\n" for r in failures[:20])
    ok = len(runs) - len(failures)
    out.write(f"{len(runs)} power cuts, {ok} recovered, {len(failures)} failed\n")
