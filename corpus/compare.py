"""Compare two judged runs target by target: property statuses, red checks and root causes that appeared or went away.

    OLD=results/integrity OLD_VERDICTS=verdicts_integrity.tsv NEW=results/current NEW_VERDICTS=verdicts_current.tsv \
        python compare.py

Prints, per target, the judged items of each run (red checks + root causes: TRUE / FALSE by the verdicts files), then
one line per property whose status changed, then the red checks and root causes (keys as in tally.py) that are red in
one run only. Each key red in NEW needs a line in NEW_VERDICTS (tally.py lists those it lacks).
"""

import os

from tally import PKG, load_verdicts, red_checks, root_causes, target_json

OLD = os.environ.get("OLD", "results/integrity")
NEW = os.environ.get("NEW", "results/current")
OLD_VERDICTS = os.environ.get("OLD_VERDICTS", "verdicts_integrity.tsv")
NEW_VERDICTS = os.environ.get("NEW_VERDICTS", "verdicts_current.tsv")


def statuses(t: dict) -> dict[str, str]:
    """{property: status}."""
    return {p["name"]: p["status"] for p in t["properties"]}


def red(t: dict) -> set[str]:
    """The judged keys of one target: its red checks and its root causes."""
    return {k for k, _ in red_checks(t) + root_causes(t)}


def judged(t: dict, n: str, verdicts: dict) -> str:
    """'items (TRUE / FALSE)' of one target; a key without a verdict counts as '?'."""
    a = [verdicts.get((n, k), ("?",))[0] for k in sorted(red(t))]
    return f"{len(a)} ({a.count('TRUE')} / {a.count('FALSE')}" + (f" / {a.count('?')} unjudged)" if "?" in a else ")")


def main() -> None:
    vo, vn = load_verdicts(OLD_VERDICTS), load_verdicts(NEW_VERDICTS)
    print(f"| implementation | {OLD}: red checks + root causes (TRUE / FALSE) | {NEW} |")
    print("|---|---|---|")
    names = [n for n in PKG if os.path.exists(f"{OLD}/{n}.json") and os.path.exists(f"{NEW}/{n}.json")]
    for n in names:
        print(f"| {n} | {judged(target_json(n, OLD), n, vo)} | {judged(target_json(n, NEW), n, vn)} |")
    print()
    print("| implementation | property | " + OLD + " | " + NEW + " |")
    print("|---|---|---|---|")
    gone, new = [], []
    for n in names:
        a, b = target_json(n, OLD), target_json(n, NEW)
        sa, sb = statuses(a), statuses(b)
        for p in sb | sa:
            if sa.get(p) != sb.get(p):
                print(f"| {n} | {p} | {sa.get(p, 'absent')} | {sb.get(p, 'absent')} |")
        ra, rb = red(a), red(b)
        gone += [(n, k) for k in sorted(ra - rb)]
        new += [(n, k) for k in sorted(rb - ra)]
    print("\nred in " + OLD + " only:")
    for n, k in gone:
        print(f"  {n}\t{k}")
    print("red in " + NEW + " only:")
    for n, k in new:
        print(f"  {n}\t{k}")


if __name__ == "__main__":
    main()
