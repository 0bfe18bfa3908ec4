"""Self-contained static HTML pages: the skeleton every attncheck page shares, and the ``attncheck verify`` page.

A page is one file: inline CSS, a few lines of inline script, images as ``data:`` URIs, nothing fetched from
elsewhere (a Content-Security-Policy in the page forbids it), so it opens offline, as a CI artifact or from a
mail. The page reads without its script: a failure's details are a ``<details>`` element, one click on its
summary, and a link in the matrix leads to it; the script only opens the details a link points to.

Every text that comes from a report (target names, messages, counterexamples, repro commands) is escaped with
:func:`html.escape`. :mod:`attncheck.bench.html` builds the ``bench history`` page on :func:`page`.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from attncheck.render import LABEL, counterexample_line, outcome_line, root_cause_title, verdict_label

# Nothing may be loaded from elsewhere: styles and scripts are inline, images are data: URIs.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1b1b1b; }
h1 { font-size: 1.45em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.4em 0 .5em; }
p.summary { margin: .2em 0; } p.note { color: #6b5200; } .muted { color: #666; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .5em; overflow-x: auto; white-space: pre; }
details { border: 1px solid #ddd; border-radius: 4px; margin: .4em 0; padding: .2em .6em; }
details > summary { cursor: pointer; font-weight: 600; }
details[open] > summary { margin-bottom: .4em; }
:target { outline: 2px solid #1f6feb; }
.v-passed { background: #d8f3de; color: #0f5323; }
.v-failed, .v-error, .v-blocked { background: #fbd9d9; color: #8b0d0d; font-weight: 700; }
.v-skipped, .v-known-failure { background: #fff1c2; color: #6b5200; }
.v-none { color: #999; }
td.verdict a { color: inherit; }
.dur { font-weight: 400; color: #555; font-size: .9em; }
"""

# Opens the <details> a link points to (on click and when the page is opened at #id); without it one more click.
SCRIPT = """
function attncheckOpen(id) {
  var el = document.getElementById(id);
  if (el && el.tagName === 'DETAILS') { el.open = true; }
}
document.addEventListener('click', function (event) {
  var a = event.target.closest && event.target.closest('a[href^="#"]');
  if (a) { attncheckOpen(decodeURIComponent(a.getAttribute('href').slice(1))); }
});
if (location.hash) { attncheckOpen(decodeURIComponent(location.hash.slice(1))); }
"""


def page(title: str, body: str, css: str = "") -> str:
    """A complete HTML document: ``title`` (plain text, escaped here), ``body`` (HTML), extra ``css``."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}{css}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def table(header: list[str], rows: list[str], css_class: str) -> str:
    """A ``<table>``: ``header`` cells as text (escaped here), ``rows`` as ready ``<tr>`` HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "\n".join(rows)
    return f'<table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def details(css_class: str, anchor: str, summary: str, parts: list[str]) -> str:
    """A closed ``<details>`` with id ``anchor``: ``summary`` and ``parts`` as ready HTML."""
    content = "\n".join(parts)
    return f'<details class="{css_class}" id="{anchor}">\n<summary>{summary}</summary>\n{content}\n</details>'


# --- attncheck verify -------------------------------------------------------------------------------------------

RED = ("failed", "error", "blocked")


def _counterexample_and_repro(failure: dict[str, Any], layout: str) -> str:
    """The smallest counterexample (labelled with the layout its shapes are in) and the repro command of a
    failure, a root cause or a blocked row."""
    parts = []
    if failure.get("counterexample"):
        head, _, example = counterexample_line(failure["counterexample"], layout).partition(": ")
        parts.append(f'<p>{escape(head)}: <code class="counterexample">{escape(example)}</code></p>')
    if failure.get("repro"):
        parts.append(f'<p>reproduce with:</p>\n<pre class="repro">{escape(failure["repro"])}</pre>')
    return "\n".join(parts)


def _failure_details(anchor: str, target: str, row: dict[str, Any], causes: dict[int, str], layout: str) -> str:
    """The ``<details>`` of one red cell: the property's message, then each failing check with its own
    counterexample and repro (each distinct failure Hypothesis found), or the root cause that explains it."""
    parts = []
    if row["message"] not in {c["message"] for c in row["checks"]}:  # blocked, or several checks: the summary
        parts.append(f'<p class="message">{escape(row["message"])}</p>')
    if not row["checks"]:  # blocked by the first probe: the probe's call is the counterexample
        parts.append(_counterexample_and_repro(row, layout))
    for check in row["checks"]:
        if check["status"] not in ("failed", "error", "blocked"):
            continue
        if check.get("root_cause"):
            link = causes.get(check["root_cause"], "")
            cause = f'<a href="#{link}">root cause {check["root_cause"]}</a>'
            parts.append(
                f'<div class="check"><h4>{escape(check["name"])}: {LABEL[check["status"]]}</h4>'
                f"<p>{cause}: {escape(check['message'])}</p></div>"
            )
            continue
        found = [check, *check["more_failures"]]
        for n, failure in enumerate(found, 1):
            which = f" (distinct failure {n} of {len(found)})" if len(found) > 1 else ""
            parts.append(
                f'<div class="check"><h4>{escape(check["name"])}: {LABEL[failure["status"]]}{which}</h4>\n'
                f'<p class="message">{escape(failure["message"])}</p>\n'
                f"{_counterexample_and_repro(failure, layout)}</div>"
            )
    summary = f"{escape(target)} · {escape(row['name'])}: {escape(verdict_label(row))}"
    return details("failure", anchor, summary, parts)


def _root_cause_details(anchor: str, target: str, cause: dict[str, Any], layout: str) -> str:
    """A root cause, listed once: where it was found, its message, the checks it explains, the fix, the repro."""
    parts = [f'<p class="message">{escape(cause["message"])}</p>']
    if cause.get("checks"):
        parts.append(f"<p>in: {escape(', '.join(cause['checks']))}</p>")
    parts.append(f"<p>fix: {escape(cause['fix'])}</p>")
    parts.append(_counterexample_and_repro(cause, layout))
    summary = f"{escape(target)}: {escape(root_cause_title(cause))}"
    return details("root-cause", anchor, summary, parts)


def _layout(target: dict[str, Any]) -> str:
    """The layout a target of the JSON report was called in (its counterexamples are written in BHLD)."""
    return str(target["capabilities"].get("layout", "BHLD"))


def _settings_line(data: dict[str, Any]) -> str:
    """The run's restrictions, the versions and the wall time, in one muted paragraph."""
    settings = ", ".join(
        f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in data["settings"].items()
    )
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items() if k != "platform")
    wall = f"wall time {data.get('wall_time_s', 0):.0f} s"
    return f'<p class="muted">Settings: {escape(settings)}. Versions: {escape(versions)}; {wall}.</p>'


def verify_page(data: dict[str, Any], failed: bool) -> str:
    """The verify report (``Report.to_json()``) as a page; ``failed``: whether the run exits 1 (``Report.failed``).

    The title says the run's outcome; the matrix shows properties x targets with the terminal table's verdict
    words, coloured; each red cell links to its ``<details>`` with the check, the message, the smallest
    counterexample and the repro command, as the report holds them; root causes are listed once per target.
    """
    targets = data["targets"]
    rows = {t["name"]: {p["name"]: p for p in t["properties"]} for t in targets}
    props = list(dict.fromkeys(p for t in targets for p in rows[t["name"]]))
    counts = Counter(LABEL[p["status"]] for t in targets for p in t["properties"])
    outcome = ("FAILED" if failed else "passed") + (" (PARTIAL: interrupted)" if data.get("partial") else "")
    meaning = (
        "Exit status 1: a root cause, a FAILED, an ERROR or a BLOCKED was found"
        if failed
        else "Exit status 0: nothing was found (a usage error would be 2)"
    )
    cause_anchor: dict[tuple[int, int], str] = {}  # (target index, root cause number) -> anchor
    cause_sections = []
    for ti, t in enumerate(targets):
        for ci, cause in enumerate(t["root_causes"]):
            anchor = f"rc-{ti}-{ci}"
            cause_anchor[ti, cause["number"]] = anchor  # numbered as in the terminal
            cause_sections.append(_root_cause_details(anchor, t["name"], cause, _layout(t)))
    matrix_rows, failure_sections = [], []
    for pi, prop in enumerate(props):
        cells = []
        for ti, t in enumerate(targets):
            row = rows[t["name"]].get(prop)
            where = f'data-target="{escape(t["name"])}" data-property="{escape(prop)}"'
            if row is None:
                cells.append(f'<td class="verdict v-none" {where} data-status="none">-</td>')
                continue
            label = escape(verdict_label(row))
            if row["status"] in RED:
                anchor = f"f-{ti}-{pi}"
                causes = {n: a for (i, n), a in cause_anchor.items() if i == ti}
                failure_sections.append(_failure_details(anchor, t["name"], row, causes, _layout(t)))
                label = f'<a href="#{anchor}">{label}</a>'
            cells.append(
                f'<td class="verdict v-{row["status"]}" {where} data-status="{row["status"]}">{label} '
                f'<span class="dur">{row["duration"]:.1f}s</span></td>'
            )
        matrix_rows.append(f"<tr><th>{escape(prop)}</th>{''.join(cells)}</tr>")
    extras = []
    for t in targets:
        if t["observations"]:
            obs = "; ".join(f"{k}: {', '.join(v)}" for k, v in t["observations"].items())
            extras.append(f"<li><b>{escape(t['name'])}</b> observed: {escape(obs)}</li>")
        for row in t["properties"]:
            for known in row["known_failures"]:  # as a known-failures file line
                extras.append(f"<li><code>{escape(known['check'])}  # {escape(known['reason'])}</code></li>")
    extras += [f"<li>warning: {escape(w)}</li>" for w in data.get("warnings", [])]
    names = ", ".join(t["name"] for t in targets)
    tally = ", ".join(f"{n} {label}" for label, n in counts.items())
    body = [
        f'<h1>attncheck verify: <span class="v-{"failed" if failed else "passed"}">{outcome}</span></h1>',
        f'<p class="summary">{len(targets)} target{"s" * (len(targets) != 1)}: {escape(names)}.</p>',
        f'<p class="summary" id="verdicts">{escape(tally)} (properties x targets); '
        f"{len(cause_sections)} root cause{'s' * (len(cause_sections) != 1)}. {escape(meaning)}.</p>",
        f'<p class="summary" id="outcome">{escape(outcome_line(data, failed, 1 if failed else 0))}</p>',
        _settings_line(data),
        '<h2 id="matrix">Conformance matrix</h2>',
        table(["property", *(t["name"] for t in targets)], matrix_rows, "matrix"),
        '<p class="muted">A red cell links to its checks, with the smallest counterexample and the command that '
        "reproduces it.</p>",
    ]
    if cause_sections:
        body += ['<h2 id="root-causes">Root causes</h2>', *cause_sections]
    if failure_sections:
        body += ['<h2 id="failures">Failures</h2>', *failure_sections]
    if extras:
        body += ['<h2 id="notes">Observations, known failures, warnings</h2>', "<ul>", *extras, "</ul>"]
    return page(f"attncheck verify: {outcome}: {tally}", "\n".join(body))
