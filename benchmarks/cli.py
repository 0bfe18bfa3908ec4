"""``attncheck bench compare`` and ``attncheck bench history``: argparse wiring, terminal tables, report files.

The main CLI (``properties/cli.py``) adds these sub-commands to its ``bench`` group with :func:`register`; each
sets ``func`` to a handler ``handler(args) -> int`` that returns the exit status. Standalone::

    python -m benchmarks.cli compare BASELINE.json CANDIDATE.json [--threshold PCT] [--alpha A] [--force]
                                     [--markdown PATH] [--json PATH]
    python -m benchmarks.cli history PATH... [--plot DIR] [--threshold PCT] [--alpha A]

Exit status: compare 0 (no regression), 1 (a benchmark significantly slower beyond the threshold), 2 (unusable
input, runs from different machines without ``--force``, unwritable output); history 0 or 2. Every error is one
line ``attncheck: error: ...`` on stderr, and every input is read and checked before any output is written, so
an error leaves existing report files as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.compare import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    FASTER,
    NOISY,
    SLOWER,
    STATUS_ORDER,
    Comparison,
    Run,
    RunFormatError,
    compare_runs,
    format_seconds,
    load_note,
    load_run,
    machine_differences,
    to_json,
    to_markdown,
)
from benchmarks.history import Trend, load_history, plot_name, plot_trend, run_label, trends
from properties.render import write_atomic

STYLE = {SLOWER: "bold red", FASTER: "green", NOISY: "yellow"}


class UsageError(Exception):
    """A command-line problem reported as one line with exit status 2."""


def percent(text: str) -> float:
    """``--threshold`` value: a percentage (``10`` or ``10%``) -> a fraction (0.1)."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 < value < 1000:
        raise argparse.ArgumentTypeError(f"threshold must be between 0 and 1000 percent, got {text!r}")
    return value / 100


def probability(text: str) -> float:
    """``--alpha`` value: a significance level in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"alpha must be between 0 and 1, got {text!r}")
    return value


def _add_statistics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        type=percent,
        default=DEFAULT_THRESHOLD,
        metavar="PCT",
        help=f"smallest change that matters, in percent (default {DEFAULT_THRESHOLD:.0%})",
    )
    parser.add_argument(
        "--alpha",
        type=probability,
        default=DEFAULT_ALPHA,
        metavar="A",
        help=f"significance level of the rank test and 1 - level of the CI (default {DEFAULT_ALPHA:g})",
    )


def register(subparsers: Any) -> None:
    """Add ``compare`` and ``history`` to an argparse subparsers object (the ``bench`` group)."""
    compare = subparsers.add_parser(
        "compare",
        help="compare two pytest-benchmark JSON runs; exit 1 on a significant regression",
        description="Compare a candidate pytest-benchmark run with a baseline (both with raw rounds): ratio of "
        "medians with a bootstrap CI, Mann-Whitney U on the rounds; exit 1 when a benchmark is significantly "
        "slower beyond the threshold.",
    )
    compare.add_argument("baseline", type=Path, help="pytest-benchmark JSON with raw rounds (stats.data)")
    compare.add_argument("candidate", type=Path, help="pytest-benchmark JSON with raw rounds (stats.data)")
    _add_statistics_options(compare)
    compare.add_argument("--force", action="store_true", help="compare runs recorded on different machines")
    compare.add_argument("--markdown", type=Path, metavar="PATH", help="also write a markdown report")
    compare.add_argument("--json", type=Path, metavar="PATH", help="also write a JSON report")
    compare.set_defaults(func=compare_command)

    history = subparsers.add_parser(
        "history",
        help="trend table, change points and plots of many pytest-benchmark JSON runs",
        description="Order pytest-benchmark runs by commit time, show each benchmark's trend and change points "
        "(binary segmentation with a rank test on the raw rounds), and optionally plot them.",
    )
    history.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="JSON runs, or directories of them")
    _add_statistics_options(history)
    history.add_argument("--plot", type=Path, metavar="DIR", help="write one PNG per benchmark into DIR")
    history.set_defaults(func=history_command)


def make_console() -> Console:
    """Rich console for stdout; 160 columns instead of rich's 80 when stdout is not a terminal (CI logs, pipes)
    and COLUMNS is unset, so that benchmark names are not folded."""
    console = Console(highlight=False, markup=False)  # benchmark names hold [brackets], never markup
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160
    return console


def _error(message: str) -> int:
    print(f"attncheck: error: {message}", file=sys.stderr)
    return 2


def _check_output_dir(path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {path.parent} does not exist")


def compare_command(args: argparse.Namespace) -> int:
    """``bench compare``: see the module docstring for the exit status."""
    try:
        _check_output_dir(args.markdown)
        _check_output_dir(args.json)
        baseline, candidate = load_run(args.baseline), load_run(args.candidate)
        mismatch = machine_differences(baseline.machine_info, candidate.machine_info)
        if mismatch and not args.force:
            raise UsageError(
                f"{args.baseline} and {args.candidate} were recorded on different machines "
                f"({'; '.join(mismatch)}); pass --force to compare anyway"
            )
        comparison = compare_runs(baseline, candidate, args.threshold, args.alpha)
        notes = [note for note in (load_note(baseline), load_note(candidate)) if note]
        if mismatch:
            notes.append(f"different machines, compared because of --force: {'; '.join(mismatch)}")
        console = make_console()
        for note in notes:
            console.print(f"note: {note}", style="yellow")
        print_comparison(console, comparison)
        outputs = []
        if args.markdown:
            outputs.append((args.markdown, to_markdown(comparison, notes).encode()))
        if args.json:
            report = to_json(comparison, mismatch, notes)
            outputs.append((args.json, (json.dumps(report, indent=2) + "\n").encode()))
        for path, data in outputs:
            write_atomic(path, data)
    except (RunFormatError, UsageError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write {exc.filename or 'output'}: {exc.strerror or exc}")
    return comparison.exit_code


def print_comparison(console: Console, comparison: Comparison) -> None:
    """Rich table of the comparison (slower first, then too noisy, faster, unchanged), and a summary line."""
    c = comparison
    table = Table(title=f"{c.baseline} -> {c.candidate}", title_justify="left")
    table.add_column("benchmark", overflow="fold")
    for column in ("baseline", "candidate", "ratio"):
        table.add_column(column, justify="right")
    table.add_column(f"{1 - c.alpha:.0%} CI", justify="center")
    table.add_column("p", justify="right")
    table.add_column("result")
    table.add_column("why")
    for r in sorted(c.results, key=lambda r: (STATUS_ORDER[r.status], -r.ratio)):
        table.add_row(
            r.name,
            format_seconds(r.baseline_median),
            format_seconds(r.candidate_median),
            f"{r.ratio:.3f}",
            f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
            f"{r.p_value:.2g}",
            r.status,
            r.reason,
            style=STYLE.get(r.status),
        )
    console.print(table)
    for title, names in (("only in the baseline", c.only_in_baseline), ("only in the candidate", c.only_in_candidate)):
        if names:
            console.print(f"{len(names)} {title}: " + ", ".join(names))
    summary = ", ".join(f"{n} {status}" for status, n in c.counts().items())
    verdict = "REGRESSION (exit 1)" if c.exit_code else "no significant regression"
    console.print(
        f"{summary}; threshold {c.threshold:.0%}, alpha {c.alpha:g}: {verdict}",
        style="bold red" if c.exit_code else None,
    )


def history_command(args: argparse.Namespace) -> int:
    """``bench history``: trend table and change points, PNG plots with ``--plot DIR``; 0, or 2 on an error."""
    try:
        if args.plot is not None and args.plot.exists() and not args.plot.is_dir():
            raise UsageError(f"--plot {args.plot}: exists and is not a directory")
        runs = load_history(args.paths)
        results = trends(runs, args.threshold, args.alpha)
        console = make_console()
        print_history(console, runs, results)
        if args.plot is not None:
            args.plot.mkdir(parents=True, exist_ok=True)
            for t in results:
                plot_trend(t, runs, args.plot / plot_name(t))
            console.print(f"{len(results)} plots written to {args.plot}")
    except (RunFormatError, UsageError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write {exc.filename or 'plots'}: {exc.strerror or exc}")
    return 0


def print_history(console: Console, runs: Sequence[Run], results: Sequence[Trend]) -> None:
    """Rich trend table: one row per benchmark, change points as "x1.30 at <label> (run i/n)"."""
    if any(machine_differences(runs[0].machine_info, r.machine_info) for r in runs[1:]):
        console.print("note: the runs come from different machines; a change point may be a machine change")
    table = Table(title=f"{len(runs)} runs, {run_label(runs[0])} .. {run_label(runs[-1])}", title_justify="left")
    table.add_column("benchmark", overflow="fold")
    for column in ("runs", "first", "last", "best", "change"):
        table.add_column(column, justify="right")
    table.add_column("change points")
    for t in results:
        medians = t.medians
        points = ", ".join(
            f"x{cp.ratio:.2f} at {run_label(runs[cp.index])} (run {cp.index + 1}/{len(runs)}, p={cp.p_value:.1g})"
            for cp in t.change_points
        )
        table.add_row(
            t.name,
            str(len(t.positions)),
            format_seconds(medians[0]),
            format_seconds(medians[-1]),
            format_seconds(medians.min()),
            f"{t.change:+.1%}",
            points or "-",
            style="yellow" if t.change_points else None,
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m benchmarks.cli {compare,history} ...``."""
    parser = argparse.ArgumentParser(prog="attncheck bench", description="Compare pytest-benchmark histories.")
    register(parser.add_subparsers(dest="command", required=True, metavar="{compare,history}"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
