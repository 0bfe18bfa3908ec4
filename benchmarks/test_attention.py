"""Attention benchmarks: built-in targets x shapes x dtypes x causal/not x fwd / fwd+bwd x devices.

    python -m pytest benchmarks [--bench-size quick|full] --benchmark-json run.json

Each benchmark times ``target.fn`` itself (not ``Target.__call__``, whose per-call watchdog thread would be
timed too) with ``benchmark.pedantic``: the rounds are fixed by the grid (``BenchSize.rounds``, the sample size
that ``attncheck bench compare`` tests; ``--bench-rounds`` overrides it) and the iterations per round are
calibrated once so that a round lasts at least ``BenchSize.round_time``. Between rounds
:func:`attncheck.bench.timing.timed_rounds` runs a fixed calibration kernel and reads the process CPU clock:
``extra_info["timing"]`` holds each round's CPU time and the calibration rounds, from which ``bench compare``
chooses the metric that decides (:mod:`attncheck.bench.timing`). On CUDA each case is timed by
:func:`attncheck.bench.devicetime.measure` instead (CUDA events around the call, the output materialised and
the device synchronised before the clock stops, the L2 flushed before each repetition, warm-up by time, early
repetitions dropped), its repetitions stored as pytest-benchmark's rounds. A benchmark whose timer functions were
replaced since the session started fails, and nothing of it is stored.

``extra_info`` of every benchmark (units in the key names):

* ``flops``: useful floating-point operations per call: forward 4 * B * H * L * S * D over the admissible (query,
  key) pairs (L * S, or L (L + 1) / 2 under the causal mask: "about half", or O(L * w) under the causal sliding
  window (w, 0), w = L // 8), x 3.5 for forward + backward (backward = 2.5 x forward, the FlashAttention
  convention); ``window`` and ``softcap`` (c = 30) cases run for the targets that declare the feature;
* ``gflops``: flops / median seconds per call; on a GPU ``None`` when the speed is impossible (``impossible``
  says why: above :data:`~attncheck.bench.workloads.IMPOSSIBLE_MARGIN` x the roofline, the timing missed
  work); on the CPU, whose ceiling moves with other processes' load, as measured;
* ``gemm_gflops``, ``gemm_n``, ``gemm_fraction``: a same-run (n, n) matmul of the same dtype and device, the
  machine's practical peak, and the attention throughput as a fraction of it;
* ``min_bytes``, ``copy_gbps``, ``roofline_gflops``, ``roofline_fraction``: the call's compulsory memory traffic
  (:func:`~attncheck.bench.workloads.min_bytes`), a same-run device copy's bandwidth, the attainable
  min(GEMM peak, flops / min_bytes x copy bandwidth) (:class:`~attncheck.bench.workloads.Roofline`), and
  gflops as a fraction of it;
* CUDA only: ``device_timing`` (method, median and IQR, warm-up and repetition counts, dropped repetitions, L2
  flush size, host wall times) and ``leftover_work`` (threads or other-stream work the call left running, named);
* ``peak_memory_bytes`` and ``peak_memory_method``: what one untimed call adds to the peak. CUDA: the caching
  allocator's ``max_memory_allocated`` over what was allocated before (exact for torch tensors). CPU (Linux,
  glibc): the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident
  set before the call, after ``malloc_trim(0)`` has returned the heap's free pages to the OS. Pages that stay
  resident (allocator arenas of other threads, fragments) are reused without being counted, so it is a *lower
  bound*; ``None`` where the kernel or libc offers neither;
* ``score_matrix_bytes``: analytic size of one B x H x L x S score matrix in the input dtype, what an unfused
  implementation materialises (FlashAttention does not);
* ``target``, ``device``, ``dtype``, ``pass``, ``mask``, ``B``, ``H``, ``L``, ``S``, ``D``, ``iterations``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import pytest
import torch

from attncheck.bench.cases import calibrate, make_call, unsupported
from attncheck.bench.devicetime import cuda_api, leftover_work, measure, tampered
from attncheck.bench.timing import timed_rounds
from attncheck.bench.workloads import (
    SOFTCAP,
    BenchSize,
    Roofline,
    Shape,
    flops,
    min_bytes,
    window_of,
)
from attncheck.properties.contract import Target

GPU_REPETITIONS = 50  # timed repetitions per case on a GPU (the first DROP_FRACTION of them dropped)


def peak_memory(call: Callable[[], None], device: str) -> tuple[int | None, str]:
    """(bytes one call adds to the peak, how that was measured); see the module docstring."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        return torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated - memory_allocated before"
    try:
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) to the current one
        before = _proc_status_kib("VmRSS")
        call()
        peak = max(0, _proc_status_kib("VmHWM") - before) * 1024  # RSS counters lag by a few pages: clamp at 0
    except OSError:
        return None, "unavailable (no /proc/self/clear_refs or /proc/self/status)"
    return peak, "cpu VmHWM after - VmRSS before, after malloc_trim(0) and a VmHWM reset (lower bound)"


def _malloc_trim() -> None:
    """Give the heap's free pages back to the OS (glibc), so that the call's allocations touch new pages and count.

    Without it, memory freed by earlier calls stays resident in malloc's pool and is reused unseen: the delta
    reads 0 for most benchmarks. Raises OSError where there is no glibc (the measurement is then unavailable).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError) as exc:
        raise OSError(f"no glibc malloc_trim: {exc}") from exc


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmHWM:    224652 kB"
    raise OSError(f"/proc/self/status has no {field}")


def test_attention(
    benchmark: Any,
    request: pytest.FixtureRequest,
    size: BenchSize,
    roofline: Callable[[str, torch.dtype], Roofline],
    targets: Callable[[str], Target | str],
    target: str,
    device: str,
    dtype: str,
    pass_: str,
    mask: str,
    shape: Shape,
) -> None:
    resolved = targets(target)
    if isinstance(resolved, str):
        pytest.skip(resolved)
    reason = unsupported(resolved.caps, device, dtype, pass_, mask)
    if reason:
        pytest.skip(f"{target}: {reason}")
    torch_dtype = getattr(torch, dtype)
    backward = pass_ == "fwdbwd"
    call = make_call(resolved, device, torch_dtype, backward, mask, shape)
    if benchmark.disabled:  # --benchmark-disable: a smoke test, one call, nothing timed or measured
        benchmark.pedantic(call)
        return
    iterations = calibrate(call, size.round_time)
    memory, memory_method = peak_memory(call, device)
    benchmark.group = f"{device}-{dtype}-{pass_}-{mask}-{shape.id}"
    flop = flops(shape, mask, backward)
    traffic = min_bytes(shape, backward, torch_dtype.itemsize)
    benchmark.extra_info.update(
        target=target,
        device=device,
        dtype=dtype,
        B=shape.B,
        H=shape.H,
        L=shape.L,
        S=shape.L,
        D=shape.D,
        mask=mask,
        window=list(window_of(shape)) if mask == "window" else None,
        softcap=SOFTCAP if mask == "softcap" else None,
        iterations=iterations,
        flops=flop,
        min_bytes=traffic,
        peak_memory_bytes=memory,
        peak_memory_method=memory_method,
        score_matrix_bytes=shape.B * shape.H * shape.L * shape.L * torch_dtype.itemsize,
    )
    benchmark.extra_info["pass"] = pass_
    if device == "cuda":
        api = cuda_api()
        times = measure(call, api, repetitions=max(GPU_REPETITIONS, size.rounds))
        stats = benchmark._make_stats(1)  # pytest-benchmark's own record of rounds (what pedantic fills)
        for seconds in times.seconds:
            stats.update(seconds)
        quick = make_call(resolved, device, torch_dtype, backward, mask, shape, synchronize=False)
        benchmark.extra_info.update(device_timing=times.to_dict(), leftover_work=leftover_work(quick, api))
    else:
        timed_rounds(
            benchmark, call, rounds=size.rounds, iterations=iterations, device=device, round_time=size.round_time
        )
    replaced = tampered()
    if replaced:
        benchmark.has_error = True  # nothing of this run is stored
        pytest.fail(f"{target}: timer functions replaced since the benchmarks started: {', '.join(replaced)}")
    median = benchmark.stats.stats.median  # seconds per call
    roof = roofline(device, torch_dtype)
    gflops, fraction, impossible = roof.judge(flop, traffic, median, device)
    benchmark.extra_info.update(
        gflops=gflops,
        gemm_gflops=roof.gemm.gflops,
        gemm_n=roof.gemm.n,
        gemm_fraction=None if gflops is None else gflops / roof.gemm.gflops,
        copy_gbps=roof.copy_gbps,
        roofline_gflops=roof.attainable_gflops(flop, traffic),
        roofline_fraction=fraction,
        impossible=impossible,
    )
    # the row `attncheck bench run` prints as the run goes (what the JSON will hold: extra_info and the stats)
    summary = {"median_s": median, "iqr_s": benchmark.stats.stats.iqr, "rounds": len(benchmark.stats.stats.data)}
    request.node.user_properties.append(("bench", {**benchmark.extra_info, **summary}))
