"""Before/after: the benchmark of two versions of this project, side by side in one run.

    python stress/versus.py --ref c00522a [--trials 1000] [--workers 4] [--pairs 4]

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


def bench(tree: Path, args: argparse.Namespace, out: Path, work: Path) -> dict[str, Any]:
    """One ``neps-state bench`` of the version in ``tree``; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [
        sys.executable, "-m", "pytest_neps.cli", "bench", "--no-optuna", "--no-paired",
        "--trials", str(args.trials), "--workers", str(args.workers), "--samples",
        str(args.samples), "--cycles", str(args.cycles), "--durability", args.durability,
        "--dir", str(work), "--json", str(out), "--settle", str(args.settle),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=tree)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


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
        work = args.dir or tmp / "work"
        versions = {"new": HERE, "old": old}
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
