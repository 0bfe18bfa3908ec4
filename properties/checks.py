"""Named assertion helpers: every property asserts through these, so every failure reads the same way.

In the style of array-api-tests, a failure message makes sense without reading the test: what was
checked, on which inputs (the counterexample, as :meth:`Problem.describe`), what came out against what
was expected, the tolerance and how it was derived, and where the worst element is. The exception
carries the :class:`Problem`, so the pytest plugin can print a copy-pasteable reproduction.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.errors import PropertyFailure
from attncheck.properties.oracle import Budget
from attncheck.properties.problems import Problem
from attncheck.properties.targets import Target

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


def require(condition: bool, reason: str) -> None:
    """Skip the property as not applicable (never pass it) when the target lacks a feature."""
    if not condition:
        pytest.skip(f"not applicable: {reason}")


def check(condition: bool, what: str, problem: Problem | None, **worst: Any) -> None:
    """Fail with ``what`` unless ``condition`` holds."""
    if not condition:
        raise PropertyFailure(what, problem, worst)


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
        raise PropertyFailure(f"{what}: shape {tuple(got64.shape)} != expected {tuple(exp64.shape)}", problem)
    considered = torch.ones_like(exp64, dtype=torch.bool) if where is None else where.expand_as(exp64).cpu()
    finite_expected = torch.isfinite(exp64) & considered
    bad = finite_expected & ~torch.isfinite(got64)
    if bad.any():
        idx = _index(int(bad.flatten().nonzero()[0]), exp64.shape)
        raise PropertyFailure(
            f"{what}: non-finite output {got64[idx].item()} where the expectation is finite "
            f"({exp64[idx].item():.6g}) at index {list(idx)} ({int(bad.sum())} of {bad.numel()} elements)",
            problem,
            {"index": list(idx), "got": got64[idx].item(), "expected": exp64[idx].item()},
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
        raise PropertyFailure(
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
        raise PropertyFailure(
            f"{what}: not bitwise identical; max |difference| {float(diff.max()) if diff.numel() else 0:.3g} "
            f"at index {list(idx)}",
            problem,
            {"index": list(idx), "difference": float(diff.max()) if diff.numel() else 0.0},
        )
