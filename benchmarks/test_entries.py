"""Benchmarks of the varlen and decode entries: decode throughput and bandwidth, packed prefill vs padded dense.

    python -m pytest benchmarks/test_entries.py [--bench-size quick|full] --benchmark-json run.json

* **decode** (``test_decode``): one step of B = 4 sequences, each one new query (Lq = 1, Hq = 8 query heads on
  Hkv = 2 kv heads, D = 64, float32) over a cache of n keys, n = 512 and 2048 (quick) or 512 to 8192 (full),
  contiguous and paged (pages of 16, shuffled block table). Decoding reads the whole cache once per step and
  does 4 flops per cached (key, head) pair: it is bound by memory bandwidth, not arithmetic. ``extra_info``:
  ``tokens_per_s`` (B / median seconds), ``bytes`` (the K and V entries read, 2 B n Hkv D x 4 bytes),
  ``bandwidth_gbs`` (bytes / median seconds), and ``copy_bandwidth_gbs`` / ``copy_fraction``: a same-run copy of
  a tensor of the same size (read + write, counted as bytes read, as the attention's cache traffic is) is the
  machine's practical bandwidth, and the fraction says how close the decode step gets to it.
* **packed prefill** (``test_packed_prefill``): a skewed batch, one long sequence and seven short ones (quick:
  256 + 7 x 16 tokens; full: 1024 + 7 x 32), through a varlen target (each sequence alone) vs one padded dense
  SDPA call over (8, L_max) with a key-padding mask (the work a packed kernel saves). ``extra_info``:
  ``tokens_per_s`` (real tokens / median seconds), ``tokens``, ``padded_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.bench.timing import timed_rounds
from attncheck.properties.packed import DecodeProblem, VarlenProblem
from attncheck.targets import resolve

DECODE_TARGETS = ("reference-decode", "decode:torch-sdpa", "reference-decode-paged", "decode-paged:torch-sdpa")
DECODE_LENGTHS = {"quick": (512, 2048), "full": (512, 1024, 2048, 4096, 8192)}
PREFILL = {"quick": (256, 16), "full": (1024, 32)}  # (long sequence, short sequences), 1 long + 7 short
ROUNDS = 10
ROUND_TIME = 0.02  # seconds: the calibration between rounds lasts about half of this (attncheck/bench/timing.py)


def _time(call: Callable[[], Any], repeats: int = 5) -> float:
    """Median seconds of ``call`` after a warm-up."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of a same-run tensor copy of ``nbytes`` (bytes read per second)."""
    src = torch.ones(max(nbytes // 4, 1), dtype=torch.float32)
    dst = torch.empty_like(src)
    return nbytes / _time(lambda: dst.copy_(src)) / 1e9


def bench_size(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--bench-size"))


@pytest.mark.parametrize("target_name", DECODE_TARGETS)
@pytest.mark.parametrize("length", DECODE_LENGTHS["full"])
def test_decode(benchmark: Any, request: pytest.FixtureRequest, target_name: str, length: int) -> None:
    if length not in DECODE_LENGTHS[bench_size(request)]:
        pytest.skip(f"cache length {length} is in the full grid only")
    target = resolve(target_name)
    paged = target.caps.paged
    p = DecodeProblem(
        seqlens=(length,) * 4, Lq=1, capacity=length, Hq=8, Hkv=2, E=64, Ev=64, page_size=16 if paged else 0, seed=0
    )
    q, k_cache, v_cache, lengths = p.tensors()
    kwargs = p.features()
    kwargs.pop("is_causal")

    def step() -> Tensor:
        return target.fn(q, k_cache, v_cache, cache_seqlens=lengths, **kwargs)

    if benchmark.disabled:
        benchmark.pedantic(step)
        return
    nbytes = 2 * 4 * length * p.Hkv * p.E * k_cache.element_size()  # K and V of every sequence, read once
    benchmark.group = f"decode-cpu-float32-n{length}"
    timed_rounds(benchmark, step, rounds=ROUNDS, iterations=1, device="cpu", round_time=ROUND_TIME)
    seconds = benchmark.stats.stats.median
    copy = copy_bandwidth(nbytes)
    benchmark.extra_info.update(
        target=target_name,
        paged=paged,
        n=length,
        B=4,
        Hq=p.Hq,
        Hkv=p.Hkv,
        D=p.E,
        tokens_per_s=4 / seconds,
        bytes=nbytes,
        bandwidth_gbs=nbytes / seconds / 1e9,
        copy_bandwidth_gbs=copy,
        copy_fraction=nbytes / seconds / 1e9 / copy,
    )


@pytest.mark.parametrize("way", ("reference-varlen", "varlen:torch-sdpa", "padded-dense"))
def test_packed_prefill(benchmark: Any, request: pytest.FixtureRequest, way: str) -> None:
    long, short = PREFILL[bench_size(request)]
    lengths = (long,) + (short,) * 7
    p = VarlenProblem(seqlens_q=lengths, seqlens_k=lengths, Hq=8, Hkv=8, E=64, Ev=64, is_causal=True, seed=0)
    q, k, v, cu_q, cu_k, max_q, max_k = p.tensors()
    if way == "padded-dense":  # one SDPA call over the padded batch: causal, with a key-padding mask
        B = len(lengths)
        pad = torch.zeros(B, long, p.Hq, p.E)  # (B, L_max, H, E)
        qp, kp, vp = pad.clone(), pad.clone(), pad.clone()
        keep = torch.zeros(B, 1, 1, long, dtype=torch.bool)  # (B, 1, 1, S_max)
        for b, n in enumerate(lengths):
            rows = slice(int(cu_q[b]), int(cu_q[b + 1]))
            qp[b, :n], kp[b, :n], vp[b, :n] = q[rows], k[rows], v[rows]
            keep[b, ..., :n] = True
        causal = torch.ones(long, long, dtype=torch.bool).tril()  # (L_max, L_max), top-left = bottom-right here
        mask = keep & causal  # (B, 1, L_max, S_max)
        qp, kp, vp = (t.transpose(1, 2) for t in (qp, kp, vp))  # (B, L, H, E) -> (B, H, L, E)

        def call() -> Any:
            return torch.nn.functional.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)

    else:
        target = resolve(way)

        def call() -> Any:
            return target.fn(
                q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, is_causal=True
            )

    if benchmark.disabled:
        benchmark.pedantic(call)
        return
    benchmark.group = f"packed-prefill-cpu-float32-{long}+7x{short}"
    timed_rounds(benchmark, call, rounds=ROUNDS, iterations=1, device="cpu", round_time=ROUND_TIME)
    seconds = benchmark.stats.stats.median
    tokens = sum(lengths)
    benchmark.extra_info.update(
        way=way, tokens=tokens, padded_tokens=long * len(lengths), tokens_per_s=tokens / seconds
    )
