"""sinks: a learned logit per query head joins each row's softmax with a zero value (docs/design.md, "Beyond SDPA").

out_i = sum_j e^(s_ij) v_j / (e^(sink_h) + sum_j e^(s_ij)): one extra key whose logit is the sink (neither scaled
nor capped) and whose value is 0. The checks catch the sink bugs of KERNELS.md: a sink accepted and dropped
(vllm PR#52148, PR#54568, kekzl/imp#993), scaled, counted twice (mistral.rs PR#1872), indexed by the kv head or
by ``row % num_heads`` (modular PR#6591, sgl-kernel-xpu PR#254), and a row whose result depends on how many other
query rows are in the call (mlx#3452).
"""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, live_rows, require
from attncheck.properties.contract import Target
from attncheck.properties.features import expected, expected_lse, feature_problems, require_feature
from attncheck.properties.problems import PRECISE
from attncheck.reference.attention import additive_bias


@prop("sinks")
@given(data=st.data())
def test_sink_is_one_more_key_with_zero_value(target: Target, data: st.DataObject) -> None:
    """Output with ``sinks`` = the float64 oracle's extra key (logit = sink, value 0); and, where full float masks
    are declared, = the target's own call with a zero key appended whose float-mask logit is the sink."""
    require_feature(target, "sinks")
    caps, align = target.caps, target.caps.alignment
    p = data.draw(feature_problems(caps, sinks=True, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    out = target(q, k, v, **kwargs)
    sinks = kwargs["sinks"]  # (Hq,)
    ref, tol = expected(target, p, q, k, v, mask)
    # every row: one whose keys are all masked still has its sink, so its output is exactly 0 / e^sink = 0
    assert_close(out, ref, tol, "output with sinks vs the float64 oracle (one extra key of value 0)", p)
    live = live_rows(p, mask, align).to(out.device)
    if "float" not in caps.masks or "full" not in caps.mask_shapes or p.is_causal or caps.lengths == "equal":
        return  # the extra key needs a full float mask, no causal triangle to move, and S + 1 keys for L queries
    zero = torch.zeros(p.B, p.Hkv, 1, 1, dtype=q.dtype, device=q.device)  # (B, Hkv, 1, 1)
    k_plus = torch.cat([k, zero.expand(-1, -1, -1, p.E)], dim=-2)  # (B, Hkv, S + 1, E): q . 0 = 0
    v_plus = torch.cat([v, zero.expand(-1, -1, -1, p.Ev)], dim=-2)  # (B, Hkv, S + 1, Ev)
    bias = torch.zeros(p.B, p.Hq, p.L, p.S, dtype=q.dtype, device=q.device)  # (B, Hq, L, S)
    given = additive_bias(mask, q.dtype)  # 0 / -inf for a boolean mask, broadcasting to (B, Hq, L, S)
    bias = bias if given is None else bias + given
    sink_column = sinks.to(q.dtype)[None, :, None, None].expand(p.B, -1, p.L, 1)  # (Hq,) -> (B, Hq, L, 1)
    bias_plus = torch.cat([bias, sink_column], dim=-1)  # (B, Hq, L, S + 1)
    extra = target(q, k_plus, v_plus, bias_plus, scale=p.scale, enable_gqa=p.gqa)
    what = "output with sinks vs the same call without, plus a zero key whose float-mask logit is the sink"
    assert_close(out, extra, tol, what, p, where=live)


@prop("sinks")
@given(data=st.data())
def test_minus_infinity_sink_changes_nothing(target: Target, data: st.DataObject) -> None:
    """A sink of -inf (e^-inf = 0 in the denominator) gives the output without sinks."""
    require_feature(target, "sinks")
    p = data.draw(feature_problems(target.caps, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    dtype = torch.float64 if p.dtype == "float64" else torch.float32
    out = target(q, k, v, **p.call_kwargs(mask, target.device))
    sinks = torch.full((p.Hq,), -torch.inf, dtype=dtype, device=q.device)  # (Hq,)
    out_sink = target(q, k, v, **p.call_kwargs(mask, target.device), sinks=sinks)
    _, tol = expected(target, p, q, k, v, mask)
    live = live_rows(p, mask, target.caps.alignment).to(out.device)
    assert_close(out_sink, out, tol, "output with sinks = -inf vs without sinks", p, where=live)


@prop("sinks")
@given(data=st.data())
def test_sink_rescales_by_sigmoid_of_lse(target: Target, data: st.DataObject) -> None:
    """The target's own outputs: out_with_sink = out_without * sigmoid(lse_without - sink) and lse_with =
    logaddexp(lse_without, sink), the closed form vLLM PR#54568 validated against."""
    require_feature(target, "sinks")
    require_feature(target, "lse")
    p = data.draw(feature_problems(target.caps, sinks=True, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    sinks = kwargs.pop("sinks")  # (Hq,)
    out, lse = target(q, k, v, **kwargs, return_lse=True)
    out_sink, lse_sink = target(q, k, v, **kwargs, sinks=sinks, return_lse=True)
    live = live_rows(p, mask, target.caps.alignment).to(out.device)  # (B, Hq, L, 1)
    sink = sinks.double()[:, None]  # (Hq,) -> (Hq, 1), against (B, Hq, L)
    lse64 = lse.double().masked_fill(~live.squeeze(-1), -torch.inf)  # empty rows: e^lse = 0 whatever is declared
    kept = torch.sigmoid(lse64 - sink).unsqueeze(-1)  # (B, Hq, L, 1): the share of the real keys
    # both sides carry the target's rounding (two calls): twice the budget of one; kept carries the lse's own
    # rounding (float32 for float64 inputs, as FlashAttention's): d sigmoid <= 1/4, times |out| <= max|V|
    _, tol = expected(target, p, q, k, v, mask)
    _, lse_tol = expected_lse(target, p, q, k, v, mask, lse_sink.dtype)
    lse_part = lse_tol.value / 4 * float(v.double().abs().max())
    what = f"output with sinks vs out_without * sigmoid(lse_without - sink) (2 x budget {tol.explain()}"
    what += f" + {lse_part:.3g} lse)"
    assert_close(out_sink, out.double() * kept, 2 * tol.value + lse_part, what, p, where=live)
    what = f"lse with sinks vs logaddexp(lse_without, sink) (2 x budget {lse_tol.explain()})"
    assert_close(lse_sink, torch.logaddexp(lse64, sink), 2 * lse_tol.value, what, p)


@prop("sinks")
@given(data=st.data())
def test_query_row_independent_of_the_other_rows(target: Target, data: st.DataObject) -> None:
    """With sinks, row t of a call with L queries = the call with query t alone (no causal alignment to move)."""
    require_feature(target, "sinks")
    require(target.caps.lengths != "equal", "a call with one query needs L != S (the target declares lengths=equal)")
    p = data.draw(feature_problems(target.caps, sinks=True, dtypes=PRECISE, causal=False), label="problem")
    assume(p.L > 1)
    t = data.draw(st.integers(0, p.L - 1), label="t")
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    out = target(q, k, v, **kwargs)
    if mask is not None and p.mask_shape != "B11S":
        kwargs["attn_mask"] = mask[..., t : t + 1, :]  # (..., 1, S): the row's own mask
    one = target(q[..., t : t + 1, :], k, v, **kwargs)  # (B, Hq, 1, Ev)
    _, tol = expected(target, p, q, k, v, mask)
    live = live_rows(p, mask, target.caps.alignment)[..., t : t + 1, :].to(out.device)
    what = f"output {t} of a call with {p.L} query rows vs a call with query {t} alone (with sinks)"
    assert_close(one, out[..., t : t + 1, :], tol, what, p, where=live)


@prop("sinks")
@given(data=st.data())
def test_sinks_follow_their_query_heads(target: Target, data: st.DataObject) -> None:
    """Reversing the query heads with their sinks (and the kv heads, so every group keeps its kv head) reverses
    the output heads: each sink belongs to its query head, under GQA too."""
    require_feature(target, "sinks")
    p = data.draw(feature_problems(target.caps, sinks=True, dtypes=PRECISE), label="problem")
    if target.caps.gqa:
        p = p.replace(Hq=p.Hkv * max(2, p.Hq // p.Hkv))  # at least two query heads per kv head
    assume(p.Hq > 1)
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    out = target(q, k, v, **kwargs)
    flipped = dict(kwargs, sinks=kwargs["sinks"].flip(0))  # (Hq,) reversed
    if mask is not None and mask.dim() == 4 and mask.size(1) == p.Hq:
        flipped["attn_mask"] = mask.flip(1)  # (B, Hq, L, S): per-head masks follow their heads
    out_flipped = target(q.flip(1), k.flip(1), v.flip(1), **flipped)  # head h -> Hq - 1 - h reads Hkv - 1 - h // G
    _, tol = expected(target, p, q, k, v, mask)
    live = live_rows(p, mask, target.caps.alignment).to(out.device)
    what = f"output heads with query heads, kv heads and sinks reversed (Hq={p.Hq}, Hkv={p.Hkv}) vs reversed output"
    assert_close(out_flipped.flip(1), out, tol, what, p, where=live)
