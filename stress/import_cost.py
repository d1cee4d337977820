"""What loading the plugin costs every pytest run, beside pytest-xdist's plugin.

    python stress/import_cost.py [--runs 21]

Each run is a fresh interpreter that imports pytest, then one plugin module
(``pytest_neps.plugin`` or ``xdist.plugin``, alternating), and reports the new
modules and the milliseconds of that import, with bytecode cached (as after
``pip install``; a first warm-up run writes it even where
``PYTHONDONTWRITEBYTECODE`` is set). Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = """
import json, sys, time
import pytest
before = set(sys.modules)
start = time.perf_counter()
import {module}
ms = (time.perf_counter() - start) * 1000
print(json.dumps({{"ms": ms, "modules": len(set(sys.modules) - before)}}))
"""
PLUGINS = ("pytest_neps.plugin", "xdist.plugin")


def probe(module: str) -> dict[str, float]:
    """One fresh interpreter's import of ``module``."""
    code = PROBE.format(module=module)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="interpreters per plugin")
    args = parser.parse_args()
    for module in PLUGINS:
        probe(module)  # compile the bytecode once
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in PLUGINS}
    for i in range(args.runs):
        order = PLUGINS if i % 2 == 0 else PLUGINS[::-1]
        for module in order:
            runs[module].append(probe(module))
    ms = {m: statistics.median(r["ms"] for r in runs[m]) for m in PLUGINS}
    for module in PLUGINS:
        modules = int(statistics.median(r["modules"] for r in runs[module]))
        print(f"{module:20} {modules:4d} modules  {ms[module]:7.2f} ms (median of {args.runs})")
    print(f"ratio ours/xdist: {ms[PLUGINS[0]] / ms[PLUGINS[1]]:.1f}")


if __name__ == "__main__":
    main()
