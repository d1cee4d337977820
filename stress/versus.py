"""Before/after: the benchmark of two versions of this project, side by side in one run.

    python stress/versus.py --ref c00522a [--trials 1000] [--workers 4] [--pairs 4]
    python stress/versus.py --ref c00522a --ops [--pairs 4]   # each operation

Extracts the tree of ``--ref`` (``git archive``) and runs ``neps-state bench`` of
each version in turn, in ABBA order, each in its own processes with
``PYTHONPATH`` set to that version's tree (worker processes inherit it). Prints,
per pair, the ratio new/old of the cycle cost (amortized over consolidations,
one process, at ``--trials``) and of the throughput (cycles/s with ``--workers``),
then the medians. The machine is shared and noisy: quote the medians of the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def _bench_json(tree: Path, runner: list[str], argv: list[str], out: Path) -> dict[str, Any]:
    """``neps-state bench ARGV --json OUT`` of the version in ``tree``; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, *runner, "bench", *argv, "--json", str(out)]
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=tree)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def bench(tree: Path, args: argparse.Namespace, out: Path, work: Path) -> dict[str, Any]:
    """One ``neps-state bench`` of the version in ``tree``; its JSON result."""
    argv = [
        "--no-optuna", "--no-paired", "--trials", str(args.trials), "--workers",
        str(args.workers), "--samples", str(args.samples), "--cycles", str(args.cycles),
        "--durability", args.durability, "--dir", str(work), "--settle", str(args.settle),
    ]  # fmt: skip
    return _bench_json(tree, ["-m", "pytest_neps.cli"], argv, out)


# Runs the ``bench --ops`` of a version with its run folders kept, not deleted at the
# end of the run: on ext4 without a journal, the files a run deletes slow every file
# creation of the next minutes (the next run, of the other version), which would
# make the first run of each pair the slower one whatever the version.
_KEEP_RUNS = """
import contextlib, sys, tempfile
from pathlib import Path
import pytest_neps.bench._common as common
import pytest_neps.bench._breakdown as breakdown
from pytest_neps.cli import main

@contextlib.contextmanager
def kept(directory=None):
    yield Path(tempfile.mkdtemp(dir=directory))

common._workdir = breakdown._workdir = kept
sys.exit(main(sys.argv[1:]))
"""

OPS: tuple[str, ...] = ("sample", "claim_next_pending", "report", "sample_claim")
OPS += ("put_evaluating", "get_trial_by_id", "read_trials", "seed_cycle", "claim_cycle")


def ops(tree: Path, args: argparse.Namespace, out: Path, work: Path) -> dict[str, float]:
    """One ``neps-state bench --ops`` of the version in ``tree``: ms per operation."""
    argv = [
        "--ops", "--no-optuna", "--trials", str(args.trials), "--samples", str(args.samples),
        "--durability", args.durability, "--dir", str(work),
    ]  # fmt: skip
    rows = _bench_json(tree, ["-c", _KEEP_RUNS], argv, out)["operations"]
    return {r["operation"]: float(r["ms"]) for r in rows if r["operation"] in OPS}


def run_ops(versions: dict[str, Path], args: argparse.Namespace, tmp: Path) -> None:
    """ABBA pairs of ``bench --ops``; each operation's median ratio new/old."""
    work = args.dir or tmp / "work"
    work.mkdir(parents=True, exist_ok=True)
    ratios: dict[str, list[float]] = {op: [] for op in OPS}
    try:
        for i in range(args.pairs):
            order = ("new", "old") if i % 2 == 0 else ("old", "new")
            ms = {name: ops(versions[name], args, tmp / f"{name}.json", work) for name in order}
            for op in OPS:
                ratios[op].append(ms["new"][op] / ms["old"][op])
            steps = ", ".join(f"{op} x{ratios[op][-1]:.2f}" for op in ("seed_cycle", "claim_cycle"))
            print(f"pair {i + 1} ({order[0]} first): {steps}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{HERE.name} vs {args.ref}, {args.durability}, {args.trials} trials, runs kept:")
    for op in OPS:
        each = " ".join(f"{r:.2f}" for r in ratios[op])
        print(f"  {op:<20} x{statistics.median(ratios[op]):.2f} new/old (pairs: {each})")


def figures(result: dict[str, Any]) -> tuple[float, float]:
    """(amortized cycle cost in ms, throughput in cycles/s)."""
    [cost] = result["cycle_cost"]
    [put] = result["throughput"]
    return float(cost["ours_amortized_ms"]), float(put["ours_cycles_per_s"])


def main() -> int:
    """Run the pairs and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the version to compare with (git ref)")
    parser.add_argument("--trials", type=int, default=1000, help="run size of the cycle cost")
    parser.add_argument("--workers", type=int, default=4, help="workers of the throughput")
    parser.add_argument("--samples", type=int, default=200, help="cycles timed per cost")
    parser.add_argument("--cycles", type=int, default=250, help="cycles per worker")
    parser.add_argument("--pairs", type=int, default=4, help="ABBA pairs (default 4)")
    parser.add_argument("--durability", choices=["fsync", "os"], default="fsync")
    parser.add_argument("--dir", type=Path, help="where runs are created (default: temp dir)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="pause before each benchmark and its throughput part, seconds (see bench --settle)",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="instead: each operation of bench --ops (one process, no Optuna), the runs"
        " of every pair kept until the end (deleted files slow the next run on some disks)",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="neps-versus-"))
    try:
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(HERE), "archive", args.ref],  # noqa: S607 - git from PATH
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)  # noqa: S607
        versions = {"new": HERE, "old": old}
        if args.ops:
            run_ops(versions, args, tmp)
            return 0
        work = args.dir or tmp / "work"
        pairs: list[dict[str, tuple[float, float]]] = []
        for i in range(args.pairs):
            order = ("new", "old") if i % 2 == 0 else ("old", "new")
            pair = {}
            for name in order:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                time.sleep(args.settle)
                pair[name] = figures(bench(versions[name], args, tmp / f"{name}.json", work))
            pairs.append(pair)
            cost = pair["new"][0] / pair["old"][0]
            put = pair["new"][1] / pair["old"][1]
            print(
                f"pair {i + 1} ({order[0]} first): cycle {pair['new'][0]:.3f} vs"
                f" {pair['old'][0]:.3f} ms (x{cost:.3f}); {args.workers} workers"
                f" {pair['new'][1]:.0f} vs {pair['old'][1]:.0f} cycles/s (x{put:.3f})",
                flush=True,
            )
        cost_ratio = statistics.median(p["new"][0] / p["old"][0] for p in pairs)
        put_ratio = statistics.median(p["new"][1] / p["old"][1] for p in pairs)
        print(
            f"\n{HERE.name} vs {args.ref}, durability {args.durability}: cycle cost at"
            f" {args.trials} trials x{cost_ratio:.3f} (new/old, median of {args.pairs} pairs);"
            f" throughput with {args.workers} workers x{put_ratio:.3f}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
