"""Detection matrix and false-alarm count of the meta-tests, for the record (markdown on stdout).

``python -m tests.meta_matrix [--max-examples N]``: every mutant of tests/mutants.py against every property of
the catalog, with the derandomized ``ci`` settings (``profile_settings("ci", N)``, N = 20 as in the meta-tests
unless given): X = caught, . = passed, s = not applicable; the property the meta-tests assert for each mutant is
in brackets.

``python -m tests.meta_matrix --false-alarms 1 2 3``: every correct variant of tests/variants.py against every
property, once per Hypothesis seed (the ``dev`` settings, random, not derandomized, no example database),
counting the checks that flag a correct variant.

The settings are applied to each check as it runs (``check_settings``, via ``run_property``), not by loading a
Hypothesis profile, which would not reach checks already decorated with ``@given``.
"""

from __future__ import annotations

import argparse
import sys
import time

from hypothesis import seed as hypothesis_seed
from hypothesis import settings

from attncheck.properties.catalog import PROPERTIES, checks, profile_settings
from tests.mutants import MUTANTS
from tests.test_meta import run_property
from tests.variants import VARIANTS, variant_target


def false_alarms(seeds: list[int], chosen: settings) -> int:
    """Run every variant on every property once per seed under ``chosen``; print and count the false alarms."""
    alarms = runs = 0
    for s in seeds:
        for property_checks in checks().values():
            for check in property_checks:
                hypothesis_seed(s)(check)
        for name in sorted(VARIANTS):
            for prop in PROPERTIES:
                failures, passes, _ = run_property(variant_target(name), prop, chosen)
                runs += len(failures) + len(passes)
                for failure in failures:
                    alarms += 1
                    print(f"- seed {s}: {name} / {prop}: {failure}", flush=True)
    print(f"\n{alarms} false alarms in {runs} check runs ({len(VARIANTS)} variants x {len(seeds)} seeds)")
    return alarms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--false-alarms", type=int, nargs="+", metavar="SEED", help="count false alarms instead")
    args = parser.parse_args(argv)
    if args.false_alarms:
        alarms = settings(profile_settings("dev", args.max_examples), database=None)
        return 1 if false_alarms(args.false_alarms, alarms) else 0
    chosen = profile_settings("ci", args.max_examples)
    short = {p: p.split("_")[0][:6] for p in PROPERTIES}
    print("| mutant | " + " | ".join(short[p] for p in PROPERTIES) + " |")
    print("|---|" + "---|" * len(PROPERTIES))
    caught_by_own = 0
    start = time.time()
    for name in sorted(MUTANTS):
        m = MUTANTS[name]
        target = m.target()
        cells = []
        for prop in PROPERTIES:
            failures, passes, _ = run_property(target, prop, chosen)
            cell = "X" if failures else "." if passes else "s"
            if prop == m.property:
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
