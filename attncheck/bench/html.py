"""The page of ``attncheck bench history --html DIR``: ``DIR/index.html``, one self-contained file.

What it shows: the latest comparison (the last two runs by ``bench compare``'s rule, as a table with the summary
line that ``compare`` prints), the trend table of the terminal, one chart per benchmark (the PNG of ``--plot``,
embedded as a ``data:`` URI) with its change points named in the caption and in ``data-change-points``, and the
runs with their labels (:func:`~attncheck.bench.storage.run_labels`: two runs of one commit told apart).

The skeleton (inline CSS, no network) is :func:`attncheck.html.page`; the cells and the plots come
from :mod:`attncheck.bench.report`, so the page, the terminal and the PNG files say the same thing.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from typing import Any

from attncheck.bench.report import (
    TREND_COLUMNS,
    comparison_summary,
    in_report_order,
    machines_note,
    metric_of,
    result_cells,
    trend_cells,
    trend_image,
)
from attncheck.bench.statistics import Comparison, Trend
from attncheck.bench.storage import WALL, Run, run_labels
from attncheck.html import page, table

COMPARISON_COLUMNS = ["benchmark", "baseline", "candidate", "ratio", "CI", "p", "result", "why"]  # result_cells
NUMERIC = {1, 2, 3, 5}  # right-aligned columns of result_cells

CSS = """
tr.s-slower td { background: #fbd9d9; color: #8b0d0d; font-weight: 600; }
tr.s-faster td { background: #d8f3de; color: #0f5323; }
tr.s-too-noisy td { background: #fff1c2; color: #6b5200; }
tr.changed td { background: #fff1c2; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure.chart { margin: 0; border: 1px solid #ddd; padding: .4em; max-width: 100%; }
figure.chart img { display: block; max-width: 100%; height: auto; }
figure.chart figcaption { font-size: .9em; max-width: 600px; overflow-wrap: anywhere; }  /* the image's width */
"""


def _row(cells: list[str], css_class: str = "", numeric: set[int] | frozenset[int] = frozenset(), **data: str) -> str:
    """A ``<tr>`` of text cells (escaped here), with a class and ``data-*`` attributes."""
    attributes = "".join(f' data-{k.replace("_", "-")}="{escape(v)}"' for k, v in data.items())
    tds = "".join(f"<td{' class=num' if i in numeric else ''}>{escape(c)}</td>" for i, c in enumerate(cells))
    return f'<tr class="{css_class}"{attributes}>{tds}</tr>'


def _comparison_section(comparison: Comparison | None, labels: list[str]) -> list[str]:
    """The comparison of the last two runs, or why there is none."""
    if comparison is None:
        return [
            '<h2 id="comparison">Latest comparison</h2>',
            '<p class="summary" id="comparison-summary">One run only: no comparison (it needs two runs).</p>',
        ]
    c = comparison
    rows = [
        _row(result_cells(r), f"s-{r.status.replace(' ', '-')}", NUMERIC, fullname=r.fullname, status=r.status)
        for r in in_report_order(c)
    ]
    unmatched = [
        f"<li>{len(u.fullnames)} benchmark{'s' * (len(u.fullnames) != 1)} only in the {side}</li>"
        for side, u in (("baseline", c.only_in_baseline), ("candidate", c.only_in_candidate))
        if u.fullnames
    ]
    return [
        f'<h2 id="comparison">Latest comparison: {escape(labels[-2])} &rarr; {escape(labels[-1])}</h2>',
        f'<p class="summary" id="comparison-summary">{escape(comparison_summary(c))}.</p>',
        f'<p class="muted">{escape(metric_of(c))}: ratio of medians with its {1 - c.alpha:.0%} bootstrap CI, '
        f"Mann-Whitney U on the raw rounds, as <code>attncheck bench compare {escape(c.baseline.name)} "
        f"{escape(c.candidate.name)}</code> decides.</p>",
        *(f'<p class="muted metric">decided in {escape(choice.reason)}</p>' for choice in c.choices.values()),
        *(
            f'<p class="summary">not comparable without --force: {escape(choice.reason)}</p>'
            for choice in c.choices.values()
            if not choice.comparable
        ),
        table(COMPARISON_COLUMNS, rows, "comparison"),
        *(["<ul>", *unmatched, "</ul>"] if unmatched else []),
    ]


def _chart(i: int, t: Trend, runs: Sequence[Run], labels: list[str], threshold: float) -> str:
    """One benchmark's chart (:func:`~attncheck.bench.report.trend_image`) and a caption naming its change
    points; ``data-change-points`` holds their run labels, ``|``-separated."""
    image = base64.b64encode(trend_image(t, runs, threshold)).decode()
    points = trend_cells(t, labels)[-1]
    caption = f"change points: {points}" if t.change_points else "no change point"
    marked = "|".join(labels[cp.index] for cp in t.change_points)
    return (
        f'<figure class="chart" id="chart-{i}" data-fullname="{escape(t.fullname)}" '
        f'data-change-points="{escape(marked)}">\n'
        f'<img alt="{escape(t.name)}: {escape(metric_of(t))} per run" src="data:image/png;base64,{image}">\n'
        f"<figcaption><b>{escape(t.name)}</b>: {escape(caption)}</figcaption>\n</figure>"
    )


def history_page(
    runs: Sequence[Run], results: Sequence[Trend], comparison: Comparison | None, threshold: float, alpha: float
) -> str:
    """The page of a history: ``runs`` ordered, their ``results`` (:func:`~attncheck.bench.statistics.trends`)
    and the comparison of the last two runs (``None`` for a history of one run)."""
    labels = run_labels(runs)
    changed = sum(bool(t.change_points) for t in results)
    metric = metric_of(results[0]) if results else WALL
    trend_rows = [
        _row(trend_cells(t, labels), "changed" if t.change_points else "", {1, 2, 3, 4, 5}, fullname=t.fullname)
        for t in results
    ]
    run_rows = [
        _row(
            [str(i + 1), label, str(run.commit_info.get("id") or "-"), run.datetime or "-", str(run.path)],
            label=label,
        )
        for i, (run, label) in enumerate(zip(runs, labels, strict=True))
    ]
    note = machines_note(runs)
    body = [
        f"<h1>attncheck bench history: {len(runs)} run{'s' * (len(runs) != 1)}, "
        f"{escape(labels[0])} .. {escape(labels[-1])}</h1>",
        f'<p class="summary">{len(results)} benchmarks ({escape(metric)} per call), {changed} with a change point. '
        f"Threshold {threshold:.0%}, alpha {alpha:g}: a change point is a step that <code>bench compare</code>'s "
        "rule calls slower or faster between the runs either side of it.</p>",
        *([f'<p class="note">note: {escape(note)}</p>'] if note else []),
        *_comparison_section(comparison, labels),
        '<h2 id="trends">Trends</h2>',
        table(list(TREND_COLUMNS), trend_rows, "trends"),
        '<p class="muted">Median per run (dots), the rounds\' interquartile range (band), the level between change '
        "points (orange) and the change points (dashed red, with the ratio). The y axis spans at least the "
        f"&plusmn;{threshold:.0%} band around the median, so a change below the threshold looks small.</p>",
        '<div class="charts">',
        *(_chart(i, t, runs, labels, threshold) for i, t in enumerate(results)),
        "</div>",
        '<h2 id="runs">Runs</h2>',
        table(["#", "label", "commit", "run time", "file"], run_rows, "runs"),
    ]
    return page(f"attncheck bench history: {len(runs)} runs", "\n".join(body), CSS)


def run_page(doc: dict[str, Any], command: str) -> str:
    """One self-contained page of a ``bench run``: the machine it ran on and its table
    (:func:`attncheck.bench.report.rows_of`)."""
    from attncheck.bench.report import COLUMNS, rows_of

    machine = doc.get("machine_info", {})
    info = machine.get("attncheck", {})
    facts = [
        f"command: {command}",
        f"machine: {machine.get('node', '?')}, {info.get('cpu_model', '?')}, GPU {info.get('gpu_name') or 'none'}",
        f"torch {info.get('torch_version', '?')}, {info.get('torch_threads', '?')} threads, "
        f"load average at the end {info.get('load_average')}",
        f"started {doc.get('datetime', '?')}",
    ]
    body = (
        "<h1>attncheck bench run</h1>\n<ul>"
        + "".join(f"<li>{escape(f)}</li>" for f in facts)
        + "</ul>\n<p>GFLOP/s: 4 B H L S D per forward over the admissible (query, key) pairs, 3.5x for forward + "
        "backward (FlashAttention's benchmark convention); roofline: min(same-run GEMM, intensity x same-run copy "
        "bandwidth), intensity = FLOPs / compulsory bytes.</p>\n"
        + table(COLUMNS, [_row(r, numeric=set(range(2, 8))) for r in rows_of(doc)], "bench")
    )
    return page("attncheck bench run", body, CSS)
