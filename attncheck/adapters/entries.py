"""Targets for the varlen and decode entries on any machine: the reference, and dense fallbacks.

* ``reference-varlen``, ``reference-decode``, ``reference-decode-paged``: :mod:`attncheck.reference.packed`, one
  sequence at a time (FlashAttention's conventions: causal and window aligned bottom-right within a sequence).
* ``flex-varlen``: FlexAttention over the packed tokens as one sequence with a document mask built from
  ``cu_seqlens`` (the packing recipe of the FlexAttention documentation: a ``document_id`` per token and a
  ``mask_mod`` that admits a (query, key) pair of the same document, here with causal and window aligned
  bottom-right within the document).
* ``varlen:SPEC`` and ``decode:SPEC`` wrap any dense target SPEC (a built-in name or ``module:attr``) the way many
  libraries implement these entries on CPU: scatter the sequences into a padded (B, H, L_max, D) batch, compile
  "its own keys only", causal and the window into one boolean (B, 1, L_max, S_max) mask, make one dense call, and
  gather the rows back. The dense target then answers for the packed setting: a dense kernel whose masks are
  right is a right varlen kernel this way, and one whose masks are wrong is caught by the varlen properties.
  Softcap and sinks are passed through when the dense target declares them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attncheck.adapters.packing import empty_outputs, pad_sequences, unpad_sequences
from attncheck.adapters.pytorch import flex_call, import_flex_attention, softcap_mod
from attncheck.errors import TargetSpecError
from attncheck.properties.contract import Capabilities, Target
from attncheck.reference.attention import merge_masks
from attncheck.reference.packed import cached_sequence, decode_attention, varlen_attention

# The reference's entries: every dtype, GQA, scale, gradients, all the features; bottom-right as FlashAttention.
_REFERENCE = Capabilities(
    causal="bottom-right",
    masks=frozenset(),
    features=frozenset({"window", "softcap", "sinks", "lse"}),
    masked_rows="zeros",
    masked_values="ignored",
)


def reference_varlen_target() -> Target:
    caps = _REFERENCE.replace(entry="varlen")
    return Target("reference-varlen", varlen_attention, caps, "attncheck's packed reference (reference/packed.py)")


def reference_decode_target() -> Target:
    caps = _REFERENCE.replace(entry="decode")
    return Target("reference-decode", decode_attention, caps, "attncheck's KV-cache reference, contiguous cache")


def reference_decode_paged_target() -> Target:
    caps = _REFERENCE.replace(entry="decode", paged=True)
    return Target("reference-decode-paged", decode_attention, caps, "attncheck's KV-cache reference, paged cache")


def _fallback_caps(dense: Target, entry: str, paged: bool = False) -> Capabilities:
    """What a dense target supports in the packed setting: its dtypes, GQA, scale, gradients and masked-rows
    convention; the window (compiled into the mask); softcap and sinks where it declares them."""
    caps = dense.caps
    if "bool" not in caps.masks or "full" not in caps.mask_shapes:
        raise TargetSpecError(
            f"{entry}:{dense.name}: the dense fallback needs a target that takes full boolean masks "
            f"(it declares masks={sorted(caps.masks)}, mask_shapes={list(caps.mask_shapes)})"
        )
    return Capabilities(
        entry=entry,  # type: ignore[arg-type]
        paged=paged,
        causal="bottom-right",
        masks=frozenset(),
        gqa=caps.gqa,
        scale=caps.scale,
        grad=caps.grad,
        value_dim=caps.value_dim,
        dtypes=caps.dtypes,
        devices=caps.devices,
        masked_rows=caps.masked_rows,
        compute_dtype=caps.compute_dtype,
        features=frozenset({"window"}) | (caps.features & {"softcap", "sinks"}),
    )


def _dense_call(
    dense: Target,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    scale: float | None,
    features: dict[str, Any],
) -> Tensor:
    """One dense call on padded BHLD tensors with a boolean (B, 1, L, S) mask."""
    gqa = k.size(1) != q.size(1)
    passed = {name: value for name, value in features.items() if value is not None}
    return dense(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa, **passed)


def _band(L: int, S: int, n_q: int, n_k: int, is_causal: bool, window: tuple[int, int] | None) -> Tensor:
    """(L, S) bool: a sequence of n_q queries and n_k keys placed at the top-left of a padded (L, S) box; causal
    and window aligned bottom-right within the sequence."""
    box = torch.zeros(L, S, dtype=torch.bool)
    seen = merge_masks(None, is_causal, n_q, n_k, "bottom-right", window=window)  # (n_q, n_k) or None
    box[:n_q, :n_k] = True if seen is None else seen
    return box


def varlen_fallback(spec: str, dense: Target) -> Target:
    """``varlen:SPEC``: the dense target SPEC (resolved: ``dense``) behind a pad-and-mask varlen call."""

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
        **features: Any,
    ) -> Tensor:
        bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        B, L, S = len(bq) - 1, max(max_seqlen_q, 1), max(max_seqlen_k, 1)
        q = pad_sequences(query, bq, L)  # (Tq + pad, Hq, E) -> (B, L_max, Hq, E)
        k, v = (pad_sequences(t, bk, S) for t in (key, value))  # (Tk + pad, Hkv, D) -> (B, S_max, Hkv, D)
        mask = torch.zeros(B, 1, L, S, dtype=torch.bool, device=query.device)  # (B, 1, L_max, S_max)
        for b in range(B):
            mask[b, 0] = _band(L, S, bq[b + 1] - bq[b], bk[b + 1] - bk[b], is_causal, window)
        q4, k4, v4 = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, D) -> (B, H, L, D)
        out = _dense_call(dense, q4, k4, v4, mask, scale, features).transpose(1, 2)  # (B, L_max, Hq, Ev)
        packed, _ = empty_outputs(query, value)  # (Tq + pad, Hq, Ev)
        return unpad_sequences(out, bq, packed)

    caps = _fallback_caps(dense, "varlen")
    return Target(f"varlen:{spec}", varlen, caps, f"{spec} behind a pad-and-mask varlen call (dense fallback)")


def decode_fallback(spec: str, dense: Target, paged: bool = False) -> Target:
    """``decode:SPEC`` (``decode-paged:SPEC``): the dense target SPEC (resolved: ``dense``) on each sequence's
    gathered cache."""

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
        **features: Any,
    ) -> Tensor:
        lengths = cache_seqlens.tolist()
        B, Lq, S = query.size(0), query.size(1), max(max(lengths, default=0), 1)
        k = k_cache.new_zeros(B, S, *k_cache.shape[2:])  # (B, S_max, Hkv, E)
        v = v_cache.new_zeros(B, S, *v_cache.shape[2:])  # (B, S_max, Hkv, Ev)
        mask = torch.zeros(B, 1, Lq, S, dtype=torch.bool, device=query.device)  # (B, 1, Lq, S_max)
        for b, n in enumerate(lengths):
            k[b, :n], v[b, :n] = cached_sequence(k_cache, v_cache, block_table, n, b)  # (n, Hkv, E), (n, Hkv, Ev)
            seen = merge_masks(None, is_causal, Lq, n, "bottom-right", window=window)  # (Lq, n): last Lq positions
            mask[b, 0, :, :n] = True if seen is None else seen
        q4, k4, v4 = (t.transpose(1, 2) for t in (query, k, v))  # (B, L, H, D) -> (B, H, L, D)
        return _dense_call(dense, q4, k4, v4, mask, scale, features).transpose(1, 2)  # (B, Lq, Hq, Ev)

    caps = _fallback_caps(dense, "decode", paged)
    name = f"decode{'-paged' if paged else ''}:{spec}"
    return Target(name, decode, caps, f"{spec} on each sequence's gathered KV cache (dense fallback)")


def flex_varlen_target() -> Target:
    flex = import_flex_attention()

    def flex_varlen(
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
        Hq, B = query.size(1), len(cu_seqlens_q) - 1
        Tq, Tk = int(cu_seqlens_q[-1]), int(cu_seqlens_k[-1])  # the packed tokens; padding rows are not passed
        packed_q = query[:Tq]  # (Tq, Hq, E)

        def documents(cu: Tensor, T: int) -> Tensor:
            """(T,) document id of every packed row."""
            ids = torch.empty(T, dtype=torch.long, device=query.device)
            for b in range(B):
                ids[int(cu[b]) : int(cu[b + 1])] = b
            return ids

        doc_q, doc_k = documents(cu_seqlens_q, Tq), documents(cu_seqlens_k, Tk)
        start_q, start_k = cu_seqlens_q.long(), cu_seqlens_k.long()
        length_q, length_k = (start_q[1:] - start_q[:-1]), (start_k[1:] - start_k[:-1])  # (B,)
        left, right = (Tq + Tk if side < 0 else side for side in (window or (-1, -1)))

        def same_document(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            d = doc_q[q_idx]
            # positions within the document, the query's shifted so that the last query meets the last key
            i = q_idx - start_q[d] + (length_k[d] - length_q[d])
            j = kv_idx - start_k[d]
            seen = (d == doc_k[kv_idx]) & (j >= i - left) & (j <= i + right)
            return seen & (j <= i) if is_causal else seen

        out, lse = empty_outputs(query, value)  # (Tq + pad, Hq, Ev), (Hq, Tq + pad); padding rows stay 0, -inf
        if Tq and Tk:
            block_mask = flex.create_block_mask(same_document, 1, Hq, Tq, Tk, device=query.device)
            q = packed_q.transpose(0, 1).unsqueeze(0)  # (Tq, Hq, E) -> (1, Hq, Tq, E)
            k, v = (t[:Tk].transpose(0, 1).unsqueeze(0) for t in (key, value))  # (Tk, Hkv, D) -> (1, Hkv, Tk, D)
            mod = softcap_mod(softcap) if softcap is not None else None
            packed, packed_lse = flex_call(flex, q, k, v, mod, block_mask, scale, k.size(1) != Hq, return_lse)
            out[:Tq] = packed[0].transpose(0, 1)  # (1, Hq, Tq, Ev) -> (Tq, Hq, Ev)
            if packed_lse is not None:
                lse[:, :Tq] = packed_lse[0]  # (1, Hq, Tq) -> (Hq, Tq)
        return (out, lse) if return_lse else out

    # Eager, no backward on CPU (as flex-attention). Bottom-right within each document, as FlashAttention's varlen.
    caps = Capabilities(
        entry="varlen",
        causal="bottom-right",
        masks=frozenset(),
        grad=False,
        masked_rows="zeros",
        features=frozenset({"window", "softcap", "lse"}),
    )
    return Target("flex-varlen", flex_varlen, caps, f"torch {torch.__version__} flex_attention with a document mask")
