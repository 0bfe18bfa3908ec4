"""``attncheck bench compare`` and ``attncheck bench history``: the argparse front, from arguments to exit status.

The main CLI (``properties/cli.py``) adds these sub-commands to its ``bench`` group with :func:`register`; each
sets ``func`` to a handler ``handler(args) -> int`` that returns the exit status. Standalone::

    python -m attncheck.bench.cli compare BASELINE.json CANDIDATE.json [--threshold PCT] [--alpha A] [--force]
                                     [--list-unmatched] [--markdown PATH] [--json PATH]
    python -m attncheck.bench.cli history PATH... [--plot DIR] [--html DIR] [--threshold PCT] [--alpha A]

Exit status: compare 0 (no regression), 1 (a benchmark significantly slower beyond the threshold), 2 (unusable
input, runs from different machines without ``--force``, unwritable output); history 0 or 2. Every error is one
line ``attncheck: error: ...`` on stderr, and every input is read and checked before any output is written, so
an error leaves existing report files as they were.

``history --html DIR`` writes ``DIR/index.html``, one self-contained page: a chart per benchmark with its change
points, the trend table, and the comparison of the last two runs by ``compare``'s rule (none for one run).

Layers: :mod:`~attncheck.bench.storage` reads the runs, :mod:`~attncheck.bench.statistics`
compares them, :mod:`~attncheck.bench.report` renders the tables, reports and plots,
:mod:`~attncheck.bench.html` the history page.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attncheck.bench.ab import add_parser as add_ab_parser
from attncheck.bench.html import history_page
from attncheck.bench.report import (
    UNMATCHED_SHOWN,
    make_console,
    print_comparison,
    print_history,
    write_comparison,
    write_plots,
)
from attncheck.bench.run import add_parser as add_run_parser
from attncheck.bench.statistics import DEFAULT_ALPHA, DEFAULT_THRESHOLD, compare_runs, trends
from attncheck.bench.storage import HOST_FIELDS, load_history, load_note, load_run, machine_differences
from attncheck.errors import UsageError
from attncheck.options import add_verify_options
from attncheck.render import check_writable, write_atomic


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
        help=f"smallest change that matters, in percent (default {DEFAULT_THRESHOLD * 100:g}%%)",  # argparse: %% is %
    )
    parser.add_argument(
        "--alpha",
        type=probability,
        default=DEFAULT_ALPHA,
        metavar="A",
        help=f"significance level of the rank test and 1 - level of the CI (default {DEFAULT_ALPHA:g})",
    )


def add_declaration_options(parser: argparse.ArgumentParser) -> None:
    """``attncheck verify``'s --device, --dtype and capability declarations, from their one definition
    (:mod:`attncheck.options`), so that a target is benchmarked as it is verified."""
    run = parser.add_argument_group("what to run on (as attncheck verify)")
    caps = parser.add_argument_group("capability declarations (as attncheck verify and attncheck.declare(...))")

    def only_run_options(flag: str, **kwargs: Any) -> None:
        if flag in ("--device", "--dtype"):  # the property run's other options (--profile...) time nothing
            run.add_argument(flag, **kwargs)

    add_verify_options(only_run_options, add_capability=caps.add_argument)


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
    compare.add_argument(
        "--list-unmatched",
        action="store_true",
        help="name every benchmark found in only one of the runs (default: one summary line for those of targets "
        f"the other run lacks, and the first {UNMATCHED_SHOWN} names of the others)",
    )
    compare.add_argument("--markdown", type=Path, metavar="PATH", help="also write a markdown report")
    compare.add_argument("--json", type=Path, metavar="PATH", help="also write a JSON report")
    compare.set_defaults(func=compare_command)

    history = subparsers.add_parser(
        "history",
        help="trend table, change points, plots and an HTML page of many pytest-benchmark JSON runs",
        description="Order pytest-benchmark runs by commit time, show each benchmark's trend and change points "
        "(binary segmentation with a rank test on the raw rounds, confirmed by compare's rule), and optionally "
        "plot them (PNG files) or write one self-contained HTML page.",
    )
    history.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="JSON runs, or directories of them")
    _add_statistics_options(history)
    history.add_argument("--plot", type=Path, metavar="DIR", help="write one PNG per benchmark into DIR")
    history.add_argument(
        "--html",
        type=Path,
        metavar="DIR",
        help="write DIR/index.html, one self-contained page: a chart per benchmark with its change points marked, "
        "the trend table, and the comparison of the last two runs (DIR is created if missing)",
    )
    history.set_defaults(func=history_command)
    add_ab_parser(subparsers, _add_statistics_options, add_declaration_options)
    add_run_parser(subparsers, add_declaration_options)


def _error(message: str) -> int:
    print(f"attncheck: error: {message}", file=sys.stderr)
    return 2


def compare_command(args: argparse.Namespace) -> int:
    """``bench compare``: see the module docstring for the exit status."""
    try:
        for flag, path in (("--markdown", args.markdown), ("--json", args.json)):
            if path is not None:
                check_writable(flag, path)  # before any run is read
        baseline, candidate = load_run(args.baseline), load_run(args.candidate)
        mismatch = machine_differences(baseline.machine_info, candidate.machine_info)
        if mismatch and not args.force:
            raise UsageError(
                f"{args.baseline} and {args.candidate} were recorded on different machines "
                f"({'; '.join(mismatch)}); pass --force to compare anyway"
            )
        comparison = compare_runs(baseline, candidate, args.threshold, args.alpha)
        hosts = machine_differences(baseline.machine_info, candidate.machine_info, HOST_FIELDS)
        unmeasured = [c for c in comparison.choices.values() if not c.speeds]
        if hosts and unmeasured and not args.force:
            raise UsageError(
                f"{args.baseline} and {args.candidate} were recorded on different hosts ({'; '.join(hosts)}) and "
                f"their speeds were not measured: {unmeasured[0].reason.removeprefix('wall time: ')}; "
                "pass --force to compare anyway"
            )
        apart = [c for c in comparison.choices.values() if not c.comparable]
        if apart and not args.force:
            raise UsageError(
                f"{args.baseline} and {args.candidate} ran at different speeds ({apart[0].reason.partition('(')[2]} "
                "further apart than a busy neighbour moves one machine: the machines differ, and no metric measured "
                "compares them reliably at this threshold; pass --force to compare in normalised wall time"
            )
        notes = [note for note in (load_note(baseline), load_note(candidate)) if note]
        if mismatch or hosts:
            notes.append(f"different machines: {'; '.join(mismatch + hosts)}")
        notes += [f"decided in {c.reason}" for c in comparison.choices.values()]
        print_comparison(make_console(), comparison, notes, args.list_unmatched)
        write_comparison(comparison, mismatch, notes, args.markdown, args.json)
    except UsageError as exc:  # BenchmarkDataError too
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write {exc.filename or 'output'}: {exc.strerror or exc}")
    return comparison.exit_code


def history_command(args: argparse.Namespace) -> int:
    """``bench history``: trend table and change points, PNG plots with ``--plot DIR``, the page with ``--html DIR``;
    0, or 2 on an error."""
    try:
        for flag, directory in (("--plot", args.plot), ("--html", args.html)):
            if directory is not None:
                check_writable(flag, directory, directory=True)
        runs = load_history(args.paths)
        results = trends(runs, args.threshold, args.alpha)
        console = make_console()
        print_history(console, runs, results)
        if args.plot is not None:
            write_plots(args.plot, runs, results, args.threshold)
            console.print(f"{len(results)} plots written to {args.plot}")
        if args.html is not None:
            # The latest comparison by compare's own rule, the rule that confirms history's change points.
            latest = compare_runs(runs[-2], runs[-1], args.threshold, args.alpha) if len(runs) > 1 else None
            index = args.html / "index.html"
            write_atomic(index, history_page(runs, results, latest, args.threshold, args.alpha).encode())
            console.print(f"history page written to {index}")
    except UsageError as exc:  # BenchmarkDataError too
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write {exc.filename or 'plots'}: {exc.strerror or exc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m attncheck.bench.cli {compare,history} ...``."""
    parser = argparse.ArgumentParser(prog="attncheck bench", description="Compare pytest-benchmark histories.")
    register(parser.add_subparsers(dest="command", required=True, metavar="{compare,history,ab}"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:  # bench ab's; compare and history report their own
        return _error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
