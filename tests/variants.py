"""Correct attention implementations in different styles: the meta-tests check that the suite passes them.

Each variant is a target in the SDPA convention (docs/design.md, "The target contract"), written as a function
of one :class:`~tests.meta_call.Call` and declared with ``@variant(**capabilities)``, which registers it in
:data:`VARIANTS` (a :class:`Variant`: name, SDPA callable, declared
:class:`~attncheck.properties.contract.Capabilities`) and leaves the SDPA callable, carrying its declaration as
:func:`attncheck.properties.contract.declare` would, under the function's name. Every variant handles all of the
contract: bool and float masks broadcast from (L, S), (B, 1, L, S), (B, H, L, S), (1, H, L, S) and (B, 1, 1, S);
top-left ``is_causal`` with L != S; ``scale``; GQA (repeat_interleave semantics); Ev != E; non-contiguous
inputs; float64/float32/bfloat16/float16 inputs (the output has the input's dtype); logits far beyond exp's
range; fully masked rows without NaN in the other rows or in their gradients; NaN in the keys or values of keys
no query may see.

They differ in style (upcast, streaming, logsumexp, einsum, torch's kernel) and in the convention for rows
with no admissible key, which is implementation-defined: zeros (most), NaN (:func:`nan_masked_rows`) or the
uniform average of all values (:func:`uniform_masked_rows`), each declared. All but :func:`torch_sdpa` declare
``masked_values="ignored"`` (NaN or inf in keys and values no query may see never reach the output), so the
suite judges that too; torch SDPA lets them through (0 * NaN in P V), which the suite observes and reports.

Dropout (``dropout_p > 0``, inverted dropout with torch's global RNG) is supported, and declared, by
``float64_inside``, ``online_softmax``, ``logsumexp_form``, ``einsum_grouped`` and ``torch_sdpa``;
``renormalised_dropout`` drops before the row sum (declared ``dropout="renormalised"``); the others raise
NotImplementedError for it. The last variants are correct in conventions that differ from the contract and are
declared: float32 compute, self-attention only, interleaved GQA heads, always causal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from attncheck.properties.contract import Target
from tests.meta_call import NEG_INF, Call, Decorator, Implementation, dropout, masked_scores, zero_unseen_values

BLOCK = 16  # key block of the streaming variant


@dataclass(frozen=True)
class Variant(Implementation):
    """A correct implementation: no property may flag it."""

    kind: ClassVar[str] = "variant"


VARIANTS: dict[str, Variant] = {}


def variant(**capabilities: Any) -> Decorator:
    """Register a function of a :class:`Call` as a correct variant, declaring ``capabilities``."""
    return Variant.decorator(VARIANTS, capabilities)


def variant_target(name: str) -> Target:
    """The registered variant ``name`` as a property target (``variant:<name>``)."""
    return VARIANTS[name].target()


# ---------------------------------------------------------------------------------------------------------------
# Shared steps (each variant uses what fits its style)


def _no_dropout(name: str, c: Call) -> None:
    if c.dropout_p > 0.0:
        raise NotImplementedError(f"{name}: dropout is not implemented (declared dropout=False)")


def _zero_rows_attention(c: Call, dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """Float32/float64 attention with an explicit exp / sum softmax; returns (output, admissible_row).

    The row max is taken over admissible scores only and detached (the softmax does not depend on it);
    fully masked rows have e = 0 everywhere, and their denominator is replaced by 1, so their weights are
    exactly 0 with zero, finite gradients. ``dropout_p`` drops entries of e *before* the row sum, so the kept
    weights renormalise to sum to 1 (a row that drops every key gives 0).
    """
    q, k, v = c.qkv()
    s = torch.matmul(q, k.transpose(-2, -1)) * c.softmax_scale  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    s = masked_scores(s, c.bias())  # (B, H, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    m = s.detach().amax(dim=-1, keepdim=True).masked_fill(~admissible_row, 0.0)  # (B, H, L, 1)
    e = dropout(torch.exp(s - m), dropout_p)  # (B, H, L, S); exp(-inf) = 0 at masked keys
    denom = e.sum(dim=-1, keepdim=True)  # (B, H, L, 1)
    denom = denom.masked_fill(~admissible_row | (denom == 0), 1.0)
    p = e / denom  # (B, H, L, S)
    out = torch.matmul(p, zero_unseen_values(v, s))  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return out, admissible_row


# ---------------------------------------------------------------------------------------------------------------
# Variants


@variant(dropout=True, masked_rows="zeros", masked_values="ignored")
def float64_inside(c: Call) -> Tensor:
    """Upcast everything to float64, compute equation (1) with torch.softmax, cast back to the input dtype."""
    q, k, v = c.qkv(torch.float64)
    s = torch.matmul(q, k.transpose(-2, -1)) * c.softmax_scale  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    s = masked_scores(s, c.bias(q.dtype))
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    # A row of -inf would softmax to 0/0 = NaN forward *and* backward: softmax zeros there, then zero the row.
    p = torch.softmax(s.masked_fill(~admissible_row, 0.0), dim=-1) * admissible_row  # (B, H, L, S)
    p = dropout(p, c.dropout_p)
    out = torch.matmul(p, zero_unseen_values(v, s))  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return out.to(c.query.dtype)


@variant(dropout=True, masked_rows="zeros", masked_values="ignored")
def online_softmax(c: Call) -> Tensor:
    """Streaming (FlashAttention-style) softmax over key blocks of 16 with a running max and sum.

    For each block: m' = max(m, max s_blk), l' = l e^(m - m') + sum e^(s_blk - m'), acc' = acc e^(m - m') +
    e^(s_blk - m') V_blk; the output is acc / l. The last block may be partial (ceil(S / 16) blocks). Rows
    with no admissible key so far use m' = 0, so e^(-inf - 0) = 0 and nothing is NaN; rows that never see a
    key end with l = 0 and output 0. Dropout masks the numerator only (inverted dropout of the weights).
    """
    q, k, v = c.qkv()
    L, S, wd = c.L, c.S, q.dtype
    bias = c.bias()
    if bias is not None:
        bias = bias.expand(*bias.shape[:-2], L, S)  # (..., L, S): a (B, 1, 1, S) mask becomes (B, 1, L, S)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], () if bias is None else bias.shape[:-2])  # (B, H)
    m = torch.full((*lead, L, 1), NEG_INF, dtype=wd, device=q.device)  # (B, H, L, 1) running max
    l = torch.zeros((*lead, L, 1), dtype=wd, device=q.device)  # (B, H, L, 1) running sum
    acc = torch.zeros((*lead, L, v.size(-1)), dtype=wd, device=q.device)  # (B, H, L, Ev) running numerator
    for start in range(0, S, BLOCK):
        blk = slice(start, min(start + BLOCK, S))  # the tail block is partial
        s = torch.matmul(q, k[..., blk, :].transpose(-2, -1)) * c.softmax_scale  # (B,H,L,E) @ (B,H,E,b) -> (B,H,L,b)
        s = masked_scores(s, None if bias is None else bias[..., blk])  # (B, H, L, b)
        v_blk = zero_unseen_values(v[..., blk, :], s)  # (B, H, b, Ev)
        m_new = torch.maximum(m, s.detach().amax(dim=-1, keepdim=True))  # (B, H, L, 1)
        m_safe = m_new.masked_fill(m_new == NEG_INF, 0.0)  # no admissible key yet: any finite shift works
        alpha = torch.exp(m - m_safe)  # (B, H, L, 1); 0 when m = -inf
        e = torch.exp(s - m_safe)  # (B, H, L, b)
        l = l * alpha + e.sum(dim=-1, keepdim=True)
        acc = acc * alpha + torch.matmul(dropout(e, c.dropout_p), v_blk)  # (B, H, L, b) @ (B, H, b, Ev)
        m = m_new
    out = acc / l.masked_fill(l == 0, 1.0)  # (B, H, L, Ev); fully masked rows: 0 / 1
    return out.to(c.query.dtype)


@variant(dropout=True, masked_rows="zeros", masked_values="ignored")
def logsumexp_form(c: Call) -> Tensor:
    """Weights as exp(s - logsumexp(s)) (the form kernels save for the backward).

    For a row of -inf, logsumexp is -inf and s - lse = -inf - (-inf) = NaN; ``torch.where`` on the result
    would keep the NaN in the backward (0 * NaN). So the scores of such rows are replaced by zeros *before*
    logsumexp, which is then finite, and the row's weights are zeroed after.
    """
    q, k, v = c.qkv()
    s = torch.matmul(q, k.transpose(-2, -1)) * c.softmax_scale  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    s = masked_scores(s, c.bias())  # (B, H, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    s_safe = s.masked_fill(~admissible_row, 0.0)  # (B, H, L, S)
    lse = torch.logsumexp(s_safe, dim=-1, keepdim=True)  # (B, H, L, 1), finite
    p = torch.exp(s_safe - lse) * admissible_row  # (B, H, L, S)
    out = torch.matmul(dropout(p, c.dropout_p), zero_unseen_values(v, s))  # (B,H,L,S) @ (B,H,S,Ev) -> (B,H,L,Ev)
    return out.to(c.query.dtype)


@variant(dropout=True, masked_rows="zeros", masked_values="ignored")
def einsum_grouped(c: Call) -> Tensor:
    """einsum over grouped query heads: GQA by reshaping Q to (B, Hkv, G, L, E), never repeating K and V.

    Query head h = kv * G + g reads kv head kv = h // G, which is repeat_interleave's mapping.
    """
    q, k, v = c.qkv(expand_kv=False)
    B, Hq, L, E = q.shape
    Hkv, S = k.size(-3), k.size(-2)
    G = Hq // Hkv if c.enable_gqa else 1
    q = q.reshape(B, Hkv, G, L, E)  # (B, Hq, L, E) -> (B, Hkv, G, L, E)
    s = torch.einsum("bkgle,bkse->bkgls", q, k) * c.softmax_scale  # (B, Hkv, G, L, S)
    bias = c.bias()
    if bias is not None:
        bias = bias.expand(B, Hq, L, S).reshape(B, Hkv, G, L, S)  # (..., L, S) -> (B, Hq, L, S) -> (B, Hkv, G, L, S)
    s = masked_scores(s, bias)  # (B, Hkv, G, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, Hkv, G, L, 1)
    p = torch.softmax(s.masked_fill(~admissible_row, 0.0), dim=-1) * admissible_row  # (B, Hkv, G, L, S)
    seen = (s != NEG_INF).flatten(2, 3).any(dim=2).unsqueeze(-1)  # (B, Hkv, G*L, S) -> (B, Hkv, S, 1)
    v = v.masked_fill(~seen, 0.0)  # (B, Hkv, S, Ev)
    out = torch.einsum("bkgls,bksv->bkglv", dropout(p, c.dropout_p), v)  # (B, Hkv, G, L, Ev)
    return out.reshape(B, Hq, L, v.size(-1)).to(c.query.dtype)  # (B, Hkv, G, L, Ev) -> (B, Hq, L, Ev)


@variant(dropout=True, masked_rows="zeros")
def torch_sdpa(c: Call) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention itself (zeros for fully masked rows since torch 2.5).

    NaN in the value of a fully masked key leaks (0 * NaN, pytorch#101967): it keeps the default
    ``masked_values="observed"``, so the suite reports that instead of judging it.
    """
    return torch.nn.functional.scaled_dot_product_attention(c.query, c.key, c.value, **c.kwargs())


@variant(masked_rows="zeros", masked_values="ignored")
def zeros_masked_rows(c: Call) -> Tensor:
    """Explicit exp / sum softmax with a detached admissible-only max; fully masked rows give exact zeros."""
    _no_dropout("zeros_masked_rows", c)
    out, _ = _zero_rows_attention(c)
    return out.to(c.query.dtype)


@variant(masked_rows="nan", masked_values="ignored")
def nan_masked_rows(c: Call) -> Tensor:
    """Fully masked rows give NaN (softmax's 0/0, a legal convention), and nothing else does.

    The NaN is written after a NaN-free computation: ``torch.where(admissible, out, nan)`` sends no
    gradient to the NaN branch (a constant) and zero gradient into ``out`` there, so the gradients of the
    other rows and of K and V are finite. (Computing a plain softmax and patching would not be: its
    backward is NaN at a row of -inf and reaches dK, dV through the sum over rows.)
    """
    _no_dropout("nan_masked_rows", c)
    out, admissible_row = _zero_rows_attention(c)
    return torch.where(admissible_row, out, float("nan")).to(c.query.dtype)  # (B, H, L, Ev)


@variant(masked_rows="uniform", masked_values="ignored")
def uniform_masked_rows(c: Call) -> Tensor:
    """Fully masked rows give the uniform average of all values (softmax of equal scores, as a finite -inf
    fill would), every other row is exact."""
    _no_dropout("uniform_masked_rows", c)
    out, admissible_row = _zero_rows_attention(c)
    _, _, v = c.qkv(out.dtype)  # (B, Hq, S, Ev)
    uniform = v.mean(dim=-2, keepdim=True)  # (B, H, 1, Ev)
    return torch.where(admissible_row, out, uniform).to(c.query.dtype)  # (B, H, L, Ev)


@variant(masked_rows="zeros", masked_values="ignored", compute_dtype="float32")
def float32_internal(c: Call) -> Tensor:
    """softmax(x.float()) style: every input dtype is computed in float32 (float64 calls too) and cast back.
    Declared ``compute_dtype="float32"``: precision is judged against float32, and nothing structural fails."""
    _no_dropout("float32_internal", c)
    q, k, v = c.qkv(torch.float32)
    s = masked_scores(torch.matmul(q, k.transpose(-2, -1)) * c.softmax_scale, c.bias(torch.float32))  # (B,H,L,S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    p = torch.softmax(s.masked_fill(~admissible_row, 0.0), dim=-1) * admissible_row  # (B, H, L, S)
    return torch.matmul(p, zero_unseen_values(v, s)).to(c.query.dtype)  # (B, H, L, S) @ (B, H, S, Ev)


@variant(masked_rows="zeros", masked_values="ignored", lengths="equal")
def self_attention_only(c: Call) -> Tensor:
    """A self-attention kernel: it refuses L != S (declared ``lengths="equal"``) and is correct otherwise."""
    _no_dropout("self_attention_only", c)
    if c.L != c.S:
        raise ValueError(f"self-attention only: got {c.L} queries and {c.S} keys")
    return VARIANTS["float64_inside"].fn(c.query, c.key, c.value, **c.kwargs())


@variant(dropout="renormalised", masked_rows="zeros", masked_values="ignored")
def renormalised_dropout(c: Call) -> Tensor:
    """Dropout applied to the unnormalised weights e before the row sum (as memory-efficient-attention-pytorch
    does): the kept weights of a row renormalise to sum to 1 instead of being rescaled by 1 / (1 - p).
    Declared ``dropout="renormalised"``."""
    out, _ = _zero_rows_attention(c, c.dropout_p)
    return out.to(c.query.dtype)


@variant(masked_rows="zeros", masked_values="ignored", gqa_mapping="interleaved")
def interleaved_gqa(c: Call) -> Tensor:
    """GQA by tiling the kv heads, einops ``repeat(k, 'b h s d -> b (r h) s d')``: query head h reads kv head
    h % Hkv (x-transformers' mapping; its projections are laid out to match). Declared
    ``gqa_mapping="interleaved"``."""
    _no_dropout("interleaved_gqa", c)
    k, v = c.key, c.value
    if c.enable_gqa:
        group = c.query.size(-3) // k.size(-3)
        k, v = (torch.cat([t] * group, dim=-3) for t in (k, v))  # (B, Hkv, S, D) -> (B, Hq, S, D), tiled
    out, _ = _zero_rows_attention(c.replace(key=k, value=v, enable_gqa=False))
    return out.to(c.query.dtype)


@variant(masked_rows="zeros", masked_values="ignored", causal="always")
def always_causal(c: Call) -> Tensor:
    """A decoder block's attention with the causal triangle built in (nanoGPT's ``CausalSelfAttention``): no
    is_causal flag, every call is causal (top-left), masks combine with it. Declared ``causal="always"``."""
    _no_dropout("always_causal", c)
    out, _ = _zero_rows_attention(c.replace(is_causal=True))
    return out.to(c.query.dtype)


INVERTED_DROPOUT = tuple(name for name, v in VARIANTS.items() if v.caps.dropout == "inverted")
