"""``attncheck``: verify attention implementations, list targets, compare benchmark histories.

``attncheck verify`` is a thin front over pytest: it runs the property tests of this package through the
attncheck pytest plugin (one source of truth, not two runners), shows progress, and renders the report.
Exit codes: 0 no property failed, 1 some property failed, 2 usage error (bad target, bad flag, bad file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from properties.catalog import PROFILES, PROPERTIES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A one-line usage error (exit code 2)."""


def _capability_flags(args: argparse.Namespace) -> list[str]:
    """Translate the verify flags into ``FIELD=VALUE`` declarations (the same as --attncheck-cap)."""
    caps = list(args.cap)
    if args.causal:
        caps.append(f"causal={args.causal}")
    if args.masks is not None:
        caps.append(f"masks={args.masks}")
    if args.no_mask:
        caps.append("masks=none")
    for flag, field in (("no_grad", "grad"), ("no_gqa", "gqa"), ("no_scale", "scale"), ("same_value_dim", "value_dim")):
        if getattr(args, flag):
            caps.append(f"{field}=no")
    if args.dropout:
        caps.append("dropout=yes")
    if args.masked_rows:
        caps.append(f"masked_rows={args.masked_rows}")
    if args.layout:
        caps.append(f"layout={args.layout}")
    if args.arg_name:
        caps.append("arg_names=" + ",".join(a.replace("=", ":") for a in args.arg_name))
    return caps


def verify(args: argparse.Namespace) -> int:
    import pytest

    from properties.plugin import REPORT_KEY, Report, resolve_targets
    from properties.render import markdown, render_table, write_atomic, write_json
    from properties.targets import TargetSpecError

    caps = _capability_flags(args)
    try:
        resolved = resolve_targets(args.targets, caps, args.device, args.dtype, args.timeout)
    except TargetSpecError as exc:
        raise UsageError(str(exc)) from None
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path and Path(path).is_dir():
            raise UsageError(f"{flag} {path}: is a directory")
    for path in args.known_failures:
        if not Path(path).is_file():
            raise UsageError(f"--known-failures {path}: no such file")
    if args.max_examples is not None and args.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")

    ini = Path(__file__).with_name("verify.ini")  # not the configuration (addopts, plugins) of the project around us
    pytest_args = [
        "-c",
        str(ini),
        "--rootdir",
        str(ini.parent),
        "--pyargs",
        "properties",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:terminal",
        "-W",
        "ignore",
    ]
    for spec in [t.name for t in resolved]:
        pytest_args += ["--attncheck-target", spec]
    for cap in caps:
        pytest_args += ["--attncheck-cap", cap]
    for dtype in args.dtype or []:
        pytest_args += ["--attncheck-dtype", dtype]
    for path in args.known_failures:
        pytest_args += ["--attncheck-known-failures", path]
    pytest_args += ["--attncheck-device", args.device]
    if args.profile:
        pytest_args += ["--attncheck-profile", args.profile]
    if args.max_examples is not None:
        pytest_args += ["--attncheck-max-examples", str(args.max_examples)]
    if args.timeout:
        pytest_args += ["--attncheck-timeout", str(args.timeout)]
    if args.seed is not None:
        pytest_args += ["--hypothesis-seed", str(args.seed)]
    if args.property:
        unknown = set(args.property) - set(PROPERTIES)
        if unknown:
            raise UsageError(f"unknown property {sorted(unknown)[0]!r}; see the catalog: {', '.join(PROPERTIES)}")
        for name in args.property:
            pytest_args += ["--attncheck-property", name]

    collector = _Collector(quiet=args.quiet)
    code = pytest.main(pytest_args, plugins=[collector])
    report: Report | None = collector.config.stash.get(REPORT_KEY, None) if collector.config else None
    if report is None or code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR):
        raise UsageError(collector.error or f"the property run did not start (pytest exit code {int(code)})")
    if code == pytest.ExitCode.INTERRUPTED:
        raise UsageError(collector.error or "the property run was interrupted (collection error)")
    sys.stdout.write(render_table(report, color=sys.stdout.isatty()))
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    if args.markdown:
        write_atomic(args.markdown, markdown(report.to_json()).encode())
        print(f"markdown matrix written to {args.markdown}")
    return EXIT_FAILED if report.failed() else EXIT_OK


class _Collector:
    """In-process pytest plugin of the CLI: keeps the config and shows a progress bar on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.config: Any = None
        self.progress: Any = None
        self.task: Any = None
        self.error = ""

    def pytest_configure(self, config: Any) -> None:
        self.config = config

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.error = (
                f"collection failed in {report.nodeid or 'properties'}: {str(report.longrepr).splitlines()[-1]}"
            )

    def pytest_collection_finish(self, session: Any) -> None:
        if self.quiet:
            return
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
        self.task = self.progress.add_task("verifying", total=len(session.items))

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=nodeid.split("::")[-1])

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def pytest_unconfigure(self, config: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


def targets_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from properties.targets import availability

    table = Table(title="attncheck built-in targets")
    for column in ("name", "available", "description"):
        table.add_column(column)
    for name, description, reason in availability():
        table.add_row(name, "[green]yes[/]" if reason is None else f"[yellow]no[/]: {reason}", description)
    Console(force_terminal=sys.stdout.isatty(), width=160).print(table)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attncheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="check attention implementations against the property catalog")
    v.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="built-in name (see `attncheck targets`) or module.path:attr; default: reference torch-sdpa",
    )
    v.add_argument("--json", metavar="PATH", help="write the report as JSON (atomically)")
    v.add_argument(
        "--markdown", metavar="PATH", help="write the properties x targets matrix as markdown (for CI comments)"
    )
    v.add_argument("--profile", choices=PROFILES, help="Hypothesis profile (default: ci when CI is set, else dev)")
    v.add_argument("--max-examples", type=int, help="override the profile's examples per check")
    v.add_argument("--seed", type=int, help="Hypothesis seed (ignored by the derandomized ci profile)")
    v.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    v.add_argument(
        "--dtype",
        action="append",
        choices=("float64", "float32", "bfloat16", "float16"),
        help="restrict to these dtypes (repeatable)",
    )
    v.add_argument(
        "--property", action="append", metavar="NAME", help=f"only these properties: {', '.join(PROPERTIES)}"
    )
    v.add_argument("--timeout", type=float, help="seconds per target call before it counts as hung (default 60)")
    v.add_argument(
        "--known-failures",
        action="append",
        default=[],
        metavar="FILE",
        help="accepted deviations, '[target::]check_name  # reason' per line (xfail)",
    )
    v.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    caps = v.add_argument_group("capability declarations (the same as properties.declare(...) in Python)")
    caps.add_argument("--causal", choices=("top-left", "bottom-right", "none"), help="alignment of is_causal")
    caps.add_argument("--masks", help="mask kinds accepted: bool, float, bool,float or none")
    caps.add_argument("--no-mask", action="store_true", help="no attn_mask support (= --masks none)")
    caps.add_argument("--no-grad", action="store_true", help="not differentiable")
    caps.add_argument("--no-gqa", action="store_true", help="no enable_gqa")
    caps.add_argument("--no-scale", action="store_true", help="the scale= argument is not supported")
    caps.add_argument("--same-value-dim", action="store_true", help="requires Ev == E")
    caps.add_argument("--dropout", action="store_true", help="supports dropout_p > 0")
    caps.add_argument("--masked-rows", choices=("zeros", "nan", "uniform"), help="declared fully-masked-row output")
    caps.add_argument("--layout", choices=("BHLD", "BLHD"), help="tensor layout of the target")
    caps.add_argument(
        "--arg-name",
        action="append",
        metavar="CONTRACT=NAME",
        help="keyword renames, e.g. is_causal=causal scale=softmax_scale (repeatable)",
    )
    caps.add_argument("--cap", action="append", default=[], metavar="FIELD=VALUE", help="any Capabilities field")
    v.set_defaults(func=verify)

    t = sub.add_parser("targets", help="list the built-in targets and whether each is available here")
    t.set_defaults(func=targets_command)

    b = sub.add_parser("bench", help="compare benchmark histories")
    from benchmarks.cli import register

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
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
