"""Meta-tests: the suite finds each deliberately broken implementation, and no correct one is flagged.

Each mutant in tests/mutants.py carries one bug from docs/bugs.md and names the property meant to catch it;
each variant in tests/variants.py is a correct implementation in another style. The property checks are the
very Hypothesis tests the CLI runs, called directly with ``target=`` (Hypothesis runs its search, shrinking
included).

Settings: every check runs under ``profile_settings("ci", max_examples=20)``: derandomized, no example
database, 20 examples per check, so a pass or a catch here is reproducible. They are applied to each check for
the duration of its call with ``check_settings``; loading a Hypothesis profile would not reach the checks,
whose ``@given`` took ``settings.default`` when their module was imported.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import Phase, settings
from torch import Tensor

from attncheck.properties.catalog import PROPERTIES, check_settings, checks, profile_settings
from attncheck.properties.checks import PropertyFailure
from attncheck.properties.contract import Target, TargetError
from tests.mutants import MUTANTS
from tests.variants import VARIANTS, variant_target

META_SETTINGS = profile_settings("ci", max_examples=20)
# Whether a mutant is caught needs a failing example, not its shrunk form: the same 20 examples, no shrinking
CATCH_SETTINGS = settings(META_SETTINGS, phases=(Phase.explicit, Phase.reuse, Phase.generate))


def run_property(target: Target, prop: str, chosen: settings = META_SETTINGS) -> tuple[list[str], list[str], list[str]]:
    """(failures, passes, skips) of the property's checks on ``target`` under ``chosen``, one message per check."""
    failures, passes, skips = [], [], []
    for check in checks()[prop]:
        if check.__name__ in target.caps.known_failures:  # a declared, accepted deviation (xfail in a real run)
            skips.append(f"{check.__name__}: known deviation")
            continue
        try:
            with check_settings(check, chosen):
                check(target=target)
        except pytest.skip.Exception as exc:
            skips.append(f"{check.__name__}: {exc.msg}")
        except (PropertyFailure, TargetError, AssertionError) as exc:
            failures.append(f"{check.__name__}: {str(exc).splitlines()[0]}")
        except BaseExceptionGroup as group:  # several distinct failures in one check
            failures.append(f"{check.__name__}: {len(group.exceptions)} distinct failures")
        else:
            passes.append(check.__name__)
    return failures, passes, skips


def test_there_are_enough_mutants_and_variants() -> None:
    assert len(MUTANTS) >= 20 and len(VARIANTS) >= 5
    assert {m.property for m in MUTANTS.values()} <= set(PROPERTIES)


def test_meta_settings_reach_the_checks() -> None:
    """run_property runs a check on exactly 20 examples, the same ones on every run (derandomized).

    test_effective_scale calls its target once per example. Without check_settings it would run on the settings
    its ``@given`` took at import: in a plain pytest run, Hypothesis' defaults (100 random examples, with the
    example database).
    """
    (check,) = (c for c in checks()["scaling_variance"] if c.__name__ == "test_effective_scale")
    correct = VARIANTS["float64_inside"]

    def queries_of_one_run() -> list[Tensor]:
        queries: list[Tensor] = []

        def recording(query: Tensor, key: Tensor, value: Tensor, **kwargs: Any) -> Tensor:
            queries.append(query.clone())
            return correct.fn(query, key, value, **kwargs)

        with check_settings(check, META_SETTINGS):
            check(target=Target("recording", recording, correct.caps))
        return queries

    first, second = queries_of_one_run(), queries_of_one_run()
    assert len(first) == len(second) == 20
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught_by_its_property(name: str) -> None:
    m = MUTANTS[name]
    failures, passes, skips = run_property(m.target(), m.property, CATCH_SETTINGS)
    assert failures, f"mutant {name!r} was not caught by {m.property} (passed: {passes}; skipped: {skips})"


@pytest.mark.parametrize("name", ["bool_mask_inverted", "mask_batch0_broadcast"])
def test_model_level_properties_catch_mask_bugs_inside_the_transformer(name: str) -> None:
    failures, passes, skips = run_property(MUTANTS[name].target(), "model", CATCH_SETTINGS)
    assert failures, f"{name} not caught inside the model (passed {passes}, skipped {skips})"


@pytest.mark.parametrize("prop", PROPERTIES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_correct_variant_passes(variant: str, prop: str) -> None:
    failures, _, _ = run_property(variant_target(variant), prop)
    assert not failures, f"false alarm on the correct variant {variant!r}: {failures}"
