"""The attncheck suite as a pytest plugin: hooks only.

Activated by :mod:`attncheck._pytestplugin` (the inert entry point) when a session asks for attncheck, or
handed to pytest by ``attncheck verify`` with its targets already resolved::

    pytest --pyargs attncheck.properties --attncheck-target mypkg.kernels:attention
    pytest -n auto --pyargs attncheck.properties --attncheck-target mypkg.kernels:attention   # pytest-xdist

It parametrizes the ``target`` argument of the property checks over the chosen targets, runs each check under
the attncheck Hypothesis profile (and only the checks: other tests of the session keep their settings), marks
known failures as xfail, and builds the :class:`~attncheck.properties.report.Report` from test reports, which
pytest-xdist carries from its workers to the controller, so a distributed run reports what a serial one does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator
from typing import Any

import pytest
import torch

from attncheck.errors import UsageError
from attncheck.properties import known_failures
from attncheck.properties.catalog import PROPERTIES, check_catalog, check_settings, profile_settings, screening_rank
from attncheck.properties.checks import drain_observations
from attncheck.properties.options import ENV_PROFILE, PROFILE_NAMES, VerifySettings
from attncheck.properties.probe import probe
from attncheck.properties.problems import format_counterexample
from attncheck.properties.report import (
    ERROR,
    FAILED,
    CheckResult,
    Report,
    failures,
    one_line,
    problem_from_notes,
    status_of,
    versions,
)
from attncheck.properties.targets import Target, resolve_targets

USER_PROPERTY = "attncheck"  # the key of the result in a test report's user_properties
CALLS_BEFORE = pytest.StashKey[int]()  # the target's call count when the check started


class AttncheckPlugin:
    """One verification run: its settings, targets, known failures and report."""

    def __init__(self, settings: VerifySettings, targets: list[Target] | None = None):
        """Resolve and validate the run (raises :class:`~attncheck.errors.UsageError`, a one-line message)."""
        self.targets = targets if targets is not None else resolve_targets(settings)
        self.profile = settings.profile or os.environ.get(ENV_PROFILE) or ("ci" if os.environ.get("CI") else "dev")
        if self.profile not in PROFILE_NAMES:
            raise UsageError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILE_NAMES)}")
        catalog = check_catalog()
        for kind, names, known in (("property", settings.properties, PROPERTIES), ("check", settings.checks, catalog)):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise UsageError(f"unknown {kind} {unknown[0]!r}; see `attncheck verify --list-checks`")
        entries = known_failures.read_files(settings.known_failures, catalog)
        for target in self.targets:
            entries += known_failures.declared(target.name, target.caps.known_failures, catalog)
        with warnings.catch_warnings():  # the probe calls the targets: their libraries' warnings are not findings
            warnings.simplefilter("ignore")
            for target in self.targets:  # after every usage check: a usage error costs no target call
                target.findings = probe(target)  # root causes, once; the run goes on without the failing cases
        self.settings = settings
        self.hypothesis = profile_settings(self.profile, settings.max_examples)
        run_settings = {
            "profile": self.profile,
            "max_examples": self.hypothesis.max_examples,
            "seed": None,
            "device": settings.device,
            "dtypes": settings.dtypes or "all declared",
            "properties": settings.properties or "all",
            "checks": settings.checks or "all",
        }
        self.report = Report(self.targets, run_settings, entries)
        self.session: pytest.Session | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session  # the screen profile stops it at the first red check

    def pytest_configure(self, config: pytest.Config) -> None:
        self.report.settings["seed"] = config.getoption("hypothesis_seed", None)
        workers = getattr(config, "workerinput", {}).get("workercount")
        if workers:  # a pytest-xdist worker: share the cores with the others instead of each taking them all
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))

    # -- collection ---------------------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        v = versions()
        lines = [f"attncheck: profile={self.profile} torch={v['torch']} hypothesis={v['hypothesis']}"]
        for t in self.targets:
            lines.append(f"attncheck target {t.name}: {t.description} [{t.device}]")
            lines.append(f"  capabilities: {t.caps.summary()}")
        return lines

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if getattr(metafunc.function, "attncheck_property", None) is None or "target" not in metafunc.fixturenames:
            return
        metafunc.parametrize("target", self.targets, ids=[t.name for t in self.targets])

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        props, names = set(self.settings.properties), set(self.settings.checks)
        blocked = {t.name for t in self.targets if any(f.blocks_all for f in t.findings)}
        if self.profile == "screen" and self.session is not None:  # a root cause of the first probe is red already
            found = [f"{t.name}: the {t.findings[0].case}" for t in self.targets if t.findings]
            if found:
                blocked |= {t.name for t in self.targets if t.findings}
                self.session.shouldfail = f"screening stopped at the first probe's root cause, {found[0]}"
        if props or names or blocked:
            keep = [
                i
                for i in items
                if (not props or _property_of(i) in props)
                and (not names or getattr(i, "originalname", None) in names)
                and getattr(_target_of(i), "name", None) not in blocked
            ]
            config.hook.pytest_deselected(items=[i for i in items if i not in keep])
            items[:] = keep
        for item in items:
            target = _target_of(item)
            if target is None:
                continue
            check = item.originalname  # type: ignore[attr-defined]
            for entry in self.report.known:
                if entry.matches(target.name, _property_of(item) or "", check):
                    item.add_marker(pytest.mark.xfail(reason=f"known failure: {entry.reason}", strict=False))
                    break
        if self.profile == "screen":  # cheapest discriminating checks first (stable: the rest in catalog order)
            items.sort(key=lambda i: screening_rank(getattr(i, "originalname", "")))

    # -- running ------------------------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        target = _target_of(item)
        if target is None:
            return (yield)
        item.stash[CALLS_BEFORE] = target.calls
        with check_settings(item.obj, self.hypothesis):  # type: ignore[attr-defined]
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        target = _target_of(item)
        if target is None or not (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
            return report
        status, message, counterexample, repro, more = "passed", "", None, "", []
        if hasattr(report, "wasxfail"):
            status = "xpassed" if report.passed else "xfailed"
            message = str(report.wasxfail).removeprefix("reason: ").removeprefix("known failure: ")
        elif report.skipped:
            status = "skipped"
            longrepr = report.longrepr
            message = longrepr[2].removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
        elif report.failed:
            check = f"{item.function.__module__}:{item.originalname}"  # type: ignore[attr-defined]
            found = [_described(exc, target, check) for exc in failures(call.excinfo.value)] if call.excinfo else []
            first, *more = found or [{"status": FAILED, "message": "failed", "counterexample": None, "repro": ""}]
            status, message = first["status"], first["message"]
            counterexample, repro = first["counterexample"], first["repro"]
            # the findings themselves, not a traceback full of tensor reprs (a -q run printed thousands of lines)
            lines = []
            for n, f in enumerate(found or [first], 1):
                head = f"{target.name}::{_property_of(item)}::{item.originalname}"  # type: ignore[attr-defined]
                lines.append(f"{head}: {f['message']}" + (f" (distinct failure {n} of {len(found)})" if more else ""))
                if f["counterexample"] is not None:
                    lines.append(f"minimal counterexample: {format_counterexample(f['counterexample'])}")
                if f["repro"]:
                    lines += ["reproduce with:", f["repro"]]
            report.longrepr = "\n".join(lines)
        observed = [(what, value) for who, what, value in drain_observations() if who == target.name]
        result = CheckResult(
            target.name,
            _property_of(item) or "",
            item.originalname,  # type: ignore[attr-defined]
            status,
            report.duration,
            message,
            counterexample,
            repro,
            observed,
            target.calls - item.stash.get(CALLS_BEFORE, target.calls),
            more,
        )
        report.user_properties.append((USER_PROPERTY, result.to_dict()))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect results here, where pytest-xdist delivers its workers' reports too."""
        for key, value in report.user_properties:
            if key == USER_PROPERTY and isinstance(value, dict):
                result = CheckResult.from_dict(value)
                self.report.results.append(result)
                if self.profile == "screen" and result.status in (FAILED, ERROR) and self.session is not None:
                    self.session.shouldfail = f"screening stopped at the first red check, {result.key()}"

    # -- reporting ----------------------------------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if not self.report.results or hasattr(config, "workerinput"):  # a pytest-xdist worker reports nothing
            return
        from attncheck.properties.render import render_table, write_json

        terminalreporter.write_sep("=", "attncheck conformance")
        terminalreporter.write(render_table(self.report, color=terminalreporter.hasmarkup))
        if self.settings.json:
            write_json(self.report, self.settings.json)
            terminalreporter.write_line(f"attncheck: report written to {self.settings.json}")


def _described(exc: BaseException, target: Target, check: str) -> dict[str, Any]:
    """One failure of ``check`` (``module:function``): its status, one-line message, minimal counterexample and
    repro (a replay of the values the check drew; without them, the counterexample's call against the oracle)."""
    from attncheck.properties.repro import repro

    problem = getattr(exc, "problem", None) or problem_from_notes(exc)
    return {
        "status": status_of(exc),
        "message": one_line(exc),
        "counterexample": problem.describe() if problem is not None else None,
        "repro": repro(exc, target, check) or (problem.repro(target) if problem is not None else ""),
    }


def _property_of(item: pytest.Item) -> str | None:
    return getattr(getattr(item, "function", None), "attncheck_property", None)


def _target_of(item: pytest.Item) -> Target | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or _property_of(item) is None:
        return None
    target = callspec.params.get("target")
    return target if isinstance(target, Target) else None
