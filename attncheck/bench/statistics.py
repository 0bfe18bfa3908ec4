"""Statistics of ``attncheck bench compare`` and ``attncheck bench history``: what got slower, what got faster, what
is noise, and where a history changed level. Pure computation on raw rounds: no file is read or written here
(:mod:`attncheck.bench.storage` reads the runs, :mod:`attncheck.bench.report` renders the results).

Which metric decides
====================

Runs recorded by :func:`attncheck.bench.timing.timed_rounds` hold, per round, the wall time, the process CPU
time and the time of a fixed calibration kernel run next to the round (:mod:`attncheck.bench.timing`).
:func:`choose_metrics` picks, per device group of benchmarks (the calibration kernel's device), one metric for all
of them, and says why:

* the machine speed of each run is the median over its benchmarks of the calibration kernel's time per unit, in
  CPU time on the CPU (a neighbour that takes time slices does not change it) and wall time on a GPU;
* on the CPU, speeds within :data:`CPU_SPEED_LIMIT` (1.3x) of each other: **normalised wall time**, each round's
  wall time over the geometric mean of the calibration rounds on either side of it. A busy neighbour or a slower
  machine slows both alike and cancels out; CPU time does not see time slices others took, but it does see another
  process on the core's other hardware thread, and not uniformly (measured here: a busy neighbour on the other
  vCPU slowed the calibration kernel 1.22x, a bfloat16 attention kernel 1.55x, a float32 one 1.1x), and two runs
  under one steady load flagged 1-15% of unchanged benchmarks in CPU time, 1-4% in normalised wall time.
  **CPU time is the witness**: a benchmark is slower or faster only where CPU time, by the same rule, says so too;
  where it does not, *too noisy*, and the reason gives CPU time's ratio. Each clock fails in its own way (the
  calibration kernel's speed can move without the attention's: in one quiet pair it ran 1.06x faster overall and
  up to 1.3x for some benchmarks, which normalised wall time read as 1.2x slowdowns; CPU time did not), and a
  kernel that does more work moves both. Over 13 pairs of runs the witness cut the unchanged benchmarks flagged
  from 29 of 928 to 9 and the 20% slowdowns caught from 78 of 112 to 67;
* on a GPU, speeds within :data:`SPEED_TOLERANCE` (the default threshold, 10%): **wall time** (a GPU's wall time
  is its own; the host's CPU time is spent waiting);
* speeds further apart (on the CPU more than any busy neighbour moved them here, 1.22-1.27x: another kind of
  machine): ``bench compare`` refuses the runs with the measured speeds (exit 2); with ``--force`` it compares
  normalised wall time;
* runs without those records (older files), or with different calibration kernels: **wall time**, and the
  reason names the files.

The figures behind these choices (A/A and A/B comparisons, quiet and under load) are in ``docs/benchmarks.md``,
"Comparing under load: measurements".

Comparing two runs
==================

Benchmarks present in only one run are not errors: :class:`Unmatched` sorts them into those whose target (the
benchmark's ``extra_info["target"]``) the other run does not benchmark at all, as when a run of one target is
compared with a baseline of every target, and the others, which are the surprising ones. Per benchmark in both:

ratio
    median(candidate rounds) / median(baseline rounds). Medians, not means: round times are right-skewed
    (preemption, page faults, cache misses add time and nothing removes it), and a few slow rounds must not decide.
confidence interval (CI)
    percentile bootstrap of that ratio at level 1 - alpha, resampling both samples independently
    (:data:`RESAMPLES` resamples, seeded per benchmark from its name, so a result does not depend on which other
    benchmarks the files hold).
p-value
    two-sided Mann-Whitney U on the raw rounds (``scipy.stats.mannwhitneyu``): a rank test, so no normality is
    assumed and an outlier weighs one rank; exact for small samples without ties.

Classification, with the threshold t defining the band [1 / (1 + t), 1 + t] (symmetric in log time: +10% slower
and "10% faster", x 1/1.1, are the same distance from 1):

========== ============================================================================================
slower     the whole CI lies above 1 + t **and** p < alpha: significantly slower by more than the threshold
faster     the whole CI lies below 1 / (1 + t) **and** p < alpha
unchanged  the whole CI lies inside the band (a significant shift smaller than t is real but, by the
           threshold's definition, does not matter)
too noisy  anything else: the CI straddles an edge of the band; or it lies beyond the band while the rank test
           is not significant (the percentile bootstrap is too narrow for small samples; the exact rank test
           is not); or fewer than :data:`MIN_ROUNDS` rounds on either side
========== ============================================================================================

Exit status: 1 when any benchmark is *slower*, else 0 (too noisy is reported, never fails the run).

Why a test *and* a threshold, and these defaults. asv flags a change when the ratio exceeds a factor (1.1 by
default) and Mann-Whitney U gives p < 0.002. The rounds of one run are not independent samples of "the machine":
between two runs the CPU frequency, the other tenants and the memory layout change, and on shared CI machines A/A
ratios from 0.6 to 1.5 have been seen. No within-run test can see that drift, so the decision is driven by the
practical threshold, and the test only guards against the bootstrap's small-sample optimism. Requiring the whole
CI beyond the threshold (not just the point estimate, as asv does) is stricter: with a true ratio of 1 and
independent rounds, a 99% CI that excludes even 1.1 is a far rarer event than alpha, which keeps the family-wise
false-alarm rate of a grid of hundreds of benchmarks low without a Bonferroni correction. The price is that a true
change close to the threshold comes out "too noisy" rather than "slower": more rounds narrow the CI.

* ``threshold`` 10%: asv's factor 1.1;
* ``alpha`` 0.01, not asv's 0.002: pytest-benchmark's minimum is 5 rounds, and the exact two-sided Mann-Whitney
  p-value of 5 v 5 rounds cannot go below 2 / C(10, 5) = 0.0079, so at 0.002 a benchmark needs 7 rounds per side
  (2 / C(14, 7) = 0.0006) before it can ever be flagged. (Under the null hypothesis all C(m + n, m) orderings
  of the m + n rounds are equally likely, Mann & Whitney 1947, so the most extreme one has probability
  1 / C(m + n, m) per side; asv's ``is_different`` runs the test only when 1 / C(m + n, m) < its threshold.)

Change points of a history
==========================

Runs are ordered as :func:`attncheck.bench.storage.order_runs` does.

Three sources. First, compare's own rule on every pair of consecutive runs: where ``bench compare`` would call run
k slower or faster than run k - 1 (same rule, alpha, CI and seed, in the same metric and witness), k is a change
point, always. Second, binary segmentation of the piecewise-constant fit: in a segment of runs, the split is
placed where the sum of absolute deviations of the log run-medians from each side's median is smallest (an L1 fit,
so one outlier run does not attract the split), and it is kept if

* the pooled raw rounds of the two sides differ by Mann-Whitney U at p < alpha / m, m the number of split
  positions examined in the segment (Bonferroni: the best of m splits is being tested), and
* the step between the sides' pooled medians exceeds the threshold (default 10%, as in ``bench compare``);

each kept split recurses into its two sides. Third, confirmation of the segmentation's splits by ``bench
compare``'s own rule (:func:`classify`, above): a split survives only if compare's decision on the pooled rounds
of its two adjacent final segments is *slower* or *faster*, with the rank test at alpha / m (m the split positions
of those two segments together) and the same 1 - alpha bootstrap CI, seeded from the benchmark's fullname as in
``compare``. A split that fails is dropped, its segments merge, and the remaining splits are confirmed again.

The segmentation alone cannot use compare's rule: the two sides of a split are pooled over segments that may hold
further steps, and the median of such a mixture is unstable, so its bootstrap CI straddles the band even for large
steps; the final segments hold no further step. The confirmation is what makes history and
compare agree: in a history of two runs (m = 1) the pooled rounds are the two runs' rounds, and the confirmation
is ``compare``'s decision on those two runs, same CI, same p-value, same seed, so a pair that compare calls too
noisy or unchanged is never a change point. The converse, every pair of consecutive runs that compare
calls slower or faster is a change point, is the first source (``tests/test_bench_history.py`` checks both
directions on pairs around the threshold, and the 5.5 -> 20 -> 6.7 ms excursion). In a longer history a
change point pools the rounds of several runs on each side, and can be confirmed where one pair of adjacent runs
alone is too noisy (more rounds narrow the CI, as in ``compare``).

Pooling the rounds of several runs ignores that rounds of one run share that run's conditions, which makes the
p-value optimistic; the threshold is what protects against run-to-run drift, exactly as in ``bench compare`` (see
above). Finally each change point's ratio and p-value are recomputed between the two *adjacent* final segments.

A change at the last run is found like any other (the latest run regressed), and is indistinguishable from a
one-off slow run until more runs arrive. A one-run excursion inside the history (slower at one run, back at
the next) is a step up and a step down wherever compare calls each of the two pairs slower and faster: the L1
fit alone does not split for a single point, so history used to show a flat level where compare saw two changes.

References
==========

* asv: ``asv/commands/compare.py`` (``--factor`` 1.1) and ``asv/statistics.py`` (``is_different``: Mann-Whitney
  U at ``p_threshold=0.002``); ``asv/step_detect.py`` (L1 piecewise-constant fit).
* H. B. Mann, D. R. Whitney, "On a test of whether one of two random variables is stochastically larger than the
  other", Ann. Math. Statist. 18(1), 50-60 (1947).
* B. Efron, R. J. Tibshirani, *An Introduction to the Bootstrap*, Chapman & Hall (1993): §8.3 (two-sample
  problem), ch. 13 (percentile confidence intervals).
* A. J. Scott, M. Knott, "A cluster analysis method for grouping means in the analysis of variance",
  Biometrics 30(3), 507-512 (1974); L. Yu. Vostrikova, "Detecting 'disorder' in multidimensional random processes",
  Soviet Math. Dokl. 24, 55-59 (1981): binary segmentation.
* F. Friedrich et al., "Complexity penalized M-estimation: fast computation", J. Comput. Graph. Statist. 17(1),
  201-224 (2008): the L1 (median) fit of a piecewise-constant signal, as cited by asv's ``step_detect.py``.
* O. J. Dunn, "Multiple comparisons among means", J. Amer. Statist. Assoc. 56(293), 52-64 (1961): Bonferroni.
* F. Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1(6), 80-83 (1945): the signed-rank
  test of ``bench ab``'s paired rounds.
* R. J. Hyndman, Y. Fan, "Sample quantiles in statistical packages", Amer. Statist. 50(4), 361-365 (1996):
  definition 7, numpy's default quantile.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attncheck.bench.storage import CPU, METRICS, NORMALISED_CPU, NORMALISED_WALL, WALL, Benchmark, Run
from attncheck.errors import UsageError

DEFAULT_THRESHOLD = 0.10  # fraction: +10%, asv compare's default --factor 1.1
DEFAULT_ALPHA = 0.01
MIN_ROUNDS = 5  # pytest-benchmark's default min_rounds; below it a benchmark is "too noisy"
RESAMPLES = 5000  # bootstrap resamples; the 0.5% tails of a 99% CI rest on 25 resamples each
SEED = 0  # base seed of the bootstrap, combined with a CRC32 of each benchmark's fullname

SLOWER, FASTER, UNCHANGED, NOISY = "slower", "faster", "unchanged", "too noisy"
# Calibration speeds of GPU runs within this factor are one speed, compared in wall time; on the CPU, runs within
# CPU_SPEED_LIMIT are compared in normalised wall time. Beyond them the machines differ in a way no metric measured
# here corrects: compare refuses without --force (see "Which metric decides" in the module docstring).
SPEED_TOLERANCE = 1 + DEFAULT_THRESHOLD
CPU_SPEED_LIMIT = 1.3
UNTIMED = "untimed"  # the device group of benchmarks recorded without CPU time and calibration rounds


# --- which metric decides ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricChoice:
    """The metric that compares one device's benchmarks across some runs, and why it was chosen."""

    device: str  # "cpu", "cuda" (the calibration kernel's device) or UNTIMED
    metric: str  # one of storage.METRICS
    reason: str  # one sentence, printed by compare and history
    speeds: tuple[float, ...]  # per run: median seconds per calibration unit (CPU time on cpu), () if UNTIMED
    comparable: bool = True  # False: measured speeds differ by more than CPU_SPEED_LIMIT or SPEED_TOLERANCE
    witness: str | None = None  # a second metric that must see the same change before one is reported

    @property
    def speed_ratio(self) -> float:
        """Slowest run's calibration time over the fastest's (1.0 without calibration)."""
        known = [v for v in self.speeds if np.isfinite(v)]
        return max(known) / min(known) if known else 1.0

    def rounds(self, bench: Benchmark) -> np.ndarray:
        """``bench``'s rounds in this metric; normalised ones are in seconds at the first run's calibration speed
        (normalised rounds are multiples of a calibration unit: times the first run's unit, seconds again)."""
        values = bench.metric(self.metric)
        if values is None:
            raise UsageError(f"benchmark {bench.fullname!r} has no {self.metric} rounds")
        if self.metric in (NORMALISED_WALL, NORMALISED_CPU):
            return values * next(v for v in self.speeds if np.isfinite(v))
        return values

    def witness_rounds(self, bench: Benchmark) -> np.ndarray | None:
        """``bench``'s rounds in the :attr:`witness` metric, None without one."""
        return None if self.witness is None else bench.metric(self.witness)


def device_of(*benches: Benchmark) -> str:
    """The calibration device of benchmarks that all recorded one calibration kernel, else UNTIMED."""
    kernels = {b.timing.kernel if b.timing else None for b in benches}
    if len(kernels) != 1 or None in kernels:
        return UNTIMED
    return kernels.pop().partition(":")[0]  # type: ignore[union-attr]  # "cpu: float32 matmul ..." -> "cpu"


def _speed(run: Run, device: str) -> float:
    """Median over ``run``'s benchmarks on ``device`` of their median seconds per calibration unit: CPU time on the
    CPU (a busy neighbour does not slow it), wall time on a GPU (the host's CPU time there is spent waiting)."""
    medians = [
        np.median(b.timing.calibration_cpu if device == "cpu" else b.timing.calibration_wall)
        for b in run.benchmarks.values()
        if b.timing and device_of(b) == device
    ]
    return float(np.median(medians)) if medians else float("nan")


def choose_metrics(runs: Sequence[Run], forced: str | None = None) -> dict[str, MetricChoice]:
    """Per device group of the runs' benchmarks, the metric they are compared in (see the module docstring)."""
    if forced is not None and forced not in METRICS:
        raise UsageError(f"unknown metric {forced!r}; choose from {', '.join(METRICS)}")
    groups: dict[str, set[str]] = {}
    for run in runs:
        for bench in run.benchmarks.values():
            groups.setdefault(device_of(bench), set()).add(bench.timing.kernel if bench.timing else "")
    untimed = [str(run.path) for run in runs if any(b.timing is None for b in run.benchmarks.values())]
    choices = {}
    for device, kernels in groups.items():
        if device == UNTIMED or len(kernels) > 1:
            why = (
                f"{', '.join(untimed)} recorded no CPU time or calibration rounds (re-record them with this attncheck "
                "to compare under load or across machines)"
                if untimed
                else f"the runs ran different calibration kernels ({'; '.join(sorted(kernels))})"
            )
            if forced not in (None, WALL):
                raise UsageError(f"cannot compare in {forced}: {why}")
            choices[device] = choices[UNTIMED] = MetricChoice(device, WALL, f"wall time: {why}", ())
            continue
        speeds = tuple(_speed(run, device) for run in runs)
        choice = MetricChoice(device, WALL, "", speeds)
        ratio = choice.speed_ratio
        measured = " vs ".join(f"{v * 1e3:.3g}" for v in speeds if np.isfinite(v))
        clock = "CPU" if device == "cpu" else "wall"
        speed = f"calibration {measured} ms of {clock} time per unit, {ratio:.2f}x apart"
        comparable = ratio <= (CPU_SPEED_LIMIT if device == "cpu" else SPEED_TOLERANCE)
        if forced is not None:
            metric, why = forced, f"asked for ({speed})"
        elif not comparable:
            metric, why = NORMALISED_WALL, f"the machines ran at different speeds ({speed})"
        elif device == "cpu":
            why = f"{speed}; what slows the machine slows the calibration rounds too, and a change counts only "
            choices[device] = MetricChoice(
                device, NORMALISED_WALL, f"{NORMALISED_WALL}: {why}where {CPU} sees it too", speeds, True, CPU
            )
            continue
        else:
            metric, why = WALL, f"the GPUs ran at one speed ({speed}); a GPU's wall time is its own"
        choices[device] = MetricChoice(device, metric, f"{metric}: {why}", speeds, comparable)
    return choices


# --- comparing two runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """The comparison of one benchmark."""

    fullname: str
    name: str
    metric: str  # the metric the rounds were compared in (storage.METRICS), chosen by choose_metric
    ratio: float  # candidate median / baseline median
    ci_low: float  # bootstrap CI of the ratio at level 1 - alpha
    ci_high: float
    p_value: float  # two-sided Mann-Whitney U
    status: str  # SLOWER, FASTER, UNCHANGED or NOISY
    baseline_median: float  # seconds per call in the metric (normalised: at the baseline machine's speed)
    candidate_median: float
    baseline_rounds: int
    candidate_rounds: int
    reason: str  # why this status, one phrase


@dataclass(frozen=True)
class Unmatched:
    """The benchmarks of one run that the other run lacks (matched by fullname)."""

    fullnames: list[str]  # all of them, in the run's order
    absent_targets: list[str]  # their targets that the other run does not benchmark at all, sorted
    unexplained: list[str]  # fullnames whose target the other run does benchmark, or that record no target

    @property
    def explained(self) -> list[str]:
        """The fullnames of benchmarks of :attr:`absent_targets`."""
        unexplained = set(self.unexplained)
        return [f for f in self.fullnames if f not in unexplained]


def unmatched(run: Run, other: Run) -> Unmatched:
    """The benchmarks of ``run`` missing from ``other``, sorted by whether ``other`` benchmarks their target."""
    names = [f for f in run.benchmarks if f not in other.benchmarks]
    present = {b.target for b in other.benchmarks.values()}
    absent = {t for f in names if (t := run.benchmarks[f].target) is not None} - present
    unexplained = [f for f in names if run.benchmarks[f].target not in absent]
    return Unmatched(names, sorted(absent), unexplained)


@dataclass(frozen=True)
class Comparison:
    """All results of comparing a candidate run with a baseline run."""

    baseline: Path
    candidate: Path
    threshold: float
    alpha: float
    results: list[Result]  # in the baseline's order
    only_in_baseline: Unmatched
    only_in_candidate: Unmatched
    choices: dict[str, MetricChoice]  # the metric of each device group's compared benchmarks, and why

    @property
    def exit_code(self) -> int:
        """1 when any benchmark is significantly slower beyond the threshold, else 0."""
        return int(any(r.status == SLOWER for r in self.results))

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in (SLOWER, FASTER, UNCHANGED, NOISY)}


def bootstrap_ratio_ci(
    baseline: np.ndarray, candidate: np.ndarray, level: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap CI of median(candidate) / median(baseline), both samples resampled independently."""
    # Two-sample bootstrap (Efron & Tibshirani 1993, §8.3): each sample is resampled with replacement at its own
    # size, and the statistic, median(cand*) / median(base*), is recomputed on every pair of resamples.
    base = np.median(baseline[rng.integers(0, baseline.size, (RESAMPLES, baseline.size))], axis=1)  # (RESAMPLES,)
    cand = np.median(candidate[rng.integers(0, candidate.size, (RESAMPLES, candidate.size))], axis=1)
    # Percentile interval (Efron & Tibshirani 1993, ch. 13): the (1 - level) / 2 and (1 + level) / 2 quantiles of
    # the bootstrap distribution (numpy's default quantile: Hyndman & Fan 1996, definition 7).
    tail = (1 - level) / 2
    low, high = np.quantile(cand / base, [tail, 1 - tail])
    return float(low), float(high)


def rank_test(baseline: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(median(candidate) / median(baseline), two-sided Mann-Whitney U p-value of the two samples)."""
    from scipy.stats import mannwhitneyu  # here: importing scipy.stats costs `attncheck verify` ~0.5 s of start-up

    ratio = float(np.median(candidate) / np.median(baseline))
    # Mann & Whitney 1947, as asv's statistics.is_different uses it. scipy's method="auto": the exact null
    # distribution of U when a sample has at most 8 values and there are no ties, else the normal approximation
    # with tie and continuity corrections.
    return ratio, float(mannwhitneyu(candidate, baseline, alternative="two-sided").pvalue)


def classify(
    ci: tuple[float, float], p_value: float, rounds: tuple[int, int], threshold: float, alpha: float
) -> tuple[str, str]:
    """(status, reason) from the CI of the ratio, the rank test and the sample sizes; see the module docstring."""
    low, high = ci
    # The band [1 / (1 + t), 1 + t] is symmetric in log time; asv compare uses the same pair, ratio > factor and
    # ratio < 1 / factor, with factor = 1 + t.
    upper, lower = 1 + threshold, 1 / (1 + threshold)
    band = f"±{threshold:.0%}"
    if min(rounds) < MIN_ROUNDS:
        return NOISY, f"only {min(rounds)} rounds on one side (< {MIN_ROUNDS})"
    if lower <= low and high <= upper:
        return UNCHANGED, f"CI within {band}"
    if low > upper or high < lower:
        status, side = (SLOWER, f"above +{threshold:.0%}") if low > upper else (FASTER, f"below -{threshold:.0%}")
        if p_value < alpha:
            return status, f"CI {side}, p < {alpha:g}"
        return NOISY, f"CI {side} but rank test p = {p_value:.2g} >= {alpha:g}"
    return NOISY, f"CI straddles the {band} band"


def seeded_ci(fullname: str, baseline: np.ndarray, candidate: np.ndarray, alpha: float) -> tuple[float, float]:
    """The bootstrap CI at 1 - alpha of one benchmark's ratio, seeded from its fullname (see the module docstring)."""
    rng = np.random.default_rng([SEED, zlib.crc32(fullname.encode())])
    return bootstrap_ratio_ci(baseline, candidate, 1 - alpha, rng)


def compare_samples(
    fullname: str, baseline: np.ndarray, candidate: np.ndarray, alpha: float
) -> tuple[float, tuple[float, float], float]:
    """(ratio of medians, its bootstrap CI at 1 - alpha, two-sided Mann-Whitney p) of one benchmark."""
    ratio, p_value = rank_test(baseline, candidate)
    return ratio, seeded_ci(fullname, baseline, candidate, alpha), p_value


def compare_paired(
    fullname: str, a: np.ndarray, b: np.ndarray, alpha: float
) -> tuple[float, tuple[float, float], float]:
    """(ratio B / A, its bootstrap CI at 1 - alpha, two-sided Wilcoxon signed-rank p) of paired rounds: round i
    of A and round i of B ran next to each other (``bench ab``), so each pair is compared with itself."""
    from scipy.stats import wilcoxon

    d = np.log(b) - np.log(a)  # (pairs,) paired log ratios
    # The ratio of the pair's typical ratio: exp(median of the log ratios); its percentile bootstrap over pairs
    # (Efron & Tibshirani 1993, ch. 13), resampling whole pairs, seeded per case as compare_samples is.
    # (A Hodges-Lehmann estimate with the CI that inverts the signed-rank test gave intervals of the same median
    # width on 48 cases of bench ab under load, 0.092 vs 0.090 in log ratio, and the same verdicts.)
    rng = np.random.default_rng([SEED, zlib.crc32(fullname.encode())])
    medians = np.median(d[rng.integers(0, d.size, (RESAMPLES, d.size))], axis=1)  # (RESAMPLES,)
    low, high = np.exp(np.quantile(medians, [alpha / 2, 1 - alpha / 2]))
    # Wilcoxon signed-rank (Wilcoxon 1945) of d against 0: exact null distribution for up to 50 pairs without
    # ties or zeros (scipy's method="auto"), so 6 pairs can reach p = 2 / 2^6 = 0.031 and 8 pairs 0.0078.
    p_value = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return float(np.exp(np.median(d))), (float(low), float(high)), p_value


def compare_runs(
    baseline: Run,
    candidate: Run,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    metric: str | None = None,
) -> Comparison:
    """Compare every benchmark present in both runs (matched by fullname), in the metric :func:`choose_metrics`
    picks per device, or in ``metric`` for every benchmark where both runs recorded it."""
    choices = choose_metrics([baseline, candidate], metric)
    results, used = [], {}
    for fullname, base in baseline.benchmarks.items():
        cand = candidate.benchmarks.get(fullname)
        if cand is None:
            continue
        device = device_of(base, cand)
        choice = used[device] = choices[device]
        before, after = choice.rounds(base), choice.rounds(cand)
        ratio, ci, p_value = compare_samples(fullname, before, after, alpha)
        sizes = (before.size, after.size)
        status, reason = classify(ci, p_value, sizes, threshold, alpha)
        witness = choice.witness_rounds(base), choice.witness_rounds(cand)
        if status in (SLOWER, FASTER) and witness[0] is not None and witness[1] is not None:
            seen = change_of(fullname, witness[0], witness[1], threshold, alpha)
            if seen != status:
                w_ratio = float(np.median(witness[1]) / np.median(witness[0]))
                status, reason = NOISY, f"{reason}, but {choice.witness} does not agree ({w_ratio:.3f}x)"
        results.append(
            Result(
                fullname,
                base.name,
                choice.metric,
                ratio,
                *ci,
                p_value,
                status,
                float(np.median(before)),
                float(np.median(after)),
                *sizes,
                reason,
            )
        )
    return Comparison(
        baseline.path,
        candidate.path,
        threshold,
        alpha,
        results,
        unmatched(baseline, candidate),
        unmatched(candidate, baseline),
        used,
    )


# --- trends and change points of a history --------------------------------------------------------------------


@dataclass(frozen=True)
class ChangePoint:
    index: int  # position (in the ordered runs) of the first run at the new level
    ratio: float  # pooled median after / before, between the adjacent segments
    p_value: float  # Mann-Whitney U between the adjacent segments' pooled rounds


@dataclass(frozen=True)
class Trend:
    """One benchmark across the runs that contain it."""

    fullname: str
    name: str
    positions: list[int]  # indices into the ordered runs
    rounds: list[np.ndarray]  # rounds (seconds per call, in ``metric``) of each of those runs
    change_points: list[ChangePoint]
    metric: str = WALL  # what the rounds measure (storage.METRICS), chosen by choose_metrics

    @property
    def medians(self) -> np.ndarray:
        return np.array([np.median(r) for r in self.rounds])

    @property
    def change(self) -> float:
        """Last median / first median - 1."""
        medians = self.medians
        return float(medians[-1] / medians[0] - 1)


def _l1_cost(levels: np.ndarray) -> float:
    # The L1 cost of fitting one constant, sum |y_i - mu| at its minimiser mu = median(y): the Laplace-noise
    # fit of asv's step_detect (Friedrich et al. 2008), unweighted.
    return float(np.abs(levels - np.median(levels)).sum())


def _best_split(levels: np.ndarray) -> int:
    """Split k (1 <= k < n) of the L1 piecewise-constant fit with two pieces."""
    # One step of binary segmentation (Scott & Knott 1974): the split that minimises the summed cost of the pieces.
    costs = [_l1_cost(levels[:k]) + _l1_cost(levels[k:]) for k in range(1, levels.size)]
    return 1 + int(np.argmin(costs))


def _step(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> tuple[float, float]:
    """(pooled median ratio after / before, Mann-Whitney p) between two groups of runs."""
    return rank_test(np.concatenate(before), np.concatenate(after))


def change_of(
    fullname: str, before: np.ndarray, after: np.ndarray, threshold: float, alpha: float, tests: int = 1
) -> str | None:
    """SLOWER or FASTER where ``bench compare``'s rule calls ``after`` so against ``before`` in one metric, else
    None; the rank test at alpha / tests (Bonferroni, Dunn 1961), the CI at 1 - alpha."""
    _, p_value = rank_test(before, after)
    if p_value >= alpha / tests:  # classify() then returns neither SLOWER nor FASTER: no bootstrap needed
        return None
    ci = seeded_ci(fullname, before, after, alpha)
    status, _ = classify(ci, p_value, (before.size, after.size), threshold, alpha / tests)
    return status if status in (SLOWER, FASTER) else None


def is_change(
    fullname: str,
    before: Sequence[np.ndarray],
    after: Sequence[np.ndarray],
    threshold: float,
    alpha: float,
    tests: int = 1,
) -> bool:
    """Whether ``bench compare``'s rule calls the pooled rounds ``after`` slower or faster than ``before`` in the
    decisive metric (element 0) and in the same direction in the witness metric (element 1, where there is one);
    with ``tests=1`` exactly compare's decision."""
    status = change_of(fullname, before[0], after[0], threshold, alpha, tests)
    agree = all(
        change_of(fullname, then, now, threshold, alpha, tests) == status
        for then, now in zip(before[1:], after[1:], strict=True)
    )
    return status is not None and agree


def _segmentation(levels: np.ndarray, rounds: Sequence[np.ndarray], threshold: float, alpha: float) -> list[int]:
    """The splits of binary segmentation: candidates for :func:`change_points` (see the module docstring)."""
    found: list[int] = []
    segments = [(0, len(rounds))]
    # Binary segmentation (Scott & Knott 1974; Vostrikova 1981): split at the best single change point, keep the
    # split if it is significant, recurse into both sides.
    while segments:
        lo, hi = segments.pop()
        if hi - lo < 2:
            continue
        k = lo + _best_split(levels[lo:hi])
        ratio, p_value = _step(rounds[lo:k], rounds[k:hi])
        # Bonferroni (Dunn 1961): the best of hi - lo - 1 candidate splits is tested, so at alpha / (hi - lo - 1).
        # The step must leave the band of classify(): |log ratio| > log(1 + threshold).
        if p_value < alpha / (hi - lo - 1) and abs(np.log(ratio)) > np.log1p(threshold):
            found.append(k)
            segments += [(lo, k), (k, hi)]
    return sorted(found)


def change_points(
    rounds: Sequence[np.ndarray],
    threshold: float,
    alpha: float,
    fullname: str = "",
    witness: Sequence[np.ndarray] | None = None,
) -> list[int]:
    """Indices (into ``rounds``) of the first run after each change; see the module docstring. ``fullname``
    seeds the bootstrap of the confirmation, as in ``compare``; ``witness``, the same runs in the choice's witness
    metric, must confirm each change too, as in ``compare``."""
    series = [rounds] if witness is None else [rounds, witness]
    # Every pair of consecutive runs that compare's rule calls slower or faster is a change point, kept as such
    # (a one-run excursion, 5.5 -> 20 -> 6.7 ms, is two: binary segmentation alone proposes neither).
    flagged = {
        k
        for k in range(1, len(rounds))
        if is_change(fullname, [r[k - 1] for r in series], [r[k] for r in series], threshold, alpha)
    }
    splits = sorted(flagged | set(_segmentation(np.log([np.median(r) for r in rounds]), rounds, threshold, alpha)))
    # Confirmation by compare's rule between the adjacent final segments; the first split that fails is dropped,
    # which merges its two segments and changes its neighbours' tests, so the survivors are tested again.
    while True:
        edges = [0, *splits, len(rounds)]
        failing = [
            i
            for i, k in enumerate(splits)
            if k not in flagged
            and not is_change(
                fullname,
                [np.concatenate(r[edges[i] : k]) for r in series],  # pooled rounds of the segment before the split
                [np.concatenate(r[k : edges[i + 2]]) for r in series],  # and after it
                threshold,
                alpha,
                tests=edges[i + 2] - edges[i] - 1,  # the split positions of the two segments together
            )
        ]
        if not failing:
            return splits
        del splits[failing[0]]


def trend(
    fullname: str,
    name: str,
    positions: list[int],
    rounds: list[np.ndarray],
    threshold: float,
    alpha: float,
    metric: str = WALL,
    witness: Sequence[np.ndarray] | None = None,
) -> Trend:
    """The trend of one benchmark, its change points measured between adjacent final segments (confirmed in the
    ``witness`` rounds too, where given)."""
    splits = change_points(rounds, threshold, alpha, fullname, witness)
    edges = [0, *splits, len(rounds)]
    points = []
    for i, k in enumerate(splits):
        ratio, p_value = _step(rounds[edges[i] : k], rounds[k : edges[i + 2]])
        points.append(ChangePoint(positions[k], ratio, p_value))
    return Trend(fullname, name, positions, rounds, points, metric)


def trends(
    runs: Sequence[Run], threshold: float, alpha: float, choices: dict[str, MetricChoice] | None = None
) -> list[Trend]:
    """One :class:`Trend` per benchmark, in order of first appearance, in the metric of ``choices`` (default
    :func:`choose_metrics` of all the runs) for the benchmark's device group across its runs."""
    choices = choose_metrics(runs) if choices is None else choices
    series: dict[str, tuple[str, list[int], list[Benchmark]]] = {}
    for position, run in enumerate(runs):
        for fullname, bench in run.benchmarks.items():
            entry = series.setdefault(fullname, (bench.name, [], []))
            entry[1].append(position)
            entry[2].append(bench)
    results = []
    for fullname, (name, positions, benches) in series.items():
        choice = choices[device_of(*benches)]
        rounds = [choice.rounds(b) for b in benches]
        witness = [w for b in benches if (w := choice.witness_rounds(b)) is not None]
        seen = witness if len(witness) == len(benches) else None
        results.append(trend(fullname, name, positions, rounds, threshold, alpha, choice.metric, seen))
    return results
