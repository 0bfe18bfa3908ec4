"""Statistics core of ``attncheck bench compare``: what got slower, what got faster, and what is noise.

Input: two pytest-benchmark JSON files *with raw rounds* (``stats.data``: seconds per call, one value per round;
``--benchmark-json PATH`` always writes them, ``--benchmark-save NAME`` only with ``--benchmark-save-data``).
Benchmarks are matched by ``fullname``; those present in only one file are listed, not errors.

Per benchmark:

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
  (2 / C(14, 7) = 0.0006) before it can ever be flagged.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.10  # fraction: +10%
DEFAULT_ALPHA = 0.01
MIN_ROUNDS = 5  # pytest-benchmark's default min_rounds; below it a benchmark is "too noisy"
RESAMPLES = 5000  # bootstrap resamples; the 0.5% tails of a 99% CI rest on 25 resamples each
SEED = 0  # base seed of the bootstrap, combined with a CRC32 of each benchmark's fullname

SLOWER, FASTER, UNCHANGED, NOISY = "slower", "faster", "unchanged", "too noisy"

# machine_info fields that identify a machine (dotted paths); volatile ones (cpu.hz_actual, release, load) are not.
IDENTITY_FIELDS = (
    "node",
    "machine",
    "system",
    "python_implementation",
    "python_version",
    "cpu.brand_raw",
    "cpu.arch",
    "cpu.count",
    "attncheck.torch_version",
    "attncheck.torch_threads",
    "attncheck.gpu_name",
    "attncheck.cuda_version",
)
RECORD_HINT = "record with --benchmark-json PATH, or --benchmark-save NAME --benchmark-save-data"


class RunFormatError(ValueError):
    """A file is not a usable pytest-benchmark JSON run; the message names the file."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of one run: its raw rounds, seconds per call."""

    fullname: str
    name: str
    rounds: np.ndarray  # (n_rounds,) seconds per call, > 0

    @property
    def median(self) -> float:
        return float(np.median(self.rounds))


@dataclass(frozen=True)
class Run:
    """One pytest-benchmark JSON file."""

    path: Path
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]
    datetime: str | None
    benchmarks: dict[str, Benchmark]  # by fullname


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read and validate a pytest-benchmark JSON file with raw rounds; raise :class:`RunFormatError` if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunFormatError(f"{path}: not a text file, not a pytest-benchmark JSON run") from None
    except OSError as exc:
        raise RunFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not text.strip():
        raise RunFormatError(f"{path}: empty file, not a pytest-benchmark JSON run")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFormatError(
            f"{path}: not valid JSON, truncated or corrupt ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not (
        isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list) and isinstance(doc.get("machine_info"), dict)
    ):
        raise RunFormatError(
            f"{path}: not a pytest-benchmark JSON run (expected an object with 'machine_info' and a 'benchmarks' list)"
        )
    benchmarks: dict[str, Benchmark] = {}
    for i, entry in enumerate(doc["benchmarks"]):
        fullname = entry.get("fullname") if isinstance(entry, dict) else None
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if not isinstance(fullname, str) or not isinstance(stats, dict):
            raise RunFormatError(
                f"{path}: benchmark #{i} has no 'fullname' and 'stats': not a pytest-benchmark JSON run"
            )
        if stats.get("data") is None:
            raise RunFormatError(f"{path}: benchmark {fullname!r} has no raw rounds (stats.data); {RECORD_HINT}")
        try:
            rounds = np.asarray(stats["data"], dtype=float)
        except (TypeError, ValueError):
            rounds = np.empty((0, 0))
        if rounds.ndim != 1 or rounds.size == 0 or not np.all(np.isfinite(rounds)) or np.any(rounds < 0):
            raise RunFormatError(f"{path}: benchmark {fullname!r}: stats.data is not a list of times in seconds")
        if np.median(rounds) <= 0:
            raise RunFormatError(f"{path}: benchmark {fullname!r}: median time is 0 (timer too coarse)")
        if fullname in benchmarks:
            raise RunFormatError(f"{path}: benchmark {fullname!r} appears twice")
        name = entry.get("name")
        benchmarks[fullname] = Benchmark(fullname, name if isinstance(name, str) else fullname, rounds)
    commit_info = doc.get("commit_info")
    when = doc.get("datetime")
    return Run(
        path,
        doc["machine_info"],
        commit_info if isinstance(commit_info, dict) else {},
        when if isinstance(when, str) else None,
        benchmarks,
    )


def _field(info: dict[str, Any], dotted: str) -> Any:
    value: Any = info
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "<absent>"
        value = value[part]
    return value


def machine_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``"field: 'x' != 'y'"`` for each identity field (:data:`IDENTITY_FIELDS`) on which two machine_info differ."""
    return [
        f"{dotted}: {_field(a, dotted)!r} != {_field(b, dotted)!r}"
        for dotted in IDENTITY_FIELDS
        if _field(a, dotted) != _field(b, dotted)
    ]


def load_note(run: Run) -> str | None:
    """A note when the run was recorded on a busy machine (load average above 1.5 x the core count), else None."""
    load = _field(run.machine_info, "attncheck.load_average")
    cores = _field(run.machine_info, "cpu.count")
    if not (isinstance(load, list) and load and isinstance(cores, int) and cores > 0):
        return None
    if max(load) <= 1.5 * cores:
        return None
    return (
        f"{run.path} was recorded with load average up to {max(load):.1f} on {cores} CPUs: "
        "other processes competed with the benchmarks; expect noise (a quiet machine, or --bench-threads 1, helps)"
    )


@dataclass(frozen=True)
class Result:
    """The comparison of one benchmark."""

    fullname: str
    name: str
    status: str  # SLOWER, FASTER, UNCHANGED or NOISY
    ratio: float  # candidate median / baseline median
    ci_low: float  # bootstrap CI of the ratio at level 1 - alpha
    ci_high: float
    p_value: float  # two-sided Mann-Whitney U
    baseline_median: float  # seconds
    candidate_median: float
    baseline_rounds: int
    candidate_rounds: int
    reason: str  # why this status, one phrase


@dataclass(frozen=True)
class Comparison:
    """All results of comparing a candidate run with a baseline run."""

    baseline: Path
    candidate: Path
    threshold: float
    alpha: float
    results: list[Result]  # in the baseline's order
    only_in_baseline: list[str]  # fullnames
    only_in_candidate: list[str]

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
    base = np.median(baseline[rng.integers(0, baseline.size, (RESAMPLES, baseline.size))], axis=1)  # (RESAMPLES,)
    cand = np.median(candidate[rng.integers(0, candidate.size, (RESAMPLES, candidate.size))], axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(cand / base, [tail, 1 - tail])
    return float(low), float(high)


def classify(
    ci: tuple[float, float], p_value: float, rounds: tuple[int, int], threshold: float, alpha: float
) -> tuple[str, str]:
    """(status, reason) from the CI of the ratio, the rank test and the sample sizes; see the module docstring."""
    low, high = ci
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


def compare_samples(
    fullname: str, baseline: np.ndarray, candidate: np.ndarray, alpha: float
) -> tuple[float, tuple[float, float], float]:
    """(ratio of medians, its bootstrap CI at 1 - alpha, two-sided Mann-Whitney p) of one benchmark."""
    from scipy.stats import mannwhitneyu  # here: importing scipy.stats costs `attncheck verify` ~0.5 s of start-up

    rng = np.random.default_rng([SEED, zlib.crc32(fullname.encode())])
    ratio = float(np.median(candidate) / np.median(baseline))
    ci = bootstrap_ratio_ci(baseline, candidate, 1 - alpha, rng)
    p_value = float(mannwhitneyu(candidate, baseline, alternative="two-sided").pvalue)
    return ratio, ci, p_value


def compare_runs(
    baseline: Run, candidate: Run, threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA
) -> Comparison:
    """Compare every benchmark present in both runs (matched by fullname)."""
    results = []
    for fullname, base in baseline.benchmarks.items():
        cand = candidate.benchmarks.get(fullname)
        if cand is None:
            continue
        ratio, ci, p_value = compare_samples(fullname, base.rounds, cand.rounds, alpha)
        sizes = (base.rounds.size, cand.rounds.size)
        status, reason = classify(ci, p_value, sizes, threshold, alpha)
        results.append(
            Result(fullname, base.name, status, ratio, *ci, p_value, base.median, cand.median, *sizes, reason)
        )
    return Comparison(
        baseline.path,
        candidate.path,
        threshold,
        alpha,
        results,
        [f for f in baseline.benchmarks if f not in candidate.benchmarks],
        [f for f in candidate.benchmarks if f not in baseline.benchmarks],
    )


STATUS_ORDER = {SLOWER: 0, NOISY: 1, FASTER: 2, UNCHANGED: 3}


def time_unit(seconds: float) -> tuple[float, str]:
    """(scale, unit) that shows ``seconds`` with an integer part of 1-3 digits: s, ms, µs or ns."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return scale, unit
    return 1e-9, "ns"


def format_seconds(seconds: float) -> str:
    """A time with 3 significant digits and a unit: 1.23 s, 45.6 ms, 789 µs, 12.0 ns."""
    scale, unit = time_unit(seconds)
    return f"{seconds / scale:.3g} {unit}"


def to_markdown(comparison: Comparison, notes: list[str]) -> str:
    """The comparison as a GitHub-flavoured markdown report (slower first), with the notes (busy machine...)."""
    c = comparison
    counts = c.counts()
    lines = [
        "# attncheck bench compare",
        "",
        f"Baseline `{c.baseline}`, candidate `{c.candidate}`; threshold {c.threshold:.0%}, alpha {c.alpha:g} "
        f"({1 - c.alpha:.0%} bootstrap CI of the ratio of medians, Mann-Whitney U on the raw rounds).",
        "",
        *[f"> note: {note}\n" for note in notes],
        ", ".join(f"**{n}** {status}" for status, n in counts.items())
        + f" -> {'REGRESSION' if c.exit_code else 'no regression'}",
        "",
        "| benchmark | baseline | candidate | ratio | CI | p | result | why |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for r in sorted(c.results, key=lambda r: (STATUS_ORDER[r.status], -r.ratio)):
        lines.append(
            f"| `{r.name}` | {format_seconds(r.baseline_median)} | {format_seconds(r.candidate_median)} "
            f"| {r.ratio:.3f} | [{r.ci_low:.3f}, {r.ci_high:.3f}] | {r.p_value:.2g} | {r.status} | {r.reason} |"
        )
    for title, names in (("Only in the baseline", c.only_in_baseline), ("Only in the candidate", c.only_in_candidate)):
        if names:
            lines += ["", f"{title} ({len(names)}):", ""] + [f"- `{n}`" for n in names]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison, machine_mismatch: list[str], notes: list[str]) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (times in seconds)."""
    c = comparison
    return {
        "baseline": str(c.baseline),
        "candidate": str(c.candidate),
        "threshold": c.threshold,
        "alpha": c.alpha,
        "resamples": RESAMPLES,
        "seed": SEED,
        "machine_mismatch": machine_mismatch,
        "notes": notes,
        "summary": c.counts(),
        "exit_code": c.exit_code,
        "benchmarks": [
            {
                "fullname": r.fullname,
                "name": r.name,
                "status": r.status,
                "reason": r.reason,
                "ratio": r.ratio,
                "ci": [r.ci_low, r.ci_high],
                "p_value": r.p_value,
                "baseline_median_s": r.baseline_median,
                "candidate_median_s": r.candidate_median,
                "baseline_rounds": r.baseline_rounds,
                "candidate_rounds": r.candidate_rounds,
            }
            for r in c.results
        ],
        "only_in_baseline": c.only_in_baseline,
        "only_in_candidate": c.only_in_candidate,
    }
