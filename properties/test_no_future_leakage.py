"""no_future_leakage: under the causal mask, output t does not depend on anything after t.

Under the declared alignment (top-left: query i sees keys j <= i; bottom-right: j <= i + S - L), the keys
and values past row t's horizon and the queries after t are overwritten with large values; outputs up to t
must not move, and the gradient of output t with respect to any of them must be exactly zero. For L != S
this is what separates the two alignments (docs/bugs.md #4, #5). The decoder-level version of this
property is in test_model.py.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, require, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.oracle import expect
from attncheck.properties.problems import PRECISE, problems


def horizon(t: int, L: int, S: int, alignment: str) -> int:
    """Number of keys query t may see (keys 0 .. horizon-1)."""
    return max(0, min(S, t + 1 + (S - L if alignment == "bottom-right" else 0)))


def first_live_row(L: int, S: int, alignment: str) -> int:
    """The first query row that sees a key (0, except bottom-right with L > S: row L - S)."""
    return next(r for r in range(L) if horizon(r, L, S, alignment) > 0)


@prop("no_future_leakage")
@given(data=st.data())
def test_future_perturbation(target: Target, data: st.DataObject) -> None:
    """Perturbing queries after t and keys/values past t's horizon leaves outputs 0..t unchanged."""
    require(target.caps.causal is not None, "target declares no is_causal")
    align = target.caps.alignment
    p = data.draw(problems(target.caps, dtypes=PRECISE, causal=True), label="problem")
    t = data.draw(st.integers(first_live_row(p.L, p.S, align), p.L - 1), label="t")
    n = horizon(t, p.L, p.S, align)
    q, k, v, mask = p.tensors(target.device)
    before = target(q, k, v, **p.call_kwargs(mask))
    g = torch.Generator().manual_seed(p.seed + 7)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[..., t + 1 :, :] = (torch.randn(q2[..., t + 1 :, :].shape, generator=g) * 30).to(q.dtype)
    k2[..., n:, :] = (torch.randn(k2[..., n:, :].shape, generator=g) * 30).to(k.dtype)
    v2[..., n:, :] = (torch.randn(v2[..., n:, :].shape, generator=g) * 1e3).to(v.dtype)
    after = target(q2, k2, v2, **p.call_kwargs(mask))
    _, tol = expect(q, k, v, mask, align, target.precision(q.dtype), is_causal=True, scale=p.scale)
    # rows that see no key at all (bottom-right, L > S) return an implementation-defined value, which may read
    # every key (the mean of V): only rows with a visible key are bound by causality
    seen = torch.tensor([horizon(r, p.L, p.S, align) > 0 for r in range(t + 1)], device=after.device)[:, None]
    assert_close(
        after[..., : t + 1, :],
        before[..., : t + 1, :],
        tol,
        f"outputs 0..{t} after changing queries > {t} and keys/values >= {n} ({align} causal)",
        p,
        where=seen,
    )


@prop("no_future_leakage")
@given(data=st.data())
def test_future_gradient_is_zero(target: Target, data: st.DataObject) -> None:
    """d output[t] / d (keys and values past t's horizon, queries after t) is exactly zero."""
    require(target.caps.causal is not None, "target declares no is_causal")
    require(target.caps.grad, "target declares no gradients")
    align = target.caps.alignment
    p = data.draw(problems(target.caps, causal=True, max_len=33), label="problem")
    t = data.draw(st.integers(first_live_row(p.L, p.S, align), p.L - 1), label="t")
    n = horizon(t, p.L, p.S, align)
    q, k, v = (x.detach().clone().requires_grad_(True) for x in p.tensors(target.device)[:3])
    out = target(q, k, v, is_causal=True, scale=p.scale, enable_gqa=p.gqa)
    d_out = torch.zeros_like(out)
    d_out[..., t, :] = 1.0  # the gradient of output row t alone
    dq, dk, dv = target_grads(target, out, (q, k, v), d_out)
    for name, grad, sl in (
        ("query", dq, slice(t + 1, None)),
        ("key", dk, slice(n, None)),
        ("value", dv, slice(n, None)),
    ):
        leak = grad[..., sl, :].detach().double().abs()
        worst = float(leak.max()) if leak.numel() else 0.0
        observed = (
            f"non-finite ({worst}): the backward pass writes NaN or inf there, which is not a finite dependence on "
            "later positions but reaches them in training all the same"
            if not math.isfinite(worst)
            else f"{worst:.3g}"
        )
        check(
            worst == 0.0,
            f"gradient of output {t} w.r.t. {name} positions past its horizon is {observed}, not 0 "
            f"({align} causal, {n} visible keys)",
            p,
            gradient=worst,
        )
