"""NePSState's public API, one process."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from neps_test_helpers import INFO, make_state, new_opt_state, run_cycle

from neps_state import (
    BudgetInfo,
    ErrDump,
    IllegalTransitionError,
    InvalidSampleError,
    InvalidTrialIdError,
    NePSState,
    NotARunDirectoryError,
    OptimizationState,
    OptimizerInfo,
    OptimizerInfoMismatchError,
    SampledConfig,
    SeedSnapshot,
    Settings,
    Trial,
    TrialAlreadyExistsError,
    TrialNotFoundError,
    TrialRepo,
)
from pytest_neps._optimizers import batch_sampler, random_search


def fixed(*ids: str, previous: str | None = None):
    """An ask function proposing exactly these ids."""

    def ask(trials, budget_info, n=None):
        configs = [SampledConfig(id=i, config={"i": i}, previous_config_id=previous) for i in ids]
        return configs[0] if n is None else configs

    return ask


def test_create_writes_neps_layout(run_dir: Path) -> None:
    make_state(run_dir)
    assert yaml.safe_load((run_dir / "optimizer_info.yaml").read_text()) == {
        "name": INFO.name,
        "info": dict(INFO.info),
    }
    assert (run_dir / "optimizer_state.pkl").is_file()
    assert (run_dir / "configs").is_dir()
    assert (run_dir / "configs" / ".trial_cache.journal").is_file()


def test_sample_one_and_many(state: NePSState) -> None:
    one = state.lock_and_sample_trial(random_search, worker_id="w0")
    assert isinstance(one, Trial)
    assert one.id == "0"
    many = state.lock_and_sample_trial(random_search, worker_id="w0", n=3)
    assert [t.id for t in many] == ["1", "2", "3"]
    assert sorted(state.all_trial_ids()) == ["0", "1", "2", "3"]
    assert all(
        t.metadata.state is Trial.State.PENDING for t in state.lock_and_read_trials().values()
    )
    assert one.metadata.location == str(state.path / "configs" / "config_0")


def test_sampled_trial_folder_holds_neps_files(state: NePSState) -> None:
    t = state.lock_and_sample_trial(fixed("a"), worker_id="w7")
    folder = state.path / "configs" / "config_a"
    assert yaml.safe_load((folder / "config.yaml").read_text()) == {"i": "a"}
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["id"] == "a"
    assert meta["state"] == "pending"
    assert meta["sampling_worker_id"] == "w7"
    assert meta["time_sampled"] == t.metadata.time_sampled
    assert not (folder / "report.yaml").exists()
    assert not (folder / "previous_trial_id.txt").exists()


def test_previous_config_id_must_exist(state: NePSState) -> None:
    with pytest.raises(TrialNotFoundError, match="'nope'"):
        state.lock_and_sample_trial(fixed("a", previous="nope"), worker_id="w0")
    assert state.all_trial_ids() == []
    state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    b = state.lock_and_sample_trial(fixed("b", previous="a"), worker_id="w0")
    assert b.metadata.previous_trial_id == "a"
    assert b.metadata.previous_trial_location == str(state.path / "configs" / "config_a")
    assert (state.path / "configs" / "config_b" / "previous_trial_id.txt").read_text() == "a"


def test_batch_sampler_links_previous(state: NePSState) -> None:
    state.lock_and_sample_trial(batch_sampler, worker_id="w0", n=2)
    third = state.lock_and_sample_trial(batch_sampler, worker_id="w0")
    assert third.metadata.previous_trial_id == "1"


def test_optimizer_must_return_sampled_configs(state: NePSState) -> None:
    with pytest.raises(InvalidSampleError):
        state.lock_and_sample_trial(lambda **_: {"id": "x"}, worker_id="w0")  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidSampleError, match="returned 2"):
        state.lock_and_sample_trial(fixed("a", "b"), worker_id="w0", n=1)
    with pytest.raises(InvalidTrialIdError):
        state.lock_and_sample_trial(fixed("../x"), worker_id="w0")
    assert state.all_trial_ids() == []


@dataclass
class ForeignSample:
    """A sample of another class with NePS's shape (as NePS's own SampledConfig)."""

    id: object
    config: object
    previous_config_id: object = None


def test_any_sample_with_neps_shape_is_accepted(state: NePSState) -> None:
    def ask(trials: Mapping[str, Trial], budget_info: object, n: int | None = None) -> object:
        if not trials:
            return ForeignSample("a", {"x": 1})
        return [ForeignSample("b", {"x": 2}, "a"), ForeignSample("c", {"x": 3})]

    a = state.lock_and_sample_trial(ask, worker_id="w0")  # type: ignore[arg-type]
    b, c = state.lock_and_sample_trial(ask, worker_id="w0", n=2)  # type: ignore[arg-type]
    assert (a.id, a.config, b.metadata.previous_trial_id, c.id) == ("a", {"x": 1}, "a", "c")


@pytest.mark.parametrize(
    ("sample", "problem"),
    [
        (ForeignSample(7, {}), "id must be a str, not int 7"),
        (ForeignSample("a", ["x"]), r"\('a'\): config must be a mapping"),
        (ForeignSample("a", {}, 3), "previous_config_id must be a str or None, not 3"),
        ({"id": "a", "config": {}}, "has no id or config"),
    ],
    ids=["id-int", "config-list", "previous-int", "dict"],
)
def test_a_sample_of_the_wrong_shape_says_what_is_wrong(
    state: NePSState, sample: object, problem: str
) -> None:
    with pytest.raises(InvalidSampleError, match=problem):
        state.lock_and_sample_trial(lambda **_: sample, worker_id="w0")  # type: ignore[arg-type,return-value]
    assert state.all_trial_ids() == []


def test_duplicate_id_raises_and_changes_nothing(state: NePSState) -> None:
    state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    before = state.lock_and_read_trials()
    with pytest.raises(TrialAlreadyExistsError, match="'a'"):
        state.lock_and_sample_trial(fixed("a"), worker_id="w1")
    with pytest.raises(TrialAlreadyExistsError):
        state.lock_and_sample_trial(fixed("b", "b"), worker_id="w1", n=2)
    assert state.lock_and_read_trials() == before


def test_claim_takes_earliest_pending_once(state: NePSState) -> None:
    state.lock_and_sample_trial(random_search, worker_id="w0", n=3)
    claimed = [state.lock_and_claim_next_pending_trial(f"w{i}") for i in range(4)]
    assert [t.id if t else None for t in claimed] == ["0", "1", "2", None]
    assert claimed[0] is not None
    assert claimed[0].metadata.state is Trial.State.EVALUATING
    assert claimed[0].metadata.evaluating_worker_id == "w0"
    on_disk = json.loads((state.path / "configs" / "config_0" / "metadata.json").read_text())
    assert on_disk["state"] == "evaluating"
    assert {t.id for t in state.lock_and_get_current_evaluating_trials()} == {"0", "1", "2"}


def test_next_pending_is_earliest_sampled(state: NePSState) -> None:
    assert state.lock_and_get_next_pending_trial() is None
    assert state.lock_and_get_next_pending_trial(n=2) == []
    state.lock_and_sample_trial(fixed("z"), worker_id="w0")
    state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    state.lock_and_sample_trial(fixed("m"), worker_id="w0")
    nxt = state.lock_and_get_next_pending_trial()
    assert nxt is not None
    assert nxt.id == "z"
    assert [t.id for t in state.lock_and_get_next_pending_trial(n=2)] == ["z", "a"]
    assert state.lock_and_get_next_pending_trial(n=0) == []
    # Reading does not claim.
    assert state.lock_and_get_next_pending_trial().id == "z"  # type: ignore[union-attr]


def test_report_success_failed_crashed_and_errors(state: NePSState) -> None:
    ok = run_cycle(state)
    bad = run_cycle(state, error=ValueError("boom"))
    trials = state.lock_and_read_trials()
    assert trials[ok.id].metadata.state is Trial.State.SUCCESS
    assert trials[ok.id].report is not None
    assert trials[bad.id].metadata.state is Trial.State.CRASHED
    assert str(trials[bad.id].report.err) == "boom"  # type: ignore[union-attr]
    errs = state.lock_and_get_errors()
    assert isinstance(errs, ErrDump)
    assert len(errs) == 1
    rec = errs.errs[0]
    assert (rec.trial_id, rec.worker_id, rec.err_type, rec.err) == (
        bad.id,
        "w0",
        "ValueError",
        "boom",
    )
    assert rec.tb == "Traceback..."
    report = yaml.safe_load(
        (state.path / "configs" / f"config_{ok.id}" / "report.yaml").read_text()
    )
    assert report["reported_as"] == "success"
    assert report["objective_to_minimize"] == 0.5
    assert report["err"] is None
    raisable = errs.latest_err_as_raisable()
    assert raisable is not None
    assert "boom" in str(raisable)


def test_report_needs_an_evaluating_trial(state: NePSState) -> None:
    t = state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    report = t.set_complete(
        report_as="success",
        time_end=1.0,
        objective_to_minimize=1.0,
        cost=None,
        learning_curve=None,
        err=None,
        tb=None,
        extra=None,
        evaluation_duration=None,
    )
    with pytest.raises(IllegalTransitionError, match="pending"):
        state.lock_and_report_trial_evaluation(t, report, worker_id="w0")
    done = run_cycle(state)
    again = state.lock_and_get_trial_by_id(done.id)
    assert again.report is not None
    with pytest.raises(IllegalTransitionError):
        state.lock_and_report_trial_evaluation(again, again.report, worker_id="w0")


def test_put_updated_trial_only_legal_changes(state: NePSState) -> None:
    t = state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    t.set_evaluating(time_started=1.0, worker_id="w1")
    state.put_updated_trial(t)
    stolen = state.lock_and_get_trial_by_id("a")
    stolen.set_evaluating(time_started=2.0, worker_id="w2")
    with pytest.raises(IllegalTransitionError, match="w1"):
        state.put_updated_trial(stolen)
    t.reset()
    state.put_updated_trial(t, hints="metadata")
    assert state.lock_and_get_trial_by_id("a").metadata.state is Trial.State.PENDING
    t.set_corrupted()
    state.put_updated_trial(t, hints=["metadata"])
    assert state.lock_and_get_trial_by_id("a").metadata.state is Trial.State.CORRUPTED
    with pytest.raises(ValueError, match="Unknown write hint"):
        state.put_updated_trial(t, hints="state")  # type: ignore[arg-type]


def test_update_rewrites_changed_files_even_if_not_hinted(state: NePSState) -> None:
    t = state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    t.config["extra"] = 1
    state.put_updated_trial(t, hints="metadata")
    config = yaml.safe_load((state.path / "configs" / "config_a" / "config.yaml").read_text())
    assert config == {"i": "a", "extra": 1}


def test_reset_removes_report_file(state: NePSState) -> None:
    done = run_cycle(state)
    folder = state.path / "configs" / f"config_{done.id}"
    assert (folder / "report.yaml").exists()
    t = state.lock_and_get_trial_by_id(done.id)
    t.reset()
    state.put_updated_trial(t)
    assert not (folder / "report.yaml").exists()
    assert state.lock_and_get_next_pending_trial().id == done.id  # type: ignore[union-attr]


def test_get_trial_by_id(state: NePSState) -> None:
    t = state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    assert state.lock_and_get_trial_by_id("a") == t
    assert state.unsafe_retry_get_trial_by_id("a") == t
    with pytest.raises(TrialNotFoundError) as info:
        state.lock_and_get_trial_by_id("b")
    assert isinstance(info.value, KeyError)
    with pytest.raises(TrialNotFoundError):
        state.unsafe_retry_get_trial_by_id("b")
    with pytest.raises(InvalidTrialIdError):
        state.lock_and_get_trial_by_id("../a")


def test_returned_trials_are_copies(state: NePSState) -> None:
    t = state.lock_and_sample_trial(fixed("a"), worker_id="w0")
    t.config["i"] = "mutated"
    t.metadata.state = Trial.State.CORRUPTED
    read = state.lock_and_read_trials()["a"]
    assert read.config == {"i": "a"}
    read.config["i"] = "again"
    assert state.lock_and_get_trial_by_id("a").config == {"i": "a"}


def test_optimizer_sees_copies(state: NePSState) -> None:
    state.lock_and_sample_trial(fixed("a"), worker_id="w0")

    def vandal(trials, budget_info, n=None):
        for trial in trials.values():
            trial.config["i"] = "vandalized"
        return SampledConfig(id=str(len(trials)), config={})

    state.lock_and_sample_trial(vandal, worker_id="w0")
    assert state.lock_and_get_trial_by_id("a").config == {"i": "a"}


def test_budget_info_is_computed_from_trials(run_dir: Path) -> None:
    state = make_state(run_dir, max_evaluations=10)
    seen: list[BudgetInfo] = []

    def ask(trials, budget_info, n=None):
        seen.append(budget_info)
        return SampledConfig(id=str(len(trials)), config={})

    costs = [0.1, 0.2, 0.3]
    for cost in costs:
        state.lock_and_sample_trial(ask, worker_id="w0")
        t = state.lock_and_claim_next_pending_trial("w0")
        assert t is not None
        r = t.set_complete(
            report_as="success",
            time_end=1,
            objective_to_minimize=1,
            cost=cost,
            learning_curve=None,
            err=None,
            tb=None,
            extra=None,
            evaluation_duration=None,
        )
        state.lock_and_report_trial_evaluation(t, r, worker_id="w0")
    state.lock_and_sample_trial(ask, worker_id="w0")
    assert [b.used_evaluations for b in seen] == [0, 1, 2, 3]
    assert seen[-1].used_cost_budget == math.fsum(costs)
    assert seen[-1].max_evaluations == 10


def test_no_budget_passes_none(state: NePSState) -> None:
    seen = []

    def ask(trials, budget_info, n=None):
        seen.append(budget_info)
        return SampledConfig(id="a", config={})

    state.lock_and_sample_trial(ask, worker_id="w0")
    assert seen == [None]


def test_seed_snapshot_is_restored_before_and_recaptured_after(run_dir: Path) -> None:
    random.seed(1234)
    state = make_state(run_dir)
    draws = []

    def ask(trials, budget_info, n=None):
        draws.append(random.random())
        return SampledConfig(id=str(len(trials)), config={})

    state.lock_and_sample_trial(ask, worker_id="w0")
    random.seed(999)  # the caller's RNG use must not leak into the run's sequence
    state.lock_and_sample_trial(ask, worker_id="w0")
    random.seed(1234)
    assert draws == [random.random(), random.random()]


def _drawing(draws: list[float], *, fixed_id: str | None = None) -> Any:
    def ask(trials: Any, budget_info: Any, n: Any = None) -> SampledConfig:
        draws.append(random.random())
        return SampledConfig(id=fixed_id or str(len(trials)), config={})

    return ask


def test_the_run_draws_one_sequence_across_handles(run_dir: Path) -> None:
    """Each sample continues the RNG state the last sample of *any* handle left.

    (A handle keeps its last sample's state object; it must not use it once
    another handle has sampled since.)
    """
    random.seed(1234)
    make_state(run_dir)
    a, b = NePSState.load(run_dir), NePSState.load(run_dir)
    draws: list[float] = []
    for handle in (a, b, a, a, b, a):
        handle.lock_and_sample_trial(_drawing(draws), worker_id="w0")
    random.seed(1234)
    assert draws == [random.random() for _ in range(6)]


def test_a_failed_sample_leaves_the_sequence_alone(run_dir: Path) -> None:
    random.seed(1234)
    state = make_state(run_dir)
    draws: list[float] = []
    state.lock_and_sample_trial(_drawing(draws), worker_id="w0")
    with pytest.raises(TrialAlreadyExistsError):
        state.lock_and_sample_trial(_drawing([], fixed_id="0"), worker_id="w0")
    state.lock_and_sample_trial(_drawing(draws), worker_id="w0")
    random.seed(1234)
    assert draws == [random.random(), random.random()]


def test_seed_snapshot_includes_numpy() -> None:
    np = pytest.importorskip("numpy")
    np.random.seed(7)
    snap = SeedSnapshot.new_capture()
    expected = np.random.random()
    np.random.seed(8)
    snap.set_as_global_seed_state()
    assert np.random.random() == expected
    assert snap.np_rng is not None


def test_optimizer_info_and_state_getters(state: NePSState) -> None:
    assert state.lock_and_get_optimizer_info() == INFO
    opt = state.lock_and_get_optimizer_state()
    assert isinstance(opt, OptimizationState)


def test_optimizer_info_equality_ignores_key_order_and_tuple_vs_list() -> None:
    a = OptimizerInfo("x", {"a": 1, "b": {"c": (1, 2), "d": 3}})
    b = OptimizerInfo("x", {"b": {"d": 3, "c": [1, 2]}, "a": 1})
    assert a == b
    assert a != OptimizerInfo("y", dict(a.info))
    assert a != OptimizerInfo("x", {"a": 2})


def test_load_with_different_info_raises(run_dir: Path) -> None:
    make_state(run_dir)
    with pytest.raises(OptimizerInfoMismatchError, match="does not match"):
        make_state(run_dir, info=OptimizerInfo("other"))
    reordered = OptimizerInfo(INFO.name, dict(reversed(list(INFO.info.items()))))
    make_state(run_dir, info=reordered)


def test_load_only(run_dir: Path) -> None:
    with pytest.raises(NotARunDirectoryError, match=r"optimizer_info\.yaml"):
        NePSState.create_or_load(run_dir, load_only=True)
    assert not run_dir.exists()
    made = make_state(run_dir)
    run_cycle(made)
    loaded = NePSState.create_or_load(run_dir, load_only=True)
    assert loaded.lock_and_read_trials() == made.lock_and_read_trials()


def test_create_needs_info_and_state(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="optimizer_info"):
        NePSState.create_or_load(run_dir, optimizer_info=INFO)


def test_handles_see_each_others_changes(run_dir: Path) -> None:
    a = make_state(run_dir)
    b = make_state(run_dir)
    run_cycle(a, "wa")
    run_cycle(b, "wb")
    assert a.lock_and_read_trials() == b.lock_and_read_trials()
    assert len(a.all_trial_ids()) == 2


def test_handle_pickles(state: NePSState) -> None:
    run_cycle(state)
    copy = pickle.loads(pickle.dumps(state))
    assert copy.path == state.path
    run_cycle(copy)
    assert state.lock_and_read_trials() == copy.lock_and_read_trials()


def test_consolidation_keeps_everything(run_dir: Path) -> None:
    settings = Settings(durability="os", consolidation_limit=3, consolidation_ratio=0)
    a = make_state(run_dir, settings=settings)
    b = make_state(run_dir, settings=settings)
    for i in range(10):
        run_cycle(a if i % 2 else b, f"w{i % 2}")
    assert a.lock_and_read_trials() == b.lock_and_read_trials()
    assert len(a.lock_and_read_trials()) == 10
    fresh = NePSState.create_or_load(run_dir, load_only=True, settings=settings)
    assert fresh.lock_and_read_trials() == a.lock_and_read_trials()


def test_trial_repo_api(run_dir: Path) -> None:
    state = make_state(run_dir)
    repo = TrialRepo(run_dir / "configs", settings=Settings(durability="os"))
    assert repo.latest() == {}
    t = Trial.new(
        trial_id="x",
        config={"a": 1},
        location="loc",
        previous_trial=None,
        previous_trial_location=None,
        time_sampled=1.0,
        worker_id="w",
    )
    u = Trial.new(
        trial_id="y",
        config={"a": 2},
        location="loc",
        previous_trial=None,
        previous_trial_location=None,
        time_sampled=2.0,
        worker_id="w",
    )
    repo.store_new_trial([t, u])
    assert sorted(repo.list_trial_ids()) == ["x", "y"]
    assert repo.load_trial_from_disk("x") == t
    t.set_evaluating(time_started=3.0, worker_id="w")
    repo.update_trial(t, hints=["metadata"])
    assert repo.load_trial_from_disk("x") == t
    assert state.lock_and_get_trial_by_id("x") == t
    with pytest.raises(TrialAlreadyExistsError):
        repo.store_new_trial(u)
    with pytest.raises(TrialNotFoundError):
        repo.load_trial_from_disk("z")
    ghost = Trial.new(
        trial_id="z",
        config={},
        location="loc",
        previous_trial=None,
        previous_trial_location=None,
        time_sampled=2.0,
        worker_id="w",
    )
    with pytest.raises(TrialNotFoundError):
        repo.update_trial(ghost)


def test_settings_reach_the_state(run_dir: Path) -> None:
    s = Settings(lock_timeout=3, consolidation_limit=5, durability="fsync")
    state = NePSState.create_or_load(
        run_dir, optimizer_info=INFO, optimizer_state=new_opt_state(), settings=s
    )
    assert state.settings == s
    run_cycle(state)
    assert pickle.loads(pickle.dumps(state)).settings == s


def test_sample_and_claim_in_one_commit(run_dir: Path) -> None:
    state, other = make_state(run_dir), make_state(run_dir)
    cache = run_dir / "configs" / ".trial_cache.journal"
    size = cache.stat().st_size
    t = state.lock_and_sample_trial(random_search, worker_id="w1", claim=True)
    assert t.metadata.state is Trial.State.EVALUATING
    assert t.metadata.evaluating_worker_id == "w1"
    records = cache.read_bytes()[size:]
    from neps_state._journal import parse_frames  # noqa: PLC0415

    assert len(parse_frames(records, 0)[0]) == 1  # one commit, not two
    assert other.lock_and_claim_next_pending_trial("w2") is None  # nobody else can take it
    meta = json.loads((run_dir / "configs" / f"config_{t.id}" / "metadata.json").read_text())
    assert (meta["state"], meta["evaluating_worker_id"]) == ("evaluating", "w1")
    batch = state.lock_and_sample_trial(random_search, worker_id="w1", n=3, claim=True)
    assert [b.metadata.state.value for b in batch] == ["evaluating", "pending", "pending"]


def test_idle_claim_sees_a_trial_committed_by_another_handle(run_dir: Path) -> None:
    a, b = make_state(run_dir), make_state(run_dir)
    assert a.lock_and_claim_next_pending_trial("wa") is None  # answered without the lock
    b.lock_and_sample_trial(fixed("x"), worker_id="wb")
    got = a.lock_and_claim_next_pending_trial("wa")
    assert got is not None
    assert got.id == "x"
