"""Print the mutant-by-property detection matrix (markdown): ``python -m tests.meta_matrix [--max-examples N]``.

Every mutant of tests/mutants.py against every property of the catalog, with the derandomized ``ci`` settings:
X = caught, . = passed, s = not applicable. The diagonal the meta-tests assert is marked with brackets.
"""

from __future__ import annotations

import argparse
import sys
import time

from hypothesis import settings

from properties.catalog import PROPERTIES
from tests.mutants import MUTANTS
from tests.test_meta import mutant_target, run_property


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=15)
    args = parser.parse_args(argv)
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
