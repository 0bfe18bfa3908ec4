"""The varlen and decode entries: the reference, the dense fallbacks, and real bug classes as mutants.

Each mutant carries one bug from the trackers of packed and KV-cache kernels (KERNELS.md, docs/bugs.md) and names
the property that must catch it; the correct variants (the reference's loop over sequences, one big masked dense
call, a paged gather then a dense call) pass every check of both entries. The ``# BUG`` line is the one that
differs from the reference (reference/packed.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.adapters.entries import (
    _REFERENCE,
    reference_decode_paged_target,
    reference_decode_target,
    reference_varlen_target,
)
from attncheck.properties.contract import Capabilities, Target
from attncheck.properties.packed import DecodeProblem, VarlenProblem, expected
from attncheck.reference.packed import decode_attention, paged_to_contiguous, varlen_attention
from attncheck.targets import resolve
from tests.test_meta import CATCH_SETTINGS, run_property

VARLEN, DECODE, PAGED = (
    _REFERENCE.replace(entry="varlen"),
    _REFERENCE.replace(entry="decode"),
    _REFERENCE.replace(entry="decode", paged=True),
)
MUTANTS: dict[str, tuple[str, Capabilities, Callable[..., Any]]] = {}


def mutant(entry: str, caps: Capabilities) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        MUTANTS[fn.__name__] = (entry, caps, fn)
        return fn

    return register


def _cu(lengths: list[int]) -> Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


# -- varlen (called with the contract's keywords: cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) ---------


def _varlen_args(kw: dict[str, Any]) -> tuple[Tensor, Tensor, int, int]:
    return kw.pop("cu_seqlens_q"), kw.pop("cu_seqlens_k"), kw.pop("max_seqlen_q"), kw.pop("max_seqlen_k")


def _one(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    """The reference on one sequence given as its own packed batch: q (L, Hq, E), k (S, Hkv, E) -> (L, Hq, Ev)."""
    return varlen_attention(q, k, v, _cu([q.size(0)]), _cu([k.size(0)]), q.size(0), k.size(0), **kw)  # type: ignore[return-value]


def _each_sequence(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, keys: Callable[[int], slice], **kw: Any) -> Tensor:
    """Every sequence's query rows attended alone over the key rows ``keys(b)`` (where each mutant's bug lives);
    ``kw``: the contract's keywords but the varlen ones. Padding rows stay zero."""
    out = torch.zeros(*q.shape[:-1], v.size(-1), dtype=q.dtype)  # (Tq + pad, Hq, Ev)
    for b in range(len(cu_q) - 1):
        rows = slice(int(cu_q[b]), int(cu_q[b + 1]))
        out[rows] = _one(q[rows], k[keys(b)], v[keys(b)], **kw)
    return out


@mutant("varlen", VARLEN)
def padded_length(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    """Split-KV sized by the padded length (max_seqlen_k) instead of each sequence's: a short sequence also reads
    the keys after it (the next sequence's, or the NaN padding)."""
    cu_q, cu_k, _, max_k = _varlen_args(kw)
    # BUG: every sequence gets max_seqlen_k keys
    return _each_sequence(q, k, v, cu_q, lambda b: slice(int(cu_k[b]), min(int(cu_k[b]) + max_k, k.size(0))), **kw)


@mutant("varlen", VARLEN)
def border_leak(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    """A document mask off by one at the borders: each sequence also sees the key just before its own."""
    cu_q, cu_k, _, _ = _varlen_args(kw)
    # BUG: starts one key early
    return _each_sequence(q, k, v, cu_q, lambda b: slice(max(int(cu_k[b]) - 1, 0), int(cu_k[b + 1])), **kw)


@mutant("varlen", VARLEN)
def top_left_in_segment(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    """Causal aligned top-left within each sequence where the kernel declares bottom-right (FlashAttention < 2.1
    semantics behind a >= 2.1 declaration)."""
    return varlen_attention(q, k, v, **kw, alignment="top-left")  # type: ignore[return-value]  # BUG: top-left


@mutant("varlen", VARLEN)
def empty_segment_shifts(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    """An empty query segment still advances the output offset by one row: every later sequence's rows land one
    row late (a zero-length segment shifting the others)."""
    cu_q = kw["cu_seqlens_q"]
    out: Tensor = varlen_attention(q, k, v, **kw)  # type: ignore[assignment]
    shifted = torch.zeros_like(out)  # (Tq + pad, Hq, Ev)
    offset = 0
    for b in range(len(cu_q) - 1):
        start, n = int(cu_q[b]), int(cu_q[b + 1] - cu_q[b])
        count = max(0, min(n, out.size(0) - offset))
        shifted[offset : offset + count] = out[start : start + count]
        offset += max(n, 1)  # BUG: an empty segment takes a row
    return shifted


@mutant("varlen", VARLEN)
def split_drops_last(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    """A split-KV merge that drops the last split: keys past the first 16 of a sequence never count."""
    cu_q, cu_k, _, _ = _varlen_args(kw)
    # BUG: the second split is lost
    return _each_sequence(q, k, v, cu_q, lambda b: slice(int(cu_k[b]), min(int(cu_k[b + 1]), int(cu_k[b]) + 16)), **kw)


# -- decode (called with cache_seqlens, block_table as keywords) -----------------------------------------------


def _gathered(k_cache: Tensor, v_cache: Tensor, blocks: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """One sequence's keys and values at (blocks, slots) of a paged cache, as a contiguous batch of one."""
    return k_cache[blocks, slots].unsqueeze(0), v_cache[blocks, slots].unsqueeze(0)  # (1, n, Hkv, D)


@mutant("decode", DECODE)
def reads_whole_capacity(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Tensor:
    """Attends to the whole allocated cache instead of its first cache_seqlens entries (the rest is garbage)."""
    kw["cache_seqlens"] = torch.full_like(kw["cache_seqlens"], k_cache.size(1))  # BUG: capacity, not cache_seqlens
    return decode_attention(q, k_cache, v_cache, **kw)  # type: ignore[return-value]


@mutant("decode", DECODE)
def causal_offset_from_capacity(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Tensor:
    """The causal offset of the new queries taken from the capacity rather than the sequence length: query i sees
    the keys before position capacity - Lq + i + 1 (capped at the length), i.e. its own future when the cache has
    room to spare."""
    lengths = kw.pop("cache_seqlens")
    if not kw.pop("is_causal", False):
        return decode_attention(q, k_cache, v_cache, lengths, **kw)  # type: ignore[return-value]
    Lq, cap = q.size(1), k_cache.size(1)
    rows = []
    for b, n in enumerate(lengths.tolist()):
        for i in range(Lq):
            seen = torch.tensor([min(n, cap - Lq + i + 1)], dtype=lengths.dtype)  # BUG: cap, not n
            rows.append(decode_attention(q[b : b + 1, i : i + 1], k_cache[b : b + 1], v_cache[b : b + 1], seen, **kw))
    return torch.cat(rows).view(len(lengths), Lq, *q.shape[2:-1], v_cache.size(-1))  # (B, Lq, Hq, Ev)


@mutant("decode", PAGED)
def identity_block_table(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Tensor:
    """The block table read as the identity (sequence b's j-th page is block b * n + j)."""
    table = kw["block_table"]
    kw["block_table"] = torch.arange(table.numel(), dtype=table.dtype).view_as(table)  # BUG: the table is ignored
    return decode_attention(q, k_cache, v_cache, **kw)  # type: ignore[return-value]


@mutant("decode", PAGED)
def page_index_off_by_one(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Tensor:
    """Slot t of a page computed as (t + 1) % block_size: each key is read from its neighbour's slot."""
    table, lengths = kw.pop("block_table"), kw.pop("cache_seqlens")
    size, outs = k_cache.size(1), []
    for b, n in enumerate(lengths.tolist()):
        t = torch.arange(n)
        k, v = _gathered(k_cache, v_cache, table[b, t // size].long(), (t + 1) % size)  # BUG: off-by-one slot
        outs.append(decode_attention(q[b : b + 1], k, v, torch.tensor([n], dtype=lengths.dtype), **kw))
    return torch.cat(outs)  # (B, Lq, Hq, Ev)


@mutant("decode", PAGED)
def page_size_hard_coded(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Tensor:
    """A kernel tuned for pages of 16 entries: the page of key t is t // 16 whatever the cache's page size."""
    table, lengths = kw.pop("block_table"), kw.pop("cache_seqlens")
    outs = []
    for b, n in enumerate(lengths.tolist()):
        t = torch.arange(n)
        page = (t // 16).clamp(max=table.size(1) - 1)  # BUG: 16, not k_cache.size(1)
        k, v = _gathered(k_cache, v_cache, table[b, page].long(), t % k_cache.size(1))
        outs.append(decode_attention(q[b : b + 1], k, v, torch.tensor([n], dtype=lengths.dtype), **kw))
    return torch.cat(outs)  # (B, Lq, Hq, Ev)


@mutant("decode", DECODE)
def split_kv_drops_a_split(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Tensor:
    """Split-KV decoding over splits of 16 keys whose merge drops the last split of a long sequence."""
    kw["cache_seqlens"] = kw["cache_seqlens"].clamp(max=16)  # BUG: keys past 16 are never merged
    return decode_attention(q, k_cache, v_cache, **kw)  # type: ignore[return-value]


@mutant("varlen", VARLEN)
def varlen_lse_one_row_off(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Any:
    """The lse written one packed row off (an offset bug between the (Hq, Tq) lse and the rows) while the output
    is right: a split-KV or ring merge then rescales each row with another row's lse."""
    result = varlen_attention(q, k, v, **kw)
    if not kw.get("return_lse"):
        return result
    out, lse = result  # type: ignore[misc]
    return out, lse.roll(1, dims=-1)  # BUG: row t's lse at row t + 1


@mutant("decode", DECODE)
def decode_lse_in_base_2(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kw: Any) -> Any:
    """A decode kernel that keeps log2-scaled logits and returns log2(sum) + m (FlashInfer's internal form) while
    declaring a natural-log lse: the output is right, the lse is off by a factor 1 / ln 2."""
    result = decode_attention(q, k_cache, v_cache, **kw)
    if not kw.get("return_lse"):
        return result
    out, lse = result  # type: ignore[misc]
    return out, lse / torch.log(torch.tensor(2.0))  # BUG: log2, declared natural


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(name: str) -> None:
    entry, caps, fn = MUTANTS[name]
    failures, passes, skips = run_property(Target(name, fn, caps), entry, CATCH_SETTINGS)
    wrong = [f for f in failures if " raised " not in f]  # a wrong answer, not the mutant crashing
    assert wrong, f"mutant {name} not caught by {entry} (failed {failures}, passed {passes}, skipped {skips})"


CORRECT = {
    "reference-varlen": reference_varlen_target,
    "reference-decode": reference_decode_target,
    "reference-decode-paged": reference_decode_paged_target,
    "varlen:torch-sdpa": lambda: resolve("varlen:torch-sdpa"),
    "varlen:tests.variants:online_softmax": lambda: resolve("varlen:tests.variants:online_softmax"),
    "decode:torch-sdpa": lambda: resolve("decode:torch-sdpa"),
    "decode-paged:tests.variants:einsum_grouped": lambda: resolve("decode-paged:tests.variants:einsum_grouped"),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_entry_targets_pass(name: str) -> None:
    target = CORRECT[name]()
    entry = target.caps.entry
    failures, passes, _ = run_property(target, entry)
    assert not failures and passes, f"{name}: {failures}"


def test_the_oracle_reads_the_paged_cache_as_the_contiguous_one() -> None:
    """A paged problem's cache gathered through its block table is the contiguous problem's cache, and both give
    the same oracle output; every entry not gathered is NaN."""
    p = DecodeProblem(seqlens=(3, 0, 5), Lq=2, capacity=6, page_size=4, spare_blocks=2, Hq=2, Hkv=1, table_seed=5)
    _, k_paged, _, lengths = p.tensors()
    contiguous = p.replace(page_size=0, spare_blocks=0, table_seed=0)
    _, k_flat, _, _ = contiguous.tensors()
    table = p.block_table()
    assert table is not None
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(paged_to_contiguous(k_paged, table, n, b), k_flat[b, :n])
    used = torch.zeros(k_paged.size(0), dtype=torch.bool)
    used[table.flatten().long()] = True
    assert k_paged[~used].isnan().all()
    target = reference_decode_paged_target()
    assert torch.equal(expected(target, p)[0], expected(reference_decode_target(), contiguous)[0])


def test_packed_padding_is_nan_and_cu_seqlens_are_prefix_sums() -> None:
    p = VarlenProblem(seqlens_q=(2, 0, 3), seqlens_k=(1, 4, 0), pad=2)
    q, k, _, cu_q, cu_k, max_q, max_k = p.tensors()
    assert cu_q.tolist() == [0, 2, 2, 5] and cu_k.tolist() == [0, 1, 5, 5] and (max_q, max_k) == (3, 4)
    assert cu_q.dtype == torch.int32 and q[5:].isnan().all() and k[5:].isnan().all() and not q[:5].isnan().any()
