"""Detection matrix and false-alarm count of the meta-tests, for the record (markdown on stdout).

``python -m tests.meta_matrix [--max-examples N]``: every mutant of tests/mutants.py against every property of
the catalog, with the derandomized ``ci`` settings: X = caught, . = passed, s = not applicable; the property the
meta-tests assert for each mutant is in brackets.

``python -m tests.meta_matrix --false-alarms 1 2 3``: every correct variant of tests/variants.py against every
property, once per Hypothesis seed (random, not derandomized), counting the checks that flag a correct variant.
"""

from __future__ import annotations

import argparse
import sys
import time

from hypothesis import seed as hypothesis_seed
from hypothesis import settings

from properties.catalog import PROPERTIES, checks
from tests.mutants import MUTANTS
from tests.test_meta import mutant_target, run_property, variant_target
from tests.variants import VARIANTS


def false_alarms(seeds: list[int]) -> int:
    """Run every variant on every property once per seed; print and count the false alarms."""
    alarms = runs = 0
    for s in seeds:
        for property_checks in checks().values():
            for check in property_checks:
                hypothesis_seed(s)(check)
        for name in sorted(VARIANTS):
            for prop in PROPERTIES:
                failures, passes, _ = run_property(variant_target(name), prop)
                runs += len(failures) + len(passes)
                for failure in failures:
                    alarms += 1
                    print(f"- seed {s}: {name} / {prop}: {failure}", flush=True)
    print(f"\n{alarms} false alarms in {runs} check runs ({len(VARIANTS)} variants x {len(seeds)} seeds)")
    return alarms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=15)
    parser.add_argument("--false-alarms", type=int, nargs="+", metavar="SEED", help="count false alarms instead")
    args = parser.parse_args(argv)
    if args.false_alarms:
        settings.register_profile(
            "alarms", parent=settings.get_profile("dev"), max_examples=args.max_examples, database=None
        )
        settings.load_profile("alarms")
        return 1 if false_alarms(args.false_alarms) else 0
    settings.register_profile("matrix", parent=settings.get_profile("ci"), max_examples=args.max_examples)
    settings.load_profile("matrix")
    short = {p: p.split("_")[0][:6] for p in PROPERTIES}
    print("| mutant | " + " | ".join(short[p] for p in PROPERTIES) + " |")
    print("|---|" + "---|" * len(PROPERTIES))
    caught_by_own = 0
    start = time.time()
    for name in sorted(MUTANTS):
        target, own = mutant_target(name)
        cells = []
        for prop in PROPERTIES:
            failures, passes, _ = run_property(target, prop)
            cell = "X" if failures else "." if passes else "s"
            if prop == own:
                caught_by_own += bool(failures)
                cell = f"[{cell}]"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(
        f"\n{caught_by_own}/{len(MUTANTS)} mutants caught by their own property; {time.time() - start:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
