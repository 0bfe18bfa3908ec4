"""The GPU timing path, on the CPU: every timed region ends by waiting for the device.

A GPU runs kernels asynchronously: a call returns once its kernels are queued, and a timer read then measures the
launch, not the work. Every timed call of the benchmarks ends with ``torch.cuda.synchronize()``
(:func:`attncheck.benchmarks.workloads.synchronizer`). No GPU here, so :class:`FakeStream` stands in for one:
work "launched" on it takes no time until the stream is synchronised, when it is done (slept) at once. A timed
region that forgot to synchronise, or synchronised before the work, would measure nothing of it, and these fail.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import torch

from attncheck.benchmarks import test_attention, timing
from attncheck.benchmarks.test_model import timed_layers
from attncheck.benchmarks.workloads import Shape, synchronizer
from attncheck.properties.targets import resolve
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
    monkeypatch.setattr(test_attention, "synchronizer", lambda device: stream.synchronize)
    sdpa = resolve("torch-sdpa")

    def launching(*args: Any, **kwargs: Any) -> torch.Tensor:
        stream.launch()
        return sdpa.fn(*args, **kwargs)

    target = dataclasses.replace(sdpa, fn=launching)
    call = test_attention.make_call(target, "cpu", torch.float32, backward, "causal", Shape(1, 2, 16, 8))
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
