"""Meta-tests: the suite finds each deliberately broken implementation, and no correct one is flagged.

Each mutant in tests/mutants.py carries one bug from shared/BUGS.md and names the property meant to catch it;
each variant in tests/variants.py is a correct implementation in another style. The property checks are the
very Hypothesis tests the CLI runs, called directly with ``target=`` (Hypothesis runs its search, shrinking
included). Settings: derandomized, so a pass or a catch here is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

from properties.catalog import PROPERTIES, checks
from properties.checks import PropertyFailure
from properties.targets import Capabilities, Target, TargetError
from tests.mutants import MUTANTS
from tests.variants import VARIANTS

settings.register_profile("meta", parent=settings.get_profile("ci"), max_examples=20)


@pytest.fixture(autouse=True)
def meta_profile() -> Iterator[None]:
    previous = settings.get_current_profile_name()
    settings.load_profile("meta")
    yield
    settings.load_profile(previous)


def run_property(target: Target, prop: str) -> tuple[list[str], list[str], list[str]]:
    """(failures, passes, skips) of the property's checks on ``target``, one message per failing check."""
    failures, passes, skips = [], [], []
    for check in checks()[prop]:
        if check.__name__ in target.caps.known_failures:  # a declared, accepted deviation (xfail in a real run)
            skips.append(f"{check.__name__}: known deviation")
            continue
        try:
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


def mutant_target(name: str) -> tuple[Target, str]:
    entry: tuple[Any, ...] = MUTANTS[name]
    fn: Callable[..., Any] = entry[0]
    caps = Capabilities(**entry[2]) if len(entry) > 2 and entry[2] else Capabilities()
    return Target(f"mutant:{name}", fn, caps, timeout=30), entry[1]


def test_there_are_enough_mutants_and_variants() -> None:
    assert len(MUTANTS) >= 20 and len(VARIANTS) >= 5
    assert {entry[1] for entry in MUTANTS.values()} <= set(PROPERTIES)


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught_by_its_property(name: str) -> None:
    target, prop = mutant_target(name)
    failures, passes, skips = run_property(target, prop)
    assert failures, f"mutant {name!r} was not caught by {prop} (passed: {passes}; skipped: {skips})"


@pytest.mark.parametrize("name", ["bool_mask_inverted", "mask_batch0_broadcast"])
def test_model_level_properties_catch_mask_bugs_inside_the_transformer(name: str) -> None:
    target, _ = mutant_target(name)
    failures, passes, skips = run_property(target, "model")
    assert failures, f"{name} not caught inside the model (passed {passes}, skipped {skips})"


def variant_target(name: str) -> Target:
    fn = VARIANTS[name]
    return Target(f"variant:{name}", fn, getattr(fn, "__attncheck__", Capabilities()), timeout=30)


@pytest.mark.parametrize("prop", PROPERTIES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_correct_variant_passes(variant: str, prop: str) -> None:
    failures, _, _ = run_property(variant_target(variant), prop)
    assert not failures, f"false alarm on the correct variant {variant!r}: {failures}"
