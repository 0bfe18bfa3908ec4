"""The GPU run (``scripts/gpu-run.sh``, :mod:`attncheck.bench.gpu`) on a machine without CUDA: the plan
covers what the GPU run must, every CUDA step is skipped with its reason, and the CPU stand-ins carry the driver's
whole path (reports, summary) through."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from attncheck.bench import gpu
from attncheck.bench.workloads import DTYPES
from attncheck.errors import TargetUnavailable
from attncheck.targets import resolve
from tests.test_bench_compare import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent


def script(*args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        ["sh", str(ROOT / "scripts" / "gpu-run.sh"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_plan_covers_the_gpu_run() -> None:
    steps = {s.name: s.argv for s in gpu.PLAN}
    sdpa = steps["verify-sdpa"]
    assert [a.rpartition(":")[2] for a in sdpa if a.startswith("attncheck.bench.gpu:")] == [
        "sdpa_flash",
        "sdpa_efficient",
        "sdpa_cudnn",
        "sdpa_math",
    ]
    assert sdpa[sdpa.index("--device") + 1] == "cuda"
    assert {"attncheck.bench.gpu:flex_compiled", "attncheck.bench.gpu:flex_varlen_compiled"} <= set(
        steps["verify-flex"]
    )
    assert {"attncheck.bench.gpu:jax_xla", "attncheck.bench.gpu:jax_cudnn"} <= set(steps["verify-jax"])
    bench = steps["bench-gpu-quick"]
    assert bench[:2] == ("bench", "run") and "quick" in bench and bench[bench.index("--device") + 1] == "cuda"
    assert "attncheck.bench.gpu:flex_compiled" in steps["bench-gpu-quick-flex"]
    assert DTYPES["cuda"] == ("bfloat16", "float16")  # the GPU grid: both half types, fwd and fwd+bwd
    assert all(s.cuda for s in gpu.PLAN) and sum(s.weight for s in gpu.PLAN) > 0


@pytest.mark.parametrize("name", sorted(gpu.TARGETS))
def test_each_gpu_target_is_unavailable_in_one_line_without_cuda_or_jax(name: str) -> None:
    with pytest.raises(TargetUnavailable):
        resolve(f"attncheck.bench.gpu:{name}")


@pytest.mark.parametrize("name", [n for n in sorted(gpu.TARGETS) if not n.startswith("jax")])
def test_each_torch_gpu_target_builds_with_a_valid_declaration(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA stubbed (nothing runs): the declarations are valid Capabilities, on CUDA, of the right backend."""
    import torch

    from attncheck import adapters

    monkeypatch.setattr(adapters, "require_cuda", lambda library: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
    # compiled flex raises dynamo's recompile limit: restored by hand (pytest 9.2's monkeypatch undoes with delattr,
    # which a torch config module takes as "hide this option", and later reads fail)
    config, limit = torch._dynamo.config, gpu.recompile_limit_name(torch._dynamo.config)
    before = getattr(config, limit)
    try:
        target = getattr(gpu, name)
    finally:
        setattr(config, limit, before)
    assert target.caps.devices == ("cuda",) and target.device == "cuda"
    assert target.name.endswith(("-cuda", "-compiled")) and "stand-in GPU" in target.description
    if name.startswith("sdpa_") and name != "sdpa_math":
        assert not target.caps.gqa and target.caps.strided_inputs == ("transposed", "expanded")
    if name.startswith("flex"):
        assert target.caps.grad and "compiled" in target.description


def test_dry_run_skips_every_cuda_step_and_runs_the_stand_ins(tmp_path: Path) -> None:
    out = tmp_path / "gpu-run"
    proc = script(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in gpu.PLAN:
        assert f"{step.name}: skipped (dry run)" in proc.stdout
    assert "verify-cpu-stand-in: ok" in proc.stdout and "bench-cpu-stand-in: ok" in proc.stdout
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] and "gpu" in env
    summary = (out / "summary.md").read_text()
    assert "| verify-sdpa | skipped: dry run |" in summary
    assert "| matches_oracle | passed |" in summary  # the conformance matrix of the stand-in verify
    assert "| cpu-float32-fwd-causal-B4H8L128D64 | torch-sdpa |" in summary  # the baseline table
    (bench,) = json.loads((out / "bench-cpu-stand-in.json").read_text())["benchmarks"]
    assert bench["extra_info"]["roofline_fraction"] > 0
    for name in ("verify-cpu-stand-in.html", "bench-cpu-stand-in.html"):
        assert (out / name).read_text().startswith("<!DOCTYPE html>")


def test_a_step_out_of_time_is_interrupted_and_keeps_what_it_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT first (bench run writes the cases that finished), then the outcome says it timed out."""
    for name in [n for n in os.environ if n.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))]:
        monkeypatch.delenv(name)  # the step's bench run is a pytest session of its own, not an xdist worker
    kernel = "tests.fixtures.bench_targets:hangs_after_its_first_shape"  # one case finishes, the next hangs
    flags = ("--layout", "BLHD", "--arg-name", "is_causal=causal", "--no-mask", "--no-scale", "--cases", "float32")
    step = gpu._bench("slow", (kernel,), 1, *flags, "--threads", "1", cuda=False)
    # The first case finishes in ~5 s on an idle runner, ~30 s on a loaded one: a short budget first, a long one
    # only where nothing had finished by then (the step waits out its whole budget, so a long one costs a minute).
    for seconds in (15, 60):
        outcome = gpu.run_step(step, tmp_path, seconds=seconds)
        log = (tmp_path / "slow.log").read_text()
        report = tmp_path / "slow.json"
        if report.is_file() and json.loads(report.read_text())["benchmarks"]:
            break
    assert outcome.status == f"timed out after {seconds} s", log[-3000:]
    assert "interrupted:" in log and "finished cases kept" in log
    assert json.loads((tmp_path / "slow.json").read_text())["benchmarks"]  # what finished, written


def test_an_unwritable_output_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = script(blocker, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, f"--out {blocker}", "not a directory")
