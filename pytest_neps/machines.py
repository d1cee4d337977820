"""A model-based Hypothesis state machine for any NePS state implementation.

The real state runs beside the sequential model of ``_ops`` (the one the
linearizability checker judges races by), and every operation goes through the
registry ``_ops.OPS``. Rules sample (one or a batch), claim, report (success,
failed with an error, crashed), update trials with ``put_updated_trial``, force a
consolidation, open more handles on the same directory, and damage the directory
the way crashes do (lose the cache file, tear its tail, leave stray temp files).
Where the implementation has NePS 0.17's members, rules also take NePS's runtime's
own steps (claim-or-sample, report), give out worker ids, set budgets, import
evaluated configs and reset or remove trials by id (``neps.clean``).
Handles and trial ids are Bundles, so a shrunk example still names the same
ones. After every step every handle's view must equal the model, the cache must
agree with the trial folders, and the error dump must hold one record per
reported error.

    from hypothesis.stateful import run_state_machine_as_test
    run_state_machine_as_test(model_machine("my_pkg.state:MyState"))
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from neps_state import SampledConfig
from neps_state._journal import frame
from pytest_neps._checker import check_run_dir
from pytest_neps._impl import Impl, as_impl
from pytest_neps._linearize import Event
from pytest_neps._ops import OPS, OUTCOMES, Ctx, NePSModel, NePSModelState, complete, from_json
from pytest_neps.defects import finding, named

MAX_HANDLES = 4
MODEL = NePSModel()


def cache_files(root: Path) -> list[Path]:
    """The trial cache files of the run at ``root`` (``configs/.trial_cache*``, NePS's layout)."""
    return [p for p in (root / "configs").glob(".trial_cache*") if p.is_file()]


def ask(trials: Mapping[str, Any], budget_info: Any, n: int | None = None) -> Any:
    """Propose trials named like NePS does (``len(trials)`` onwards) with config ``{"i": id}``."""
    del budget_info
    first = len(trials)
    configs = [SampledConfig(id=str(k), config={"i": k}) for k in range(first, first + (n or 1))]
    return configs[0] if n is None else configs


@dataclass(frozen=True, eq=False)
class Handle:
    """A handle on the run directory, numbered in the order it was opened."""

    number: int
    state: Any


def _error(trial_id: str, outcome: str) -> RuntimeError | None:
    return None if outcome == "success" else RuntimeError(f"{outcome} at {trial_id}")


def _report(trial: Any, outcome: str) -> Any:
    """Every report field set (a NaN cost for trial 3); an error unless a success."""
    err = _error(trial.id, outcome)
    return complete(
        trial,
        outcome,
        time_end=1.0,
        objective=(float(trial.id) if trial.id.isdigit() else 0.5) if err is None else None,
        cost=math.nan if trial.id == "3" else 1.0,
        learning_curve=[1.0, 0.5],
        err=err,
        tb=None if err is None else "Traceback: ...",
        extra={"tid": trial.id},
        evaluation_duration=0.5,
    )


class NePSStateMachine(RuleBasedStateMachine):
    """Drive an implementation (``impl``) and the sequential model side by side."""

    impl: ClassVar[Impl] = Impl()
    handles = Bundle[Handle]("handles")
    trials = Bundle[str]("trials")
    claimed = Bundle[str]("claimed")

    def __init__(self) -> None:
        """An empty model; the run directory is made by the first step."""
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="neps-machine-"))
        self.root = self.tmp / "run"
        self.opened: list[Handle] = []
        self.model = NePSModelState()
        self.reports: dict[str, tuple[str, str | None]] = {}  # trial -> (outcome, error)
        self.errors: Counter[str] = Counter()
        self.damage: str | None = None
        """The seed defect a reader failing right after the last damage shows (D1, D4)."""

    def teardown(self) -> None:
        """Remove the run directory."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _open(self, state: Any) -> Handle:
        handle = Handle(len(self.opened), state)
        self.opened.append(handle)
        return handle

    def apply(
        self, name: str, handle: Handle, worker: str, args: tuple[Any, ...]
    ) -> tuple[Any, Any]:
        """Run ``name`` through the registry; its raw and model results, if the model agrees.

        An error the model does not expect is raised as it is.
        """
        op = OPS[name]
        ctx = Ctx(self.impl, handle.state, worker, ask, _report)
        error: Exception | None = None
        try:
            raw = op.call(ctx, args)
            result = from_json(op.encode(raw))
        except Exception as e:  # noqa: BLE001 - the model says whether this error is legal
            raw, result, error = None, type(e).__name__, e
        nxt = MODEL.step(self.model, Event(worker, name, args, result, 0, 0))
        if not nxt:
            what = (
                f"handle {handle.number}: {name}{args} -> {result!r} "
                f"is illegal in {MODEL.format_state(self.model)}"
            )
            if self.damage is not None:
                # A read that returns, but not every trial, is a rebuild that lost them
                # (D1); one that raises is the damage breaking the reader. Right after a
                # reset or removal by id, anything wrong is that operation's (D10).
                defect = "D1" if error is None and name == "read" else self.damage
                if self.damage == "D10":
                    defect = "D10"
                raise finding(defect, f"right after a damaged cache, {what}") from error
            if error is not None:
                raise error
            raise AssertionError(what)
        (self.model,) = nxt
        return raw, result

    def owner(self, trial_id: str) -> str | None:
        """The worker the model says evaluates (or evaluated) ``trial_id`` (None if gone)."""
        return next((w for t, _, w in self.model.trials if t == trial_id), None)

    def supports(self, name: str) -> bool:
        """Whether the implementation has what operation ``name`` calls (NePS 0.17's API)."""
        return bool(self.opened) and OPS[name].supported_by(self.opened[0].state)

    @initialize(target=handles)
    def create(self) -> Handle:
        """Create the run directory with one handle on it."""
        return self._open(self.impl.create(self.root))

    @rule(target=trials, handle=handles, n=st.sampled_from([None, 1, 2, 3]))
    def sample(self, handle: Handle, n: int | None) -> MultipleResults[str]:
        """Sample one trial (n=None) or a batch."""
        _, ids = self.apply("sample", handle, f"sampler{handle.number}", (n,))
        return multiple(*ids)

    @rule(target=claimed, handle=handles, w=st.integers(0, 2))
    def claim(self, handle: Handle, w: int) -> MultipleResults[str]:
        """Claim the earliest pending trial (or find none)."""
        worker = f"worker{w}"
        _, tid = self.apply("claim", handle, worker, (worker,))
        return multiple() if tid is None else multiple(tid)

    @rule(handle=handles, tid=consumes(claimed), outcome=st.sampled_from(OUTCOMES))
    def report(self, handle: Handle, tid: str, outcome: str) -> None:
        """Report a claimed trial as success, failed (with an error) or crashed.

        By its evaluating worker; one reset or corrupted since must be refused.
        """
        worker = self.owner(tid) or "machine"
        _, result = self.apply("report", handle, worker, (worker, tid, outcome))
        if result is True:
            err = _error(tid, outcome)
            self.reports[tid] = (outcome, None if err is None else str(err))
            self.errors[tid] += err is not None

    @rule(handle=handles, tid=trials, action=st.sampled_from(["reset", "corrupt"]))
    def put_updated(self, handle: Handle, tid: str, action: str) -> None:
        """Reset a trial to pending, or mark it corrupted, with ``put_updated_trial``."""
        self.apply(action, handle, "machine", (tid,))
        if action == "reset":
            self.reports.pop(tid, None)

    @precondition(lambda self: self.supports("neps_next"))
    @rule(target=claimed, handle=handles, w=st.integers(0, 2))
    def neps_next(self, handle: Handle, w: int) -> MultipleResults[str]:
        """NePS's runtime's own step: claim the earliest pending trial, else sample one."""
        worker = f"worker{w}"
        raw, tid = self.apply("neps_next", handle, worker, (worker,))
        return multiple() if raw is None else multiple(tid)

    @precondition(lambda self: self.supports("neps_report"))
    @rule(handle=handles, tid=consumes(claimed), outcome=st.sampled_from(OUTCOMES))
    def neps_report(self, handle: Handle, tid: str, outcome: str) -> None:
        """Report a claimed trial through NePS's runtime's own step."""
        worker = self.owner(tid) or "machine"
        _, result = self.apply("neps_report", handle, worker, (worker, tid, outcome))
        if result is True:
            err = _error(tid, outcome)
            self.reports[tid] = (outcome, None if err is None else str(err))
            self.errors[tid] += err is not None

    @precondition(lambda self: self.supports("worker_id") and self.supports("budget"))
    @rule(handle=handles, n=st.sampled_from([None, 5, 9]))
    def worker_and_budget(self, handle: Handle, n: int | None) -> None:
        """A new worker id, then (unless None) a new total budget, read back."""
        self.apply("worker_id", handle, "machine", ())
        if n is not None:
            self.apply("budget", handle, "machine", (n,))
        self.apply("get_budget", handle, "machine", ())

    @precondition(lambda self: self.supports("import"))
    @rule(target=trials, handle=handles, tag=st.sampled_from("abc"))
    def import_trial(self, handle: Handle, tag: str) -> MultipleResults[str]:
        """Import an evaluated config (an ``external`` trial), as ``neps.import_trials`` does."""
        raw, ids = self.apply("import", handle, "importer", (tag,))
        if raw is None:
            return multiple()
        for tid in ids:
            self.reports[tid] = ("success", None)
        return multiple(*ids)

    @precondition(lambda self: self.supports("reset_by_id") and self.supports("remove"))
    @rule(handle=handles, tid=trials, action=st.sampled_from(["reset_by_id", "remove"]))
    def clean(self, handle: Handle, tid: str, action: str) -> None:
        """Reset a trial by id or remove it (``neps.clean``): its error records go too."""
        _, result = self.apply(action, handle, "machine", (tid,))
        if result is None:
            self.reports.pop(tid, None)
            self.errors.pop(tid, None)
            self.damage = "D10"

    @rule(handle=handles, n=st.integers(1, 4))
    def next_pending(self, handle: Handle, n: int) -> None:
        """The ``n`` earliest sampled pending trials, in order (after claims and resets)."""
        self.apply("pending", handle, "machine", (n,))

    @rule(handle=handles)
    def consolidate(self, handle: Handle) -> None:
        """Force a cache consolidation (where the implementation has one)."""
        self.apply("consolidate", handle, "machine", ())

    @rule(behind=handles, other=handles, n=st.sampled_from([None, 3]))
    def consolidate_behind(self, behind: Handle, other: Handle, n: int | None) -> None:
        """Another handle samples, then ``behind`` consolidates before it reads anything.

        The invariant reads through every handle after each step; only inside one
        step can a handle consolidate without having read the others' newest commits.
        """
        self.apply("sample", other, f"sampler{other.number}", (n,))
        self.apply("consolidate", behind, "machine", ())

    @precondition(lambda self: len(self.opened) < MAX_HANDLES)
    @rule(target=handles)
    def open_handle(self) -> Handle:
        """Open another handle on the same directory, as another worker would."""
        return self._open(self.impl.load(self.root))

    @rule()
    def lose_cache(self) -> None:
        """Delete the trial cache file(s)."""
        for cache in cache_files(self.root):
            cache.unlink()
        self.damage = "D1"

    @rule(kind=st.sampled_from(["garbage", "frame", "pickle", "bad-crc"]), cut=st.integers(1, 40))
    def tear_cache_tail(self, kind: str, cut: int) -> None:
        """Append what a crash mid-append leaves: part of a record, or garbage.

        ``bad-crc``: a whole record of plausible length whose last byte is wrong.
        """
        payload = pickle.dumps(["an append that never finished"])
        whole = frame(payload)
        records = {
            "garbage": os.urandom(cut),
            "frame": whole[: min(cut, len(whole) - 1)],
            "pickle": payload[: min(cut, len(payload) - 1)],
            "bad-crc": whole[:-1] + bytes([whole[-1] ^ 0xFF]),
        }
        for cache in cache_files(self.root):
            with cache.open("ab") as f:
                f.write(records[kind])
            self.damage = "D4"

    @rule(tid=trials)
    def stray_temp_files(self, tid: str) -> None:
        """Leave temp files and a staging folder where a killed writer would."""
        folder = self.root / "configs" / f"config_{tid}"
        if not folder.is_dir():
            return  # (removed)
        (folder / ".metadata.json.tmp-dead01").write_bytes(b'{"id": "half')
        (self.root / ".optimizer_state.pkl.tmp-dead02").write_bytes(b"\x80\x05")
        staging = self.root / "configs" / ".staging-dead03"
        staging.mkdir(exist_ok=True)
        (staging / "config.yaml").write_text("i: 99\n")

    @invariant()
    def state_matches_model(self) -> None:
        """Each handle sees the model; then the directory is consistent.

        One invariant, in this order: the reads are what repairs a damaged cache.
        """
        try:
            self._handles_see_the_model()
            self._directory_is_consistent()
        except AssertionError as e:
            if self.damage == "D10" and not named(str(e)):
                raise finding("D10", f"right after a reset or removal by id: {e}") from e
            raise
        self.damage = None

    def _handles_see_the_model(self) -> None:
        for handle in self.opened:
            k = handle.number
            trials, _ = self.apply("read", handle, "machine", ())  # the model checks the states
            for tid, state, worker in self.model.trials:
                t = trials[tid]
                seen = (t.metadata.state.value, t.metadata.evaluating_worker_id, t.config)
                config = {"imported": tid[9:]} if tid.startswith("imported-") else {"i": int(tid)}
                want = (state, None if state == "pending" else worker, config)
                assert seen == want, f"handle {k}, trial {tid}: {seen} != {want}"
                outcome = None if t.report is None else t.report.reported_as
                err = None if t.report is None or t.report.err is None else str(t.report.err)
                want_report = self.reports.get(tid, (None, None))
                assert (outcome, err) == want_report, f"handle {k}, trial {tid} report"

    def _directory_is_consistent(self) -> None:
        violations = check_run_dir(self.root)
        assert not violations, "\n".join(map(str, violations))
        dump = self.opened[0].state.lock_and_get_errors()
        assert Counter(e.trial_id for e in dump.errs) == +self.errors


def model_machine(impl: Any = None) -> type[NePSStateMachine]:
    """The machine class for an implementation (a class, an ``Impl`` or ``module:attr``)."""
    chosen = Impl() if impl is None else as_impl(impl)
    return type(f"NePSStateMachine[{chosen.target}]", (NePSStateMachine,), {"impl": chosen})
