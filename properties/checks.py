"""Named assertion helpers: every property asserts through these, so every failure reads the same way.

In the style of array-api-tests, a failure message makes sense without reading the test: what was
checked, on which inputs (the counterexample, as :meth:`Problem.describe`), what came out against what
was expected, the tolerance and how it was derived, and where the worst element is. The exception
carries the :class:`Problem`, so the pytest plugin can print a copy-pasteable reproduction.
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn

import torch
from torch import Tensor

from attncheck.errors import PropertyFailure, TargetError
from attncheck.properties.contract import Target
from attncheck.properties.contract import require as require  # the named checks' helper, re-exported
from attncheck.properties.oracle import ACCUMULATE, Budget, expect, logit_rounding, precision_note, precision_ratio
from attncheck.properties.problems import Problem

# Conventions observed on targets while a check runs (e.g. what fully masked rows return), for the report. The
# plugin drains them into the check's test report, so they travel from pytest-xdist workers with the result.
_OBSERVED: list[tuple[str, str, str]] = []  # (target, what, value)


def observe(target: Target, what: str, value: str) -> None:
    """Record a convention observed on ``target`` (reported, not judged)."""
    _OBSERVED.append((target.name, what, value))


def drain_observations() -> list[tuple[str, str, str]]:
    """The observations recorded since the last call, removed from the buffer."""
    taken = list(_OBSERVED)
    _OBSERVED.clear()
    return taken


def target_grads(target: Target, out: Tensor, inputs: tuple[Tensor, ...], grad_out: Tensor) -> tuple[Tensor, ...]:
    """Gradients of the target's ``out`` with respect to ``inputs`` (leaves) for the output gradient ``grad_out``.

    A backward that raises is the target raising (status error, not a wrong answer). Some libraries' backward
    works under ``.backward()`` but not under ``torch.autograd.grad``: then the gradients come from
    ``.backward()`` and the difference is reported as an observation. Unused inputs get zero gradients.

    attncheck's own autograd call is never blamed on the target: an empty output has zero gradients (nothing is
    asked of autograd), and an output that carries no autograd graph although its inputs require gradients is
    named as such (a wrong answer: no gradient reaches the inputs), not as the target raising.
    """
    if out.numel() == 0:  # d(nothing)/d(inputs) = 0; autograd refuses an output of a graph it never saw
        return tuple(torch.zeros_like(x) for x in inputs)
    if not out.requires_grad and any(x.requires_grad for x in inputs):
        raise TargetError(
            f"target {target.name!r} returned an output detached from its inputs (no autograd graph: "
            "requires_grad=False although query, key and value require gradients), so no gradient reaches them; "
            "declare --no-grad if the target is not differentiable",
            "returned",
        )
    try:
        grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True, retain_graph=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        try:
            for x in inputs:
                x.grad = None
            out.backward(grad_out)
            grads = tuple(x.grad for x in inputs)  # type: ignore[misc]
        except Exception:
            raise TargetError(
                f"target {target.name!r}: backward raised {type(exc).__name__}: {first}", "raised"
            ) from exc
        observe(target, "backward", f"torch.autograd.grad raises {type(exc).__name__}, .backward() works")
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True))


def _fail(failure: PropertyFailure) -> NoReturn:
    """Raise ``failure`` as if from the line of the property that called the helper.

    Hypothesis tells distinct bugs of one check apart by where their exception was raised (``InterestingOrigin``:
    type, file, line of the innermost frame); since every failure goes through these helpers, all would share
    one origin, and a second bug in the same check would be folded into the first. The traceback is ended at
    the caller's frame, so each assertion of a property is its own origin, and each bug gets its own report.
    """
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    raise failure.with_traceback(types.TracebackType(None, frame, frame.f_lasti, frame.f_lineno))


def check(condition: bool, what: str, problem: Problem | None, **worst: Any) -> None:
    """Fail with ``what`` unless ``condition`` holds."""
    if not condition:
        _fail(PropertyFailure(what, problem, worst))


def _index(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape))


def assert_close(
    got: Tensor,
    expected: Tensor,
    budget: Budget | float,
    what: str,
    problem: Problem | None,
    where: Tensor | None = None,
) -> float:
    """``got`` is within ``budget`` of ``expected`` elementwise (float64), on ``where`` (default everywhere).

    Non-finite output where the expectation is finite fails outright; the largest error is returned.
    """
    got64, exp64 = got.detach().double().cpu(), expected.detach().double().cpu()
    if got64.shape != exp64.shape:
        _fail(PropertyFailure(f"{what}: shape {tuple(got64.shape)} != expected {tuple(exp64.shape)}", problem))
    considered = torch.ones_like(exp64, dtype=torch.bool) if where is None else where.expand_as(exp64).cpu()
    finite_expected = torch.isfinite(exp64) & considered
    bad = finite_expected & ~torch.isfinite(got64)
    if bad.any():
        idx = _index(int(bad.flatten().nonzero()[0]), exp64.shape)
        _fail(
            PropertyFailure(
                f"{what}: non-finite output {got64[idx].item()} where the expectation is finite "
                f"({exp64[idx].item():.6g}) at index {list(idx)} ({int(bad.sum())} of {bad.numel()} elements)",
                problem,
                {"index": list(idx), "got": got64[idx].item(), "expected": exp64[idx].item()},
            )
        )
    err = torch.where(finite_expected, (got64 - exp64).abs(), torch.zeros_like(exp64))
    if err.numel() == 0:
        return 0.0
    flat = int(err.flatten().argmax())
    worst_err = float(err.flatten()[flat])
    limit = budget.value if isinstance(budget, Budget) else float(budget)
    explain = budget.explain() if isinstance(budget, Budget) else f"{limit:.3g}"
    if worst_err > limit:
        idx = _index(flat, exp64.shape)
        _fail(
            PropertyFailure(
                f"{what}: max |error| {worst_err:.3g} exceeds the budget {explain}; worst at index {list(idx)}: "
                f"got {got64[idx].item():.6g}, expected {exp64[idx].item():.6g}",
                problem,
                {
                    "error": worst_err,
                    "budget": limit,
                    "index": list(idx),
                    "got": got64[idx].item(),
                    "expected": exp64[idx].item(),
                },
            )
        )
    return worst_err


def assert_identical(got: Tensor, expected: Tensor, what: str, problem: Problem | None) -> None:
    """Bitwise equality (NaN equal to NaN): determinism and purity are exact properties."""
    if (
        got.shape != expected.shape
        or not torch.equal(torch.nan_to_num(got.detach(), nan=1.2345), torch.nan_to_num(expected.detach(), nan=1.2345))
        or not torch.equal(got.isnan(), expected.isnan())
    ):
        diff = (got.detach().double() - expected.detach().double()).abs().nan_to_num(float("inf"))
        flat = int(diff.flatten().argmax()) if diff.numel() else 0
        idx = _index(flat, diff.shape) if diff.numel() else ()
        _fail(
            PropertyFailure(
                f"{what}: not bitwise identical; max |difference| {float(diff.max()) if diff.numel() else 0:.3g} "
                f"at index {list(idx)}",
                problem,
                {"index": list(idx), "difference": float(diff.max()) if diff.numel() else 0.0},
            )
        )


# ---------------------------------------------------------------------------------------------------------------
# Rows with no admissible key (emptied by a mask, by the causal alignment with L > S, or by a window)


def live_rows(p: Problem, mask: Tensor | None, alignment: str) -> Tensor:
    """(B, Hq, L, 1) bool: query rows with at least one admissible key under ``alignment``."""
    return p.admissible(mask, alignment).any(-1, keepdim=True)


def row_convention(rows: Tensor, v: Tensor, atol: float) -> str:
    """Name what rows with no admissible key (n, Ev) return, given the values they could have seen (n, S, Ev)."""
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


def judge_empty_rows(target: Target, out: Tensor, value: Tensor, live: Tensor, p: Problem) -> None:
    """Observe the convention of the rows with no admissible key (zeros, NaN, uniform = the mean of V, other),
    whatever emptied them, and fail only against a convention the target declared (docs/bugs.md #1)."""
    dead = ~live.squeeze(-1)  # (B, Hq, L)
    if not bool(dead.any()):
        return
    v_per_q = value.detach().double().repeat_interleave(p.Hq // p.Hkv, dim=1)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    seen = v_per_q.unsqueeze(2).expand(-1, -1, p.L, -1, -1)[dead.cpu()]  # (n, S, Ev)
    eps = torch.finfo(out.dtype).eps
    convention = row_convention(out.detach().double()[dead], seen.to(out.device), atol=4 * eps)
    observe(target, "fully masked rows", convention)
    declared = target.caps.masked_rows
    check(
        declared is None or convention == declared,
        f"rows with no admissible key return {convention}, but the target declares {declared}",
        p,
    )


def judge_output(
    target: Target,
    p: Problem,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    out: Tensor,
    *,
    quantity: str = "output",
    note: str = "",
    judged: bool = True,
) -> float | None:
    """The target's output ``out`` for the call ``p`` makes with (q, k, v, mask) against the float64 oracle of
    equation (1): the error over the budget, or None when the example is inconclusive. Raises PropertyFailure.

    The budget is k x (naive same-dtype error) + floor of a kernel that keeps its logits in float32
    (oracle.expect), at the judged precision (``judged=True``: matches_oracle ignores what the probe observed;
    ``quantity`` is then named "... vs float64 oracle") or the observed one (``quantity`` is the whole phrase).
    Half inputs beyond that budget are judged against every output that rounding the logits to the input dtype T
    can give (oracle.logit_rounding: an exact per-element band): outside it by more than the budget on any row, no
    such kernel gives the output and it fails; inside it, the kernel is less precise, not wrong, and passes with its
    precision reported, unless a degenerate output (mean of V, half the scale...) fits the band too: then the
    example cannot tell the two apart and is inconclusive (None: the caller rejects it)."""
    align = target.caps.alignment
    live = live_rows(p, mask, align).to(out.device)  # rows emptied by the causal alignment follow their convention
    judge_empty_rows(target, out, v, live, p)
    compute = target.precision(q.dtype, judged=judged)
    ref, tol = expect(q, k, v, mask, align, compute, is_causal=p.is_causal, scale=p.scale)
    what = (compared(quantity, target, q.dtype) if judged else quantity) + note
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
    elif worst > tol.value and not half and judged:  # name the precision the error is consistent with
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


def compared(quantity: str, target: Target, dtype: torch.dtype) -> str:
    """What is compared (``quantity`` vs float64 oracle); where the probe saw a coarser precision than
    declared, the message says so first."""
    name = str(dtype).removeprefix("torch.")
    seen = target.observed_precision.get(name)
    if seen is None:
        return f"{quantity} vs float64 oracle"
    return (
        f"{name} inputs computed at about {seen} precision (declare --cap compute_dtype={seen} if by design): "
        f"{quantity} vs float64 oracle"
    )
