"""The property catalog: stable names, Hypothesis profiles, and the lookup of each property's checks.

A *property* (a stable name in reports and JSON, docs/design.md "Property catalog") is made of one or more
*checks*, ordinary pytest + Hypothesis test functions in ``properties/test_*.py`` tagged with :func:`prop`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import InvalidArgument

from attncheck.properties import PROFILE_NAMES

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
    "window",
    "softcap",
    "sinks",
    "lse",
    "varlen",
    "decode",
    "model",
    "integrity",
    "batch_invariance",
)

PROFILES = PROFILE_NAMES
# Hypothesis profiles are named after the project and registered only when an attncheck run asks for one
# (profile_settings), so installing attncheck never changes the settings of another project's tests.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors]
_PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "dev": {"max_examples": 30, "deadline": None, "suppress_health_check": _SLOW_OK},
    # CI: derandomized (the same examples on every run, so CI is reproducible), no example database to carry
    # state between runs; 50 examples per check keep a built-in target at about 10 to 20 s on 2 cores.
    "ci": {
        "max_examples": 50,
        "deadline": None,
        "derandomize": True,
        "database": None,
        "print_blob": True,
        "suppress_health_check": _SLOW_OK,
    },
    # Thorough: many examples; the forward oracle check calls hypothesis.target() on error/budget, so the search
    # climbs toward the worst case (useful above ~1000 examples, docs/design.md, "Anchors").
    "thorough": {"max_examples": 1000, "deadline": None, "suppress_health_check": _SLOW_OK},
    # Screen: the first stage of a loop over generated kernels (attncheck.verify(fn, profile="screen")): few
    # derandomized examples, no shrinking (Hypothesis then stops at the first failing example), and the plugin
    # runs the checks in SCREEN_ORDER and stops the session at the first red one. The counterexample is the first
    # failing draw, not the smallest: re-run that check under dev or ci to shrink it.
    "screen": {
        "max_examples": 10,
        "deadline": None,
        "derandomize": True,
        "database": None,
        "phases": (Phase.explicit, Phase.generate),
        "report_multiple_bugs": False,
        "suppress_health_check": _SLOW_OK,
    },
}


# The screen profile's order: the cheapest checks first, by their time on a correct kernel under the screen profile
# (0.07 s to 3.2 s each), with the checks that catch the most meta-test mutants (tests/mutants.py: the forward
# oracle, causality, masked rows, masks, purity) moved up among the first; then the feature checks in catalog
# order, and the model-level checks (a Transformer around the target, 22 s in all) last. The integrity checks
# (tests/cheats.py: the exploits of generated kernels) follow the forward oracle. A broken kernel fails fast
# when the check that catches it runs early; a correct one runs them all (tests/verdict_speed.py measures both).
SCREEN_ORDER = (
    "test_scaled_logits_have_unit_variance",
    "test_future_gradient_is_zero",
    "test_no_rng_dependence_without_dropout",
    "test_effective_scale",
    "test_ones_in_ones_out",
    "test_forward_matches_oracle",
    "test_output_shares_no_storage",
    "test_inputs_unchanged_in_every_grad_mode",
    "test_refilled_buffers_give_the_new_answer",
    "test_no_uninitialised_memory_in_the_output",
    "test_future_perturbation",
    "test_fully_masked_rows",
    "test_broadcast_mask_equals_materialised",
    "test_all_true_mask_equals_no_mask",
    "test_masked_keys_nonfinite_irrelevant",
    "test_masked_keys_irrelevant",
    "test_bool_mask_equals_additive_mask",
    "test_inputs_unchanged",
    "test_repeated_calls_identical",
    "test_query_permutation_equivariance",
    "test_dropout_fraction_and_rescale",
    "test_gqa_equals_repeat_interleave",
    "test_expanded_mask_equals_contiguous",
    "test_weights_are_distributions",
    "test_batch_slice_equals_whole",
    "test_row_shift_invariance",
    "test_half_precision_qk_overflow",
    "test_strided_inputs_equal_contiguous",
    "test_huge_logits_finite_and_accurate",
    "test_linear_in_values",
    "test_head_slice_equals_whole",
    "test_finite_min_bias_does_not_overflow",
    "test_output_in_convex_hull",
    "test_key_permutation_invariance",
    "test_gradients_match_oracle",
    "test_output_plain_complete_no_threads",  # waits 50 ms per example for work finished after the return
)


def screening_rank(check: str) -> tuple[int, int]:
    """Sort key of a check under the screen profile: SCREEN_ORDER, then the other checks, the model's last."""
    if check in SCREEN_ORDER:
        return (0, SCREEN_ORDER.index(check))
    return (2 if check_catalog().get(check) == "model" else 1, 0)


def profile_settings(profile: str, max_examples: int | None = None) -> settings:
    """The Hypothesis settings of an attncheck profile (registered as ``attncheck-<profile>``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {PROFILES}")
    name = f"attncheck-{profile}"
    try:
        base = settings.get_profile(name)
    except InvalidArgument:
        settings.register_profile(name, settings(**_PROFILE_SETTINGS[profile]))
        base = settings.get_profile(name)
    return base if max_examples is None else settings(base, max_examples=max_examples)


@contextlib.contextmanager
def check_settings(check: Callable[..., Any], chosen: settings) -> Iterator[None]:
    """Run the ``@given`` check ``check`` under ``chosen`` for the duration of the block, then restore.

    ``@given`` captures ``settings.default`` when the module is imported, so loading a profile later has no
    effect on it; and loading one globally would change every other test of the session. Hypothesis reads the
    settings a given-test runs under from ``_hypothesis_internal_use_settings`` when it is called (the same
    attribute its ``@settings`` and ``@seed`` decorators set): swap it for this call only.
    """
    attr = "_hypothesis_internal_use_settings"
    previous = getattr(check, attr)
    setattr(check, attr, chosen)
    try:
        yield
    finally:
        setattr(check, attr, previous)


def prop(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Tag a check as belonging to the property ``name`` of the catalog."""
    if name not in PROPERTIES:
        raise ValueError(f"unknown property {name!r}; the catalog has {PROPERTIES}")

    def tag(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.attncheck_property = name  # type: ignore[attr-defined]  # read by the plugin (no pytest mark)
        return fn

    return tag


@functools.cache
def checks() -> dict[str, list[Callable[..., Any]]]:
    """Property name -> its check functions (imports every ``properties.test_*`` module)."""
    import attncheck.properties as properties

    found: dict[str, list[Callable[..., Any]]] = {name: [] for name in PROPERTIES}
    for info in sorted(pkgutil.iter_modules(properties.__path__), key=lambda m: m.name):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"attncheck.properties.{info.name}")
        for obj in vars(module).values():
            name = getattr(obj, "attncheck_property", None)
            if name is not None and callable(obj):
                found[name].append(obj)
    return found


def check_catalog() -> dict[str, str]:
    """Check name -> the property it belongs to, for every check of the catalog."""
    return {check.__name__: prop for prop, found in checks().items() for check in found}
