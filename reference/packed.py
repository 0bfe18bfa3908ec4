"""Attention over packed variable-length batches and over a KV cache (contiguous or paged), by the definition.

Two entries beyond the dense SDPA call (docs/design.md, "Beyond SDPA"), each reduced to equation (1) of
:mod:`attncheck.reference.attention` on one sequence at a time, so they read as their definitions:

* **varlen**: B sequences packed along one token axis. Sequence b owns query rows
  ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` and key rows ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` and sees nothing
  else (the "document mask" of packed training). Rows past ``cu_seqlens[-1]`` are padding and never read.
* **decode**: sequence b's keys are the first ``cache_seqlens[b]`` entries of its cache; its Lq queries are its
  last Lq positions, so ``is_causal`` is aligned bottom-right. A *paged* cache stores key t of sequence b in
  block ``block_table[b, t // block_size]`` at slot ``t % block_size`` (vLLM's PagedAttention, Kwon et al. 2023,
  section 4.2); blocks not in the table and slots past ``cache_seqlens`` are never read.

Each sequence goes through :func:`~attncheck.reference.attention.attention_with_lse` with the visibility mask of
:func:`~attncheck.reference.attention.merge_masks` (causal and window aligned within the sequence), the softcap
and the sink of that module, so the features of the dense entry mean the same thing here.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from attncheck.reference.attention import CausalAlignment, attention_with_lse, expand_kv_heads, merge_masks


def _one_sequence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool,
    alignment: CausalAlignment,
    scale: float | None,
    window: tuple[int, int] | None,
    softcap: float | None,
    sinks: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Equation (1) for one sequence in (length, heads, dim) layout: q (L, Hq, E), k (S, Hkv, E), v (S, Hkv, Ev)
    -> out (L, Hq, Ev), lse (Hq, L). Half precision is computed in float32, as the dense reference does."""
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = (t.transpose(0, 1).to(compute) for t in (q, k, v))  # (L, H, D) -> (H, L, D)
    k, v = expand_kv_heads(k, v, q.size(0))  # (Hkv, S, D) -> (Hq, S, D)
    L, S = q.size(-2), k.size(-2)
    mask = merge_masks(None, is_causal, L, S, alignment, q.device, window=window)  # (L, S) or None
    sink = None if sinks is None else sinks.to(compute)[:, None, None]  # (Hq,) -> (Hq, 1, 1), against (Hq, L, 1)
    out, _, lse = attention_with_lse(q, k, v, mask, scale, softcap=softcap, sink=sink)  # (Hq, L, Ev), (Hq, L)
    return out.transpose(0, 1), lse  # (Hq, L, Ev) -> (L, Hq, Ev)


def varlen_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    window: tuple[int, int] | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    return_lse: bool = False,
    alignment: CausalAlignment = "bottom-right",
) -> Tensor | tuple[Tensor, Tensor]:
    """Packed variable-length attention: query (Tq, Hq, E), key (Tk, Hkv, E), value (Tk, Hkv, Ev) ->
    out (Tq, Hq, Ev) [, lse (Hq, Tq) in float32].

    Every sequence is attended alone. Causal and window align ``alignment`` (bottom-right, as FlashAttention's
    varlen kernels) within each sequence. Padding rows past ``cu_seqlens_q[-1]`` get zeros (and lse -inf);
    ``max_seqlen_q/k`` are the longest lengths, given as the kernels take them, and only checked here.
    """
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    lengths_q = [b - a for a, b in itertools.pairwise(bounds_q)]
    lengths_k = [b - a for a, b in itertools.pairwise(bounds_k)]
    if max(lengths_q, default=0) > max_seqlen_q or max(lengths_k, default=0) > max_seqlen_k:
        raise ValueError("max_seqlen_q/k must be at least the longest sequence")
    out = torch.zeros(*query.shape[:-1], value.size(-1), dtype=query.dtype, device=query.device)  # (Tq, Hq, Ev)
    lse = torch.full((query.size(-2), query.size(0)), float("-inf"), device=query.device)  # (Hq, Tq)
    for b in range(len(lengths_q)):
        rows, keys = slice(bounds_q[b], bounds_q[b + 1]), slice(bounds_k[b], bounds_k[b + 1])
        o, s = _one_sequence(
            query[rows], key[keys], value[keys], is_causal, alignment, scale, window, softcap, sinks
        )  # (L_b, Hq, Ev), (Hq, L_b)
        out[rows] = o.to(out.dtype)
        lse[:, rows] = s.float()
    return (out, lse) if return_lse else out


def paged_to_contiguous(k_cache: Tensor, block_table: Tensor, length: int, b: int) -> Tensor:
    """The first ``length`` entries of sequence ``b`` gathered from a paged cache (num_blocks, block_size, H, D):
    entry t is ``k_cache[block_table[b, t // block_size], t % block_size]`` -> (length, H, D)."""
    block_size = k_cache.size(1)
    t = torch.arange(length, device=k_cache.device)  # (length,)
    blocks = block_table[b, t // block_size].long()  # (length,): the block each entry lives in
    return k_cache[blocks, t % block_size]  # (length, H, D)


def cached_sequence(
    k_cache: Tensor, v_cache: Tensor, block_table: Tensor | None, length: int, b: int
) -> tuple[Tensor, Tensor]:
    """Sequence b's first ``length`` keys and values: ``cache[b, :length]`` of a contiguous cache, or gathered by
    :func:`paged_to_contiguous` from a paged one -> (length, Hkv, E), (length, Hkv, Ev)."""
    if block_table is None:
        return k_cache[b, :length], v_cache[b, :length]
    return paged_to_contiguous(k_cache, block_table, length, b), paged_to_contiguous(v_cache, block_table, length, b)


def decode_attention(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    cache_seqlens: Tensor,
    *,
    block_table: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    window: tuple[int, int] | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of new queries over a KV cache: query (B, Lq, Hq, E); a contiguous cache (B, S_cap, Hkv, E|Ev)
    or, with ``block_table`` (B, max_blocks), a paged one (num_blocks, block_size, Hkv, E|Ev) -> out (B, Lq, Hq,
    Ev) [, lse (B, Hq, Lq) in float32]. Sequence b attends to its first ``cache_seqlens[b]`` cached keys; its Lq
    queries are its last Lq positions (causal and window aligned bottom-right)."""
    outs, lses = [], []
    for b, length in enumerate(cache_seqlens.tolist()):
        k, v = cached_sequence(k_cache, v_cache, block_table, length, b)  # (S_b, Hkv, E), (S_b, Hkv, Ev)
        o, s = _one_sequence(query[b], k, v, is_causal, "bottom-right", scale, window, softcap, sinks)
        outs.append(o.to(query.dtype))  # (Lq, Hq, Ev)
        lses.append(s.float())  # (Hq, Lq)
    out, lse = torch.stack(outs), torch.stack(lses)  # (B, Lq, Hq, Ev), (B, Hq, Lq)
    return (out, lse) if return_lse else out
