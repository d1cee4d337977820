"""Regression tests, one per defect of the seed design (DESIGN.md), each with its negative control.

A negative control runs the same check against a deliberately broken variant from
``pytest_neps.controls`` and asserts the check fails: proof that the test can fail.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import yaml
from _targets import create_rounds, store_same_id_rounds
from neps_test_helpers import INFO, make_state, run_cycle

from neps_state import (
    CorruptedFileError,
    IllegalTransitionError,
    InvalidTrialIdError,
    LockTimeoutError,
    NePSError,
    NePSState,
    NotARunDirectoryError,
    OptimizerInfo,
    OptimizerInfoMismatchError,
    SampledConfig,
    Settings,
    Trial,
    TrialAlreadyExistsError,
    TrialNotFoundError,
    TrialRepo,
)
from neps_state import _pickles as pickles
from neps_state._errors import SettingsError
from neps_state._journal import HEADER_SIZE, frame, parse_frames
from neps_state._trial import MetaData
from pytest_neps import controls
from pytest_neps._checker import check_run_dir
from pytest_neps._procs import Group, Task
from pytest_neps._swarm import run_swarm
from pytest_neps.controls import EmptyAfterCacheLoss, InPlaceWrites

REFERENCE = "neps_state:NePSState"


# -- defect 1: latest() after cache loss returned {} ------------------------------


@pytest.mark.parametrize(("cls", "expected"), [(NePSState, 5), (EmptyAfterCacheLoss, 0)])
def test_cache_loss_first_read_returns_every_trial(
    run_dir: Path, cls: type[NePSState], expected: int
) -> None:
    state = make_state(run_dir, cls=cls)
    for _ in range(5):
        run_cycle(state)
    (run_dir / "configs" / ".trial_cache.journal").unlink()
    fresh = make_state(run_dir, cls=cls)  # loading rebuilds; read again after losing it again
    (run_dir / "configs" / ".trial_cache.journal").unlink()
    assert len(fresh.lock_and_read_trials()) == expected
    assert len(state.lock_and_read_trials()) == 5  # any later read is complete again


# -- defect 2: create_or_load checked the optimizer info without a lock ------------

ROUNDS = 60  # the unlocked control slips through a 20-round run about 1 time in 25 (measured)
INFO_A = OptimizerInfo("A", {"x": 1, "y": [1, 2]})
INFO_A_REORDERED = OptimizerInfo("A", {"y": (1, 2), "x": 1})
INFO_B = OptimizerInfo("B", {"x": 2})


def _race_creators(root: Path, impl: str) -> list[str]:
    infos = [INFO_A, INFO_A_REORDERED, INFO_A, INFO_A_REORDERED, INFO_B, INFO_B, INFO_B, INFO_B]
    group = Group("spawn")
    try:
        barrier = group.ctx.Barrier(len(infos))
        tasks = [
            Task(f"creator{i}", create_rounds, (root, info, ROUNDS, barrier, impl))
            for i, info in enumerate(infos)
        ]
        outcomes = group.run(tasks, timeout=180, together=False)
    finally:
        group.close()
    lost = [o.describe() for o in outcomes if not o.ok]
    assert not lost, "a creator process died:\n" + "\n".join(lost)
    wrong = []
    for r in range(ROUNDS):
        got = [(info.name, o.value[r]) for info, o in zip(infos, outcomes, strict=True)]
        rundir = root / f"r{r}"
        try:
            winner = yaml.safe_load((rundir / "optimizer_info.yaml").read_text())["name"]
            state = rundir / "optimizer_state.pkl"
            pickles.loads(state.read_bytes(), state)  # (a plain pickle.load is refused)
        except Exception as e:  # noqa: BLE001 - a broken file is a wrong round
            wrong.append(f"round {r}: files broken ({e!r}); outcomes {got}")
            continue
        expected = [(name, "ok" if name == winner else "mismatch") for name, _ in got]
        if got != expected:
            wrong.append(f"round {r}: winner {winner}, outcomes {got}")
    return wrong


def test_create_or_load_race_exactly_one_info_wins(tmp_path: Path) -> None:
    wrong = _race_creators(tmp_path, REFERENCE)
    assert not wrong, "\n".join(wrong)


def test_create_or_load_race_catches_the_unlocked_seed_design(tmp_path: Path) -> None:
    wrong = _race_creators(tmp_path, "pytest_neps.controls:UnlockedCreate")
    assert wrong, "the unlocked creator was not caught in any round"


# -- defect 3: files rewritten in place while others read them ---------------------


def test_swarm_never_loses_a_worker_to_a_half_written_file(tmp_path: Path) -> None:
    result = run_swarm(run_dir=tmp_path / "run", workers=4, trials=250, observers=1, timeout=120)
    result.assert_consistent()
    assert result.observers[0].value["reads"] > 100


def test_swarm_catches_in_place_rewrites(tmp_path: Path) -> None:
    result = run_swarm(
        run_dir=tmp_path / "run",
        workers=4,
        trials=250,
        observers=1,
        timeout=120,
        impl="pytest_neps.controls:InPlaceWrites",
    )
    partial = [v for v in result.violations if v.invariant == "no partial reads"]
    assert partial, "in-place rewrites were not caught:\n" + "\n".join(result.problems())


def test_in_place_writes_leave_partial_files_that_atomic_writes_never_do(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a reader (or a crash) sees between the two halves of an in-place write.
    broken = make_state(run_dir, cls=InPlaceWrites)
    seen: list[bytes] = []

    def spying(path: Path, data: bytes) -> None:
        with path.open("wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            seen.append(path.read_bytes())
            f.write(data[len(data) // 2 :])

    monkeypatch.setattr(controls, "write_in_place", spying)
    run_cycle(broken)
    assert seen
    with pytest.raises((EOFError, pickle.UnpicklingError)):
        pickle.loads(seen[0])
    # The reference writes through a temp file: the path only ever holds whole files.
    reference = make_state(run_dir)
    path = run_dir / "optimizer_state.pkl"
    ino = path.stat().st_ino
    run_cycle(reference)
    assert path.stat().st_ino != ino
    pickles.loads(path.read_bytes(), path)


# -- defect 4: unframed cache records; a torn tail broke every reader -------------


def test_torn_cache_tail_is_repaired_and_nothing_is_lost(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(run_dir)
    done = [run_cycle(state).id for _ in range(3)]
    cache = run_dir / "configs" / ".trial_cache.journal"
    torn = frame(pickle.dumps(["half of a record"]))[:-5]
    cache.write_bytes(cache.read_bytes() + torn)
    other = make_state(run_dir)
    with caplog.at_level(logging.WARNING):
        trials = other.lock_and_read_trials()
    assert sorted(trials) == sorted(done)
    assert "not a complete record" in caplog.text
    # No writer died (the in-flight marker is clean), so the damage is unexplained:
    # the cache is rebuilt from the folders rather than trusted.
    assert "Rebuilding" in caplog.text
    _, end = parse_frames(cache.read_bytes(), HEADER_SIZE)
    assert end == cache.stat().st_size  # the tail is gone from the cache ...
    aside = list(cache.parent.glob(".trial_cache.journal.torn-*"))
    assert [p.read_bytes() for p in aside] == [torn]  # ... and kept aside
    run_cycle(other)
    assert len(state.lock_and_read_trials()) == 4
    assert check_run_dir(run_dir) == []


def test_garbage_cache_tail_is_detected_not_unpickled(run_dir: Path) -> None:
    state = make_state(run_dir)
    run_cycle(state)
    cache = run_dir / "configs" / ".trial_cache.journal"
    cache.write_bytes(cache.read_bytes() + os.urandom(64))
    assert len(make_state(run_dir).lock_and_read_trials()) == 1
    assert check_run_dir(run_dir) == []


# -- defect 5: store_new_trial: exists-check then mkdir(exist_ok); cache first ----


SAME_ID_ROUNDS = 100  # one round catches the unlocked control with p ~ 0.05 (measured)


def _race_same_id(root: Path, impl: str, procs: int = 4) -> list[str]:
    make_state(root)
    group = Group("spawn")
    try:
        barrier = group.ctx.Barrier(procs)
        tasks = [
            Task(f"p{i}", store_same_id_rounds, (root, SAME_ID_ROUNDS, barrier, impl))
            for i in range(procs)
        ]
        outcomes = group.run(tasks, timeout=180, together=False)
    finally:
        group.close()
    lost = [o.describe() for o in outcomes if not o.ok]
    if lost:
        return lost
    wrong = []
    for r in range(SAME_ID_ROUNDS):
        got = sorted(o.value[r] for o in outcomes)
        if got != ["TrialAlreadyExistsError"] * (procs - 1) + ["ok"]:
            wrong.append(f"round {r}: {got}")
    return wrong + [str(v) for v in check_run_dir(root)]


def test_racing_stores_of_one_id_exactly_one_wins(tmp_path: Path) -> None:
    wrong = _race_same_id(tmp_path / "run", REFERENCE)
    assert not wrong, "\n".join(wrong)


def test_racing_stores_catch_unlocked_sampling(tmp_path: Path) -> None:
    wrong = _race_same_id(tmp_path / "run", "pytest_neps.controls:UnlockedSampling")
    assert wrong, "unlocked sampling was not caught"


def test_existing_id_raises_and_leaves_the_folder_alone(run_dir: Path) -> None:
    state = make_state(run_dir)
    stray = run_dir / "configs" / "config_x"
    stray.mkdir()
    (stray / "note.txt").write_text("not ours")

    def ask(trials: object, budget_info: object, n: int | None = None) -> SampledConfig:
        return SampledConfig(id="x", config={})

    with pytest.raises(TrialAlreadyExistsError, match="config_x"):
        state.lock_and_sample_trial(ask, worker_id="w")
    assert [p.name for p in stray.iterdir()] == ["note.txt"]


# -- defect 6 is covered by test_crash_recovery.py (consolidation kill points) ---

# -- defect 7: trial ids used as path parts unchecked -----------------------------


def test_trial_id_cannot_escape_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "deep" / "er" / "run"
    state = make_state(run_dir)
    before = sorted(p for p in tmp_path.rglob("*"))

    def ask(trials: object, budget_info: object, n: int | None = None) -> SampledConfig:
        return SampledConfig(id="../../../../escape", config={})

    with pytest.raises(InvalidTrialIdError, match="escape"):
        state.lock_and_sample_trial(ask, worker_id="w")
    sneaky = Trial(
        config={},
        metadata=MetaData(
            id="../../x",
            location="",
            state=Trial.State.PENDING,
            previous_trial_id=None,
            previous_trial_location=None,
            sampling_worker_id="w",
            time_sampled=0.0,
        ),
    )
    repo = TrialRepo(run_dir / "configs", settings=Settings(durability="os"))
    with pytest.raises(InvalidTrialIdError):
        repo.store_new_trial(sneaky)
    with pytest.raises(InvalidTrialIdError):
        state.put_updated_trial(sneaky)
    with pytest.raises(InvalidTrialIdError):
        state.lock_and_get_trial_by_id("../../x")
    with pytest.raises(InvalidTrialIdError):
        repo.load_trial_from_disk("..")
    assert sorted(p for p in tmp_path.rglob("*")) == before


# -- errors: typed, informative, picklable -----------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TrialNotFoundError("7", Path("/r/configs/config_7")),
        TrialAlreadyExistsError("7", Path("/r/configs/config_7")),
        InvalidTrialIdError("../x", "must not contain '..'"),
        IllegalTransitionError("7", "success", "evaluating", "not a legal state change"),
        CorruptedFileError(Path("/r/optimizer_info.yaml"), "is not valid YAML"),
        NotARunDirectoryError(Path("/r"), "it has no optimizer_info.yaml"),
        OptimizerInfoMismatchError(Path("/r"), INFO, INFO_B),
        LockTimeoutError(Path("/r/.configs.lock"), 2.5, "NEPS_STATE_LOCK_TIMEOUT"),
        SettingsError("NEPS_STATE_LOCK_POLL='x'"),
    ],
)
def test_errors_are_typed_and_pickle(error: NePSError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.__dict__ == error.__dict__
    assert isinstance(back, NePSError)
