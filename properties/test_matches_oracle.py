"""matches_oracle: outputs and gradients agree with the float64 oracle inside the calibrated budget."""

from __future__ import annotations

import torch
from hypothesis import given, reject
from hypothesis import strategies as st
from hypothesis import target as hypothesis_target

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, judge_empty_rows, live_rows, observe, require, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.oracle import (
    ACCUMULATE,
    K_GRAD,
    budget,
    expect,
    logit_rounding,
    max_logit,
    oracle,
    precision_note,
    precision_ratio,
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
    inconclusive (half inputs whose error exceeds a float32-logit kernel's budget, within what rounding the logits
    to the input dtype gives, where that rounding cannot be told from a degenerate output: oracle.logit_rounding).
    Raises PropertyFailure."""
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask))
    align = target.caps.alignment
    live = live_rows(p, mask, align).to(out.device)  # rows emptied by the causal alignment follow their convention
    judge_empty_rows(target, out, v, live, p)
    ref, tol = expect(
        q, k, v, mask, align, target.precision(q.dtype, judged=True), is_causal=p.is_causal, scale=p.scale
    )
    what = _what("output", target, q.dtype)
    got = out.detach().cpu().double()
    worst = float(torch.where(live.cpu(), (got - ref.cpu()).abs(), 0.0).nan_to_num(0.0).max())
    half = ACCUMULATE[q.dtype] != q.dtype and tol.dtype == q.dtype  # half inputs computed at their own precision
    fused = tol.naive_error  # what a float32-logit kernel achieves on these inputs
    finite = bool((torch.isfinite(got) | ~live.cpu()).all())  # a non-finite output is judged against the oracle
    expected, rounding, name = ref, None, str(q.dtype).removeprefix("torch.")
    if worst > tol.value and half and finite:  # logits rounded to the input dtype: less precise, not wrong
        cpu = {"attn_mask": None if mask is None else mask.cpu(), "is_causal": p.is_causal, "scale": p.scale}
        rounding = logit_rounding(q.cpu(), k.cpu(), v.cpu(), ref.cpu(), tol.value, live.cpu(), align, **cpu)
        expected = got.clamp(rounding.lo, rounding.hi)  # (B, Hq, L, Ev): the closest output of such a kernel
        what = (
            f"{what}: error {worst:.3g} beyond a float32-logit kernel's budget; output vs the nearest output "
            f"logits rounded to {name} can give"
        )
    elif worst > tol.value and not half:  # name the precision the error is consistent with (precision honesty)
        what += precision_note(q, k, v, worst, align, attn_mask=mask, is_causal=p.is_causal, scale=p.scale)
    # one assertion for both: Hypothesis tells distinct bugs apart by where they raise
    err = assert_close(out, expected, tol, what, p, where=live)
    if rounding is not None and rounding.explained_by:
        seen = f"{name}: inconclusive (logits rounded to {name} cannot be told from {rounding.explained_by[0]})"
        observe(target, "precision vs a float32-logit kernel", seen)
        return None
    if half:  # how close to a fused kernel, in few distinct values
        observe(target, "precision vs a float32-logit kernel", precision_ratio(q.dtype, worst, fused))
    return err / tol.value


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
        assert_close(g_got, g_ref, tol, _what(f"gradient {name}", target, q.dtype), p)


def _what(quantity: str, target: Target, dtype: torch.dtype) -> str:
    """What is compared; where the probe saw a coarser precision than declared, the message says so first."""
    name = str(dtype).removeprefix("torch.")
    seen = target.observed_precision.get(name)
    if seen is None:
        return f"{quantity} vs float64 oracle"
    return (
        f"{name} inputs computed at about {seen} precision (declare --cap compute_dtype={seen} if by design): "
        f"{quantity} vs float64 oracle"
    )
