"""Correct attention implementations in different styles: the meta-tests check that the suite passes them.

Each variant is a target in the SDPA convention (shared/DESIGN.md, "The target contract") and handles every
part of it: bool and float masks broadcast from (L, S), (B, 1, L, S), (B, H, L, S), (1, H, L, S) and
(B, 1, 1, S); top-left ``is_causal`` with L != S; ``scale``; GQA (repeat_interleave semantics); Ev != E;
non-contiguous inputs; float64/float32/bfloat16/float16 inputs (the output has the input's dtype); logits
far beyond exp's range; fully masked rows without NaN in the other rows or in their gradients; NaN in the
keys or values of keys no query may see.

They differ in style (upcast, streaming, logsumexp, einsum, torch's kernel) and in the convention for rows
with no admissible key, which is implementation-defined: zeros (most), NaN (:func:`nan_masked_rows`) or the
uniform average of all values (:func:`uniform_masked_rows`). Each declares what it does with
:func:`properties.targets.declare` (read by ``attncheck verify`` and the meta-tests).

Dropout (``dropout_p > 0``, inverted dropout with torch's global RNG) is supported, and declared, by
``float64_inside``, ``online_softmax``, ``logsumexp_form``, ``einsum_grouped`` and ``torch_sdpa``;
``zeros_masked_rows``, ``nan_masked_rows`` and ``uniform_masked_rows`` raise NotImplementedError for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from properties.targets import SDPA_KNOWN, declare
from reference.attention import causal_mask

NEG_INF = float("-inf")
BLOCK = 16  # key block of the streaming variant


# ---------------------------------------------------------------------------------------------------------------
# Shared steps (each variant uses what fits its style)


def _scale(query: Tensor, scale: float | None) -> float:
    """Section 3.2.1: 1/sqrt(d_k) unless a scale is given."""
    return 1.0 / math.sqrt(query.size(-1)) if scale is None else scale


def _repeat_kv(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> tuple[Tensor, Tensor]:
    """GQA: query head h reads kv head h // (Hq / Hkv)."""
    if enable_gqa and key.size(-3) != query.size(-3):
        group = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(group, dim=-3)  # (B, Hkv, S, E) -> (B, Hq, S, E)
        value = value.repeat_interleave(group, dim=-3)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    return key, value


def _bias(attn_mask: Tensor | None, is_causal: bool, L: int, S: int, like: Tensor) -> Tensor | None:
    """Additive bias broadcastable to (B, H, L, S): the float mask, 0 / -inf for bool masks and is_causal."""
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=like.dtype, device=like.device).masked_fill(~attn_mask, NEG_INF)
        else:
            bias = attn_mask.to(like.dtype)
    if is_causal:
        hidden = ~causal_mask(L, S, "top-left", like.device)  # (L, S), top-left: query i sees keys j <= i
        if bias is None:
            bias = torch.zeros((L, S), dtype=like.dtype, device=like.device)
        bias = bias.masked_fill(hidden, NEG_INF)  # (..., L, S)
    return bias


def _masked_scores(scores: Tensor, bias: Tensor | None) -> Tensor:
    """scores + B, with -inf wherever B is -inf (so a NaN score of a masked key stays masked)."""
    if bias is None:
        return scores
    return (scores + bias).masked_fill(bias == NEG_INF, NEG_INF)


def _zero_unseen_values(value: Tensor, scores: Tensor) -> Tensor:
    """Zero the values of keys that no query may see: their weight is 0, but 0 * NaN = NaN."""
    seen = (scores != NEG_INF).any(dim=-2).unsqueeze(-1)  # (B, H, L, S) -> (B, H, S) -> (B, H, S, 1)
    return value.masked_fill(~seen, 0.0)  # (B, H, S, Ev)


def _dropout(p: Tensor, dropout_p: float) -> Tensor:
    """Inverted dropout: keep with probability 1 - p and rescale by 1/(1 - p), so the expectation is p."""
    if dropout_p > 0.0:
        keep = torch.rand(p.shape, device=p.device) >= dropout_p
        p = p * keep / (1.0 - dropout_p)
    return p


def _no_dropout(name: str, dropout_p: float) -> None:
    if dropout_p > 0.0:
        raise NotImplementedError(f"{name}: dropout is not implemented (declared dropout=False)")


def _zero_rows_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> tuple[Tensor, Tensor]:
    """Float32/float64 attention with an explicit exp / sum softmax; returns (output, admissible_row).

    The row max is taken over admissible scores only and detached (the softmax does not depend on it);
    fully masked rows have e = 0 everywhere, and their denominator is replaced by 1, so their weights are
    exactly 0 with zero, finite gradients.
    """
    wd = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(wd) for t in (query, key, value))
    k, v = _repeat_kv(q, k, v, enable_gqa)
    bias = _bias(attn_mask, is_causal, q.size(-2), k.size(-2), q)
    s = torch.matmul(q, k.transpose(-2, -1)) * _scale(query, scale)  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    s = _masked_scores(s, bias)  # (B, H, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    m = s.detach().amax(dim=-1, keepdim=True).masked_fill(~admissible_row, 0.0)  # (B, H, L, 1)
    e = torch.exp(s - m)  # (B, H, L, S); exp(-inf) = 0 at masked keys
    denom = e.sum(dim=-1, keepdim=True).masked_fill(~admissible_row, 1.0)  # (B, H, L, 1)
    p = e / denom  # (B, H, L, S)
    out = torch.matmul(p, _zero_unseen_values(v, s))  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return out, admissible_row


# ---------------------------------------------------------------------------------------------------------------
# Variants


@declare(dropout=True, masked_rows="zeros")
def float64_inside(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Upcast everything to float64, compute equation (1) with torch.softmax, cast back to the input dtype."""
    q, k, v = (t.double() for t in (query, key, value))
    k, v = _repeat_kv(q, k, v, enable_gqa)
    bias = _bias(attn_mask, is_causal, q.size(-2), k.size(-2), q)
    s = torch.matmul(q, k.transpose(-2, -1)) * _scale(query, scale)  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    s = _masked_scores(s, bias)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    # A row of -inf would softmax to 0/0 = NaN forward *and* backward: softmax zeros there, then zero the row.
    p = torch.softmax(s.masked_fill(~admissible_row, 0.0), dim=-1) * admissible_row  # (B, H, L, S)
    p = _dropout(p, dropout_p)
    out = torch.matmul(p, _zero_unseen_values(v, s))  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return out.to(query.dtype)


@declare(dropout=True, masked_rows="zeros")
def online_softmax(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Streaming (FlashAttention-style) softmax over key blocks of 16 with a running max and sum.

    For each block: m' = max(m, max s_blk), l' = l e^(m - m') + sum e^(s_blk - m'), acc' = acc e^(m - m') +
    e^(s_blk - m') V_blk; the output is acc / l. The last block may be partial (ceil(S / 16) blocks). Rows
    with no admissible key so far use m' = 0, so e^(-inf - 0) = 0 and nothing is NaN; rows that never see a
    key end with l = 0 and output 0. Dropout masks the numerator only (inverted dropout of the weights).
    """
    wd = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(wd) for t in (query, key, value))
    k, v = _repeat_kv(q, k, v, enable_gqa)
    L, S = q.size(-2), k.size(-2)
    bias = _bias(attn_mask, is_causal, L, S, q)
    if bias is not None:
        bias = bias.expand(*bias.shape[:-2], L, S)  # (..., L, S): a (B, 1, 1, S) mask becomes (B, 1, L, S)
    scale = _scale(query, scale)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], () if bias is None else bias.shape[:-2])  # (B, H)
    m = torch.full((*lead, L, 1), NEG_INF, dtype=wd, device=q.device)  # (B, H, L, 1) running max
    l = torch.zeros((*lead, L, 1), dtype=wd, device=q.device)  # (B, H, L, 1) running sum
    acc = torch.zeros((*lead, L, v.size(-1)), dtype=wd, device=q.device)  # (B, H, L, Ev) running numerator
    for start in range(0, S, BLOCK):
        blk = slice(start, min(start + BLOCK, S))  # the tail block is partial
        s = torch.matmul(q, k[..., blk, :].transpose(-2, -1)) * scale  # (B, H, L, E) @ (B, H, E, b) -> (B, H, L, b)
        s = _masked_scores(s, None if bias is None else bias[..., blk])  # (B, H, L, b)
        v_blk = _zero_unseen_values(v[..., blk, :], s)  # (B, H, b, Ev)
        m_new = torch.maximum(m, s.detach().amax(dim=-1, keepdim=True))  # (B, H, L, 1)
        m_safe = m_new.masked_fill(m_new == NEG_INF, 0.0)  # no admissible key yet: any finite shift works
        alpha = torch.exp(m - m_safe)  # (B, H, L, 1); 0 when m = -inf
        e = torch.exp(s - m_safe)  # (B, H, L, b)
        l = l * alpha + e.sum(dim=-1, keepdim=True)
        acc = acc * alpha + torch.matmul(_dropout(e, dropout_p), v_blk)  # (B, H, L, b) @ (B, H, b, Ev)
        m = m_new
    out = acc / l.masked_fill(l == 0, 1.0)  # (B, H, L, Ev); fully masked rows: 0 / 1
    return out.to(query.dtype)


@declare(dropout=True, masked_rows="zeros")
def logsumexp_form(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Weights as exp(s - logsumexp(s)) (the form kernels save for the backward).

    For a row of -inf, logsumexp is -inf and s - lse = -inf - (-inf) = NaN; ``torch.where`` on the result
    would keep the NaN in the backward (0 * NaN). So the scores of such rows are replaced by zeros *before*
    logsumexp, which is then finite, and the row's weights are zeroed after.
    """
    wd = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(wd) for t in (query, key, value))
    k, v = _repeat_kv(q, k, v, enable_gqa)
    bias = _bias(attn_mask, is_causal, q.size(-2), k.size(-2), q)
    s = torch.matmul(q, k.transpose(-2, -1)) * _scale(query, scale)  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    s = _masked_scores(s, bias)  # (B, H, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    s_safe = s.masked_fill(~admissible_row, 0.0)  # (B, H, L, S)
    lse = torch.logsumexp(s_safe, dim=-1, keepdim=True)  # (B, H, L, 1), finite
    p = torch.exp(s_safe - lse) * admissible_row  # (B, H, L, S)
    out = torch.matmul(_dropout(p, dropout_p), _zero_unseen_values(v, s))  # (B,H,L,S) @ (B,H,S,Ev) -> (B,H,L,Ev)
    return out.to(query.dtype)


@declare(dropout=True, masked_rows="zeros")
def einsum_grouped(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """einsum over grouped query heads: GQA by reshaping Q to (B, Hkv, G, L, E), never repeating K and V.

    Query head h = kv * G + g reads kv head kv = h // G, which is repeat_interleave's mapping.
    """
    wd = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(wd) for t in (query, key, value))
    B, Hq, L, E = q.shape
    Hkv, S = k.size(-3), k.size(-2)
    G = Hq // Hkv if enable_gqa else 1
    q = q.reshape(B, Hkv, G, L, E)  # (B, Hq, L, E) -> (B, Hkv, G, L, E)
    s = torch.einsum("bkgle,bkse->bkgls", q, k) * _scale(query, scale)  # (B, Hkv, G, L, S)
    bias = _bias(attn_mask, is_causal, L, S, q)
    if bias is not None:
        bias = bias.expand(B, Hq, L, S).reshape(B, Hkv, G, L, S)  # (..., L, S) -> (B, Hq, L, S) -> (B, Hkv, G, L, S)
    s = _masked_scores(s, bias)  # (B, Hkv, G, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, Hkv, G, L, 1)
    p = torch.softmax(s.masked_fill(~admissible_row, 0.0), dim=-1) * admissible_row  # (B, Hkv, G, L, S)
    seen = (s != NEG_INF).flatten(2, 3).any(dim=2).unsqueeze(-1)  # (B, Hkv, G*L, S) -> (B, Hkv, S, 1)
    v = v.masked_fill(~seen, 0.0)  # (B, Hkv, S, Ev)
    out = torch.einsum("bkgls,bksv->bkglv", _dropout(p, dropout_p), v)  # (B, Hkv, G, L, Ev)
    return out.reshape(B, Hq, L, v.size(-1)).to(query.dtype)  # (B, Hkv, G, L, Ev) -> (B, Hq, L, Ev)


@declare(dropout=True, masked_rows="zeros", known_failures=SDPA_KNOWN)
def torch_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention itself (zeros for fully masked rows since torch 2.5).

    Declares its one known deviation: NaN in the value of a fully masked key leaks (0 * NaN, pytorch#101967).
    """
    return torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )


@declare(masked_rows="zeros")
def zeros_masked_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Explicit exp / sum softmax with a detached admissible-only max; fully masked rows give exact zeros."""
    _no_dropout("zeros_masked_rows", dropout_p)
    out, _ = _zero_rows_attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    return out.to(query.dtype)


@declare(masked_rows="nan")
def nan_masked_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Fully masked rows give NaN (softmax's 0/0, a legal convention), and nothing else does.

    The NaN is written after a NaN-free computation: ``torch.where(admissible, out, nan)`` sends no
    gradient to the NaN branch (a constant) and zero gradient into ``out`` there, so the gradients of the
    other rows and of K and V are finite. (Computing a plain softmax and patching would not be: its
    backward is NaN at a row of -inf and reaches dK, dV through the sum over rows.)
    """
    _no_dropout("nan_masked_rows", dropout_p)
    out, admissible_row = _zero_rows_attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    return torch.where(admissible_row, out, float("nan")).to(query.dtype)  # (B, H, L, Ev)


@declare(masked_rows="uniform")
def uniform_masked_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Fully masked rows give the uniform average of all values (softmax of equal scores, as a finite -inf
    fill would), every other row is exact."""
    _no_dropout("uniform_masked_rows", dropout_p)
    out, admissible_row = _zero_rows_attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    wd = out.dtype
    _, v = _repeat_kv(query, key.to(wd), value.to(wd), enable_gqa)  # (B, Hq, S, Ev)
    uniform = v.mean(dim=-2, keepdim=True)  # (B, H, 1, Ev)
    return torch.where(admissible_row, out, uniform).to(query.dtype)  # (B, H, L, Ev)


VARIANTS: dict[str, Callable[..., Tensor]] = {
    "float64_inside": float64_inside,
    "online_softmax": online_softmax,
    "logsumexp_form": logsumexp_form,
    "einsum_grouped": einsum_grouped,
    "torch_sdpa": torch_sdpa,
    "zeros_masked_rows": zeros_masked_rows,
    "nan_masked_rows": nan_masked_rows,
    "uniform_masked_rows": uniform_masked_rows,
}

DROPOUT_VARIANTS = tuple(name for name, fn in VARIANTS.items() if fn.__attncheck__.dropout)  # type: ignore[attr-defined]
