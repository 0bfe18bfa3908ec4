"""``attncheck bench run TARGET...``: benchmark your own kernel on the grid its declaration supports.

The same declaration flags as ``attncheck verify`` (``--causal``, ``--arg-name``, ``--layout``, ``--feature``...,
one definition: :func:`attncheck.bench.cli.add_declaration_options`), so a kernel is benchmarked as it is
verified. It runs the attention benchmarks (``benchmarks/test_attention.py``) in this process through pytest and
pytest-benchmark, with the targets resolved here, on the cases of the ``--size`` grid that each target declares
(every dropped case printed with its reason) and that ``--cases`` names; it prints a row per case as it finishes:
median and interquartile range, GFLOP/s (:func:`attncheck.bench.workloads.flops`), the same-run roofline
and the fraction of it reached (:class:`attncheck.bench.workloads.Roofline`).

Outputs, every path checked before anything runs (exit 2, one line naming the path): ``--json PATH`` the run in
pytest-benchmark's format with raw rounds (what ``bench compare``, ``bench history`` read), written atomically;
``--save NAME`` the same into pytest-benchmark's storage (``.benchmarks/<machine>/NNNN_NAME.json``); ``--html
PATH`` one self-contained page of the table. Exit status: 0 every case ran, 1 some case failed (the kernel
raised, or its timing was tampered with), 2 usage, 130 interrupted (Ctrl-C: what finished is written).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attncheck.errors import UsageError

WIDTHS = [44, 0, 9, 9, 9, 16, 11, 8, 0]  # terminal columns (0: the target's name width; the note last, as it is)
EXIT_INTERRUPTED = 130


class RunPlugin:
    """What ``bench run`` adds to the pytest session: its targets (read by ``benchmarks/conftest.py``), the cases
    to keep, a row printed per finished case, and whether the run was interrupted."""

    def __init__(self, targets: dict[str, Any], keep: set[tuple[str, str]], print_row: Callable[..., None]) -> None:
        self.attncheck_bench_targets = targets  # name -> Target
        self.keep = keep  # (target name, case id)
        self.print_row = print_row
        self.interrupted = False
        self.failed: list[str] = []
        self.error: str | None = None

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        chosen: list[Any] = []
        deselected: list[Any] = []
        for item in items:
            params = getattr(item, "callspec", None)
            p = params.params if params else {}
            case = "-".join(str(p.get(k)) for k in ("device", "dtype", "pass_", "mask")) + "-"
            case += p["shape"].id if "shape" in p else ""
            (chosen if (p.get("target"), case) in self.keep else deselected).append(item)
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = chosen

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" and report.passed:
            for key, info in report.user_properties:
                if key == "bench":
                    from attncheck.bench.report import row_cells

                    self.print_row(row_cells(info))
        elif report.failed:
            message = str(report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash") else "")
            self.failed.append(report.nodeid)
            self.print_row([report.nodeid.partition("[")[2].rstrip("]"), "FAILED", message.splitlines()[0][:200]])

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.error = str(report.longrepr).strip().splitlines()[-1]

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True


def _checked_save_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UsageError(f"--save {name!r}: a name of letters, digits, '.', '_' and '-' (pytest-benchmark's file name)")
    return name


def run_command(args: argparse.Namespace) -> int:
    """``bench run``: see the module docstring for the exit status."""
    import pytest
    import torch

    import attncheck.benchmarks as package
    from attncheck.bench.ab import declared_targets, select_cases
    from attncheck.bench.devicetime import CAPTURED  # noqa: F401  timer functions, before any target import
    from attncheck.bench.html import run_page
    from attncheck.bench.report import COLUMNS, make_console
    from attncheck.render import check_writable, write_atomic

    for flag, path in (("--json", args.json), ("--html", args.html)):
        if path is not None:
            check_writable(flag, path)
    if args.save is not None:
        _checked_save_name(args.save)
        check_writable("--save", Path(".benchmarks"), directory=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    targets = declared_targets(args, args.targets)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise UsageError(f"a target is named twice: {names}")
    console = make_console()
    keep: set[tuple[str, str]] = set()
    for target in targets:
        try:
            keep |= {(target.name, c.id) for c in select_cases(args, [target], console)}
        except UsageError as exc:  # this target has no case: the others still run
            if len(targets) == 1:
                raise
            console.print(f"{target.name} skipped: {exc}", soft_wrap=True)
    if not keep:
        raise UsageError(f"no case of the {args.size} grid is supported by any of {', '.join(names)}")
    console.print(
        f"benchmarking {', '.join(names)}: {len(keep)} case{'s' if len(keep) > 1 else ''} of the {args.size} grid "
        f"on {args.device or 'cpu'}, "
        f"torch threads {torch.get_num_threads()}"
    )
    widths = [w or max(map(len, [*names, "target"])) for w in WIDTHS]

    def print_row(cells: list[str]) -> None:  # text columns left-aligned, numbers right-aligned
        padded = [
            c.rjust(w) if 2 <= i <= 7 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        console.print("  ".join(padded).rstrip(), soft_wrap=True)  # one line a case, whatever the width

    print_row(COLUMNS)

    plugin = RunPlugin({t.name: t for t in targets}, keep, print_row)
    folder = Path(package.__file__).parent
    with tempfile.TemporaryDirectory(prefix="attncheck-bench-") as tmp:
        raw = Path(tmp) / "run.json"
        pytest_args = [str(folder / "test_attention.py"), "-c", str(folder / "bench.ini"), "--rootdir"]
        pytest_args += [str(folder.parent), "-p", "no:cacheprovider", "-p", "no:terminal", "-W", "ignore"]
        pytest_args += ["--bench-size", args.size, f"--benchmark-json={raw}", "--benchmark-quiet"]
        if args.save is not None:
            pytest_args += ["--benchmark-save", args.save, "--benchmark-save-data"]
        code = pytest.main(pytest_args, plugins=[plugin])
        if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR) or plugin.error:
            raise UsageError(plugin.error or f"the benchmark run did not start (pytest exit code {int(code)})")
        # pytest-benchmark opens --benchmark-json when it parses its options: interrupted before it wrote the
        # results, the file is there and empty
        if not raw.is_file() or raw.stat().st_size == 0:
            if plugin.interrupted:
                console.print("interrupted before any case finished: nothing written", soft_wrap=True)
            return EXIT_INTERRUPTED if plugin.interrupted else 1
        doc = json.loads(raw.read_text())
    # What finished is written even if Ctrl-C comes now: SIGINT waits until the outputs are written.
    previous = (
        signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        if args.json is not None:
            write_atomic(args.json, (json.dumps(doc, indent=4) + "\n").encode())
            console.print(
                f"{len(doc['benchmarks'])} results written to {args.json} (pytest-benchmark format)", soft_wrap=True
            )
        if args.html is not None:
            write_atomic(args.html, run_page(doc, "attncheck bench run " + " ".join(names)).encode())
            console.print(f"HTML page written to {args.html}", soft_wrap=True)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or 'the report'}: {exc.strerror or exc}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if plugin.interrupted:
        console.print(f"interrupted: {len(doc['benchmarks'])} finished cases kept")
        return EXIT_INTERRUPTED
    return 1 if plugin.failed else 0


def add_parser(subparsers: Any, add_declaration_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``run`` to the ``bench`` group's subparsers."""
    from attncheck.bench.ab import SIZE_NAMES, _positive

    run = subparsers.add_parser(
        "run",
        help="benchmark targets on the grid their declaration supports: median, GFLOP/s, fraction of the roofline",
        description="Benchmark TARGETs (built-in or registered names, module.path:attr) on every case of the "
        "attention benchmark grid their declaration supports, with attncheck verify's declaration flags; store "
        "the run in pytest-benchmark's format (bench compare / history read it).",
    )
    run.add_argument("targets", nargs="+", metavar="TARGET", help="built-in or registered name, or module.path:attr")
    run.add_argument("--size", choices=SIZE_NAMES, default="quick", help="benchmark grid (default quick)")
    run.add_argument("--cases", default=None, metavar="TEXT", help="only cases whose id contains TEXT")
    run.add_argument("--threads", type=_positive, default=None, metavar="N", help="torch.set_num_threads(N)")
    run.add_argument("--json", type=Path, metavar="PATH", help="write the run (pytest-benchmark JSON, raw rounds)")
    run.add_argument("--html", type=Path, metavar="PATH", help="write the table as one self-contained HTML page")
    run.add_argument("--save", metavar="NAME", help="also save into .benchmarks/ (pytest-benchmark's storage)")
    add_declaration_options(run)
    run.set_defaults(func=run_command)
