"""The benchmark as a text report and as a plot.

The command line that prints and draws them, ``neps-state bench``, is in
``pytest_neps/cli.py``, with its options in ``pytest_neps/bench/_cli.py``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_neps.bench._common import _fmt

# -- report -----------------------------------------------------------------------


def _table(
    stream: IO[str], header: Sequence[str], rows: Sequence[Sequence[str]], md: bool = False
) -> None:
    if md:
        stream.write("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for r in rows:
            stream.write("| " + " | ".join(r) + " |\n")
        stream.write("\n")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    stream.write(line + "\n" + "-" * len(line) + "\n")
    for r in rows:
        stream.write("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + "\n")


def render_report(result: Mapping[str, Any], stream: IO[str], *, md: bool = False) -> None:
    """Write every figure and ratio of ``result`` as readable tables to ``stream``.

    ``md``: as Markdown (the tables as Markdown tables, each line a paragraph), for
    documents that quote a run without copying its figures by hand.
    """
    if md:
        buffer = io.StringIO()
        _render(result, buffer, md=True)
        stream.write(_paragraphs(buffer.getvalue()))
    else:
        _render(result, stream, md=False)


def _paragraphs(text: str) -> str:
    """Markdown of a report: each prose line its own paragraph, table rows together."""
    out: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        is_row = line.startswith("|")
        is_item = line.startswith("- ")
        together = (is_row and out and out[-1].startswith("|")) or (
            is_item and out and out[-1].startswith("- ")
        )
        if out and not together:
            out.append("")
        out.append(line if is_row or line.startswith("- ") else line.strip())
    return "\n".join(out) + "\n"


def machine_line(m: Mapping[str, Any]) -> str:
    """What the figures were measured on, in one line."""
    return (
        f"Python {m['python']}, {m['cpus_usable']} usable CPUs ({m['cpu_count']} total),"
        f" {m['filesystem'] or '?'} at {m['directory']}"
    )


def target_line(t: Mapping[str, Any]) -> str:
    """One target: met, MISSED or not measured, its name and value."""
    status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
    value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
    return f"[{status:>12}] {t['name']}: {value}"


def _render(result: Mapping[str, Any], stream: IO[str], *, md: bool) -> None:
    m, opt = result["machine"], result["optuna"]
    stream.write(f"neps-state bench: {machine_line(m)}\n")
    create = m.get("file_create_us")
    if create:
        stream.write(
            f"  creating a file there: {create['before']:.0f} us before the runs,"
            f" {create['after']:.0f} us after (median of 50; it grows for minutes"
            " after many files are deleted, and slows both sides)\n"
        )
    stream.write(f"  cycle, ours:   {result['cycle']['ours']}\n")
    if opt["used"]:
        stream.write(f"  cycle, optuna: {result['cycle']['optuna']}\n")
        stream.write(f"  optuna {opt['version']}: {opt['backend']}\n")
    else:
        stream.write(f"  optuna: {opt['note']}\n")
    if result["cycle_cost"]:
        _render_cost(result, stream, md)
    if result["throughput"]:
        _render_throughput(result, stream, md)
    stream.write("\nTargets\n")
    for t in result["targets"]:
        stream.write(f"{'- ' if md else '  '}{target_line(t)}\n")
    stream.write(f"\nelapsed: {result.get('elapsed_s', 0.0):.0f} s\n")


def _render_cost(result: Mapping[str, Any], stream: IO[str], md: bool) -> None:
    cost = sorted(result["cycle_cost"], key=lambda r: (r["durability"], r["trials"]))
    base = cost[0]["base_trials"]
    stream.write(
        f"\nCost of one cycle, ms, 1 process, {result['settings']['samples']} cycles per size:"
        f" ms = median of the means of batches of {result['settings']['batch_size']};"
        " ref = a fresh run of"
        f" {base} trials timed in the same rounds; xref = ms / ref; x{base} = ratio to the"
        f" first size's same column\n"
    )
    header = ["trials", "durab.", "ms", "mean", "p95", "ref", "xref", f"x{base}"]
    header += [f"mean x{base}", "consol", "amort", f"amort x{base}", "ours/optuna"]
    rows = [
        [
            str(r["trials"]),
            r["durability"],
            _fmt(r["ours_ms"], ".3f"),
            _fmt(r["ours_mean_ms"], ".3f"),
            _fmt(r["ours_p95_ms"], ".3f"),
            _fmt(r.get("ours_paired_base_ms"), ".3f"),
            _fmt(r.get("ours_ms_vs_paired_base")),
            _fmt(r["ours_ms_vs_base"]),
            _fmt(r["ours_mean_ms_vs_base"]),
            _fmt(r["ours_consolidate_ms"], ".1f"),
            _fmt(r["ours_amortized_ms"], ".3f"),
            _fmt(r["ours_amortized_ms_vs_base"]),
            _fmt(r.get("ours_over_optuna")),
        ]
        for r in cost
    ]
    stream.write("ours (neps_state)\n")
    _table(stream, header, rows, md)
    stream.write(
        "  consol = one rewrite of the whole trial cache, ms; amort = ms + consol spread over"
        " the cycles between two rewrites by record count (a rewrite by size may come sooner)\n"
    )
    optuna_rows = {r["trials"]: r for r in cost if r.get("optuna_ms") is not None}
    if optuna_rows:
        header = ["trials", "ms", "mean", "p95", "ref", "xref", f"x{base}", f"mean x{base}"]
        rows = [
            [
                str(n),
                _fmt(r["optuna_ms"], ".3f"),
                _fmt(r["optuna_mean_ms"], ".3f"),
                _fmt(r["optuna_p95_ms"], ".3f"),
                _fmt(r.get("optuna_paired_base_ms"), ".3f"),
                _fmt(r.get("optuna_ms_vs_paired_base")),
                _fmt(r["optuna_ms_vs_base"]),
                _fmt(r["optuna_mean_ms_vs_base"]),
            ]
            for n, r in sorted(optuna_rows.items())
        ]
        stream.write("Optuna journal (always fsync; measured in the same rounds as every row)\n")
        _table(stream, header, rows, md)


def _render_throughput(result: Mapping[str, Any], stream: IO[str], md: bool) -> None:
    tput = sorted(result["throughput"], key=lambda r: (r["durability"], r["workers"]))
    s = result["settings"]
    settle = s.get("settle_s") or 0
    paused = f", {settle:g} s pause before each run" if settle else ""
    stream.write(
        f"\nThroughput, cycles/s, {s['cycles_per_worker']} cycles per worker"
        f" ({s['repeats']} run(s), median{paused}): window = first operation after start-up"
        " to the last report; x1 = ratio to the same column with the fewest workers\n"
    )
    header = ["workers", "durab.", "ours", "x1", "optuna", "x1", "ours/optuna", "problems"]
    rows = [
        [
            str(r["workers"]),
            r["durability"],
            _fmt(r["ours_cycles_per_s"], ".1f"),
            _fmt(r["ours_scaling_vs_base"]),
            _fmt(r.get("optuna_cycles_per_s"), ".1f"),
            _fmt(r.get("optuna_scaling_vs_base")),
            _fmt(r.get("ours_over_optuna")),
            str(len(r["ours_problems"]) + len(r.get("optuna_problems", []))),
        ]
        for r in tput
    ]
    _table(stream, header, rows, md)
    for r in tput:
        for p in (*r["ours_problems"], *r.get("optuna_problems", [])):
            stream.write(f"  problem ({r['durability']}, {r['workers']} workers): {p}\n")


# -- plot -------------------------------------------------------------------------


Series = tuple[str, str, str, str, list[Mapping[str, Any]]]
"""Who (``ours`` or ``optuna``), label, line style, color, rows."""

_STYLES = {"fsync": "-", "os": "--"}


def plot(result: Mapping[str, Any], path: Path | str) -> None:
    """Two panels: ms per cycle vs trials (log x), cycles/s vs workers; ours beside Optuna."""
    import matplotlib as mpl  # noqa: PLC0415 - optional dependency

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - optional dependency

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    _plot_cost(left, result)
    _plot_throughput(right, result)
    m = result["machine"]
    fig.suptitle(
        f"neps_state vs Optuna JournalFileBackend: {m['cpus_usable']} CPUs,"
        f" {m['filesystem'] or '?'}, Python {m['python']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(result: Mapping[str, Any], part: str, x: str, optuna_key: str) -> list[Series]:
    rows = result[part]
    out: list[Series] = [
        (
            "ours",
            f"neps_state ({d})",
            _STYLES[d],
            "tab:blue",
            sorted((r for r in rows if r["durability"] == d), key=lambda r: r[x]),
        )
        for d in result["durability"]
    ]
    # Optuna's figures repeat on the rows of every durability: one line.
    optuna_rows = {r[x]: r for r in rows if r.get(optuna_key) is not None}
    out.append(
        (
            "optuna",
            "Optuna journal (fsync)",
            "-",
            "tab:orange",
            sorted(optuna_rows.values(), key=lambda r: r[x]),
        )
    )
    return [s for s in out if s[4]]


def _not_measured(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _plot_cost(ax: Any, result: Mapping[str, Any]) -> None:
    cost = result["cycle_cost"]
    if not cost:
        _not_measured(ax, "Cost of one cycle")
        return
    base = cost[0]["base_trials"]
    for who, label, style, color, rows in _series(result, "cycle_cost", "trials", "optuna_ms"):
        xs = [r["trials"] for r in rows]
        marker = "s" if who == "optuna" else "o"
        ax.plot(xs, [r[f"{who}_ms"] for r in rows], style, marker=marker, color=color, label=label)
        refs = [r.get(f"{who}_paired_base_ms") for r in rows]
        if None in refs:
            continue
        # The fresh base-size run timed in the same rounds shows the machine's drift.
        ax.plot(xs, refs, ":", color=color, alpha=0.5, label=f"{label}: {base}-trial ref")
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(
                f"x{r[f'{who}_ms_vs_paired_base']:.2f}",
                (x, r[f"{who}_ms"]),
                textcoords="offset points",
                xytext=(6, 6 if who == "ours" else -14),
                fontsize=8,
                color=color,
            )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("trials in the run (log scale)")
    ax.set_ylabel("ms per cycle (median of batches)")
    ax.set_title("Cost of one cycle as the run grows (1 process; xN = vs the ref)")
    ax.grid(visible=True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_throughput(ax: Any, result: Mapping[str, Any]) -> None:
    tput = result["throughput"]
    if not tput:
        _not_measured(ax, "Throughput")
        return
    for who, label, style, color, rows in _series(
        result, "throughput", "workers", "optuna_cycles_per_s"
    ):
        done = [r for r in rows if r.get(f"{who}_cycles_per_s") is not None]
        xs = [r["workers"] for r in done]
        ys = [r[f"{who}_cycles_per_s"] for r in done]
        runs = [[v for v in r.get(f"{who}_runs_cycles_per_s", []) if v is not None] for r in done]
        # Repeated runs: the bar spans the slowest to the fastest run.
        lows = [y - min(v, default=y) for y, v in zip(ys, runs, strict=True)]
        highs = [max(v, default=y) - y for y, v in zip(ys, runs, strict=True)]
        marker = "s" if who == "optuna" else "o"
        ax.errorbar(
            xs,
            ys,
            yerr=[lows, highs],
            fmt=style,
            marker=marker,
            color=color,
            capsize=3,
            label=label,
        )
        for x, y, r in zip(xs, ys, done, strict=True):
            if who == "ours" and r.get("ours_over_optuna") is not None:
                ax.annotate(
                    f"x{r['ours_over_optuna']:.2f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(6, 6 if style == _STYLES["os"] else -12),
                    fontsize=8,
                    color=color,
                )
    ax.set_xscale("log", base=2)
    ticks = sorted({r["workers"] for r in tput})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("cycles per second")
    ax.set_title("Throughput of N workers on one run (xN = neps_state / Optuna)")
    ax.grid(visible=True, alpha=0.3)
    ax.legend(fontsize=8)
