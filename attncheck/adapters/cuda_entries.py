"""CUDA-only targets for the varlen and decode entries (docs/design.md, "Beyond SDPA") of shipped kernels.

* ``flash-attn-varlen``: FlashAttention 2 ``flash_attn_varlen_func`` (packed THD tensors, int32 ``cu_seqlens``).
* ``flash-attn-kvcache``, ``flash-attn-kvcache-paged``: FlashAttention 2 ``flash_attn_with_kvcache`` over a
  contiguous cache, or a paged one with ``block_table`` (pages re-laid to 256 entries where needed, see there).
* ``flashinfer-varlen``: FlashInfer ``BatchPrefillWithRaggedKVCacheWrapper`` (``qo_indptr``, ``kv_indptr``).
* ``flashinfer-decode-paged``: FlashInfer ``BatchDecodeWithPagedKVCacheWrapper`` (``kv_indptr``, ``kv_indices``,
  ``kv_last_page_len`` built from the block table and ``cache_seqlens``).
* ``xformers-varlen``, ``xformers-decode``: ``memory_efficient_attention`` with ``BlockDiagonalMask`` and
  ``BlockDiagonal[CausalWithOffset]PaddedKeysMask``.
* ``torch-varlen-attn``: ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's copy of FlashAttention 2).

Written against the libraries' documented APIs (each adapter names the version and source it was checked
against); without the library or CUDA each factory raises TargetUnavailable with a one-line reason. The adapters
translate conventions only (layouts, argument names, index arrays, lse layout and base, causal as a window) and
never correct what a library computes: a departure is declared in the capabilities (with the reason) or left to
the properties. The translations are tested on the CPU against stand-ins with the documented signatures and
semantics (tests/test_entry_adapters.py).

Every varlen adapter answers a call with no sequence at all (``cu_seqlens = [0]``, which the strategies draw)
without calling its library: every row is then padding, whose output is not part of the contract, and
FlashAttention refuses the call ("batch size must be positive", flash_api.cpp), FlashInfer's plan() takes the
max of an empty tensor and xformers' block-diagonal seqinfo gets lengths -1. Every other call reaches the library.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from attncheck.adapters import HALF_AND_SINGLE, require_cuda
from attncheck.adapters.cuda import (
    FLASHINFER,
    HALF,
    _flash_attn_caps,
    _flash_attn_kwargs,
    _import_flash_attn,
    _import_flashinfer,
    _import_xformers,
    _version,
)
from attncheck.adapters.packing import no_sequences, scatter_rows
from attncheck.errors import TargetUnavailable
from attncheck.properties.contract import Capabilities, Target
from attncheck.reference.packed import paged_to_contiguous

# ---------------------------------------------------------------------------------------------------------------
# FlashAttention 2: flash_attn_varlen_func, flash_attn_with_kvcache. Checked against flash-attn 2.8.4
# (Dao-AILab/flash-attention 0251105a, 2026-08-15: the docstrings of flash_attn/flash_attn_interface.py and the
# checks of csrc/flash_attn/flash_api.cpp). Conventions, as for flash-attn (cuda.py): causal and window aligned
# bottom-right within each sequence since 2.1, window (left, right) counted as the contract counts (2.3), softcap
# 2.6 (0 = off); softmax_lse is the natural-log logsumexp, +inf on rows with no key (flash_fwd_kernel.h writes
# INFINITY there; softmax.h the same), laid out (Hq, total_q) for varlen and (B, Hq, Lq) for the KV cache: the
# contract's layouts. Rows with no key are zero ("If the row of the mask is all zero, the output will be zero").
# fp16/bf16 only; v has the head dim of q and k.


def flash_attn_varlen_target() -> Target:
    flash_attn = _import_flash_attn("flash-attn-varlen")
    version = _version(flash_attn.__version__)

    def varlen(
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
        return_lse: bool = False,
    ) -> Any:
        if len(cu_seqlens_q) == 1:
            return no_sequences(query, value, return_lse)
        result = flash_attn.flash_attn_varlen_func(
            query,  # (Tq + pad, Hq, E): total_q may exceed cu_seqlens_q[-1]; rows past it are not read
            key,  # (Tk + pad, Hkv, E)
            value,  # (Tk + pad, Hkv, E)
            cu_seqlens_q,  # (B + 1,) int32, as documented
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            softmax_scale=scale,
            causal=is_causal,
            return_attn_probs=return_lse,
            **_flash_attn_kwargs(window, softcap),
        )
        if return_lse:
            out, softmax_lse, _ = result  # (out, softmax_lse (Hq, Tq + pad) float32, S_dmask)
            return out, softmax_lse
        return result  # (Tq + pad, Hq, E)

    caps = _flash_attn_caps(version, entry="varlen")
    description = f"flash-attn {flash_attn.__version__} flash_attn_varlen_func on {torch.cuda.get_device_name()}"
    return Target("flash-attn-varlen", varlen, caps, description, device="cuda")


FA2_PAGE = 256  # flash_attn_with_kvcache: "page_block_size must be a multiple of 256" (FA2; FA3 takes any size)


def _repaged(k_cache: Tensor, v_cache: Tensor, block_table: Tensor, page: int) -> tuple[Tensor, Tensor, Tensor]:
    """The same paged caches re-laid in pages of ``page`` entries (a copy), with their block table.

    Sequence b's entries t < max_blocks * old page size, as the caller's table maps them (NaN past cache_seqlens
    included), fill new pages in order. The new pages' ids keep the order of the caller's blocks (the rank of the
    old block that holds each new page's first entry), so another caller permutation gives another table; page
    0 is left unused and NaN, so a kernel that ignores the table reads poison."""
    old = k_cache.size(1)
    B, n = block_table.shape
    capacity = n * old
    m = -(-capacity // page)  # new pages per sequence: ceil(capacity / page)
    first = block_table[:, torch.arange(m, device=block_table.device) * page // old]  # (B, m) old block ids
    ids = first.flatten().argsort(stable=True).argsort().view(B, m) + 1  # (B * m,) ranks -> (B, m), from 1

    def relaid(cache: Tensor) -> Tensor:
        pages = cache.new_full((B * m + 1, page, *cache.shape[2:]), float("nan"))  # (B * m + 1, page, H, D)
        for b in range(B):
            logical = cache.new_full((m * page, *cache.shape[2:]), float("nan"))  # (m * page, H, D)
            logical[:capacity] = paged_to_contiguous(cache, block_table, capacity, b)  # (capacity, H, D)
            pages[ids[b]] = logical.view(m, page, *cache.shape[2:])  # (m * page, H, D) -> (m, page, H, D)
        return pages

    return relaid(k_cache), relaid(v_cache), ids.to(torch.int32)


def _flash_attn_kvcache(name: str, paged: bool) -> Target:
    flash_attn = _import_flash_attn(name)
    version = _version(flash_attn.__version__)
    if paged and version < (2, 5):
        raise TargetUnavailable(f"flash-attn {flash_attn.__version__} has no block_table (paged KV arrived in 2.5)")

    def decode(
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
        return_lse: bool = False,
    ) -> Any:
        if block_table is not None and k_cache.size(1) % FA2_PAGE:
            k_cache, v_cache, block_table = _repaged(k_cache, v_cache, block_table, FA2_PAGE)
        return flash_attn.flash_attn_with_kvcache(
            query,  # (B, Lq, Hq, E)
            k_cache,  # (B, S_cap, Hkv, E), or (num_blocks, page_block_size, Hkv, E) with a block_table
            v_cache,
            cache_seqlens=cache_seqlens,  # (B,) int32
            block_table=block_table,  # (B, max_blocks) int32, or None
            softmax_scale=scale,
            causal=is_causal,
            return_softmax_lse=return_lse,
            **_flash_attn_kwargs(window, softcap),
        )  # out (B, Lq, Hq, E) [, softmax_lse (B, Hq, Lq) float32]

    # Paged: FA2 refuses pages that are not a multiple of 256 entries (the docstring, and flash_api.cpp "Paged KV
    # cache block size must be divisible by 256"); the contract's strategies draw pages of 1, 3 and 16. Such a cache
    # is re-laid by _repaged into 256-entry pages before the call: the library then reads a permuted table with
    # poisoned unused entries, at one page size, so a page-size bug of its own below 256 cannot show here (the
    # page-size invariance check compares two re-laid caches). Pages that are multiples of 256 are passed as given.
    # The KV cache has no backward ("Does not support backward pass"); return_softmax_lse arrived with softcap (2.6).
    caps = _flash_attn_caps(version, entry="decode", paged=paged, grad=False)
    description = f"flash-attn {flash_attn.__version__} flash_attn_with_kvcache on {torch.cuda.get_device_name()}"
    return Target(name, decode, caps, description, device="cuda")


def flash_attn_kvcache_target() -> Target:
    return _flash_attn_kvcache("flash-attn-kvcache", paged=False)


def flash_attn_kvcache_paged_target() -> Target:
    return _flash_attn_kvcache("flash-attn-kvcache-paged", paged=True)


# ---------------------------------------------------------------------------------------------------------------
# FlashInfer batch wrappers: plan() with the index arrays and the plan-time options, then run(). Checked against
# flashinfer 0.6.18 (flashinfer-ai/flashinfer fb28d724, 2026-08-22: the docstrings and code of
# BatchPrefillWithRaggedKVCacheWrapper in flashinfer/prefill.py and BatchDecodeWithPagedKVCacheWrapper in
# flashinfer/decode.py). NHD layout. lse is base 2 (state.cuh: get_lse() = m + log2(d), with m the log2-scaled max),
# laid out (rows, Hq); -inf on rows with no key (state_t starts at m = -inf, d = 1; math.cuh's inf is IEEE).
# Causal is bottom-right (the docstring's mask example: tril with diagonal kv_len - qo_len). Their sliding window
# has a left bound only (window_left; the decode wrapper's window_right is cute-dsl only), which the (left, right)
# contract cannot declare: not used. sm_scale defaults to 1/sqrt(head_dim); logits_soft_cap None = 0 = off.
# Inference only, fp16/bf16, one head dim.

WORKSPACE_BYTES = 128 * 1024 * 1024  # the float workspace FlashInfer recommends (128 MB)


def _wrapper_on(wrappers: dict[torch.device, Any], device: torch.device, make: Any) -> Any:
    """The wrapper of ``device`` (made once with its workspace, re-planned for every call)."""
    if device not in wrappers:
        workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)  # decode: 0 at first use
        wrappers[device] = make(workspace, "NHD")
    return wrappers[device]


def flashinfer_varlen_target() -> Target:
    flashinfer = _import_flashinfer("flashinfer-varlen")
    wrappers: dict[torch.device, Any] = {}

    def varlen(
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
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> Any:
        if len(cu_seqlens_q) == 1:
            return no_sequences(query, value, return_lse)
        Tq, Tk = int(cu_seqlens_q[-1]), int(cu_seqlens_k[-1])
        wrapper = _wrapper_on(wrappers, query.device, flashinfer.BatchPrefillWithRaggedKVCacheWrapper)
        wrapper.plan(
            cu_seqlens_q,  # qo_indptr (B + 1,) int32
            cu_seqlens_k,  # kv_indptr
            query.size(1),  # num_qo_heads
            key.size(1),  # num_kv_heads
            query.size(-1),  # head_dim_qk (head_dim_vo = head_dim_qk)
            causal=is_causal,
            logits_soft_cap=softcap,
            sm_scale=scale,
            q_data_type=query.dtype,  # its default is float16
            kv_data_type=key.dtype,
        )
        # run() takes exactly qo_indptr[-1] query rows ("q.shape[0] does not match qo_indptr[-1]"), and k, v of
        # kv_indptr[-1] rows: the padding rows are cut off here (never read either way)
        result = wrapper.run(query[:Tq], key[:Tk], value[:Tk], return_lse=return_lse)  # (Tq, Hq, Ev) [, (Tq, Hq)]
        if return_lse:
            out, lse = result
            return scatter_rows(query, value, out, lse.transpose(0, 1))  # lse (Tq, Hq) -> (Hq, Tq), base 2
        return scatter_rows(query, value, result, None)

    caps = FLASHINFER.replace(entry="varlen", causal="bottom-right")
    description = (
        f"flashinfer {flashinfer.__version__} BatchPrefillWithRaggedKVCacheWrapper on {torch.cuda.get_device_name()}"
    )
    return Target("flashinfer-varlen", varlen, caps, description, device="cuda")


def flashinfer_decode_paged_target() -> Target:
    flashinfer = _import_flashinfer("flashinfer-decode-paged")
    wrappers: dict[torch.device, Any] = {}

    def decode(
        query: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        cache_seqlens: Tensor,
        *,
        block_table: Tensor,
        scale: float | None = None,
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> Any:
        B, Lq, Hq, E = query.shape
        page = k_cache.size(1)  # NHD pages: (num_blocks, page_size, Hkv, E)
        # One request per query row (the decode kernel reads one query per request): row t of sequence b is request
        # b * Lq + t and reads sequence b's pages, the first ceil(n_b / page_size) entries of its block-table row
        lengths = [n for n in cache_seqlens.tolist() for _ in range(Lq)]  # cache length of every request
        tables = [row for row in block_table for _ in range(Lq)]  # (max_blocks,) table row of every request
        counts = [-(-n // page) for n in lengths]  # pages per request
        indptr = [0, *torch.tensor(counts).cumsum(0).tolist()]  # (B * Lq + 1,)
        indices = torch.cat([table[:count] for table, count in zip(tables, counts, strict=True)])  # (indptr[-1],)
        # entries in each request's last page: 1..page_size ("1 <= kv_last_page_len <= page_size"); 0 for an
        # empty request, which then has length (pages - 1) * page_size + 0 = 0 (page.get_seq_lens clamps pages - 1)
        last = [n - (count - 1) * page if count else 0 for n, count in zip(lengths, counts, strict=True)]
        wrapper = _wrapper_on(wrappers, query.device, flashinfer.BatchDecodeWithPagedKVCacheWrapper)
        wrapper.plan(
            torch.tensor(indptr, dtype=torch.int32, device=query.device),  # indptr
            indices,  # indices, int32 as the block table
            torch.tensor(last, dtype=torch.int32, device=query.device),  # last_page_len
            Hq,  # num_qo_heads
            k_cache.size(2),  # num_kv_heads
            E,  # head_dim
            page,  # page_size
            logits_soft_cap=softcap,
            sm_scale=scale,
            q_data_type=query.dtype,  # its default is float16
            kv_data_type=k_cache.dtype,
        )
        q = query.reshape(B * Lq, Hq, E)  # (B, Lq, Hq, E) -> (B * Lq, Hq, E): request b * Lq + t
        result = wrapper.run(q, (k_cache, v_cache), return_lse=return_lse)  # (B * Lq, Hq, Ev) [, (B * Lq, Hq)]
        out, lse = result if return_lse else (result, None)
        out = out.view(B, Lq, Hq, -1)  # (B * Lq, Hq, Ev) -> (B, Lq, Hq, Ev)
        if lse is None:
            return out
        return out, lse.view(B, Lq, Hq).transpose(1, 2)  # (B * Lq, Hq) -> (B, Lq, Hq) -> (B, Hq, Lq), base 2

    # causal=None: the decode kernel has no causal flag (its query sits after the request's keys); several
    # queries per request (q_len_per_req > 1) are causal-only and need the tensor-core path, so each of the Lq
    # rows is its own request over the same pages, which is the contract's non-causal Lq-query call. run(sinks=)
    # is documented, but the default (CUDA-core) path does not forward it to the kernel in 0.6.18 (decode.py,
    # run(): its run_args have no sinks), so sinks are not declared here.
    caps = FLASHINFER.replace(entry="decode", paged=True, causal=None)
    description = (
        f"flashinfer {flashinfer.__version__} BatchDecodeWithPagedKVCacheWrapper on {torch.cuda.get_device_name()}"
    )
    return Target("flashinfer-decode-paged", decode, caps, description, device="cuda")


# ---------------------------------------------------------------------------------------------------------------
# xformers: memory_efficient_attention with block-diagonal biases. Checked against xformers 0.0.35
# (facebookresearch/xformers ca6d2aa0, 2026-04-21), whose fmha re-exports mslk.attention.fmha: the docstrings and
# code of attn_bias.py and fmha/__init__.py at meta-pytorch/MSLK 2a3c8978. Inputs are one packed batch (1, M, H, K)
# ("Expected batch_size=1 when using block-diagonal bias"). GQA in its 5-D BMGHK layout is "supported only for the
# forward pass", so the kv heads are repeated to Hq (repeat_interleave, the contract's grouping) and the call
# stays 4-D (BMHK), which has a backward. No lse (memory_efficient_attention returns the output alone). No window:
# the block-diagonal local biases are causal only, with one size that counts the query itself
# (make_local_attention_from_bottomright(window_size)), and the padded-keys one documents "at most window_left +
# window_right - 1 keys" where its materialize() builds a band of left + 1 + right: nothing to declare (left, right) by.


# What both xformers entries declare: no mask argument, causal bottom-right within each block, every dtype but
# float64 (which no xformers operator supports).
XFORMERS = Capabilities(masks=frozenset(), causal="bottom-right", dtypes=HALF_AND_SINGLE, devices=("cuda",))


def _kv_heads(t: Tensor, Hq: int) -> Tensor:
    """(..., Hkv, D) -> (..., Hq, D): kv head g serves query heads g * G .. g * G + G - 1 (repeat_interleave)."""
    return t.repeat_interleave(Hq // t.size(-2), dim=-2)


def xformers_varlen_target() -> Target:
    xformers = _import_xformers("xformers-varlen")
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    def varlen(
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
    ) -> Tensor:
        if len(cu_seqlens_q) == 1:
            return no_sequences(query, value, False)
        Tq, Tk, Hq = int(cu_seqlens_q[-1]), int(cu_seqlens_k[-1]), query.size(1)
        seqlens_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()  # (B,) lengths, as from_seqlens takes them
        seqlens_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
        bias = BlockDiagonalMask.from_seqlens(seqlens_q, seqlens_k, device=query.device)
        if is_causal:  # make_causal() would be top-left within each block
            bias = bias.make_causal_from_bottomright()
        q = query[:Tq].unsqueeze(0)  # (Tq, Hq, E) -> (1, Tq, Hq, E): the packed rows only, as the bias covers
        k, v = (_kv_heads(t[:Tk], Hq).unsqueeze(0) for t in (key, value))  # (Tk, Hkv, D) -> (1, Tk, Hq, D)
        out = xformers.ops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)  # (1, Tq, Hq, Ev)
        return scatter_rows(query, value, out[0], None)

    # BlockDiagonalCausalFromBottomRightMask raises unless every block has num_keys >= num_queries ("otherwise the
    # forward pass is not defined"): lengths="q<=k", which also keeps the non-causal draws to L <= S per sequence.
    caps = XFORMERS.replace(entry="varlen", lengths="q<=k")
    description = f"xformers {xformers.__version__} BlockDiagonalMask varlen on {torch.cuda.get_device_name()}"
    return Target("xformers-varlen", varlen, caps, description, device="cuda")


def xformers_decode_target() -> Target:
    xformers = _import_xformers("xformers-decode")
    from xformers.ops.fmha.attn_bias import BlockDiagonalCausalWithOffsetPaddedKeysMask, BlockDiagonalPaddedKeysMask

    def decode(
        query: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        cache_seqlens: Tensor,
        *,
        is_causal: bool = False,
        scale: float | None = None,
    ) -> Tensor:
        B, Lq, Hq, E = query.shape
        S_cap = k_cache.size(1)
        # the padded-keys biases: sequence b's keys are rows b * S_cap .. b * S_cap + cache_seqlens[b] of the keys
        # (kv_padding = S_cap); the CausalWithOffset one aligns each block's causal mask bottom-right
        mask = BlockDiagonalCausalWithOffsetPaddedKeysMask if is_causal else BlockDiagonalPaddedKeysMask
        bias = mask.from_seqlens([Lq] * B, S_cap, cache_seqlens.tolist(), device=query.device)
        q = query.reshape(1, B * Lq, Hq, E)  # (B, Lq, Hq, E) -> (1, B * Lq, Hq, E): Lq queries per sequence
        k, v = (
            _kv_heads(c.reshape(1, B * S_cap, *c.shape[2:]), Hq)  # (B, S_cap, Hkv, D) -> (1, B * S_cap, Hq, D)
            for c in (k_cache, v_cache)
        )
        out = xformers.ops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)  # (1, B * Lq, Hq, Ev)
        return out.view(B, Lq, Hq, -1)  # type: ignore[no-any-return]  # (1, B * Lq, Hq, Ev) -> (B, Lq, Hq, Ev)

    # A contiguous cache only (the Paged* biases are not used). Inference: no backward declared for the padded-keys
    # biases.
    caps = XFORMERS.replace(entry="decode", grad=False)
    description = f"xformers {xformers.__version__} padded-keys decode on {torch.cuda.get_device_name()}"
    return Target("xformers-decode", decode, caps, description, device="cuda")


# ---------------------------------------------------------------------------------------------------------------
# PyTorch: torch.nn.attention.varlen.varlen_attn. Checked against torch 2.13.0 (torch/nn/attention/varlen.py, its
# docstring and code), where it runs aten::_flash_attention_forward, CUDA only (on the CPU it raises
# NotImplementedError: "Could not run 'aten::_flash_attention_forward' with arguments from the 'CPU' backend").


def _pad_head_dim(t: Tensor) -> Tensor:
    """(..., D) -> (..., D'), D' = D rounded up to 8 with zeros, as FlashAttention's callers pad."""
    return torch.nn.functional.pad(t, (0, -t.size(-1) % 8))


def torch_varlen_target() -> Target:
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn
    except ImportError:
        raise TargetUnavailable(f"torch {torch.__version__} has no torch.nn.attention.varlen") from None
    if "window_size" not in inspect.signature(varlen_attn).parameters:
        raise TargetUnavailable(f"torch {torch.__version__} varlen_attn has no window_size (written for 2.13)")
    require_cuda("torch-varlen-attn")

    def varlen(
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
        return_lse: bool = False,
    ) -> Any:
        if len(cu_seqlens_q) == 1:
            return no_sequences(query, value, return_lse)
        E, Hq = query.size(-1), query.size(1)
        # The kernel takes head dims that are multiples of 8 (flash_api.cpp: "head_size must be a multiple of 8,
        # this is ensured by padding!"); varlen_attn does not pad, so the adapter pads with zeros as SDPA and
        # flash_attn's Python layer do: q . k is unchanged, the scale stays the unpadded head dim's, and the zero
        # value columns are cut off the output.
        q, k, v = (_pad_head_dim(t) for t in (query, key, value))  # (T, H, E) -> (T, H, E'), E' = E rounded to 8
        left, right = window or (-1, -1)
        if is_causal:  # no causal flag: "(-1, 0) for causal attention, or (W, 0) for causal ... window of size W"
            right = 0
        result = varlen_attn(
            q,
            k,
            v,
            cu_seqlens_q,  # cu_seq_q (B + 1,) int32
            cu_seqlens_k,  # cu_seq_k
            max_seqlen_q,  # max_q
            max_seqlen_k,  # max_k
            return_aux=AuxRequest(lse=True) if return_lse else None,
            scale=E**-0.5 if scale is None else scale,
            window_size=(left, right),  # a tuple: varlen_attn compares window_size == (-1, 0)
            enable_gqa=key.size(1) != Hq,  # without it, Hkv != Hq raises
        )
        if isinstance(result, Tensor):  # without return_aux: the output alone
            return result[..., :E]  # (Tq + pad, Hq, E') -> (Tq + pad, Hq, E)
        # lse: the docstring says (T_q, H_q), the code returns the varlen layout of _flash_attention_forward, (Hq,
        # total_q), which _varlen_attn_fake states too; the code is taken (the contract's layout, as returned)
        out, lse = result
        return out[..., :E], lse  # (Tq + pad, Hq, E') -> (Tq + pad, Hq, E)

    # Bottom-right causal and (left, right) windows counted as FlashAttention counts. The kernel's lse on rows with no
    # key is not documented: not declared (observed). fp16/bf16 only; v has the head dim of q and k.
    caps = Capabilities(
        entry="varlen",
        masks=frozenset(),
        causal="bottom-right",
        value_dim=False,
        dtypes=HALF,
        devices=("cuda",),
        features=frozenset({"window", "lse"}),
        lse_empty="any",
    )
    description = f"torch {torch.__version__} torch.nn.attention.varlen.varlen_attn on {torch.cuda.get_device_name()}"
    return Target("torch-varlen-attn", varlen, caps, description, device="cuda")
