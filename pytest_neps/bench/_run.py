"""The whole benchmark: what runs, the machine, the headline ratios and the targets."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_neps.bench._common import (
    BATCH_SIZE,
    DEFAULTS,
    TARGETS,
    _durabilities,
    file_create_us,
    optuna_version,
    target,
)
from pytest_neps.bench._cost import cycle_cost
from pytest_neps.bench._throughput import throughput

# -- the whole benchmark ----------------------------------------------------------


def _filesystem(path: Path) -> str | None:
    """The filesystem type holding ``path`` (from /proc/mounts), if known."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def machine_info(directory: Path | str | None = None) -> dict[str, Any]:
    """What the figures depend on: CPUs, Python, OS, the filesystem of the run directories."""
    where = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "directory": str(where),
        "filesystem": _filesystem(where),
    }


def run_bench(
    trials: Sequence[int] = DEFAULTS["trials"],
    workers: Sequence[int] = DEFAULTS["workers"],
    cycles: int = DEFAULTS["cycles"],
    durability: str = "fsync",
    samples: int = DEFAULTS["samples"],
    *,
    optuna: bool = True,
    optuna_params: bool = True,
    paired: bool = True,
    repeats: int = 1,
    directory: Path | str | None = None,
    settle: float = 0.0,
) -> dict[str, Any]:
    """Run the cycle-cost and throughput benchmarks; a JSON-ready result with headline ratios.

    An empty ``trials`` or ``workers`` skips that part.
    """
    names = _durabilities(durability)
    version = optuna_version()
    use_optuna = optuna and version is not None
    started = time.perf_counter()
    create_before = file_create_us(directory)
    if use_optuna:
        note = None
    elif version is None:
        note = "skipped: optuna is not importable (pip install 'neps-state[bench]')"
    else:
        note = "skipped: not asked for (--no-optuna)"
    result: dict[str, Any] = {
        "created": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(directory),
        "durability": list(names),
        "settings": {
            "batch_size": BATCH_SIZE,
            "trials": list(trials),
            "workers": list(workers),
            "samples": samples,
            "cycles_per_worker": cycles,
            "paired": paired,
            "repeats": repeats,
            "settle_s": settle,
        },
        "cycle": {
            "ours": "lock_and_sample_trial(random_search, claim=True)"
            " + set_complete + lock_and_report_trial_evaluation",
            "optuna": "study.ask(the same 3-parameter space) + study.tell, RandomSampler"
            if optuna_params
            else "study.ask() + study.tell (no parameter), RandomSampler",
        },
        "optuna": {
            "available": version is not None,
            "used": use_optuna,
            "version": version,
            "backend": "JournalStorage(JournalFileBackend), default symlink lock,"
            " fsync on every append (no durability setting)",
            "note": note,
        },
        "cycle_cost": [],
        "throughput": [],
    }
    if trials:
        result["cycle_cost"] = cycle_cost(
            trials,
            names,
            samples,
            directory,
            optuna=use_optuna,
            optuna_params=optuna_params,
            paired=paired,
        )
    if workers:
        result["throughput"] = throughput(
            workers,
            cycles,
            names,
            optuna=use_optuna,
            optuna_params=optuna_params,
            repeats=repeats,
            directory=directory,
            settle=settle,
        )
    result["machine"]["file_create_us"] = {
        "before": create_before,
        "after": file_create_us(directory),
    }
    result["headline"] = _headline(result)
    result["targets"] = _targets(result)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _row(rows: Iterable[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _cost_ratio(row: Mapping[str, Any], who: str = "ours") -> float | None:
    """Ratio to the smallest size: to the paired base run if measured, else to the first size."""
    paired = row.get(f"{who}_ms_vs_paired_base")
    return row.get(f"{who}_ms_vs_base") if paired is None else paired


def _headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The few ratios to quote, each by durability."""
    cost, tput = result["cycle_cost"], result["throughput"]
    out: dict[str, Any] = {}
    if cost:
        base = cost[0]["base_trials"]
        largest = max(r["trials"] for r in cost)
        out["base_trials"] = base
        out["cost_ratio_basis"] = (
            "a fresh run of base size measured in the same rounds"
            if "ours_ms_vs_paired_base" in cost[0]
            else "the first size"
        )
        out[f"cost_ratio_{largest}_over_{base}"] = {
            r["durability"]: _cost_ratio(r) for r in cost if r["trials"] == largest
        }
        n = TARGETS["cost_10k"][0]
        at_n = [r for r in cost if r["trials"] == n]
        if at_n:
            out[f"cost_ratio_{_size(n)}_over_{base}"] = {
                r["durability"]: _cost_ratio(r) for r in at_n
            }
        n = TARGETS["ms_10k_fsync"][0]
        at_n = [r for r in cost if r["trials"] == n]
        if at_n:
            out[f"ms_per_cycle_{_size(n)}"] = {r["durability"]: r["ours_ms"] for r in at_n}
            out[f"ms_per_cycle_{_size(n)}_ours_over_optuna"] = {
                r["durability"]: r.get("ours_over_optuna") for r in at_n
            }
    w = TARGETS["throughput_4_vs_optuna"][0]
    at_w = [r for r in tput if r["workers"] == w]
    if at_w:
        out[f"throughput_ratio_{w}_workers_vs_optuna"] = {
            r["durability"]: r["ours_over_optuna"] for r in at_w
        }
    return out


def _size(n: int) -> str:
    """A run size as the headline's keys spell it: ``10k`` for 10000."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets of our issues, each met, missed, or not measured (``met`` None)."""
    cost, tput = result["cycle_cost"], result["throughput"]
    base = cost[0]["base_trials"] if cost else min(DEFAULTS["trials"])
    out: list[dict[str, Any]] = []
    for d in result["durability"]:
        for key in ("cost_10k", "cost_100k"):
            n, limit = TARGETS[key]
            r = _row(cost, trials=n, durability=d)
            value = None if r is None else _cost_ratio(r)
            name = f"ms/cycle @{n} within {limit}x of @{base} ({d})"
            out.append(target(name, value, limit, "x", higher=False))
        if d == "fsync":
            n, limit = TARGETS["ms_10k_fsync"]
            r = _row(cost, trials=n, durability=d)
            value = None if r is None else r["ours_ms"]
            name = f"ms/cycle @{n} <= {limit} ms (fsync)"
            out.append(target(name, value, limit, "ms", higher=False))
        w, limit = TARGETS["throughput_4_vs_optuna"]
        r = _row(tput, workers=w, durability=d)
        value = None if r is None else r["ours_over_optuna"]
        name = f"{w} workers >= {limit}x Optuna journal cycles/s ({d})"
        out.append(target(name, value, limit, "x", higher=True))
    return out
