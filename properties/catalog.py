"""The property catalog: stable names, Hypothesis profiles, and the lookup of each property's checks.

A *property* (a stable name in reports and JSON, shared/DESIGN.md "Property catalog") is made of one or more
*checks*, ordinary pytest + Hypothesis test functions in ``properties/test_*.py`` tagged with :func:`prop`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

PROPERTIES = (
    "rows_sum_to_one",
    "no_future_leakage",
    "permutation_equivariance",
    "scaling_variance",
    "matches_oracle",
    "mask_semantics",
    "fully_masked_rows",
    "shift_and_linearity",
    "batch_and_head_independence",
    "layout_invariance",
    "purity_and_determinism",
    "numerical_range",
    "dropout_statistics",
    "model",
)

PROFILES = ("dev", "ci", "thorough")
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors]
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_SLOW_OK)
# CI: derandomized (the same examples on every run, so CI is reproducible), no example database to carry state
# between runs; 50 examples per check keep a built-in target at about 10 to 20 s on 2 cores (goal: under 60 s).
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
# Thorough: many examples; the forward oracle check calls hypothesis.target() on error/budget, so the search
# climbs toward the worst case (useful above ~1000 examples, shared/ANCHORS.md).
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)


def prop(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Tag a check as belonging to the property ``name`` of the catalog."""
    if name not in PROPERTIES:
        raise ValueError(f"unknown property {name!r}; the catalog has {PROPERTIES}")

    def tag(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.attncheck_property = name  # type: ignore[attr-defined]
        return pytest.mark.attncheck_property(name)(fn)

    return tag


@functools.cache
def checks() -> dict[str, list[Callable[..., Any]]]:
    """Property name -> its check functions (imports every ``properties.test_*`` module)."""
    import properties

    found: dict[str, list[Callable[..., Any]]] = {name: [] for name in PROPERTIES}
    for info in sorted(pkgutil.iter_modules(properties.__path__), key=lambda m: m.name):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"properties.{info.name}")
        for obj in vars(module).values():
            name = getattr(obj, "attncheck_property", None)
            if name is not None and callable(obj):
                found[name].append(obj)
    return found
