"""Deliberately broken attention implementations: the meta-tests check that the suite catches each one.

Every mutant is a target in the SDPA convention (shared/DESIGN.md, "The target contract")::

    f(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)
    query (B, Hq, L, E)   key (B, Hkv, S, E)   value (B, Hkv, S, Ev)   ->   (B, Hq, L, Ev)

and carries exactly ONE bug, taken from a class of shared/BUGS.md (cited as ``#n``) or from the textbook
mistakes listed at its end. Everything else is the correct pipeline of the helpers below (upcast to float32
for half inputs, repeat_interleave GQA, -inf masking that keeps NaN scores of masked keys out, a safe softmax
that gives fully masked rows zero weights and finite gradients, values of unseen keys excluded, inverted
dropout), so a mutant fails only what its bug breaks. The line that differs from the correct pipeline is
marked ``# BUG``.

:data:`MUTANTS` maps a short name to ``(function, property expected to catch it)`` or
``(function, property, capabilities to declare)``: a few bugs are only wrong relative to a declaration
(the suite observes the convention of fully masked rows and fails a target only for a convention it declared
and does not keep; dropout is tested only where declared). The property is the most specific one of the
stable catalog (:data:`CATALOG`); others may fail too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from properties.catalog import PROPERTIES

NEG_INF = float("-inf")
BLOCK = 16  # key block of the tiled (online softmax) mutant

CATALOG = PROPERTIES  # the stable property names a mutant may name

# ---------------------------------------------------------------------------------------------------------------
# The correct pipeline, in steps: a mutant replaces exactly one of them.


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; float32, bfloat16 and float16 are computed in float32 (fp32 accumulation)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _scale(query: Tensor, scale: float | None) -> float:
    """Section 3.2.1: 1/sqrt(d_k) unless a scale is given."""
    return 1.0 / math.sqrt(query.size(-1)) if scale is None else scale


def _expand_kv(key: Tensor, value: Tensor, Hq: int) -> tuple[Tensor, Tensor]:
    """GQA: query head h reads kv head h // (Hq / Hkv)."""
    group = Hq // key.size(-3)
    if group == 1:
        return key, value
    key = key.repeat_interleave(group, dim=-3)  # (B, Hkv, S, E) -> (B, Hq, S, E)
    value = value.repeat_interleave(group, dim=-3)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    return key, value


def _prepare(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Upcast to the working dtype and expand the kv heads."""
    wd = _work_dtype(query)
    q, k, v = (t.to(wd) for t in (query, key, value))
    if enable_gqa and k.size(-3) != q.size(-3):
        k, v = _expand_kv(k, v, q.size(-3))
    return q, k, v


def _causal(L: int, S: int, device: torch.device, offset: int = 0) -> Tensor:
    """Boolean (L, S): query i sees keys j <= i + offset (offset 0 = top-left, the contract)."""
    i = torch.arange(L, device=device)[:, None]  # (L, 1)
    j = torch.arange(S, device=device)[None, :]  # (1, S)
    return j <= i + offset  # (L, S)


def _bias(attn_mask: Tensor | None, is_causal: bool, q: Tensor, k: Tensor, causal_offset: int = 0) -> Tensor | None:
    """Additive bias broadcastable to (B, H, L, S): the float mask, or 0 / -inf for a bool mask and is_causal."""
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, NEG_INF)
        else:
            bias = attn_mask.to(q.dtype)
    if is_causal:
        causal = _causal(q.size(-2), k.size(-2), q.device, causal_offset)  # (L, S)
        if bias is None:
            bias = torch.zeros(causal.shape, dtype=q.dtype, device=q.device)  # (L, S)
        bias = bias.masked_fill(~causal, NEG_INF)  # (..., L, S)
    return bias


def _scores(q: Tensor, k: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """Q K^T * scale + B; a masked key's score is -inf even where its raw score is NaN (BUGS.md #3)."""
    s = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    if bias is not None:
        s = (s + bias).masked_fill(bias == NEG_INF, NEG_INF)  # (B, H, L, S)
    return s


def _softmax(s: Tensor, dim: int = -1) -> Tensor:
    """Safe softmax: a slice with no admissible entry gets zero weights and finite gradients (BUGS.md #1, #2)."""
    ok = (s != NEG_INF).any(dim, keepdim=True)  # (B, H, L, 1) for dim=-1
    return torch.softmax(s.masked_fill(~ok, 0.0), dim) * ok  # (B, H, L, S)


def _dropout(p: Tensor, dropout_p: float) -> Tensor:
    """Inverted dropout with torch's global RNG: drop with probability p, rescale by 1/(1-p)."""
    if dropout_p > 0.0:
        keep = torch.rand(p.shape, device=p.device) >= dropout_p  # (B, H, L, S)
        p = p * keep / (1.0 - dropout_p)
    return p


def _exclude_unseen(v: Tensor, s: Tensor) -> Tensor:
    """Zero the values of keys no query sees: their weight is 0, but 0 * NaN = NaN in P V (BUGS.md #3)."""
    seen = (s != NEG_INF).any(dim=-2).unsqueeze(-1)  # (B, H, L, S) -> (B, H, S) -> (B, H, S, 1)
    return v.masked_fill(~seen, 0.0)  # (B, H, S, Ev)


def _output(p: Tensor, v: Tensor, s: Tensor, dtype: torch.dtype) -> Tensor:
    """P V over the admissible values, cast back to the input dtype."""
    return torch.matmul(p, _exclude_unseen(v, s)).to(dtype)  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)


def _attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """The correct pipeline (equation (1) in the SDPA convention); mutants deviate from it in one step."""
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Fully masked rows (#1, #2) and masked keys (#3, #9, #16)


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
    """BUGS.md #1: NaN output for fully masked rows, while declaring the zeros convention.

    NaN rows are a legal convention on their own (the suite observes it), and here they stay in their rows:
    other rows and all gradients are exact. The bug is the broken promise: it is registered with
    ``masked_rows="zeros"`` declared, as a library documenting PyTorch's safe-softmax zeros would.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    out = _output(p, v, s, query.dtype)  # (B, H, L, Ev)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    return torch.where(admissible_row, out, float("nan"))  # BUG: NaN rows although zeros are declared


def naive_softmax_masked_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #1 + #2: plain softmax over a row of -inf gives 0/0 = NaN weights there.

    Forward, the NaN stays in the fully masked rows (a legal convention by itself). Backward it does not:
    dV = P^T dO sums over query rows, and the NaN weights times the zero gradient of those rows give NaN
    (0 * NaN), so the value gradients of every key are NaN (pytorch#41508).
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(torch.softmax(s, dim=-1), dropout_p)  # BUG: not a safe softmax; (B, H, L, S)
    return _output(p, v, s, query.dtype)


def nan_grad_masked_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #2: the NaN output of fully masked rows is patched to zeros after a plain softmax.

    ``torch.where`` (or ``nan_to_num``/``masked_fill``) on the output gives a clean zero forward, exactly the
    safe-softmax convention, but the NaN weights are still in the graph: dV = P^T dO multiplies them by the
    zero gradient of the patched rows, 0 * NaN = NaN, so every key's value gradient is NaN although no
    output that the loss sees is (pytorch#41508, fixed by a safe softmax in PR #131863).
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(torch.softmax(s, dim=-1), dropout_p)  # (B, H, L, S), NaN in fully masked rows
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    out = torch.matmul(p, _exclude_unseen(v, s))  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return torch.where(admissible_row, out, 0.0).to(query.dtype)  # BUG: patches the forward only


def masked_value_nan_leak(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #3: NaN or inf in the value of a masked-out key leaks into the output.

    Masked weights are exactly 0 and the scores are masked correctly, but P V still multiplies every value:
    0 * NaN = NaN and 0 * inf = NaN (pytorch#101967). Caught by overwriting masked keys' values with NaN.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    return torch.matmul(p, v).to(query.dtype)  # BUG: no exclusion of masked values; (B, H, L, Ev)


def finite_neg_inf_mask(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #9: a finite "minus infinity" (BERT's extended mask ``(1 - mask) * -10000.0``) is added.

    exp(-1e4) underflows to 0, so ordinary inputs pass; but a masked key whose score exceeds the admissible
    ones by more than 1e4 revives, a NaN in a masked key stays NaN, and every key counts as seen (the values
    of masked keys enter P V). Fully masked rows become a softmax over the masked keys.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    bias = _bias(attn_mask, is_causal, q, k)
    if bias is not None:
        bias = bias.clamp_min(-1e4)  # BUG: -inf replaced by -1e4; (..., L, S)
    s = _scores(q, k, _scale(query, scale), bias)
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


def bool_mask_inverted(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #16: boolean mask polarity inverted (True read as "masked out", the key_padding_mask sense)."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask  # BUG: True = attend in the contract
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def mask_after_softmax(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: the mask is applied after the softmax, without renormalisation.

    Weights are softmax(Q K^T * scale) * exp(B): masked entries are zero but rows no longer sum to one, and
    masked keys still take part in the normalisation.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    bias = _bias(attn_mask, is_causal, q, k)
    p = _softmax(_scores(q, k, _scale(query, scale), None))  # (B, H, L, S) over every key
    if bias is not None:
        p = p * torch.exp(bias)  # BUG: mask after normalisation; (B, H, L, S)
    s = _scores(q, k, _scale(query, scale), bias)  # which keys are seen, for the output step
    return _output(_dropout(p, dropout_p), v, s, query.dtype)


def mask_batch0_broadcast(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #13: a per-batch mask is broadcast wrongly: batch element 0's mask is used for the whole batch."""
    if attn_mask is not None and attn_mask.dim() == 4:
        attn_mask = attn_mask[:1]  # BUG: (B, H', L', S) -> (1, H', L', S)
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def mask_head0_broadcast(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #13: a per-head mask is broadcast wrongly: head 0's mask is used for every head."""
    if attn_mask is not None and attn_mask.dim() == 4:
        attn_mask = attn_mask[:, :1]  # BUG: (B', H, L', S) -> (B', 1, L', S)
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def mask_times_scale(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #8 (and #22's order half): the additive float mask is multiplied by the scale.

    Computes (Q K^T + B) * scale instead of Q K^T * scale + B. A 0/-inf mask is unchanged by the scale, so
    only float masks with finite biases show it.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    bias = _bias(attn_mask, is_causal, q, k)
    s = _scores(q, k, 1.0, bias) * _scale(query, scale)  # BUG: bias inside the scaling; (B, H, L, S)
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Causal alignment (#4, #5, textbook)


def _causal_mutant(offset: Callable[[int, int], int]) -> Callable[..., Tensor]:
    """The correct pipeline with the causal triangle shifted: query i sees keys j <= i + offset(L, S)."""

    def attend(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        q, k, v = _prepare(query, key, value, enable_gqa)
        bias = _bias(attn_mask, is_causal, q, k, causal_offset=offset(q.size(-2), k.size(-2)))
        s = _scores(q, k, _scale(query, scale), bias)
        p = _dropout(_softmax(s), dropout_p)
        return _output(p, v, s, query.dtype)

    return attend


def bottom_right_causal(*args: Any, **kwargs: Any) -> Tensor:
    """BUGS.md #4: is_causal aligned bottom-right (query i sees keys j <= i + S - L), undeclared.

    FlashAttention >= 2.1 convention; identical to top-left when L == S, leaks future keys when S > L.
    """
    return _causal_mutant(lambda L, S: S - L)(*args, **kwargs)  # BUG: offset S - L


def causal_prefill_offset(*args: Any, **kwargs: Any) -> Tensor:
    """BUGS.md #5: the L != S (prefill / KV-cache) causal path is off by one: query i sees keys j <= i + 1.

    The L == S path is right, so square problems pass; only chunked prefill or decode shapes leak a token.
    """
    return _causal_mutant(lambda L, S: 1 if L != S else 0)(*args, **kwargs)  # BUG: offset 1 when L != S


def decode_skips_causal(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #5: a single-query (decode) call skips the causal mask (``is_causal = L > 1``).

    Right for a KV-cache decode step in the bottom-right sense, wrong under the top-left contract: query 0
    must see key 0 only.
    """
    is_causal = is_causal and query.size(-2) > 1  # BUG: decode step assumed to see every cached key
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def causal_hides_diagonal(*args: Any, **kwargs: Any) -> Tensor:
    """Textbook: the causal mask hides the diagonal (``tril(diagonal=-1)``): query i sees keys j < i only.

    Leaks nothing, but query 0 sees no key at all and every other row loses its own token.
    """
    return _causal_mutant(lambda L, S: -1)(*args, **kwargs)  # BUG: offset -1


def causal_shows_next_token(*args: Any, **kwargs: Any) -> Tensor:
    """Textbook: the causal mask shows the next token (``triu(diagonal=2)`` masking): keys j <= i + 1."""
    return _causal_mutant(lambda L, S: 1)(*args, **kwargs)  # BUG: offset 1


# ---------------------------------------------------------------------------------------------------------------
# Scale (#6, #7, textbook)


def scale_twice(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #6: the scale is applied twice (Q pre-scaled by a caller-side path, then the scores scaled)."""
    q, k, v = _prepare(query, key, value, enable_gqa)
    q = q * _scale(query, scale)  # BUG: second application of the scale; (B, H, L, E)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


def custom_scale_ignored(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #7: the ``scale`` argument is ignored (a fast path always uses 1/sqrt(d_k))."""
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, None, enable_gqa)  # BUG: scale dropped


def no_scaling(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: no scaling at all, softmax(Q K^T) V: logit variance grows like d_k."""
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, 1.0, enable_gqa)  # BUG: scale = 1


def inverse_dk_scale(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: default scale 1/d_k instead of 1/sqrt(d_k) (an explicit ``scale`` is honoured)."""
    if scale is None:
        scale = 1.0 / query.size(-1)  # BUG: 1/d_k
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def inverse_sqrt_seq_len_scale(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: default scale 1/sqrt(S) (the key length) instead of 1/sqrt(d_k)."""
    if scale is None:
        scale = 1.0 / math.sqrt(key.size(-2))  # BUG: 1/sqrt(seq_len)
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


# ---------------------------------------------------------------------------------------------------------------
# Numerics (#10, #11, #21, #23, textbook)


def fp16_qk_overflow(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #10: Q K^T is computed in the input dtype and scaled afterwards.

    In float16 a raw dot product beyond 65504 is inf although the scaled logit is small; the softmax of inf
    is NaN. float32/float64/bfloat16 inputs have the range and pass.
    """
    qi, ki = query, key
    if enable_gqa and key.size(-3) != query.size(-3):
        ki, _ = _expand_kv(key, value, query.size(-3))  # (B, Hq, S, E) in the input dtype
    raw = torch.matmul(qi, ki.transpose(-2, -1))  # BUG: input dtype; (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    q, k, v = _prepare(query, key, value, enable_gqa)
    bias = _bias(attn_mask, is_causal, q, k)
    s = raw.to(q.dtype) * _scale(query, scale)  # (B, H, L, S)
    if bias is not None:
        s = (s + bias).masked_fill(bias == NEG_INF, NEG_INF)
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


def softmax_no_max_subtraction(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #11: softmax as exp(s) / sum exp(s) without subtracting the row max.

    exp overflows for logits above ~88 (float32) or ~709 (float64): inf / inf = NaN. Fully masked rows are
    handled (zero weights); only large-magnitude inputs fail.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    e = torch.exp(s)  # BUG: no max subtraction; (B, H, L, S)
    p = e / e.sum(dim=-1, keepdim=True).masked_fill(~admissible_row, 1.0)  # (B, H, L, S)
    return _output(_dropout(p, dropout_p), v, s, query.dtype)


def sink_double_counted(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #21: an attention sink counted where there is none: an implicit zero-logit key in the denominator.

    Weights are exp(s_j) / (exp(0) + sum_j exp(s_j)): rows sum to less than one (a "softmax-one" /
    off-by-one softmax), and adding a constant to a row's scores changes the output.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    m = s.detach().amax(dim=-1, keepdim=True).clamp_min(0.0)  # (B, H, L, 1), includes the sink's logit 0
    e = torch.exp(s - m)  # (B, H, L, S); 0 at masked keys
    p = e / (e.sum(dim=-1, keepdim=True) + torch.exp(-m))  # BUG: + exp(0 - m) for a sink key; (B, H, L, S)
    return _output(_dropout(p, dropout_p), v, s, query.dtype)


def tail_tile_dropped(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #23: a tiled (online softmax) kernel drops the partial tail tile of keys.

    Keys are processed in blocks of 16 with a running max and sum (FlashAttention's recurrence). The number
    of blocks is ``S // 16`` (floor, not ceil) whenever S > 16, so for S = 17, 33, 65... the last S % 16
    keys are ignored; S <= 16 takes a single-block path and is right.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))  # (B, H, L, S)
    v = _exclude_unseen(v, s)  # (B, H, S, Ev)
    S = s.size(-1)
    n_blocks = S // BLOCK if S > BLOCK else 1  # BUG: floor division; should be ceil(S / BLOCK)
    m = torch.full((*s.shape[:-1], 1), NEG_INF, dtype=s.dtype, device=s.device)  # (B, H, L, 1) running max
    denom = torch.zeros_like(m)  # (B, H, L, 1) running sum of exp
    acc = torch.zeros((*s.shape[:-1], v.size(-1)), dtype=s.dtype, device=s.device)  # (B, H, L, Ev)
    for b in range(n_blocks):
        blk = slice(b * BLOCK, (b + 1) * BLOCK)
        s_blk = s[..., blk]  # (B, H, L, blk)
        m_new = torch.maximum(m, s_blk.detach().amax(dim=-1, keepdim=True))  # (B, H, L, 1)
        m_safe = m_new.masked_fill(m_new == NEG_INF, 0.0)  # rows with no admissible key so far
        alpha = torch.exp(m - m_safe)  # (B, H, L, 1) rescales what was accumulated
        e = torch.exp(s_blk - m_safe)  # (B, H, L, blk)
        denom = denom * alpha + e.sum(dim=-1, keepdim=True)
        acc = acc * alpha + torch.matmul(_dropout(e, dropout_p), v[..., blk, :])  # (B,H,L,blk) @ (B,H,blk,Ev)
        m = m_new
    return (acc / denom.masked_fill(denom == 0, 1.0)).to(query.dtype)  # (B, H, L, Ev)


# ---------------------------------------------------------------------------------------------------------------
# Softmax axis, batch and heads (#12, textbook)


def softmax_wrong_axis(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: softmax over the query axis (dim=-2) instead of the key axis: columns sum to one, not rows."""
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s, dim=-2), dropout_p)  # BUG: dim=-2; (B, H, L, S)
    return _output(p, v, s, query.dtype)


def batch_coupled_softmax(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: batch elements influence each other: the softmax denominator is summed over the batch too.

    Right for B = 1; for B > 1 each row's weights are divided by a sum that includes the other batch
    elements' rows (a reduction over ``dim=(0, -1)`` where ``dim=-1`` was meant).
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))  # (B, H, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    s = s.masked_fill(~admissible_row, 0.0)
    m = s.detach().amax(dim=(0, -1), keepdim=True)  # (1, H, L, 1)
    e = torch.exp(s - m) * admissible_row  # (B, H, L, S)
    denom = e.sum(dim=(0, -1), keepdim=True)  # BUG: over the batch as well; (1, H, L, 1)
    p = e / denom.masked_fill(denom == 0, 1.0)  # (B, H, L, S)
    return _output(_dropout(p, dropout_p), v, s, query.dtype)


def heads_mixed(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: heads mixed: query head h reads the keys and values of head (h + 1) mod H (right for H = 1)."""
    q, k, v = _prepare(query, key, value, enable_gqa)
    k, v = k.roll(-1, dims=-3), v.roll(-1, dims=-3)  # BUG: (B, H, S, D) with head h holding head h + 1
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


def gqa_tiling(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #12: GQA tiles the kv heads (``repeat``: head h reads kv head h mod Hkv) instead of
    ``repeat_interleave`` (head h reads kv head h // (Hq / Hkv)). Right when Hkv == 1 or Hq == Hkv."""
    q, k, v = _prepare(query, key, value, False)
    if enable_gqa and k.size(-3) != q.size(-3):
        group = q.size(-3) // k.size(-3)
        k = torch.cat([k] * group, dim=-3)  # BUG: tiling; (B, Hkv, S, E) -> (B, Hq, S, E)
        v = torch.cat([v] * group, dim=-3)  # BUG: tiling; (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Layout and backward (#14, #15)


def _read_storage_as_contiguous(t: Tensor) -> Tensor:
    """BUGS.md #14: read ``t``'s storage row-major from its offset, as a kernel that ignores strides does.

    Reading past the end of the storage wraps around (standing in for reading whatever memory follows).
    """
    if t.is_contiguous():
        return t
    storage_numel = t.untyped_storage().nbytes() // t.element_size()
    flat = torch.as_strided(t, (storage_numel,), (1,), 0)  # (storage_numel,) the whole buffer
    index = (t.storage_offset() + torch.arange(t.numel(), device=t.device)) % storage_numel  # (numel,)
    return flat[index].view(t.shape)  # (numel,) -> t.shape, with contiguous strides


def strided_as_contiguous(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #14: non-contiguous inputs silently wrong: the kernel reads each input's storage as contiguous.

    Contiguous inputs are right; transposed (BLHD storage) and sliced (stride 2) inputs read the wrong
    elements. (A batch-expanded stride-0 input happens to read right: its storage repeats per batch.)
    """
    query, key, value = (_read_storage_as_contiguous(t) for t in (query, key, value))  # BUG: strides ignored
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


class _WrongSoftmaxBackward(torch.autograd.Function):
    """Attention with a hand-written backward that omits the softmax Jacobian's row-sum term."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
        s = _scores(q, k, scale, bias)  # (B, H, L, S)
        p = _softmax(s)  # (B, H, L, S)
        v = _exclude_unseen(v, s)  # (B, H, S, Ev)
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return torch.matmul(p, v)  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, p = ctx.saved_tensors
        d_v = torch.matmul(p.transpose(-2, -1), d_out)  # (B, H, S, L) @ (B, H, L, Ev) -> (B, H, S, Ev)
        d_p = torch.matmul(d_out, v.transpose(-2, -1))  # (B, H, L, Ev) @ (B, H, Ev, S) -> (B, H, L, S)
        d_s = p * d_p  # BUG: should be p * (d_p - (p * d_p).sum(-1, keepdim=True))
        d_q = torch.matmul(d_s, k) * ctx.scale  # (B, H, L, S) @ (B, H, S, E) -> (B, H, L, E)
        d_k = torch.matmul(d_s.transpose(-2, -1), q) * ctx.scale  # (B, H, S, L) @ (B, H, L, E) -> (B, H, S, E)
        return d_q, d_k, d_v, None, None


def wrong_softmax_backward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #15: the forward is exact, the hand-written backward is wrong (dQ and dK).

    The softmax backward drops the ``- rowsum(P * dP)`` term of the Jacobian, so dQ and dK are wrong for
    every upstream gradient; dV is right. Raises NotImplementedError for dropout_p > 0 (no dropout declared).
    """
    if dropout_p > 0.0:
        raise NotImplementedError("wrong_softmax_backward: dropout is not implemented")
    q, k, v = _prepare(query, key, value, enable_gqa)
    bias = _bias(attn_mask, is_causal, q, k)
    out = _WrongSoftmaxBackward.apply(q, k, v, bias, _scale(query, scale))  # (B, H, L, Ev)
    return out.to(query.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Purity, determinism and state (#17, #19, #20, #22)


def dropout_always_on(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #17: dropout still active with dropout_p = 0 (a module left in training mode with p = 0.1).

    The output depends on torch's global RNG state: repeated calls disagree, reseeding reproduces them.
    """
    p_drop = dropout_p if dropout_p > 0.0 else 0.1  # BUG: the training-mode default when 0 is asked for
    return _attend(query, key, value, attn_mask, p_drop, is_causal, scale, enable_gqa)


def nondeterministic_jitter(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #19-like: NONDETERMINISTIC output: a random relative perturbation of ~1e-3 on every call.

    Stands in for results that depend on the order of atomic adds. The noise comes from the operating
    system (os.urandom), not from torch's RNG, so reseeding torch does not make two calls agree.
    """
    out = _attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)  # (B, H, L, Ev)
    g = torch.Generator(device=out.device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    noise = torch.randn(out.shape, generator=g, dtype=torch.float64, device=out.device)  # (B, H, L, Ev)
    return (out.double() * (1.0 + 1e-3 * noise)).to(out.dtype)  # BUG: a different result every call


def mutates_input(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #20: the kernel writes its pre-scaled query (Q * scale) back into the caller's ``query``.

    The output and gradients of this call are right (they are computed from an out-of-place Q * scale);
    the caller's tensor is left scaled, so a second call, or anything else reading it, is wrong. A
    stride-0 (expanded) query cannot be written in place and is left alone.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    q = q * _scale(query, scale)  # (B, H, L, E), out of place: the graph never needs the original query
    if 0 not in query.stride():
        with torch.no_grad():
            query.copy_(q)  # BUG: uses the input as workspace
    s = _scores(q, k, 1.0, _bias(attn_mask, is_causal, q, k))
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


_SCORE_BUFFERS: dict[tuple[Any, ...], Tensor] = {}  # persistent score workspace, keyed by shape/dtype/device


def stale_score_buffer(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """BUGS.md #22: a persistent score buffer is accumulated into instead of overwritten (``beta=1``).

    The first call of each shape is right; every later call of the same shape adds the previous call's
    scores to its own, so repeated identical calls disagree. Clear ``_SCORE_BUFFERS`` to reset.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    raw = torch.matmul(q, k.transpose(-2, -1)) * _scale(query, scale)  # (B, H, L, E) @ (B, H, E, S) -> (B,H,L,S)
    slot = (tuple(raw.shape), raw.dtype, raw.device)
    stale = _SCORE_BUFFERS.get(slot)
    if stale is not None:
        raw = raw + stale  # BUG: the buffer is not zeroed between calls; (B, H, L, S)
    _SCORE_BUFFERS[slot] = raw.detach()
    bias = _bias(attn_mask, is_causal, q, k)
    s = raw if bias is None else (raw + bias).masked_fill(bias == NEG_INF, NEG_INF)  # (B, H, L, S)
    p = _dropout(_softmax(s), dropout_p)
    return _output(p, v, s, query.dtype)


def dropout_not_rescaled(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Textbook: dropout without the inverted-dropout rescale 1/(1 - p): the expectation shrinks by (1 - p).

    Registered with ``dropout=True`` declared: dropout is tested only where a target declares it.
    """
    q, k, v = _prepare(query, key, value, enable_gqa)
    s = _scores(q, k, _scale(query, scale), _bias(attn_mask, is_causal, q, k))
    p = _softmax(s)  # (B, H, L, S)
    if dropout_p > 0.0:
        p = p * (torch.rand(p.shape, device=p.device) >= dropout_p)  # BUG: no / (1 - dropout_p)
    return _output(p, v, s, query.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Registry

Mutant = tuple[Callable[..., Tensor], str] | tuple[Callable[..., Tensor], str, dict[str, Any]]

MUTANTS: dict[str, Mutant] = {
    # fully masked rows: NaN rows are a legal convention, so this one must declare the zeros it breaks
    "nan_masked_rows": (nan_masked_rows, "fully_masked_rows", {"masked_rows": "zeros"}),
    "naive_softmax_masked_rows": (naive_softmax_masked_rows, "fully_masked_rows"),
    "nan_grad_masked_rows": (nan_grad_masked_rows, "fully_masked_rows"),
    # masked keys and mask semantics
    "masked_value_nan_leak": (masked_value_nan_leak, "mask_semantics"),
    "finite_neg_inf_mask": (finite_neg_inf_mask, "mask_semantics"),
    "bool_mask_inverted": (bool_mask_inverted, "mask_semantics"),
    "mask_after_softmax": (mask_after_softmax, "mask_semantics"),
    "mask_batch0_broadcast": (mask_batch0_broadcast, "mask_semantics"),
    "mask_head0_broadcast": (mask_head0_broadcast, "mask_semantics"),
    "mask_times_scale": (mask_times_scale, "matches_oracle"),
    # causal alignment
    "bottom_right_causal": (bottom_right_causal, "no_future_leakage"),
    "causal_prefill_offset": (causal_prefill_offset, "no_future_leakage"),
    "decode_skips_causal": (decode_skips_causal, "no_future_leakage"),
    "causal_shows_next_token": (causal_shows_next_token, "no_future_leakage"),
    "causal_hides_diagonal": (causal_hides_diagonal, "matches_oracle"),
    # scale
    "scale_twice": (scale_twice, "scaling_variance"),
    "custom_scale_ignored": (custom_scale_ignored, "scaling_variance"),
    "no_scaling": (no_scaling, "scaling_variance"),
    "inverse_dk_scale": (inverse_dk_scale, "scaling_variance"),
    "inverse_sqrt_seq_len_scale": (inverse_sqrt_seq_len_scale, "scaling_variance"),
    # numerics
    "fp16_qk_overflow": (fp16_qk_overflow, "numerical_range"),
    "softmax_no_max_subtraction": (softmax_no_max_subtraction, "numerical_range"),
    "sink_double_counted": (sink_double_counted, "rows_sum_to_one"),
    "tail_tile_dropped": (tail_tile_dropped, "matches_oracle"),
    "softmax_wrong_axis": (softmax_wrong_axis, "rows_sum_to_one"),
    # batch and heads
    "batch_coupled_softmax": (batch_coupled_softmax, "batch_and_head_independence"),
    "heads_mixed": (heads_mixed, "batch_and_head_independence"),
    "gqa_tiling": (gqa_tiling, "batch_and_head_independence"),
    # layout and backward
    "strided_as_contiguous": (strided_as_contiguous, "layout_invariance"),
    "wrong_softmax_backward": (wrong_softmax_backward, "matches_oracle"),
    # purity, determinism, state, dropout
    "dropout_always_on": (dropout_always_on, "purity_and_determinism"),
    "nondeterministic_jitter": (nondeterministic_jitter, "purity_and_determinism"),
    "mutates_input": (mutates_input, "purity_and_determinism"),
    "stale_score_buffer": (stale_score_buffer, "purity_and_determinism"),
    # dropout is exercised only where declared
    "dropout_not_rescaled": (dropout_not_rescaled, "dropout_statistics", {"dropout": True}),
}


def declared_caps(name: str) -> dict[str, Any]:
    """The Capabilities fields a mutant declares (empty for most: the full SDPA contract)."""
    entry = MUTANTS[name]
    return dict(entry[2]) if len(entry) == 3 else {}
