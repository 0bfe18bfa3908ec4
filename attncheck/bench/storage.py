"""Reading benchmark runs: pytest-benchmark JSON files with raw rounds, their machines and commits.

Input: pytest-benchmark JSON files *with raw rounds* (``stats.data``: seconds per call, one value per round;
``--benchmark-json PATH`` always writes them, ``--benchmark-save NAME`` only with ``--benchmark-save-data``).
Benchmarks are matched across files by ``fullname``; ``extra_info["target"]``, where a benchmark records one,
says which attention target it measured. Every problem with a file raises
:class:`~attncheck.errors.BenchmarkDataError` with a message that names the file.

A history is files or directories (searched recursively for ``*.json``, e.g. pytest-benchmark's ``.benchmarks/``),
ordered by ``commit_info.time`` (when the measured code was committed), then by ``datetime`` (when the run was
made), then by path; a run without either time is an error, since its place in the history would be a guess.
Runs are labelled by commit (:func:`run_labels`), with the run's time, then a number, where runs share a commit.

Machines: two runs are comparable only when their ``machine_info`` agree on :data:`IDENTITY_FIELDS` (CPU model,
architecture, Python, torch and its threads, GPU); volatile fields (``cpu.hz_actual``, ``release``, the load
average) may differ, and so may the host name (:data:`HOST_FIELDS`) when both runs hold calibration rounds, whose
measured speeds decide (:func:`attncheck.bench.statistics.choose_metrics`).

This is the only module of :mod:`attncheck.benchmarks` that reads files; the statistics
(:mod:`attncheck.bench.statistics`) work on the :class:`Run` objects it returns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attncheck.errors import BenchmarkDataError

# machine_info fields that identify a machine (dotted paths); volatile ones (cpu.hz_actual, release, load) are not.
# The host name is not among them: a CI runner has a new one every time. Runs from two hosts of one kind are compared
# by their measured speeds (attncheck.bench.statistics.choose_metrics), which HOST_FIELDS only announces.
IDENTITY_FIELDS = (
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
# The metrics a benchmark can be compared in (attncheck.bench.timing records them).
WALL, CPU, NORMALISED_WALL, NORMALISED_CPU = "wall time", "cpu time", "normalised wall time", "normalised cpu time"
METRICS = (WALL, CPU, NORMALISED_WALL, NORMALISED_CPU)
HOST_FIELDS = ("node",)
RECORD_HINT = "record with --benchmark-json PATH, or --benchmark-save NAME --benchmark-save-data"


@dataclass(frozen=True)
class Timing:
    """What :func:`attncheck.bench.timing.timed_rounds` records next to the wall time of each round."""

    cpu: np.ndarray  # (n_rounds,) process CPU seconds per call
    kernel: str  # the calibration kernel's description
    calibration_wall: np.ndarray  # (n_rounds + 1,) wall seconds per calibration unit, before and after each round
    calibration_cpu: np.ndarray  # (n_rounds + 1,) CPU seconds per calibration unit


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of one run: its raw rounds, seconds per call."""

    fullname: str
    name: str
    rounds: np.ndarray  # (n_rounds,) wall seconds per call, > 0
    target: str | None = None  # the attention target it measured (extra_info["target"]), None if not recorded
    timing: Timing | None = None  # CPU time and calibration rounds, None in runs recorded without them

    @property
    def median(self) -> float:
        return float(np.median(self.rounds))

    def metric(self, name: str) -> np.ndarray | None:
        """The rounds in one of :data:`METRICS` (None where the run did not record what it needs)."""
        if name == WALL:
            return self.rounds
        if self.timing is None:
            return None
        t = self.timing
        if name == CPU:
            return t.cpu
        # Round i lies between calibrations i and i + 1: normalised by their geometric mean, which cancels a
        # machine speed that drifts linearly across the round.
        calibration = t.calibration_wall if name == NORMALISED_WALL else t.calibration_cpu
        between = np.sqrt(calibration[:-1] * calibration[1:])  # (n_rounds,)
        return (self.rounds if name == NORMALISED_WALL else t.cpu) / between


def _timing(path: Path, fullname: str, extra: object, n_rounds: int) -> Timing | None:
    """The ``extra_info["timing"]`` record of one benchmark, checked; None where it has none."""
    record = extra.get("timing") if isinstance(extra, dict) else None
    if record is None:
        return None
    try:
        cal = record["calibration"]
        cpu, cal_wall, cal_cpu = (np.asarray(x, dtype=float) for x in (record["cpu_s"], cal["wall_s"], cal["cpu_s"]))
        kernel = str(cal["kernel"])
    except (TypeError, KeyError, ValueError):
        raise BenchmarkDataError(f"{path}: benchmark {fullname!r}: extra_info.timing is malformed") from None
    shapes_ok = cpu.shape == (n_rounds,) and cal_wall.shape == cal_cpu.shape == (n_rounds + 1,)
    values = np.concatenate([cpu, cal_wall, cal_cpu]) if shapes_ok else np.empty(0)
    if not shapes_ok or not np.all(np.isfinite(values)) or np.any(values[n_rounds:] <= 0) or np.any(cpu < 0):
        raise BenchmarkDataError(
            f"{path}: benchmark {fullname!r}: extra_info.timing does not hold {n_rounds} CPU times and "
            f"{n_rounds + 1} positive calibration times"
        )
    return Timing(cpu, kernel, cal_wall, cal_cpu)


@dataclass(frozen=True)
class Run:
    """One pytest-benchmark JSON file."""

    path: Path
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]
    datetime: str | None
    benchmarks: dict[str, Benchmark]  # by fullname


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read and validate a pytest-benchmark JSON file with raw rounds; raise :class:`BenchmarkDataError` if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BenchmarkDataError(f"{path}: not a text file, not a pytest-benchmark JSON run") from None
    except OSError as exc:
        raise BenchmarkDataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not text.strip():
        raise BenchmarkDataError(f"{path}: empty file, not a pytest-benchmark JSON run")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkDataError(
            f"{path}: not valid JSON, truncated or corrupt ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not (
        isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list) and isinstance(doc.get("machine_info"), dict)
    ):
        raise BenchmarkDataError(
            f"{path}: not a pytest-benchmark JSON run (expected an object with 'machine_info' and a 'benchmarks' list)"
        )
    benchmarks: dict[str, Benchmark] = {}
    for i, entry in enumerate(doc["benchmarks"]):
        fullname = entry.get("fullname") if isinstance(entry, dict) else None
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if not isinstance(fullname, str) or not isinstance(stats, dict):
            raise BenchmarkDataError(
                f"{path}: benchmark #{i} has no 'fullname' and 'stats': not a pytest-benchmark JSON run"
            )
        if stats.get("data") is None:
            raise BenchmarkDataError(f"{path}: benchmark {fullname!r} has no raw rounds (stats.data); {RECORD_HINT}")
        try:
            rounds = np.asarray(stats["data"], dtype=float)
        except (TypeError, ValueError):
            rounds = np.empty((0, 0))
        if rounds.ndim != 1 or rounds.size == 0 or not np.all(np.isfinite(rounds)) or np.any(rounds < 0):
            raise BenchmarkDataError(f"{path}: benchmark {fullname!r}: stats.data is not a list of times in seconds")
        if np.median(rounds) <= 0:
            raise BenchmarkDataError(f"{path}: benchmark {fullname!r}: median time is 0 (timer too coarse)")
        if fullname in benchmarks:
            raise BenchmarkDataError(f"{path}: benchmark {fullname!r} appears twice")
        name = entry.get("name")
        extra = entry.get("extra_info")
        target = extra.get("target") if isinstance(extra, dict) else None
        benchmarks[fullname] = Benchmark(
            fullname,
            name if isinstance(name, str) else fullname,
            rounds,
            target if isinstance(target, str) else None,
            _timing(path, fullname, extra, rounds.size),
        )
    commit_info = doc.get("commit_info")
    when = doc.get("datetime")
    return Run(
        path,
        doc["machine_info"],
        commit_info if isinstance(commit_info, dict) else {},
        when if isinstance(when, str) else None,
        benchmarks,
    )


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; directories replaced by the ``*.json`` files under them (sorted)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not found:
                raise BenchmarkDataError(f"{path}: directory holds no *.json benchmark runs")
            files.extend(found)
        else:
            files.append(path)
    return files


def _parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)  # naive: pytest-benchmark writes UTC


def order_runs(runs: Iterable[Run]) -> list[Run]:
    """Runs ordered by commit time, then run time, then path (see the module docstring)."""
    keyed = []
    for run in runs:
        commit_time, run_time = _parse_time(run.commit_info.get("time")), _parse_time(run.datetime)
        if commit_time is None and run_time is None:
            raise BenchmarkDataError(f"{run.path}: no commit_info.time or datetime to place the run in the history")
        first = commit_time or run_time
        keyed.append(((first, run_time or first, str(run.path)), run))
    return [run for _, run in sorted(keyed, key=lambda item: item[0])]


def load_history(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Load and order every run under ``paths``; raise :class:`BenchmarkDataError` on the first unusable file."""
    return order_runs(load_run(path) for path in expand_paths(paths))


def run_label(run: Run) -> str:
    """Short commit id (``*`` when the tree was dirty), else the run's date and time."""
    commit = run.commit_info.get("id")
    if isinstance(commit, str) and commit:
        # a git hash is shortened to 7 hex digits; anything else (pytest-benchmark's "unversioned") is kept whole
        short = commit[:7] if all(c in "0123456789abcdef" for c in commit.lower()) else commit
        return short + ("*" if run.commit_info.get("dirty") else "")
    return (run.datetime or "?")[:16].replace("T", " ")


def run_labels(runs: Sequence[Run]) -> list[str]:
    """A label per run that tells apart runs of one commit: :func:`run_label`, plus the run's time (month-day
    hours:minutes:seconds) where several runs share a commit, plus ``#i`` (i-th of them, in the given order)
    where labels still coincide."""
    labels = [run_label(run) for run in runs]
    shared = Counter(labels)
    labels = [
        f"{label} {(run.datetime or '?')[5:19].replace('T', ' ')}"
        if shared[label] > 1 and run.commit_info.get("id")
        else label
        for label, run in zip(labels, runs, strict=True)
    ]
    shared, seen = Counter(labels), Counter[str]()
    numbered = []
    for label in labels:
        seen[label] += 1
        numbered.append(f"{label} #{seen[label]}" if shared[label] > 1 else label)
    return numbered


def _field(info: dict[str, Any], dotted: str) -> Any:
    value: Any = info
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "<absent>"
        value = value[part]
    return value


def machine_differences(a: dict[str, Any], b: dict[str, Any], fields: Sequence[str] = IDENTITY_FIELDS) -> list[str]:
    """``"field: 'x' != 'y'"`` for each of ``fields`` (default :data:`IDENTITY_FIELDS`) on which two machine_info
    differ."""
    return [
        f"{dotted}: {_field(a, dotted)!r} != {_field(b, dotted)!r}"
        for dotted in fields
        if _field(a, dotted) != _field(b, dotted)
    ]


def load_note(run: Run) -> str | None:
    """A note when the run was recorded on a busy machine (load average above 1.5 x the core count), else None."""
    load = _field(run.machine_info, "attncheck.load_average")
    cores = _field(run.machine_info, "cpu.count")
    if not (isinstance(load, list) and load and isinstance(cores, int) and cores > 0):
        return None
    # 1.5 x cores: this project's rule of thumb, not a published bound. The load average counts runnable processes
    # (Linux: and those in uninterruptible sleep), so above the core count some of them waited for a CPU.
    if max(load) <= 1.5 * cores:
        return None
    return (
        f"{run.path} was recorded with load average up to {max(load):.1f} on {cores} CPUs: "
        "other processes competed with the benchmarks; expect noise (a quiet machine, or --bench-threads 1, helps)"
    )
