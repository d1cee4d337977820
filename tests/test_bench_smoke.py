"""Smoke test of the benchmark: tiny sizes, shapes and sanity of the figures (no timing claims)."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_neps import bench as _bench
from pytest_neps.bench import _throughput


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_cycle_cost_rows(tmp_path: Path) -> None:
    rows = _bench.cycle_cost((20, 60), "fsync", samples=20, directory=tmp_path)
    assert [r["trials"] for r in rows] == [20, 60]
    with_optuna = _bench.optuna_version() is not None
    for r in rows:
        assert r["durability"] == "fsync"
        assert r["base_trials"] == 20
        assert r["ours_trials_measured"] >= r["trials"]
        for key in ("ms", "mean_ms", "p95_ms", "paired_base_ms", "consolidate_ms", "amortized_ms"):
            assert _positive(r[f"ours_{key}"]), key
        for key in ("ms_vs_base", "ms_vs_paired_base", "mean_ms_vs_base"):
            assert _positive(r[f"ours_{key}"]), key
        assert ("optuna_ms" in r) == with_optuna
        if with_optuna:
            assert _positive(r["optuna_ms"])
            assert _positive(r["optuna_ms_vs_paired_base"])
            assert _positive(r["ours_over_optuna"])
    assert rows[0]["ours_ms_vs_base"] == 1.0
    assert list(tmp_path.iterdir()) == []  # the runs are removed


def test_bench_result_report_and_plot(tmp_path: Path) -> None:
    result = _bench.run_bench(
        trials=(20, 60),
        workers=(1, 2),
        cycles=20,
        durability="fsync",
        samples=20,
        directory=tmp_path / "runs",
    )
    json.dumps(result)  # JSON-ready
    assert result["durability"] == ["fsync"]
    assert result["machine"]["cpu_count"] >= 1
    assert result["machine"]["python"]
    create = result["machine"]["file_create_us"]
    assert _positive(create["before"])
    assert _positive(create["after"])
    with_optuna = _bench.optuna_version() is not None
    assert result["optuna"]["used"] == with_optuna
    tput = result["throughput"]
    assert [r["workers"] for r in tput] == [1, 2]
    for r in tput:
        assert r["ours_problems"] == []
        assert r["ours_cycles"] == 20 * r["workers"]
        assert _positive(r["ours_cycles_per_s"])
        assert _positive(r["ours_scaling_vs_base"])
        if with_optuna:
            assert r["optuna_problems"] == []
            assert r["optuna_cycles"] == 20 * r["workers"]
            assert _positive(r["optuna_cycles_per_s"])
            assert _positive(r["ours_over_optuna"])
    assert result["headline"]["cost_ratio_60_over_20"]["fsync"] > 0
    names = [t["name"] for t in result["targets"]]
    assert any("4 workers" in n for n in names)
    assert all(t["met"] is None for t in result["targets"])  # sizes too small to judge

    out = io.StringIO()
    _bench.render_report(result, out)
    text = out.getvalue()
    assert "Cost of one cycle" in text
    assert "Throughput" in text
    assert "Targets" in text
    assert "creating a file there" in text
    assert "not measured" in text

    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    _bench.plot(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_bench_quick_without_optuna(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    _bench.add_bench_arguments(parser)
    args = parser.parse_args(
        [
            "--quick",
            "--trials",
            "10,30",
            "--samples",
            "10",
            "--skip-throughput",
            "--no-optuna",
            "--dir",
            str(tmp_path / "runs"),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    assert _bench.main_bench(args) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert [r["trials"] for r in result["cycle_cost"]] == [10, 30]
    assert result["throughput"] == []
    assert result["optuna"]["used"] is False
    assert "optuna: skipped" in capsys.readouterr().out
    again = parser.parse_args(
        ["--from-json", str(tmp_path / "out.json"), "--markdown", str(tmp_path / "out.md")]
    )
    assert _bench.main_bench(again) == 0
    md = (tmp_path / "out.md").read_text()
    assert "`neps-state bench " in md
    rows = [line for line in md.splitlines() if line.startswith("| 30 |")]
    assert len(rows) == 1
    assert rows[0].count("|") == 14


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="durability"):
        _bench.cycle_cost((10,), "sometimes", samples=1)
    parser = argparse.ArgumentParser()
    _bench.add_bench_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--trials", "10,x"])


def test_settle_pauses_before_every_throughput_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(_throughput.time, "sleep", pauses.append)
    parser = argparse.ArgumentParser()
    _bench.add_bench_arguments(parser)
    common = ["--skip-cost", "--workers", "1", "--cycles", "5", "--no-optuna"]
    common += ["--durability", "both", "--repeats", "2", "--dir", str(tmp_path / "runs")]
    assert _bench.main_bench(parser.parse_args([*common, "--settle", "7"])) == 0
    assert pauses == [7.0] * 4  # 2 durabilities x 2 repeats
    assert "7 s pause before each run" in capsys.readouterr().out
    pauses.clear()
    assert _bench.main_bench(parser.parse_args(common)) == 0
    assert pauses == []
    assert _bench.main_bench(parser.parse_args([*common, "--settle", "-1"])) == 2


def test_operation_breakdown_beside_the_floors(tmp_path: Path) -> None:
    from pytest_neps.bench._breakdown import breakdown, render_breakdown  # noqa: PLC0415

    result = breakdown(trials=30, samples=3, optuna=False, directory=tmp_path)
    ops = {r["operation"]: r for r in result["operations"]}
    assert set(ops) == {
        "sample",
        "claim_next_pending",
        "report",
        "sample_claim",
        "put_evaluating",
        "get_trial_by_id",
        "read_trials",
        "seed_cycle",
        "claim_cycle",
    }
    floors = result["floors_ms"]
    assert floors["append_fsync"] > 0
    assert floors["create"] > 0
    row = ops["sample"]
    assert row["x_append"] == pytest.approx(row["ms"] / floors["append_fsync"])
    assert "x append" in render_breakdown(result)
    assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
    primitives = result["floors_ms"]
    assert row["floor_ms"] == pytest.approx(
        primitives["append"] + primitives["folder"] + primitives["replace"]
    )
    names = [t["name"] for t in result["targets"]]
    assert "sample <= 3.0x its floor" in names
    assert "claim_next_pending <= sample (ms)" in names
    # Without Optuna those two cannot be measured, and say so.
    assert [t["met"] for t in result["targets"] if "Optuna" in t["name"]] == [None, None]


def test_ops_at_two_sizes_report_the_cycles_growth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    _bench.add_bench_arguments(parser)
    md, js = tmp_path / "ops.md", tmp_path / "ops.json"
    args = ["--ops", "--no-optuna", "--trials", "20,40", "--samples", "3"]
    args += ["--dir", str(tmp_path / "runs"), "--markdown", str(md), "--json", str(js)]
    assert _bench.main_bench(parser.parse_args(args)) == 0
    out = capsys.readouterr().out
    assert "seed_cycle over @20 (runs in turn): @20 x1.00, @40 x" in out
    saved = json.loads(js.read_text())
    assert [r["trials"] for r in saved["runs"]] == [20, 40]
    assert set(saved["growth"]) == {"seed_cycle", "claim_cycle"}
    text = md.read_text()
    assert text.startswith("<!-- written by neps-state bench --ops --markdown")
    assert "neps-state bench --trials 20,40" in text
    assert text.count("Targets (issue 16)") == 2


def test_ops_beside_a_smaller_run_timed_in_the_same_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_neps.bench import _breakdown  # noqa: PLC0415

    monkeypatch.setattr(_breakdown, "PAIRED_BASE", 20)
    result = _breakdown.breakdown(trials=40, samples=3, optuna=False, directory=tmp_path)
    paired = result["paired_base"]
    assert paired["trials"] == 20
    assert _positive(paired["seed_cycle_x"])
    assert _positive(paired["claim_cycle_x"])
    growth = [t for t in result["targets"] if t["name"].startswith("seed cycle @40 <=")]
    assert [t["value"] for t in growth] == [paired["seed_cycle_x"]]
    assert "Beside a run of 20 trials" in _breakdown.render_breakdown(result)
    small = _breakdown.breakdown(trials=20, samples=2, optuna=False, directory=tmp_path)
    assert "paired_base" not in small
