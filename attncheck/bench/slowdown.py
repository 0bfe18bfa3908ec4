"""A/B self-test of ``attncheck bench compare``: a pytest plugin that makes one target deliberately slower.

    python -m pytest benchmarks --benchmark-json a.json
    python -m pytest benchmarks -p attncheck.bench.slowdown --slowdown 20 --benchmark-json b.json
    attncheck bench compare a.json b.json          # torch-sdpa should come out "slower", the rest not

Every benchmarked call of the target (default ``torch-sdpa``) is followed by a busy wait of ``--slowdown`` percent
of that call's own duration: extra CPU work on the timed thread, for the forward and the forward + backward
benchmarks alike, so the true ratio is known (1 + slowdown) whatever the target's speed. On the CPU the duration
and the wait are measured in process CPU time, so the extra work is ``--slowdown`` percent of the call's work as
a slower kernel's would be, busy machine or not (a wait measured in wall time adds less work when the process
is preempted during it: under two busy neighbours it added 10-20% in CPU time instead of 20%); on a GPU, in
wall time (the host's CPU time there is spent waiting). The other targets are
untouched and act as A/A controls inside the A/B comparison. Use it to check, on a new machine, which threshold
catches which slowdown before trusting ``bench compare`` in CI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from attncheck.bench.workloads import Shape
from attncheck.properties.contract import Target


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slowdown", type=float, default=20.0, metavar="PCT", help="extra time per call, in percent")
    parser.addoption("--slowdown-target", default="torch-sdpa", metavar="NAME", help="the built-in target to slow")


@pytest.fixture(autouse=True)
def _slow_target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap the benchmark module's ``make_call`` for this test (the module object pytest imported, whatever its
    name: ``benchmarks.test_attention`` in a checkout, ``attncheck.benchmarks.test_attention`` elsewhere)."""
    make_call = getattr(request.module, "make_call", None)
    if make_call is None:
        return
    fraction = request.config.getoption("--slowdown") / 100
    name = request.config.getoption("--slowdown-target")

    def slowed_make_call(
        target: Target, device: str, dtype: torch.dtype, backward: bool, mask: str, shape: Shape, **kwargs: Any
    ) -> Callable[[], Any]:
        call = make_call(target, device, dtype, backward, mask, shape, **kwargs)
        return slowed(call, fraction, device) if target.name == name else call

    monkeypatch.setattr(request.module, "make_call", slowed_make_call)


def slowed(call: Callable[[], Any], fraction: float, device: str) -> Callable[[], Any]:
    """``call`` followed by a busy wait of ``fraction`` of its own duration, in process CPU time on the CPU and in
    wall time on a GPU (also ``bench ab --slowdown-b``)."""
    clock = time.perf_counter if device == "cuda" else time.process_time

    def slowed_call() -> Any:
        start = clock()
        out = call()
        end = clock() + fraction * (clock() - start)
        while clock() < end:  # busy: the extra time is CPU work, like a slower kernel's
            pass
        return out

    return slowed_call
