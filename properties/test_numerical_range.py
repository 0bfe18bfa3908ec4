"""numerical_range: finite output wherever the oracle is finite.

Logits far beyond exp's range (|s| >> 88 in float32) are harmless once the row maximum is subtracted
(docs/bugs.md #11); a half-precision q . k that overflows 65504 *before* scaling must not overflow when
the scaled logit is representable (#10); a finite "minus infinity" such as finfo.min must not overflow when
added to a score (#9).
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given, reject
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import check, judge_output, require
from attncheck.properties.contract import Target
from attncheck.properties.oracle import oracle
from attncheck.properties.problems import problems


@prop("numerical_range")
@given(data=st.data())
def test_huge_logits_finite_and_accurate(target: Target, data: st.DataObject) -> None:
    """Logits of magnitude 1e2..1e4 give finite outputs that match the oracle."""
    p = data.draw(problems(target.caps, magnitudes=st.sampled_from((30.0, 100.0)), masked_rows=False), label="problem")
    q, k, v, mask = p.tensors(target.device)
    # Beyond exp's range, not beyond the dtype's: scaled logits past finfo.max (float16: 65504) are not
    # representable in the input dtype, and a naive implementation in that dtype is not finite either.
    scale = p.scale if p.scale is not None else p.E**-0.5
    k_q = k.double().repeat_interleave(p.Hq // p.Hkv, dim=-3)  # (B, Hkv, S, E) -> (B, Hq, S, E)
    raw = q.double() @ k_q.transpose(-2, -1)  # (B, Hq, L, E) @ (B, Hq, E, S) -> (B, Hq, L, S)
    top = torch.finfo(q.dtype).max
    assume(float((scale * raw).abs().max()) <= top)
    # what was seen, where it applies: q . k itself beyond the dtype's range while the scaled logits fit
    beyond = float(raw.abs().max()) > top
    note = (
        f" (the raw q . k reaches {float(raw.abs().max()):.0f}, beyond {top:.0f}; the scaled logits fit)"
        if beyond
        else ""
    )
    out = target(q, k, v, **p.call_kwargs(mask))
    what = "output for logits far beyond exp's range vs the float64 oracle"
    if judge_output(target, p, q, k, v, mask, out, quantity=what, note=note, judged=False) is None:
        reject()  # inconclusive: half logits rounded to the input dtype cannot be told from a degenerate output


@prop("numerical_range")
@given(data=st.data())
def test_half_precision_qk_overflow(target: Target, data: st.DataObject) -> None:
    """float16 inputs whose raw q . k exceeds 65504 but whose scaled logits fit: the output stays finite."""
    require("float16" in target.caps.dtypes, "target declares no float16")
    p = data.draw(
        problems(target.caps, dtypes=("float16",), magnitudes=st.just(1.0), masked_rows=False, gqa=False).map(
            lambda p: p.replace(E=64, Ev=64 if not target.caps.value_dim else p.Ev, scale=None)
        ),
        label="problem",
    )
    g = torch.Generator().manual_seed(p.seed)
    # q = k = 40 * (a shared random sign pattern): q . k = 64 * 1600 = 102400 > 65504, scaled by 1/8 -> 12800.
    signs = torch.randint(0, 2, (p.E,), generator=g).double() * 2 - 1  # (E,)
    q = (40 * signs).expand(p.B, p.Hq, p.L, p.E).to(torch.float16).to(target.device)  # (B, Hq, L, E)
    k_rand = torch.randn(p.B, p.Hkv, p.S, p.E, generator=g, dtype=torch.float64)  # (B, Hkv, S, E)
    k = (40 * signs * (k_rand.abs() > 0.3)).to(torch.float16).to(target.device)  # some keys partly zeroed
    _, _, v, mask = p.tensors(target.device)
    ref = oracle(q, k, v, mask, alignment=target.caps.alignment, is_causal=p.is_causal)
    raw = float((q.double() @ k.double().transpose(-2, -1)).abs().max())  # (B, Hq, L, S) -> max
    out = target(q, k, v, **p.call_kwargs(mask))
    finite_ref = torch.isfinite(ref)
    bad = finite_ref & ~torch.isfinite(out.detach().double())
    cause = (
        f"the raw q . k reaches {raw:.0f} (float16 max 65504) while the scaled logits (x {1 / math.sqrt(p.E):g}) fit"
    )
    if bad.any() and target.caps.scale:
        # The same logits with q . k inside float16's range: q / 8 (exact) with scale= 8 / sqrt(E) = 1 (E = 64).
        # Non-finite there too, the overflow of q . k is not the cause (the counterexample's mask may be).
        kwargs = {**p.call_kwargs(mask), "scale": 8 / math.sqrt(p.E)}
        within = target(q / 8, k, v, **kwargs).detach().double()
        if (finite_ref & ~torch.isfinite(within)).any():
            cause = (
                f"not the overflow of q . k (it reaches {raw:.0f}): the same logits with q . k inside float16's range "
                "(q / 8, scale= 1) are non-finite too"
            )
    check(
        not bool(bad.any()),
        f"float16 output has {int(bad.sum())} non-finite entries where the oracle is finite; {cause}",
        p,
    )


@prop("numerical_range")
@given(data=st.data())
def test_finite_min_bias_does_not_overflow(target: Target, data: st.DataObject) -> None:
    """A float mask of finfo.min on some keys (a common finite 'minus infinity') gives finite outputs."""
    require("float" in target.caps.masks, "needs float (additive) masks")
    p = data.draw(problems(target.caps, masks=("float",), causal=False, masked_rows=False), label="problem")
    q, k, v, mask = p.tensors(target.device)
    assert mask is not None
    finite_min = mask.masked_fill(mask == float("-inf"), torch.finfo(q.dtype).min)  # (..., L, S)
    out = target(q, k, v, **p.call_kwargs(finite_min))
    what = "output with finfo.min (instead of -inf) on masked keys vs the -inf oracle"
    if judge_output(target, p, q, k, v, mask, out, quantity=what, judged=False) is None:
        reject()  # inconclusive, as above
