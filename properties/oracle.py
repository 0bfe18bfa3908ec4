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
  half the scale. A kernel that rounds its logits to T passes where that rounding is small next to the output's
  (inputs of magnitude about 1) and fails where it is not; the failure names that precision
  (:func:`logit_precision_note`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from attncheck.reference.attention import attention_with_lse, expand_kv_heads, merge_masks

K_OUTPUT = 3.0
K_GRAD = 5.0
K_LOGITS = 1.5  # half inputs with logits rounded to the input dtype (logit_rounding_budget)
# Rounding the logits to the input dtype is "less precise" only while its budget is at most 1/16 of the values'
# scale: in bfloat16 with inputs of magnitude 10 it moves it by 7%, as far as an output at twice the
# scale is from the right one, and the budget must reject that output (the garbage-rejection self-test).
LOGIT_ROUNDING_LIMIT = 1 / 16
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


def logit_rounding_budget(
    query: Tensor, key: Tensor, value: Tensor, alignment: str = "top-left", **kwargs: object
) -> Budget:
    """For half inputs: the budget of a kernel that rounds its logits to the input dtype T before the softmax,
    K_LOGITS times the error of the reference computed entirely in T plus the floor. Such a kernel is less
    precise than a fused one, not wrong (issue 19): matches_oracle passes it within this budget and reports it,
    as long as this budget is at most LOGIT_ROUNDING_LIMIT of |V| (else it is 0: not a precision, a wrong answer).
    K_LOGITS is 1.5, not K_OUTPUT: the kernel rounds the same logits the same way, so its error is the
    reference's up to the order of float32 sums, and 1.5 keeps an output at half or twice the scale out in
    bfloat16 with inputs of magnitude 10 (tests/test_integrity.py)."""
    reference = oracle(query, key, value, alignment=alignment, **kwargs)  # type: ignore[call-overload]
    in_t = oracle(query, key, value, alignment=alignment, dtype=query.dtype, **kwargs)  # type: ignore[call-overload]
    value_scale = float(value.double().abs().max()) if value.numel() else 1.0
    rounded = budget(in_t, reference, value_scale, query.dtype, K_LOGITS, logit_scale(query, key, kwargs))
    if rounded.value > LOGIT_ROUNDING_LIMIT * max(1.0, value_scale):
        return Budget(0.0, rounded.naive_error, 0.0, 0.0, query.dtype)  # too coarse to be "merely less precise"
    return rounded


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
