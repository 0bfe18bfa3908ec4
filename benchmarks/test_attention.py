"""Attention benchmarks: built-in targets x shapes x dtypes x causal/not x fwd / fwd+bwd x devices.

    python -m pytest benchmarks [--bench-size quick|full] --benchmark-json run.json

Each benchmark times ``target.fn`` itself (not ``Target.__call__``, whose per-call watchdog thread would be
timed too) with ``benchmark.pedantic``: the rounds are fixed by the grid (``BenchSize.rounds``, the sample size
that ``attncheck bench compare`` tests; ``--bench-rounds`` overrides it) and the iterations per round are
calibrated once so that a round lasts at least ``BenchSize.round_time``. Between rounds
:func:`attncheck.benchmarks.timing.timed_rounds` runs a fixed calibration kernel and reads the process CPU clock:
``extra_info["timing"]`` holds each round's CPU time and the calibration rounds, from which ``bench compare``
chooses the metric that decides (:mod:`attncheck.benchmarks.timing`). On CUDA the timed callable ends with
``torch.cuda.synchronize()`` (:func:`~attncheck.benchmarks.workloads.synchronizer`), so a round measures finished
kernels; the median is cross-checked against CUDA events.

``extra_info`` of every benchmark (units in the key names):

* ``flops``: useful floating-point operations per call: forward 4 * B * H * L * S * D over the admissible (query,
  key) pairs (L * S, or L (L + 1) / 2 under the causal mask: "about half", or O(L * w) under the causal sliding
  window (w, 0), w = L // 8), x 3.5 for forward + backward (backward = 2.5 x forward, the FlashAttention
  convention); ``window`` and ``softcap`` (c = 30) cases run for the targets that declare the feature;
* ``gflops``: flops / median seconds per call;
* ``gemm_gflops``, ``gemm_n``, ``gemm_fraction``: a same-run (n, n) matmul of the same dtype and device, the
  machine's practical peak, and the attention throughput as a fraction of it;
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
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.benchmarks.timing import timed_rounds
from attncheck.benchmarks.workloads import SOFTCAP, BenchSize, Gemm, Shape, flops, synchronizer, window_of
from attncheck.errors import TargetUnavailable
from attncheck.properties.targets import Capabilities, Target, resolve

SYNC_EVENT_TOLERANCE = 0.9  # synchronised wall time below 0.9 x CUDA-event time means a missing synchronisation


def unsupported(caps: Capabilities, device: str, dtype: str, pass_: str, mask: str) -> str | None:
    """Why a target's declared capabilities exclude this case, or None."""
    if caps.entry != "dense":
        return f"a {caps.entry} target (benchmarked by benchmarks/test_entries.py)"
    if device not in caps.devices:
        return f"target does not run on {device} (declared devices {caps.devices})"
    if dtype not in caps.dtypes:
        return f"target does not accept {dtype} (declared dtypes {caps.dtypes})"
    if mask in ("causal", "window") and caps.causal != "top-left":
        return f"target has no top-left is_causal (declared causal={caps.causal})"
    if mask in ("window", "softcap") and mask not in caps.features:
        return f"target does not declare the {mask} feature"
    if pass_ == "fwdbwd" and not caps.grad:
        return "target is not differentiable (declared grad=False)"
    return None


def make_call(target: Target, device: str, dtype: torch.dtype, backward: bool, mask: str, shape: Shape) -> Callable:
    """A zero-argument callable that runs one call of ``target.fn`` (and its backward) on fixed inputs, with the
    mask case's keyword arguments (is_causal, window, softcap) under the target's own names and conventions.

    The inputs are created in the target's own layout (BLHD targets get contiguous (B, L, H, D) tensors), so no
    transpose is timed. The forward pass runs without autograd (inputs do not require grad); the backward pass
    uses ``torch.autograd.grad`` (no accumulation into ``.grad``).
    """
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape.B, shape.H, shape.L, shape.D, generator=gen) for _ in range(3))  # (B, H, L, D)
    if target.caps.layout == "BLHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # (B, H, L, D) -> (B, L, H, D)
    q, k, v = (t.to(device, dtype).requires_grad_(backward) for t in (q, k, v))
    given: dict[str, Any] = {}
    if mask in ("causal", "window"):
        given["is_causal"] = True
    if mask == "window":
        left, right = window_of(shape)
        given["window"] = (left + 1 if target.caps.window_counts_self else left, right)  # as Target translates it
    if mask == "softcap":
        given["softcap"] = SOFTCAP
    kwargs = {target.caps.arg_names.get(arg, arg): value for arg, value in given.items()}
    sync = synchronizer(device)

    def forward() -> Tensor:
        out = target.fn(q, k, v, **kwargs)
        return out[0] if isinstance(out, tuple | list) else out  # (output, weights) or (output, lse)

    if not backward:

        def call() -> None:
            forward()
            sync()

        return call
    grad_out = torch.randn(forward().shape, generator=gen).to(device, dtype)  # same layout as the output

    def call_backward() -> None:
        torch.autograd.grad(forward(), (q, k, v), grad_out)
        sync()

    return call_backward


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


def calibrate(call: Callable[[], None], round_time: float) -> int:
    """Iterations per round so that a round lasts at least ``round_time`` (from one warm call)."""
    call()  # warm-up: first-call allocations, kernel selection, lazy initialisation
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    return max(1, math.ceil(round_time / once))


def cuda_event_seconds(call: Callable[[], None], repeats: int) -> float:
    """Median seconds per call between CUDA events recorded around it (device time, for the cross-check)."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # ms -> s
    times.sort()
    return times[len(times) // 2]


def test_attention(
    benchmark: Any,
    size: BenchSize,
    gemm: Callable[[str, torch.dtype], Gemm],
    target: str,
    device: str,
    dtype: str,
    pass_: str,
    mask: str,
    shape: Shape,
) -> None:
    try:
        resolved = resolve(target)
    except TargetUnavailable as exc:
        pytest.skip(f"{target} unavailable: {exc}")
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
        flops=flops(shape, mask, backward),
        peak_memory_bytes=memory,
        peak_memory_method=memory_method,
        score_matrix_bytes=shape.B * shape.H * shape.L * shape.L * torch_dtype.itemsize,
    )
    benchmark.extra_info["pass"] = pass_
    timed_rounds(benchmark, call, rounds=size.rounds, iterations=iterations, device=device, round_time=size.round_time)
    median = benchmark.stats.stats.median  # seconds per call
    reference = gemm(device, torch_dtype)
    gflops = benchmark.extra_info["flops"] / median / 1e9
    benchmark.extra_info.update(
        gflops=gflops, gemm_gflops=reference.gflops, gemm_n=reference.n, gemm_fraction=gflops / reference.gflops
    )
    if device == "cuda":
        event = cuda_event_seconds(call, max(size.rounds, 10))
        benchmark.extra_info.update(cuda_event_median_s=event, sync_over_event=median / event)
        if median < SYNC_EVENT_TOLERANCE * event:
            warnings.warn(
                f"{target}: synchronised median {median:.3g} s < CUDA-event median {event:.3g} s: missing sync?",
                stacklevel=1,
            )
