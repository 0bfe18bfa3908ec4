"""matches_oracle: outputs and gradients agree with the float64 oracle inside the calibrated budget."""

from __future__ import annotations

import torch
from hypothesis import given, reject
from hypothesis import strategies as st
from hypothesis import target as hypothesis_target

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, compared, judge_output, live_rows, require, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.oracle import (
    K_GRAD,
    budget,
    max_logit,
    oracle,
)
from attncheck.properties.problems import Problem, problems


@prop("matches_oracle")
@given(data=st.data())
def test_forward_matches_oracle(target: Target, data: st.DataObject) -> None:
    """Forward output within k x (naive same-dtype error) + floor of the float64 oracle; half inputs also within
    that budget of what rounding the logits to the input dtype gives, where that can tell garbage apart."""
    ratio = judge_forward(target, data.draw(problems(target.caps), label="problem"))
    if ratio is None:
        reject()  # inconclusive: logit rounding cannot be told from a degenerate output here; drawn again
    hypothesis_target(ratio, label="error / budget")


def judge_forward(target: Target, p: Problem) -> float | None:
    """test_forward_matches_oracle on one problem: the error over the budget, or None when the example is
    inconclusive (checks.judge_output). Raises PropertyFailure."""
    q, k, v, mask = p.tensors(target.device)
    return judge_output(target, p, q, k, v, mask, target(q, k, v, **p.call_kwargs(mask)))


@prop("matches_oracle")
@given(data=st.data())
def test_gradients_match_oracle(target: Target, data: st.DataObject) -> None:
    """dQ, dK, dV within k_grad x (naive same-dtype gradient error) + floor, for a random (possibly strided) dO."""
    require(target.caps.grad, "target declares no gradients")
    p = data.draw(problems(target.caps, max_len=33), label="problem")
    q, k, v, mask = p.tensors(target.device)
    g = torch.Generator().manual_seed(p.seed + 1)
    d_out = torch.randn(p.B, p.L, p.Hq, p.Ev, generator=g, dtype=torch.float64).transpose(1, 2)  # (B, Hq, L, Ev)
    if data.draw(st.booleans(), label="contiguous dO"):
        d_out = d_out.contiguous()  # else strided: a wrong backward for non-contiguous dO (docs/bugs.md #15)
    align = target.caps.alignment
    d_out = d_out * live_rows(p, mask, align)  # rows with no admissible key: implementation-defined, not compared

    def gradients(dtype: torch.dtype | None) -> tuple[torch.Tensor, ...]:
        lq, lk, lv = leaves = tuple(t.detach().to(dtype or t.dtype).requires_grad_(True) for t in (q, k, v))
        if dtype is None:
            out = target(lq, lk, lv, **p.call_kwargs(mask))
            return target_grads(target, out, leaves, d_out.to(out.dtype).to(out.device))
        out = oracle(lq, lk, lv, mask, is_causal=p.is_causal, scale=p.scale, alignment=align, dtype=dtype)
        return torch.autograd.grad(out, leaves, d_out.to(out.dtype).to(out.device))

    got = gradients(None)
    ref = gradients(torch.float64)
    work = target.precision(q.dtype, judged=True)
    naive = gradients(work)
    for name, g_got, g_ref, g_naive in zip(("dQ", "dK", "dV"), got, ref, naive, strict=True):
        scale = float(g_ref.abs().max()) if g_ref.numel() else 1.0
        tol = budget(g_naive.to(q.dtype), g_ref, scale, work, k=K_GRAD, logit_scale=max_logit(q, k, p.scale))
        assert_close(g_got, g_ref, tol, compared(f"gradient {name}", target, q.dtype), p)
