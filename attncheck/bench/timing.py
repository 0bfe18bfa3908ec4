"""How every benchmark is timed: rounds of the call interleaved with rounds of a fixed calibration kernel, in wall
time and in CPU time, so that ``attncheck bench compare`` can tell a slower kernel from a slower or busier machine.

One benchmark is ``rounds`` timed rounds of ``iterations`` calls each (``benchmark.pedantic``, which records the
wall time per call of each round in ``stats.data``, as before). Between two rounds, untimed by pytest-benchmark
(``pedantic``'s ``teardown``), :func:`timed_rounds` runs the calibration kernel and reads the process CPU clock, so
the run records, per round i:

* ``wall``: seconds per call (pytest-benchmark's ``stats.data[i]``);
* ``cpu``: process CPU seconds per call (``time.process_time``, every thread of the process: torch's intra-op
  threads included), read just before round i starts and just after it ends;
* ``calibration wall / cpu``: seconds per unit of the calibration kernel, run once before round 1 and once after
  every round (``rounds + 1`` values): round i sits between calibrations i and i + 1.

``extra_info["timing"]`` holds them::

    {"cpu_s": [rounds], "calibration": {"kernel": str, "units": int, "wall_s": [rounds + 1], "cpu_s": [rounds + 1]}}

Why these. Wall time is what a user waits for, and what changes when another process shares the CPU: a
busy-loop neighbour on each of two cores takes a third of this process's time slices, at random, and a round's
wall time grows by whatever was taken during it. CPU time counts only the time this process ran, so a neighbour
that takes time slices does not change it (a neighbour that evicts caches or shares a core's pipeline still does).
The calibration kernel, a fixed amount of work run right next to every round, slows down with the machine: a
machine that is slower (frequency, memory, another model of the same "kind") or busier in a way CPU time still
sees slows both alike, and the ratio cancels it. Which metric ``bench compare`` uses for a pair of runs, and why,
is :func:`attncheck.bench.statistics.choose_metrics`'s rule; the measurements behind it are in
``docs/benchmarks.md`` ("Comparing under load: measurements").

The calibration kernel (:class:`Calibration`): a 256 x 256 float32 matmul into a preallocated output (compute)
and a copy of a 4 MiB float32 buffer (memory), one unit; a calibration runs ``units`` units, chosen once per
device in a session so that it lasts about half a round (at least one unit). Its description is recorded, and
``bench compare`` normalises two runs only when both ran the same kernel.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attncheck.bench.workloads import synchronizer

CALIBRATION_SHARE = 0.5  # a calibration lasts about this fraction of a round (round_time)
MATMUL_N = 256  # (n, n) @ (n, n) float32: 2 n^3 = 33.6 MFLOP per unit
COPY_BYTES = 4 * 2**20  # bytes copied per unit: beyond a core's L2, so the copy runs from L3 or memory


@dataclass(frozen=True)
class Calibration:
    """A fixed unit of work on one device; :meth:`run` times ``units`` of them."""

    device: str
    units: int
    run_unit: Callable[[], None]

    @property
    def kernel(self) -> str:
        """What one unit is: recorded with the run, compared before two runs are normalised."""
        return f"{self.device}: float32 matmul {MATMUL_N}x{MATMUL_N} + copy of {COPY_BYTES // 2**20} MiB"

    def run(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) per unit, over ``units`` units."""
        return time_calls(self.run_unit, self.units)


def time_calls(call: Callable[[], Any], n: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, over ``n`` calls of ``call`` (also ``bench ab``'s rounds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def _unit(device: str) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(device) for _ in range(2))
    out = torch.empty(MATMUL_N, MATMUL_N, device=device)
    src = torch.randn(COPY_BYTES // 4, generator=gen).to(device)  # float32: 4 bytes each
    dst = torch.empty_like(src)
    sync = synchronizer(device)

    def unit() -> None:
        torch.matmul(a, b, out=out)
        dst.copy_(src)
        sync()

    return unit


@functools.cache
def calibration(device: str, round_time: float) -> Calibration:
    """The session's calibration kernel for ``device``: units chosen once so that it lasts ~ CALIBRATION_SHARE of
    a round (the threads torch uses are those of the benchmarks: ``--bench-threads`` is set before any run)."""
    unit = _unit(device)
    for _ in range(3):  # warm-up: first-call allocation, thread pool start
        unit()
    start = time.perf_counter()
    for _ in range(5):
        unit()
    once = (time.perf_counter() - start) / 5
    return Calibration(device, max(1, math.ceil(CALIBRATION_SHARE * round_time / once)), unit)


def timed_rounds(
    benchmark: Any, call: Callable[[], Any], *, rounds: int, iterations: int, device: str, round_time: float
) -> None:
    """Time ``call`` in ``rounds`` rounds of ``iterations`` calls with ``benchmark.pedantic``, a calibration before
    the first round and after each, CPU time per round; record them in ``extra_info["timing"]``.

    ``call`` is warmed up here (one round's worth of calls), so ``pedantic`` runs no warm-up round of its own.
    """
    cal = calibration(device, round_time)
    for _ in range(iterations):
        call()
    cpu_s: list[float] = []
    cal_wall: list[float] = []
    cal_cpu: list[float] = []
    started: list[float] = []  # the CPU clock when the round about to run starts

    def between_rounds(*_: Any) -> None:
        # pedantic's teardown: after round i (not timed by pytest-benchmark). CPU time of the round that just
        # ended, then the calibration that sits between it and the next round, then the next round's start.
        # pedantic also calls it after the untimed call it makes for the result when iterations > 1 (and after
        # --benchmark-cprofile's calls): those are not rounds.
        if len(cpu_s) == rounds:
            return
        if started:
            cpu_s.append((time.process_time() - started[-1]) / iterations)
        wall, cpu = cal.run()
        cal_wall.append(wall)
        cal_cpu.append(cpu)
        started.append(time.process_time())

    between_rounds()  # calibration 0, before round 1
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=0, teardown=between_rounds)
    benchmark.extra_info["timing"] = {
        "cpu_s": cpu_s,
        "calibration": {"kernel": cal.kernel, "units": cal.units, "wall_s": cal_wall, "cpu_s": cal_cpu},
    }
