"""scaling_variance: the 1/sqrt(d_k) of section 3.2.1 keeps the logits at unit variance.

"If the components of q and k are independent random variables with mean 0 and variance 1, then their dot
product q . k has mean 0 and variance d_k" (footnote 4); scaling by 1/sqrt(d_k) brings it back to 1.

On a black box the logits are recovered from the weights: with V = the identity, output row i is P[i, :],
and log P[i, j] - log P[i, 0] = scale * (q_i . k_j - q_i . k_0), so the *effective scale* is the slope of
the recovered log-weight differences against the raw dot-product differences (least squares over j).
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

from attncheck.properties.catalog import prop
from attncheck.properties.checks import check, require
from attncheck.properties.contract import Target
from attncheck.properties.problems import Problem, problems

# Variance test: false-alarm rate per example. With the ci profile's 15 examples a correct target is
# flagged with probability < 1.5e-5 per run; the thorough profile's 1000 examples, < 1e-3.
ALPHA = 1e-6


def _recovered_weights(target: Target, q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    """P recovered with V = identity (output row i is P[i, :]); q (B, H, L, E), k (B, H, S, E) -> (B, H, L, S)."""
    B, H, S, E = k.shape
    width = max(S, E) if not target.caps.value_dim else S
    eye = torch.eye(S, width, dtype=q.dtype, device=q.device).expand(B, H, S, width).contiguous()  # (B, H, S, W)
    if not target.caps.value_dim and width != E:
        raise ValueError("identity values need Ev == E >= S for this target")
    return target(q, k, eye, scale=scale)[..., :S].double()  # (B, H, L, S)


def _recovered_logit_differences(target: Target, q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    """log P[..., j] - log P[..., 0] recovered with V = identity; q (B, H, L, E), k (B, H, S, E) -> (B, H, L, S)."""
    logw = _recovered_weights(target, q, k, scale).log()  # (B, H, L, S)
    return logw - logw[..., :1]  # (B, H, L, S)


@prop("scaling_variance")
@given(data=st.data())
def test_effective_scale(target: Target, data: st.DataObject) -> None:
    """The recovered effective scale equals 1/sqrt(d_k), or the scale= argument when given."""
    caps = target.caps
    p: Problem = data.draw(
        problems(caps, masks=("none",), causal=False, gqa=False, magnitudes=st.just(0.5)), label="problem"
    )
    S = max(p.S, 2)
    E = max(p.E, S) if not caps.value_dim else p.E  # identity V needs Ev == E >= S when Ev must equal E
    L = S if caps.lengths == "equal" else min(p.L, S) if caps.lengths == "q<=k" else p.L
    # an example whose pairs are all unusable, or whose rounding bound is too wide, is not judged (drawn again)
    assume(judge_effective_scale(target, p.replace(L=L, S=S, E=E, Ev=E)))


def judge_effective_scale(target: Target, p: Problem) -> bool:
    """test_effective_scale on one problem (E == Ev >= S): the slope of the recovered log-weight differences
    against the dot-product differences, judged against its rounding bound at the target's precision. False when
    the problem cannot be judged (no usable pair of keys, or a rounding bound too wide to tell a bug apart)."""
    q, k, _, _ = p.tensors(target.device)
    expected = p.scale if p.scale is not None else 1.0 / math.sqrt(p.E)
    weights = _recovered_weights(target, q, k, p.scale)  # (B, H, L, S)
    logw = weights.log()  # (B, H, L, S)
    diffs = logw - logw[..., :1]  # (B, H, L, S): scale * (q_i . k_j - q_i . k_0) up to rounding
    dots = q.double() @ k.double().transpose(-2, -1)  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    dot_diffs = dots - dots[..., :1]  # (B, H, L, S)
    # A weight below the dtype's normal range (a subnormal float16 or bfloat16) has lost relative precision: its
    # log says little about the logit, so such pairs are not used.
    normal = weights >= torch.finfo(q.dtype).tiny  # (B, H, L, S)
    usable = torch.isfinite(diffs) & (dot_diffs.abs() > 1e-3) & normal & normal[..., :1]
    if not usable.any():  # no pair of keys whose logits differ, with weights in the normal range
        return False
    x, y = dot_diffs[usable], diffs[usable]
    slope = float((x * y).sum() / (x * x).sum())  # least squares through the origin
    # Rounding bound of each recovered difference, at the precision the target computes in (declared or observed,
    # so a kernel computing in bfloat16 by design is judged at bfloat16): the softmax normaliser cancels in
    # log P_j - log P_0, leaving the rounding of the two returned weights (an ulp or two of the output dtype each)
    # and of the two logits s = scale * q . k (|s| ulp of the compute dtype each). The slope's error is then at
    # most sum |x_j| delta_j / sum x_j^2 (least squares through the origin), with a factor 2 of margin on each term.
    eps_out = torch.finfo(q.dtype).eps
    eps_compute = torch.finfo(target.precision(q.dtype)).eps
    logits = expected * dots.abs()  # (B, H, L, S): |s|
    delta = 4 * eps_out + 2 * eps_compute * (logits + logits[..., :1] + 1)  # (B, H, L, S)
    rel_tol = max(1e-6, float((x.abs() * delta[usable]).sum() / (x * x).sum()) / expected)
    # The bugs have factors >= sqrt(2) (1/d_k vs 1/sqrt(d_k) for d_k >= 2, scale twice or ignored): an example
    # whose rounding bound reaches 1/4 cannot tell them apart from rounding and is not judged.
    if rel_tol > 0.25:
        return False
    check(
        abs(slope / expected - 1) <= rel_tol,
        f"effective scale {slope:.6g} != expected {expected:.6g} "
        f"({'scale argument' if p.scale is not None else '1/sqrt(d_k), d_k = ' + str(p.E)}; "
        f"relative tolerance {rel_tol:.2g}; 1/d_k = {1 / p.E:.4g}, 1/sqrt(S) = {1 / math.sqrt(p.S):.4g})",
        p,
        effective_scale=slope,
        expected=expected,
    )
    return True


@prop("scaling_variance")
@given(d_k=st.sampled_from((2, 3, 8, 16, 64, 128)), seed=st.integers(0, 2**16))
def test_scaled_logits_have_unit_variance(target: Target, d_k: int, seed: int) -> None:
    """With unit-variance q and k, the scaled logits have variance 1 for every d_k (z-test, alpha = 1e-6).

    Samples: n = B*H independent (query, two keys) triples, each giving X = (s_1 - s_0) / sqrt(2), whose
    variance is d_k * scale^2 (= 1 when scale = 1/sqrt(d_k)). For q, k with iid N(0, 1) entries
    E[X^4] = 3 + 6/d_k (fourth moment of a sum of d_k products of normals), so the mean of X^2 over n samples
    has standard error sqrt((2 + 6/d_k) / n). Where the target honours scale=, the same statistic with
    scale = 1 must come out near d_k (the unscaled logits grow like d_k), which shows the test has power.
    """
    caps = target.caps
    require("float64" in caps.dtypes or "float32" in caps.dtypes, "needs float32 or float64")
    dtype = torch.float64 if "float64" in caps.dtypes else torch.float32
    E = d_k if caps.value_dim else max(d_k, 2)
    B, H = 64, 8
    g = torch.Generator().manual_seed(seed)
    L = 2 if caps.lengths == "equal" else 1  # one query per pair of keys (two, independent, for self-attention)
    q = torch.randn(B, H, L, E, generator=g, dtype=torch.float64).to(dtype).to(target.device)  # (B, H, L, E)
    k = torch.randn(B, H, 2, E, generator=g, dtype=torch.float64).to(dtype).to(target.device)  # (B, H, 2, E)
    n = B * H * L
    z_crit = float(stats.norm.isf(ALPHA / 2))
    cases = [(None, 1.0)] + ([(1.0, float(E))] if caps.scale else [])
    for scale, expected_var in cases:
        x = _recovered_logit_differences(target, q, k, scale)[..., 1].flatten() / math.sqrt(2)  # (n,)
        mean_sq = float((x * x).mean())
        se = expected_var * math.sqrt((2 + 6 / E) / n)
        z = (mean_sq - expected_var) / se
        what = "scaled by default (1/sqrt(d_k))" if scale is None else "with scale=1 (unscaled)"
        p = Problem(B=B, Hq=H, Hkv=H, L=L, S=2, E=E, Ev=E, dtype=str(dtype).removeprefix("torch."), seed=seed)
        check(
            abs(z) <= z_crit,
            f"logit variance {mean_sq:.4g} {what}, expected {expected_var:.4g} for d_k = {E} "
            f"(z = {z:.2f}, |z| <= {z_crit:.2f} at false-alarm rate {ALPHA:g}, n = {n})",
            p,
            variance=mean_sq,
        )
