"""lse: the returned log-sum-exp is log(sum_j e^(s_ij) [+ e^(sink)]) of the final logits, natural log.

The final logits are scale * q . k, soft-capped, plus the float mask, -inf where the mask, is_causal or the window
exclude a key; a sink is one more logit. lse is what split-KV, cascade and ring attention merge partial results
with, so the checks include the merge identity they rely on. They catch the lse bugs of KERNELS.md: base 2 under a
natural-log contract (tokenspeed PR#571, FlashInfer #2113), the base conversion applied twice (pytorch#181645),
the sink left out, and the wrong value on rows with no key (FlashAttention writes +inf there, declared).
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from attncheck.errors import PropertyFailure
from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, live_rows, observe, require
from attncheck.properties.contract import Target
from attncheck.properties.features import FeatureProblem, expected, expected_lse, feature_problems, require_feature
from attncheck.properties.problems import PRECISE
from attncheck.reference.attention import attention_logits, expand_kv_heads, merge_masks


def lse_rows(p: FeatureProblem, mask: torch.Tensor | None, alignment: str) -> torch.Tensor:
    """(B, Hq, L) bool: rows whose lse is finite, those with an admissible key or a sink."""
    live = live_rows(p, None if mask is None else mask.cpu(), alignment).squeeze(-1)  # (B, Hq, L)
    return live | p.sinks


@prop("lse")
@given(data=st.data())
def test_lse_matches_oracle(target: Target, data: st.DataObject) -> None:
    """lse (B, Hq, L) = the float64 oracle's logsumexp of the final logits (every declared feature drawn), natural
    log; a base-2 lse, or one multiplied by ln 2, is named as such."""
    require_feature(target, "lse")
    align = target.caps.alignment
    problem = feature_problems(target.caps, window=True, softcap=True, sinks=True, dtypes=PRECISE)
    p = data.draw(problem, label="problem")
    q, k, v, mask = p.tensors(target.device)
    out, lse = target(q, k, v, **p.call_kwargs(mask, target.device), return_lse=True)
    rows = lse_rows(p, mask, align).to(lse.device)  # (B, Hq, L)
    ref, tol = expected_lse(target, p, q, k, v, mask, lse.dtype)
    features = ", ".join(f"{f}={getattr(p, f)}" for f in ("window", "softcap") if getattr(p, f) is not None)
    what = f"lse vs the float64 oracle's logsumexp of the final logits ({features or 'no window, no softcap'}"
    what += ", with sinks)" if p.sinks else ")"
    try:
        assert_close(lse, ref, tol, what, p, where=rows)
    except PropertyFailure:
        for factor, named in ((math.log(2), "in base 2 (lse x ln 2 matches)"), (1 / math.log(2), "multiplied by ln 2")):
            off = torch.where(rows, (lse.double() * factor - ref).abs().nan_to_num(math.inf), 0.0)  # (B, Hq, L)
            check(float(off.max()) > tol.value, f"{what}: the lse is {named}; declare --cap lse_base=2 if by design", p)
        raise
    out_ref, out_tol = expected(target, p, q, k, v, mask)
    live = live_rows(p, mask, align).to(out.device)
    assert_close(out, out_ref, out_tol, "output of the return_lse call vs the float64 oracle", p, where=live)


@prop("lse")
@given(data=st.data())
def test_lse_between_max_and_max_plus_log_n(target: Target, data: st.DataObject) -> None:
    """max_j s_ij <= lse_i <= max_j s_ij + log n_i over the n_i admissible final logits of row i (a sink counts)."""
    require_feature(target, "lse")
    align = target.caps.alignment
    p = data.draw(feature_problems(target.caps, window=True, softcap=True, sinks=True, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    _, lse = target(q, k, v, **kwargs, return_lse=True)
    q64, k64, v64 = (t.double().cpu() for t in (q, k, v))
    k64, _ = expand_kv_heads(k64, v64, p.Hq)  # (B, Hkv, S, E) -> (B, Hq, S, E)
    bias = None if mask is None else mask.cpu() if mask.dtype == torch.bool else mask.double().cpu()
    merged = merge_masks(bias, p.is_causal, p.L, p.S, align, window=p.window)  # type: ignore[arg-type]
    s = attention_logits(q64, k64, merged, p.scale, softcap=p.softcap)  # (B, Hq, L, S) final logits
    sinks = p.sink_logits()
    if sinks is not None:
        s = torch.cat([s, sinks.double()[None, :, None, None].expand(p.B, -1, p.L, 1)], dim=-1)  # (B, Hq, L, S + 1)
    n = (s != -torch.inf).sum(-1)  # (B, Hq, L) admissible logits per row
    rows = n > 0
    assume(bool(rows.any()))
    s_max = s.amax(-1)  # (B, Hq, L)
    _, tol = expected_lse(target, p, q, k, v, mask, lse.dtype)
    got = lse.double().cpu()
    below = torch.where(rows, s_max - got, 0.0)  # > 0: lse under the largest logit
    above = torch.where(rows, got - (s_max + n.clamp(min=1).log()), 0.0)  # > 0: lse over max + log n
    for name, excess in (("below max_j s_ij", below), ("above max_j s_ij + log n_i", above)):
        worst = float(excess.nan_to_num(math.inf).max())
        i = int(excess.nan_to_num(math.inf).flatten().argmax())
        check(
            worst <= tol.value,
            f"lse is {name} by {worst:.3g} (budget {tol.explain()}): row {i} (flattened) has lse "
            f"{float(got.flatten()[i]):.6g}, max logit {float(s_max.flatten()[i]):.6g} over {int(n.flatten()[i])} keys",
            p,
            excess=worst,
        )


@prop("lse")
@given(data=st.data())
def test_two_halves_of_the_keys_merge_into_the_whole(target: Target, data: st.DataObject) -> None:
    """Keys split at m into A = [:m] and B = [m:] (the sink in A only): lse = logaddexp(lse_A, lse_B) and
    out = sigmoid(lse_A - lse_B) out_A + sigmoid(lse_B - lse_A) out_B equal the call on all keys (the merge of
    split-KV and cascade kernels: FlashAttention's flash_attn_combine, FlashInfer's merge_state)."""
    require_feature(target, "lse")
    require(
        target.caps.lengths == "any", f"the halves have other key counts than queries (lengths={target.caps.lengths})"
    )
    caps, align = target.caps, target.caps.alignment
    # no causal triangle or window: they are anchored to key positions, which the split moves
    problem = feature_problems(caps, softcap=True, sinks=True, dtypes=PRECISE, causal=False, min_keys=2)
    p = data.draw(problem, label="problem")
    m = data.draw(st.integers(1, p.S - 1), label="split")
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    out, lse = target(q, k, v, **kwargs, return_lse=True)
    adm = p.admissible(None if mask is None else mask.cpu(), align).to(q.device)  # (B, Hq, L, S)
    halves = []
    for keys, with_sink in ((slice(0, m), True), (slice(m, p.S), False)):
        part = dict(kwargs, attn_mask=None if mask is None else mask[..., keys])
        if not with_sink:
            part.pop("sinks", None)  # the sink joins one partial softmax, not both (mistral.rs PR#1872)
        o, l = target(q, k[..., keys, :], v[..., keys, :], **part, return_lse=True)
        seen = adm[..., keys].any(-1) | (with_sink and p.sinks)  # (B, Hq, L): rows with a logit in this half
        # a half with no logit for a row contributes e^-inf = 0, whatever the target returns there
        halves.append((torch.where(seen[..., None], o.double(), 0.0), l.double().masked_fill(~seen, -torch.inf)))
    (out_a, lse_a), (out_b, lse_b) = halves
    merged_lse = torch.logaddexp(lse_a, lse_b)  # (B, Hq, L)
    weight_a = torch.sigmoid(lse_a - lse_b).nan_to_num(0.0)[..., None]  # (B, Hq, L, 1); both -inf: an empty row
    merged = weight_a * out_a + (1 - weight_a) * out_b  # (B, Hq, L, Ev)
    rows = lse_rows(p, mask, align).to(lse.device)  # (B, Hq, L)
    _, tol = expected(target, p, q, k, v, mask)
    _, lse_tol = expected_lse(target, p, q, k, v, mask, lse.dtype)
    # three calls, each with its own rounding: twice the budget of one; the weights carry the lse's own rounding
    # (float32 for float64 inputs, as FlashAttention's): d sigmoid <= 1/4, so errors e_A + e_B <= 2 x lse budget
    # move weight_a by at most lse budget / 2, and the merge by that times |out_A - out_B| <= 2 max|V|
    lse_part = lse_tol.value * float(v.double().abs().max())
    what = f"output merged from keys [:{m}] and [{m}:] vs all keys (2 x budget {tol.explain()} + {lse_part:.3g} lse)"
    assert_close(merged, out, 2 * tol.value + lse_part, what, p, where=rows[..., None])
    what = f"logaddexp of the lse of keys [:{m}] and [{m}:] vs the lse of all keys (2 x budget {lse_tol.explain()})"
    assert_close(merged_lse, lse, 2 * lse_tol.value, what, p, where=rows)


@prop("lse")
@given(data=st.data())
def test_lse_of_rows_without_keys(target: Target, data: st.DataObject) -> None:
    """A row with no admissible key and no sink has the declared lse (-inf, or +inf where declared); with a sink,
    its lse is the sink."""
    require_feature(target, "lse")
    require(bool(target.caps.masks), "target declares no mask support")
    align, declared = target.caps.alignment, target.caps.lse_empty
    problem = feature_problems(target.caps, sinks=True, dtypes=PRECISE, masks=("bool", "float"), masked_rows=True)
    p = data.draw(problem, label="problem")
    q, k, v, mask = p.tensors(target.device)
    dead = ~live_rows(p, mask, align).squeeze(-1).to(q.device)  # (B, Hq, L)
    assume(bool(dead.any()))
    kwargs = p.call_kwargs(mask, target.device)
    sinks = kwargs.pop("sinks", None)
    _, lse = target(q, k, v, **kwargs, return_lse=True)
    values = sorted({str(float(x)) for x in lse[dead].tolist()})
    observe(target, "lse of rows without keys", ", ".join(values))
    check(
        declared == "any" or bool((lse[dead] == float(declared)).all()),
        f"rows with no admissible key return lse {', '.join(values)}; the declared value is {declared} "
        "(--cap lse_empty=...)",
        p,
    )
    if sinks is None:
        return
    _, lse_sink = target(q, k, v, **kwargs, sinks=sinks, return_lse=True)
    expected_sink = sinks.double()[None, :, None].expand_as(lse_sink)  # (Hq,) -> (B, Hq, L)
    _, tol = expected_lse(target, p, q, k, v, mask, lse_sink.dtype)
    assert_close(lse_sink, expected_sink, tol, "lse of rows whose only logit is the sink vs the sink", p, where=dead)
