"""Deliberately broken attention implementations: the meta-tests check that the suite catches each one.

Every mutant is a target in the SDPA convention (docs/design.md, "The target contract"), written as a
function of one :class:`~tests.meta_call.Call` and declared with ``@mutant("property", **capabilities)``::

    @mutant("scaling_variance")
    def no_scaling(c: Call) -> Tensor:
        return _attend(c.replace(scale=1.0))  # BUG: scale = 1

The decorator registers it in :data:`MUTANTS` (a :class:`Mutant`: name, SDPA callable, the catalog property
that must catch it, declared :class:`~attncheck.properties.contract.Capabilities`) and leaves the SDPA callable
under the function's name, so ``attncheck verify tests.mutants:no_scaling`` runs it too. The property is
checked against the stable catalog when the decorator is built; it is the most specific one, others may fail
too. Capabilities are declared only by the few bugs that are wrong relative to a declaration (the suite
observes the convention of fully masked rows, and whether NaN in masked-out values reaches the output, and fails
a target only for a convention it declared and does not keep; dropout is tested only where declared).

Each mutant carries exactly ONE bug, taken from a class of docs/bugs.md (cited as ``#n``) or from the
textbook mistakes listed at its end. Everything else is the correct pipeline of the helpers below (upcast to
float32 for half inputs, repeat_interleave GQA, -inf masking that keeps NaN scores of masked keys out, a safe
softmax that gives fully masked rows zero weights and finite gradients, values of unseen keys excluded,
inverted dropout), so a mutant fails only what its bug breaks. The line that differs from the correct pipeline
is marked ``# BUG``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from attncheck.properties.catalog import PROPERTIES
from attncheck.reference.attention import additive_bias
from tests.meta_call import NEG_INF, Call, Decorator, Implementation, dropout, masked_scores, zero_unseen_values

BLOCK = 16  # key block of the tiled (online softmax) mutant


@dataclass(frozen=True)
class Mutant(Implementation):
    """A broken implementation and the catalog property that must catch it."""

    kind: ClassVar[str] = "mutant"
    property: str


MUTANTS: dict[str, Mutant] = {}


def mutant(property_name: str, **capabilities: Any) -> Decorator:
    """Register a function of a :class:`Call` as the mutant ``property_name`` must catch, declaring ``capabilities``."""
    if property_name not in PROPERTIES:  # checked here, when the decorator is built
        raise ValueError(f"unknown property {property_name!r}; the catalog has {PROPERTIES}")
    return Mutant.decorator(MUTANTS, capabilities, property=property_name)


# ---------------------------------------------------------------------------------------------------------------
# The correct pipeline, in steps: a mutant replaces exactly one of them.


def _scores(q: Tensor, k: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """Q K^T * scale + B; a masked key's score is -inf even where its raw score is NaN (docs/bugs.md #3)."""
    return masked_scores(torch.matmul(q, k.transpose(-2, -1)) * scale, bias)  # (B,H,L,E) @ (B,H,E,S) -> (B,H,L,S)


def _scored(c: Call, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(values, scores): upcast, GQA, Q K^T * scale + ``bias``; values (B, H, S, Ev), scores (B, H, L, S)."""
    q, k, v = c.qkv()
    return v, _scores(q, k, c.softmax_scale, bias)


def _softmax(s: Tensor, dim: int = -1) -> Tensor:
    """Safe softmax: a slice with no admissible entry gets zero weights and finite gradients (docs/bugs.md #1, #2)."""
    ok = (s != NEG_INF).any(dim, keepdim=True)  # (B, H, L, 1) for dim=-1
    return torch.softmax(s.masked_fill(~ok, 0.0), dim) * ok  # (B, H, L, S)


def _output(c: Call, p: Tensor, v: Tensor, s: Tensor) -> Tensor:
    """P V over the admissible values, cast back to the input dtype."""
    return torch.matmul(p, zero_unseen_values(v, s)).to(c.query.dtype)  # (B,H,L,S) @ (B,H,S,Ev) -> (B,H,L,Ev)


def _finish(c: Call, v: Tensor, s: Tensor) -> Tensor:
    """Softmax, dropout and P V from the scores s (B, H, L, S) and values v (B, H, S, Ev)."""
    return _output(c, dropout(_softmax(s), c.dropout_p), v, s)


def _attend(c: Call) -> Tensor:
    """The correct pipeline (equation (1) in the SDPA convention); mutants deviate from it in one step."""
    return _finish(c, *_scored(c, c.bias()))


# ---------------------------------------------------------------------------------------------------------------
# Fully masked rows (#1, #2) and masked keys (#3, #9, #16)


@mutant("fully_masked_rows", masked_rows="zeros")
def nan_masked_rows(c: Call) -> Tensor:
    """docs/bugs.md #1: NaN output for fully masked rows, while declaring the zeros convention.

    NaN rows are a legal convention on their own (the suite observes it), and here they stay in their rows:
    other rows and all gradients are exact. The bug is the broken promise: it is registered with
    ``masked_rows="zeros"`` declared, as a library documenting PyTorch's safe-softmax zeros would.
    """
    v, s = _scored(c, c.bias())
    out = _finish(c, v, s)  # (B, H, L, Ev)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    return torch.where(admissible_row, out, float("nan"))  # BUG: NaN rows although zeros are declared


@mutant("fully_masked_rows")
def naive_softmax_masked_rows(c: Call) -> Tensor:
    """docs/bugs.md #1 + #2: plain softmax over a row of -inf gives 0/0 = NaN weights there.

    Forward, the NaN stays in the fully masked rows (a legal convention by itself). Backward it does not:
    dV = P^T dO sums over query rows, and the NaN weights times the zero gradient of those rows give NaN
    (0 * NaN), so the value gradients of every key are NaN (pytorch#41508).
    """
    v, s = _scored(c, c.bias())
    p = dropout(torch.softmax(s, dim=-1), c.dropout_p)  # BUG: not a safe softmax; (B, H, L, S)
    return _output(c, p, v, s)


@mutant("fully_masked_rows")
def nan_grad_masked_rows(c: Call) -> Tensor:
    """docs/bugs.md #2: the NaN output of fully masked rows is patched to zeros after a plain softmax.

    ``torch.where`` (or ``nan_to_num``/``masked_fill``) on the output gives a clean zero forward, exactly the
    safe-softmax convention, but the NaN weights are still in the graph: dV = P^T dO multiplies them by the
    zero gradient of the patched rows, 0 * NaN = NaN, so every key's value gradient is NaN although no
    output that the loss sees is (pytorch#41508, fixed by a safe softmax in PR #131863).
    """
    v, s = _scored(c, c.bias())
    p = dropout(torch.softmax(s, dim=-1), c.dropout_p)  # (B, H, L, S), NaN in fully masked rows
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    out = torch.matmul(p, zero_unseen_values(v, s))  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return torch.where(admissible_row, out, 0.0).to(c.query.dtype)  # BUG: patches the forward only


@mutant("mask_semantics", masked_values="ignored")
def masked_value_nan_leak(c: Call) -> Tensor:
    """docs/bugs.md #3: NaN or inf in the value of a masked-out key leaks into the output.

    Masked weights are exactly 0 and the scores are masked correctly, but P V still multiplies every value:
    0 * NaN = NaN and 0 * inf = NaN (pytorch#101967). Caught by overwriting masked keys' values with NaN. torch
    SDPA does the same, so the suite only observes it by default: the bug is registered with
    ``masked_values="ignored"`` declared, as an implementation promising that masked values never matter would.
    """
    v, s = _scored(c, c.bias())
    p = dropout(_softmax(s), c.dropout_p)
    return torch.matmul(p, v).to(c.query.dtype)  # BUG: no exclusion of masked values; (B, H, L, Ev)


@mutant("mask_semantics")
def finite_neg_inf_mask(c: Call) -> Tensor:
    """docs/bugs.md #9: a finite "minus infinity" (BERT's extended mask ``(1 - mask) * -10000.0``) is added.

    exp(-1e4) underflows to 0, so ordinary inputs pass; but a masked key whose score exceeds the admissible
    ones by more than 1e4 revives, a NaN in a masked key stays NaN, and every key counts as seen (the values
    of masked keys enter P V). Fully masked rows become a softmax over the masked keys.
    """
    bias = c.bias()
    if bias is not None:
        bias = bias.clamp_min(-1e4)  # BUG: -inf replaced by -1e4; (..., L, S)
    return _finish(c, *_scored(c, bias))


@mutant("mask_semantics")
def bool_mask_inverted(c: Call) -> Tensor:
    """docs/bugs.md #16: boolean mask polarity inverted (True read as "masked out", the key_padding_mask sense)."""
    if c.attn_mask is not None and c.attn_mask.dtype == torch.bool:
        c = c.replace(attn_mask=~c.attn_mask)  # BUG: True = attend in the contract
    return _attend(c)


@mutant("mask_semantics")
def mask_after_softmax(c: Call) -> Tensor:
    """Textbook: the mask is applied after the softmax, without renormalisation.

    Weights are softmax(Q K^T * scale) * exp(B): masked entries are zero but rows no longer sum to one, and
    masked keys still take part in the normalisation.
    """
    q, k, v = c.qkv()
    bias = c.bias()
    p = _softmax(_scores(q, k, c.softmax_scale, None))  # (B, H, L, S) over every key
    if bias is not None:
        p = p * torch.exp(bias)  # BUG: mask after normalisation; (B, H, L, S)
    s = _scores(q, k, c.softmax_scale, bias)  # which keys are seen, for the output step
    return _output(c, dropout(p, c.dropout_p), v, s)


@mutant("mask_semantics")
def mask_batch0_broadcast(c: Call) -> Tensor:
    """docs/bugs.md #13: a per-batch mask is broadcast wrongly: batch element 0's mask is used for the whole batch."""
    if c.attn_mask is not None and c.attn_mask.dim() == 4:
        c = c.replace(attn_mask=c.attn_mask[:1])  # BUG: (B, H', L', S) -> (1, H', L', S)
    return _attend(c)


@mutant("mask_semantics")
def mask_head0_broadcast(c: Call) -> Tensor:
    """docs/bugs.md #13: a per-head mask is broadcast wrongly: head 0's mask is used for every head."""
    if c.attn_mask is not None and c.attn_mask.dim() == 4:
        c = c.replace(attn_mask=c.attn_mask[:, :1])  # BUG: (B', H, L', S) -> (B', 1, L', S)
    return _attend(c)


@mutant("matches_oracle", masks=frozenset({"float"}))  # its bug needs a float mask: the only kind it declares
def mask_times_scale(c: Call) -> Tensor:
    """docs/bugs.md #8 (and #22's order half): the additive float mask is multiplied by the scale.

    Computes (Q K^T + B) * scale instead of Q K^T * scale + B. A 0/-inf mask is unchanged by the scale, so
    only float masks with finite biases show it.
    """
    q, k, v = c.qkv()
    s = _scores(q, k, 1.0, c.bias()) * c.softmax_scale  # BUG: bias inside the scaling; (B, H, L, S)
    return _finish(c, v, s)


# ---------------------------------------------------------------------------------------------------------------
# Causal alignment (#4, #5, textbook)


def _shifted_causal(c: Call, offset: int) -> Tensor:
    """The correct pipeline with the causal triangle shifted: query i sees keys j <= i + offset (0 = contract)."""
    bias = c.replace(is_causal=False).bias()  # the attn_mask alone, (..., L, S) or None
    if c.is_causal:
        triangle = torch.ones(c.L, c.S, dtype=torch.bool, device=c.query.device).tril(offset)  # (L, S)
        bias = additive_bias(triangle, c.work_dtype) if bias is None else bias.masked_fill(~triangle, NEG_INF)
    return _finish(c, *_scored(c, bias))


@mutant("no_future_leakage")
def bottom_right_causal(c: Call) -> Tensor:
    """docs/bugs.md #4: is_causal aligned bottom-right (query i sees keys j <= i + S - L), undeclared.

    FlashAttention >= 2.1 convention; identical to top-left when L == S, leaks future keys when S > L.
    """
    return _finish(c, *_scored(c, c.bias(alignment="bottom-right")))  # BUG: offset S - L


@mutant("no_future_leakage")
def causal_prefill_offset(c: Call) -> Tensor:
    """docs/bugs.md #5: the L != S (prefill / KV-cache) causal path is off by one: query i sees keys j <= i + 1.

    The L == S path is right, so square problems pass; only chunked prefill or decode shapes leak a token.
    """
    return _shifted_causal(c, 1 if c.L != c.S else 0)  # BUG: offset 1 when L != S


@mutant("no_future_leakage")
def decode_skips_causal(c: Call) -> Tensor:
    """docs/bugs.md #5: a single-query (decode) call skips the causal mask (``is_causal = L > 1``).

    Right for a KV-cache decode step in the bottom-right sense, wrong under the top-left contract: query 0
    must see key 0 only.
    """
    return _attend(c.replace(is_causal=c.is_causal and c.L > 1))  # BUG: decode step assumed to see every key


@mutant("no_future_leakage")
def causal_shows_next_token(c: Call) -> Tensor:
    """Textbook: the causal mask shows the next token (``triu(diagonal=2)`` masking): keys j <= i + 1."""
    return _shifted_causal(c, 1)  # BUG: offset 1


@mutant("matches_oracle")
def causal_hides_diagonal(c: Call) -> Tensor:
    """Textbook: the causal mask hides the diagonal (``tril(diagonal=-1)``): query i sees keys j < i only.

    Leaks nothing, but query 0 sees no key at all and every other row loses its own token.
    """
    return _shifted_causal(c, -1)  # BUG: offset -1


# ---------------------------------------------------------------------------------------------------------------
# Scale (#6, #7, textbook)


@mutant("scaling_variance")
def scale_twice(c: Call) -> Tensor:
    """docs/bugs.md #6: the scale is applied twice (Q pre-scaled by a caller-side path, then the scores scaled)."""
    q, k, v = c.qkv()
    q = q * c.softmax_scale  # BUG: second application of the scale; (B, H, L, E)
    return _finish(c, v, _scores(q, k, c.softmax_scale, c.bias()))


@mutant("scaling_variance")
def custom_scale_ignored(c: Call) -> Tensor:
    """docs/bugs.md #7: the ``scale`` argument is ignored (a fast path always uses 1/sqrt(d_k))."""
    return _attend(c.replace(scale=None))  # BUG: scale dropped


@mutant("scaling_variance")
def no_scaling(c: Call) -> Tensor:
    """Textbook: no scaling at all, softmax(Q K^T) V: logit variance grows like d_k."""
    return _attend(c.replace(scale=1.0))  # BUG: scale = 1


@mutant("scaling_variance")
def inverse_dk_scale(c: Call) -> Tensor:
    """Textbook: default scale 1/d_k instead of 1/sqrt(d_k) (an explicit ``scale`` is honoured)."""
    if c.scale is None:
        c = c.replace(scale=1.0 / c.query.size(-1))  # BUG: 1/d_k
    return _attend(c)


@mutant("scaling_variance")
def inverse_sqrt_seq_len_scale(c: Call) -> Tensor:
    """Textbook: default scale 1/sqrt(S) (the key length) instead of 1/sqrt(d_k)."""
    if c.scale is None:
        c = c.replace(scale=1.0 / math.sqrt(c.S))  # BUG: 1/sqrt(seq_len)
    return _attend(c)


# ---------------------------------------------------------------------------------------------------------------
# Numerics (#10, #11, #21, #23, textbook)


@mutant("numerical_range")
def fp16_qk_overflow(c: Call) -> Tensor:
    """docs/bugs.md #10: Q K^T is computed in the input dtype and scaled afterwards.

    In float16 a raw dot product beyond 65504 is inf although the scaled logit is small; the softmax of inf
    is NaN. float32/float64/bfloat16 inputs have the range and pass.
    """
    qi, ki, _ = c.qkv(c.query.dtype)  # input dtype, kv heads expanded
    raw = torch.matmul(qi, ki.transpose(-2, -1))  # BUG: input dtype; (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    _, _, v = c.qkv()
    return _finish(c, v, masked_scores(raw.to(c.work_dtype) * c.softmax_scale, c.bias()))


@mutant("numerical_range")
def softmax_no_max_subtraction(c: Call) -> Tensor:
    """docs/bugs.md #11: softmax as exp(s) / sum exp(s) without subtracting the row max.

    exp overflows for logits above ~88 (float32) or ~709 (float64): inf / inf = NaN. Fully masked rows are
    handled (zero weights); only large-magnitude inputs fail.
    """
    v, s = _scored(c, c.bias())
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    e = torch.exp(s)  # BUG: no max subtraction; (B, H, L, S)
    p = e / e.sum(dim=-1, keepdim=True).masked_fill(~admissible_row, 1.0)  # (B, H, L, S)
    return _output(c, dropout(p, c.dropout_p), v, s)


@mutant("rows_sum_to_one")
def sink_double_counted(c: Call) -> Tensor:
    """docs/bugs.md #21: an attention sink counted where there is none: an implicit zero-logit key in the denominator.

    Weights are exp(s_j) / (exp(0) + sum_j exp(s_j)): rows sum to less than one (a "softmax-one" /
    off-by-one softmax), and adding a constant to a row's scores changes the output.
    """
    v, s = _scored(c, c.bias())
    m = s.detach().amax(dim=-1, keepdim=True).clamp_min(0.0)  # (B, H, L, 1), includes the sink's logit 0
    e = torch.exp(s - m)  # (B, H, L, S); 0 at masked keys
    p = e / (e.sum(dim=-1, keepdim=True) + torch.exp(-m))  # BUG: + exp(0 - m) for a sink key; (B, H, L, S)
    return _output(c, dropout(p, c.dropout_p), v, s)


@mutant("matches_oracle")
def tail_tile_dropped(c: Call) -> Tensor:
    """docs/bugs.md #23: a tiled (online softmax) kernel drops the partial tail tile of keys.

    Keys are processed in blocks of 16 with a running max and sum (FlashAttention's recurrence). The number
    of blocks is ``S // 16`` (floor, not ceil) whenever S > 16, so for S = 17, 33, 65... the last S % 16
    keys are ignored; S <= 16 takes a single-block path and is right.
    """
    v, s = _scored(c, c.bias())  # (B, H, S, Ev), (B, H, L, S)
    v = zero_unseen_values(v, s)  # (B, H, S, Ev)
    n_blocks = c.S // BLOCK if c.S > BLOCK else 1  # BUG: floor division; should be ceil(S / BLOCK)
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
        acc = acc * alpha + torch.matmul(dropout(e, c.dropout_p), v[..., blk, :])  # (B,H,L,blk) @ (B,H,blk,Ev)
        m = m_new
    return (acc / denom.masked_fill(denom == 0, 1.0)).to(c.query.dtype)  # (B, H, L, Ev)


# ---------------------------------------------------------------------------------------------------------------
# Softmax axis, batch and heads (#12, textbook)


@mutant("rows_sum_to_one")
def softmax_wrong_axis(c: Call) -> Tensor:
    """Textbook: softmax over the query axis (dim=-2) instead of the key axis: columns sum to one, not rows."""
    v, s = _scored(c, c.bias())
    p = dropout(_softmax(s, dim=-2), c.dropout_p)  # BUG: dim=-2; (B, H, L, S)
    return _output(c, p, v, s)


@mutant("batch_and_head_independence")
def batch_coupled_softmax(c: Call) -> Tensor:
    """Textbook: batch elements influence each other: the softmax denominator is summed over the batch too.

    Right for B = 1; for B > 1 each row's weights are divided by a sum that includes the other batch
    elements' rows (a reduction over ``dim=(0, -1)`` where ``dim=-1`` was meant).
    """
    v, s = _scored(c, c.bias())  # (B, H, S, Ev), (B, H, L, S)
    admissible_row = (s != NEG_INF).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    s = s.masked_fill(~admissible_row, 0.0)
    m = s.detach().amax(dim=(0, -1), keepdim=True)  # (1, H, L, 1)
    e = torch.exp(s - m) * admissible_row  # (B, H, L, S)
    denom = e.sum(dim=(0, -1), keepdim=True)  # BUG: over the batch as well; (1, H, L, 1)
    p = e / denom.masked_fill(denom == 0, 1.0)  # (B, H, L, S)
    return _output(c, dropout(p, c.dropout_p), v, s)


@mutant("batch_and_head_independence")
def heads_mixed(c: Call) -> Tensor:
    """Textbook: heads mixed: query head h reads the keys and values of head (h + 1) mod H (right for H = 1)."""
    q, k, v = c.qkv()
    k, v = k.roll(-1, dims=-3), v.roll(-1, dims=-3)  # BUG: (B, H, S, D) with head h holding head h + 1
    return _finish(c, v, _scores(q, k, c.softmax_scale, c.bias()))


@mutant("batch_and_head_independence")
def gqa_tiling(c: Call) -> Tensor:
    """docs/bugs.md #12: GQA tiles the kv heads (``repeat``: head h reads kv head h mod Hkv) instead of
    ``repeat_interleave`` (head h reads kv head h // (Hq / Hkv)). Right when Hkv == 1 or Hq == Hkv."""
    q, k, v = c.qkv(expand_kv=False)
    if c.enable_gqa:
        group = q.size(-3) // k.size(-3)
        k, v = (torch.cat([t] * group, dim=-3) for t in (k, v))  # BUG: tiling; (B, Hkv, S, D) -> (B, Hq, S, D)
    return _finish(c, v, _scores(q, k, c.softmax_scale, c.bias()))


# ---------------------------------------------------------------------------------------------------------------
# Layout and backward (#14, #15)


def _read_storage_as_contiguous(t: Tensor) -> Tensor:
    """docs/bugs.md #14: read ``t``'s storage row-major from its offset, as a kernel that ignores strides does.

    Reading past the end of the storage wraps around (standing in for reading whatever memory follows).
    """
    if t.is_contiguous():
        return t
    storage_numel = t.untyped_storage().nbytes() // t.element_size()
    flat = torch.as_strided(t, (storage_numel,), (1,), 0)  # (storage_numel,) the whole buffer
    index = (t.storage_offset() + torch.arange(t.numel(), device=t.device)) % storage_numel  # (numel,)
    return flat[index].view(t.shape)  # (numel,) -> t.shape, with contiguous strides


@mutant("layout_invariance")
def strided_as_contiguous(c: Call) -> Tensor:
    """docs/bugs.md #14: non-contiguous inputs silently wrong: the kernel reads each input's storage as contiguous.

    Contiguous inputs are right; transposed (BLHD storage) and sliced (stride 2) inputs read the wrong
    elements. (A batch-expanded stride-0 input happens to read right: its storage repeats per batch.)
    """
    query, key, value = (_read_storage_as_contiguous(t) for t in (c.query, c.key, c.value))  # BUG: strides ignored
    return _attend(c.replace(query=query, key=key, value=value))


class _WrongSoftmaxBackward(torch.autograd.Function):
    """Attention with a hand-written backward that omits the softmax Jacobian's row-sum term."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
        s = _scores(q, k, scale, bias)  # (B, H, L, S)
        p = _softmax(s)  # (B, H, L, S)
        v = zero_unseen_values(v, s)  # (B, H, S, Ev)
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


@mutant("matches_oracle")
def wrong_softmax_backward(c: Call) -> Tensor:
    """docs/bugs.md #15: the forward is exact, the hand-written backward is wrong (dQ and dK).

    The softmax backward drops the ``- rowsum(P * dP)`` term of the Jacobian, so dQ and dK are wrong for
    every upstream gradient; dV is right. Raises NotImplementedError for dropout_p > 0 (no dropout declared).
    """
    if c.dropout_p > 0.0:
        raise NotImplementedError("wrong_softmax_backward: dropout is not implemented")
    q, k, v = c.qkv()
    out = _WrongSoftmaxBackward.apply(q, k, v, c.bias(), c.softmax_scale)  # (B, H, L, Ev)
    return out.to(c.query.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Purity, determinism and state (#17, #19, #20, #22)


@mutant("purity_and_determinism")
def dropout_always_on(c: Call) -> Tensor:
    """docs/bugs.md #17: dropout still active with dropout_p = 0 (a module left in training mode with p = 0.1).

    The output depends on torch's global RNG state: repeated calls disagree, reseeding reproduces them.
    """
    p_drop = c.dropout_p if c.dropout_p > 0.0 else 0.1  # BUG: the training-mode default when 0 is asked for
    return _attend(c.replace(dropout_p=p_drop))


@mutant("purity_and_determinism")
def nondeterministic_jitter(c: Call) -> Tensor:
    """docs/bugs.md #19-like: NONDETERMINISTIC output: a random relative perturbation of ~1e-3 on every call.

    Stands in for results that depend on the order of atomic adds. The noise comes from the operating
    system (os.urandom), not from torch's RNG, so reseeding torch does not make two calls agree.
    """
    out = _attend(c)  # (B, H, L, Ev)
    g = torch.Generator(device=out.device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    noise = torch.randn(out.shape, generator=g, dtype=torch.float64, device=out.device)  # (B, H, L, Ev)
    return (out.double() * (1.0 + 1e-3 * noise)).to(out.dtype)  # BUG: a different result every call


@mutant("purity_and_determinism")
def mutates_input(c: Call) -> Tensor:
    """docs/bugs.md #20: the kernel writes its pre-scaled query (Q * scale) back into the caller's ``query``.

    The output and gradients of this call are right (they are computed from an out-of-place Q * scale);
    the caller's tensor is left scaled, so a second call, or anything else reading it, is wrong. A
    stride-0 (expanded) query cannot be written in place and is left alone.
    """
    q, k, v = c.qkv()
    q = q * c.softmax_scale  # (B, H, L, E), out of place: the graph never needs the original query
    if 0 not in c.query.stride():
        with torch.no_grad():
            c.query.copy_(q)  # BUG: uses the input as workspace
    return _finish(c, v, _scores(q, k, 1.0, c.bias()))


_SCORE_BUFFERS: dict[tuple[Any, ...], Tensor] = {}  # persistent score workspace, keyed by shape/dtype/device


@mutant("purity_and_determinism")
def stale_score_buffer(c: Call) -> Tensor:
    """docs/bugs.md #22: a persistent score buffer is accumulated into instead of overwritten (``beta=1``).

    The first call of each shape is right; every later call of the same shape adds the previous call's
    scores to its own, so repeated identical calls disagree. Clear ``_SCORE_BUFFERS`` to reset.
    """
    v, raw = _scored(c, None)  # (B, H, S, Ev), (B, H, L, S) unmasked
    slot = (tuple(raw.shape), raw.dtype, raw.device)
    stale = _SCORE_BUFFERS.get(slot)
    if stale is not None:
        raw = raw + stale  # BUG: the buffer is not zeroed between calls; (B, H, L, S)
    _SCORE_BUFFERS[slot] = raw.detach()
    return _finish(c, v, masked_scores(raw, c.bias()))


@mutant("dropout_statistics", dropout=True)
def dropout_not_rescaled(c: Call) -> Tensor:
    """Textbook: dropout without the inverted-dropout rescale 1/(1 - p): the expectation shrinks by (1 - p).

    Registered with ``dropout=True`` declared: dropout is tested only where a target declares it.
    """
    v, s = _scored(c, c.bias())
    p = _softmax(s)  # (B, H, L, S)
    if c.dropout_p > 0.0:
        p = p * (torch.rand(p.shape, device=p.device) >= c.dropout_p)  # BUG: no / (1 - dropout_p)
    return _output(c, p, v, s)


# ---------------------------------------------------------------------------------------------------------------
# Defects seen in attention code written outside this project (docs/bugs.md #4, #11; dtype; dropout)


@mutant("matches_oracle")
def masked_chunk_poisons_row(c: Call) -> Tensor:
    """docs/bugs.md #11: a chunked (ring-style) online softmax whose first chunk of keys is entirely -inf.

    Key chunks of 4 are visited last to first, as a ring passes them; the running-max rescale exp(m - m_new)
    is not guarded, so a row whose first visited chunk is fully masked computes exp(-inf - -inf) = NaN and the
    whole row is NaN although it has admissible keys (under is_causal, row 0 sees key 0 only).
    """
    v, s = _scored(c, c.bias())  # (B, H, S, Ev), (B, H, L, S)
    v = zero_unseen_values(v, s)  # (B, H, S, Ev)
    m = torch.full((*s.shape[:-1], 1), NEG_INF, dtype=s.dtype, device=s.device)  # (B, H, L, 1) running max
    denom = torch.zeros_like(m)  # (B, H, L, 1) running sum of exp
    acc = torch.zeros((*s.shape[:-1], v.size(-1)), dtype=s.dtype, device=s.device)  # (B, H, L, Ev)
    for start in reversed(range(0, c.S, 4)):
        blk = slice(start, start + 4)
        m_new = torch.maximum(m, s[..., blk].detach().amax(dim=-1, keepdim=True))  # (B, H, L, 1)
        alpha = torch.exp(m - m_new)  # BUG: NaN when m = m_new = -inf (no -inf guard)
        e = torch.exp(s[..., blk] - m_new)  # (B, H, L, blk)
        denom = denom * alpha + e.sum(dim=-1, keepdim=True)
        acc = acc * alpha + torch.matmul(e, v[..., blk, :])  # (B, H, L, blk) @ (B, H, blk, Ev)
        m = m_new
    return (acc / denom.masked_fill(denom == 0, 1.0)).to(c.query.dtype)  # (B, H, L, Ev)


@mutant("no_future_leakage")
def causal_alignment_switches(c: Call) -> Tensor:
    """docs/bugs.md #4, #5: two code paths picked by shape: with fewer queries than keys the kernel assumes a
    decoding step and aligns the causal triangle bottom-right (query i sees keys up to i + S - L, the future
    under the top-left contract); with L >= S it is top-left."""
    alignment = "bottom-right" if c.L < c.S else "top-left"  # BUG: the contract is top-left for every shape
    return _finish(c, *_scored(c, c.bias(alignment=alignment)))


@mutant("matches_oracle")
def float64_returns_float32(c: Call) -> Tensor:
    """Textbook: a float64 call computed in float32 and returned as float32: the caller silently loses its dtype
    (seen in outside code: a kernel with a hard-coded float32 output buffer)."""
    out = _attend(c.replace(query=c.query.float(), key=c.key.float(), value=c.value.float()))
    return out  # BUG: not cast back to the input dtype (float32 for float64 inputs)


@mutant("dropout_statistics", dropout=True)
def dropout_renormalised(c: Call) -> Tensor:
    """Textbook: dropout that renormalises each row to sum to one after dropping (instead of the 1/(1 - p) rescale):
    kept weights are 1/kept-count, not 1/(S (1 - p))."""
    v, s = _scored(c, c.bias())
    p = dropout(_softmax(s), c.dropout_p)  # (B, H, L, S)
    if c.dropout_p > 0.0:
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)  # BUG: renormalised rows, not inverted dropout
    return _output(c, p, v, s)
