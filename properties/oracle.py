"""The float64 oracle and the tolerance model: the one place where the suite's numbers live.

The oracle is equation (1) of the reference (reference/attention.py) evaluated in float64 on the *same*
inputs the target received (upcast exactly: every float16/bfloat16/float32 value is a float64 value).

Tolerance (docs/design.md, "Oracle and tolerance"): a target in dtype T may differ from the oracle by

    budget = k * error(naive attention computed in T vs the oracle) + floor(T) * max(1, max|V|)

* The naive implementation is the reference itself run in T, as PyTorch's test_transformers runs its math
  backend in the low precision dtype, and FlashAttention's tests run ``attention_ref`` "pt" in the input
  dtype. Its error measures how hard *these* inputs are in T (large logits, long rows, cancellation), so an
  honest kernel is not flagged where rounding is large, and a bug cannot hide where rounding is small.
* k = 3 for outputs: FlashAttention asserts ``max|out - ref| <= 2 * max|pt - ref|``; we take 3 because the
  naive error on tiny problems can be almost 0 by luck while a fused kernel rounds differently (observed
  on CPU bf16: fused/naive error ratios up to 2.5).
* k = 5 for gradients: FlashAttention uses 3x to 5x for gradients, PyTorch fudge factors of 4 (dQ) and 2
  (dK, dV) on top of its max-difference rule; backward passes chain two more matmuls.
* floor(T) is an absolute floor per dtype, scaled by the largest |V| (outputs are convex combinations of the
  values, so their scale is |V|): ULPS units in the last place of T, 4 (64 in float64, see ULPS). A correct
  kernel that sums the dot products in another order perturbs each logit by about eps(A) * |s|, A the dtype it
  accumulates the logits in, and softmax passes a logit error through to the weights one to one, so the floor is
  ULPS * |V| * max(eps(T), eps(A) * max|s|). A is T itself for float32 and float64; for float16 and bfloat16 it
  is float32 (ACCUMULATE): every fused kernel (FlashAttention, torch SDPA's CPU flash kernel, cuDNN) computes
  Q K^T in float32 and keeps the logits there until the softmax. Scaling the half-precision floor by eps(T) * |s|
  instead (up to issue 19) made it swamp the output's own scale: in bfloat16 (L = 17, E = 16, inputs of
  magnitude 3) the budget was 7.30, and returning the mean of V (error 3.18) passed.
  PyTorch's default atol is 1e-5 for float32 and 1e-3 for half types plus an rtol of 1e-3 (fp16) / 1.6e-2
  (bf16); the floor matters only where the naive error is near 0 (always in float64, where the naive
  implementation *is* the oracle), and k times the naive error dominates elsewhere.
* In a half type T the naive implementation is what a good kernel achieves: the reference from the T inputs
  with float32 logits and softmax, rounded to T (FlashAttention's ``attention_ref(upcast=True)``; every fused
  kernel keeps the logits in float32). Calibrating on the reference computed entirely in T (logits rounded to T)
  let the budget grow with the logits' rounding: in bfloat16 with inputs of magnitude 10 it passed an output at
  half the scale.
* A kernel that rounds its logits to T is less precise, not wrong (issue 19). Its output is judged against
  every output equation (1) gives when each logit moves by at most its rounding (:func:`logit_rounding_band`),
  widened by the budget above: outside it on any row, the output fails (no such kernel gives it); inside it
  everywhere, it passes where the band rejects every degenerate output (the mean of V, V, zeros, a constant,
  rows permuted, half or twice the scale, the mask or the causal triangle ignored) on some row
  (:func:`logit_rounding`). Where a degenerate output fits the band on every row the example is inconclusive:
  matches_oracle neither passes nor fails it, and Hypothesis draws another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from attncheck.reference.attention import (
    additive_bias,
    attention_logits,
    attention_with_lse,
    expand_kv_heads,
    merge_masks,
)

K_OUTPUT = 3.0
K_GRAD = 5.0
# Units in the last place of the floor. In float64 the naive implementation *is* the oracle (its error is 0), so
# the floor alone must cover a correct kernel's other summation order: two matmuls forward (three more backward)
# over up to 129 terms, seen at up to 2e-13 relative on gradients (a logsumexp-form variant): 64 ulp.
ULPS = {torch.float64: 64, torch.float32: 4, torch.bfloat16: 4, torch.float16: 4}
FLOOR = {dt: ulps * torch.finfo(dt).eps for dt, ulps in ULPS.items()}
# float64 1.4e-14, float32 4.8e-7, bfloat16 3.1e-2, float16 3.9e-3
# The dtype a kernel computes its logits in, for inputs of a dtype: half types accumulate in float32.
ACCUMULATE = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}


@overload
def oracle(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = ...,
    is_causal: bool = ...,
    scale: float | None = ...,
    enable_gqa: bool = ...,
    alignment: str = ...,
    dtype: torch.dtype = ...,
    *,
    window: tuple[int, int] | None = ...,
    softcap: float | None = ...,
    sinks: Tensor | None = ...,
    return_lse: Literal[False] = ...,
) -> Tensor: ...


@overload
def oracle(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = ...,
    is_causal: bool = ...,
    scale: float | None = ...,
    enable_gqa: bool = ...,
    alignment: str = ...,
    dtype: torch.dtype = ...,
    *,
    window: tuple[int, int] | None = ...,
    softcap: float | None = ...,
    sinks: Tensor | None = ...,
    return_lse: Literal[True],
) -> tuple[Tensor, Tensor]: ...


def oracle(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    alignment: str = "top-left",
    dtype: torch.dtype = torch.float64,
    *,
    window: tuple[int, int] | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Equation (1) in ``dtype`` (float64 by default) under the causal ``alignment`` the target declares.

    query (B, Hq, L, E), key (B, Hkv, S, E), value (B, Hkv, S, Ev) -> (B, Hq, L, Ev); rows with no admissible
    key give zeros (the reference convention; properties compare those rows separately).

    Every feature of docs/design.md, "Beyond SDPA", compiles into one of three things, so this stays one oracle:
    ``window=(left, right)`` into the visibility mask (a band aligned as the causal triangle, ANDed with it and
    with ``attn_mask``), ``softcap`` into a logit transform c * tanh(s / c) applied before the mask, and ``sinks``
    (Hq,) into one extra key per query head with logit ``sinks[h]`` and a zero value. ``return_lse`` also returns
    lse (B, Hq, L) = log(e^(sink) + sum_j e^(s_ij)) in natural log, -inf on rows with no key and no sink.
    """
    q, k, v = (t.to(dtype) for t in (query, key, value))
    k, v = expand_kv_heads(k, v, q.size(-3))  # (B, Hkv, S, E) -> (B, Hq, S, E)
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(dtype)
    L, S = q.size(-2), k.size(-2)
    mask = merge_masks(mask, is_causal, L, S, alignment, q.device, window=window)  # type: ignore[arg-type]
    sink = None if sinks is None else sinks.to(dtype)[:, None, None]  # (Hq,) -> (Hq, 1, 1), against (B, Hq, L, 1)
    out, _, lse = attention_with_lse(q, k, v, mask, scale, softcap=softcap, sink=sink)
    return (out, lse) if return_lse else out  # (B, Hq, L, Ev), (B, Hq, L)


@dataclass(frozen=True)
class Budget:
    """An error budget and how it was computed (printed in failure messages)."""

    value: float
    naive_error: float
    k: float
    floor: float
    dtype: torch.dtype

    def explain(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        return f"{self.value:.3g} = {self.k:g} x naive {dt} error {self.naive_error:.3g} + floor {self.floor:.3g}"


def _max_abs_finite(a: Tensor, b: Tensor) -> float:
    """max |a - b| over entries where both are finite (0 if none)."""
    both = torch.isfinite(a) & torch.isfinite(b)
    if not both.any():
        return 0.0
    return float((a - b).abs()[both].max())


def budget(
    naive: Tensor,
    reference: Tensor,
    value_scale: float,
    dtype: torch.dtype,
    k: float = K_OUTPUT,
    logit_scale: float = 1.0,
) -> Budget:
    """The tolerance for a target in ``dtype`` given the naive same-dtype result and the float64 reference.

    Entries where the naive result overflowed (e.g. float16 Q K^T beyond 65504, docs/bugs.md #10) do not inflate
    the budget: they are left out of the naive error, and the property ``numerical_range`` checks finiteness.
    """
    naive_error = _max_abs_finite(naive.double(), reference)
    eps = torch.finfo(dtype).eps
    logit_eps = torch.finfo(ACCUMULATE[dtype]).eps * logit_scale  # a logit's rounding: eps(A) * max|s|
    floor = ULPS[dtype] * max(1.0, value_scale) * max(eps, logit_eps)
    return Budget(k * naive_error + floor, naive_error, k, floor, dtype)


def precision(dtype: torch.dtype, compute: torch.dtype | None) -> torch.dtype:
    """The precision a target computes in: its compute dtype where that is coarser than the input's (a float64
    call computed in float32), else the input dtype (half types computed in float32 still round to the input)."""
    if compute is None or torch.finfo(compute).eps <= torch.finfo(dtype).eps:
        return dtype
    return compute


def output_budget(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    reference: Tensor,
    alignment: str = "top-left",
    compute: torch.dtype | None = None,
    **kwargs: object,
) -> Budget:
    """Budget for the forward output: naive = the reference computed in the target's precision (a coarser declared
    or observed compute dtype; for inputs computed at their own precision, the dtype they accumulate in: float32
    logits and softmax for half inputs, as a fused kernel and FlashAttention's ``attention_ref(upcast=True)``),
    rounded to the inputs' dtype."""
    work = precision(query.dtype, compute)
    # computed at the input's own precision: a half type is calibrated on a fused kernel (logits in float32)
    calibration = ACCUMULATE[work] if work == query.dtype else work
    naive = oracle(query, key, value, alignment=alignment, dtype=calibration, **kwargs)  # type: ignore[call-overload]
    naive = naive.to(query.dtype)
    value_scale = float(value.double().abs().max()) if value.numel() else 1.0
    return budget(naive, reference, value_scale, work, logit_scale=logit_scale(query, key, kwargs))


def logit_scale(query: Tensor, key: Tensor, kwargs: dict[str, object]) -> float:
    """The logits' magnitude for the floor: ``max_logit`` plus the largest finite |float mask| and |sink| (the
    bias moves the logits, and a sink is one more logit in the row). The floor multiplies it by eps of the dtype
    the logits accumulate in (ACCUMULATE); a float mask or sink arrives in the input dtype T and a kernel may add
    it there (torch SDPA's CPU kernel in float16 does), so its part is weighted by eps(T) / eps(accumulate)."""
    logits = max_logit(query, key, kwargs.get("scale"))
    in_t = torch.finfo(query.dtype).eps / torch.finfo(ACCUMULATE.get(query.dtype, query.dtype)).eps
    for extra in (kwargs.get("attn_mask"), kwargs.get("sinks")):
        if isinstance(extra, Tensor) and extra.dtype != torch.bool and extra.numel():
            finite = extra[torch.isfinite(extra)]
            logits += in_t * float(finite.double().abs().max()) if finite.numel() else 0.0
    return logits


def max_logit(query: Tensor, key: Tensor, scale: object = None) -> float:
    """max |q| |k| * scale: bounds sum_i |q_i k_i| * scale, to which each scaled logit's rounding is proportional."""
    if query.numel() == 0 or key.numel() == 0:
        return 1.0
    s = float(scale) if isinstance(scale, int | float) else query.size(-1) ** -0.5
    q_norm = query.double().norm(dim=-1).max()  # Cauchy-Schwarz bound: |q . k| <= |q| |k|
    k_norm = key.double().norm(dim=-1).max()
    return float(q_norm * k_norm) * s


def expect(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    alignment: str,
    compute: torch.dtype | None = None,
    **kwargs: object,
) -> tuple[Tensor, Budget]:
    """(float64 oracle output, output budget) for one call in the inputs' dtype, computed at ``compute``."""
    reference = oracle(query, key, value, attn_mask, alignment=alignment, **kwargs)  # type: ignore[call-overload]
    tol = output_budget(query, key, value, reference, alignment, compute, attn_mask=attn_mask, **kwargs)
    return reference, tol


def lse_budget(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    reference_lse: Tensor,
    lse_dtype: torch.dtype,
    alignment: str = "top-left",
    compute: torch.dtype | None = None,
    **kwargs: object,
) -> Budget:
    """Budget for a returned log-sum-exp: naive = the reference's lse computed in the target's precision, or in
    the coarser dtype the target returns its lse in (the contract's lse is float32 whatever the inputs), rounded
    to that dtype. An lse is a logit: no value scale; its rounding grows with the logits' magnitude (the floor's
    logit scale), as exp(s - lse) passes a logit error through one to one."""
    work = precision(precision(query.dtype, compute), lse_dtype)
    _, naive = oracle(query, key, value, alignment=alignment, dtype=work, return_lse=True, **kwargs)  # type: ignore[call-overload]
    return budget(naive.to(lse_dtype), reference_lse, 1.0, work, logit_scale=logit_scale(query, key, kwargs))


def expect_lse(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    alignment: str,
    lse_dtype: torch.dtype,
    compute: torch.dtype | None = None,
    **kwargs: object,
) -> tuple[Tensor, Budget]:
    """(float64 oracle lse (B, Hq, L), lse budget) for one call whose target returns its lse in ``lse_dtype``."""
    _, reference = oracle(query, key, value, attn_mask, alignment=alignment, return_lse=True, **kwargs)  # type: ignore[call-overload]
    tol = lse_budget(query, key, value, reference, lse_dtype, alignment, compute, attn_mask=attn_mask, **kwargs)
    return reference, tol


def precision_note(
    query: Tensor, key: Tensor, value: Tensor, error: float, alignment: str = "top-left", **kwargs: object
) -> str:
    """For an output outside its budget, the coarser precision its error is consistent with (precision honesty):
    the reference computed entirely in C (k times its error plus the floor) for C in float32, float16, bfloat16
    where coarser than the input, finest first; the error in units of C's rounding at |V|. Empty when no such
    precision explains the error (a wrong answer, not a coarse one)."""
    dtype = query.dtype
    reference = oracle(query, key, value, alignment=alignment, **kwargs)  # type: ignore[call-overload]
    value_scale = float(value.double().abs().max()) if value.numel() else 1.0
    for compute in (c for c in (torch.float32, torch.float16, torch.bfloat16) if c.itemsize < dtype.itemsize):
        naive = oracle(query, key, value, alignment=alignment, dtype=compute, **kwargs)  # type: ignore[call-overload]
        rounded = budget(naive.to(dtype), reference, value_scale, compute, logit_scale=logit_scale(query, key, kwargs))
        if error <= rounded.value:
            ulp = torch.finfo(compute).eps * max(1.0, value_scale)
            name = str(compute).removeprefix("torch.")
            seen = f"{error / ulp:.1f} ulp of {name} at |V| (the reference computed in {name}: "
            return f"; the error, {seen}{rounded.naive_error / ulp:.1f}), is what computing in {name} gives " + (
                f"(declare --cap compute_dtype={name} if by design)"
            )
    return ""


# The logit-rounding band (issue 19). A kernel rounding its logits to T moves each logit s_ij = scale q_i . k_j + B_ij
# by at most d_ij = u (3 A_ij + |B_ij| + |z_ij|) + 2 u, u = eps(T) / 2 the unit roundoff, A_ij = scale sum_e |q_ie k_je|
# (>= scale |q_i . k_j|), z_ij = s_ij - max_j s_ij: the query scaled in T (u A), the logit rounded to T (u A), the
# bias added in T (u (A + |B|)), z in T (u |z|), and e^z and P in T (relative roundings: a logit shift of u each).
# softmax turns a logit shift into a weight factor (equation (1)): P_ij is proportional to e^(z_ij + delta_ij).
LOGIT_ROUNDINGS = 3  # roundings of magnitude A_ij per logit
WEIGHT_ROUNDINGS = 2  # relative roundings of a weight (e^z and P in T)
BAND_CHUNK = 2**21  # elements of (B, Hq, rows, S, Ev) per step of logit_rounding_band


def logit_rounding_band(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    alignment: str = "top-left",
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(lo, hi), float64 (B, Hq, L, Ev): the smallest and largest output of equation (1), elementwise, when every
    logit s_ij moves by any amount up to d_ij (the comment above), for half inputs of dtype T. An output of a
    kernel that rounds its logits to T, computed otherwise exactly, lies in [lo, hi].

    Each bound is a linear-fractional program: maximise sum_j w_j v_j / sum_j w_j over the box
    e^(z_ij - d_ij) <= w_j <= e^(z_ij + d_ij). Its optimum is at a vertex where w_j is at its upper bound exactly for
    the keys whose v_j exceed the optimum (Dinkelbach 1967): with the keys sorted by v_j, the best of the S + 1
    splits "the t largest values at the upper bound, the others at the lower". The minimum is the same with the
    bounds swapped. Rows with no admissible key give 0 (they are judged by their convention)."""
    u = torch.finfo(query.dtype).eps / 2
    q, k, v = (t.double() for t in (query, key, value))
    k, v = expand_kv_heads(k, v, q.size(-3))  # (B, Hkv, S, E) -> (B, Hq, S, E), and Ev
    L, S = q.size(-2), k.size(-2)
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.double()
    mask = merge_masks(mask, is_causal, L, S, alignment, q.device)  # type: ignore[arg-type]
    s = attention_logits(q, k, mask, scale)  # (B, Hq, L, S), -inf at masked keys
    admissible = torch.isfinite(s)  # (B, Hq, L, S)
    scale_ = scale if scale is not None else q.size(-1) ** -0.5
    size = LOGIT_ROUNDINGS * (q.abs() @ k.abs().transpose(-2, -1)) * scale_  # 3 A (B, Hq, L, S)
    bias = additive_bias(mask, torch.float64)
    if bias is not None:
        size = size + bias.abs().masked_fill(~torch.isfinite(bias), 0.0)  # + |B| (B, Hq, L, S)
    top = torch.where(admissible, s, -math.inf).amax(-1, keepdim=True)  # (B, Hq, L, 1)
    z = torch.where(admissible, s - top.nan_to_num(0.0, neginf=0.0), -math.inf)  # (B, Hq, L, S), <= 0
    d = u * (size + torch.where(admissible, z.abs(), 0.0) + WEIGHT_ROUNDINGS)  # d_ij (B, Hq, L, S)
    # weight bounds (B, Hq, L, S), 0 at masked keys; shifted by the row's largest upper exponent (the ratio of
    # sums does not change), so huge logits (d_ij beyond 709) do not overflow exp
    shift = (z + d).amax(-1, keepdim=True).nan_to_num(0.0, neginf=0.0)  # (B, Hq, L, 1)
    upper, lower = torch.exp(z + d - shift), torch.exp(z - d - shift)
    order = v.argsort(-2, descending=True)  # (B, Hq, S, Ev): per column, keys by decreasing value
    v_sorted = v.gather(-2, order).unsqueeze(2)  # (B, Hq, 1, S, Ev)
    lo = torch.zeros(*s.shape[:-1], v.size(-1), dtype=torch.float64)  # (B, Hq, L, Ev)
    hi = torch.zeros_like(lo)
    rows = max(1, BAND_CHUNK // max(1, lo.numel() // max(1, L) * S))
    for r in range(0, L, rows):
        idx = order.unsqueeze(2).expand(-1, -1, min(rows, L - r), -1, -1)  # (B, Hq, rows, S, Ev)
        up = upper[..., r : r + rows, :, None].expand(idx.shape).gather(-2, idx)  # (B, Hq, rows, S, Ev) sorted
        low = lower[..., r : r + rows, :, None].expand(idx.shape).gather(-2, idx)
        best = _best_split(up, low, v_sorted).nan_to_num(-math.inf).amax(-2)  # a split with no weight: none
        hi[..., r : r + rows, :] = best.nan_to_num(0.0, neginf=0.0)
        best = _best_split(low, up, v_sorted).nan_to_num(math.inf).amin(-2)
        lo[..., r : r + rows, :] = best.nan_to_num(0.0, posinf=0.0)
    return lo, hi


def _best_split(first: Tensor, rest: Tensor, v: Tensor) -> Tensor:
    """sum_j w_j v_j / sum_j w_j for the S + 1 splits: w = ``first`` on the t largest values, ``rest`` on the others.
    first, rest (..., S, Ev) in the order of decreasing v (..., S, Ev) -> (..., S + 1, Ev); NaN where no weight
    (a split whose weights all underflow, or a row without keys)."""
    zero = torch.zeros_like(first[..., :1, :])  # (..., 1, Ev)
    w_first = torch.cat([zero, first.cumsum(-2)], -2)  # (..., S + 1, Ev): sum over the t largest
    wv_first = torch.cat([zero, (first * v).cumsum(-2)], -2)
    # sums over the others as suffix sums, not the total minus a prefix: the weights span hundreds of orders of
    # magnitude at large logits, and the difference would cancel the small ones away
    w_rest = torch.cat([rest.flip(-2).cumsum(-2).flip(-2), zero], -2)  # (..., S + 1, Ev)
    wv_rest = torch.cat([(rest * v).flip(-2).cumsum(-2).flip(-2), zero], -2)
    return (wv_first + wv_rest) / (w_first + w_rest)


def degenerate_outputs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    reference: Tensor,
    alignment: str = "top-left",
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> dict[str, Tensor]:
    """Outputs (B, Hq, L, Ev), float64, that a cheating or broken kernel returns in place of ``reference``: the
    garbage the budget must reject (issue 19: the garbage-rejection self-test, and a mask or causal fast path)."""
    _, v = expand_kv_heads(key, value.double(), query.size(-3))  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    s = scale if scale is not None else query.size(-1) ** -0.5
    same = {"attn_mask": attn_mask, "is_causal": is_causal, "alignment": alignment}
    out = {
        "the mean of V": v.mean(-2, keepdim=True).expand_as(reference),  # (B, Hq, 1, Ev) -> (B, Hq, L, Ev)
        "zeros": torch.zeros_like(reference),
        "a constant": torch.full_like(reference, 0.5),
        "rows permuted": reference.roll(1, dims=-2),
        "half the scale": oracle(query, key, value, scale=s / 2, **same),  # type: ignore[call-overload]
        "twice the scale": oracle(query, key, value, scale=s * 2, **same),  # type: ignore[call-overload]
    }
    if query.size(-2) <= value.size(-2):
        out["V itself"] = v[..., : query.size(-2), :]  # (B, Hq, L, Ev): row i returns value i
    if attn_mask is not None:
        out["the mask ignored"] = oracle(query, key, value, None, is_causal, s, alignment=alignment)
    if is_causal:
        out["the causal triangle ignored"] = oracle(query, key, value, attn_mask, False, s, alignment=alignment)
    return out


@dataclass(frozen=True)
class LogitRounding:
    """How matches_oracle judges half inputs whose logits a kernel may round to T (issue 19)."""

    lo: Tensor  # (B, Hq, L, Ev) float64: logit_rounding_band
    hi: Tensor
    # degenerate outputs wrong somewhere (outside the budget of the reference) yet within the budget of the band on
    # every row: a kernel returning one would pass as a kernel rounding its logits
    explained_by: tuple[str, ...]


def logit_rounding(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    reference: Tensor,
    tol: float,
    live: Tensor,
    alignment: str = "top-left",
    **kwargs: object,
) -> LogitRounding:
    """The band of :func:`logit_rounding_band` and the degenerate outputs it cannot tell from an honest one. An
    output farther than ``tol`` from the band on a live row is no kernel rounding its logits to T (a wrong answer);
    one within it everywhere is such a kernel, less precise but not wrong, unless ``explained_by`` is non-empty:
    then a degenerate output would pass as well, and the example is inconclusive. The rows where the band is narrow
    are what rejects a degenerate output. ``live`` (B, Hq, L, 1): rows with an admissible key."""
    lo, hi = logit_rounding_band(query, key, value, alignment, **kwargs)  # type: ignore[arg-type]
    ref = reference.cpu()
    rows = live.cpu().squeeze(-1)  # (B, Hq, L)
    explained = []
    for name, g in degenerate_outputs(query, key, value, ref, alignment, **kwargs).items():  # type: ignore[arg-type]
        wrong = ((g - ref).abs() > tol).any(-1)  # (B, Hq, L): rows where it is outside the budget
        inside = ((g >= lo - tol) & (g <= hi + tol)).all(-1)  # (B, Hq, L): rows where the band admits it
        if bool(wrong[rows].any()) and bool(inside[rows].all()):
            explained.append(name)
    return LogitRounding(lo, hi, tuple(explained))


def precision_ratio(dtype: torch.dtype, error: float, fused_error: float) -> str:
    """A passing half-precision output's max error against a float32-logit kernel's on the same inputs, as an
    observation with few distinct values: within FlashAttention's 2x rule, or up to the next power of two (a
    kernel rounding its logits to the input dtype shows as up to 8x to 16x)."""
    name = str(dtype).removeprefix("torch.")
    half_ulp = torch.finfo(dtype).eps / 2  # below this both errors are the output's own rounding
    ratio = max(error, half_ulp) / max(fused_error, half_ulp)
    if ratio <= 2:
        return f"{name}: within 2x of its max error"
    return f"{name}: max error up to {2 ** math.ceil(math.log2(ratio))}x its (logits rounded to {name}?)"
