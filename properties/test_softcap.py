"""softcap: the scaled logits s become c * tanh(s / c) before the mask (Gemma 2; docs/design.md, "Beyond SDPA").

The checks catch the softcap bugs of KERNELS.md: a cap accepted and ignored, so that outputs for different caps
are byte-identical (sglang#33915, sgl-kernel-xpu PR#491); a cap applied after masking, so that a masked key's
-inf becomes -c and the key leaks with small caps (FlashAttention PR#1025); a cap applied to the unscaled
logits.
"""

from __future__ import annotations

from typing import cast

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.errors import PropertyFailure
from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, judge_empty_rows, live_rows
from attncheck.properties.contract import Target
from attncheck.properties.features import FeatureProblem, expected, feature_problems, require_feature
from attncheck.properties.oracle import Budget
from attncheck.properties.problems import PRECISE
from attncheck.properties.test_rows_sum_to_one import identity_values, with_identity_room
from attncheck.reference.attention import expand_kv_heads, merge_masks

CAPS = (5.0, 50.0, None)  # compared pairwise where the logits are large (magnitude 10: |s| up to ~100s)


@prop("softcap")
@given(data=st.data())
def test_softcap_matches_oracle(target: Target, data: st.DataObject) -> None:
    """Output with ``softcap=c`` = the float64 oracle's c * tanh(scale * q . k / c), capped before the mask."""
    require_feature(target, "softcap")
    align = target.caps.alignment
    p = data.draw(feature_problems(target.caps, softcap=True, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask, target.device))
    live = live_rows(p, mask, align).to(out.device)
    ref, tol = expected(target, p, q, k, v, mask)
    what = f"output with softcap={p.softcap:g} vs the float64 oracle"
    _capped_before_the_float_mask(out, ref, tol, what, p, (q, k, v, mask), align, live)
    judge_empty_rows(target, out, v, live, p)


def _capped_before_the_float_mask(
    out: torch.Tensor,
    ref: torch.Tensor,
    tol: Budget,
    what: str,
    p: FeatureProblem,
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
    align: str,
    live: torch.Tensor,
) -> None:
    """assert_close(out, ref), and where it fails with a float mask and the output is instead the cap of the
    *biased* logits, c tanh((s + bias) / c), say so: that is the cause, isolated (a -inf in the float mask then
    becomes -c and its key gets weight)."""
    try:
        assert_close(out, ref, tol, what, p, where=live)
    except PropertyFailure:
        q, k, v, mask = tensors
        if p.softcap is None or mask is None or mask.dtype == torch.bool:
            raise
        after = _cap_after_the_float_mask(q, k, v, mask, p, align, p.softcap)
        both = torch.isfinite(after) & live.expand_as(after).to(after.device)
        if not bool(both.any()) or float((out.double() - after)[both].abs().max()) > tol.value:
            raise
        leak = (
            " (here a -inf in the float mask becomes -c and its key gets weight)" if bool(mask.isneginf().any()) else ""
        )
        check(
            False,
            f"{what}: the output is c tanh((s + float mask) / c), the cap of the logits *after* the float mask was "
            f"added (within {tol.explain()}); the contract caps s = scale q . k first and adds the mask after "
            f"(Gemma 2){leak}",
            p,
        )


def _cap_after_the_float_mask(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, p: FeatureProblem, align: str, c: float
) -> torch.Tensor:
    """Float64 attention whose logits are c tanh((scale q . k + bias) / c), then the causal band and window (the
    order of a target that caps the biased logits); rows left without a key give 0."""
    q64, k64, v64 = (t.double() for t in (q, k, v))
    k64, v64 = expand_kv_heads(k64, v64, q64.size(-3))  # (B, Hkv, S, D) -> (B, Hq, S, D)
    scale = p.scale if p.scale is not None else q64.size(-1) ** -0.5
    s = scale * q64 @ k64.transpose(-2, -1) + bias.double()  # (B, Hq, L, E) @ (B, Hq, E, S) -> (B, Hq, L, S)
    s = c * torch.tanh(s / c)  # -inf in the bias becomes -c
    band = merge_masks(None, p.is_causal, p.L, p.S, align, q.device, window=p.window)  # type: ignore[arg-type]  # (L, S) bool or None
    if band is not None:
        s = s.masked_fill(~band, float("-inf"))
    weights = torch.softmax(s, dim=-1).nan_to_num(0.0)  # (B, Hq, L, S); rows without a key: 0
    return weights @ v64  # (B, Hq, L, S) @ (B, Hq, S, Ev) -> (B, Hq, L, Ev)


@prop("softcap")
@given(data=st.data())
def test_different_caps_give_different_outputs(target: Target, data: st.DataObject) -> None:
    """With large logits, caps 5, 50 and none give outputs that differ (a dropped cap is byte-identical), each
    equal to its own oracle."""
    require_feature(target, "softcap")
    problem = feature_problems(target.caps, dtypes=PRECISE, magnitudes=st.just(10.0), custom_scale=False, min_keys=2)
    p = data.draw(problem, label="problem")
    q, k, v, mask = p.tensors(target.device)
    outs, refs = {}, {}
    for c in CAPS:
        outs[c] = target(q, k, v, **p.replace(softcap=c).call_kwargs(mask, target.device))
        refs[c] = expected(target, p.replace(softcap=c), q, k, v, mask)
    align = target.caps.alignment
    live = live_rows(p, mask, align).to(q.device)
    for i, a in enumerate(CAPS):
        for b in CAPS[i + 1 :]:
            (ref_a, tol_a), (ref_b, tol_b) = refs[a], refs[b]
            apart = float(((ref_a - ref_b).abs() * live).max())
            if apart <= tol_a.value + tol_b.value:
                continue  # these inputs do not tell the two caps apart
            check(
                not torch.equal(outs[a], outs[b]),
                f"outputs with softcap={a} and softcap={b} are byte-identical, where the float64 oracle's differ by "
                f"{apart:.3g}: the cap is ignored",
                p,
                difference=apart,
            )
    for c in CAPS:
        what = f"output with softcap={c} vs the float64 oracle"
        ref, tol = refs[c]
        _capped_before_the_float_mask(outs[c], ref, tol, what, p.replace(softcap=c), (q, k, v, mask), align, live)


@prop("softcap")
@given(data=st.data())
def test_capped_weights_are_bounded(target: Target, data: st.DataObject) -> None:
    """With V = I (the output is the weight row): capped logits lie in (-c, c), so the weights of a row's admissible
    keys differ by at most e^(2c), and masked keys still get exactly 0 (a cap after masking turns -inf into -c)."""
    require_feature(target, "softcap")
    caps = target.caps
    problem = feature_problems(
        caps, dtypes=PRECISE, masks=("none", "bool"), magnitudes=st.just(10.0), custom_scale=False, min_keys=2
    )
    drawn = data.draw(problem, label="problem")
    c = data.draw(st.sampled_from((0.5, 1.0, 2.0)), label="softcap")
    p = cast(FeatureProblem, with_identity_room(drawn.replace(softcap=c), caps.value_dim))
    q, k, v, mask = p.tensors(target.device)
    eye = identity_values(p, v).contiguous()  # (B, Hkv, S, Ev)
    weights = target(q, k, eye, **p.call_kwargs(mask, target.device))[..., : p.S].double()  # (B, Hq, L, S)
    _, tol = expected(target, p, q, k, eye, mask)
    adm = p.admissible(mask, caps.alignment).to(weights.device)  # (B, Hq, L, S)
    live = adm.any(-1)  # (B, Hq, L)
    leaked = weights.masked_select(~adm & live.unsqueeze(-1))
    worst = float(leaked.abs().max()) if leaked.numel() else 0.0
    check(
        worst == 0.0,
        f"keys excluded by the mask or the causal triangle get weight up to {worst:.3g} with softcap={c:g} "
        "(capped after masking?)",
        p,
        weight=worst,
    )
    w_max = torch.where(adm, weights, float("-inf")).amax(-1)[live]  # (rows,)
    w_min = torch.where(adm, weights, float("inf")).amin(-1)[live]  # (rows,)
    bound = torch.e ** (2 * c)
    excess = (w_max - tol.value) - bound * (w_min + tol.value)  # > 0: max / min beyond e^(2c) by more than rounding
    worst_excess = float(excess.max()) if excess.numel() else 0.0
    row = int(excess.argmax()) if excess.numel() else 0
    check(
        worst_excess <= 0.0,
        f"with softcap={c:g} a row's largest weight {float(w_max[row]):.3g} exceeds e^(2c) = {bound:.3g} times its "
        f"smallest {float(w_min[row]):.3g} (budget {tol.explain()} each): the logits are not capped",
        p,
        ratio=float(w_max[row] / w_min[row]) if float(w_min[row]) > 0 else float("inf"),
    )
