"""Rendering a :class:`~attncheck.plugin.Report`: the conformance table, failure details, atomic JSON.

The HTML page of a report is :mod:`attncheck.html`; :func:`write_atomic` and :func:`check_writable`
serve every report file of attncheck (verify's and the benchmarks').
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attncheck.errors import UsageError
from attncheck.properties.problems import format_counterexample

if TYPE_CHECKING:
    from attncheck.report import Report

STYLE = {
    "passed": "green",
    "failed": "bold red",
    "error": "bold red",
    "blocked": "bold red",
    "skipped": "yellow",
    "known-failure": "yellow",
}
ORDER = {"failed": 0, "error": 1, "blocked": 2, "passed": 3, "known-failure": 4, "skipped": 5}  # outcome order
LABEL = {
    "passed": "passed",
    "failed": "FAILED",
    "error": "ERROR",
    "blocked": "BLOCKED",
    "skipped": "skipped",
    "known-failure": "known failure",
}


def verdict_label(row: dict[str, Any]) -> str:
    """A property's status as a cell: passed, FAILED, ERROR, BLOCKED (root cause N), skipped (not applicable) or
    known failure."""
    label = LABEL[row["status"]]
    if row["known_failures"] and row["status"] in ("passed", "skipped"):
        label += f" ({len(row['known_failures'])} known)"
    causes = row.get("root_causes") or sorted({c["root_cause"] for c in row["checks"] if c.get("root_cause")})
    if row["status"] in ("error", "blocked") and causes:  # the cause is printed once, as a root cause
        label += f" (root cause {', '.join(map(str, causes))})"
    return label


def outcome_line(data: dict[str, Any], failed: bool, exit_status: int | None = None) -> str:
    """The run in one line: the outcome, the properties x targets cells per status, root causes, exit status."""
    counts = Counter(row["status"] for t in data["targets"] for row in t["properties"])
    tally = ", ".join(f"{n} {LABEL[status]}" for status, n in sorted(counts.items(), key=lambda kv: ORDER[kv[0]]))
    causes = sum(len(t["root_causes"]) for t in data["targets"])
    outcome = "INTERRUPTED" if data.get("partial") else "FAILED" if failed else "passed"
    line = f"attncheck: {outcome}: {tally or 'no property ran'}"
    line += f"; {causes} root cause{'s' * (causes != 1)}"
    if data.get("partial"):
        line += "; PARTIAL (interrupted: only the checks that finished)"
        exit_status = 130 if exit_status is not None else None  # 128 + SIGINT, whatever was found
    return line + (f"; exit status {exit_status}" if exit_status is not None else "")


def counterexample_line(counterexample: dict[str, Any], layout: str) -> str:
    """``minimal counterexample: ...``, its shapes labelled with the layout they are written in (the contract's
    BHLD) when the target was called in another one."""
    shapes = "" if layout == "BHLD" else f" (shapes in BHLD; the target was called in {layout})"
    return f"minimal counterexample{shapes}: {format_counterexample(counterexample)}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"[{STYLE[row['status']]}]{verdict_label(row)}[/] {row['duration']:.1f}s"


def render_table(report: Report, color: bool = True, width: int = 160, exit_status: int | None = None) -> str:
    """Properties x targets table, observations, each root cause and failure with its counterexample and repro,
    then the outcome line (with ``exit_status`` when the caller knows it)."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=color, no_color=not color, width=width, highlight=False)
    title = "attncheck: properties x targets" + (" (PARTIAL: interrupted)" if report.partial else "")
    table = Table(title=title, show_lines=False)
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
        layout = t["capabilities"].get("layout", "BHLD")
        for cause in t["root_causes"]:  # each root cause once, before what it explains
            console.rule(f"[bold red]{escape(t['name'])}: {escape(root_cause_title(cause))}")
            console.print(cause["message"], markup=False)
            if cause.get("checks"):
                console.print(f"in: {', '.join(cause['checks'])}", markup=False)
            if cause.get("counterexample"):
                console.print(counterexample_line(cause["counterexample"], layout), markup=False)
            console.print(f"fix: {cause['fix']}", markup=False)
            console.print("reproduce with:", markup=False)
            console.print(cause["repro"], markup=False)
    for t in data["targets"]:
        layout = t["capabilities"].get("layout", "BHLD")
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
                        console.print(counterexample_line(failure["counterexample"], layout), markup=False)
                    if failure["repro"]:
                        console.print("reproduce with:", markup=False)
                        console.print(failure["repro"], markup=False)
    console.print(outcome_line(data, report.failed(), exit_status), markup=False, highlight=False)
    return out.getvalue()


def root_cause_title(cause: dict[str, Any]) -> str:
    """``root cause N, found by the first probe: CASE`` or ``root cause N of the run: raised in ...``."""
    where = " of the run" if "checks" in cause else ", found by the first probe"
    return f"root cause {cause['number']}{where}: {cause['case']}"


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
    try:  # as write_atomic will: a temporary file in the folder (os.access says yes to root, and on /proc)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".attncheck-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write into {folder} ({exc.strerror or exc})") from None


def markdown(data: dict[str, Any], failed: bool) -> str:
    """A JSON report (``Report.to_json()``) as markdown for a CI comment or job summary: the outcome line, the
    properties x targets matrix, then every root cause (``failed``: whether the run exits 1)."""
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
    lines = [f"**{outcome_line(data, failed, 1 if failed else 0)}**", "", *lines]
    for t in data["targets"]:
        for cause in t["root_causes"]:
            lines += ["", f"**`{t['name']}`: {root_cause_title(cause)}**", "", cause["message"], ""]
            lines.append(f"fix: {cause['fix']}")
            if cause.get("repro"):
                lines += ["", "```python", cause["repro"], "```"]
    return "\n".join(lines) + "\n"


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    write_atomic(path, (json.dumps(report.to_json(), indent=2, default=str) + "\n").encode())
