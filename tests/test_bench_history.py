"""``attncheck bench history`` orders runs, finds injected step changes where they are, and plots them.

Synthetic runs come from :mod:`tests.test_bench_compare`'s pytest-benchmark JSON writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attncheck.benchmarks.report import plot_name
from attncheck.benchmarks.statistics import change_points, trends
from attncheck.benchmarks.storage import load_history, load_run
from tests.test_bench_compare import NAME, assert_one_line_error, recorded_baselines, rounds, run_cli, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def history(levels: list[float], noise: float = 0.03, n: int = 20) -> list[np.ndarray]:
    """One run per level: ``n`` rounds around that median."""
    return [np.array(rounds(level, n=n, noise=noise, seed=i)) for i, level in enumerate(levels)]


def write_history(directory: Path, levels: list[float], noise: float = 0.03) -> list[Path]:
    """Runs 0..n-1 of NAME at the given medians, one commit per day, files named in *reverse* order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(history(levels, noise)):
        day = f"2026-01-{i + 1:02d}T12:00:00+00:00"
        path = directory / f"{len(levels) - i:04d}_run.json"
        paths.append(write_run(path, {NAME: list(data)}, commit_time=day, when=day, commit_id=f"{i:07d}abc"))
    return paths


def test_step_change_found_at_the_right_index() -> None:
    assert change_points(history([1e-3] * 6 + [1.3e-3] * 4), threshold=0.1, alpha=0.01) == [6]


def test_flat_noisy_history_has_no_change_point() -> None:
    assert change_points(history([1e-3] * 12, noise=0.1), threshold=0.1, alpha=0.01) == []


def test_single_outlier_run_in_the_middle_is_not_a_step() -> None:
    assert change_points(history([1e-3] * 5 + [1.5e-3] + [1e-3] * 5), threshold=0.1, alpha=0.01) == []


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
