"""Rendering of ``attncheck bench compare`` and ``attncheck bench history``: rich tables on the terminal, markdown
and JSON reports, plots (PNG files, or images for the HTML page of :mod:`attncheck.bench.html`).

Nothing here computes a statistic (:mod:`attncheck.bench.statistics` does) or reads a run
(:mod:`attncheck.bench.storage` does). Every file is written through
:func:`attncheck.render.write_atomic`: a reader sees the old file or the complete new one, never a
partial write. Tables and reports list benchmarks slower first, then too noisy, faster, unchanged. Benchmarks in
only one of the runs are summarised, not listed, when the other run lacks their target altogether (a run of one
target against a baseline of all): one line per side on the terminal (``--list-unmatched`` lists them), a
collapsed list in the markdown report, the full lists in the JSON report. The cells of a comparison row
(:func:`result_cells`), of a trend row (:func:`trend_cells`) and the summary line (:func:`comparison_summary`) are
made once here, for the terminal, the markdown report and the HTML page alike.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from attncheck.bench.statistics import (
    DEFAULT_THRESHOLD,
    FASTER,
    NOISY,
    RESAMPLES,
    SEED,
    SLOWER,
    UNCHANGED,
    Comparison,
    Result,
    Trend,
    Unmatched,
)
from attncheck.bench.storage import WALL, Run, machine_differences, run_labels
from attncheck.render import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STATUS_ORDER = {SLOWER: 0, NOISY: 1, FASTER: 2, UNCHANGED: 3}
STYLE = {SLOWER: "bold red", FASTER: "green", NOISY: "yellow"}
# the table of a `bench run` (row_cells)
COLUMNS = ["case", "target", "median", "IQR", "GFLOP/s", "roofline GFLOP/s", "of roofline", "of GEMM", "note"]
TREND_COLUMNS = ("benchmark", "runs", "first", "last", "best", "change", "change points")  # of trend_cells
UNMATCHED_SHOWN = 10  # unexplained benchmarks of one run named on the terminal without --list-unmatched


def time_unit(seconds: float) -> tuple[float, str]:
    """(scale, unit) that shows ``seconds`` with an integer part of 1-3 digits: s, ms, µs or ns."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return scale, unit
    return 1e-9, "ns"


def format_seconds(seconds: float) -> str:
    """A time with 3 significant digits and a unit: 1.23 s, 45.6 ms, 789 µs, 12.0 ns."""
    scale, unit = time_unit(seconds)
    return f"{seconds / scale:.3g} {unit}"


def row_cells(info: dict[str, Any]) -> list[str]:
    """One result's table cells, from its ``extra_info`` with ``median_s`` and ``iqr_s`` (as the run prints it and
    as :func:`rows_of` reads it back from the JSON)."""
    case = "-".join((info["device"], info["dtype"], info["pass"], info["mask"], f"B{info['B']}H{info['H']}"))
    case += f"L{info['L']}D{info['D']}"
    notes = [info["impossible"]] if info.get("impossible") else []
    notes += info.get("leftover_work") or []
    gflops, fraction, gemm = info.get("gflops"), info.get("roofline_fraction"), info.get("gemm_fraction")
    return [
        case,
        info["target"],
        format_seconds(info["median_s"]),
        format_seconds(info["iqr_s"]),
        "-" if gflops is None else f"{gflops:.4g}",
        f"{info['roofline_gflops']:.4g}",
        "-" if fraction is None else f"{fraction:.1%}",
        "-" if gemm is None else f"{gemm:.1%}",
        "; ".join(notes),
    ]


def rows_of(doc: dict[str, Any]) -> list[list[str]]:
    """The table of a pytest-benchmark JSON run written by ``bench run`` (or the attention benchmarks)."""
    return [
        row_cells({**b["extra_info"], "median_s": b["stats"]["median"], "iqr_s": b["stats"]["iqr"]})
        for b in doc["benchmarks"]
        if "roofline_gflops" in b.get("extra_info", {})
    ]


def in_report_order(comparison: Comparison) -> list[Result]:
    """The results slower first, then too noisy, faster, unchanged; the largest ratio first within each."""
    return sorted(comparison.results, key=lambda r: (STATUS_ORDER[r.status], -r.ratio))


def result_cells(r: Result) -> list[str]:
    """A comparison row: benchmark, baseline and candidate medians, ratio, CI, p, result, why."""
    return [
        r.name,
        format_seconds(r.baseline_median),
        format_seconds(r.candidate_median),
        f"{r.ratio:.3f}",
        f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
        f"{r.p_value:.2g}",
        r.status,
        r.reason,
    ]


def comparison_summary(c: Comparison) -> str:
    """The counts per status, the threshold and alpha, and the verdict (what the exit status of compare says)."""
    summary = ", ".join(f"{n} {status}" for status, n in c.counts().items())
    verdict = "REGRESSION (exit 1)" if c.exit_code else "no significant regression"
    return f"{summary}; threshold {c.threshold:.0%}, alpha {c.alpha:g}: {verdict}"


def trend_cells(t: Trend, labels: Sequence[str]) -> list[str]:
    """A trend row: benchmark, runs, first, last and best median, change, and the change points as
    "x1.30 at <label> (run i/n, p=...)" (``labels``: :func:`~attncheck.bench.storage.run_labels` of the runs)."""
    medians = t.medians
    points = ", ".join(
        f"x{cp.ratio:.2f} at {labels[cp.index]} (run {cp.index + 1}/{len(labels)}, p={cp.p_value:.1g})"
        for cp in t.change_points
    )
    return [
        t.name,
        str(len(t.positions)),
        format_seconds(medians[0]),
        format_seconds(medians[-1]),
        format_seconds(medians.min()),
        f"{t.change:+.1%}",
        points or "-",
    ]


def _benchmarks(n: int) -> str:
    return f"{n} benchmark{'' if n == 1 else 's'}"


def _unmatched_sides(comparison: Comparison) -> list[tuple[str, str, Unmatched]]:
    """(this side, the other side, its unmatched benchmarks) for the baseline and the candidate."""
    c = comparison
    return [("baseline", "candidate", c.only_in_baseline), ("candidate", "baseline", c.only_in_candidate)]


def _explained(side: str, other: str, u: Unmatched) -> str:
    """The summary of the benchmarks of one run whose target the other run lacks altogether."""
    targets = ", ".join(u.absent_targets)
    return f"{_benchmarks(len(u.explained))} only in the {side} (targets not in the {other}: {targets})"


# --- terminal -------------------------------------------------------------------------------------------------


def make_console() -> Console:
    """Rich console for stdout; 160 columns instead of rich's 80 when stdout is not a terminal (CI logs, pipes)
    and COLUMNS is unset, so that benchmark names are not folded."""
    console = Console(highlight=False, markup=False)  # benchmark names hold [brackets], never markup
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160
    return console


def print_comparison(
    console: Console, comparison: Comparison, notes: Sequence[str], list_unmatched: bool = False
) -> None:
    """The notes (busy machine...), a rich table of the comparison (slower first, then too noisy, faster,
    unchanged), the benchmarks in only one run, and a summary line.

    Benchmarks in one run only: a line per side for those whose target the other run lacks, named only with
    ``list_unmatched``; the others named (the first :data:`UNMATCHED_SHOWN`, or all with ``list_unmatched``).
    """
    c = comparison
    for note in notes:
        console.print(f"note: {note}", style="yellow")
    table = Table(title=f"{c.baseline} -> {c.candidate}", title_justify="left")
    table.add_column("benchmark", overflow="fold")
    for column in ("baseline", "candidate", "ratio"):
        table.add_column(column, justify="right")
    table.add_column(f"{1 - c.alpha:.0%} CI", justify="center")
    table.add_column("p", justify="right")
    table.add_column("result")
    table.add_column("why")
    for r in in_report_order(c):
        table.add_row(*result_cells(r), style=STYLE.get(r.status))
    console.print(table)
    for side, other, u in _unmatched_sides(c):
        if u.explained:
            listed = ": " + ", ".join(u.explained) if list_unmatched else "; --list-unmatched names them"
            console.print(_explained(side, other, u) + listed)
        if u.unexplained:
            shown = u.unexplained if list_unmatched else u.unexplained[:UNMATCHED_SHOWN]
            more = len(u.unexplained) - len(shown)
            console.print(
                f"{_benchmarks(len(u.unexplained))} only in the {side}: "
                + ", ".join(shown)
                + (f", and {more} more (--list-unmatched names them)" if more else "")
            )
    console.print(comparison_summary(c), style="bold red" if c.exit_code else None)


def machines_note(runs: Sequence[Run]) -> str | None:
    """A note when the runs of a history come from different machines, else None."""
    if any(machine_differences(runs[0].machine_info, r.machine_info) for r in runs[1:]):
        return "the runs come from different machines; a change point may be a machine change"
    return None


def print_history(console: Console, runs: Sequence[Run], results: Sequence[Trend]) -> None:
    """Rich trend table: one row per benchmark, change points as "x1.30 at <label> (run i/n)" (labels of
    :func:`~attncheck.bench.storage.run_labels`)."""
    if (note := machines_note(runs)) is not None:
        console.print(f"note: {note}")
    labels = run_labels(runs)
    table = Table(title=f"{len(runs)} runs, {labels[0]} .. {labels[-1]}", title_justify="left")
    first, *numbers, last = TREND_COLUMNS
    table.add_column(first, overflow="fold")
    for column in numbers:
        table.add_column(column, justify="right")
    table.add_column(last)
    for t in results:
        table.add_row(*trend_cells(t, labels), style="yellow" if t.change_points else None)
    console.print(table)


# --- report files ---------------------------------------------------------------------------------------------


def to_markdown(comparison: Comparison, notes: list[str]) -> str:
    """The comparison as a GitHub-flavoured markdown report (slower first), with the notes (busy machine...)."""
    c = comparison
    counts = c.counts()
    lines = [
        "# attncheck bench compare",
        "",
        f"Baseline `{c.baseline}`, candidate `{c.candidate}`; threshold {c.threshold:.0%}, alpha {c.alpha:g} "
        f"({1 - c.alpha:.0%} bootstrap CI of the ratio of medians, Mann-Whitney U on the raw rounds).",
        "",
        *[f"> note: {note}\n" for note in notes],
        ", ".join(f"**{n}** {status}" for status, n in counts.items())
        + f" -> {'REGRESSION' if c.exit_code else 'no regression'}",
        "",
        "| benchmark | baseline | candidate | ratio | CI | p | result | why |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for r in in_report_order(c):
        name, *cells = result_cells(r)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for side, other, u in _unmatched_sides(c):
        if u.fullnames:  # a summary, then every name in a collapsed block (GitHub renders <details> folded)
            lines.append("")
            if u.explained:
                lines.append(_explained(side, other, u) + ".")
            if u.unexplained:
                count = _benchmarks(len(u.unexplained))
                lines.append(f"{count} only in the {side}, of targets that both runs benchmark or that record none.")
            lines += ["", f"<details><summary>Only in the {side} ({len(u.fullnames)})</summary>", ""]
            lines += [f"- `{n}`" for n in u.fullnames] + ["", "</details>"]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison, machine_mismatch: list[str], notes: list[str]) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (times in seconds)."""
    c = comparison
    return {
        "baseline": str(c.baseline),
        "candidate": str(c.candidate),
        "threshold": c.threshold,
        "alpha": c.alpha,
        "resamples": RESAMPLES,
        "seed": SEED,
        "machine_mismatch": machine_mismatch,
        "notes": notes,
        "metrics": {
            device: {
                "metric": choice.metric,
                "reason": choice.reason,
                "calibration_s_per_unit": list(choice.speeds),
                "comparable": choice.comparable,
            }
            for device, choice in c.choices.items()
        },
        "summary": c.counts(),
        "exit_code": c.exit_code,
        "benchmarks": [
            {
                "fullname": r.fullname,
                "name": r.name,
                "status": r.status,
                "reason": r.reason,
                "ratio": r.ratio,
                "ci": [r.ci_low, r.ci_high],
                "p_value": r.p_value,
                "metric": r.metric,
                "baseline_median_s": r.baseline_median,
                "candidate_median_s": r.candidate_median,
                "baseline_rounds": r.baseline_rounds,
                "candidate_rounds": r.candidate_rounds,
            }
            for r in c.results
        ],
        "only_in_baseline": c.only_in_baseline.fullnames,
        "only_in_candidate": c.only_in_candidate.fullnames,
        "targets_only_in_baseline": c.only_in_baseline.absent_targets,
        "targets_only_in_candidate": c.only_in_candidate.absent_targets,
    }


def write_comparison(
    comparison: Comparison,
    machine_mismatch: list[str],
    notes: list[str],
    markdown: Path | None = None,
    json_path: Path | None = None,
) -> None:
    """Write the markdown and/or JSON report, each atomically; both are rendered before either is written."""
    outputs = []
    if markdown:
        outputs.append((markdown, to_markdown(comparison, notes).encode()))
    if json_path:
        report = to_json(comparison, machine_mismatch, notes)
        outputs.append((json_path, (json.dumps(report, indent=2) + "\n").encode()))
    for path, data in outputs:
        write_atomic(path, data)


# --- plots ----------------------------------------------------------------------------------------------------


def plot_name(t: Trend) -> str:
    """A file name for the benchmark's plot: a readable slug plus a hash of the fullname (unique)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", t.name).strip("_")[:100]
    return f"{slug}-{hashlib.sha1(t.fullname.encode()).hexdigest()[:8]}.png"


def metric_of(obj: object) -> str:
    """What a trend, a result or a comparison measures, for labels: its ``metric``, else those of its results,
    else wall time (runs recorded before attncheck measured anything else)."""
    if hasattr(obj, "metric"):
        return str(obj.metric)
    return ", ".join(sorted({metric_of(r) for r in getattr(obj, "results", ())})) or WALL


def trend_figure(t: Trend, runs: Sequence[Run], threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """The plot of one benchmark: median per run, the rounds' interquartile range as a band, the piecewise-constant
    levels between change points, and the change points as dashed red lines labelled with their ratio; x ticks
    labelled by :func:`~attncheck.bench.storage.run_labels` (runs of one commit told apart).

    The y axis spans at least the threshold band around the median of the run medians, [m / (1 + t), m (1 + t)]
    (``compare``'s band, symmetric in log time), and more where the data need it. An axis fitted to the data alone
    makes a 2% wobble fill the plot and look like a step; with the band as the smallest span, a change below the
    threshold fills at most about half the height (a 2% step at t = 10%, a tenth of it), so what ``compare``
    calls unchanged looks small and a change point looks like one. The alternative, an axis from 0, is honest
    too but squeezes a 30% step into a third of the height and hides the rounds' spread; the band keeps the
    scale tied to the rule that decides what a change is.

    Uses matplotlib's Agg canvas directly (no pyplot), so no global backend state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    medians = t.medians
    scale, unit = time_unit(float(medians.min()))
    x = np.array(t.positions)
    # Quartiles by numpy's default (linear) interpolation: Hyndman & Fan 1996, definition 7.
    q1 = np.array([np.percentile(r, 25) for r in t.rounds]) / scale
    q3 = np.array([np.percentile(r, 75) for r in t.rounds]) / scale
    fig = Figure(figsize=(max(6.0, 0.35 * len(runs) + 3), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(x, q1, q3, alpha=0.25, color="tab:blue", label="rounds IQR", step=None)
    ax.plot(x, medians / scale, "o-", color="tab:blue", markersize=3, label="median")
    edges = [0, *[t.positions.index(cp.index) for cp in t.change_points], len(t.positions)]
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        # Each segment's level: the pooled median of its rounds, as statistics.change_points measures steps.
        level = np.median(np.concatenate(t.rounds[a:b])) / scale
        label = "level between change points" if i == 0 else "_nolegend_"
        ax.hlines(level, x[a] - 0.4, x[b - 1] + 0.4, color="tab:orange", linewidth=2, label=label)
    for i, cp in enumerate(t.change_points):
        ax.axvline(
            cp.index - 0.5,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label="change point" if i == 0 else "_nolegend_",
        )
        ax.text(cp.index - 0.45, 0.97, f"x{cp.ratio:.2f}", transform=ax.get_xaxis_transform(), ha="left", va="top")
    middle = float(np.median(medians)) / scale
    low, high = min(q1.min(), middle / (1 + threshold)), max(q3.max(), middle * (1 + threshold))
    margin = 0.05 * (high - low)
    ax.set_ylim(low - margin, high + margin)
    ax.set_xticks(range(len(runs)), run_labels(runs), rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(runs) - 0.5)
    ax.set_ylabel(f"{metric_of(t)} per call ({unit})")
    ax.set_title(t.name, fontsize=8)
    ax.legend(loc="best", fontsize=7)
    return fig


def trend_image(t: Trend, runs: Sequence[Run], threshold: float = DEFAULT_THRESHOLD) -> bytes:
    """:func:`trend_figure` as PNG bytes: the files of ``--plot`` and the images of the HTML page alike."""
    buffer = io.BytesIO()
    trend_figure(t, runs, threshold).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_trend(
    t: Trend, runs: Sequence[Run], path: str | os.PathLike[str], threshold: float = DEFAULT_THRESHOLD
) -> None:
    """:func:`trend_image` written atomically to ``path``."""
    write_atomic(path, trend_image(t, runs, threshold))


def write_plots(
    directory: Path, runs: Sequence[Run], results: Sequence[Trend], threshold: float = DEFAULT_THRESHOLD
) -> None:
    """One PNG per benchmark (:func:`plot_trend`) into ``directory``, created if absent, named by :func:`plot_name`."""
    directory.mkdir(parents=True, exist_ok=True)
    for t in results:
        plot_trend(t, runs, directory / plot_name(t), threshold)
