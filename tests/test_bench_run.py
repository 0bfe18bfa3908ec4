"""``attncheck bench run``: a user's kernel benchmarked with verify's declaration flags, outputs checked first,
Ctrl-C keeps what finished; ``bench ab`` with the same flags; the grid keeps causal cases for every alignment.

The commands run in a fresh process, as a user runs them (and as pytest-benchmark needs: under pytest-xdist it
disables timing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attncheck.bench.cases import grid, split
from attncheck.bench.storage import load_run
from attncheck.targets import resolve
from tests.conftest import Cli
from tests.test_bench_compare import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent
USER = "tests.fixtures.bench_targets:flash_blhd"
FLAGS = ["--layout", "BLHD", "--arg-name", "is_causal=causal", "--arg-name", "scale=softmax_scale", "--no-mask"]
# the fixtures without softmax_scale= (interrupted_at_512, replaces_the_clock), on one thread
UNSCALED = ["--layout", "BLHD", "--arg-name", "is_causal=causal", "--no-mask", "--no-scale", "--threads", "1"]


def attncheck(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "attncheck", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_users_blhd_kernel_is_benchmarked_with_verifys_flags(tmp_path: Path) -> None:
    out, page = tmp_path / "run.json", tmp_path / "run.html"
    args = ["bench", "run", USER, *FLAGS, "--cases", "cpu-float32-fwd-", "--threads", "1"]
    proc = attncheck(*args, "--json", out, "--html", page)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # window and softcap: dropped, each reason printed; noncausal and causal at both shapes ran
    assert "dropped 2 cases (tests.fixtures.bench_targets:flash_blhd: target does not declare the window" in proc.stdout
    run = load_run(out)  # what bench compare and bench history read
    infos = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    assert sorted((i["mask"], i["L"]) for i in infos) == [
        ("causal", 128),
        ("causal", 512),
        ("noncausal", 128),
        ("noncausal", 512),
    ]
    for bench, info in zip(run.benchmarks.values(), infos, strict=True):
        assert bench.rounds.size == 20 and bench.timing is not None
        assert info["gflops"] > 0 and 0 < info["roofline_fraction"] < 1.5 and info["impossible"] is None
        assert info["flops"] == 4 * info["B"] * info["H"] * info["D"] * (
            info["L"] * info["S"] if info["mask"] == "noncausal" else info["L"] * (info["L"] + 1) // 2
        )
        assert info["gemm_gflops"] > 0 and info["copy_gbps"] > 0
        assert f"{info['gflops']:.4g}" in proc.stdout  # the table printed as it went
    assert "<table" in page.read_text() and "flash_blhd" in page.read_text()


def test_the_user_kernel_is_called_in_its_own_layout_and_names() -> None:
    """The flags reach the call: BLHD inputs, causal= rather than is_causal= (make_call, as bench run uses it)."""
    from attncheck.bench.cases import make_call
    from attncheck.bench.workloads import Shape
    from attncheck.options import VerifySettings
    from attncheck.targets import resolve_targets
    from tests.fixtures import bench_targets

    caps = ["layout=BLHD", "arg_names=is_causal:causal,scale:softmax_scale", "masks=none"]
    [target] = resolve_targets(VerifySettings(targets=[USER], caps=caps))
    bench_targets.SEEN.clear()
    make_call(target, "cpu", torch.float32, False, "causal", Shape(2, 3, 16, 8))()
    assert bench_targets.SEEN == [((2, 16, 3, 8), {"causal": True, "softmax_scale": None})]


@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_an_unwritable_output_fails_before_any_work(tmp_path: Path, flag: str, cli: Cli) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = cli("bench", "run", USER, *FLAGS, flag, str(blocker / "out"))
    assert proc.returncode == 2 and "dropped" not in proc.stdout and "benchmarking" not in proc.stdout
    assert_one_line_error(proc.stderr, f"{flag} {blocker / 'out'}", "is not a directory")


def test_bad_save_name_and_unknown_target_are_one_line_errors(tmp_path: Path, cli: Cli) -> None:
    proc = cli("bench", "run", USER, *FLAGS, "--save", "../x")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "--save '../x'")
    proc = cli("bench", "run", "tests.fixtures.bench_targets:nothing")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "nothing")


def test_ctrl_c_exits_130_and_keeps_what_finished(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    spec = "tests.fixtures.bench_targets:interrupted_at_512"
    proc = attncheck("bench", "run", spec, *UNSCALED, "--cases", "cpu-float32-fwd-noncausal", "--json", out)
    assert proc.returncode == 130, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "interrupted: 1 finished cases kept" in proc.stdout
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["extra_info"]["L"] == 128


def test_a_kernel_that_replaces_a_timer_function_fails_and_is_not_stored(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    spec = "tests.fixtures.bench_targets:replaces_the_clock"
    proc = attncheck("bench", "run", spec, *UNSCALED, "--cases", "cpu-float32-fwd-noncausal-B4H8L128D64", "--json", out)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" in proc.stdout and "timer functions replaced" in proc.stdout and "time.perf_counter" in proc.stdout
    assert json.loads(out.read_text())["benchmarks"] == []


def test_pytest_benchmarks_takes_user_targets_or_says_why_in_one_line(tmp_path: Path) -> None:
    from tests.test_bench_model import run_benchmarks

    declared = "tests.fixtures.cli_targets:blhd"  # @declare(layout="BLHD", causal=..., softmax_scale=...)
    proc = run_benchmarks(
        "--bench-targets", declared, "--benchmark-disable", "-k", "float32-fwd-", module="benchmarks/test_attention.py"
    )
    assert proc.returncode == 0 and "4 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run_benchmarks("--bench-targets", "no.such.module:attn", module="benchmarks/test_attention.py")
    assert proc.returncode == 4 and "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("ERROR: --bench-targets:") and "no.such.module" in line


@pytest.mark.parametrize(
    ("causal", "kept", "dropped"),
    [
        ("top-left", {"noncausal", "causal"}, set()),
        ("bottom-right", {"noncausal", "causal"}, set()),  # L == S: the alignments are the same mask
        ("always", {"causal"}, {"noncausal"}),
        (None, {"noncausal"}, {"causal"}),
    ],
)
def test_causal_cases_stay_for_every_alignment(causal: str | None, kept: set[str], dropped: set[str]) -> None:
    target = resolve("torch-sdpa")
    target.caps = target.caps.replace(causal=causal)
    ran, left_out = split([target], grid("quick", ("cpu",)))
    assert {c.mask for c in ran} == kept
    assert {c.mask for c, _ in left_out} == dropped | {"window", "softcap"}
    assert all(why.startswith("torch-sdpa: ") for _, why in left_out)


def test_bench_ab_takes_the_flags_and_keeps_the_causal_case(tmp_path: Path) -> None:
    report = tmp_path / "ab.json"
    case = "cpu-float32-fwd-causal-B4H8L128D64"
    proc = attncheck(
        "bench", "ab", USER, USER, *FLAGS, "--cases", case, "--pairs", "8", "--threads", "1", "--json", report
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = json.loads(report.read_text())["results"]
    assert result["case"] == case


def test_bench_ab_unwritable_json_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = attncheck("bench", "ab", "torch-sdpa", "torch-sdpa", "--json", blocker / "ab.json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, f"--json {blocker / 'ab.json'}", "is not a directory")
