"""shift_and_linearity: the algebra of equation (1).

softmax is invariant to adding a constant to a row of scores; the output is linear in V (P V); and each
output row is a convex combination of the admissible values, so it lies in their coordinate-wise hull.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, require
from attncheck.properties.contract import Target
from attncheck.properties.oracle import expect
from attncheck.properties.problems import PRECISE, problems


@prop("shift_and_linearity")
@given(data=st.data(), shift=st.sampled_from((-50.0, -3.0, 5.0, 40.0)))
def test_row_shift_invariance(target: Target, data: st.DataObject, shift: float) -> None:
    """Adding a per-row constant c_i to the scores (through the float mask) changes nothing."""
    require("float" in target.caps.masks, "needs float (additive) masks")
    require("full" in target.caps.mask_shapes, "a per-row shift is a full (B, Hq, L, S) float mask")
    p = data.draw(problems(target.caps, dtypes=PRECISE, masks=("none", "float"), causal=False), label="problem")
    q, k, v, mask = p.tensors(target.device)
    g = torch.Generator().manual_seed(p.seed + 13)
    c = (torch.rand(p.B, p.Hq, p.L, 1, generator=g, dtype=torch.float64) * shift).to(q.dtype).to(q.device)
    base = torch.zeros(p.B, p.Hq, p.L, p.S, dtype=q.dtype, device=q.device) if mask is None else mask
    shifted = base + c  # (B, Hq, L, S): -inf stays -inf
    out = target(q, k, v, **p.call_kwargs(base))
    out_shifted = target(q, k, v, **p.call_kwargs(shifted))
    _, tol = expect(q, k, v, shifted, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out_shifted, out, tol, f"output with every score row shifted by up to {shift:g}", p)


@prop("shift_and_linearity")
@given(data=st.data(), a=st.sampled_from((2.0, -0.5, 3.0)), b=st.sampled_from((1.0, -1.5, 0.25)))
def test_linear_in_values(target: Target, data: st.DataObject, a: float, b: float) -> None:
    """f(Q, K, a V1 + b V2) = a f(Q, K, V1) + b f(Q, K, V2)."""
    p = data.draw(problems(target.caps, dtypes=PRECISE), label="problem")
    q, k, v1, mask = p.tensors(target.device)
    v2 = p.replace(seed=p.seed + 1).tensors(target.device)[2]
    combo = (a * v1.double() + b * v2.double()).to(q.dtype)
    out = target(q, k, combo, **p.call_kwargs(mask))
    expected = (
        a * target(q, k, v1, **p.call_kwargs(mask)).double() + b * target(q, k, v2, **p.call_kwargs(mask)).double()
    )
    align = target.caps.alignment
    _, tol = expect(q, k, combo, mask, align, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale)
    scale = abs(a) + abs(b)  # each of the two outputs carries its own rounding
    assert_close(out, expected, tol.value * scale, f"f(a V1 + b V2) vs a f(V1) + b f(V2) (a={a}, b={b})", p)


@prop("shift_and_linearity")
@given(data=st.data())
def test_output_in_convex_hull(target: Target, data: st.DataObject) -> None:
    """Each output coordinate lies between the min and max of that coordinate over the admissible values."""
    p = data.draw(problems(target.caps, dtypes=PRECISE), label="problem")
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask)).double()  # (B, Hq, L, Ev)
    adm = p.admissible(mask, target.caps.alignment).to(out.device)  # (B, Hq, L, S)
    vq = v.double().repeat_interleave(p.Hq // p.Hkv, dim=1).unsqueeze(2)  # (B, Hkv, S, Ev) -> (B, Hq, 1, S, Ev)
    sel = adm.unsqueeze(-1)  # (B, Hq, L, S, 1)
    hi = torch.where(sel, vq, float("-inf")).amax(-2)  # (B, Hq, L, Ev)
    lo = torch.where(sel, vq, float("inf")).amin(-2)  # (B, Hq, L, Ev)
    live = adm.any(-1, keepdim=True)  # (B, Hq, L, 1)
    _, tol = expect(
        q, k, v, mask, target.caps.alignment, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale
    )
    over = torch.where(live, torch.maximum(out - hi, lo - out), torch.zeros_like(out)).nan_to_num(float("inf"))
    worst = float(over.max()) if over.numel() else 0.0
    check(
        worst <= tol.value,
        f"output leaves the convex hull of the admissible values by {worst:.3g} (budget {tol.explain()})",
        p,
        excess=worst,
    )
