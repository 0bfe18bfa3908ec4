"""pytest configuration of the attention benchmarks: the ``--bench-size`` grid, ``machine_info``, the same-run GEMM.

The benchmarks are not collected by the default ``python -m pytest`` (pyproject ``testpaths = ["tests"]``);
run them explicitly, e.g.::

    python -m pytest benchmarks --bench-size quick --benchmark-json run.json

Every case is one pytest parameter set ``(target, device, dtype, pass_, mask, shape)``, so the benchmark's
``fullname`` (what ``attncheck bench compare`` matches on) reads like
``benchmarks/test_attention.py::test_attention[torch-sdpa-cpu-float32-fwd-causal-B1H4L512D128]``. The model
benchmarks (``benchmarks/test_model.py``) take ``(model_target, device)``: :data:`MODEL_TARGETS`, or the
``--bench-targets``, on every device.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable

import pytest
import torch

from attncheck.benchmarks.statistics import MIN_ROUNDS
from attncheck.benchmarks.workloads import DTYPES, MASKS, PASSES, SIZES, BenchSize, Gemm, measure_gemm
from attncheck.properties.adapters import BUILTINS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-size",
        choices=sorted(SIZES),
        default="quick",
        help="attention benchmark grid: quick (default, a few minutes on 2 cores) or full (L up to 4096)",
    )
    parser.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) for the run (default: torch's, one per core); recorded in machine_info. "
        "On a shared machine 1 thread is far less sensitive to other processes than oversubscribed OpenMP threads",
    )
    parser.addoption(
        "--bench-rounds",
        type=int,
        default=None,
        metavar="N",
        help="timed rounds per benchmark instead of the grid's (quick 20, full 10): more rounds narrow the "
        "confidence intervals of bench compare, on a busy machine especially",
    )
    parser.addoption(
        "--bench-targets",
        default=None,
        metavar="NAME,NAME",
        help="comma-separated built-in targets to benchmark (default: every built-in; unavailable ones are skipped)",
    )


def bench_targets(config: pytest.Config) -> list[str]:
    given = config.getoption("--bench-targets")
    if given is None:
        return list(BUILTINS)
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUILTINS]
    if unknown or not names:
        raise pytest.UsageError(f"--bench-targets: unknown {unknown or given!r}; built-ins: {', '.join(BUILTINS)}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--bench-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def bench_size(config: pytest.Config) -> BenchSize:
    size = SIZES[config.getoption("--bench-size")]
    rounds = config.getoption("--bench-rounds")
    if rounds is None:
        return size
    if rounds < MIN_ROUNDS:
        raise pytest.UsageError(
            f"--bench-rounds must be >= {MIN_ROUNDS} (bench compare's minimum sample), got {rounds}"
        )
    return dataclasses.replace(size, rounds=rounds)


def devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


# Attention targets of the model benchmarks when --bench-targets is not given: a whole Transformer per target is
# too long a benchmark to run for every built-in.
MODEL_TARGETS = ("reference", "torch-sdpa")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``test_attention`` over every built-in target x device x dtype x pass x mask x shape, and the
    model benchmarks over :data:`MODEL_TARGETS` (or ``--bench-targets``) x device."""
    if "model_target" in metafunc.fixturenames:
        given = metafunc.config.getoption("--bench-targets")
        targets = MODEL_TARGETS if given is None else bench_targets(metafunc.config)
        pairs = [(target, device) for target in targets for device in devices()]
        metafunc.parametrize("model_target,device", pairs, ids=[f"{t}-{d}" for t, d in pairs])
        return
    names = ("target", "device", "dtype", "pass_", "mask", "shape")
    if not set(names) <= set(metafunc.fixturenames):
        return
    size = bench_size(metafunc.config)
    cases = [
        (target, device, dtype, pass_, mask, shape)
        for target in bench_targets(metafunc.config)
        for device in devices()
        for dtype in DTYPES
        for pass_ in PASSES
        for mask in MASKS
        for shape in size.shapes
    ]
    ids = ["-".join((t, dev, dt, p, m, s.id)) for t, dev, dt, p, m, s in cases]
    metafunc.parametrize(",".join(names), cases, ids=ids)


@pytest.fixture(scope="session")
def size(pytestconfig: pytest.Config) -> BenchSize:
    return bench_size(pytestconfig)


def cpu_model() -> str:
    """The CPU's marketing name ("model name" in /proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add what decides attention speed besides the CPU: torch build and threads, GPU and CUDA (null if none).

    ``attncheck bench compare`` treats these fields (but ``load_average``) as part of the machine's identity, with
    node, cpu.brand_raw, arch..., never the volatile ones such as ``cpu.hz_actual``. ``load_average`` (1, 5 and 15
    minutes, taken when the JSON is written, i.e. at the end of the run) is volatile and only informs: a load well
    above the core count means other processes competed with the benchmarks.
    """
    cuda = torch.cuda.is_available()
    machine_info["attncheck"] = {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@pytest.fixture(scope="session")
def gemm() -> Callable[[str, torch.dtype], Gemm]:
    """``gemm(device, dtype)``: the GEMM throughput, measured once per (device, dtype) in this session."""
    cache: dict[tuple[str, torch.dtype], Gemm] = {}

    def get(device: str, dtype: torch.dtype) -> Gemm:
        if (device, dtype) not in cache:
            cache[device, dtype] = measure_gemm(device, dtype)
        return cache[device, dtype]

    return get
