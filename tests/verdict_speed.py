"""Time to verdict of ``attncheck.verify`` over the meta-test kernels: a measurement script, not a test.

    PYTHONPATH=. python -m tests.verdict_speed                      # screen every mutant and correct variant
    PYTHONPATH=. python -m tests.verdict_speed --full 3 --json out.json  # and the full catalog on 3 of each
    PYTHONPATH=. python -m tests.verdict_speed --cprofile no_scaling     # where the time of one screening goes

It lives with the mutants (tests/mutants.py), the correct variants (tests/variants.py) and the cheats
(tests/cheats.py) it measures, so that nothing shipped imports a test module. Every kernel runs in
this one process, one after the other, as in a loop over generated kernels: the first verdict pays the imports and
the strategies, the others reuse them. Two stages: the screen profile (stop at the first red check, no shrinking),
then the full catalog (the default profile) for the kernels ``--full`` asks for. A mutant or a cheat counts as
caught when its verdict is failed; a correct variant must pass. The machine's load (``os.getloadavg``) is
recorded with every verdict: on a shared machine wall times are only comparable at similar loads, so the CPU time
of the process (all its threads) is recorded too, about what the wall time is on an idle machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from typing import Any

import attncheck
from attncheck.render import write_atomic


def kernels() -> dict[str, tuple[Any, str]]:
    """name -> (SDPA callable, expected verdict): every mutant and cheat must fail, every variant and honest
    counterpart of a cheat pass."""
    from tests.cheats import CHEATS, HONEST
    from tests.mutants import MUTANTS
    from tests.variants import VARIANTS

    found = {f"mutant:{n}": (m.fn, "failed") for n, m in MUTANTS.items()}
    found |= {f"cheat:{n}": (c.fn, "failed") for n, c in CHEATS.items()}
    found |= {f"honest:{n}": (h.fn, "passed") for n, h in HONEST.items()}  # their correct counterparts
    found |= {f"variant:{n}": (v.fn, "passed") for n, v in VARIANTS.items()}
    return found


def timed(name: str, fn: Any, expected: str, profile: str | None) -> dict[str, Any]:
    """One verdict: its time, outcome, checks run, the check that caught it, and the load around it."""
    load = os.getloadavg()[0]
    started, cpu = time.perf_counter(), time.process_time()
    report = attncheck.verify(fn, profile=profile)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    first = report.failures[0] if report.failures else None
    caught_by = f"{first.property}::{first.check}" if first else (report.root_causes or [{}])[0].get("case", "")
    return {
        "kernel": name,
        "stage": profile or "full",
        "expected": expected,
        "verdict": report.verdict,
        "right": report.verdict == expected,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),  # this process's CPU time, all its threads: about the wall time when idle
        "checks_run": report.checks_run,
        "caught_by": caught_by if report.verdict == "failed" else "",
        "load_1min": round(load, 2),
    }


def summary(rows: list[dict[str, Any]], kind: str, stage: str) -> str:
    chosen = [r for r in rows if r["kernel"].startswith(kind) and r["stage"] == stage]
    if not chosen:
        return ""
    times = [r["seconds"] for r in chosen]
    cpu = [r["cpu_seconds"] for r in chosen]
    wrong = [r["kernel"] for r in chosen if not r["right"]]
    loads = [r["load_1min"] for r in chosen]
    return (
        f"{stage:>6} {kind:<8} n={len(chosen):<3} "
        f"wall median {statistics.median(times):6.2f} s worst {max(times):6.2f} s "
        f"({60 * len(times) / sum(times):5.1f} verdicts/min); CPU median {statistics.median(cpu):6.2f} s worst "
        f"{max(cpu):6.2f} s ({60 * len(cpu) / sum(cpu):5.1f} verdicts/min); wrong verdicts: {wrong or 'none'}; "
        f"load {min(loads):.1f}-{max(loads):.1f}"
    )


def where_the_time_goes(name: str, fn: Any, top: int) -> str:
    """cProfile of one screening verdict (after a warm-up verdict, as in a loop), by cumulative time."""
    attncheck.verify(fn, profile="screen")
    profiler = cProfile.Profile()
    profiler.enable()
    attncheck.verify(fn, profile="screen")
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return f"cProfile of one screening verdict of {name} (load {os.getloadavg()[0]:.1f}):\n{out.getvalue()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.verdict_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="KIND", help="mutant, cheat, variant, honest (repeatable)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N kernels of each kind")
    parser.add_argument("--full", type=int, default=0, metavar="N", help="also the full catalog on N of each kind")
    parser.add_argument("--json", metavar="PATH", help="write every verdict and the summary as JSON")
    parser.add_argument("--cprofile", metavar="NAME", help="profile one screening of this kernel (NAME or KIND:NAME)")
    args = parser.parse_args(argv)
    found = kernels()
    if args.cprofile:
        named = [n for n in found if args.cprofile in (n, n.split(":", 1)[1])]
        if len(named) != 1:
            parser.error(f"--cprofile {args.cprofile!r}: name one of {named or 'the kernels'} as KIND:NAME")
        print(where_the_time_goes(named[0], found[named[0]][0], 25))
        return 0
    kinds = args.only or ["mutant", "cheat", "variant", "honest"]
    chosen = {kind: [n for n in found if n.startswith(kind + ":")][: args.limit] for kind in kinds}
    rows = []
    for stage, count in (("screen", None), (None, args.full)):
        for kind in kinds:
            for name in chosen[kind][:count]:
                fn, expected = found[name]
                rows.append(timed(name, fn, expected, stage))
                r = rows[-1]
                print(
                    f"{r['stage']:>6} {name:<40} {r['verdict']:<12} {r['seconds']:7.2f} s "
                    f"(CPU {r['cpu_seconds']:6.2f} s) {r['checks_run']:3} checks"
                    f"  {r['caught_by']}  load {r['load_1min']}",
                    flush=True,
                )
    lines = [line for stage in ("screen", "full") for kind in kinds if (line := summary(rows, kind, stage))]
    print("\n".join(lines))
    if args.json:
        write_atomic(args.json, json.dumps({"verdicts": rows, "summary": lines}, indent=1).encode())
    return 0 if all(r["right"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
