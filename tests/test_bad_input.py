"""Bad input: a clear error, nothing lost.

Every damaged file of a run directory gets a typed ``NePSError`` that names the file
and says what is wrong (never a bare parser error), and nothing on disk is changed.
Leftover temp files are ignored; a foreign trial cache is rebuilt, the old one kept.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from neps_test_helpers import INFO, make_state, new_opt_state, run_cycle, tree_digest

from neps_state import (
    CorruptedFileError,
    NePSError,
    NePSState,
    NotARunDirectoryError,
    OptimizationState,
    SerializableTrialError,
    Settings,
    Trial,
    TrialRepo,
    UnsafeFileError,
)
from neps_state._journal import MAGIC, frame
from pytest_neps._checker import check_run_dir
from pytest_neps._optimizers import random_search

SETTINGS = Settings(durability="os")
BARE = (
    yaml.YAMLError,
    json.JSONDecodeError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
    UnicodeDecodeError,
)
CACHE = "configs/.trial_cache.journal"
ERRORS = "shared_errors.jsonl"


@dataclass
class Run:
    path: Path
    state: NePSState
    trials: dict[str, Trial]  # as read before any damage
    errors: list[SerializableTrialError]


@pytest.fixture
def run(run_dir: Path) -> Run:
    state = make_state(run_dir)
    run_cycle(state)  # "0": success
    run_cycle(state, error=ValueError("boom"))  # "1": crashed, error record on line 1
    run_cycle(state)  # "2": success
    run_cycle(state, error=RuntimeError("bang"))  # "3": crashed, error record on line 2
    state.lock_and_sample_trial(random_search, worker_id="w1")  # "4": pending, no report
    trials = state.lock_and_read_trials()
    assert sorted(trials) == ["0", "1", "2", "3", "4"]
    errors = state.lock_and_get_errors().errs
    assert [e.trial_id for e in errors] == ["1", "3"]
    return Run(run_dir, state, trials, errors)


def snapshot(root: Path) -> dict[str, str]:
    """``tree_digest`` plus every folder, so an added or removed empty folder shows too."""
    out = tree_digest(root)
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(root)) + "/"] = "<dir>"
    return out


def assert_typed(exc: BaseException, expected: type[NePSError]) -> None:
    """Our own error type, not a bare parser error, and no visible chained parser error."""
    assert type(exc) is expected
    assert type(exc).__module__.startswith("neps_state.")
    assert not isinstance(exc, BARE)
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def names(path: Path, problem: str) -> str:
    """A ``match`` pattern: the message names ``path`` and then says ``problem``."""
    return rf"{re.escape(str(path))}: .*(?:{problem})"


def not_a_run(path: Path, problem: str) -> str:
    """A ``match`` pattern for ``NotARunDirectoryError``: names ``path`` and the problem."""
    return rf"^{re.escape(str(path))} is not a NePS run directory: .*(?:{problem})"


# -- damages: each changes one file (or folder) in place -----------------------------

Damage = Callable[[Path], None]
DROP = object()  # in edit_json / edit_yaml: remove the key


def rewrite(fn: Callable[[bytes], bytes]) -> Damage:
    def damage(path: Path) -> None:
        path.write_bytes(fn(path.read_bytes()))

    return damage


def put(data: bytes) -> Damage:
    return rewrite(lambda _: data)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def cut_mid_key(data: bytes) -> bytes:
    """Cut the last line just before its ':', leaving a key without a value."""
    return data[: data.rindex(b":")]


def _edited(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    obj = dict(obj)
    for key, value in changes.items():
        if value is DROP:
            del obj[key]
        else:
            obj[key] = value
    return obj


def edit_json(**changes: Any) -> Damage:
    return rewrite(lambda b: json.dumps(_edited(json.loads(b), changes)).encode())


def edit_yaml(**changes: Any) -> Damage:
    return rewrite(lambda b: yaml.safe_dump(_edited(yaml.safe_load(b), changes)).encode())


def remove(path: Path) -> None:
    path.unlink()


def replace_by_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def empty_trial_folder(path: Path) -> None:
    path.parent.mkdir()


PYTHON_TAG = b"!!python/object/apply:os.getcwd []\n"
NOT_UTF8 = b"key: \xff\xfe\x80\n"

# -- trial folders: metadata.json, config.yaml, report.yaml -------------------------

M, C, R = (
    "configs/config_0/metadata.json",
    "configs/config_0/config.yaml",
    "configs/config_1/report.yaml",
)
TRIAL_FILE_CASES = [
    pytest.param(M, rewrite(half), "is not valid JSON", id="metadata-half"),
    pytest.param(M, put(b""), "is not valid JSON", id="metadata-empty"),
    pytest.param(M, put(b"{id: 0, state: pending}"), "is not valid JSON", id="metadata-syntax"),
    pytest.param(M, put(b'["0", "success"]'), "is not a JSON object", id="metadata-list"),
    pytest.param(M, edit_json(state=DROP), "lacks the key 'state'", id="metadata-no-state"),
    pytest.param(
        M,
        edit_json(time_sampled="yesterday"),
        r"'time_sampled' .*wrong type \(str\)",
        id="metadata-str",
    ),
    pytest.param(M, edit_json(time_sampled=True), r"wrong type \(bool\)", id="metadata-bool"),
    pytest.param(
        M, edit_json(evaluating_worker_id=7), r"'evaluating_worker_id' .*\(int\)", id="metadata-opt"
    ),
    pytest.param(M, edit_json(state="finished"), "unknown state 'finished'", id="metadata-state"),
    pytest.param(M, edit_json(id="7"), "holds id '7', not the folder's '0'", id="metadata-id"),
    pytest.param(M, put(b'{"id": "\xff"}'), "is not valid JSON", id="metadata-not-utf8"),
    pytest.param(M, remove, "is missing", id="metadata-missing"),
    pytest.param(M, replace_by_dir, "is a directory", id="metadata-is-dir"),
    pytest.param(C, rewrite(cut_mid_key), "is not valid YAML", id="config-cut"),
    # Our writer never writes an empty config.yaml ({} is written as "{}"): empty = truncated.
    pytest.param(C, put(b""), "empty|not a mapping|truncated", id="config-empty"),
    pytest.param(C, put(b"learning_rate: [0.1\n"), "is not valid YAML", id="config-syntax"),
    pytest.param(C, put(b"- 0.1\n- 5\n"), "is not a mapping", id="config-list"),
    pytest.param(C, put(b"adam\n"), "is not a mapping", id="config-scalar"),
    pytest.param(C, put(PYTHON_TAG), "is not valid YAML", id="config-python-tag"),
    pytest.param(C, put(NOT_UTF8), "is not valid YAML", id="config-not-utf8"),
    pytest.param(C, remove, "is missing", id="config-missing"),
    pytest.param(C, replace_by_dir, "is a directory", id="config-is-dir"),
    pytest.param(R, rewrite(half), "is not valid YAML", id="report-half"),
    pytest.param(R, put(b""), "is not a mapping", id="report-empty"),
    pytest.param(R, put(b"cost: [1.0\n"), "is not valid YAML", id="report-syntax"),
    pytest.param(R, put(b"- crashed\n"), "is not a mapping", id="report-list"),
    pytest.param(R, edit_yaml(reported_as=DROP), "lacks reported_as", id="report-no-key"),
    pytest.param(R, edit_yaml(reported_as="exploded"), "'exploded'", id="report-as"),
    pytest.param(R, edit_yaml(cost="cheap"), "cost is not a number", id="report-cost"),
    pytest.param(R, edit_yaml(extra=[1]), "extra is not a mapping", id="report-extra"),
    pytest.param(R, edit_yaml(err=3), "err is not text", id="report-err"),
    pytest.param(R, put(PYTHON_TAG), "is not valid YAML", id="report-python-tag"),
    # Trial 1 is crashed: its report is its result; without the file it is lost.
    pytest.param(R, remove, "is missing", id="report-missing-of-finished"),
    pytest.param(R, replace_by_dir, "is a directory", id="report-is-dir"),
    # A trial folder without its files.
    pytest.param(
        "configs/config_9/metadata.json", empty_trial_folder, "is missing", id="empty-folder"
    ),
]


def _reread_from_folders(run: Run, trial_id: str) -> object:
    # A new handle (as another process gets one) that must rebuild the deleted cache.
    return NePSState(run.path, SETTINGS).lock_and_read_trials()


def _load_rebuilding(run: Run, trial_id: str) -> object:
    return NePSState.create_or_load(run.path, load_only=True, settings=SETTINGS)


TRIAL_READERS: dict[str, Callable[[Run, str], object]] = {
    "load_trial_from_disk": lambda run, tid: TrialRepo(
        run.path / "configs", settings=SETTINGS
    ).load_trial_from_disk(tid),
    "unsafe_retry_get_trial_by_id": lambda run, tid: run.state.unsafe_retry_get_trial_by_id(tid),
    "rebuild-lock_and_read_trials": _reread_from_folders,
    "rebuild-create_or_load": _load_rebuilding,
}


@pytest.mark.parametrize("reader", list(TRIAL_READERS))
@pytest.mark.parametrize(("rel", "damage", "problem"), TRIAL_FILE_CASES)
def test_damaged_trial_file(run: Run, reader: str, rel: str, damage: Damage, problem: str) -> None:
    damaged = run.path / rel
    trial_id = damaged.parent.name.removeprefix("config_")
    damage(damaged)
    rebuild = reader.startswith("rebuild")
    if rebuild:
        (run.path / CACHE).unlink()
    before = snapshot(run.path)
    # (unsafe_retry_get_trial_by_id retries first, then raises the same typed error.)
    expected = CorruptedFileError
    with pytest.raises(expected, match=names(damaged, problem)) as info:
        TRIAL_READERS[reader](run, trial_id)
    assert_typed(info.value, expected)
    if isinstance(info.value, CorruptedFileError):
        assert info.value.path == damaged
    assert snapshot(run.path) == before
    if rebuild:
        assert not (run.path / CACHE).exists(), "a cache was written from damaged folders"


# -- optimizer_info.yaml and optimizer_state.pkl -------------------------------------

INFO_CASES = [
    # 'name: random_searc': still YAML, but cut; our writer always writes both keys.
    pytest.param(rewrite(half), "info|truncated", id="half"),
    pytest.param(rewrite(cut_mid_key), "'info' must be a mapping", id="cut-mid-key"),
    pytest.param(put(b""), "must be a mapping with a string 'name'", id="empty"),
    pytest.param(put(b"name: [random_search\ninfo: {}\n"), "is not valid YAML", id="syntax"),
    pytest.param(put(b"- random_search\n- {seed: 0}\n"), "must be a mapping", id="list"),
    pytest.param(put(b"info: {seed: 0}\n"), "with a string 'name'", id="no-name"),
    pytest.param(put(b"name: 3\ninfo: {}\n"), "with a string 'name'", id="name-not-str"),
    pytest.param(put(b"name: rs\ninfo: [seed, 0]\n"), "'info' must be a mapping", id="info-list"),
    pytest.param(put(PYTHON_TAG), "is not valid YAML", id="python-tag"),
    pytest.param(put(NOT_UTF8), "is not valid YAML", id="not-utf8"),
    pytest.param(replace_by_dir, "is a directory", id="is-dir"),
]

INFO_READERS: dict[str, Callable[[Run], object]] = {
    "load_only": lambda run: NePSState.create_or_load(run.path, load_only=True, settings=SETTINGS),
    "create_or_load": lambda run: make_state(run.path),
    "lock_and_get_optimizer_info": lambda run: run.state.lock_and_get_optimizer_info(),
}


@pytest.mark.parametrize("reader", list(INFO_READERS))
@pytest.mark.parametrize(("damage", "problem"), INFO_CASES)
def test_damaged_optimizer_info(run: Run, reader: str, damage: Damage, problem: str) -> None:
    assert_refused(run, "optimizer_info.yaml", damage, problem, INFO_READERS[reader])


def assert_refused(
    run: Run, name: str, damage: Damage, problem: str, read: Callable[[Run], object]
) -> None:
    """Damage the file ``name``; ``read`` raises a typed error naming it, and changes nothing."""
    damaged = run.path / name
    damage(damaged)
    before = snapshot(run.path)
    with pytest.raises(CorruptedFileError, match=names(damaged, problem)) as info:
        read(run)
    unsafe = problem.startswith("refused to unpickle")
    assert_typed(info.value, UnsafeFileError if unsafe else CorruptedFileError)
    assert info.value.path == damaged
    assert snapshot(run.path) == before


STATE_CASES = [
    pytest.param(rewrite(half), "does not unpickle", id="half"),
    pytest.param(put(b""), "is empty", id="empty"),
    pytest.param(put(b"not a pickle at all"), "does not unpickle", id="garbage"),
    pytest.param(put(pickle.dumps({"budget": None})), "holds a dict, not an Opt", id="wrong-type"),
    pytest.param(
        put(b"cno_such_module_xyz\nThing\n."),
        "refused to unpickle no_such_module_xyz.Thing: not on the allowlist",
        id="unknown-class",
    ),
    pytest.param(
        put(b"cos\nsystem\n(Vtouch /tmp/neps-canary\ntR."),
        "refused to unpickle os.system",
        id="malicious",
    ),
    pytest.param(remove, "is missing", id="missing"),
    pytest.param(replace_by_dir, "is a directory", id="is-dir"),
]

STATE_READERS: dict[str, Callable[[Run], object]] = {
    "load_only": lambda run: NePSState.create_or_load(run.path, load_only=True, settings=SETTINGS),
    "create_or_load": lambda run: make_state(run.path),
    "lock_and_get_optimizer_state": lambda run: run.state.lock_and_get_optimizer_state(),
    "lock_and_sample_trial": lambda run: run.state.lock_and_sample_trial(
        random_search, worker_id="w9"
    ),
}


@pytest.fixture
def fresh(run_dir: Path) -> Run:
    """A run whose journal predates journaled optimizer states (version 1, no records).

    Its ``optimizer_state.pkl`` is then the state's only copy.
    """
    state = make_state(run_dir)
    journal = run_dir / CACHE
    tmp = journal.with_name("legacy")
    tmp.write_bytes(MAGIC + bytes(16))
    tmp.replace(journal)
    return Run(run_dir, state, {}, [])


@pytest.mark.parametrize("reader", list(STATE_READERS))
@pytest.mark.parametrize(("damage", "problem"), STATE_CASES)
def test_damaged_optimizer_state(fresh: Run, reader: str, damage: Damage, problem: str) -> None:
    assert_refused(fresh, "optimizer_state.pkl", damage, problem, STATE_READERS[reader])


@pytest.mark.parametrize(("damage", "problem"), STATE_CASES)
def test_damaged_optimizer_state_file_is_rebuilt_from_the_journal(
    run: Run, damage: Damage, problem: str
) -> None:
    # Once a sample committed its state to the journal, the file is a copy of it:
    # readers use the journal, the checker reports the file, a repair rewrites it.
    path = run.path / "optimizer_state.pkl"
    good = path.read_bytes()
    expected = pickle.dumps(run.state.lock_and_get_optimizer_state())
    damage(path)
    before = snapshot(run.path)
    for name, read in STATE_READERS.items():
        if name != "lock_and_sample_trial":  # (which rewrites the file)
            read(run)
    assert pickle.dumps(run.state.lock_and_get_optimizer_state()) == expected
    assert snapshot(run.path) == before
    assert str(path) in {v.path for v in check_run_dir(run.path)}
    dry = NePSState.repair(run.path, dry_run=True, settings=SETTINGS)
    assert snapshot(run.path) == before
    fixed = NePSState.repair(run.path, settings=SETTINGS)
    assert [str(r) for r in fixed] == [str(r) for r in dry]
    assert [r.path for r in fixed] == [path]
    assert fixed[0].action.startswith("rewritten from the journal")
    assert path.read_bytes() == good
    assert not check_run_dir(run.path)
    STATE_READERS["lock_and_sample_trial"](run)


# -- shared_errors.jsonl ---------------------------------------------------------------

_REC = '"trial_id":"3","worker_id":"w0","err_type":"RuntimeError","err":"bang"'
BAD_LINES = [
    pytest.param(b'{"trial_id": "3", "worker_id"\n', "not valid JSON", id="invalid-json"),
    pytest.param(b'{"trial_id": "\xff\xfe"}\n', "not valid JSON|UTF-8", id="not-utf8"),
    pytest.param(b"[1, 2]\n", "is not a JSON object", id="list"),
    pytest.param(b"42\n", "is not a JSON object", id="scalar"),
    pytest.param(b'{"trial_id":"3","err":"bang"}\n', "lacks worker_id, err_type, tb", id="keys"),
    pytest.param(f'{{{_REC},"tb":5}}\n'.encode(), "tb is not a string or null", id="tb-int"),
    pytest.param(
        f'{{{_REC},"tb":null}}\n'.replace('"3"', "3").encode(),
        "trial_id is not a string",
        id="trial-id-int",
    ),
]


@pytest.mark.parametrize("torn_tail", [False, True], ids=["clean-end", "torn-end"])
@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_bad_complete_error_line(run: Run, line: bytes, problem: str, torn_tail: bool) -> None:
    damaged = run.path / ERRORS
    first, _ = damaged.read_bytes().splitlines(keepends=True)
    damaged.write_bytes(first + line + (b'{"trial_id": "5", "wor' if torn_tail else b""))
    before = snapshot(run.path)
    with pytest.raises(CorruptedFileError, match=names(damaged, problem)) as info:
        run.state.lock_and_get_errors()
    assert_typed(info.value, CorruptedFileError)
    assert info.value.path == damaged
    assert re.search(r"\bline 2\b", info.value.problem), "the message must name the line"
    assert snapshot(run.path) == before  # a torn tail is not moved aside before the error


TORN = [
    pytest.param(lambda b: b + b'{"trial_id": "5", "wor', id="partial-record"),
    pytest.param(lambda b: b[:-10], id="last-line-cut"),
    pytest.param(lambda b: b + b"\x00\x00\x00", id="nul-bytes"),
]


def test_a_whole_last_record_without_newline_is_kept(run: Run) -> None:
    # NePS writes its last record so; only a line that is not a whole record is torn.
    path = run.path / ERRORS
    path.write_bytes(path.read_bytes() + f'{{{_REC},"tb":null}}'.encode())
    before = snapshot(run.path)
    errs = run.state.lock_and_get_errors().errs
    assert errs[:-1] == run.errors
    assert (errs[-1].trial_id, errs[-1].err) == ("3", "bang")
    assert snapshot(run.path) == before
    assert not list(run.path.glob(f"{ERRORS}.torn-*"))


@pytest.mark.parametrize("damage", TORN)
def test_torn_error_tail_is_moved_aside(
    run: Run, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    path = run.path / ERRORS
    data = damage(path.read_bytes())
    path.write_bytes(data)
    good_end = data.rfind(b"\n") + 1
    good, tail = data[:good_end], data[good_end:]
    before = snapshot(run.path)
    with caplog.at_level(logging.WARNING, logger="neps_state"):
        errs = run.state.lock_and_get_errors()
    assert errs.errs == run.errors[: good.count(b"\n")]
    asides = list(run.path.glob(f"{ERRORS}.torn-*"))
    assert len(asides) == 1
    assert asides[0].read_bytes() == tail, "the partial bytes must be preserved"
    assert path.read_bytes() == good
    assert str(path) in caplog.text
    assert str(asides[0]) in caplog.text
    after = snapshot(run.path)
    del after[asides[0].name], after[ERRORS], before[ERRORS]
    assert after == before, "nothing but the error file and its aside may change"
    # Once moved aside, the file is clean: the same records, no second aside.
    assert run.state.lock_and_get_errors().errs == errs.errs
    assert list(run.path.glob(f"{ERRORS}.torn-*")) == asides


# -- leftover temp files ----------------------------------------------------------------

LEFTOVERS = {
    "optimizer_state.pkl.tmp-abc": b"\x80\x05garbage",
    ".optimizer_state.pkl.tmp-0a1b2c3d4e5f": b"half a pickle",
    ".optimizer_info.yaml.tmp-3d4e5f": b"name: [",
    ".shared_errors.jsonl.tmp-1": b'{"trial_id":',
    "configs/.trial_cache.journal.tmp-77": b"NEPSJRN1",
    "configs/config_0/.metadata.json.tmp-123": b'{"id": "0", "sta',
    "configs/config_1/.report.yaml.tmp-456": b"reported_as: [",
    "configs/.staging-xyz/metadata.json": b'{"id": "99"',
    "configs/.staging-xyz/config.yaml": b"a: [",
    "configs/.trash-config_7-abcd/metadata.json": b"{",
}


def add_leftovers(root: Path) -> None:
    for rel, data in LEFTOVERS.items():
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(data)


def test_leftover_temp_files_are_ignored_by_reads(run: Run) -> None:
    add_leftovers(run.path)
    before = snapshot(run.path)
    state = NePSState.create_or_load(run.path, load_only=True, settings=SETTINGS)
    assert state.lock_and_read_trials() == run.trials
    assert sorted(state.all_trial_ids()) == sorted(run.trials)
    repo = TrialRepo(run.path / "configs", settings=SETTINGS)
    assert sorted(repo.list_trial_ids()) == sorted(run.trials)
    for tid, trial in run.trials.items():
        assert repo.load_trial_from_disk(tid) == trial
        assert state.unsafe_retry_get_trial_by_id(tid) == trial
        assert state.lock_and_get_trial_by_id(tid) == trial
    pending = state.lock_and_get_next_pending_trial()
    assert pending is not None
    assert pending.id == "4"
    assert state.lock_and_get_errors().errs == run.errors
    assert state.lock_and_get_optimizer_info() == INFO
    assert isinstance(state.lock_and_get_optimizer_state(), OptimizationState)
    assert snapshot(run.path) == before


def test_leftover_temp_files_do_not_disturb_rebuild_and_writes(run: Run) -> None:
    add_leftovers(run.path)
    (run.path / CACHE).unlink()
    state = NePSState.create_or_load(run.path, load_only=True, settings=SETTINGS)
    assert state.lock_and_read_trials() == run.trials  # rebuilt from the config_* folders only
    reported = run_cycle(state, "w5")  # samples "5", claims and reports the earliest: "4"
    assert reported.id == "4"
    trials = NePSState(run.path, SETTINGS).lock_and_read_trials()
    assert sorted(trials) == ["0", "1", "2", "3", "4", "5"]
    assert trials["4"].metadata.state is Trial.State.SUCCESS
    assert trials["5"].metadata.state is Trial.State.PENDING


# -- a run directory that is not one -----------------------------------------------------


def _create(path: Path) -> NePSState:
    return NePSState.create_or_load(
        path, optimizer_info=INFO, optimizer_state=new_opt_state(), settings=SETTINGS
    )


def _load(path: Path) -> NePSState:
    return NePSState.create_or_load(path, load_only=True, settings=SETTINGS)


OPENERS = [pytest.param(_create, id="create"), pytest.param(_load, id="load_only")]


@pytest.mark.parametrize("opener", OPENERS)
def test_path_is_a_regular_file(tmp_path: Path, opener: Callable[[Path], NePSState]) -> None:
    path = tmp_path / "run"
    path.write_bytes(b"not a run directory\n")
    before = snapshot(tmp_path)
    with pytest.raises(NotARunDirectoryError, match=not_a_run(path, "not a directory")) as info:
        opener(path)
    assert_typed(info.value, NotARunDirectoryError)
    assert info.value.path == path
    assert snapshot(tmp_path) == before


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "content", [None, {}, {"notes.txt": b"hi"}], ids=["absent", "empty", "unrelated-file"]
)
def test_load_only_without_optimizer_info(tmp_path: Path, content: dict[str, bytes] | None) -> None:
    path = tmp_path / "run"
    if content is not None:
        path.mkdir()
        for name, data in content.items():
            (path / name).write_bytes(data)
    before = _listing(tmp_path)
    with pytest.raises(NotARunDirectoryError, match=not_a_run(path, "no optimizer_info.yaml")) as i:
        _load(path)
    assert_typed(i.value, NotARunDirectoryError)
    assert i.value.path == path
    assert _listing(tmp_path) == before  # nothing at all is written, not even lock files


@pytest.mark.parametrize(
    ("opener", "problem"),
    [
        pytest.param(_create, "holds trial folders but no optimizer_info.yaml", id="create"),
        pytest.param(_load, "has no optimizer_info.yaml", id="load_only"),
    ],
)
def test_trial_folders_without_optimizer_info(
    run: Run, opener: Callable[[Path], NePSState], problem: str
) -> None:
    (run.path / "optimizer_info.yaml").unlink()
    before = snapshot(run.path)
    with pytest.raises(NotARunDirectoryError, match=not_a_run(run.path, problem)) as info:
        opener(run.path)
    assert_typed(info.value, NotARunDirectoryError)
    assert info.value.path == run.path
    assert snapshot(run.path) == before  # optimizer_state.pkl kept, no info written


def test_bare_trial_folders_are_not_taken_over(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run.path / "configs" / "config_0", other / "configs" / "config_0")
    before = snapshot(other)
    with pytest.raises(
        NotARunDirectoryError, match=not_a_run(other, "holds trial folders")
    ) as info:
        _create(other)
    assert_typed(info.value, NotARunDirectoryError)
    assert info.value.path == other
    assert snapshot(other) == before  # no optimizer files, no cache, no intent marker


@pytest.mark.parametrize("variant", ["missing", "a-file"])
def test_configs_folder_missing_or_not_a_folder(run: Run, variant: str) -> None:
    configs = run.path / "configs"
    shutil.rmtree(configs)
    if variant == "a-file":
        configs.write_bytes(b"")
    before = snapshot(run.path)
    with pytest.raises((NotARunDirectoryError, CorruptedFileError)) as info:
        _load(run.path)
    assert_typed(info.value, type(info.value))  # either of the two, nothing bare
    assert str(configs) in str(info.value)
    assert snapshot(run.path) == before


# -- a trial cache that is not ours ---------------------------------------------------------


def _neps_cache(run: Run) -> bytes:
    # NePS itself pickles plain trial records into .trial_cache.pkl.
    return pickle.dumps({tid: {"config": t.config} for tid, t in run.trials.items()})


FOREIGN = [
    pytest.param(_neps_cache, id="neps-pickled-dict"),
    pytest.param(lambda _: b"", id="empty"),
    pytest.param(lambda _: b"this is not a trial cache\n", id="text"),
    pytest.param(lambda _: b"NEPSJRN1\x00\x01", id="cut-header"),
]


@pytest.mark.parametrize("content", FOREIGN)
def test_foreign_cache_is_rebuilt_and_kept(
    run: Run, content: Callable[[Run], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    cache = run.path / CACHE
    old_bytes = content(run)
    cache.unlink()
    cache.write_bytes(old_bytes)
    before = snapshot(run.path)
    with caplog.at_level(logging.WARNING, logger="neps_state"):
        state = NePSState.create_or_load(run.path, load_only=True, settings=SETTINGS)
        assert state.lock_and_read_trials() == run.trials
    kept = list(cache.parent.glob(".trial_cache.journal.old-*"))
    assert len(kept) == 1
    assert kept[0].read_bytes() == old_bytes, "the foreign cache must be kept as it was"
    assert "not a neps_state journal" in caplog.text
    assert str(kept[0]) in caplog.text
    assert cache.read_bytes().startswith(b"NEPSJRN1")
    after = snapshot(run.path)
    del after[f"configs/{kept[0].name}"], after[CACHE], before[CACHE]
    assert after == before
    # Rebuilt once: a new handle reads the new cache and keeps no second copy.
    assert NePSState(run.path, SETTINGS).lock_and_read_trials() == run.trials
    assert list(cache.parent.glob(".trial_cache.journal.old-*")) == kept


@pytest.mark.parametrize("where", ["appended", "new-generation"])
def test_a_record_that_does_not_decode_stops_every_open_handle(run: Run, where: str) -> None:
    """An open handle reports a bad record at every call, not once, and commits nothing.

    A checksummed record that does not decode (a bug or a hand edit elsewhere) once
    raised at the first read, was then skipped, and the next commit went behind it.
    """
    cache = run.path / CACHE
    bad = frame(b"\x80not a record")
    if where == "appended":
        with cache.open("ab") as f:
            f.write(bad)
    else:  # a new generation (a new inode), as a consolidation writes, ending in it
        tmp = cache.with_name("new")
        tmp.write_bytes(cache.read_bytes() + bad)
        tmp.replace(cache)
    before = snapshot(run.path)
    calls: list[Callable[[], object]] = [
        run.state.lock_and_read_trials,
        run.state.lock_and_read_trials,
        lambda: run.state.lock_and_sample_trial(random_search, worker_id="w"),
        lambda: run.state.lock_and_claim_next_pending_trial("w"),
        lambda: run.state.lock_and_get_trial_by_id("0"),
    ]
    for call in calls:
        with pytest.raises(CorruptedFileError, match=names(cache, "does not unpickle")) as info:
            call()
        assert_typed(info.value, CorruptedFileError)
    assert snapshot(run.path) == before
