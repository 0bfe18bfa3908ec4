"""Timing a call on a GPU so that it cannot be fooled: the anchors' method, hardened against a kernel that games it.

What the anchors do (``docs/benchmarks.md``, "GPU timing", compares them point by point): ``triton.testing.
do_bench`` warms up for a time (25 ms by default), clears the L2 cache before every repetition by writing a
buffer larger than it, records a pair of CUDA events around each call on the current stream, synchronises once at
the end, and returns the mean (or the quantiles asked for); FlashAttention's ``benchmarks/
benchmark_flash_attention.py`` times with ``torch.utils.benchmark.Timer`` (a synchronise around a block of calls,
the mean) and converts to FLOP/s with its ``flops()``; FlashInfer's ``bench_gpu_time`` (``flashinfer/testing/
utils.py``) reads kernel times from CUPTI where it can, CUDA events otherwise, optionally in CUDA graphs, with the
L2 flushed or the inputs rotated through more memory than the L2 (``cold_l2_cache``). :func:`measure` does what
they share, and more:

* **the clock stops only after a device-wide synchronise** (``torch.cuda.synchronize()``, every stream): an
  event pair on the current stream alone does not see work the call queued on another stream; each repetition is
  ``flush, synchronise, start event, call, materialise the output, synchronise the device, end event``, and the
  host wall time of the same span is kept next to the event time;
* **the output is materialised** before the clock stops: a result that is not a plain tensor (a lazy subclass,
  a JAX array not yet ready: ``block_until_ready``) is forced, so a kernel that defers its work to the first read
  is charged for it;
* **the L2 cache is flushed** before every repetition (a write of a buffer larger than L2, as ``do_bench``), so
  no repetition reads the last one's inputs from cache;
* **warm-up by time** (:data:`WARMUP_S`, at least one call) and **early trials dropped** (:data:`DROP_FRACTION`
  of the timed repetitions, at least one: clocks ramping, allocator growth), then **median and interquartile
  range**, with the warm-up and repetition counts recorded (:class:`DeviceTimes`);
* **the timer functions are captured** when this module is imported, before any target is imported
  (:data:`CAPTURED`), the timing calls the captured ones, and :func:`tampered` names any that a target has since
  replaced (``time.perf_counter``, ``torch.cuda.synchronize``, ``torch.cuda.Event`` and its methods...);
* **work left running after the call** is detected and named (:func:`leftover_work`): threads the call started
  that are still alive, and device work on another stream (after the call's own stream is done, a device-wide
  synchronise still waits).

Everything device-specific goes through :class:`DeviceApi`, so ``tests/test_bench_gpu_path.py`` runs it on the CPU
with stand-ins for the stream, the events and the L2 flush.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

WARMUP_S = 0.1  # seconds of warm-up calls before timing (do_bench: 25 ms; ours covers autotuning and clocks)
DROP_FRACTION = 0.1  # fraction of the timed repetitions dropped from the start (at least one)
L2_FLUSH_BYTES = 256 * 2**20  # do_bench's cache buffer: beyond the L2 of an H100 (50 MiB) and an H200
LEFTOVER_SHARE = 0.1  # a device-wide wait longer than this share of the call (and > LEFTOVER_MIN_S) is leftover
LEFTOVER_MIN_S = 50e-6


def _timer_functions() -> dict[str, Any]:
    """The functions timing relies on, by name (what a kernel that games the timing would replace)."""
    found: dict[str, Any] = {"time.perf_counter": time.perf_counter, "time.process_time": time.process_time}
    found["torch.cuda.synchronize"] = torch.cuda.synchronize
    found["torch.cuda.Event"] = torch.cuda.Event
    for method in ("record", "synchronize", "elapsed_time", "query"):
        found[f"torch.cuda.Event.{method}"] = getattr(torch.cuda.Event, method)
    found["torch.cuda.Stream.synchronize"] = torch.cuda.Stream.synchronize
    return found


CAPTURED = _timer_functions()  # at import: the benchmarks and bench run import this before any target


def tampered(captured: dict[str, Any] | None = None) -> list[str]:
    """Names of the timer functions that are no longer the ones captured (by identity)."""
    captured = CAPTURED if captured is None else captured
    now = _timer_functions()
    return [name for name, fn in captured.items() if now.get(name) is not fn]


@dataclass(frozen=True)
class DeviceApi:
    """What :func:`measure` needs of a device, captured functions only."""

    perf_counter: Callable[[], float]
    synchronize: Callable[[], None]  # device-wide: every stream
    event: Callable[[], Any]  # a timing event: .record(), .elapsed_time(later) in ms
    flush: Callable[[], Any]  # evict the L2 cache
    stream_synchronize: Callable[[], None]  # the current stream only


@functools.cache
def cuda_api() -> DeviceApi:
    """The CUDA device, through the functions captured at import (its L2 flush buffer allocated once)."""
    cache = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    event_type = CAPTURED["torch.cuda.Event"]
    stream_sync = CAPTURED["torch.cuda.Stream.synchronize"]
    return DeviceApi(
        perf_counter=CAPTURED["time.perf_counter"],
        synchronize=CAPTURED["torch.cuda.synchronize"],
        event=lambda: event_type(enable_timing=True),
        flush=cache.zero_,
        stream_synchronize=lambda: stream_sync(torch.cuda.current_stream()),
    )


def materialise(out: Any) -> None:
    """Force a lazy result: JAX arrays are waited for; a tensor that is not a plain ``torch.Tensor`` (a subclass
    that could defer its work) is read into one; tuples and lists element by element."""
    if isinstance(out, tuple | list):
        for item in out:
            materialise(item)
    elif callable(getattr(out, "block_until_ready", None)):
        out.block_until_ready()
    elif isinstance(out, torch.Tensor) and type(out) is not torch.Tensor:
        out.as_subclass(torch.Tensor).clone()


@dataclass(frozen=True)
class DeviceTimes:
    """One case's repetitions: seconds per call of each kept repetition, and how they were taken."""

    seconds: list[float]  # event time per kept repetition (start event to end event after the device sync)
    wall_seconds: list[float]  # host wall time of the same spans
    warmup_calls: int
    warmup_s: float
    repetitions: int  # timed, before the drop
    dropped: int  # the first repetitions, not kept
    l2_flush_bytes: int
    method: str = "cuda events around call + materialise + device-wide synchronize, L2 flushed before each"
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        """Interquartile range (seconds): 75th - 25th percentile of the kept repetitions."""
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q3 - q1

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "median_s": self.median,
            "iqr_s": self.iqr,
            "warmup_calls": self.warmup_calls,
            "warmup_s": self.warmup_s,
            "repetitions": self.repetitions,
            "dropped": self.dropped,
            "kept": len(self.seconds),
            "l2_flush_bytes": self.l2_flush_bytes,
            "wall_s": self.wall_seconds,
            "notes": self.notes,
        }


def measure(call: Callable[[], Any], api: DeviceApi, repetitions: int, warmup_s: float = WARMUP_S) -> DeviceTimes:
    """Time ``call`` ``repetitions`` times after a warm-up of ``warmup_s`` seconds (see the module docstring)."""
    if repetitions < 2:
        raise ValueError(f"at least 2 repetitions are needed (one is dropped), got {repetitions}")
    warmup_calls, start = 0, api.perf_counter()
    while warmup_calls == 0 or api.perf_counter() - start < warmup_s:
        materialise(call())
        api.synchronize()
        warmup_calls += 1
    seconds, wall = [], []
    for _ in range(repetitions):
        api.flush()
        api.synchronize()
        begin, end = api.event(), api.event()
        host = api.perf_counter()
        begin.record()
        materialise(call())
        api.synchronize()  # device-wide: the clock stops after every stream's work
        end.record()
        api.synchronize()
        wall.append(api.perf_counter() - host)
        seconds.append(begin.elapsed_time(end) / 1e3)  # ms -> s
    dropped = max(1, int(DROP_FRACTION * repetitions))
    return DeviceTimes(seconds[dropped:], wall[dropped:], warmup_calls, warmup_s, repetitions, dropped, L2_FLUSH_BYTES)


def leftover_work(launch: Callable[[], Any], api: DeviceApi) -> list[str]:
    """Run ``launch`` (one call with no synchronisation of its own) and name the work it left running: threads
    it started that are still alive when it returns, and device work that a device-wide synchronise still waits
    for after the current stream has finished (another stream). Empty when there is none."""
    api.synchronize()
    before = set(threading.enumerate())
    host = api.perf_counter()
    out = launch()
    materialise(out)
    api.stream_synchronize()  # the call's own stream is done
    own = api.perf_counter() - host
    waited = api.perf_counter()
    api.synchronize()  # anything still queued elsewhere
    extra = api.perf_counter() - waited
    found = [
        f"thread {t.name!r} started by the call is still running after it returned"
        for t in threading.enumerate()
        if t not in before and t.is_alive()
    ]
    if extra > max(LEFTOVER_MIN_S, LEFTOVER_SHARE * own):
        found.append(
            f"device work on another stream: a device-wide synchronize waited {extra * 1e3:.3g} ms after the call's "
            f"stream had finished ({own * 1e3:.3g} ms)"
        )
    return found
