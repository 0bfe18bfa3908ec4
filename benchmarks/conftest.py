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

from attncheck.adapters import BUILTINS
from attncheck.bench.cases import grid
from attncheck.bench.devicetime import CAPTURED  # noqa: F401  the timer functions, before any target import
from attncheck.bench.statistics import MIN_ROUNDS
from attncheck.bench.workloads import SIZES, BenchSize, Gemm, Roofline, measure_copy, measure_gemm
from attncheck.errors import TargetUnavailable, UsageError
from attncheck.properties.contract import Target
from attncheck.targets import resolve


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
        metavar="TARGET,TARGET",
        help="comma-separated targets to benchmark: built-in or registered names, or module.path:attr with its "
        "@declare capabilities (default: every built-in; unavailable ones are skipped). Declaration flags "
        "(--causal, --arg-name...) are `attncheck bench run`'s",
    )


TARGETS = pytest.StashKey[dict[str, Target | str | None]]()  # name -> target, why unavailable, None: not yet


def bench_targets(config: pytest.Config) -> list[str]:
    resolved: dict[str, Target | str | None] = config.stash[TARGETS]
    return list(resolved)


def _resolve(name: str) -> Target | str:
    """The target of ``name``, or why it is unavailable here (raises TargetSpecError on a spec that is wrong)."""
    try:
        return resolve(name)
    except TargetUnavailable as exc:
        return f"{name} unavailable: {exc}"


def _session_targets(config: pytest.Config) -> dict[str, Target | str | None]:
    """The session's targets: bench run's (resolved with its declaration flags), or --bench-targets. Built-ins are
    resolved when first benchmarked (None until then); other specs here, so that a wrong one is a one-line usage
    error before anything runs."""
    for plugin in config.pluginmanager.get_plugins():  # `attncheck bench run`'s
        if hasattr(plugin, "attncheck_bench_targets"):
            return dict(plugin.attncheck_bench_targets)
    given = config.getoption("--bench-targets")
    names = list(BUILTINS) if given is None else [name.strip() for name in given.split(",") if name.strip()]
    if not names:
        raise pytest.UsageError(f"--bench-targets: no target in {given!r}")
    try:
        return {name: None if name in BUILTINS else _resolve(name) for name in names}
    except UsageError as exc:  # TargetSpecError: a typo, a module that does not import
        raise pytest.UsageError(f"--bench-targets: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--bench-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    config.stash[TARGETS] = _session_targets(config)


@pytest.fixture(scope="session")
def targets(pytestconfig: pytest.Config) -> Callable[[str], Target | str]:
    """``targets(name)``: the session's target of that name, or the reason it is unavailable here."""
    known = pytestconfig.stash[TARGETS]

    def get(name: str) -> Target | str:
        found = known[name]
        if found is None:
            found = known[name] = _resolve(name)
        return found

    return get


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
    size = metafunc.config.getoption("--bench-size")
    cases = [
        (target, c.device, c.dtype, c.pass_, c.mask, c.shape)
        for target in bench_targets(metafunc.config)
        for c in grid(size, devices())
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
def roofline() -> Callable[[str, torch.dtype], Roofline]:
    """``roofline(device, dtype)``: the same-run roofline, its GEMM measured once per (device, dtype) and its copy
    bandwidth once per device in this session."""
    gemms: dict[tuple[str, torch.dtype], Gemm] = {}
    copies: dict[str, float] = {}

    def get(device: str, dtype: torch.dtype) -> Roofline:
        if (device, dtype) not in gemms:
            gemms[device, dtype] = measure_gemm(device, dtype)
        if device not in copies:
            copies[device] = measure_copy(device)
        return Roofline(gemms[device, dtype], copies[device])

    return get
