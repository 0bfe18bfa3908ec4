"""The GPU timing path, on the CPU: every timed region ends by waiting for the device.

A GPU runs kernels asynchronously: a call returns once its kernels are queued, and a timer read then measures the
launch, not the work. Every timed call of the benchmarks ends with ``torch.cuda.synchronize()``
(:func:`attncheck.bench.workloads.synchronizer`). No GPU here, so :class:`FakeStream` stands in for one:
work "launched" on it takes no time until the stream is synchronised, when it is done (slept) at once. A timed
region that forgot to synchronise, or synchronised before the work, would measure nothing of it, and these fail.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import torch

from attncheck.bench import cases, devicetime, timing
from attncheck.bench.workloads import Gemm, Roofline, Shape, synchronizer
from attncheck.benchmarks.test_model import timed_layers
from attncheck.targets import resolve
from tests.test_bench_model import copy_model, forward_of

WORK = 0.005  # seconds of device work per launch


class FakeStream:
    """A device queue: :meth:`launch` queues work and returns at once; :meth:`synchronize` does the queued work."""

    def __init__(self) -> None:
        self.pending = 0.0
        self.syncs = 0

    def launch(self, seconds: float = WORK) -> None:
        self.pending += seconds

    def synchronize(self) -> None:
        time.sleep(self.pending)
        self.pending = 0.0
        self.syncs += 1


def test_the_synchronizer_waits_for_cuda_and_is_free_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FakeStream()
    monkeypatch.setattr(torch.cuda, "synchronize", stream.synchronize)
    synchronizer("cuda")()
    synchronizer("cpu")()
    assert stream.syncs == 1


@pytest.mark.parametrize("backward", (False, True), ids=("fwd", "fwdbwd"))
def test_a_benchmarked_call_includes_the_device_work_it_launched(
    monkeypatch: pytest.MonkeyPatch, backward: bool
) -> None:
    stream = FakeStream()
    monkeypatch.setattr(cases, "synchronizer", lambda device: stream.synchronize)
    sdpa = resolve("torch-sdpa")

    def launching(*args: Any, **kwargs: Any) -> torch.Tensor:
        stream.launch()
        return sdpa.fn(*args, **kwargs)

    target = dataclasses.replace(sdpa, fn=launching)
    call = cases.make_call(target, "cpu", torch.float32, backward, "causal", Shape(1, 2, 16, 8))
    stream.synchronize()  # make_call's own forward pass (the backward's output shape)
    start = time.perf_counter()
    call()
    assert time.perf_counter() - start >= WORK and stream.pending == 0.0


def test_each_calibration_unit_waits_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FakeStream()
    monkeypatch.setattr(timing, "synchronizer", lambda device: stream.synchronize)
    unit = timing._unit("cpu")
    unit()
    assert stream.syncs == 1


def test_layer_timers_wait_for_the_attention_they_time() -> None:
    """An attention whose work is queued on the stream: its layer's attention time still holds that work (a timer
    that did not synchronise after the call would leave it to the layer's own timer)."""
    stream = FakeStream()
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def launching(*args: Any, **kwargs: Any) -> torch.Tensor:
        stream.launch()
        return sdpa(*args, **kwargs)

    model = copy_model(launching)
    with timed_layers(model, stream.synchronize) as times:
        forward_of(model)()
    for name, seconds in times.attention_s.items():
        assert seconds >= WORK * (2 if name.startswith("decoder") else 1), (name, seconds)
        assert seconds <= times.layer_s[name], name


# --- devicetime: the GPU timing method, on a simulated device --------------------------------------------------


class FakeGpu:
    """A simulated device with a simulated clock: work queued on a stream runs when something waits for it.

    ``launch(seconds, stream)`` queues work and returns at once; the streams run concurrently, so a device-wide
    synchronise advances the clock by the longest queue, a stream's own synchronise by its queue (the others run
    meanwhile). Events are recorded on the main stream: their time is when the main stream reaches them. A flush
    marks the cache cold.
    """

    def __init__(self) -> None:
        self.clock = 0.0
        self.pending: dict[str, float] = {"main": 0.0}
        self.flushes = 0
        self.warm = False

    def launch(self, seconds: float = WORK, stream: str = "main") -> None:
        self.pending[stream] = self.pending.get(stream, 0.0) + seconds

    def synchronize(self) -> None:
        self.clock += max(self.pending.values())
        self.pending = {"main": 0.0}

    def stream_synchronize(self) -> None:
        ran = self.pending["main"]
        self.clock += ran
        self.pending = {name: max(0.0, left - ran) for name, left in self.pending.items()}

    def flush(self) -> None:
        self.flushes += 1
        self.warm = False

    def event(self) -> Any:
        gpu = self

        class Event:
            def record(self) -> None:
                self.t = gpu.clock + gpu.pending["main"]

            def elapsed_time(self, end: Any) -> float:
                return (end.t - self.t) * 1e3

        return Event()

    def api(self) -> devicetime.DeviceApi:
        return devicetime.DeviceApi(
            lambda: self.clock, self.synchronize, self.event, self.flush, self.stream_synchronize
        )


def test_device_time_includes_the_work_the_call_queued() -> None:
    gpu = FakeGpu()
    times = devicetime.measure(lambda: gpu.launch(), gpu.api(), repetitions=20)
    assert times.median == pytest.approx(WORK) and times.iqr == pytest.approx(0.0, abs=1e-12)
    assert times.repetitions == 20 and times.dropped == 2 and len(times.seconds) == 18


def test_work_on_another_stream_is_timed_and_named() -> None:
    """A kernel that queues its work on a side stream and returns: an event pair on the current stream alone sees
    nothing of it; the device-wide synchronise before the end event charges it, and leftover_work names it."""
    gpu = FakeGpu()

    def side() -> None:
        gpu.launch(WORK, stream="side")

    assert devicetime.measure(side, gpu.api(), repetitions=10).median == pytest.approx(WORK)
    (found,) = devicetime.leftover_work(side, gpu.api())
    assert "another stream" in found
    assert devicetime.leftover_work(lambda: gpu.launch(), gpu.api()) == []


def test_a_thread_left_running_is_named() -> None:
    done = threading.Event()

    def detached() -> None:
        threading.Thread(target=done.wait, name="sneaky-worker", daemon=True).start()

    try:
        found = devicetime.leftover_work(detached, FakeGpu().api())
    finally:
        done.set()
    assert found == ["thread 'sneaky-worker' started by the call is still running after it returned"]


def test_the_l2_is_flushed_before_every_repetition() -> None:
    """A kernel ten times faster on a warm cache: flushed before each repetition, it is timed cold."""
    gpu = FakeGpu()

    def cached() -> None:
        gpu.launch(WORK / 10 if gpu.warm else WORK)
        gpu.warm = True

    times = devicetime.measure(cached, gpu.api(), repetitions=10, warmup_s=0.0)
    assert times.median == pytest.approx(WORK) and gpu.flushes == 10


def test_warm_up_by_time_and_early_repetitions_dropped() -> None:
    """Warm-up runs until warmup_s of device time has passed; the first repetitions (slow: clocks ramping) are
    dropped; both counts are recorded."""
    gpu = FakeGpu()
    calls = iter(range(10**6))

    def ramping() -> None:
        n = next(calls)
        gpu.launch(WORK * (3 if 20 <= n < 23 else 1))  # the warm-up is 20 calls; the first 3 timed are slow

    times = devicetime.measure(ramping, gpu.api(), repetitions=30, warmup_s=20 * WORK - 1e-9)
    assert times.warmup_calls == 20 and times.dropped == 3
    assert max(times.seconds) == pytest.approx(WORK)
    record = times.to_dict()
    assert record["warmup_calls"] == 20 and record["repetitions"] == 30 and record["kept"] == 27


def test_a_lazy_output_is_materialised_before_the_clock_stops() -> None:
    """A result whose work is deferred until it is read (block_until_ready, as a JAX array) is charged."""
    gpu = FakeGpu()

    class Lazy:
        def block_until_ready(self) -> None:
            gpu.launch()

    assert devicetime.measure(Lazy, gpu.api(), repetitions=10).median == pytest.approx(WORK)


def test_timer_functions_replaced_after_capture_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert devicetime.tampered() == []
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    assert devicetime.tampered() == ["time.perf_counter", "torch.cuda.synchronize"]


def test_an_impossible_speed_is_flagged_not_reported() -> None:
    """On a GPU, above 1.5x the same-run roofline a speed is impossible: no GFLOP/s, a reason instead."""
    roof = Roofline(Gemm(n=2048, seconds=1.0, gflops=100.0), copy_gbps=10.0)
    flop, traffic = 10**9, 10**6  # intensity 1000 FLOP/byte: compute-bound, attainable 100 GFLOP/s
    assert roof.judge(flop, traffic, seconds=0.02, device="cuda") == (50.0, 0.5, None)
    gflops, fraction, why = roof.judge(flop, traffic, seconds=0.001, device="cuda")  # 10x the roofline
    assert gflops is None and fraction is None and why is not None and "10.00x the same-run roofline" in why
    # on a shared CPU the ceiling moves with the neighbours: reported as measured, never called impossible
    assert roof.judge(flop, traffic, seconds=0.001, device="cpu") == (1000.0, 10.0, None)
    assert roof.attainable_gflops(10**6, 10**6) == 10.0  # memory-bound: 1 FLOP/byte x 10 GB/s
