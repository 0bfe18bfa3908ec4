"""fully_masked_rows: rows with no admissible key are harmless, whatever the target returns for them.

Softmax over an empty set is undefined, so the output of a fully masked row is implementation-defined. The
suite observes the convention (zeros, NaN, the mean of V as a uniform softmax would give, or other) and
reports it; it fails a target only if (a) the target declared a convention it does not keep, or (b) the
masked rows affect the *other* rows: their outputs must match the oracle and their gradients must be
finite (NaN from a masked row must not poison dK and dV of the batch; docs/bugs.md #1, #2, #24).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, observe, require
from attncheck.properties.oracle import expect
from attncheck.properties.problems import problems
from attncheck.properties.targets import Target


def classify(rows: torch.Tensor, v: torch.Tensor, atol: float) -> str:
    """Name the convention of fully masked output rows (n, Ev) given the values (n, S, Ev)."""
    if rows.numel() == 0:
        return "none"
    if rows.isnan().all():
        return "nan"
    if not torch.isfinite(rows).all():
        return "non-finite"
    if rows.abs().max() <= atol:
        return "zeros"
    if torch.allclose(rows, v.mean(-2), atol=atol * 10, rtol=1e-2):
        return "uniform"
    return "other"


@prop("fully_masked_rows")
@given(data=st.data())
def test_fully_masked_rows(target: Target, data: st.DataObject) -> None:
    """Convention observed (and kept if declared); other rows match the oracle; their gradients are finite."""
    caps = target.caps
    require(bool(caps.masks), "target declares no mask support")
    p = data.draw(
        problems(caps, masks=("bool", "float"), masked_rows=True, causal=False, max_len=33).filter(
            lambda p: p.masked_rows > 0
        ),
        label="problem",
    )
    q, k, v, mask = p.tensors(target.device)
    assert mask is not None
    dead_rows = ~p.admissible(mask).any(-1)  # (B, Hq, L)
    lq, lk, lv = leaves = tuple(x.detach().clone().requires_grad_(caps.grad) for x in (q, k, v))
    out = target(lq, lk, lv, **p.call_kwargs(mask))  # (B, Hq, L, Ev)
    group = p.Hq // p.Hkv
    v_per_q = v.double().repeat_interleave(group, dim=1)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    dead = dead_rows.to(out.device)
    eps = torch.finfo(q.dtype).eps
    convention = classify(
        out.detach().double()[dead], v_per_q.unsqueeze(2).expand(-1, -1, p.L, -1, -1)[dead.cpu()], atol=4 * eps
    )
    observe(target, "fully masked rows", convention)
    if caps.masked_rows is not None:
        check(
            convention == caps.masked_rows,
            f"fully masked rows return {convention}, but the target declares {caps.masked_rows}",
            p,
        )
    ref, tol = expect(q, k, v, mask, "top-left", target.precision(q.dtype), scale=p.scale)
    live = ~dead.unsqueeze(-1)  # (B, Hq, L, 1)
    assert_close(out, ref, tol, "rows with admissible keys, beside fully masked rows, vs the oracle", p, where=live)
    if caps.grad and bool(live.any()):
        g = torch.Generator().manual_seed(p.seed + 11)
        d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device) * live
        grads = torch.autograd.grad(out, leaves, d_out, allow_unused=True)
        for name, grad in zip(("dQ", "dK", "dV"), grads, strict=True):
            if grad is None:
                continue
            bad = ~torch.isfinite(grad)
            check(
                not bool(bad.any()),
                f"gradient {name} of the live rows has {int(bad.sum())} non-finite entries: the fully masked "
                "rows poison the backward pass",
                p,
            )
