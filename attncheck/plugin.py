"""The attncheck suite as a pytest plugin: hooks only.

Activated by :mod:`attncheck._pytestplugin` (the inert entry point) when a session asks for attncheck, or
handed to pytest by ``attncheck verify`` with its targets already resolved::

    pytest --pyargs attncheck.properties --attncheck-target mypkg.kernels:attention
    pytest -n auto --pyargs attncheck.properties --attncheck-target mypkg.kernels:attention   # pytest-xdist

It parametrizes the ``target`` argument of the property checks over the chosen targets, runs each check under
the attncheck Hypothesis profile (and only the checks: other tests of the session keep their settings), marks
known failures as xfail, and builds the :class:`~attncheck.report.Report` from test reports, which
pytest-xdist carries from its workers to the controller, so a distributed run reports what a serial one does.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from attncheck import known_failures
from attncheck.errors import UsageError
from attncheck.options import ENV_PROFILE, PLUGIN_PREFIX, PROFILE_NAMES, VerifySettings
from attncheck.probe import probe
from attncheck.properties.catalog import PROPERTIES, check_catalog, check_settings, profile_settings, screening_rank
from attncheck.properties.checks import drain_observations
from attncheck.properties.contract import Target
from attncheck.render import counterexample_line
from attncheck.report import (
    BLOCKED,
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
from attncheck.targets import resolve_targets

USER_PROPERTY = "attncheck"  # the key of the result in a test report's user_properties
CALLS_BEFORE = pytest.StashKey[int]()  # the target's call count when the check started
REMOVED_BY = pytest.StashKey[list[int]]()  # the root causes whose narrowing made the check skip


class _WouldRun(Exception):
    """Raised instead of calling the target in a dry run: the check got past its requirements."""


class AttncheckPlugin:
    """One verification run: its settings, targets, known failures and report."""

    def __init__(self, settings: VerifySettings, targets: list[Target] | None = None):
        """Resolve and validate the run (raises :class:`~attncheck.errors.UsageError`, a one-line message)."""
        self.targets = targets if targets is not None else resolve_targets(settings)
        self.profile = settings.profile or os.environ.get(ENV_PROFILE) or ("ci" if os.environ.get("CI") else "dev")
        if self.profile not in PROFILE_NAMES:
            raise UsageError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILE_NAMES)}")
        catalog = check_catalog()
        _known_names("property", settings.properties, PROPERTIES)
        settings.checks = [_check_name(name, catalog) for name in settings.checks]
        if settings.json:
            from attncheck.render import check_writable

            check_writable(f"--{PLUGIN_PREFIX}json", settings.json)  # before the probe: a typo must not cost it
        entries = known_failures.read_files(settings.known_failures, catalog)
        for target in self.targets:
            entries += known_failures.declared(target.name, target.caps.known_failures, catalog)
        if settings.threads is not None and settings.threads < 1:
            raise UsageError(f"--{PLUGIN_PREFIX}threads must be at least 1")
        # One intra-op thread unless asked (restored at the end of the session): the problems drawn are tiny, and
        # two threads on a 2-core machine shared with other work made every small op wait for a descheduled thread
        # (a whole verify of the reference took 89 s of CPU with 2 threads and 14 s with 1 under load).
        self.threads_before = torch.get_num_threads()
        torch.set_num_threads(settings.threads or 1)
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
            "torch_threads": torch.get_num_threads(),
        }
        self.report = Report(self.targets, run_settings, entries)
        self.session: pytest.Session | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session  # the screen profile stops it at the first red check

    def pytest_configure(self, config: pytest.Config) -> None:
        self.report.settings["seed"] = config.getoption("hypothesis_seed", None)

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

    @pytest.hookimpl(tryfirst=True)  # before -k/-m deselect: what was collected, not what the user selected
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
        """Select the checks the run asked for (never the session's other tests), put one failing item per root
        cause of the first probe in front, and refuse a session that collected no property test."""
        if not any(_property_of(i) is not None for i in items) and not hasattr(config, "workerinput"):
            raise pytest.UsageError(
                "attncheck: --attncheck-* options given but no attncheck property test collected; "
                "add --pyargs attncheck.properties to the pytest command"
            )
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
                if _property_of(i) is None  # the user's own tests: not ours to select
                or (
                    (not props or _property_of(i) in props)
                    and (not names or getattr(i, "originalname", None) in names)
                    and getattr(_target_of(i), "name", None) not in blocked  # its root cause item fails instead
                )
            ]
            config.hook.pytest_deselected(items=[i for i in items if i not in keep])
            items[:] = keep
        causes = [
            RootCauseItem.from_parent(session, name=f"attncheck[{t.name}]::root cause {n}", target=t, number=n)
            for t in self.targets
            for n in range(1, len(t.findings) + 1)
        ]
        items[:0] = causes
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
        try:
            with check_settings(item.obj, self.hypothesis):  # type: ignore[attr-defined]
                return (yield)
        except pytest.skip.Exception:
            item.stash[REMOVED_BY] = [
                n
                for n, finding in enumerate(target.findings, 1)
                if finding.narrowed and target.declared is not None and _runs_under(item, target, finding.narrowed)
            ]
            raise

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        target = _target_of(item)
        if target is None or not (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
            return report
        status, message, counterexample, repro, more, root_cause = "passed", "", None, "", [], None
        if hasattr(report, "wasxfail"):
            status = "xpassed" if report.passed else "xfailed"
            message = str(report.wasxfail).removeprefix("reason: ").removeprefix("known failure: ")
        elif report.skipped:
            status = "skipped"
            longrepr = report.longrepr
            message = longrepr[2].removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
            removed_by = item.stash.get(REMOVED_BY, [])
            if removed_by:  # not "not applicable": the declaration applies, a root cause took the check away
                status, root_cause = BLOCKED, removed_by[0]
                finding = target.findings[root_cause - 1]
                message = f"blocked by root cause {root_cause} ({finding.case}): {finding.message}"
                if isinstance(longrepr, tuple):
                    report.longrepr = (*longrepr[:2], f"Skipped: {message}")
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
                    lines.append(counterexample_line(f["counterexample"], target.caps.layout))
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
            root_cause,
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

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        torch.set_num_threads(self.threads_before)  # the session's own setting again

    def pytest_keyboard_interrupt(self) -> None:
        self.report.partial = True  # the report holds the checks that finished, and says so

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if hasattr(config, "workerinput") or not (self.report.results or any(t.findings for t in self.targets)):
            return  # a pytest-xdist worker reports nothing
        from attncheck.render import render_table, write_json

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


class RootCauseItem(pytest.Item):
    """One root cause of the first probe as a failing pytest item: it fails the session as it fails the CLI, with
    its message, counterexample and repro in pytest's own failure output."""

    def __init__(self, *, target: Target, number: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target, self.number = target, number

    def runtest(self) -> None:
        finding = self.target.findings[self.number - 1]
        raise _RootCause(
            "\n".join(
                [
                    f"{self.target.name}: root cause {self.number}, found by the first probe: {finding.case}",
                    finding.message,
                    f"fix: {finding.fix}",
                    "reproduce with:",
                    finding.repro,
                ]
            )
        )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, self.name


class _RootCause(Exception):
    """The failure of a :class:`RootCauseItem`."""


def _known_names(kind: str, names: list[str], known: Any) -> None:
    """A usage error for the first unknown name, with the closest known one."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown {kind} {name!r}{hint} (see `attncheck verify --list-checks`)")


def _check_name(name: str, catalog: dict[str, str]) -> str:
    """A ``--check`` as ``check`` or as ``property::check`` (the form ``--list-checks`` prints) -> the check."""
    prop, _, check = name.rpartition("::")
    _known_names("check", [check], catalog)
    if prop:
        _known_names("property", [prop], PROPERTIES)
        if catalog[check] != prop:
            raise UsageError(f"check {check!r} belongs to property {catalog[check]!r}, not {prop!r}")
    return check


def _runs_under(item: pytest.Item, target: Target, undone: dict[str, Any]) -> bool:
    """Whether the skipped check ``item`` would get past its requirements with the capability fields ``undone``
    as declared instead of as the first probe narrowed them: a dry run of one example in which calling the target
    raises instead (the check then was removed by that root cause, not inapplicable)."""
    assert target.declared is not None
    caps, fn = target.caps, target.fn
    target.caps = caps.replace(**{name: getattr(target.declared, name) for name in undone})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _WouldRun

    target.fn = refuse
    dry = settings(
        max_examples=1, phases=[Phase.generate], database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    args = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}  # type: ignore[attr-defined]
    try:
        with check_settings(item.obj, dry), warnings.catch_warnings():  # type: ignore[attr-defined]
            warnings.simplefilter("ignore")
            item.obj(**args)  # type: ignore[attr-defined]
    except pytest.skip.Exception:
        return False
    except KeyboardInterrupt:  # Ctrl-C during the dry run interrupts the run, as anywhere else
        raise
    except BaseException as exc:
        return any(isinstance(e, _WouldRun) for e in _chain(exc))
    finally:
        target.caps, target.fn = caps, fn
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what caused it, and the leaves of exception groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)
