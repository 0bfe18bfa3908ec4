"""Rendering a :class:`~attncheck.properties.plugin.Report`: the conformance table, failure details, atomic JSON.

The HTML page of a report is :mod:`attncheck.properties.html`; :func:`write_atomic` and :func:`check_writable`
serve every report file of attncheck (verify's and the benchmarks').
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attncheck.errors import UsageError
from attncheck.properties.problems import format_counterexample

if TYPE_CHECKING:
    from attncheck.properties.report import Report

STYLE = {
    "passed": "green",
    "failed": "bold red",
    "error": "bold red",
    "blocked": "bold red",
    "skipped": "yellow",
    "known-failure": "yellow",
}
LABEL = {
    "passed": "passed",
    "failed": "FAILED",
    "error": "ERROR",
    "blocked": "BLOCKED",
    "skipped": "skipped",
    "known-failure": "known failure",
}


def verdict_label(row: dict[str, Any]) -> str:
    """A property's status as a cell: passed, FAILED, skipped (not applicable) or known failure."""
    label = LABEL[row["status"]]
    if row["known_failures"] and row["status"] in ("passed", "skipped"):
        label += f" ({len(row['known_failures'])} known)"
    causes = sorted({c["root_cause"] for c in row["checks"] if c.get("root_cause")})
    if row["status"] in ("error", "blocked") and causes:  # the crash is printed once, as a root cause of the run
        label += f" (root cause {', '.join(map(str, causes))})"
    return label


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"[{STYLE[row['status']]}]{verdict_label(row)}[/] {row['duration']:.1f}s"


def render_table(report: Report, color: bool = True, width: int = 160) -> str:
    """Properties x targets table, observations, then each failure with its counterexample and repro."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=color, no_color=not color, width=width, highlight=False)
    table = Table(title="attncheck: properties x targets", show_lines=False)
    table.add_column("property")
    per_target = {t.name: {row["name"]: row for row in report.properties_of(t.name)} for t in report.targets}
    for t in report.targets:
        table.add_column(t.name)
    names = [n for n in dict.fromkeys(n for rows in per_target.values() for n in rows)]
    for name in names:
        table.add_row(name, *(_cell(per_target[t.name].get(name)) for t in report.targets))
    console.print(table)
    data = report.to_json()
    for t in data["targets"]:
        if t["observations"]:
            obs = "; ".join(f"{k}: {', '.join(v)}" for k, v in t["observations"].items())
            console.print(f"[bold]{t['name']}[/] observed: {obs}")
        for row in t["properties"]:
            for known in row["known_failures"]:  # printed as a known-failures file line
                console.print(f"[yellow]{known['check']}[/]  # {known['reason']}", highlight=False)
    for warning in data["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", markup=True, highlight=False)
    for t in data["targets"]:
        run_causes = 0
        for cause in t["root_causes"]:  # each root cause once, before what it explains
            if "checks" in cause:  # the same crash in several checks during the run
                run_causes += 1
                where = f"root cause {run_causes} of the run: {cause['case']}"
            else:
                where = f"root cause, found by the first probe: {cause['case']}"
            console.rule(f"[bold red]{escape(t['name'])}: {escape(where)}")
            console.print(cause["message"], markup=False)
            if cause.get("checks"):
                console.print(f"in: {', '.join(cause['checks'])}", markup=False)
            if cause.get("counterexample"):
                example = format_counterexample(cause["counterexample"])
                console.print(f"minimal counterexample: {example}", markup=False)
            console.print(f"fix: {cause['fix']}", markup=False)
            console.print("reproduce with:", markup=False)
            console.print(cause["repro"], markup=False)
    for t in data["targets"]:
        for row in t["properties"]:
            for check in row["checks"]:  # every failing check with its own counterexample and repro
                if check["status"] not in ("failed", "error") or check.get("root_cause"):
                    continue  # passed, or a crash already printed once as a root cause of the run
                found = [check, *check["more_failures"]]  # each distinct bug Hypothesis found in the check
                for n, failure in enumerate(found, 1):
                    which = f" (distinct failure {n} of {len(found)})" if len(found) > 1 else ""
                    title = f"{escape(t['name'])}::{row['name']}::{check['name']} {LABEL[failure['status']]}{which}"
                    console.rule(f"[bold red]{title}")
                    console.print(failure["message"], markup=False)
                    if failure["counterexample"]:
                        example = format_counterexample(failure["counterexample"])
                        console.print(f"minimal counterexample: {example}", markup=False)
                    if failure["repro"]:
                        console.print("reproduce with:", markup=False)
                        console.print(failure["repro"], markup=False)
    return out.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    Readers see the old file or the complete new one, never a partial write; on any failure the temporary file
    is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp creates 0600; give the permissions open() would
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable(flag: str, path: str | os.PathLike[str], directory: bool = False) -> None:
    """Raise :class:`UsageError` (one line) when :func:`write_atomic` could not write ``path``: a file, or with
    ``directory`` a folder to write files into. Called before a run starts, so that a typo does not cost the run.

    Missing folders are fine (:func:`write_atomic` creates them); the nearest one that exists must be a writable
    directory.
    """
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    folder = path if directory else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write into {folder}")


def markdown(data: dict[str, Any]) -> str:
    """The properties x targets matrix of a JSON report (``Report.to_json()``) as a markdown table."""
    names = [t["name"] for t in data["targets"]]
    rows = {t["name"]: {p["name"]: p for p in t["properties"]} for t in data["targets"]}
    props = list(dict.fromkeys(p for t in data["targets"] for p in rows[t["name"]]))
    lines = ["| property | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for prop in props:
        cells = []
        for n in names:
            row = rows[n].get(prop)
            if row is None:
                cells.append("-")
                continue
            cells.append(
                f"**{verdict_label(row)}**" if row["status"] in ("failed", "error", "blocked") else verdict_label(row)
            )
        lines.append(f"| {prop} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    write_atomic(path, (json.dumps(report.to_json(), indent=2, default=str) + "\n").encode())
