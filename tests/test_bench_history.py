"""``attncheck bench history`` orders runs, finds injected step changes where they are, and plots them.

Synthetic runs come from :mod:`tests.test_bench_compare`'s pytest-benchmark JSON writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes

from attncheck.bench.report import plot_name, plot_trend
from attncheck.bench.statistics import (
    FASTER,
    NOISY,
    SLOWER,
    UNCHANGED,
    change_points,
    compare_runs,
    rank_test,
    trends,
)
from attncheck.bench.storage import Benchmark, Run, load_history, load_run, run_labels
from tests.test_bench_compare import NAME, assert_one_line_error, recorded_baselines, rounds, run_cli, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def history(levels: list[float], noise: float = 0.03, n: int = 20) -> list[np.ndarray]:
    """One run per level: ``n`` rounds around that median."""
    return [np.array(rounds(level, n=n, noise=noise, seed=i)) for i, level in enumerate(levels)]


def write_history(directory: Path, levels: list[float], noise: float = 0.03, n: int = 20) -> list[Path]:
    """Runs 0..n-1 of NAME at the given medians, one commit per day, files named in *reverse* order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(history(levels, noise, n)):
        day = f"2026-01-{i + 1:02d}T12:00:00+00:00"
        path = directory / f"{len(levels) - i:04d}_run.json"
        paths.append(write_run(path, {NAME: list(data)}, commit_time=day, when=day, commit_id=f"{i:07d}abc"))
    return paths


def test_step_change_found_at_the_right_index() -> None:
    assert change_points(history([1e-3] * 6 + [1.3e-3] * 4), threshold=0.1, alpha=0.01) == [6]


def test_flat_noisy_history_has_no_change_point() -> None:
    assert change_points(history([1e-3] * 12, noise=0.1), threshold=0.1, alpha=0.01) == []


def test_one_run_excursion_is_a_step_up_and_a_step_down_as_compare_says() -> None:
    """A slow run between two normal ones is two changes wherever compare calls the pairs slower and faster; the
    L1 fit alone used to show a flat level."""
    assert change_points(history([1e-3] * 5 + [1.5e-3] + [1e-3] * 5), threshold=0.1, alpha=0.01) == [5, 6]


def test_the_5_5_to_20_to_6_7_ms_history_has_both_change_points(tmp_path: Path) -> None:
    """The issue's case: compare called 5.5 -> 20 ms slower and 20 -> 6.7 ms faster, history showed a flat level
    (noisy rounds, few of them: binary segmentation's first split, [5.5] against the pooled [20, 6.7], fails)."""
    paths = write_history(tmp_path / "runs", [5.5e-3, 20e-3, 6.7e-3], noise=0.2, n=5)
    runs = load_history(paths)
    pairs = [compare_runs(runs[i], runs[i + 1]).results[0].status for i in range(2)]
    assert pairs == [SLOWER, FASTER]
    (t,) = trends(runs, threshold=0.1, alpha=0.01)
    assert [p.index for p in t.change_points] == [1, 2]


def test_an_unversioned_run_is_labelled_unversioned(tmp_path: Path) -> None:
    """pytest-benchmark's commit id outside git is "unversioned": kept whole, not cut to a 7-digit hash."""
    path = write_run(tmp_path / "a.json", {NAME: rounds(1e-3)}, commit_id="unversioned")
    assert run_labels(load_history([path])) == ["unversioned"]


def test_two_steps_and_a_step_at_the_last_run() -> None:
    assert change_points(history([1e-3] * 4 + [1.5e-3] * 4 + [1e-3] * 4), threshold=0.1, alpha=0.01) == [4, 8]
    assert change_points(history([1e-3] * 8 + [1.4e-3]), threshold=0.1, alpha=0.01) == [8]


def test_steps_below_the_threshold_are_not_change_points() -> None:
    assert change_points(history([1e-3] * 6 + [1.05e-3] * 6, noise=0.005), threshold=0.1, alpha=0.01) == []
    assert change_points(history([1e-3] * 6 + [1.05e-3] * 6, noise=0.005), threshold=0.02, alpha=0.01) == [6]


def test_runs_ordered_by_commit_time_then_datetime(tmp_path: Path) -> None:
    paths = write_history(tmp_path / "runs", [1e-3] * 6 + [1.3e-3] * 4)
    runs = load_history([tmp_path / "runs"])
    assert [r.path for r in runs] == paths  # file names sort the other way
    (t,) = trends(runs, threshold=0.1, alpha=0.01)
    assert [cp.index for cp in t.change_points] == [6]
    assert t.change_points[0].ratio == pytest.approx(1.3, rel=0.05)
    no_commit = [
        write_run(tmp_path / f"{name}.json", {NAME: rounds(1e-3)}, commit_time=None, when=when)
        for name, when in (("a", "2026-02-02T00:00:00"), ("b", "2026-02-01T00:00:00+00:00"))
    ]
    assert [r.path for r in load_history(no_commit)] == no_commit[::-1]


def test_cli_trend_table_and_png_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_history(tmp_path / "runs", [1e-3] * 6 + [1.3e-3] * 4)
    plots = tmp_path / "plots"
    code, out, err = run_cli(capsys, "history", tmp_path / "runs", "--plot", plots)
    assert code == 0, err
    assert NAME in out and "0000006" in out and "run 7/10" in out and "+3" in out
    (png,) = plots.iterdir()  # one benchmark, one plot, no temporary file left
    assert png.name == plot_name(trends(load_history([tmp_path / "runs"]), 0.1, 0.01)[0])
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_bad_run_in_history_is_one_line_exit_2_and_plots_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_history(tmp_path / "runs", [1e-3] * 4)
    bad = tmp_path / "runs" / "0099_truncated.json"
    bad.write_text('{"machine_info": {}, "benchmarks": [{"fullname": ')
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "keep.png").write_bytes(b"old")
    code, out, err = run_cli(capsys, "history", tmp_path / "runs", "--plot", plots)
    assert code == 2 and out == ""
    assert_one_line_error(err, str(bad), "truncated or corrupt")
    assert [p.name for p in plots.iterdir()] == ["keep.png"]
    code, _, err = run_cli(capsys, "history", tmp_path / "empty-dir-that-does-not-exist.json")
    assert code == 2
    assert_one_line_error(err, "empty-dir-that-does-not-exist.json", "cannot read")


@pytest.mark.parametrize("baseline", recorded_baselines(), ids=lambda p: p.name)
def test_recorded_baseline_twice_has_no_change_point(baseline: Path) -> None:
    run = load_run(baseline)
    assert all(not t.change_points for t in trends([run, run], threshold=0.1, alpha=0.01))


# --- runs of one commit; history and compare agree ------------------------------------------------------------


def test_runs_of_one_commit_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one commit get their run time in the label, and runs that share that too a number; the table and
    the plots use these labels."""
    day = "2026-01-02T09:00:00+00:00"
    paths = [
        write_run(tmp_path / "a.json", {NAME: rounds(1e-3, seed=0)}, commit_id="aaaaaaa1", when=day),
        write_run(tmp_path / "b.json", {NAME: rounds(1e-3, seed=1)}, commit_id="aaaaaaa1", when=day),
        write_run(tmp_path / "c.json", {NAME: rounds(1e-3, seed=2)}, commit_id="aaaaaaa1", when=day[:11] + "10:30:05"),
        write_run(tmp_path / "d.json", {NAME: rounds(1e-3, seed=3)}, commit_id="bbbbbbb2", when=day[:11] + "11:00:00"),
    ]
    runs = load_history(paths)
    assert run_labels(runs) == [
        "aaaaaaa 01-02 09:00:00 #1",
        "aaaaaaa 01-02 09:00:00 #2",
        "aaaaaaa 01-02 10:30:05",
        "bbbbbbb",
    ]
    ticks: list[str] = []
    original = Axes.set_xticks

    def spy(self: Axes, positions: Any, labels: Any = None, **kwargs: Any) -> Any:
        ticks.extend(labels)
        return original(self, positions, labels, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", spy)
    (t,) = trends(runs, threshold=0.1, alpha=0.01)
    plot_trend(t, runs, tmp_path / "plot.png")
    assert ticks == run_labels(runs)


def two_runs(base: list[float], cand: list[float]) -> list[Run]:
    """Two runs of NAME of one commit, as the history and compare read them."""
    fullname = f"benchmarks/test_attention.py::{NAME}"
    return [
        Run(
            Path(f"{i}.json"),
            {},
            {"id": "0123456789abcdef"},
            f"2026-01-01T0{i}:00:00",
            {fullname: Benchmark(fullname, NAME, np.array(data))},
        )
        for i, data in enumerate((base, cand))
    ]


def test_history_and_compare_agree_on_two_runs() -> None:
    """For two runs, history has a change point exactly when compare calls the second slower or faster: over pairs
    around the threshold (ratios 0.85 to 1.2, 2% to 15% noise), where the two rules used to part."""
    decisions = []
    for seed in range(10):
        for ratio in (0.85, 0.9, 1.05, 1.1, 1.12, 1.15, 1.2):
            for noise in (0.02, 0.05, 0.15):
                runs = two_runs(
                    rounds(1e-3, noise=noise, seed=2 * seed), rounds(ratio * 1e-3, noise=noise, seed=2 * seed + 1)
                )
                (result,) = compare_runs(*runs).results
                (t,) = trends(runs, threshold=0.1, alpha=0.01)
                assert bool(t.change_points) == (result.status in (SLOWER, FASTER)), (seed, ratio, noise, result)
                decisions.append(result.status)
    assert {SLOWER, FASTER, NOISY, UNCHANGED} <= set(decisions)  # every kind of decision was exercised


def test_same_commit_pair_that_compare_calls_noisy_is_no_change_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new user's case: two runs of one commit, +14% with p < alpha but a CI that straddles the 10% band.
    History used to mark it (the rank test and the ratio of medians alone); compare calls it too noisy."""
    base, cand = rounds(1e-3, noise=0.05, seed=0), rounds(1.12e-3, noise=0.05, seed=1)
    ratio, p_value = rank_test(np.array(base), np.array(cand))
    assert ratio > 1.1 and p_value < 0.01  # what the old history rule marked as a change
    day = "2026-01-02T09:00:00+00:00"
    (tmp_path / "runs").mkdir()
    a = write_run(tmp_path / "runs" / "a.json", {NAME: base}, commit_id="aaaaaaa1", when=day)
    b = write_run(tmp_path / "runs" / "b.json", {NAME: cand}, commit_id="aaaaaaa1", when=day[:11] + "10:00:00")
    code, out, _ = run_cli(capsys, "compare", a, b)
    assert code == 0 and "too noisy" in out and "CI straddles" in out
    code, out, _ = run_cli(capsys, "history", tmp_path / "runs")
    assert code == 0 and "x1.1" not in out and "aaaaaaa 01-02 09:00:00 .. aaaaaaa 01-02 10:00:00" in out
