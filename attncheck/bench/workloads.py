"""What the attention benchmarks run: the problem grids, the FLOP count, and the same-run GEMM.

Kept out of ``conftest.py`` so that the benchmark module and ``conftest.py`` import it like any module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch


class Shape(NamedTuple):
    """One attention problem size: q, k, v are (B, H, L, D) with S = L (self-attention).

    A NamedTuple, so that pytest-benchmark stores it in the JSON ``params`` as the list [B, H, L, D].
    """

    B: int  # batch
    H: int  # heads
    L: int  # sequence length (queries = keys)
    D: int  # head dimension d_k = d_v

    @property
    def id(self) -> str:
        return f"B{self.B}H{self.H}L{self.L}D{self.D}"


@dataclass(frozen=True)
class BenchSize:
    """A benchmark grid and how long each benchmark is sampled."""

    shapes: tuple[Shape, ...]
    rounds: int  # timed rounds per benchmark: the sample that `attncheck bench compare` tests (>= 5)
    round_time: float  # seconds: a round repeats the call until it lasts at least this long (calibrated once)


# quick: two shapes (short and batched; longer with D = 128): 132 benchmarks of the 10 CPU built-ins in ~1.5 min
# on a quiet 2-core machine.
QUICK = BenchSize(shapes=(Shape(4, 8, 128, 64), Shape(1, 4, 512, 128)), rounds=20, round_time=0.02)
# full: L = 128..4096 at a constant 4096 tokens per batch (the FlashAttention benchmark convention, scaled down:
# B = 4096 / L), model width 512 (H = 8 heads of 64 or 4 heads of 128): 792 benchmarks of the 10 CPU built-ins,
# ~1-1.5 h on 2 cores (the largest call, reference float32 fwd+bwd at L = 4096, takes ~5 s; peak RSS ~1.3 GB).
FULL = BenchSize(
    shapes=tuple(Shape(4096 // L, 512 // D, L, D) for L in (128, 256, 512, 1024, 2048, 4096) for D in (64, 128)),
    rounds=10,
    round_time=0.05,
)
SIZES = {"quick": QUICK, "full": FULL}
# dtypes per device: the CPU's float32 and bfloat16; on a GPU the two half-precision types attention kernels are
# written for (FlashAttention's benchmarks run float16 and bfloat16)
DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("bfloat16", "float16")}
PASSES = ("fwd", "fwdbwd")  # forward only; forward + backward (torch.autograd.grad w.r.t. q, k, v)
# noncausal, causal (top-left), window: a causal sliding window (left = L // 8, 0) (Mistral), softcap: Gemma 2's
# tanh cap (c = SOFTCAP) on non-causal logits. window and softcap run only for targets that declare the feature.
MASKS = ("noncausal", "causal", "window", "softcap")
SOFTCAP = 30.0


def window_of(shape: Shape) -> tuple[int, int]:
    """The benchmarks' sliding window: (L // 8, 0) keys, causal, so a windowed kernel does O(L * w) work."""
    return (shape.L // 8, 0)


@dataclass(frozen=True)
class Gemm:
    """Same-run matrix-multiply throughput: the physical limit attention is reported against."""

    n: int  # (n, n) @ (n, n)
    seconds: float  # fastest seconds per matmul (the peak: see _fastest_time)
    gflops: float  # 2 n^3 / seconds / 1e9


def synchronizer(device: str) -> Callable[[], None]:
    """What every timed call ends with: on a GPU, wait for the kernels it queued (a CUDA call returns once they are
    launched, so a timer read without it measures the launch); on the CPU, nothing (tests/test_bench_gpu_path.py)."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def measure_gemm(device: str, dtype: torch.dtype) -> Gemm:
    """Fastest time of an (n, n) @ (n, n) matmul into a preallocated output, timed like the attention calls.

    n = 2048 on CPU (~40 ms in float32 on 2 cores), 4096 on CUDA (2048 is too small to fill a GPU).
    Repeats until 0.5 s and at least 5 calls have been timed, after 2 warm-up calls.
    """
    n = 4096 if device == "cuda" else 2048
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = synchronizer(device)

    def call() -> None:
        torch.matmul(a, b, out=out)
        sync()

    seconds = _fastest_time(call)
    return Gemm(n, seconds, 2 * n**3 / seconds / 1e9)


def flops(shape: Shape, mask: str, backward: bool) -> int:
    """Useful FLOPs of one call: 2 matmuls of 2 * D FLOPs per admissible (query, key) pair, 4 B H L S D without a
    mask; backward = 2.5x forward, so forward + backward = 3.5x (FlashAttention's benchmarks/
    benchmark_flash_attention.py, ``flops()``: ``4 * batch * seqlen**2 * nheads * headdim // (2 if causal else 1)``,
    x 2.5 for "bwd", x 3.5 for "fwd_bwd": the backward's 5 matmuls against the forward's 2).

    Causal counts the L (L + 1) / 2 admissible pairs of the causal mask (FlashAttention: exactly half), and a causal
    window (w, 0) the min(i, w) + 1 keys of query i: w (w + 1) / 2 + (L - w)(w + 1), O(L * w). A kernel that
    skips the masked pairs is not credited with work it did not do; softcap's tanh is not counted.
    """
    L = S = shape.L
    if mask == "causal":
        pairs = L * (L + 1) // 2
    elif mask == "window":
        w = min(window_of(shape)[0], L - 1)
        pairs = w * (w + 1) // 2 + (L - w) * (w + 1)  # sum over i of min(i, w) + 1
    else:
        pairs = L * S
    forward = 4 * shape.B * shape.H * pairs * shape.D
    return int(forward * 3.5) if backward else forward


def min_bytes(shape: Shape, backward: bool, itemsize: int) -> int:
    """Compulsory memory traffic of one call: every input read once and every output written once.

    Forward: q, k, v read and o written, 4 tensors of B H L D (S = L). Backward adds q, k, v, o, dO read and dq,
    dk, dv written: 8 more. (The log-sum-exp, B H L floats, is left out: a lower bound.) A kernel that moves less
    than this did not read its inputs; one that moves more (an unfused one writing the L x S scores) is slower
    than the roofline says, which is what the fraction shows.
    """
    tensors = 4 + (8 if backward else 0)
    return tensors * shape.B * shape.H * shape.L * shape.D * itemsize


@dataclass(frozen=True)
class Roofline:
    """A same-run roofline (Williams, Waterman & Patterson 2009, "Roofline: an insightful visual performance model
    for multicore architectures", CACM 52(4)): attainable FLOP/s = min(peak FLOP/s, intensity x bandwidth), with
    the peak a measured GEMM of the case's dtype and the bandwidth a measured device copy, both in this run."""

    gemm: Gemm
    copy_gbps: float  # GB/s of a device copy (bytes read + bytes written) / seconds

    def attainable_gflops(self, flop: int, traffic: int) -> float:
        return min(self.gemm.gflops, flop / traffic * self.copy_gbps)

    def judge(
        self, flop: int, traffic: int, seconds: float, device: str
    ) -> tuple[float | None, float | None, str | None]:
        """(GFLOP/s, fraction of the roofline, None), or on a GPU (None, None, why) when the speed is impossible:
        above :data:`IMPOSSIBLE_MARGIN` x the attainable, the timing missed work and no speed is reported."""
        gflops, attainable = flop / seconds / 1e9, self.attainable_gflops(flop, traffic)
        if device == "cuda" and gflops > IMPOSSIBLE_MARGIN * attainable:
            return (
                None,
                None,
                (
                    f"impossible: {gflops:.4g} GFLOP/s measured, {gflops / attainable:.2f}x the same-run roofline "
                    f"{attainable:.4g} GFLOP/s (the timing missed work; not reported)"
                ),
            )
        return gflops, gflops / attainable, None


# The roofline's two numbers are measured practical peaks, not the datasheet's: a kernel may beat a measured
# GEMM or copy by a little (a better-tuned size, cache hits the copy did not get). On a GPU (a device of its own,
# the L2 flushed before each repetition), above this multiple of the roofline a speed is impossible, i.e. the
# timing missed work (no synchronisation, a stream left running, a cached result), and it is flagged, not
# reported. On a shared CPU the ceiling moves with the neighbours' load and the inputs sit in the caches that the
# copy's 64 MiB does not fit, so a fraction above 1 there is reported as measured, never called impossible.
IMPOSSIBLE_MARGIN = 1.5


def measure_copy(device: str) -> float:
    """GB/s of a device-to-device copy of a buffer far beyond the last-level cache (256 MiB on CUDA, beyond an
    H100's 50 MiB L2 and an H200's; 64 MiB on the CPU), counting the bytes read and the bytes written; the fastest
    of repeated copies timed like the GEMM (until 0.5 s and at least 5 copies, after 2 warm-up copies)."""
    n = (256 if device == "cuda" else 64) * 2**20 // 4  # float32 elements
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    sync = synchronizer(device)

    def call() -> None:
        dst.copy_(src)
        sync()

    seconds = _fastest_time(call)
    return 2 * 4 * n / seconds / 1e9


def _fastest_time(call: Callable[[], None]) -> float:
    """Fastest seconds of ``call``: 2 warm-up calls, then until 0.5 s and at least 5 calls (at most 1000).

    The fastest, not the median: a roofline is what the machine can attain, and on a machine shared with other
    processes the median of a GEMM measured at a busy moment was 2.4x below the same GEMM's a minute earlier
    (14 against 35 GFLOP/s on this project's 2-core VM), below the attention it is the ceiling of.
    """
    for _ in range(2):
        call()
    times: list[float] = []
    while len(times) < 5 or (sum(times) < 0.5 and len(times) < 1000):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)
