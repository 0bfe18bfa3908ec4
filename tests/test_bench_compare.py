"""``attncheck bench compare`` finds a regression, stays quiet on noise, and never damages its inputs or outputs.

Runs are synthetic pytest-benchmark JSON files (:func:`write_run`) with log-normal round times, so each test knows
the true ratio, plus the recorded CPU baseline in ``benchmarks/baselines/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attncheck.bench import cli
from attncheck.bench.statistics import FASTER, NOISY, SLOWER, UNCHANGED, compare_runs
from attncheck.bench.storage import load_run, machine_differences
from attncheck.errors import BenchmarkDataError
from attncheck.render import write_atomic

BASELINES = Path(__file__).resolve().parent.parent / "benchmarks" / "baselines"
NAME = "test_attention[torch-sdpa-cpu-float32-fwd-causal-B1H4L1024D128]"

MACHINE: dict[str, Any] = {
    "node": "bench-host",
    "processor": "",
    "machine": "x86_64",
    "python_implementation": "CPython",
    "python_version": "3.11.7",
    "release": "6.1.0",
    "system": "Linux",
    "cpu": {"brand_raw": "Test CPU", "arch": "X86_64", "count": 2, "hz_actual": [2600000000, 0]},
    "attncheck": {
        "torch_version": "2.13.0+cpu",
        "torch_threads": 2,
        "cpu_model": "Test CPU",
        "gpu_name": None,
        "cuda_version": None,
        "load_average": [1.0, 1.0, 1.0],
    },
}


def rounds(median: float, n: int = 20, noise: float = 0.02, seed: int = 0) -> list[float]:
    """``n`` log-normal round times (seconds) with the given median and relative spread."""
    return list(median * np.exp(noise * np.random.default_rng(seed).standard_normal(n)))


def bench_entry(name: str, data: list[float]) -> dict[str, Any]:
    """One pytest-benchmark 5.x benchmark entry with raw rounds."""
    q1, _, q3 = statistics.quantiles(data, n=4)
    return {
        "group": None,
        "name": name,
        "fullname": f"benchmarks/test_attention.py::{name}",
        "params": None,
        "param": None,
        "extra_info": {},
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0, "warmup": False},
        "stats": {
            "min": min(data),
            "max": max(data),
            "mean": statistics.mean(data),
            "stddev": statistics.stdev(data),
            "rounds": len(data),
            "median": statistics.median(data),
            "iqr": q3 - q1,
            "q1": q1,
            "q3": q3,
            "iqr_outliers": 0,
            "stddev_outliers": 0,
            "outliers": "0;0",
            "ld15iqr": min(data),
            "hd15iqr": max(data),
            "ops": 1 / statistics.mean(data),
            "total": sum(data),
            "data": data,
            "iterations": 1,
        },
    }


def run_doc(
    benchmarks: dict[str, list[float]],
    machine: dict[str, Any] | None = None,
    commit_time: str | None = "2026-01-01T00:00:00+00:00",
    when: str = "2026-01-01T00:00:00+00:00",
    commit_id: str = "0123456789abcdef",
) -> dict[str, Any]:
    """A pytest-benchmark JSON document: machine_info, commit_info, benchmarks, datetime, version."""
    commit = {"id": commit_id, "time": commit_time, "dirty": False, "project": "attncheck", "branch": "main"}
    return {
        "machine_info": copy.deepcopy(machine or MACHINE),
        "commit_info": commit if commit_time else {},
        "benchmarks": [bench_entry(name, data) for name, data in benchmarks.items()],
        "datetime": when,
        "version": "5.2.3",
    }


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def write_run(path: Path, benchmarks: dict[str, list[float]], **kwargs: Any) -> Path:
    return write_json(path, run_doc(benchmarks, **kwargs))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    """The CLI's error contract: exactly one line ``attncheck: error: ...`` naming what went wrong, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attncheck: error: "), f"expected one error line, got:\n{err}"
    for fragment in fragments:
        assert fragment in lines[0], f"error line should mention {fragment!r}: {lines[0]}"


def statuses(tmp_path: Path, base: dict[str, list[float]], cand: dict[str, list[float]]) -> dict[str, str]:
    comparison = compare_runs(
        load_run(write_run(tmp_path / "a.json", base)), load_run(write_run(tmp_path / "b.json", cand))
    )
    return {r.name: r.status for r in comparison.results}


# --- classification ------------------------------------------------------------------------------------------


def test_known_20_percent_slowdown_is_flagged_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3, seed=1)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1.2e-3, seed=2)})
    code, out, _ = run_cli(capsys, "compare", base, cand)
    assert code == 1, out
    assert "slower" in out and "REGRESSION" in out


def test_same_distribution_is_not_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3, seed=1)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1e-3, seed=2)})
    code, out, _ = run_cli(capsys, "compare", base, cand)
    assert code == 0, out
    assert statuses(tmp_path, {NAME: rounds(1e-3, seed=1)}, {NAME: rounds(1e-3, seed=2)}) == {NAME: UNCHANGED}


def test_aa_false_alarms_and_power_over_many_seeds(tmp_path: Path) -> None:
    """200 A/A pairs (5% noise, 20 rounds): none flagged. 100 pairs with a true +25%: nearly all flagged."""
    names = [f"bench{i}" for i in range(200)]
    base = {n: rounds(1e-3, noise=0.05, seed=2 * i) for i, n in enumerate(names)}
    same = {n: rounds(1e-3, noise=0.05, seed=2 * i + 1) for i, n in enumerate(names)}
    slow = {n: rounds(1.25e-3, noise=0.05, seed=2 * i + 1) for i, n in enumerate(names[:100])}
    aa = statuses(tmp_path, base, same)
    assert sum(s in (SLOWER, FASTER) for s in aa.values()) == 0, aa
    ab = statuses(tmp_path, base, slow)
    assert sum(s == SLOWER for s in ab.values()) >= 95, ab


def test_faster_is_classified_faster_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert statuses(tmp_path, {NAME: rounds(1e-3, seed=1)}, {NAME: rounds(0.7e-3, seed=2)}) == {NAME: FASTER}
    code, _, _ = run_cli(capsys, "compare", tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0


def test_noisy_or_short_samples_are_too_noisy_not_slower(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noisy = statuses(tmp_path, {NAME: rounds(1e-3, noise=0.4, seed=1)}, {NAME: rounds(1.2e-3, noise=0.4, seed=2)})
    assert noisy == {NAME: NOISY}
    short = statuses(tmp_path, {NAME: rounds(1e-3, n=3, seed=1)}, {NAME: rounds(2e-3, n=3, seed=2)})
    assert short == {NAME: NOISY}
    code, out, _ = run_cli(capsys, "compare", tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0 and "only 3 rounds" in out


def test_threshold_decides_what_matters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A clean +5% shift is significant but inside the default 10% band; with --threshold 2 it is a regression."""
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3, noise=0.005, seed=1)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1.05e-3, noise=0.005, seed=2)})
    assert run_cli(capsys, "compare", base, cand)[0] == 0
    assert run_cli(capsys, "compare", base, cand, "--threshold", "2%")[0] == 1


def test_benchmarks_in_only_one_file_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3), "test_old": rounds(1e-3)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1e-3, seed=3), "test_new": rounds(1e-3)})
    out_json = tmp_path / "report.json"
    code, out, _ = run_cli(capsys, "compare", base, cand, "--json", out_json)
    assert code == 0
    assert "only in the baseline" in out and "test_old" in out and "test_new" in out
    report = json.loads(out_json.read_text())
    assert report["only_in_baseline"] == ["benchmarks/test_attention.py::test_old"]
    assert report["only_in_candidate"] == ["benchmarks/test_attention.py::test_new"]
    assert [b["name"] for b in report["benchmarks"]] == [NAME]


# --- machines ------------------------------------------------------------------------------------------------


def test_machine_mismatch_refused_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = copy.deepcopy(MACHINE)
    other["cpu"]["brand_raw"] = "Other CPU"
    other["attncheck"]["torch_version"] = "2.12.0"
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3, seed=1)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1.2e-3, seed=2)}, machine=other)
    code, out, err = run_cli(capsys, "compare", base, cand)
    assert code == 2 and out == ""
    assert_one_line_error(err, "different machines", "cpu.brand_raw", "torch_version", "--force")
    code, out, err = run_cli(capsys, "compare", base, cand, "--force")
    assert code == 1 and err == ""
    assert "different machines" in out


def test_volatile_machine_fields_are_ignored() -> None:
    other = copy.deepcopy(MACHINE)
    other["cpu"]["hz_actual"] = [3100000000, 0]
    other["release"] = "6.2.0"
    other["attncheck"]["load_average"] = [7.0, 6.0, 5.0]
    assert machine_differences(MACHINE, other) == []


# --- bad input, outputs --------------------------------------------------------------------------------------


BAD_FILES: dict[str, tuple[str | bytes, str]] = {
    "empty": ("", "empty file"),
    "truncated": (json.dumps(run_doc({NAME: rounds(1e-3)}))[:200], "truncated or corrupt"),
    "corrupt": ('{"machine_info": {}, "benchmarks": [}', "truncated or corrupt"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a text file"),
    "foreign": (json.dumps({"results": [1, 2, 3]}), "not a pytest-benchmark JSON run"),
    "list": ("[1, 2]", "not a pytest-benchmark JSON run"),
    "no-data": (
        json.dumps({**run_doc({NAME: rounds(1e-3)}), "benchmarks": [{"fullname": "x", "stats": {}}]}),
        "raw rounds",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_input_is_one_line_exit_2_and_outputs_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    text, message = BAD_FILES[kind]
    good = write_run(tmp_path / "good.json", {NAME: rounds(1e-3)})
    bad = tmp_path / f"{kind}.json"
    if isinstance(text, bytes):
        bad.write_bytes(text)
    else:
        bad.write_text(text)
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    md.write_text("previous markdown")
    js.write_text("previous json")
    for argv in (("compare", good, bad), ("compare", bad, good)):
        code, out, err = run_cli(capsys, *argv, "--markdown", md, "--json", js)
        assert code == 2, out
        assert_one_line_error(err, str(bad), message)
    assert md.read_text() == "previous markdown" and js.read_text() == "previous json"


def test_missing_file_and_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_run(tmp_path / "good.json", {NAME: rounds(1e-3)})
    code, _, err = run_cli(capsys, "compare", good, tmp_path / "absent.json")
    assert code == 2
    assert_one_line_error(err, "absent.json", "cannot read")
    for flag in ("--json", "--markdown"):  # under a file: checked before the runs are read, the user's path named
        code, _, err = run_cli(capsys, "compare", good, tmp_path / "absent.json", flag, good / "r.json")
        assert code == 2
        assert_one_line_error(err, f"{flag} {good / 'r.json'}", "is not a directory")
    code, _, _ = run_cli(capsys, "compare", good, good, "--json", tmp_path / "new" / "dir" / "r.json")
    assert code == 0 and (tmp_path / "new" / "dir" / "r.json").is_file()  # missing folders are created


def test_reports_written_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3, seed=1)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1.2e-3, seed=2)})
    md, js = tmp_path / "out" / "report.md", tmp_path / "out" / "report.json"
    md.parent.mkdir()
    md.write_text("old")
    code, _, _ = run_cli(capsys, "compare", base, cand, "--markdown", md, "--json", js)
    assert code == 1
    report = json.loads(js.read_text())
    assert report["exit_code"] == 1 and report["benchmarks"][0]["status"] == SLOWER
    assert report["benchmarks"][0]["ci"][0] > 1.1
    assert "| `" + NAME + "` |" in md.read_text() and "REGRESSION" in md.read_text()
    assert sorted(p.name for p in md.parent.iterdir()) == ["report.json", "report.md"]  # no temporary files left


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_load_run_names_the_file_in_every_error(tmp_path: Path) -> None:
    doc = run_doc({NAME: rounds(1e-3)})
    doc["benchmarks"][0]["stats"]["data"] = [0.0] * 5  # a timer too coarse for the benchmark
    path = write_json(tmp_path / "bad.json", doc)
    with pytest.raises(BenchmarkDataError, match=r"bad\.json.*median time is 0"):
        load_run(path)


# --- the recorded baseline and the CLI wiring -----------------------------------------------------------------


def recorded_baselines() -> list[Path]:
    return sorted(BASELINES.glob("*.json"))


@pytest.mark.parametrize("baseline", recorded_baselines(), ids=lambda p: p.name)
def test_recorded_baseline_against_itself_and_slowed(tmp_path: Path, baseline: Path) -> None:
    """The committed baseline loads; against itself nothing is flagged; with every round x 1.5, nothing is faster
    and the quieter benchmarks are flagged slower."""
    run = load_run(baseline)
    assert run.benchmarks and all(b.rounds.size >= 5 for b in run.benchmarks.values())
    itself = compare_runs(run, run)
    assert itself.exit_code == 0 and itself.counts()[SLOWER] == itself.counts()[FASTER] == 0
    doc = json.loads(baseline.read_text())
    for entry in doc["benchmarks"]:  # the benchmarks take 1.5x the time, wall and CPU; the calibration does not
        entry["stats"]["data"] = [1.5 * t for t in entry["stats"]["data"]]
        timing = entry["extra_info"].get("timing")
        if timing is not None:
            timing["cpu_s"] = [1.5 * t for t in timing["cpu_s"]]
    slowed = load_run(write_json(tmp_path / "slowed.json", doc))
    result = compare_runs(run, slowed)
    assert result.exit_code == 1 and result.counts()[FASTER] == 0
    assert result.counts()[SLOWER] >= len(result.results) // 2, result.counts()


def test_register_adds_compare_and_history_to_a_bench_group() -> None:
    parser = argparse.ArgumentParser(prog="attncheck")
    bench = parser.add_subparsers(dest="command").add_parser("bench")
    cli.register(bench.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(["bench", "compare", "a.json", "b.json", "--threshold", "5%", "--alpha", "0.002"])
    assert args.func is cli.compare_command and args.threshold == pytest.approx(0.05) and args.alpha == 0.002
    args = parser.parse_args(["bench", "history", "runs/", "--plot", "plots"])
    assert args.func is cli.history_command and args.plot == Path("plots")


def test_standalone_module_entry_point(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base.json", {NAME: rounds(1e-3, seed=1)})
    cand = write_run(tmp_path / "cand.json", {NAME: rounds(1.2e-3, seed=2)})
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "attncheck.bench.cli", "compare", str(base), str(cand)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "slower" in proc.stdout


# --- runs of a subset of targets ------------------------------------------------------------------------------


def targeted_run(path: Path, targets: dict[str, str]) -> Path:
    """A run whose benchmarks (name -> target) record their target in ``extra_info``, as the benchmarks do."""
    doc = run_doc({name: rounds(1e-3, seed=i) for i, name in enumerate(targets)})
    for entry in doc["benchmarks"]:
        entry["extra_info"]["target"] = targets[entry["name"]]
    return write_json(path, doc)


def grid(targets: list[str], cases: int) -> dict[str, str]:
    return {f"test_attention[{t}-case{i}]": t for t in targets for i in range(cases)}


def test_one_target_against_the_full_baseline_is_one_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new user's run of one target against a 4-target baseline: 87 benchmarks of the 3 absent targets are one
    line on the terminal (names with --list-unmatched), a collapsed list in markdown, full lists in JSON."""
    full = grid(["reference", "torch-sdpa", "hf-eager", "jax"], 29)  # 116 benchmarks
    base = targeted_run(tmp_path / "base.json", full)
    cand = targeted_run(tmp_path / "cand.json", grid(["torch-sdpa"], 29))
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    code, out, _ = run_cli(capsys, "compare", base, cand, "--markdown", md, "--json", js)
    assert code == 0, out
    (line,) = [line for line in out.splitlines() if "only in the" in line]
    assert line == (
        "87 benchmarks only in the baseline (targets not in the candidate: hf-eager, jax, reference); "
        "--list-unmatched names them"
    )
    assert "jax-case" not in out and "reference-case" not in out and "29 unchanged" in out
    report = json.loads(js.read_text())
    assert report["targets_only_in_baseline"] == ["hf-eager", "jax", "reference"]
    assert report["targets_only_in_candidate"] == [] and report["only_in_candidate"] == []
    assert len(report["only_in_baseline"]) == 87 and len(report["benchmarks"]) == 29
    text = md.read_text()
    assert "87 benchmarks only in the baseline (targets not in the candidate: hf-eager, jax, reference)." in text
    assert (
        "<details><summary>Only in the baseline (87)</summary>" in text
        and "`benchmarks/test_attention.py::test_attention[jax-case28]`" in text
    )
    code, out, _ = run_cli(capsys, "compare", base, cand, "--list-unmatched")
    assert code == 0 and all(name in out for name in full)


def test_missing_benchmarks_of_a_target_in_both_runs_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark that vanished although its target ran is the surprising kind: named (the first 10 of them)."""
    base = targeted_run(tmp_path / "base.json", {**grid(["torch-sdpa"], 15), **grid(["jax"], 3)})
    cand = targeted_run(tmp_path / "cand.json", {"test_attention[torch-sdpa-case0]": "torch-sdpa"})
    code, out, _ = run_cli(capsys, "compare", base, cand)
    assert code == 0
    assert "3 benchmarks only in the baseline (targets not in the candidate: jax)" in out
    assert "14 benchmarks only in the baseline: " in out and "and 4 more (--list-unmatched names them)" in out
    assert "torch-sdpa-case10]" in out and "torch-sdpa-case11]" not in out  # in the baseline's order
    code, out, _ = run_cli(capsys, "compare", base, cand, "--list-unmatched")
    assert "torch-sdpa-case14]" in out and "jax-case2]" in out and "more" not in out
