"""Run directories NePS 0.17 wrote: legal input for check, show and the state.

``tests/data/neps-0.17-run`` was written by two real NePS 0.17 workers
(``tests/data/make_neps_run.py``): priorband, trials continuing others, one error
record, NePS's last error record without a newline, NePS's own pickles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from neps_test_helpers import completed, make_state, run_cycle

from neps_state import NePSState, SampledConfig, Settings
from pytest_neps._checker import check_run_dir
from pytest_neps._optimizers import random_search
from pytest_neps.cli import main

NEPS_RUN = Path(__file__).parent / "data" / "neps-0.17-run"


def test_check_finds_nothing_wrong_with_a_run_neps_wrote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its optimizer state is a pickle of NePS's classes: read through stand-ins (and
    # the allowlist), with or without NePS installed.
    notes: list[str] = []
    assert check_run_dir(NEPS_RUN, notes=notes) == []
    assert notes == []
    assert main(["check", str(NEPS_RUN)]) == 0
    assert capsys.readouterr().out == f"{NEPS_RUN}: OK\n"


def test_show_reads_a_run_neps_wrote(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(NEPS_RUN)]) == 0
    out = capsys.readouterr().out
    assert f"{NEPS_RUN}: 14 trials" in out
    assert "error records: 1" in out
    assert "unreadable" not in out


def test_the_state_resumes_a_run_neps_wrote(tmp_path: Path) -> None:
    # With or without NePS installed: its optimizer state is taken over from stand-ins.
    run = tmp_path / "run"
    shutil.copytree(NEPS_RUN, run)
    folders = {p.name[len("config_") :] for p in (run / "configs").glob("config_*")}
    state = NePSState.create_or_load(run, load_only=True, settings=Settings(durability="os"))
    trials = state.lock_and_read_trials()
    assert set(trials) == folders
    assert trials["7_rung_1"].metadata.previous_trial_id == "7_rung_0"
    assert [e.trial_id for e in state.lock_and_get_errors().errs] == ["9_rung_0"]
    assert state.lock_and_get_optimizer_state().seed_snapshot.np_rng is not None
    trial = state.lock_and_sample_trial(random_search, worker_id="after-neps", claim=True)
    state.lock_and_report_trial_evaluation(trial, completed(trial), worker_id="after-neps")
    assert not check_run_dir(run)
    neps_cache = run / "configs" / ".trial_cache.pkl"
    assert neps_cache.read_bytes() == (NEPS_RUN / "configs" / ".trial_cache.pkl").read_bytes()


def test_a_last_error_record_without_newline_is_a_record_and_stays_one(run_dir: Path) -> None:
    state = make_state(run_dir)
    run_cycle(state, error=ValueError("first"))
    dump = run_dir / "shared_errors.jsonl"
    dump.write_bytes(dump.read_bytes().rstrip(b"\n"))  # as NePS writes it
    assert [e.err for e in state.lock_and_get_errors().errs] == ["first"]
    run_cycle(state, error=ValueError("second"))
    lines = dump.read_bytes().splitlines()
    assert [json.loads(line)["err"] for line in lines] == ["first", "second"]
    assert not check_run_dir(run_dir)


def test_the_checker_follows_fidelity_chains(run_dir: Path) -> None:
    state = make_state(run_dir)

    def chain(trials: object, budget_info: object, n: int | None = None) -> SampledConfig:
        if not trials:
            return SampledConfig(id="1_rung_0", config={"epochs": 1})
        return SampledConfig(id="1_rung_1", config={"epochs": 3}, previous_config_id="1_rung_0")

    state.lock_and_sample_trial(chain, worker_id="w0")
    state.lock_and_sample_trial(chain, worker_id="w0")
    assert not check_run_dir(run_dir)
    (run_dir / "configs" / ".trial_cache.journal").unlink()  # the folders alone, as NePS's
    meta = run_dir / "configs" / "config_1_rung_1" / "metadata.json"
    data = json.loads(meta.read_text())
    data["time_sampled"] -= 60  # the continuation claims to predate what it continues
    meta.write_text(json.dumps(data))
    [violation] = check_run_dir(run_dir)
    assert violation.invariant == "previous trial exists"
    assert "continues '1_rung_0', which was sampled after it" in violation.detail
