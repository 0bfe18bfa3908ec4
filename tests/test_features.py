"""Meta-tests of the feature properties (window, softcap, sinks, lse): each mutant is caught, no variant is flagged.

The implementations here take the dense feature signature of docs/design.md, "Beyond SDPA"::

    f(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
      *, window=None, softcap=None, sinks=None, return_lse=False)            -> out | (out, lse)

each written as a function of a :class:`~tests.meta_call.Call` (the SDPA part, with its helpers) and a
:class:`Features`, returning (out, lse). A mutant is the correct pipeline :func:`_attend` with ONE bug, a real
class from KERNELS.md (the line marked ``# BUG``), and names the property that must catch it; a variant is a
correct implementation in another style (online softmax merging (out, lse) partials, a window as sliced keys, the
conventions a target declares: bottom-right alignment, a window size counting the query, a base-2 lse with +inf on
empty rows). The checks run as in tests/test_meta.py: derandomized, 20 examples each, without shrinking for
mutants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.properties.contract import FEATURES, Capabilities, Target
from attncheck.reference.attention import additive_bias, merge_masks
from attncheck.targets import resolve
from tests.meta_call import NEG_INF, TIMEOUT, Call, masked_scores, zero_unseen_values
from tests.test_meta import CATCH_SETTINGS, run_property

FEATURE_PROPERTIES = ("window", "softcap", "sinks", "lse")
# A mutant only has to be caught: no shrinking (tests/test_meta.py shrinks), which is most of a failing check's time


@dataclass(frozen=True)
class Features:
    """The feature arguments of one call."""

    window: tuple[int, int] | None = None
    softcap: float | None = None
    sinks: Tensor | None = None  # (Hq,)


Body = Callable[[Call, Features], tuple[Tensor, Tensor]]  # -> (out (B, Hq, L, Ev), lse (B, Hq, L))


def as_feature_sdpa(body: Body) -> Callable[..., Any]:
    """``body`` as a callable of the dense feature signature."""

    def attend(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        window: tuple[int, int] | None = None,
        softcap: float | None = None,
        sinks: Tensor | None = None,
        return_lse: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if dropout_p:
            raise NotImplementedError("no dropout (not declared)")
        c = Call(query, key, value, attn_mask, 0.0, is_causal, scale, enable_gqa)
        out, lse = body(c, Features(window, softcap, sinks))
        return (out, lse) if return_lse else out

    attend.__name__ = body.__name__
    return attend


@dataclass(frozen=True)
class Impl:
    """A registered implementation: its body, its declaration and (mutants) the property that must catch it."""

    name: str
    body: Body
    caps: Capabilities
    property: str | None  # None: a correct variant

    def target(self) -> Target:
        kind = "variant" if self.property is None else "mutant"
        return Target(f"{kind}:{self.name}", as_feature_sdpa(self.body), self.caps, timeout=TIMEOUT)


MUTANTS: dict[str, Impl] = {}
VARIANTS: dict[str, Impl] = {}
DECLARED: dict[str, Any] = {"features": frozenset(FEATURES), "masked_rows": "zeros", "masked_values": "ignored"}


def mutant(property_name: str, **capabilities: Any) -> Callable[[Body], Body]:
    def register(body: Body) -> Body:
        MUTANTS[body.__name__] = Impl(body.__name__, body, Capabilities(**DECLARED | capabilities), property_name)
        return body

    return register


def variant(**capabilities: Any) -> Callable[[Body], Body]:
    def register(body: Body) -> Body:
        VARIANTS[body.__name__] = Impl(body.__name__, body, Capabilities(**DECLARED | capabilities), None)
        return body

    return register


# ---------------------------------------------------------------------------------------------------------------
# The correct pipeline: a mutant changes one of its steps (a keyword below, or its arguments).


def _attend(
    c: Call,
    f: Features,
    *,
    causal_alignment: str = "top-left",
    window_alignment: str = "top-left",
    cap_after_masking: bool = False,
    cap_of_biased_logits: bool = False,
    cap_before_scaling: bool = False,
    sink_value: bool = False,
    lse_with_sink: bool = True,
) -> tuple[Tensor, Tensor]:
    """Visibility mask (mask, causal triangle, window band), logits (scale, softcap, bias), a sink column, safe
    softmax, P V and lse. Returns (out in the input dtype, lse in the working dtype)."""
    q, k, v = c.qkv()  # (B, Hq, L, E), (B, Hq, S, E), (B, Hq, S, Ev) in the working dtype
    L, S = c.L, c.S
    mask = merge_masks(c.attn_mask, c.is_causal, L, S, causal_alignment, q.device)  # type: ignore[arg-type]
    mask = merge_masks(mask, False, L, S, window_alignment, q.device, window=f.window)  # type: ignore[arg-type]
    s = torch.matmul(q, k.transpose(-2, -1))  # (B, Hq, L, E) @ (B, Hq, E, S) -> (B, Hq, L, S)
    if f.softcap is not None and cap_before_scaling:
        s = f.softcap * torch.tanh(s / f.softcap)  # (the cap of the unscaled dot products)
    s = s * c.softmax_scale
    float_mask = c.attn_mask is not None and c.attn_mask.is_floating_point()
    if f.softcap is not None and cap_of_biased_logits and float_mask:
        s = f.softcap * torch.tanh((s + c.attn_mask.to(s.dtype)) / f.softcap)  # (x-transformers: bias, then cap)
        mask = merge_masks(None, c.is_causal, L, S, causal_alignment, q.device)  # type: ignore[arg-type]
        mask = merge_masks(mask, False, L, S, window_alignment, q.device, window=f.window)  # type: ignore[arg-type]
    elif f.softcap is not None and not cap_before_scaling and not cap_after_masking:
        s = f.softcap * torch.tanh(s / f.softcap)  # Gemma 2: capped before the mask
    s = masked_scores(s, additive_bias(mask, s.dtype))  # (B, Hq, L, S)
    if f.softcap is not None and cap_after_masking:
        s = f.softcap * torch.tanh(s / f.softcap)  # (-inf becomes -c)
    v_seen = zero_unseen_values(v, s)  # (B, Hq, S, Ev)
    if f.sinks is not None:
        sink = f.sinks.to(s.dtype)[:, None, None].expand(*s.shape[:-1], 1)  # (Hq,) -> (B, Hq, L, 1)
        s = torch.cat([s, sink], dim=-1)  # (B, Hq, L, S + 1): one more key
        value_of_sink = v.mean(-2, keepdim=True) if sink_value else torch.zeros_like(v[..., :1, :])  # (B, Hq, 1, Ev)
        v_seen = torch.cat([v_seen, value_of_sink], dim=-2)  # (B, Hq, S + 1, Ev)
    row = (s != NEG_INF).any(-1, keepdim=True)  # (B, Hq, L, 1)
    safe = s.masked_fill(~row, 0.0)  # (B, Hq, L, S [+ 1])
    p = torch.softmax(safe, dim=-1) * row  # (B, Hq, L, S [+ 1])
    out = torch.matmul(p, v_seen).to(c.query.dtype)  # (B, Hq, L, Ev)
    lse_logits = safe if lse_with_sink or f.sinks is None else safe[..., :S]
    lse_row = row if lse_with_sink or f.sinks is None else (s[..., :S] != NEG_INF).any(-1, keepdim=True)
    lse = torch.logsumexp(lse_logits.masked_fill(~lse_row, 0.0), -1).masked_fill(~lse_row.squeeze(-1), NEG_INF)
    return out, lse  # (B, Hq, L)


def _shift(window: tuple[int, int] | None, left: int, right: int) -> tuple[int, int] | None:
    """The window widened by ``left`` / ``right`` on its bounded sides."""
    if window is None:
        return None
    return (window[0] + left if window[0] >= 0 else -1, window[1] + right if window[1] >= 0 else -1)


# ---------------------------------------------------------------------------------------------------------------
# Mutants: window


@mutant("window")
def window_left_off_by_one(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """An HF-style size (keys including the query) passed as FlashAttention's left: one key too many
    (transformers#39408, Megatron-Bridge#2656)."""
    return _attend(c, replace(f, window=_shift(f.window, 1, 0)))  # BUG: left + 1


@mutant("window")
def window_right_off_by_one(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The right bound exclusive where it is inclusive: one key too few on the right."""
    return _attend(c, replace(f, window=_shift(f.window, 0, -1) if f.window and f.window[1] > 0 else f.window))  # BUG


@mutant("window")
def window_ignored(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The window accepted and dropped on one path (jax#32300: ignored when mask=None)."""
    return _attend(c, replace(f, window=None if c.attn_mask is None else f.window))  # BUG: no window without a mask


@mutant("window")
def window_left_bound_only(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """Only the left bound given to the kernel (jax PR#39576): the query sees the whole future."""
    return _attend(c, replace(f, window=None if f.window is None else (f.window[0], -1)))  # BUG: right ignored


@mutant("window", causal="bottom-right")
def window_top_left_under_bottom_right(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """A bottom-right target (declared) whose window band is aligned top-left: wrong whenever L != S."""
    return _attend(c, f, causal_alignment="bottom-right", window_alignment="top-left")  # BUG: band top-left


# Mutants: softcap


@mutant("softcap")
def softcap_ignored(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The cap accepted and never applied: byte-identical outputs for every cap (sgl-kernel-xpu PR#491)."""
    return _attend(c, replace(f, softcap=None))  # BUG


@mutant("softcap")
def softcap_after_masking(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """Cap after masking: tanh(-inf) = -1, so masked keys get logit -c and leak (FlashAttention PR#1025)."""
    return _attend(c, f, cap_after_masking=True)  # BUG


@mutant("softcap")
def softcap_of_the_biased_logits(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The cap of the logits after the float mask is added, c * tanh((s + bias) / c), boolean masks after it
    (x-transformers' Attend, attend.py:569-573): a -inf in a float mask becomes -c and its key leaks."""
    return _attend(c, f, cap_of_biased_logits=True)  # BUG


@mutant("softcap")
def softcap_unscaled(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The cap applied to q . k before the scale: c * tanh(q . k / c) * scale."""
    return _attend(c, f, cap_before_scaling=True)  # BUG


# Mutants: sinks


@mutant("sinks")
def sink_dropped(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The sink accepted and not applied (vllm PR#52148, PR#54568)."""
    return _attend(c, replace(f, sinks=None))  # BUG


@mutant("sinks")
def sink_scaled(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The sink multiplied by the softmax scale, as if it were a q . k product."""
    return _attend(c, replace(f, sinks=None if f.sinks is None else f.sinks * c.softmax_scale))  # BUG


@mutant("sinks")
def sink_counted_twice(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The sink added in each of two split-KV partitions (mistral.rs PR#1872): e^sink twice, sink + log 2."""
    return _attend(c, replace(f, sinks=None if f.sinks is None else f.sinks + math.log(2)))  # BUG


@mutant("sinks")
def sink_of_the_kv_head(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """Sinks indexed by the kv head h // G instead of the query head h (packed-GQA rows, sgl-kernel-xpu PR#254)."""
    if f.sinks is None:
        return _attend(c, f)
    group = c.query.size(-3) // c.key.size(-3)
    return _attend(c, replace(f, sinks=f.sinks[torch.arange(f.sinks.numel()) // group]))  # BUG


@mutant("sinks")
def sink_with_a_value(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The sink key given the mean value instead of a zero value vector."""
    return _attend(c, f, sink_value=True)  # BUG


# Mutants: lse


@mutant("lse")
def lse_in_base_2(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """log2 under a natural-log contract (tokenspeed PR#571, FlashInfer #2113)."""
    out, lse = _attend(c, f)
    return out, lse / math.log(2)  # BUG: ln(x) / ln 2 = log2(x)


@mutant("lse")
def lse_times_ln_2(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The base conversion applied twice (pytorch#181645: Flex FLASH returned lse * ln 2)."""
    out, lse = _attend(c, f)
    return out, lse * math.log(2)  # BUG


@mutant("lse")
def lse_without_the_sink(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The lse of the real keys only, while the output includes the sink."""
    return _attend(c, f, lse_with_sink=False)  # BUG


@mutant("lse")
def lse_of_unscaled_logits(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The lse of q . k before the scale."""
    out, _ = _attend(c, f)
    return out, _attend(c.replace(scale=1.0), f)[1]  # BUG


@mutant("lse")
def lse_zero_on_empty_rows(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """0 (log of a clamped sum) on rows with no admissible key, where -inf is declared."""
    out, lse = _attend(c, f)
    return out, lse.masked_fill(lse == NEG_INF, 0.0)  # BUG


# ---------------------------------------------------------------------------------------------------------------
# Correct variants


@variant()
def online_merge(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """Keys in blocks of 5, each block's (out_b, lse_b) in log space (P = e^(s - lse_b)), merged as split-KV does:
    lse = logaddexp(lse_a, lse_b), out = sigmoid(lse_a - lse_b) out_a + sigmoid(lse_b - lse_a) out_b; the sink is
    one more partial, (0, sink), merged once."""
    q, k, v = c.qkv()
    mask = merge_masks(c.attn_mask, c.is_causal, c.L, c.S, "top-left", q.device, window=f.window)
    bias = additive_bias(mask, q.dtype)
    s = torch.matmul(q, k.transpose(-2, -1)) * c.softmax_scale  # (B, Hq, L, S)
    if f.softcap is not None:
        s = f.softcap * torch.tanh(s / f.softcap)
    s = masked_scores(s, bias)
    v = zero_unseen_values(v, s)  # (B, Hq, S, Ev)
    out = torch.zeros(*s.shape[:-1], v.size(-1), dtype=s.dtype)  # (B, Hq, L, Ev)
    lse = torch.full(s.shape[:-1], NEG_INF, dtype=s.dtype)  # (B, Hq, L)
    partials = [(s[..., j : j + 5], v[..., j : j + 5, :]) for j in range(0, c.S, 5)]
    for s_b, v_b in partials:
        lse_b = torch.logsumexp(s_b, -1)  # (B, Hq, L); -inf for a block with no admissible key
        p_b = torch.exp(s_b - lse_b.unsqueeze(-1)).nan_to_num(0.0)  # (B, Hq, L, b); -inf - -inf = NaN -> 0
        out, lse = _merge(out, lse, torch.matmul(p_b, v_b), lse_b)
    if f.sinks is not None:
        sink = f.sinks.to(s.dtype)[:, None].expand_as(lse)  # (Hq,) -> (B, Hq, L)
        out, lse = _merge(out, lse, torch.zeros_like(out), sink)
    return out.to(c.query.dtype), lse


def _merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two partial softmaxes over disjoint keys (Milakov & Gimelshein 2018; FlashAttention-2, section 3.1)."""
    lse = torch.logaddexp(lse_a, lse_b)  # (B, Hq, L)
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)  # (B, Hq, L, 1); both empty: 0
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    return w_a * out_a + w_b * out_b, lse


@variant()
def sliced_keys(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """The window as slicing: query i attends to keys [i - left, i + right] cut out of K and V (FlashInfer's test),
    the rest (mask, causal) as a mask; the sink as an extra zero key."""
    q, k, v = c.qkv()
    bias = additive_bias(merge_masks(c.attn_mask, c.is_causal, c.L, c.S, "top-left", q.device), q.dtype)
    if bias is not None:
        bias = bias.expand(*bias.shape[:-2], c.L, c.S)  # (..., L, S): a key-padding (B, 1, 1, S) mask has one row
    left, right = f.window if f.window is not None else (-1, -1)
    outs, lses = [], []
    for i in range(c.L):
        lo = 0 if left < 0 else max(0, i - left)
        hi = c.S if right < 0 else max(lo, min(c.S, i + right + 1))
        row_bias = None if bias is None else bias[..., i : i + 1, lo:hi]  # (.., 1, w)
        s = torch.matmul(q[..., i : i + 1, :], k[..., lo:hi, :].transpose(-2, -1)) * c.softmax_scale  # (B, Hq, 1, w)
        if f.softcap is not None:
            s = f.softcap * torch.tanh(s / f.softcap)
        s = masked_scores(s, row_bias)
        v_i = zero_unseen_values(v[..., lo:hi, :], s)  # (B, Hq, w, Ev)
        if f.sinks is not None:
            s = torch.cat([s, f.sinks.to(s.dtype)[:, None, None].expand(*s.shape[:-1], 1)], -1)  # (B, Hq, 1, w + 1)
            v_i = torch.cat([v_i, torch.zeros_like(v[..., :1, :])], -2)  # (B, Hq, w + 1, Ev)
        row = (s != NEG_INF).any(-1, keepdim=True)  # (B, Hq, 1, 1)
        safe = s.masked_fill(~row, 0.0)
        outs.append(torch.matmul(torch.softmax(safe, -1) * row, v_i))  # (B, Hq, 1, Ev)
        lses.append(torch.logsumexp(safe, -1).masked_fill(~row.squeeze(-1), NEG_INF))  # (B, Hq, 1)
    return torch.cat(outs, -2).to(c.query.dtype), torch.cat(lses, -1)  # (B, Hq, L, Ev), (B, Hq, L)


@variant(causal="bottom-right")
def bottom_right(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """FlashAttention's convention: causal triangle and window aligned bottom-right (declared)."""
    return _attend(c, f, causal_alignment="bottom-right", window_alignment="bottom-right")


@variant(window_counts_self=True)
def window_size_counts_the_query(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """A window given as HF's size w (keys including the query's own): left = w - 1 (declared)."""
    return _attend(c, replace(f, window=_shift(f.window, -1, 0)))


@variant(lse_base="2", lse_empty="+inf")
def lse_base_2_plus_inf(c: Call, f: Features) -> tuple[Tensor, Tensor]:
    """lse in base 2, +inf on rows with no key (FlashAttention 2 writes +inf there), both declared."""
    out, lse = _attend(c, f)
    return out, (lse / math.log(2)).masked_fill(lse == NEG_INF, math.inf)


# ---------------------------------------------------------------------------------------------------------------


def test_every_feature_has_mutants_and_variants_in_every_convention() -> None:
    assert {m.property for m in MUTANTS.values()} == set(FEATURE_PROPERTIES)
    assert all(sum(m.property == p for m in MUTANTS.values()) >= 3 for p in FEATURE_PROPERTIES)
    assert len(VARIANTS) >= 5


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_feature_mutant_is_caught(name: str) -> None:
    m = MUTANTS[name]
    failures, passes, skips = run_property(m.target(), m.property, CATCH_SETTINGS)  # type: ignore[arg-type]
    assert failures, f"mutant {name!r} was not caught by {m.property} (passed: {passes}; skipped: {skips})"


@pytest.mark.parametrize("prop", FEATURE_PROPERTIES)
@pytest.mark.parametrize("name", [*sorted(VARIANTS), "reference"])
def test_correct_implementation_passes(name: str, prop: str) -> None:
    target = resolve("reference") if name == "reference" else VARIANTS[name].target()
    failures, passes, skips = run_property(target, prop)
    assert not failures, f"false alarm on the correct {name!r}: {failures}"
    assert passes, f"{name!r}: no check of {prop} ran (skipped: {skips})"


def test_a_cap_of_the_biased_logits_is_named() -> None:
    """The softcap check isolates the cause when the output is the cap of the biased logits."""
    failures, _, _ = run_property(MUTANTS["softcap_of_the_biased_logits"].target(), "softcap", CATCH_SETTINGS)  # type: ignore[arg-type]
    assert any("the cap of the logits *after* the float mask was added" in f for f in failures), failures
