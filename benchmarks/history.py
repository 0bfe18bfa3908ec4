"""``attncheck bench history``: many saved runs of the same benchmarks, their trends and change points.

Runs are pytest-benchmark JSON files with raw rounds (``stats.data``), given as files or directories (searched
recursively for ``*.json``, e.g. pytest-benchmark's ``.benchmarks/``). They are ordered by ``commit_info.time``
(when the measured code was committed), then by ``datetime`` (when the run was made), then by path; a run without
either time is an error, since its place in the history would be a guess.

Change points
    Binary segmentation of the piecewise-constant fit: in a segment of runs, the split is placed where the sum of
    absolute deviations of the log run-medians from each side's median is smallest (an L1 fit, so one outlier run
    does not attract the split), and it is kept only if

    * the pooled raw rounds of the two sides differ by Mann-Whitney U at p < alpha / m, m the number of split
      positions examined in the segment (Bonferroni: the best of m splits is being tested), and
    * the step between the sides' pooled medians exceeds the threshold (default 10%, as in ``bench compare``).

    Each kept split recurses into its two sides. Pooling the rounds of several runs ignores that rounds of one run
    share that run's conditions, which makes the p-value optimistic; the threshold is what protects against
    run-to-run drift, exactly as in ``bench compare`` (see :mod:`benchmarks.compare`). Finally each change point's
    ratio and p-value are recomputed between the two *adjacent* final segments.

    A change at the last run is found like any other (the latest run regressed), and is indistinguishable from a
    one-off slow run until more runs arrive. A one-run excursion inside the history (slower at one run, back at
    the next) is usually not reported, since the L1 fit does not split for a single point; near the end of the
    history, where a segment of one or two runs is all there is, it can be (as a step up and a step down).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.compare import Run, RunFormatError, load_run, time_unit
from properties.render import write_atomic


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; directories replaced by the ``*.json`` files under them (sorted)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not found:
                raise RunFormatError(f"{path}: directory holds no *.json benchmark runs")
            files.extend(found)
        else:
            files.append(path)
    return files


def _parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)  # naive: pytest-benchmark writes UTC


def order_runs(runs: Iterable[Run]) -> list[Run]:
    """Runs ordered by commit time, then run time, then path (see the module docstring)."""
    keyed = []
    for run in runs:
        commit_time, run_time = _parse_time(run.commit_info.get("time")), _parse_time(run.datetime)
        if commit_time is None and run_time is None:
            raise RunFormatError(f"{run.path}: no commit_info.time or datetime to place the run in the history")
        first = commit_time or run_time
        keyed.append(((first, run_time or first, str(run.path)), run))
    return [run for _, run in sorted(keyed, key=lambda item: item[0])]


def load_history(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Load and order every run under ``paths``; raise :class:`RunFormatError` on the first unusable file."""
    return order_runs(load_run(path) for path in expand_paths(paths))


def run_label(run: Run) -> str:
    """Short commit id (``*`` when the tree was dirty), else the run's date and time."""
    commit = run.commit_info.get("id")
    if isinstance(commit, str) and commit:
        return commit[:7] + ("*" if run.commit_info.get("dirty") else "")
    return (run.datetime or "?")[:16].replace("T", " ")


@dataclass(frozen=True)
class ChangePoint:
    index: int  # position (in the ordered runs) of the first run at the new level
    ratio: float  # pooled median after / before, between the adjacent segments
    p_value: float  # Mann-Whitney U between the adjacent segments' pooled rounds


@dataclass(frozen=True)
class Trend:
    """One benchmark across the runs that contain it."""

    fullname: str
    name: str
    positions: list[int]  # indices into the ordered runs
    rounds: list[np.ndarray]  # raw rounds (seconds) of each of those runs
    change_points: list[ChangePoint]

    @property
    def medians(self) -> np.ndarray:
        return np.array([np.median(r) for r in self.rounds])

    @property
    def change(self) -> float:
        """Last median / first median - 1."""
        medians = self.medians
        return float(medians[-1] / medians[0] - 1)


def _l1_cost(levels: np.ndarray) -> float:
    return float(np.abs(levels - np.median(levels)).sum())


def _best_split(levels: np.ndarray) -> int:
    """Split k (1 <= k < n) of the L1 piecewise-constant fit with two pieces."""
    costs = [_l1_cost(levels[:k]) + _l1_cost(levels[k:]) for k in range(1, levels.size)]
    return 1 + int(np.argmin(costs))


def _step(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> tuple[float, float]:
    """(pooled median ratio after / before, Mann-Whitney p) between two groups of runs."""
    from scipy.stats import mannwhitneyu  # here: importing scipy.stats costs `attncheck verify` ~0.5 s of start-up

    left, right = np.concatenate(before), np.concatenate(after)
    ratio = float(np.median(right) / np.median(left))
    return ratio, float(mannwhitneyu(right, left, alternative="two-sided").pvalue)


def change_points(rounds: Sequence[np.ndarray], threshold: float, alpha: float) -> list[int]:
    """Indices (into ``rounds``) of the first run after each change; see the module docstring."""
    levels = np.log([np.median(r) for r in rounds])
    found: list[int] = []
    segments = [(0, len(rounds))]
    while segments:
        lo, hi = segments.pop()
        if hi - lo < 2:
            continue
        k = lo + _best_split(levels[lo:hi])
        ratio, p_value = _step(rounds[lo:k], rounds[k:hi])
        if p_value < alpha / (hi - lo - 1) and abs(np.log(ratio)) > np.log1p(threshold):
            found.append(k)
            segments += [(lo, k), (k, hi)]
    return sorted(found)


def trend(
    fullname: str, name: str, positions: list[int], rounds: list[np.ndarray], threshold: float, alpha: float
) -> Trend:
    """The trend of one benchmark, its change points measured between adjacent final segments."""
    splits = change_points(rounds, threshold, alpha)
    edges = [0, *splits, len(rounds)]
    points = []
    for i, k in enumerate(splits):
        ratio, p_value = _step(rounds[edges[i] : k], rounds[k : edges[i + 2]])
        points.append(ChangePoint(positions[k], ratio, p_value))
    return Trend(fullname, name, positions, rounds, points)


def trends(runs: Sequence[Run], threshold: float, alpha: float) -> list[Trend]:
    """One :class:`Trend` per benchmark, in order of first appearance."""
    series: dict[str, tuple[str, list[int], list[np.ndarray]]] = {}
    for position, run in enumerate(runs):
        for fullname, bench in run.benchmarks.items():
            entry = series.setdefault(fullname, (bench.name, [], []))
            entry[1].append(position)
            entry[2].append(bench.rounds)
    return [trend(f, name, pos, rounds, threshold, alpha) for f, (name, pos, rounds) in series.items()]


def plot_name(t: Trend) -> str:
    """A file name for the benchmark's plot: a readable slug plus a hash of the fullname (unique)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", t.name).strip("_")[:100]
    return f"{slug}-{hashlib.sha1(t.fullname.encode()).hexdigest()[:8]}.png"


def plot_trend(t: Trend, runs: Sequence[Run], path: str | os.PathLike[str]) -> None:
    """PNG of one benchmark: median per run, the rounds' interquartile range as a band, the piecewise-constant
    levels between change points, and the change points as dashed lines; written atomically.

    Uses matplotlib's Agg canvas directly (no pyplot), so no global backend state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    medians = t.medians
    scale, unit = time_unit(float(medians.min()))
    x = np.array(t.positions)
    q1 = np.array([np.percentile(r, 25) for r in t.rounds]) / scale
    q3 = np.array([np.percentile(r, 75) for r in t.rounds]) / scale
    fig = Figure(figsize=(max(6.0, 0.35 * len(runs) + 3), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(x, q1, q3, alpha=0.25, color="tab:blue", label="rounds IQR", step=None)
    ax.plot(x, medians / scale, "o-", color="tab:blue", markersize=3, label="median")
    edges = [0, *[t.positions.index(cp.index) for cp in t.change_points], len(t.positions)]
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
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
    ax.set_xticks(range(len(runs)), [run_label(r) for r in runs], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(runs) - 0.5)
    ax.set_ylabel(f"time per call ({unit})")
    ax.set_title(t.name, fontsize=8)
    ax.legend(loc="best", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
