"""The ``neps-state`` command: stress runs, invariant checks, run summaries, benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import textwrap
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from neps_state import FAULT_POINTS, NePSError, NePSState, Settings, Trial
from pytest_neps._checker import Violation, check_run_dir, read_run_dir, run_dir_problem
from pytest_neps._reference import REFERENCE
from pytest_neps._swarm import SwarmConfig, SwarmConfigError, SwarmResult, run_swarm
from pytest_neps.bench import add_bench_arguments, main_bench

DURABILITY = "the durability: fsync, each commit on stable storage; os, left to the OS"
READ_EXIT = "2: bad usage, or run_dir is missing, not a directory or not readable"
CHECK_EPILOG = f"""exit status:
  0: the run is clean (notes do not count)
  1: violations found, unreadable or damaged files among them
  {READ_EXIT}"""
SHOW_EPILOG = f"""exit status:
  0: every file of the run was read
  1: files unreadable or damaged (each named on stderr); the rest is shown
  {READ_EXIT}"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Options show a default that means something; texts keep the line breaks written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default == "" or isinstance(default, bool):
            return action.help  # no value, or a flag: nothing worth showing
        if "default" in (action.help or ""):
            return action.help  # the help says it in its own words
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            _wrap(line, width, indent + _indent(line), fill=True) for line in text.splitlines()
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return _wrap(text, width, "", fill=False).splitlines()


def _wrap(text: str, width: int, indent: str, *, fill: bool) -> str:
    """Wrap at spaces only: a path or a name with a hyphen stays whole (copyable)."""
    lines = textwrap.wrap(
        " ".join(text.split()),
        width,
        initial_indent=indent if fill else "",
        subsequent_indent=indent if fill else "",
        break_on_hyphens=False,
        break_long_words=False,
    )
    return "\n".join(lines)


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


class Progress:
    """A one-line progress bar on a terminal (plain periodic lines otherwise)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        """Draw on ``stream``, ``width`` characters wide."""
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.last_plain = 0.0

    def __call__(self, done: int, config: SwarmConfig, restarts: int) -> None:
        """Redraw with ``done`` reports so far."""
        elapsed = time.monotonic() - self.start
        frac = min(done / config.trials, 1.0) if config.trials else 1.0
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        rate = done / elapsed if elapsed > 0 else 0.0
        line = (
            f"[{bar}] {done}/{config.trials} trials  {rate:6.1f} cycles/s"
            f"  restarts {restarts}  {elapsed:5.1f} s"
        )
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif elapsed - self.last_plain >= 5:
            self.last_plain = elapsed
            self.stream.write(line + "\n")

    def close(self) -> None:
        """End the progress line."""
        if self.tty:
            self.stream.write("\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def render_stress(result: SwarmResult, out: TextIO) -> None:
    """The summary table of a stress run."""
    s = result.summary()
    rows = [
        ("workers", str(s["workers"])),
        ("trials", str(s["trials"])),
        ("cycles (reports)", str(s["cycles"])),
        ("wall time", f"{s['wall_s']:.2f} s"),
        ("throughput", f"{s['cycles_per_s']:.1f} cycles/s"),
        ("kills / restarts", f"{s['kills']} / {s['replacements']}"),
        ("left evaluating by kills", str(len(s["stranded"]))),
        ("trial states", ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))),
        ("error records", str(s["errors"])),
    ]
    out.write("\nneps-state stress\n")
    out.writelines(f"  {key:<26}{value}\n" for key, value in rows)
    out.write(f"\n  {'latency (ms)':<12}{'p50':>9}{'p95':>9}{'p99':>9}\n")
    out.writelines(
        f"  {op:<12}{_fmt(q['p50']):>9}{_fmt(q['p95']):>9}{_fmt(q['p99']):>9}\n"
        for op, q in s["latency_ms"].items()
    )
    problems = s["violations"]
    if problems:
        out.write(f"\n  invariant check: FAILED, {len(problems)} problem(s)\n")
        out.writelines(f"    - {p}\n" for p in problems)
    else:
        out.write("\n  invariant check: OK (0 violations)\n")


def cmd_stress(args: argparse.Namespace) -> int:
    """Run a swarm of the reference state and report."""
    points = tuple(p for p in args.kill_points.split(",") if p) if args.kill_points else ()
    config = SwarmConfig(
        workers=args.workers,
        trials=args.trials,
        kill_rate=args.kill_rate,
        kill_every=args.kill_every,
        kill_points=points,
        seed=args.seed,
        observers=args.observers,
        batch=args.batch,
        timeout=args.timeout,
        evaluation=args.evaluation,
        optimizer=args.optimizer,
        impl=args.impl,
        settings=Settings(durability=args.durability),
        worker_log_level=logging.WARNING if args.verbose else logging.ERROR,
        runtime=args.runtime,
    )
    run_dir = Path(args.dir) / "run" if args.dir else None
    if run_dir is not None and run_dir.exists():
        sys.stderr.write(f"{run_dir} exists already; give an empty --dir\n")
        return 2
    progress = Progress(sys.stderr)
    try:
        with contextlib.ExitStack() as stack:
            launcher = None
            if args.scheduler:
                from pytest_neps.dask import connect  # noqa: PLC0415 - the dask extra

                launcher = stack.enter_context(connect(args.scheduler))
            result = run_swarm(config, run_dir, launcher=launcher, progress=progress)
    except SwarmConfigError as e:
        sys.stderr.write(f"neps-state stress: {e}\n")
        return 2
    except (OSError, TimeoutError) as e:
        if not args.scheduler:
            raise
        # The cluster went away mid-run (the scheduler stopped, the network failed).
        sys.stderr.write(f"neps-state stress: the Dask scheduler at {args.scheduler}: {e!r}\n")
        return 2
    finally:
        progress.close()
    render_stress(result, sys.stdout)
    sys.stdout.write(f"  run directory: {result.run_dir}\n")
    if args.json:
        summary = result.summary()
        summary["run_dir"] = str(result.run_dir)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if result.problems() else 0


def _unusable(command: str, run_dir: str) -> bool:
    """Whether ``run_dir`` cannot be read at all; if so, say why on one line of stderr."""
    problem = run_dir_problem(Path(run_dir))
    if problem is not None:
        sys.stderr.write(f"neps-state {command}: {run_dir}: {problem}\n")
    return problem is not None


def cmd_check(args: argparse.Namespace) -> int:
    """Check a run directory's invariants."""
    if _unusable("check", args.run_dir):
        return 2
    notes: list[str] = []
    violations: list[Violation] = check_run_dir(Path(args.run_dir), notes=notes)
    sys.stdout.writelines(f"note: {n}\n" for n in notes)
    for v in violations:
        sys.stdout.write(f"{v}\n")
    if not violations:
        sys.stdout.write(f"{args.run_dir}: OK\n")
        return 0
    sys.stdout.write(f"{args.run_dir}: {len(violations)} violation(s)\n")
    try:
        repairs = NePSState.repair(args.run_dir, dry_run=True)
    except (NePSError, OSError) as e:
        sys.stdout.write(f"a repair cannot fix this: {e}\n")
        return 1
    if repairs:
        sys.stdout.write(
            f"a repair is needed: `neps-state repair {args.run_dir}` would make"
            f" {len(repairs)} change(s) (`--dry-run` lists them)\n"
        )
    return 1


def cmd_repair(args: argparse.Namespace) -> int:
    """Rebuild the files derived from the journal, as the first handle after a reboot does."""
    try:
        repairs = NePSState.repair(
            args.run_dir, dry_run=args.dry_run, settings=Settings(durability=args.durability)
        )
    except NePSError as e:
        sys.stderr.write(f"neps-state repair: {e}\n")
        return 1
    verb = "would change" if args.dry_run else "changed"
    sys.stdout.writelines(f"{r}\n" for r in repairs)
    sys.stdout.write(f"{args.run_dir}: {verb} {len(repairs)} file(s)\n")
    if args.dry_run:
        return 0
    left = check_run_dir(Path(args.run_dir))
    sys.stdout.writelines(f"still wrong: {v}\n" for v in left)
    return 1 if left else 0


def cmd_crashstates(args: argparse.Namespace) -> int:
    """Enumerate the crash states of each mutating operation and check every one."""
    from pytest_neps._crashstates import enumerate_and_check, render  # noqa: PLC0415

    def progress(stats: Any) -> None:
        sys.stderr.write(f"  {stats.op}: {stats.checked} states, {len(stats.inconsistent)} bad\n")

    stats = enumerate_and_check(
        args.impl,
        settings=Settings(durability=args.durability),
        steps=args.steps.split(",") if args.steps else None,
        every=args.every,
        progress=progress,
    )
    render(stats, sys.stdout)
    if args.json:
        Path(args.json).write_text(json.dumps([s.summary() for s in stats], indent=2) + "\n")
    return 0 if all(s.ok for s in stats) else 1


def cmd_conformance(args: argparse.Namespace) -> int:
    """Run the conformance suite against an implementation; list the seed defects it shows."""
    from pytest_neps.verdict import SuiteDidNotRunError, verdict  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        result = verdict(args.impl, runs=args.runs, python=args.python)
    except SuiteDidNotRunError as e:
        sys.stderr.write(f"neps-state conformance: {e}\n")
        return 2
    sys.stdout.write(result.render() + "\n")
    return 0 if not result.reported and not result.unexplained else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Try what the state relies on in a directory's file system; exit 1 if unsafe."""
    from pytest_neps.doctor import diagnose  # noqa: PLC0415 - starts processes

    if not Path(args.dir).is_dir():
        sys.stderr.write(f"neps-state doctor: {args.dir}: is not a directory\n")
        return 2
    result = diagnose(args.dir)
    sys.stdout.write(result.render() + "\n")
    return 0 if result.safe else 1


def cmd_show(args: argparse.Namespace) -> int:
    """Summarize a run directory: trials by state, best objective, errors."""
    if _unusable("show", args.run_dir):
        return 2
    problems: list[Violation] = []
    snap = read_run_dir(Path(args.run_dir), problems)
    trials = snap.folders
    states = Counter(t.metadata.state.value for t in trials.values())
    out = sys.stdout
    out.write(f"{args.run_dir}: {len(trials)} trials\n")
    for state in Trial.State:
        if states[state.value]:
            out.write(f"  {state.value:<12}{states[state.value]:>8}\n")
    scored = [
        (t.report.objective_to_minimize, t.id)
        for t in trials.values()
        if t.report is not None
        and t.metadata.state is Trial.State.SUCCESS
        and isinstance(t.report.objective_to_minimize, int | float)
        and not math.isnan(t.report.objective_to_minimize)
    ]
    if scored:
        best, tid = min(scored)
        out.write(f"  best objective {best:.6g} (trial {tid}): {trials[tid].config}\n")
    out.write(f"  error records: {len(snap.errors)}\n")
    for rec in snap.errors[-args.errors :] if args.errors else []:
        out.write(
            f"    trial {rec['trial_id']} ({rec['worker_id']}): {rec['err_type']}: {rec['err']}\n"
        )
    sys.stderr.writelines(f"neps-state show: {p.path}: {p.detail}\n" for p in problems)
    return 1 if problems else 0


def cmd_killmatrix(args: argparse.Namespace) -> int:
    """SIGKILL at every fault point of every mutating operation, ``--runs`` times each."""
    from pytest_neps._killmatrix import render_matrix, run_matrix  # noqa: PLC0415

    def progress(run: Any) -> None:
        sys.stderr.write("." if run.ok else "F")
        sys.stderr.flush()

    runs = run_matrix(args.runs, settings=Settings(durability=args.durability), progress=progress)
    sys.stderr.write("\n")
    render_matrix(runs, sys.stdout)
    return 0 if all(r.ok for r in runs) else 1


def cmd_powerloss(args: argparse.Namespace) -> int:
    """Cut the power of swarms on LazyFS and check what the next boot finds."""
    from pytest_neps import powerloss  # noqa: PLC0415
    from pytest_neps.lazyfs import unavailable  # noqa: PLC0415

    reason = unavailable()
    if reason is not None:
        sys.stderr.write(f"neps-state powerloss: {reason}\n")
        return 2
    low, _, high = args.window.partition(",")

    done: list[dict[str, Any]] = []

    def progress(run: Any) -> None:
        sys.stderr.write("." if run.ok else f"\nFAILED {run.kind}: {run.describe()}\n")
        sys.stderr.flush()
        if args.json:  # after every run: a crash of the harness loses nothing
            done.append({**asdict(run), "ok": run.ok})
            Path(args.json).write_text(json.dumps(done, indent=2) + "\n")

    runs = powerloss.run_powerloss(
        args.runs,
        point_runs=args.point_runs,
        impl=args.impl,
        workers=args.workers,
        window=(float(low), float(high or low)),
        settings=Settings(durability=args.durability),
        seed=args.seed,
        precreate=args.precreate,
        progress=progress,
    )
    sys.stderr.write("\n")
    powerloss.render(runs, sys.stdout, title=f"{args.impl}, durability {args.durability}")
    return 0 if all(r.ok for r in runs) else 1


def _command(
    sub: Any, name: str, summary: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``: ``summary`` in the list of commands, ``description`` atop."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    return parser


def _add_durability(parser: argparse.ArgumentParser, default: str = "fsync") -> None:
    parser.add_argument("--durability", choices=["fsync", "os"], default=default, help=DURABILITY)


def _add_impl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impl", default=REFERENCE, help="the state class under test, module:attr")


def _add_stress_command(sub: Any) -> None:
    """The ``stress`` subcommand."""
    stress = _command(
        sub,
        "stress",
        "run a swarm of workers on a fresh run directory",
        "Run a swarm of worker processes on a fresh run directory, with the faults asked"
        " for, then check its invariants and print the figures. Exit 0 when the run"
        " finished and passed the checker, 1 when it did not, 2 when --dir holds a run already.",
    )
    stress.add_argument("--workers", type=int, default=4, help="worker processes")
    stress.add_argument("--trials", type=int, default=1000, help="trials the run evaluates")
    stress.add_argument(
        "--kill-rate",
        type=float,
        default=0.0,
        help="chance per operation that a worker is SIGKILLed (then replaced)",
    )
    stress.add_argument(
        "--kill-every",
        type=float,
        metavar="S",
        help="also SIGKILL a random worker every ~S seconds (default: never)",
    )
    stress.add_argument(
        "--kill-points",
        default="",
        help="comma-separated fault points a kill may hit (default: none, a kill between"
        f" operations): {', '.join(FAULT_POINTS)}",
    )
    stress.add_argument("--seed", type=int, default=0, help="seed of the kills and of the run")
    stress.add_argument("--dir", help="where to create the run directory (default: a temp dir)")
    stress.add_argument("--json", help="write the figures as JSON here (default: not written)")
    stress.add_argument("--observers", type=int, default=1, help="lock-free reader processes")
    stress.add_argument("--batch", type=int, default=1, help="trials sampled per ask")
    stress.add_argument(
        "--runtime",
        choices=("own", "neps"),
        default="own",
        help="whose worker loop the workers run: the harness's, or NePS's own DefaultWorker"
        " (as neps.run runs it; the neps extra)",
    )
    stress.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before the swarm is stopped"
    )
    _add_durability(stress)
    stress.add_argument(
        "--evaluation", default="pytest_neps._evaluate:flaky", help="evaluation, module:attr"
    )
    stress.add_argument(
        "--optimizer",
        default="pytest_neps._optimizers:random_search",
        help="optimizer that samples the trials, module:attr",
    )
    _add_impl(stress)
    stress.add_argument(
        "--scheduler",
        help="run the workers as tasks on this Dask scheduler, tcp://HOST:PORT (the dask"
        " extra; default: local processes)",
    )
    stress.set_defaults(func=cmd_stress)


def _add_power_loss_commands(sub: Any) -> None:
    """The ``repair``, ``crashstates`` and ``powerloss`` subcommands."""
    repair = _command(
        sub,
        "repair",
        "rebuild the files derived from the journal (as after a power loss)",
        "Compare every trial folder, the optimizer state file and the error"
        " dump with the journal and rewrite what differs; move aside what cannot be"
        " rebuilt. For a run directory no worker has open. Exit 0 when the run is clean"
        " (--dry-run: when the changes could be listed), 1 otherwise.",
    )
    repair.add_argument("run_dir", help="the run directory to repair")
    repair.add_argument("--dry-run", action="store_true", help="list the changes, make none")
    repair.add_argument(
        "--durability",
        choices=["fsync", "os"],
        default="fsync",
        help="the run's durability: with os, readable folders newer than the journal are kept",
    )
    repair.set_defaults(func=cmd_repair)

    crash = _command(
        sub,
        "crashstates",
        "check every state a power loss may leave, per operation (ALICE-style)",
        "Trace the file changes of each mutating operation, build every state a power"
        " loss may leave inside it, and check each one as the next boot would."
        " Exit 0 when every state is consistent, 1 otherwise.",
    )
    _add_impl(crash)
    crash.add_argument(
        "--steps", default="", help="comma-separated operations to check (default: all)"
    )
    crash.add_argument("--every", type=int, default=1, help="check every n-th distinct state")
    _add_durability(crash)
    crash.add_argument(
        "--json", help="write the per-operation figures as JSON here (default: not written)"
    )
    crash.set_defaults(func=cmd_crashstates)

    power = _command(
        sub,
        "powerloss",
        "cut the power of swarms on LazyFS; check the next boot (needs LazyFS)",
        "Each run: a swarm works on LazyFS, every worker is SIGKILLed at one"
        " instant and every unsynced byte dropped, LazyFS is mounted again; then the"
        " state must load, hold every acknowledged operation, pass the checker, and a"
        " fresh swarm must continue the run. LazyFS: NEPS_LAZYFS (binary) or"
        " NEPS_LAZYFS_BUILD (build script). Exit 0 only if every run recovered, 2 when"
        " LazyFS is unavailable.",
    )
    power.add_argument("--runs", type=int, default=10, help="cuts at random instants")
    power.add_argument("--point-runs", type=int, default=0, help="cuts at each named fault point")
    power.add_argument("--window", default="1,6", help="random instants: MIN,MAX seconds")
    power.add_argument("--workers", type=int, default=4, help="worker processes per swarm")
    _add_impl(power)
    _add_durability(power)
    power.add_argument("--seed", type=int, default=0, help="seed of the cut instants and swarms")
    power.add_argument(
        "--precreate",
        action="store_true",
        help="create the run and write it back whole before the swarm (a run created long"
        " before the cut); by default the workers create it",
    )
    power.add_argument("--json", help="write every run as JSON here (default: not written)")
    power.set_defaults(func=cmd_powerloss)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``neps-state``."""
    parser = argparse.ArgumentParser(
        prog="neps-state", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings of the state")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stress_command(sub)

    check = _command(
        sub,
        "check",
        "check a run directory's invariants (exit 0 if clean)",
        "Check a run directory's invariants: every file reads and parses, the journal"
        " matches the trial folders, reports match states, each error is recorded once;"
        " when something is wrong, whether `neps-state repair` would fix it.",
        CHECK_EPILOG,
    )
    check.add_argument("run_dir", help="the run directory to check")
    check.set_defaults(func=cmd_check)

    matrix = _command(
        sub,
        "killmatrix",
        "SIGKILL at every fault point; print the matrix",
        "SIGKILL a worker at every fault point of every mutating operation, --runs times"
        " each: the state must load, hold every acknowledged operation, pass the checker,"
        " and a fresh swarm must finish the run. Exit 0 when every run recovered.",
    )
    matrix.add_argument("--runs", type=int, default=20, help="runs per (operation, point)")
    _add_durability(matrix, "os")
    matrix.set_defaults(func=cmd_killmatrix)

    bench = _command(
        sub,
        "bench",
        "cost per cycle and throughput, beside Optuna's journal",
        "Time one cycle (sample, claim, report) as the run grows, and the throughput of"
        " N workers, each beside Optuna's journal storage in the same run.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=main_bench)

    _add_power_loss_commands(sub)

    doctor = _command(
        sub,
        "doctor",
        "whether a directory's file system gives the state what it relies on",
        "Try, in a scratch folder inside DIR: flock exclusion across processes, atomic"
        " rename under a polling reader, O_APPEND records from two processes, fsync of"
        " files and folders, renameat2 exchange (or the fallback); time a file creation"
        " and an fsynced append. Exit 0 when the state is safe there, 1 when a required"
        " check failed (e.g. locks that do not exclude), 2 when DIR is not a directory.",
    )
    doctor.add_argument("dir", help="a directory on the file system to try (a run's parent)")
    doctor.set_defaults(func=cmd_doctor)

    conformance = _command(
        sub,
        "conformance",
        "which known defects (D1-D11) an implementation shows, by the conformance suite",
        "Run the conformance suite (pytest_neps.suite, the neps-ci budget) against"
        " --impl in fresh pytest processes and list, per known defect D1-D11, in how many"
        " runs a failure named it, then every failure that names none. Exit 0 when"
        " nothing failed, 1 otherwise, 2 when pytest could not run the suite.",
    )
    _add_impl(conformance)
    conformance.add_argument("--runs", type=int, default=1, help="runs of the whole suite")
    conformance.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter of the environment the implementation lives in",
    )
    conformance.set_defaults(func=cmd_conformance)

    show = _command(
        sub,
        "show",
        "trials by state, best objective, errors",
        "Summarize a run directory: its trials by state, the best objective and the"
        " latest error records. Reads only: takes no lock, changes nothing.",
        SHOW_EPILOG,
    )
    show.add_argument("run_dir", help="the run directory to summarize")
    show.add_argument("--errors", type=int, default=5, help="how many recent errors to list")
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neps-state`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
