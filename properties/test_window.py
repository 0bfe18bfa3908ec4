"""window: a sliding window ``(left, right)`` is exactly its band mask (docs/design.md, "Beyond SDPA").

The query at aligned position p (p = i top-left, i + S - L bottom-right: the target's causal alignment) sees key
j iff p - left <= j <= p + right, -1 leaving a side unbounded, ANDed with ``is_causal`` and the mask. The checks
catch the window bugs of KERNELS.md: off-by-ones at either end (transformers#39408, vllm#3385, zml#763), a
window ignored (jax#32300) or given one bound only (jax PR#39576), negative sizes taken as infinite
(hippogriff#7) and windows aligned top-left under a bottom-right contract.
"""

from __future__ import annotations

from typing import cast

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, judge_empty_rows, live_rows, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.features import FeatureProblem, expected, feature_problems, require_feature
from attncheck.properties.problems import PRECISE
from attncheck.properties.test_rows_sum_to_one import identity_values, with_identity_room
from attncheck.reference.attention import merge_masks, window_mask


@prop("window")
@given(data=st.data())
def test_window_equals_band_mask(target: Target, data: st.DataObject) -> None:
    """Output with ``window`` = the float64 oracle with the band as a mask, ANDed with is_causal and the mask; and,
    where boolean masks are declared, = the target's own output with that band passed as ``attn_mask``."""
    require_feature(target, "window")
    caps, align = target.caps, target.caps.alignment
    p = data.draw(feature_problems(caps, window=True, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask, target.device))
    live = live_rows(p, mask, align).to(out.device)  # (B, Hq, L, 1): rows the window and mask leave a key
    ref, tol = expected(target, p, q, k, v, mask)
    what = f"output with window={p.window} ({align}) vs the float64 oracle with its band mask"
    assert_close(out, ref, tol, what, p, where=live)
    judge_empty_rows(target, out, v, live, p)  # after: a row that sees a key it should not is the window's fault
    # the band ANDed into the mask (and the causal triangle): boolean without a mask, the mask's kind with one
    merged = merge_masks(mask, p.is_causal, p.L, p.S, align, q.device, window=p.window)
    kind = "bool" if merged is None or merged.dtype == torch.bool else "float"
    if merged is not None and kind in caps.masks and "full" in caps.mask_shapes:
        full = merged.expand(p.B, p.Hq, p.L, p.S).contiguous()  # (..., L, S) -> (B, Hq, L, S)
        as_mask = target(q, k, v, full, is_causal=caps.causal == "always", scale=p.scale, enable_gqa=p.gqa)
        what = f"output with window={p.window} vs the same call with its band ANDed into a {kind} attn_mask"
        assert_close(out, as_mask, tol, what, p, where=live)


@prop("window")
@given(data=st.data())
def test_keys_outside_the_band_are_irrelevant(target: Target, data: st.DataObject) -> None:
    """Huge keys and values outside row t's band leave output t unchanged; d output[t] / d (those keys and values)
    is exactly 0; NaN in keys outside every band changes no output where the target declares masked_values=ignored."""
    require_feature(target, "window")
    align = target.caps.alignment
    p = data.draw(feature_problems(target.caps, window=True, dtypes=PRECISE), label="problem")
    band = window_mask(p.L, p.S, p.window, align)  # type: ignore[arg-type]  # (L, S)
    rows = [i for i in range(p.L) if band[i].any() and not band[i].all()]
    assume(rows)  # a row that sees some keys and not others
    t = data.draw(st.sampled_from(rows), label="t")
    outside = ~band[t].to(target.device)  # (S,) keys row t may not see
    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask, target.device)
    before = target(q, k, v, **kwargs)
    g = torch.Generator().manual_seed(p.seed + 7)
    k2, v2 = k.clone(), v.clone()
    k2[..., outside, :] = (torch.randn(k2[..., outside, :].shape, generator=g) * 30).to(k.dtype).to(k.device)
    v2[..., outside, :] = (torch.randn(v2[..., outside, :].shape, generator=g) * 1e3).to(v.dtype).to(v.device)
    after = target(q, k2, v2, **kwargs)
    _, tol = expected(target, p, q, k, v, mask)
    live = live_rows(p, mask, align)[..., t, :].to(after.device)  # (B, Hq, 1): row t keeps an admissible key
    what = f"output {t} after changing the keys and values outside its band (window={p.window}, {align})"
    assert_close(after[..., t, :], before[..., t, :], tol, what, p, where=live)
    unseen = ~band.any(0).to(target.device)  # (S,) keys outside every row's band
    if target.caps.masked_values == "ignored" and bool(unseen.any()):  # declared: NaN there never reaches the output
        k3, v3 = k.clone(), v.clone()
        k3[..., unseen, :], v3[..., unseen, :] = float("nan"), float("nan")
        live_all = live_rows(p, mask, align).to(after.device)  # (B, Hq, L, 1)
        what = f"output after writing NaN into the keys and values outside every row's band (window={p.window})"
        assert_close(target(q, k3, v3, **kwargs), before, tol, what, p, where=live_all)
    if not target.caps.grad:
        return
    lq, lk, lv = leaves = tuple(x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = target(lq, lk, lv, **kwargs)
    d_out = torch.zeros_like(out)
    d_out[..., t, :] = 1.0  # the gradient of output row t alone
    _, dk, dv = target_grads(target, out, leaves, d_out)
    for name, grad in (("key", dk), ("value", dv)):
        leak = grad[..., outside, :].detach().double().abs()
        worst = float(leak.max()) if leak.numel() else 0.0
        check(
            worst == 0.0,
            f"gradient of output {t} w.r.t. {name}s outside its band is {worst:.3g}, not 0 (window={p.window})",
            p,
            gradient=worst,
        )


@prop("window")
@given(data=st.data())
def test_identity_values_show_exactly_the_band(target: Target, data: st.DataObject) -> None:
    """With V = I each row's output is its weight row: positive on exactly the keys its band, the mask and
    is_causal admit, exactly 0 elsewhere (counts the keys: every off-by-one shows)."""
    require_feature(target, "window")
    caps, align = target.caps, target.caps.alignment
    problem = feature_problems(caps, window=True, dtypes=PRECISE, magnitudes=st.just(1.0), custom_scale=False)
    p = cast(FeatureProblem, with_identity_room(data.draw(problem, label="problem"), caps.value_dim))
    q, k, v, mask = p.tensors(target.device)
    eye = identity_values(p, v).contiguous()  # (B, Hkv, S, Ev)
    weights = target(q, k, eye, **p.call_kwargs(mask, target.device))[..., : p.S].double().cpu()  # (B, Hq, L, S)
    ref = expected(target, p, q, k, eye, mask)[0][..., : p.S].cpu()  # (B, Hq, L, S)
    adm = p.admissible(None if mask is None else mask.cpu(), align)  # (B, Hq, L, S)
    live = adm.any(-1, keepdim=True)  # (B, Hq, L, 1)
    seen = (weights != 0) & live  # keys a live row gives weight to
    # a key of negligible oracle weight (< 1e-6) may round to 0: only those above it must be seen
    wrong = (seen & ~adm) | (~seen & adm & (ref > 1e-6))  # (B, Hq, L, S)
    if bool(wrong.any()):
        b, h, i = (int(x) for x in wrong.any(-1).nonzero()[0])
        got = seen[b, h, i].nonzero().flatten().tolist()
        band = adm[b, h, i].nonzero().flatten().tolist()
        check(
            False,
            f"with window={p.window} ({align}) row {i} (batch {b}, head {h}) gives weight to keys {got}; "
            f"its band, mask and causal triangle admit keys {band}",
            p,
            row=i,
            seen=got,
            band=band,
        )


@prop("window")
@given(data=st.data())
def test_zero_window_returns_the_aligned_diagonal(target: Target, data: st.DataObject) -> None:
    """window=(0, 0): the query at aligned position p sees key p alone, so its output is v[p] (weight exactly 1)."""
    require_feature(target, "window")
    align = target.caps.alignment
    p = data.draw(feature_problems(target.caps, dtypes=PRECISE, masks=("none",)), label="problem")
    p = p.replace(window=(0, 0))
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask, target.device))  # (B, Hq, L, Ev)
    offset = 0 if align == "top-left" else p.S - p.L
    diagonal = torch.arange(p.L) + offset  # (L,) the key each row sees
    rows = (diagonal >= 0) & (diagonal < p.S)  # rows whose aligned position is a key
    assume(bool(rows.any()))
    v_q = v.repeat_interleave(p.Hq // p.Hkv, dim=1)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    _, tol = expected(target, p, q, k, v, mask)
    what = f"output of row i with window=(0, 0) vs v[i{offset:+d}] ({align})"
    assert_close(out[..., rows, :], v_q[..., diagonal[rows], :], tol, what, p)


@prop("window")
@given(data=st.data())
def test_window_wider_than_the_sequence_is_no_window(target: Target, data: st.DataObject) -> None:
    """A window reaching past both ends (or -1) equals no window; (wide, 0) equals is_causal where declared."""
    require_feature(target, "window")
    caps = target.caps
    p = data.draw(feature_problems(caps, dtypes=PRECISE), label="problem")
    wide = st.sampled_from((-1, p.L + p.S, p.L + p.S + 7))
    window = data.draw(st.tuples(wide, wide), label="window")
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask, target.device))
    out_wide = target(q, k, v, **p.call_kwargs(mask, target.device), window=window)
    _, tol = expected(target, p, q, k, v, mask)
    live = live_rows(p, mask, caps.alignment).to(out.device)
    assert_close(out_wide, out, tol, f"output with window={window} (L={p.L}, S={p.S}) vs no window", p, where=live)
    if caps.causal in ("top-left", "bottom-right") and mask is None and not p.is_causal:
        causal = p.replace(is_causal=True)
        out_causal = target(q, k, v, **causal.call_kwargs(None, target.device))
        out_band = target(q, k, v, **p.call_kwargs(None, target.device), window=(window[0], 0))
        _, tol = expected(target, causal, q, k, v, None)
        live = live_rows(causal, None, caps.alignment).to(out.device)
        what = f"output with window=({window[0]}, 0) vs is_causal ({caps.alignment}), L={p.L}, S={p.S}"
        assert_close(out_band, out_causal, tol, what, p, where=live)
