"""A model-based Hypothesis state machine for any NePS state implementation.

The real state runs beside an in-memory model. Rules sample (one or a batch),
claim, report (success, failed with an error, crashed), update trials with
``put_updated_trial``, force a consolidation, open more handles on the same
directory, and damage the directory the way crashes do (lose the cache file,
tear its tail, leave stray temp files). After every step every handle's view
must equal the model, the cache must agree with the trial folders, and the error
dump must hold one record per reported error.

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
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from neps_state import SampledConfig
from neps_state._journal import frame
from pytest_neps._checker import check_run_dir
from pytest_neps._impl import Impl, as_impl

OUTCOMES = ("success", "failed", "crashed")
MAX_HANDLES = 4


def ask(trials: Mapping[str, Any], budget_info: Any, n: int | None = None) -> Any:
    """Propose trials named like NePS does (``len(trials)`` onwards) with config ``{"i": id}``."""
    del budget_info
    first = len(trials)
    configs = [SampledConfig(id=str(k), config={"i": k}) for k in range(first, first + (n or 1))]
    return configs[0] if n is None else configs


@dataclass
class ModelTrial:
    """What the model knows of one trial."""

    order: int
    state: str = "pending"
    worker: str | None = None
    outcome: str | None = None
    err: str | None = None


class NePSStateMachine(RuleBasedStateMachine):
    """Drive an implementation (``impl``) and an in-memory model side by side."""

    impl: ClassVar[Impl] = Impl()

    def __init__(self) -> None:
        """Create a fresh run directory with one handle on it."""
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="neps-machine-"))
        self.root = self.tmp / "run"
        self.handles = [self.impl.create(self.root)]
        self.model: dict[str, ModelTrial] = {}
        self.errors: Counter[str] = Counter()

    def teardown(self) -> None:
        """Remove the run directory."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def handle(self, h: int) -> Any:
        """One of the open handles."""
        return self.handles[h % len(self.handles)]

    def ids_in(self, *states: str) -> list[str]:
        """Ids of the model's trials in any of ``states``, sorted."""
        return sorted(t for t, m in self.model.items() if m.state in states)

    @rule(h=st.integers(0, MAX_HANDLES - 1), n=st.sampled_from([None, 1, 2, 3]))
    def sample(self, h: int, n: int | None) -> None:
        """Sample one trial (n=None) or a batch."""
        result = self.handle(h).lock_and_sample_trial(ask, worker_id=f"sampler{h}", n=n)
        trials = [result] if n is None else result
        expected = [str(len(self.model) + i) for i in range(n or 1)]
        assert [t.id for t in trials] == expected, f"sampled {[t.id for t in trials]}"
        for tid in expected:
            self.model[tid] = ModelTrial(order=int(tid))

    @rule(h=st.integers(0, MAX_HANDLES - 1), w=st.integers(0, 2))
    def claim(self, h: int, w: int) -> None:
        """Claim the earliest pending trial (or find none)."""
        pending = sorted(self.ids_in("pending"), key=lambda t: self.model[t].order)
        got = self.impl.claim(self.handle(h), f"worker{w}")
        assert (got.id if got else None) == (pending[0] if pending else None)
        if got is not None:
            self.model[got.id].state, self.model[got.id].worker = "evaluating", f"worker{w}"

    @precondition(lambda self: self.ids_in("evaluating"))
    @rule(h=st.integers(0, MAX_HANDLES - 1), data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def report(self, h: int, data: st.DataObject, outcome: str) -> None:
        """Report an evaluating trial as success, failed (with an error) or crashed."""
        tid = data.draw(st.sampled_from(self.ids_in("evaluating")), label="trial")
        state, m = self.handle(h), self.model[tid]
        trial = state.lock_and_get_trial_by_id(tid)
        err = None if outcome == "success" else RuntimeError(f"{outcome} at {tid}")
        report = trial.set_complete(
            report_as=outcome,
            time_end=1.0,
            objective_to_minimize=float(tid) if err is None else None,
            cost=math.nan if tid == "3" else 1.0,
            learning_curve=[1.0, 0.5],
            err=err,
            tb=None if err is None else "Traceback: ...",
            extra={"tid": tid},
            evaluation_duration=0.5,
        )
        state.lock_and_report_trial_evaluation(trial, report, worker_id=m.worker)
        m.state, m.outcome, m.err = outcome, outcome, None if err is None else str(err)
        self.errors[tid] += err is not None

    @precondition(lambda self: self.model)
    @rule(
        h=st.integers(0, MAX_HANDLES - 1),
        data=st.data(),
        action=st.sampled_from(["reset", "corrupt"]),
    )
    def put_updated(self, h: int, data: st.DataObject, action: str) -> None:
        """Reset a trial to pending, or mark it corrupted, with ``put_updated_trial``."""
        tid = data.draw(st.sampled_from(sorted(self.model)), label="trial")
        state, m = self.handle(h), self.model[tid]
        trial = state.lock_and_get_trial_by_id(tid)
        if action == "reset":
            trial.reset()
            m.state, m.worker, m.outcome, m.err = "pending", None, None, None
        else:
            trial.set_corrupted()
            m.state = "corrupted"
        state.put_updated_trial(trial)

    @rule(h=st.integers(0, MAX_HANDLES - 1))
    def consolidate(self, h: int) -> None:
        """Force a cache consolidation (where the implementation has one)."""
        self.impl.consolidate(self.handle(h))

    @precondition(lambda self: len(self.handles) < MAX_HANDLES)
    @rule()
    def open_handle(self) -> None:
        """Open another handle on the same directory, as another worker would."""
        self.handles.append(self.impl.load(self.root))

    @rule()
    def lose_cache(self) -> None:
        """Delete the trial cache file."""
        (self.root / "configs" / ".trial_cache.journal").unlink(missing_ok=True)

    @rule(garbage=st.booleans(), cut=st.integers(1, 40))
    def tear_cache_tail(self, garbage: bool, cut: int) -> None:
        """Append what a crash mid-append leaves: part of a record, or garbage."""
        cache = self.root / "configs" / ".trial_cache.journal"
        if not cache.exists():
            return
        record = frame(pickle.dumps(["an append that never finished"]))
        tail = os.urandom(cut) if garbage else record[: min(cut, len(record) - 1)]
        with cache.open("ab") as f:
            f.write(tail)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def stray_temp_files(self, data: st.DataObject) -> None:
        """Leave temp files and a staging folder where a killed writer would."""
        tid = data.draw(st.sampled_from(sorted(self.model)), label="trial")
        folder = self.root / "configs" / f"config_{tid}"
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
        self._handles_see_the_model()
        self._directory_is_consistent()

    def _handles_see_the_model(self) -> None:
        for k, state in enumerate(self.handles):
            trials = state.lock_and_read_trials()
            assert sorted(trials) == sorted(self.model), f"handle {k} sees {sorted(trials)}"
            for tid, m in self.model.items():
                t = trials[tid]
                seen = (t.metadata.state.value, t.metadata.evaluating_worker_id, t.config)
                want = (m.state, m.worker, {"i": int(tid)})
                if m.state == "pending":
                    want = (m.state, None, {"i": int(tid)})
                assert seen == want, f"handle {k}, trial {tid}: {seen} != {want}"
                outcome = None if t.report is None else t.report.reported_as
                err = None if t.report is None or t.report.err is None else str(t.report.err)
                assert (outcome, err) == (m.outcome, m.err), f"handle {k}, trial {tid} report"

    def _directory_is_consistent(self) -> None:
        violations = check_run_dir(self.root)
        assert not violations, "\n".join(map(str, violations))
        dump = self.handles[0].lock_and_get_errors()
        assert Counter(e.trial_id for e in dump.errs) == +self.errors


def model_machine(impl: Any = None) -> type[NePSStateMachine]:
    """The machine class for an implementation (a class, an ``Impl`` or ``module:attr``)."""
    chosen = Impl() if impl is None else as_impl(impl)
    return type(f"NePSStateMachine[{chosen.target}]", (NePSStateMachine,), {"impl": chosen})
