"""``attncheck bench ab TARGET_A TARGET_B``: two attention targets timed alternately in one process, case by case.

Comparing two separate runs (``bench compare``) has to trust that the machine was the same both times; here it is,
by construction: for every case of the attention benchmark grid (``--size``, on ``--device``) that both targets
support as declared, ``attncheck verify``'s declaration flags applied to both (:mod:`attncheck.bench.cases`;
every other case is printed with the reason it was dropped), rounds of A and of B alternate, A B, B A, A B, ...
(each pair in the opposite order to the one before, so that a machine that speeds up or slows down during the pair
favours neither side on average), and each pair is compared with itself: a neighbour that takes time, a frequency
change, a slower machine, all hit both rounds of a pair alike.

Per case and pair i, d_i = log(B_i / A_i) of the seconds per call, in CPU time on the CPU (a busy neighbour's time
slices are not this process's CPU time) and in wall time on a GPU. The ratio B / A is exp(median(d)); its CI is the
percentile bootstrap of exp(median(d)) over resampled pairs; the p-value is the Wilcoxon signed-rank test of
d = 0 (paired, rank-based: no normality assumed; :func:`attncheck.bench.statistics.compare_paired`). The
decision is ``bench compare``'s
(:func:`attncheck.bench.statistics.classify`: slower / faster / unchanged / too noisy at ``--threshold`` and
``--alpha``), B being the candidate. Exit status 1 when B is significantly slower in some case, else 0; 2 on
bad input (unknown or unavailable target, no case both support, unwritable ``--json``). The ``--json`` report holds
each case's result and its raw rounds (seconds per call, wall and CPU, of A and of B, in the order they ran).

Targets are any that ``attncheck verify`` accepts (built-in names, registered names, ``module:attr``), so two
versions of a kernel, or the same kernel under two settings, can be put side by side. ``--slowdown-b PCT`` adds a
busy wait of PCT percent of each of B's calls (:func:`attncheck.bench.slowdown.slowed`): run
``bench ab torch-sdpa torch-sdpa --slowdown-b 20`` to see which slowdown this machine can resolve.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attncheck.bench.storage import CPU, WALL
from attncheck.errors import UsageError

if TYPE_CHECKING:
    from attncheck.bench.cases import Case
    from attncheck.properties.contract import Target

# The keys of attncheck.bench.workloads.SIZES, which imports torch: the parser is built for every attncheck
# command, so the heavy imports of this module wait for ab_command (tests/test_bench_metrics.py checks the keys).
SIZE_NAMES = ("full", "quick")


@dataclass(frozen=True)
class PairResult:
    """The comparison of B with A on one case."""

    case: str
    metric: str  # storage.CPU on the CPU, storage.WALL on a GPU
    a_median: float  # seconds per call
    b_median: float
    ratio: float  # B / A, exp(median of the paired log ratios)
    ci_low: float
    ci_high: float
    p_value: float  # Wilcoxon signed-rank of the paired log ratios
    status: str
    reason: str
    wall_ratio: float  # the same ratio in wall time, for reference


def alternate(
    call_a: Callable[[], None], call_b: Callable[[], None], pairs: int, round_time: float
) -> dict[str, np.ndarray]:
    """``pairs`` pairs of rounds, A B then B A alternately; per side its wall and CPU seconds per call, (pairs,)."""
    from attncheck.bench.cases import calibrate
    from attncheck.bench.timing import time_calls

    n_a, n_b = calibrate(call_a, round_time), calibrate(call_b, round_time)  # warm-up and iterations per round
    times: dict[str, list[float]] = {"a_wall": [], "a_cpu": [], "b_wall": [], "b_cpu": []}
    for i in range(pairs):
        order = (("a", call_a, n_a), ("b", call_b, n_b))
        for side, call, n in order if i % 2 == 0 else order[::-1]:
            wall, cpu = time_calls(call, n)
            times[f"{side}_wall"].append(wall)
            times[f"{side}_cpu"].append(cpu)
    return {key: np.asarray(values) for key, values in times.items()}


def compare_case(case: Case, times: dict[str, np.ndarray], threshold: float, alpha: float) -> PairResult:
    """Decide one case from its alternating rounds (see the module docstring)."""
    from attncheck.bench.statistics import classify, compare_paired

    metric, key = (CPU, "cpu") if case.device == "cpu" else (WALL, "wall")
    a, b = times[f"a_{key}"], times[f"b_{key}"]
    ratio, ci, p_value = compare_paired(case.id, a, b, alpha)
    status, reason = classify(ci, p_value, (a.size, b.size), threshold, alpha)
    wall_ratio = float(np.exp(np.median(np.log(times["b_wall"] / times["a_wall"]))))
    return PairResult(
        case.id, metric, float(np.median(a)), float(np.median(b)), ratio, *ci, p_value, status, reason, wall_ratio
    )


def declared_targets(args: argparse.Namespace, specs: list[str]) -> list[Target]:
    """Each spec resolved with the declaration flags of ``args`` applied, as ``attncheck verify`` does (one at a
    time, so that A and B may be the same target: the A/A self-test)."""
    from attncheck.options import VerifySettings
    from attncheck.targets import resolve_targets

    resolved = []
    for spec in specs:
        settings = VerifySettings.from_options(lambda dest: getattr(args, dest, None), [spec])
        [target] = resolve_targets(settings)
        resolved.append(target)
    return resolved


def select_cases(args: argparse.Namespace, targets: list[Target], console: Any) -> list[Case]:
    """The grid's cases on ``--device`` that every target supports and ``--cases`` names; each dropped case is
    printed with its reason (one line per reason, the cases counted), and none left is a usage error."""
    from attncheck.bench.cases import grid, split

    chosen = [c for c in grid(args.size, (args.device or "cpu",)) if args.cases is None or args.cases in c.id]
    kept, dropped = split(targets, chosen)
    reasons: dict[str, list[str]] = {}
    for case, why in dropped:
        reasons.setdefault(why, []).append(case.id)
    for why, ids in reasons.items():
        console.print(f"dropped {len(ids)} case{'s' if len(ids) > 1 else ''} ({why}): {', '.join(ids)}", soft_wrap=True)
    if not kept:
        names = " and ".join(t.name for t in targets)
        raise UsageError(
            f"no case of the {args.size} grid on {args.device or 'cpu'}"
            f"{f' matching --cases {args.cases!r}' if args.cases else ''} is supported by {names}"
        )
    return kept


def ab_command(args: argparse.Namespace) -> int:
    """``bench ab``: see the module docstring for the exit status."""
    import torch

    from attncheck.bench.cases import make_call
    from attncheck.bench.report import STYLE, format_seconds, make_console
    from attncheck.bench.slowdown import slowed
    from attncheck.bench.statistics import SLOWER
    from attncheck.bench.workloads import SIZES
    from attncheck.render import check_writable, write_atomic

    if args.json is not None:
        check_writable("--json", args.json)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    a, b = declared_targets(args, [args.target_a, args.target_b])
    size = SIZES[args.size]
    console = make_console()
    cases = select_cases(args, [a, b], console)
    console.print(
        f"{a.name} (A) vs {b.name} (B): {len(cases)} cases, {args.pairs} alternating pairs of rounds each, "
        f"torch threads {torch.get_num_threads()}"
        + (f"; B slowed by a busy wait of {args.slowdown_b:g}% per call" if args.slowdown_b else "")
    )
    results, rounds = [], []
    for case in cases:
        make = [
            make_call(t, case.device, getattr(torch, case.dtype), case.pass_ == "fwdbwd", case.mask, case.shape)
            for t in (a, b)
        ]
        call_b = slowed(make[1], args.slowdown_b / 100, case.device) if args.slowdown_b else make[1]
        times = alternate(make[0], call_b, args.pairs, size.round_time)
        result = compare_case(case, times, args.threshold, args.alpha)
        results.append(result)
        rounds.append({key: values.tolist() for key, values in times.items()})
        console.print(
            f"{result.case:48} A {format_seconds(result.a_median):>9}  B {format_seconds(result.b_median):>9}  "
            f"B/A {result.ratio:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}] p={result.p_value:.2g}  "
            f"{result.status} ({result.reason}; wall-time ratio {result.wall_ratio:.3f})",
            style=STYLE.get(result.status),
        )
    counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
    console.print(
        f"B / A in {results[0].metric if len({r.metric for r in results}) == 1 else 'cpu time (cpu), wall time (cuda)'}"
        " of rounds run alternately in this process: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    )
    if args.json is not None:
        doc = {
            "a": a.name,
            "b": b.name,
            "threshold": args.threshold,
            "alpha": args.alpha,
            "slowdown_b_percent": args.slowdown_b,
            "torch_threads": torch.get_num_threads(),
            "results": [{**asdict(r), "rounds": raw} for r, raw in zip(results, rounds, strict=True)],
        }
        write_atomic(args.json, (json.dumps(doc, indent=2) + "\n").encode())
    return int(any(r.status == SLOWER for r in results))


def add_parser(
    subparsers: Any,
    add_statistics_options: Callable[[argparse.ArgumentParser], None],
    add_declaration_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``ab`` to the ``bench`` group's subparsers (``add_statistics_options`` adds --threshold and --alpha,
    ``add_declaration_options`` verify's --device, --dtype and capability declarations)."""
    ab = subparsers.add_parser(
        "ab",
        help="time two targets alternately in one process on the benchmark grid; exit 1 if B is slower",
        description="Time TARGET_A and TARGET_B in alternating rounds (A B, B A, ...) on every case of the "
        "attention benchmark grid both support, and compare B with A pair by pair (Wilcoxon signed-rank, "
        "bootstrap CI of the median ratio): the machine is the same for both sides by construction.",
    )
    ab.add_argument("target_a", metavar="TARGET_A", help="built-in or registered name, or module.path:attr")
    ab.add_argument("target_b", metavar="TARGET_B", help="the candidate: exit 1 if it is slower")
    ab.add_argument("--size", choices=SIZE_NAMES, default="quick", help="benchmark grid (default quick)")
    ab.add_argument("--pairs", type=_pairs, default=20, metavar="N", help="pairs of rounds per case (default 20)")
    ab.add_argument("--threads", type=_positive, default=None, metavar="N", help="torch.set_num_threads(N)")
    ab.add_argument("--cases", default=None, metavar="TEXT", help="only cases whose id contains TEXT")
    ab.add_argument(
        "--slowdown-b",
        type=float,
        default=0.0,
        metavar="PCT",
        help="self-test: add a busy wait of PCT%% of each call of B (a known slowdown to catch)",
    )
    add_statistics_options(ab)
    ab.add_argument("--json", type=Path, metavar="PATH", help="also write a JSON report")
    add_declaration_options(ab)
    ab.set_defaults(func=ab_command)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _pairs(text: str) -> int:
    value = _positive(text)
    if value < 8:  # the exact signed-rank p-value of 7 pairs cannot go below 2 / 2^7 = 0.016 (> alpha 0.01)
        raise argparse.ArgumentTypeError(f"at least 8 pairs are needed for a decision, got {value}")
    return value
