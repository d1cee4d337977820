"""The command line of the benchmark (``neps-state bench``, ``stress/bench.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_neps.bench._breakdown import breakdown, render_breakdown
from pytest_neps.bench._common import DEFAULTS, QUICK
from pytest_neps.bench._report import machine_line, plot, render_report
from pytest_neps.bench._run import machine_info, run_bench


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``neps-state bench`` to ``parser``."""
    d = DEFAULTS
    parser.add_argument(
        "--trials",
        type=_int_list,
        help=f"run sizes for the cycle cost, comma-separated (default {_csv(d['trials'])})",
    )
    parser.add_argument(
        "--workers",
        type=_int_list,
        help=f"worker counts for the throughput (default {_csv(d['workers'])})",
    )
    parser.add_argument(
        "--cycles", type=int, help=f"cycles per worker in the throughput (default {d['cycles']})"
    )
    parser.add_argument(
        "--samples", type=int, help=f"cycles timed at each run size (default {d['samples']})"
    )
    parser.add_argument(
        "--durability",
        choices=("fsync", "os", "both"),
        default="fsync",
        help="durability setting(s) of ours (default fsync)",
    )
    parser.add_argument("--no-optuna", action="store_true", help="do not measure Optuna")
    parser.add_argument(
        "--repeats", type=int, default=1, help="throughput runs per figure, median (default 1)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pause before each throughput run, so that neither side pays for the files the"
        " runs before it freed (ext4 without a journal: 45 is enough; default 0)",
    )
    parser.add_argument(
        "--no-paired",
        action="store_true",
        help="do not time a fresh base-size run beside each size (faster, drift-prone ratios)",
    )
    parser.add_argument(
        "--optuna-bare",
        action="store_true",
        help="Optuna cycle = ask() + tell() with no parameter (default: the same 3-param space)",
    )
    parser.add_argument("--skip-cost", action="store_true", help="skip the cycle-cost benchmark")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="skip the throughput benchmark"
    )
    parser.add_argument("--dir", type=Path, help="where to create the runs (default: temp dir)")
    parser.add_argument(
        "--plot", type=Path, help="write a PNG with both panels here (default: not written)"
    )
    parser.add_argument(
        "--json", type=Path, help="write the result as JSON here (default: not written)"
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help="write the report as Markdown here, headed by the command line (default: not"
        " written); docs/measurements.md quotes such files instead of copying figures",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="do not run: report the result a previous --json wrote (default: run)",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="instead: each operation's ms beside the disk's floors (an fsynced append, a"
        " file creation, and its own floor summed from such primitives) at each --trials"
        " size (default 1000), the seed-API and claim cycles beside Optuna at 1, 3 and 10"
        " parameters, issue 16's targets, and the cycles' growth over the first size",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke size: trials {_csv(QUICK['trials'])}, workers {_csv(QUICK['workers'])},"
        f" cycles {QUICK['cycles']}, samples {QUICK['samples']} (explicit options win)",
    )


def _csv(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def main_bench(args: argparse.Namespace) -> int:
    """Run the benchmark as asked by the parsed options; print the report; 0 on success."""
    sizes = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return sizes[name] if value is None else value

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if min(pick("cycles"), pick("samples"), args.repeats) < 1:
        sys.stderr.write("bench: --cycles, --samples and --repeats must be >= 1\n")
        return 2
    if args.settle < 0:
        sys.stderr.write("bench: --settle must be >= 0\n")
        return 2
    if args.ops:
        return _ops(args, pick)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        result = _run(args, pick)
    render_report(result, sys.stdout)
    _write_outputs(args, result)
    return 0


def _write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.markdown is not None:
        with args.markdown.open("w", encoding="utf-8") as f:
            command = result.get("command") or "neps-state bench"
            f.write(
                f"<!-- written by neps-state bench --markdown; do not edit -->\n\n`{command}`\n\n"
            )
            render_report(result, f, md=True)
        sys.stdout.write(f"wrote {args.markdown}\n")
    if args.json is not None and args.from_json is None:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        sys.stdout.write(f"wrote {args.json}\n")
    if args.plot is not None:
        try:
            plot(result, args.plot)
        except ImportError:
            sys.stderr.write("bench: matplotlib is not installed; no plot written\n")
        else:
            sys.stdout.write(f"wrote {args.plot}\n")


def _ops(args: argparse.Namespace, pick: Any) -> int:
    sizes = args.trials or (1000,)
    durability = "fsync" if args.durability == "both" else args.durability
    runs = []
    for trials in sizes:
        result = breakdown(
            trials=trials,
            samples=pick("samples"),
            durability=durability,
            optuna=not args.no_optuna,
            directory=args.dir,
        )
        sys.stdout.write(render_breakdown(result) + "\n")
        runs.append(result)
    growth = _cycle_growth(runs)
    for line in growth["lines"]:
        sys.stdout.write(line + "\n")
    if args.markdown is not None:
        text = "\n\n".join([*map(render_breakdown, runs), *growth["lines"]])
        args.markdown.write_text(
            "<!-- written by neps-state bench --ops --markdown; do not edit -->\n\n"
            f"`{_command_line(args)}`\n\n{machine_line(machine_info(args.dir))}\n\n"
            f"```\n{text}\n```\n",
            encoding="utf-8",
        )
        sys.stdout.write(f"wrote {args.markdown}\n")
    if args.json is not None:
        out = runs[0] if len(runs) == 1 else {"runs": runs, "growth": growth["ratios"]}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _cycle_growth(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each cycle's ms at every size over its ms at the first (runs one after the other)."""
    ms = [{r["operation"]: r["ms"] for r in run["operations"]} for run in runs]
    ratios: dict[str, dict[int, float]] = {}
    lines = []
    for cycle in ("seed_cycle", "claim_cycle"):
        ratios[cycle] = {
            run["trials"]: m[cycle] / ms[0][cycle] for run, m in zip(runs, ms, strict=True)
        }
        if len(runs) > 1:
            steps = ", ".join(f"@{n} x{r:.2f}" for n, r in ratios[cycle].items())
            lines.append(f"{cycle} over @{runs[0]['trials']} (runs in turn): {steps}")
    return {"ratios": ratios, "lines": lines}


_NOT_MEASURING = frozenset({"func", "command", "json", "markdown", "plot", "from_json"})


def _command_line(args: argparse.Namespace) -> str:
    """The options that shaped a run, as a ``neps-state bench`` command line."""
    parts = ["neps-state", "bench"]
    for name, value in vars(args).items():
        if name in _NOT_MEASURING or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, tuple):
            parts += [flag, _csv(value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _run(args: argparse.Namespace, pick: Any) -> dict[str, Any]:
    result: dict[str, Any] = run_bench(
        trials=() if args.skip_cost else pick("trials"),
        workers=() if args.skip_throughput else pick("workers"),
        cycles=pick("cycles"),
        durability=args.durability,
        samples=pick("samples"),
        optuna=not args.no_optuna,
        optuna_params=not args.optuna_bare,
        paired=not args.no_paired,
        repeats=args.repeats,
        directory=args.dir,
        settle=args.settle,
    )
    result["command"] = _command_line(args)
    return result
