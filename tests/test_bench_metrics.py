"""Which metric ``bench compare`` decides in, and why: wall time normalised by the calibration rounds where the
machines ran at speeds a busy neighbour explains, a refusal beyond, wall time for runs recorded without them; the rounds
:func:`~attncheck.bench.timing.timed_rounds` records; ``bench ab``'s paired comparison.

The runs are synthetic (``tests/test_bench_compare.py``'s documents, plus an ``extra_info["timing"]`` record), so
each test knows what a busy neighbour, a slower machine or a slower kernel did to which clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attncheck.bench import ab
from attncheck.bench.statistics import (
    FASTER,
    NOISY,
    SLOWER,
    UNCHANGED,
    choose_metrics,
    classify,
    compare_paired,
    compare_runs,
)
from attncheck.bench.storage import CPU, NORMALISED_WALL, WALL, load_run
from attncheck.errors import BenchmarkDataError, UsageError
from tests.test_bench_compare import MACHINE, run_doc, write_json
from tests.test_bench_model import run_benchmarks

KERNEL = "cpu: float32 matmul 256x256 + copy of 4 MiB"
NAMES = [f"test_attention[case-{i}]" for i in range(40)]


def noisy(median: float, n: int, seed: int, noise: float = 0.02) -> np.ndarray:
    return median * np.exp(noise * np.random.default_rng(seed).standard_normal(n))


def timed_run(
    path: Path,
    *,
    seed: int,
    kernel_speed: float = 1.0,
    busy: float = 0.0,
    slower: float = 1.0,
    calibration: float = 1.0,
    machine: dict[str, Any] | None = None,
    n: int = 20,
) -> Path:
    """A run of :data:`NAMES` with CPU time and calibration rounds.

    ``kernel_speed``: the machine is that many times slower at everything (CPU and wall, attention and calibration);
    ``busy``: a neighbour takes a share of the wall time (mean ``busy``, drifting from round to round) that a round
    and the calibration rounds either side of it share, CPU time untouched;
    ``slower``: the attention itself does that many times more work (both clocks, not the calibration);
    ``calibration``: the calibration kernel alone takes that many times longer (both of its clocks).
    """
    rng = np.random.default_rng(seed)
    benchmarks, timings = {}, {}
    for i, name in enumerate(NAMES):
        work = noisy(1e-3 * (1 + i % 7), n, seed * 1000 + i) * kernel_speed * slower  # CPU seconds per call
        # The neighbour's share of the time at each calibration: a level per benchmark, drifting by 5% a round.
        share = busy * 2 * rng.random() * np.exp(np.cumsum(0.05 * rng.standard_normal(n + 1)))
        taken = 1 + (share[:-1] + share[1:]) / 2  # wall = CPU x (1 + share taken by the neighbour)
        cal_cpu = noisy(2e-4, n + 1, seed * 1000 + 500 + i) * kernel_speed * calibration
        cal_wall = cal_cpu * (1 + share)
        benchmarks[name] = list(work * taken)
        timings[name] = {
            "cpu_s": list(work),
            "calibration": {"kernel": KERNEL, "units": 5, "wall_s": list(cal_wall), "cpu_s": list(cal_cpu)},
        }
    doc = run_doc(benchmarks, machine=machine)
    for entry in doc["benchmarks"]:
        entry["extra_info"] = {"target": "torch-sdpa", "timing": timings[entry["name"]]}
    return write_json(path, doc)


def statuses(comparison: Any) -> dict[str, int]:
    return {k: v for k, v in comparison.counts().items() if v}


def test_a_busy_neighbour_inflates_wall_time_but_normalised_wall_time_decides(tmp_path: Path) -> None:
    quiet = load_run(timed_run(tmp_path / "quiet.json", seed=1))
    busy = load_run(timed_run(tmp_path / "busy.json", seed=2, busy=0.5))
    comparison = compare_runs(quiet, busy)
    choice = comparison.choices["cpu"]
    assert choice.metric == NORMALISED_WALL and choice.comparable and "slows the calibration" in choice.reason
    assert statuses(comparison) == {UNCHANGED: len(NAMES)}
    assert {r.metric for r in comparison.results} == {NORMALISED_WALL}
    in_wall = compare_runs(quiet, busy, metric=WALL)  # what comparing wall times says: slower everywhere
    assert in_wall.counts()[SLOWER] > len(NAMES) // 2


def test_cpu_time_must_confirm_what_normalised_wall_time_sees(tmp_path: Path) -> None:
    """The calibration kernel alone runs 1.25x faster in the candidate (as in a measured quiet pair): normalised
    wall time reads a 1.25x slowdown that CPU time does not see, so no benchmark is called slower; a kernel that
    does 1.25x the work moves both clocks and is."""
    base = load_run(timed_run(tmp_path / "base.json", seed=1))
    drifted = load_run(timed_run(tmp_path / "drifted.json", seed=2, calibration=0.8))
    comparison = compare_runs(base, drifted)
    assert comparison.choices["cpu"].witness == CPU and "cpu time sees it too" in comparison.choices["cpu"].reason
    assert statuses(compare_runs(base, drifted, metric=NORMALISED_WALL)) == {SLOWER: len(NAMES)}  # unwitnessed
    assert statuses(comparison) == {NOISY: len(NAMES)}
    assert "cpu time does not agree (1.0" in comparison.results[0].reason
    slower = load_run(timed_run(tmp_path / "slower.json", seed=3, slower=1.25))
    assert statuses(compare_runs(base, slower)) == {SLOWER: len(NAMES)}


def test_history_marks_a_change_only_where_both_clocks_see_it(tmp_path: Path) -> None:
    from attncheck.bench.statistics import trends

    def history(name: str, **last: float) -> list[Any]:
        paths = [timed_run(tmp_path / f"{name}{i}.json", seed=i, **(last if i >= 3 else {})) for i in range(5)]
        return trends([load_run(p) for p in paths], 0.1, 0.01)

    assert not any(t.change_points for t in history("drift", calibration=0.8))
    assert all([p.index for p in t.change_points] == [3] for t in history("slow", slower=1.3))


def test_a_machine_of_another_speed_is_refused_or_normalised_on_demand(tmp_path: Path) -> None:
    fast = load_run(timed_run(tmp_path / "fast.json", seed=1))
    slow = load_run(timed_run(tmp_path / "slow.json", seed=2, kernel_speed=1.2))
    assert compare_runs(fast, slow).choices["cpu"].comparable  # as a busy neighbour slows one machine
    slow = load_run(timed_run(tmp_path / "slow.json", seed=2, kernel_speed=1.4))
    comparison = compare_runs(fast, slow)
    choice = comparison.choices["cpu"]
    assert choice.metric == NORMALISED_WALL and not choice.comparable
    assert choice.speed_ratio == pytest.approx(1.4, rel=0.02) and "1.40x apart" in choice.reason
    assert statuses(comparison) == {UNCHANGED: len(NAMES)}
    # Normalised medians are seconds at the baseline machine's speed: close to the baseline's own.
    r = comparison.results[0]
    assert r.candidate_median == pytest.approx(r.baseline_median, rel=0.05)
    assert compare_runs(fast, slow, metric=CPU).counts()[SLOWER] == len(NAMES)


def test_compare_refuses_runs_of_different_speeds_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from attncheck.bench import cli

    fast = timed_run(tmp_path / "fast.json", seed=1)
    slow = timed_run(tmp_path / "slow.json", seed=2, kernel_speed=1.45)
    report = tmp_path / "report.json"
    assert cli.main(["compare", str(fast), str(slow), "--json", str(report)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attncheck: error: ") and "1.45x apart" in err[0], err
    assert "--force" in err[0] and not report.exists()
    assert cli.main(["compare", str(fast), str(slow), "--force", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "normalised wall time" in out
    assert json.loads(report.read_text())["metrics"]["cpu"]["metric"] == NORMALISED_WALL


def test_another_host_of_the_same_kind_and_speed_compares(tmp_path: Path) -> None:
    from attncheck.bench import cli

    other = {**MACHINE, "node": "another-runner"}
    a = timed_run(tmp_path / "a.json", seed=1)
    b = timed_run(tmp_path / "b.json", seed=2, busy=0.4, machine=other)
    assert cli.main(["compare", str(a), str(b)]) == 0
    old = write_json(tmp_path / "old.json", run_doc({n: list(noisy(1e-3, 20, 3)) for n in NAMES}, machine=other))
    assert cli.main(["compare", str(a), str(old)]) == 2  # no calibration: another host's speed is unknown


def test_a_slower_kernel_is_caught_on_a_busy_and_on_a_slower_machine(tmp_path: Path) -> None:
    base = load_run(timed_run(tmp_path / "base.json", seed=1))
    for i, kwargs in enumerate(({"busy": 0.5}, {"kernel_speed": 1.05}, {"busy": 0.5, "kernel_speed": 1.05})):
        cand = load_run(timed_run(tmp_path / f"cand{i}.json", seed=10 + i, slower=1.2, **kwargs))
        assert statuses(compare_runs(base, cand)) == {SLOWER: len(NAMES)}, kwargs
        faster = compare_runs(cand, base)
        assert statuses(faster) == {FASTER: len(NAMES)}, kwargs


def test_runs_without_calibration_are_compared_in_wall_time_and_say_why(tmp_path: Path) -> None:
    timed = load_run(timed_run(tmp_path / "timed.json", seed=1))
    old = load_run(write_json(tmp_path / "old.json", run_doc({n: list(noisy(1e-3, 20, 3)) for n in NAMES})))
    comparison = compare_runs(old, timed)
    assert {r.metric for r in comparison.results} == {WALL} and list(comparison.choices) == ["untimed"]
    assert "old.json recorded no CPU time or calibration rounds" in comparison.choices["untimed"].reason
    with pytest.raises(UsageError, match="cannot compare in cpu time"):
        choose_metrics([old, timed], CPU)
    with pytest.raises(UsageError, match="unknown metric"):
        choose_metrics([timed], "instructions")


def test_different_calibration_kernels_are_not_normalised(tmp_path: Path) -> None:
    a = timed_run(tmp_path / "a.json", seed=1)
    doc = json.loads(timed_run(tmp_path / "b.json", seed=2).read_text())
    for entry in doc["benchmarks"]:
        entry["extra_info"]["timing"]["calibration"]["kernel"] = "cpu: something else"
    b = write_json(tmp_path / "b.json", doc)
    comparison = compare_runs(load_run(a), load_run(b))
    assert {r.metric for r in comparison.results} == {WALL}
    assert "different calibration kernels" in comparison.choices["untimed"].reason


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu_s", [1e-3] * 3, "does not hold 20 CPU times and 21 positive calibration times"),
        ("calibration", None, "extra_info.timing is malformed"),
    ],
)
def test_a_malformed_timing_record_names_the_file_and_benchmark(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    doc = json.loads(timed_run(tmp_path / "run.json", seed=1).read_text())
    doc["benchmarks"][0]["extra_info"]["timing"][field] = value
    path = write_json(tmp_path / "bad.json", doc)
    with pytest.raises(BenchmarkDataError, match=r"bad\.json: benchmark .*case-0.*" + message):
        load_run(path)


def test_the_machine_speed_sits_in_the_history_too(tmp_path: Path) -> None:
    """history and compare choose alike: a history whose last run is on a 1.2x slower machine is normalised."""
    from attncheck.bench.statistics import trends
    from attncheck.bench.storage import load_history

    paths = [timed_run(tmp_path / f"r{i}.json", seed=i, kernel_speed=1.2 if i == 3 else 1.0) for i in range(4)]
    docs = [json.loads(p.read_text()) for p in paths]
    for i, (p, doc) in enumerate(zip(paths, docs, strict=True)):
        doc["datetime"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        doc["commit_info"]["time"] = doc["datetime"]
        write_json(p, doc)
    runs = load_history(paths)
    found = trends(runs, 0.1, 0.01)
    assert {t.metric for t in found} == {NORMALISED_WALL}
    assert not any(t.change_points for t in found)


# --- the rounds timed_rounds records ----------------------------------------------------------------------------


def test_a_real_benchmark_records_cpu_time_and_calibration_around_each_round(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = ["--bench-targets", "torch-sdpa", "--bench-threads", "1", "-k", "float32-fwd-noncausal-B4H8L128D64"]
    proc = run_benchmarks(*args, f"--benchmark-json={out}", module="benchmarks/test_attention.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (bench,) = load_run(out).benchmarks.values()
    timing = bench.timing
    assert timing is not None and timing.kernel.startswith("cpu: float32 matmul 256x256")
    assert timing.cpu.shape == bench.rounds.shape and timing.calibration_wall.size == bench.rounds.size + 1
    # One thread, a quiet or busy machine alike: a round's CPU time cannot exceed its wall time by more than
    # the clocks' granularity and pytest-benchmark's bookkeeping between the two readings.
    assert np.all(timing.cpu <= bench.rounds * 1.2 + 1e-4)
    assert np.all(timing.calibration_cpu > 0)


# --- bench ab ---------------------------------------------------------------------------------------------------


def test_paired_rounds_cancel_a_drift_common_to_both_sides() -> None:
    """The machine's speed wanders by a factor of 2 across the pairs; each pair sees it alike, so a true B / A of
    1.0 is unchanged and of 1.2 is slower, where the unpaired comparison of the same rounds cannot tell."""
    drift = np.exp(np.linspace(0, np.log(2), 20)) * noisy(1.0, 20, 5, noise=0.2)
    a = 1e-3 * drift * noisy(1.0, 20, 6)
    for true, expected in ((1.0, UNCHANGED), (1.2, SLOWER), (1 / 1.2, FASTER)):
        b = 1e-3 * true * drift * noisy(1.0, 20, 7)
        ratio, ci, p = compare_paired("case", a, b, 0.01)
        assert ratio == pytest.approx(true, rel=0.03)
        assert classify(ci, p, (20, 20), 0.1, 0.01)[0] == expected


def test_bench_ab_catches_a_slowed_copy_of_the_same_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from attncheck.cli import main

    report = tmp_path / "ab.json"
    args = ["bench", "ab", "torch-sdpa", "torch-sdpa", "--cases", "cpu-float32-fwd-causal-B4H8L128D64"]
    code = main([*args, "--pairs", "10", "--threads", "1", "--slowdown-b", "100", "--json", str(report)])
    out = capsys.readouterr().out
    (result,) = json.loads(report.read_text())["results"]
    assert code == 1 and result["status"] == SLOWER and result["metric"] == "cpu time", out
    assert 1.6 < result["ratio"] < 2.5 and "1 slower" in out


def test_a_slowed_call_does_the_extra_work_in_cpu_time() -> None:
    """On the CPU the busy wait is a fraction of the call's CPU time, so the added work is known even when the
    process is preempted (a sleep costs wall time and no CPU time: it adds nothing to wait for)."""
    import time

    from attncheck.bench.slowdown import slowed

    def work() -> None:
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass
        time.sleep(0.02)  # wall time without CPU time: a wall-clock wait would double it

    start = time.process_time()
    slowed(work, 0.5, "cpu")()
    assert 0.029 < time.process_time() - start < 0.036  # a wall-clock wait: 0.02 + 0.02


def test_bench_ab_rejects_what_it_cannot_run(capsys: pytest.CaptureFixture) -> None:
    from attncheck.cli import main

    assert main(["bench", "ab", "torch-sdpa", "no-such-target"]) == 2
    assert main(["bench", "ab", "torch-sdpa", "torch-sdpa", "--cases", "no-such-case"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("attncheck: error: ") for line in err), err
    assert "no case of the quick grid" in err[1]
    with pytest.raises(SystemExit):
        main(["bench", "ab", "torch-sdpa", "torch-sdpa", "--pairs", "5"])
    assert "at least 8 pairs" in capsys.readouterr().err


def test_shared_cases_are_those_both_targets_declare() -> None:
    from attncheck.bench.cases import grid, split
    from attncheck.targets import resolve

    cases, _ = split([resolve("reference"), resolve("flex-attention")], grid("quick", ("cpu",)))
    assert {c.mask for c in cases} == {"noncausal", "causal", "window", "softcap"}
    sdpa, dropped = split([resolve("reference"), resolve("torch-sdpa")], grid("quick", ("cpu",)))
    assert {c.mask for c in sdpa} == {"noncausal", "causal"}  # torch-sdpa declares neither window nor softcap
    assert {why for _, why in dropped} == {
        "torch-sdpa: target does not declare the window feature",
        "torch-sdpa: target does not declare the softcap feature",
    }


def test_ab_knows_the_grid_sizes_without_importing_them() -> None:
    from attncheck.bench.workloads import SIZES

    assert set(ab.SIZE_NAMES) == set(SIZES)
