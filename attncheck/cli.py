"""``attncheck``: verify attention implementations, list targets, compare benchmark histories.

``attncheck verify`` is a thin front over pytest: it runs the property tests of this package through the
attncheck pytest plugin (one source of truth, not two runners), shows progress, and renders the report.
Exit codes: 0 no property failed, 1 some property failed, 2 usage error (bad target, bad flag, bad file, an
output path that cannot be written: checked before the run), 130 interrupted (Ctrl-C: the table and the reports
of the checks that finished, marked partial). ``--json``, ``--markdown`` and ``--html`` write the report as
JSON, as markdown (outcome, matrix, root causes) and as one self-contained HTML page
(:mod:`attncheck.html`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pluggy import HookimplMarker

from attncheck.errors import UsageError
from attncheck.options import VerifySettings, add_capability_options, add_verify_options

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130 = 128 + SIGINT, as shells report Ctrl-C
hookimpl = HookimplMarker("pytest")


def verify(args: argparse.Namespace) -> int:
    from attncheck.api import run
    from attncheck.html import verify_page
    from attncheck.render import check_writable, markdown, render_table, write_atomic, write_json
    from attncheck.targets import resolve_targets

    settings = VerifySettings.from_options(lambda dest: getattr(args, dest), args.targets)
    if args.list_checks:
        return list_checks()
    outputs = (("--json", args.json), ("--markdown", args.markdown), ("--html", args.html))
    for flag, path in outputs:
        if path:
            check_writable(flag, path)  # before the run: a typo must not cost it
    for path in settings.known_failures:
        if not Path(path).is_file():
            raise UsageError(f"--known-failures {path}: no such file")
    if settings.max_examples is not None and settings.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    settings.json = None  # written below, once, by this process

    stream = sys.stdout  # one line per finished property when it is not a terminal (a CI log)
    collector = _Collector(quiet=args.quiet, lines=None if stream.isatty() else stream)
    # the one engine of the CLI and attncheck.verify; the targets are resolved and validated once, here
    report = run(settings, resolve_targets(settings), seed=args.seed, jobs=args.jobs, plugins=[collector])
    status = EXIT_INTERRUPTED if report.partial else EXIT_FAILED if report.failed() else EXIT_OK
    sys.stdout.write(render_table(report, color=sys.stdout.isatty(), exit_status=status))
    data = report.to_json()
    try:
        if args.json:
            write_json(report, args.json)
            print(f"report written to {args.json}")
        if args.markdown:
            write_atomic(args.markdown, markdown(data, report.failed()).encode())
            print(f"markdown report written to {args.markdown}")
        if args.html:
            write_atomic(args.html, verify_page(data, report.failed()).encode())
            print(f"HTML report written to {args.html}")
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or 'the report'}: {exc.strerror or exc}") from None
    return status


def list_checks() -> int:
    """Every check of the catalog with its property, as ``property::check`` (the form --known-failures accepts)."""
    from attncheck.properties.catalog import checks

    for prop, found in checks().items():
        for check in sorted(found, key=lambda c: c.__name__):
            doc = (check.__doc__ or "").strip().splitlines()
            print(f"{prop}::{check.__name__}" + (f"  # {doc[0]}" if doc else ""))
    return EXIT_OK


class _Collector:
    """In-process pytest plugin of the CLI: keeps the config and shows a progress bar on stderr; with ``lines``
    (stdout is not a terminal: a CI log), one line per finished property of a target as it finishes."""

    def __init__(self, quiet: bool, lines: Any = None) -> None:
        self.quiet = quiet
        self.lines = None if quiet else lines
        self.pending: dict[tuple[str, str], int] = {}  # (target, property) -> checks not finished yet
        self.counted = False
        self.plugin: Any = None
        self.progress: Any = None
        self.task: Any = None

    def pytest_configure(self, config: Any) -> None:
        from attncheck.plugin import AttncheckPlugin

        self.plugin = next(p for p in config.pluginmanager.get_plugins() if isinstance(p, AttncheckPlugin))

    def pytest_collection_finish(self, session: Any) -> None:
        if not self.quiet and session.items:
            self._start(len(session.items))
        self._expect([item.nodeid for item in session.items])

    def _expect(self, nodeids: list[str]) -> None:
        """Count the checks of each (target, property) from node ids ``path::check[target]`` (pytest-xdist's
        controller sees ids only)."""
        from attncheck.properties.catalog import check_catalog

        catalog = check_catalog()
        for key in filter(None, map(lambda nodeid: _check_of(nodeid, catalog), nodeids)):
            self.pending[key] = self.pending.get(key, 0) + 1

    @hookimpl(trylast=True)  # after the suite's plugin has added the result to the report
    def pytest_runtest_logreport(self, report: Any) -> None:
        from attncheck.properties.catalog import check_catalog
        from attncheck.render import verdict_label

        key = _check_of(report.nodeid, check_catalog()) if report.when == "teardown" else None
        if key is None or key not in self.pending:
            return
        self.pending[key] -= 1
        if self.pending[key] or self.lines is None:
            return
        target, prop = key
        row = next((r for r in self.plugin.report.properties_of(target) if r["name"] == prop), None)
        if row is not None:  # a line a CI log can grep: target, property, status, time
            self.lines.write(f"{target}\t{prop}\t{verdict_label(row)}\t{row['duration']:.1f}s\n")
            self.lines.flush()

    def _start(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("verifying", total=total)

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.counted:  # the controller collects nothing: each worker collects all, the same
            return
        self.counted = True
        if not self.quiet:
            self._start(len(ids))
        self._expect(ids)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=nodeid.split("::")[-1])

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def pytest_unconfigure(self, config: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


def _check_of(nodeid: str, catalog: dict[str, str]) -> tuple[str, str] | None:
    """``(target, property)`` of a property check's node id ``path::check[target]``; None for other items."""
    name = nodeid.rpartition("::")[2]
    check, bracket, target = name.partition("[")
    return (target.removesuffix("]"), catalog[check]) if bracket and check in catalog else None


def probe_command(args: argparse.Namespace) -> int:
    """Observe a target's conventions on small calls and print the declaration that matches them."""
    from attncheck.probe import declaration, observe_conventions, probe
    from attncheck.targets import resolve_targets

    settings = VerifySettings.from_options(lambda dest: getattr(args, dest, None), [args.target])
    settings.timeout = args.timeout
    [target] = resolve_targets(settings)
    findings = probe(target)
    print(f"attncheck probe {target.name}: {target.description}")
    said = {"unsupported": ("does not work", "declare"), "convention": ("found", "declare"), "wrong": ("wrong", "fix")}
    for finding in findings:
        what, fix = said[finding.kind]
        print(f"  {what}: {finding.case}: {finding.message}")
        print(f"      {fix}: {finding.fix}")
    if any(f.blocks_all for f in findings):
        print("  the plain call does not work: nothing more can be observed")
        return EXIT_FAILED
    for dtype, coarser in target.observed_precision.items():
        print(f"  compute precision: {dtype} inputs computed at about {coarser} precision")
    if target.caps.entry == "dense":
        for what, value in observe_conventions(target).items():
            print(f"  {what}: {value}")
    else:  # the conventions probed are those of the dense call
        print(f"  a {target.caps.entry} target: only its basic calls are probed")
    python, flags = declaration(target)
    print("declaration that matches what was observed:")
    print(f"  {python}")
    print(f"  attncheck verify {target.name} {flags}".rstrip())
    return EXIT_OK


def targets_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from attncheck.targets import availability

    rows = availability()
    if not sys.stdout.isatty():  # piped or captured: one line a target, nothing wrapped, easy to grep
        for name, description, reason in rows:
            print(f"{name}\t{'yes' if reason is None else 'no: ' + reason}\t{description}")
        return EXIT_OK
    table = Table(title="attncheck targets (built-in and registered under the entry-point group attncheck.targets)")
    for column in ("name", "available", "description"):
        table.add_column(column)
    for name, description, reason in rows:
        # escape(): an install hint such as pip install 'attncheck[hf]' is text, not rich markup
        available = "[green]yes[/]" if reason is None else f"[yellow]no[/]: {escape(reason)}"
        table.add_row(escape(name), available, escape(description))
    Console(force_terminal=True, width=160).print(table)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attncheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="check attention implementations against the property catalog")
    v.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="built-in or registered name (see `attncheck targets`) or module.path:attr; default: reference torch-sdpa",
    )
    caps = v.add_argument_group("capability declarations (the same fields as attncheck.declare(...) in Python)")
    add_verify_options(v.add_argument, add_capability=caps.add_argument)
    v.add_argument(
        "--markdown", metavar="PATH", help="write the properties x targets matrix as markdown (for CI comments)"
    )
    v.add_argument(
        "--html",
        metavar="PATH",
        help="write a self-contained HTML page: the matrix, each failure's counterexample and repro one click away",
    )
    v.add_argument("--seed", type=int, help="Hypothesis seed (ignored by the derandomized ci profile)")
    v.add_argument("-j", "--jobs", type=int, metavar="N", help="spread the checks over N processes (pytest-xdist)")
    v.add_argument("--list-checks", action="store_true", help="list every check as property::check and exit")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    v.set_defaults(func=verify)

    pr = sub.add_parser("probe", help="observe a target's conventions and print the matching declaration")
    pr.add_argument("target", metavar="TARGET", help="built-in or registered name, or module.path:attr")
    pr.add_argument("--timeout", type=float, metavar="S", help="seconds per call before it counts as hung (60)")
    add_capability_options(pr.add_argument_group("what is already known (capability declarations)").add_argument)
    pr.set_defaults(func=probe_command)

    t = sub.add_parser("targets", help="list the built-in targets and whether each is available here")
    t.set_defaults(func=targets_command)

    b = sub.add_parser("bench", help="benchmark targets (bench run, bench ab) and compare runs (compare, history)")
    from attncheck.bench.cli import register

    register(b.add_subparsers(dest="bench_command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"attncheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("attncheck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
