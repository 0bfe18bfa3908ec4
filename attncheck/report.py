"""The report of a verification run: one :class:`CheckResult` per check and target, aggregated per property.

Results arrive as pytest test reports (from this process or from pytest-xdist workers, see
:mod:`attncheck.plugin`), so the report is the same whether the run was serial or spread over
processes. Rendering lives in :mod:`attncheck.render`.
"""

from __future__ import annotations

import ast
import platform
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from attncheck.errors import PropertyFailure, TargetError
from attncheck.known_failures import KnownFailure
from attncheck.properties.catalog import PROPERTIES
from attncheck.properties.contract import Target
from attncheck.properties.problems import Problem

# Status of a property (docs/design.md, "Verdicts"): passed needs at least one check that called the target.
PASSED, FAILED, ERROR, SKIPPED, KNOWN, BLOCKED = "passed", "failed", "error", "skipped", "known-failure", "blocked"


@dataclass
class CheckResult:
    """The outcome of one check of one property on one target."""

    target: str
    property: str
    check: str
    status: str  # passed | failed | error | blocked (removed by a root cause) | skipped | xfailed | xpassed
    duration: float
    message: str = ""
    counterexample: dict[str, Any] | None = None
    repro: str = ""
    observations: list[tuple[str, str]] = field(default_factory=list)  # (what, value) seen during the check
    target_calls: int = 0  # calls of the target that returned an answer during the check
    # further distinct failures of the same check (Hypothesis found several bugs): status, message,
    # counterexample and repro of each
    more: list[dict[str, Any]] = field(default_factory=list)
    root_cause: int | None = None  # blocked: the number of the first probe's root cause that removed the check

    def key(self) -> str:
        """The check's name in the form a known-failures file accepts: ``target::property::check``."""
        return f"{self.target}::{self.property}::{self.check}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        data = dict(data)
        data["observations"] = [tuple(pair) for pair in data.get("observations", [])]
        return cls(**data)


@dataclass
class Report:
    targets: list[Target]
    settings: dict[str, Any]  # every restriction of the run (profile, seed, dtypes, device, properties, checks)
    known: list[KnownFailure] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    partial: bool = False  # the run was interrupted: the results are those of the checks that finished

    def _results_of(self, target: str, prop: str) -> list[CheckResult]:
        # Sorted by check name: the same order whatever order the checks ran in (serial or pytest-xdist).
        return sorted((r for r in self.results if r.target == target and r.property == prop), key=lambda r: r.check)

    def properties_of(self, target: str) -> list[dict[str, Any]]:
        """Per-property aggregate for ``target``: failed if a check failed, else error if the target raised or
        hung in one (blocked when every such crash is a root cause of the run, met in several checks and reported
        once), else blocked if a root cause of the first probe removed a check (it would run under the declaration),
        else passed if a check that called the target passed, else known-failure if a check is a known failure,
        else skipped (not applicable, or no check called the target). Root causes are numbered per target as
        :meth:`root_causes` lists them: the first probe's, then the run's."""
        rows = []
        found = next((t for t in self.targets if t.name == target), None)
        findings = found.findings if found else []
        blocking = [f for f in findings if f.blocks_all]
        crashes = {key: len(findings) + n for n, (key, _) in enumerate(self._crashes(target), 1)}
        for name in PROPERTIES:
            results = self._results_of(target, name)
            if (
                blocking
                and not results
                and (self.settings["properties"] == "all" or name in self.settings["properties"])
            ):
                rows.append(_blocked_row(name, blocking[0], findings.index(blocking[0]) + 1))
                continue
            if not results:
                continue
            failed = [r for r in results if r.status == FAILED]
            errors = [r for r in results if r.status == ERROR]
            passed = [r for r in results if r.status in ("passed", "xpassed")]
            judged = [r for r in passed if r.target_calls > 0]
            known = [r for r in results if r.status == "xfailed"]
            removed = [r for r in results if r.status == BLOCKED]
            skipped = [r for r in results if r.status == "skipped"]
            status = FAILED if failed else ERROR if errors else BLOCKED if removed else PASSED if judged else SKIPPED
            status = KNOWN if status == SKIPPED and known else status
            causes = sorted({crashes.get(crash_key(r.message)) or 0 for r in errors})
            if status == ERROR and 0 not in causes:  # every error is a crash reported once, as a root cause
                status = BLOCKED
            if status == BLOCKED and not errors:
                causes = sorted({r.root_cause or 0 for r in removed})
            first = next(iter(failed + errors + removed), None)
            if first is not None:
                message = first.message
                if status == BLOCKED and errors:
                    which = ", ".join(map(str, causes))
                    message = f"blocked by root cause {which} of the run (the target raised): {first.message}"
            elif passed and not judged and not known:
                message = "no check called the target: " + "; ".join(sorted({r.message for r in skipped}))
            else:
                message = "; ".join(sorted({r.message for r in results if r.message}))
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "message": message,
                    "root_causes": causes if status == BLOCKED else [],
                    "counterexample": first.counterexample if first else None,
                    "repro": first.repro if first else "",
                    "duration": round(sum(r.duration for r in results), 3),
                    "known_failures": [{"check": r.key(), "reason": r.message} for r in known],
                    "checks_run": len(results) - len(skipped),
                    "checks_passed": len(passed),
                    "checks_skipped": len(skipped),
                    "checks": [
                        {
                            "name": r.check,
                            "status": r.status,
                            "message": r.message,
                            "counterexample": r.counterexample,
                            "repro": r.repro,
                            "target_calls": r.target_calls,
                            "duration": round(r.duration, 3),
                            "more_failures": r.more,
                            "root_cause": crashes.get(crash_key(r.message)) if r.status == ERROR else r.root_cause,
                        }
                        for r in results
                    ],
                }
            )
        return rows

    def _crashes(self, target: str) -> list[tuple[str, list[CheckResult]]]:
        """Errors of ``target`` that raised the same exception (the same one line up to numbers) in two or more
        checks: one root cause each, found during the run (a data-dependent crash the first probe did not meet),
        in the order they first appear."""
        groups: dict[str, list[CheckResult]] = {}
        for name in PROPERTIES:
            for r in self._results_of(target, name):
                if r.status == ERROR:
                    groups.setdefault(crash_key(r.message), []).append(r)
        return [(key, results) for key, results in groups.items() if len(results) > 1]

    def run_root_causes(self, target: str) -> list[dict[str, Any]]:
        """The crashes of :meth:`_crashes` as root causes: the exception's line, the first check's minimal
        counterexample and repro, and every check it explains."""
        causes = []
        for _, results in self._crashes(target):
            first = results[0]
            causes.append(
                {
                    "case": f"raised in {len(results)} checks during the run",
                    "message": first.message,
                    "repro": first.repro,
                    "counterexample": first.counterexample,
                    "fix": "a fix in the target, or a declaration that keeps these inputs away from it; "
                    "the checks it explains are reported as errors with a pointer here",
                    "blocks_all": False,
                    "checks": [f"{r.property}::{r.check}" for r in results],
                }
            )
        return causes

    def observations_of(self, target: str) -> dict[str, list[str]]:
        seen: dict[str, set[str]] = {}
        for t in self.targets:
            if t.name == target:
                for dtype, coarser in t.observed_precision.items():
                    seen.setdefault("compute precision", set()).add(f"{dtype} inputs at about {coarser} precision")
        for r in self.results:
            if r.target == target:
                for what, value in r.observations:
                    seen.setdefault(what, set()).add(value)
        return {what: sorted(values) for what, values in sorted(seen.items())}

    def unmatched_known_failures(self) -> list[KnownFailure]:
        """Known-failure entries that matched nothing (as array-api-tests warns on stale xfail ids): the entry's
        check ran, or its target is not in the run, and no result matches it. Checks that this run did not
        select (``--property``, ``--check``) do not count."""
        ran = {r.check for r in self.results}
        names = {t.name for t in self.targets}
        return [
            k
            for k in self.known
            if (k.check in ran or (k.target is not None and k.target not in names))
            and not any(k.matches(r.target, r.property, r.check) for r in self.results)
        ]

    def failed(self) -> bool:
        """Whether the run found something: a root cause, a wrong answer, or a target that raised or hung."""
        return any(t.findings for t in self.targets) or any(r.status in (FAILED, ERROR, BLOCKED) for r in self.results)

    def root_causes(self, target: Target) -> list[dict[str, Any]]:
        """Every root cause of ``target``, numbered from 1: the first probe's findings, then the run's crashes."""
        found = [f.to_dict() for f in target.findings] + self.run_root_causes(target.name)
        return [{"number": n, **cause} for n, cause in enumerate(found, 1)]

    def counts(self) -> Counter[str]:
        """How many properties x targets cells have each status."""
        return Counter(row["status"] for t in self.targets for row in self.properties_of(t.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": [
                {
                    "name": t.name,
                    "description": t.description,
                    "device": t.device,
                    "capabilities": (t.declared or t.caps).to_dict(),
                    "root_causes": self.root_causes(t),
                    "observations": self.observations_of(t.name),
                    "properties": self.properties_of(t.name),
                }
                for t in self.targets
            ],
            "versions": versions(),
            "settings": self.settings,
            "warnings": [
                f"known-failure entry {k.text!r} ({k.source}) matches no check of this run"
                for k in self.unmatched_known_failures()
            ],
            "wall_time_s": round(time.time() - self.started, 2),
            "partial": self.partial,
        }


def _blocked_row(name: str, finding: Any, number: int) -> dict[str, Any]:
    """A property that could not run: the first probe's plain call (root cause ``number``) does not work."""
    return {
        "name": name,
        "status": BLOCKED,
        "message": f"blocked by the {finding.case}: {finding.message}",
        "root_causes": [number],
        "counterexample": None,
        "repro": finding.repro,
        "duration": 0.0,
        "known_failures": [],
        "checks_run": 0,
        "checks_passed": 0,
        "checks_skipped": 0,
        "checks": [],
    }


def versions() -> dict[str, str]:
    import hypothesis
    import numpy
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hypothesis": hypothesis.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    try:
        from importlib.metadata import version

        out["attncheck"] = version("attncheck")
    except Exception:
        out["attncheck"] = "checkout"
    return out


# ---------------------------------------------------------------------------------------------------------------
# From an exception to a result


def failures(exc: BaseException) -> list[BaseException]:
    """The distinct failures inside what Hypothesis raised (several distinct bugs of one check come as an
    exception group, ``report_multiple_bugs``): the most informative first, one per message."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [leaf for sub in exc.exceptions for leaf in failures(sub)]
    else:
        leaves = [exc]
    # a wrong answer first, then the target raising, then anything else; stable: Hypothesis' order within each
    leaves.sort(key=lambda e: 0 if isinstance(e, PropertyFailure) else 1 if isinstance(e, TargetError) else 2)
    distinct: dict[str, BaseException] = {}
    for leaf in leaves:
        distinct.setdefault(one_line(leaf), leaf)
    return list(distinct.values())


def status_of(exc: BaseException) -> str:
    """error when the target raised or hung (no answer to judge), failed for a wrong answer."""
    return ERROR if isinstance(exc, TargetError) and exc.kind in ("raised", "hung") else FAILED


def problem_from_notes(exc: BaseException) -> Problem | None:
    """The drawn :class:`Problem` from Hypothesis' notes ("Draw 1 (problem): Problem(...)"), parsed without eval.

    Used when the failure is not a PropertyFailure (the target raised, hung or returned the wrong shape), so
    the report still shows the minimal counterexample.
    """
    for note in getattr(exc, "__notes__", []):
        _, found, text = note.partition("(problem): ")
        if not found:
            continue
        try:
            call = ast.parse(text.strip(), mode="eval").body
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Problem":
                return Problem(**{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg})
        except (SyntaxError, ValueError, TypeError):
            return None
    return None


def crash_key(message: str) -> str:
    """What identifies one crash across checks: the exception's line with its numbers (shapes, sizes) blanked."""
    return re.sub(r"\d+", "#", message)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, PropertyFailure):
        return exc.summary
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
