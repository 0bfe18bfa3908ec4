"""The Python API: ``attncheck.verify(fn)`` for notebooks and for loops that screen generated kernels.

It runs the same engine as ``attncheck verify``: :func:`run` hands the property tests to ``pytest.main`` in this
process with the :class:`~attncheck.plugin.AttncheckPlugin` (the CLI calls :func:`run` too), so a
kernel gets the same verdict through either door. A callable needs no import path: it is wrapped in a
:class:`~attncheck.properties.contract.Target` here and handed to the plugin already resolved.

``isolate=True`` runs the verification in a child process forked from this one (so a function defined in a
notebook or in ``__main__`` reaches it as it is, nothing pickled; Linux and macOS, where ``fork`` exists). The
child streams each check's result back; a kernel that segfaults, aborts or is killed for its memory ends the child,
not the caller, and becomes a root cause of that kernel ("the kernel killed its process: signal 6 (SIGABRT)").
``budget_s`` bounds the wall time: no check starts after it, each call of the target gets at most half of it (a
call that takes longer is reported as hung, a failure), and with ``isolate=True`` the child is killed when it runs
out. A run cut short is *inconclusive after N checks*, never passed.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attncheck.errors import TargetUnavailable, UsageError

if TYPE_CHECKING:
    from attncheck.properties.contract import Target
    from attncheck.report import Report as EngineReport

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
GRACE_S = 5.0  # seconds an isolated child gets to exit after it sent its last result


def run(
    settings: Any,
    targets: list[Target],
    *,
    seed: int | None = None,
    jobs: int | None = None,
    plugins: Iterable[Any] = (),
) -> EngineReport:
    """Run the property tests on ``targets`` through ``pytest.main`` with the attncheck plugin; the report.

    The one engine of ``attncheck verify`` and :func:`verify`. ``settings`` is a
    :class:`~attncheck.options.VerifySettings`; ``jobs`` > 1 spreads the checks over pytest-xdist
    workers (string targets only: the workers resolve them again); ``plugins`` are extra pytest plugins.
    Raises :class:`UsageError` when the run cannot start (a collection error, a bad option).
    """
    import pytest

    from attncheck.plugin import AttncheckPlugin

    ini = Path(__file__).parent / "properties" / "verify.ini"  # not the configuration of the project around us
    pytest_args = ["-c", str(ini), "--rootdir", str(ini.parent), "--pyargs", "attncheck.properties"]
    pytest_args += ["-p", "no:cacheprovider", "-p", "no:benchmark", "-W", "ignore", *settings.pytest_args()]
    # pytest's unraisable-exception plugin calls gc.collect() five times at the end of a session: 4.5 of a 15 s
    # screening verdict in a process that holds torch and Hypothesis (cProfile, tests/verdict_speed.py)
    pytest_args += ["-p", "no:unraisableexception"]
    if jobs and jobs > 1:
        # pytest-xdist's workers rebuild the run from these options; this process keeps the resolved targets.
        pytest_args += ["-n", str(jobs), "-q", "--no-header", "--no-summary"]
    else:
        pytest_args += ["-p", "no:terminal"]
    if seed is not None:
        pytest_args += ["--hypothesis-seed", str(seed)]
    plugin = AttncheckPlugin(settings, targets)  # resolved and validated once, by the caller
    errors = _CollectionErrors()
    with contextlib.redirect_stdout(io.StringIO()) if jobs and jobs > 1 else contextlib.nullcontext():
        code = pytest.main(pytest_args, plugins=[plugin, errors, *plugins])
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR):
        raise UsageError(errors.error or f"the property run did not start (pytest exit code {int(code)})")
    if code == pytest.ExitCode.INTERRUPTED and not plugin.report.partial:  # partial: Ctrl-C after it started
        raise UsageError(errors.error or "the property run stopped before it started (collection error)")
    return plugin.report


class _CollectionErrors:
    """Keeps the first collection error of a run, for a one-line usage error."""

    def __init__(self) -> None:
        self.error = ""

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed and not self.error:
            where = report.nodeid or "properties"
            self.error = f"collection failed in {where}: {str(report.longrepr).splitlines()[-1]}"


# ---------------------------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class Failure:
    """One red check: the property and check, the one-line message, the counterexample and the repro snippet."""

    property: str
    check: str
    status: str  # failed (a wrong answer) or error (the target raised, hung or killed its process)
    message: str
    counterexample: dict[str, Any] | None
    repro: str


class Report:
    """The verdict of :func:`verify` on one target: ``passed``, ``failed`` or ``inconclusive``.

    ``failures``, ``root_causes`` and ``observations`` read the engine's report (the one the CLI renders);
    ``to_json()`` is the CLI's ``--json`` document plus ``verdict`` and ``note``; in a notebook the report shows
    as the CLI's ``--html`` page, and ``str(report)`` is its terminal table.
    """

    def __init__(self, engine: EngineReport, verdict: str, note: str, rerun: Callable[..., Report]) -> None:
        self.engine = engine
        self.verdict = verdict
        self.note = note  # why a run is inconclusive, or what stopped it; empty otherwise
        self._rerun = rerun
        self._json = engine.to_json()

    @property
    def passed(self) -> bool:
        """Whether the target passed every check that ran (an inconclusive run did not pass)."""
        return self.verdict == PASSED

    @property
    def target(self) -> dict[str, Any]:
        [target] = self._json["targets"]
        return target  # type: ignore[no-any-return]

    @property
    def root_causes(self) -> list[dict[str, Any]]:
        """Findings reported once (the first probe's, crashes met in several checks, a killed process)."""
        return list(self.target["root_causes"])

    @property
    def failures(self) -> list[Failure]:
        """Every red check, distinct failures of one check included, in catalog order."""
        found = []
        for prop in self.target["properties"]:
            for check in prop["checks"]:
                if check["status"] not in (FAILED, "error"):
                    continue
                for one in [check, *check["more_failures"]]:
                    found.append(
                        Failure(
                            prop["name"],
                            check["name"],
                            one["status"],
                            one["message"],
                            one["counterexample"],
                            one["repro"],
                        )
                    )
        return found

    @property
    def observations(self) -> dict[str, list[str]]:
        """Conventions seen (masked rows, masked values, compute precision), for reading, never judged."""
        return dict(self.target["observations"])

    @property
    def checks_run(self) -> int:
        """Checks that ran to an outcome (skipped ones included)."""
        return len(self.engine.results)

    def to_json(self) -> dict[str, Any]:
        return {**self._json, "verdict": self.verdict, "note": self.note}

    def rerun(self, check: str | Failure | None = None, **overrides: Any) -> Report:
        """Verify the same target again, on one check (default: the first failure's) and under the dev profile
        (shrinking on: the counterexample comes back minimal), unless ``overrides`` say otherwise."""
        if check is None:
            if not self.failures:
                raise UsageError("nothing to re-run: no check failed")
            check = self.failures[0]
        name = check.check if isinstance(check, Failure) else check
        return self._rerun(**{"checks": [name], "profile": "dev", **overrides})

    def __str__(self) -> str:
        from attncheck.render import render_table

        table = render_table(self.engine, color=False)
        return table + (f"{self.verdict}: {self.note}\n" if self.note else "")

    def __repr__(self) -> str:
        red = len(self.failures)
        return (
            f"<attncheck.Report {self.target['name']}: {self.verdict}, {self.checks_run} checks, "
            f"{red} failure{'s' * (red != 1)}, {len(self.root_causes)} root cause{'s' * (len(self.root_causes) != 1)}>"
        )

    def _repr_html_(self) -> str:
        """The ``attncheck verify --html`` page, in an iframe so that its styles stay out of the notebook's."""
        from attncheck.html import verify_page

        page = verify_page(self._json, not self.passed)
        note = f"<p><b>{escape(self.verdict)}</b>: {escape(self.note)}</p>" if self.note else ""
        frame = f'<iframe srcdoc="{escape(page)}" style="width: 100%; height: 36em; border: 1px solid #ccc"></iframe>'
        return note + frame


# ---------------------------------------------------------------------------------------------------------------
# verify


def verify(
    target: Any,
    *,
    properties: Iterable[str] | None = None,
    profile: str | None = None,
    max_examples: int | None = None,
    seed: int | None = None,
    known_failures: Iterable[str | os.PathLike[str]] | Mapping[str, str] = (),
    isolate: bool = False,
    budget_s: float | None = None,
    checks: Iterable[str] | None = None,
    device: str = "cpu",
    timeout: float | None = None,
    **declarations: Any,
) -> Report:
    """Verify one attention implementation against the property catalog; silent, returns a :class:`Report`.

    ``target``: a callable in the SDPA convention (a function of this notebook or script is fine), a
    :class:`~attncheck.properties.contract.Target`, or a TARGET string as on the command line (a built-in name or
    ``module.path:attr``). ``declarations`` are :class:`~attncheck.properties.contract.Capabilities` fields
    (``causal="bottom-right"``, ``masks={"bool"}``, ``features={"window"}``...), applied over what ``@declare``
    attached to the function. ``profile``: dev (the default), ci, thorough or screen (fail fast at the first red
    check, no shrinking: the first stage of a loop). ``known_failures``: files in the ``--known-failures`` format,
    or a mapping check -> reason. ``checks`` and ``properties`` restrict the run (``Report.rerun`` uses them);
    ``timeout``: seconds per call of the target before it counts as hung (60). ``isolate`` and ``budget_s``:
    see the module's docstring. Raises :class:`~attncheck.errors.UsageError` for a bad argument.
    """
    from attncheck.options import PROFILE_NAMES, VerifySettings

    if profile is not None and profile not in PROFILE_NAMES:
        raise UsageError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    if max_examples is not None and max_examples < 1:
        raise UsageError("max_examples must be at least 1")
    if budget_s is not None and budget_s <= 0:
        raise UsageError("budget_s must be positive")
    files, declared_failures = _known_failures(known_failures)
    caps = {**declarations, "known_failures": declared_failures} if declared_failures else declarations
    resolved = _target(target, caps, device)
    call_timeout = timeout or resolved.timeout
    if budget_s is not None:  # a hung call is found (and reported) while the budget still has room
        call_timeout = min(call_timeout, budget_s / 2)
    resolved.timeout = call_timeout
    settings = VerifySettings(
        targets=[resolved.name],
        profile=profile,
        max_examples=max_examples,
        device=device,
        properties=list(properties or []),
        checks=list(checks or []),
        known_failures=files,
        timeout=call_timeout,
    )
    again = dict(
        properties=properties,
        profile=profile,
        max_examples=max_examples,
        seed=seed,
        known_failures=known_failures,
        isolate=isolate,
        budget_s=budget_s,
        checks=checks,
        device=device,
        timeout=timeout,
        **declarations,
    )

    def rerun(**changes: Any) -> Report:
        return verify(target, **{**again, **changes})

    started = time.monotonic()
    deadline = None if budget_s is None else started + budget_s
    if isolate:
        engine, stop = _run_isolated(settings, resolved, seed, deadline, budget_s)
    else:
        budget = _Budget(deadline, budget_s)
        engine = run(settings, [resolved], seed=seed, plugins=[budget])
        stop = budget.stopped
    return _judged(engine, stop, rerun)


def _judged(engine: EngineReport, stop: str, rerun: Callable[..., Report]) -> Report:
    """The verdict: failed if anything red was found (a failure is conclusive, however the run ended);
    inconclusive if the run was cut short or no check called the target; else passed."""
    if engine.failed():
        return Report(engine, FAILED, stop, rerun)
    if stop:
        return Report(engine, INCONCLUSIVE, f"inconclusive after {len(engine.results)} checks: {stop}", rerun)
    if not any(r.status in (PASSED, "xpassed") and r.target_calls > 0 for r in engine.results):
        note = "no check called the target (every selected check was skipped as not applicable)"
        return Report(engine, INCONCLUSIVE, note, rerun)
    return Report(engine, PASSED, "", rerun)


def _known_failures(given: Iterable[str | os.PathLike[str]] | Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(files, check -> reason) from the ``known_failures`` argument."""
    if isinstance(given, Mapping):
        return [], dict(given)
    if isinstance(given, str | os.PathLike):
        given = [given]
    files = [os.fspath(path) for path in given]
    for path in files:
        if not Path(path).is_file():
            raise UsageError(f"known_failures {path}: no such file")
    return files, {}


def _target(target: Any, declarations: dict[str, Any], device: str) -> Target:
    """A Target for ``target`` (a Target, a TARGET string or a callable), with ``declarations`` applied."""
    import torch

    from attncheck.properties.contract import Capabilities, Target
    from attncheck.targets import resolve

    if isinstance(target, Target):
        resolved = target
    elif isinstance(target, str):
        try:
            resolved = resolve(target)
        except TargetUnavailable as exc:
            raise UsageError(f"target {target!r} is unavailable here: {exc}") from None
    elif callable(target):
        module = getattr(target, "__module__", None) or "__main__"
        qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
        caps = getattr(target, "__attncheck__", None) or Capabilities()
        resolved = Target(f"{module}:{qualname}", target, caps, f"{module}:{qualname} (Python callable)")
    else:
        raise UsageError(f"target: expected a callable or a TARGET string, got {type(target).__name__}")
    declared = resolved.declared or resolved.caps  # a Target verified before: not what its probe narrowed
    try:
        resolved.caps = declared.replace(**declarations) if declarations else declared
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad declaration for {resolved.name!r}: {exc}") from None
    if device not in resolved.caps.devices:
        raise UsageError(f"target {resolved.name!r} does not run on {device} (declares {resolved.caps.devices})")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda: CUDA is not available on this machine")
    resolved.device, resolved.declared = device, None
    return resolved


class _Budget:
    """pytest plugin: start no check once the deadline has passed (the checks left are not run); ``stopped`` says
    why the session stopped early (the budget, or the screen profile's first red check), empty if it did not."""

    def __init__(self, deadline: float | None, budget_s: float | None) -> None:
        self.deadline, self.budget_s = deadline, budget_s
        self.session: Any = None
        self.stopped = ""

    def pytest_sessionstart(self, session: Any) -> None:
        self.session = session

    def pytest_sessionfinish(self, session: Any) -> None:
        self.stopped = str(session.shouldfail or "")

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if self.deadline is None or time.monotonic() < self.deadline or self.session.shouldfail:
            return
        left = len(self.session.items) - self.session.items.index(_item(self.session, nodeid)) - 1
        if left:
            self.session.shouldfail = f"the budget of {self.budget_s:g} s ran out with {left} checks left"


def _item(session: Any, nodeid: str) -> Any:
    return next(item for item in session.items if item.nodeid == nodeid)


# ---------------------------------------------------------------------------------------------------------------
# isolate=True: the run in a forked child, its results streamed back through a pipe


class _Stream:
    """pytest plugin of the child: sends what the first probe found, then each check's start and result."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def pytest_sessionstart(self, session: Any) -> None:
        from attncheck.plugin import AttncheckPlugin

        [suite] = [p for p in session.config.pluginmanager.get_plugins() if isinstance(p, AttncheckPlugin)]
        t = suite.targets[0]
        state = (t.findings, t.caps, t.declared, t.observed_precision, suite.report.known, suite.report.settings)
        self.conn.send(("probed", state))

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.conn.send(("start", nodeid))

    def pytest_runtest_logreport(self, report: Any) -> None:
        from attncheck.plugin import USER_PROPERTY

        for key, value in report.user_properties:
            if key == USER_PROPERTY:
                self.conn.send(("result", value))


def _child(conn: Any, settings: Any, target: Target, seed: int | None, deadline: float | None, budget: Any) -> None:
    """The child's side: the same :func:`run`, its results streamed to the parent as they come; silent (what the
    kernel or a crash handler prints goes nowhere), on one intra-op thread: the OpenMP pool the parent may have
    started does not survive a fork (a parallel region in the child can wait forever, as DataLoader's workers
    know)."""
    import torch

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    try:
        budgeted = _Budget(deadline, budget)
        report = run(settings, [target], seed=seed, plugins=[_Stream(conn), budgeted])
        conn.send(("done", (report.settings, budgeted.stopped)))
    except UsageError as exc:
        conn.send(("usage", str(exc)))
    except BaseException as exc:  # anything else is the engine's or the kernel's: the parent reports it
        conn.send(("crash", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_isolated(
    settings: Any, target: Target, seed: int | None, deadline: float | None, budget_s: float | None
) -> tuple[EngineReport, str]:
    """Run :func:`run` in a forked child; rebuild the engine's report here from what it streamed."""
    import torch

    from attncheck.report import CheckResult
    from attncheck.report import Report as EngineReport

    if "fork" not in multiprocessing.get_all_start_methods():
        raise UsageError("isolate=True needs the fork start method (Linux, macOS); it is not available here")
    if target.device == "cuda" and torch.cuda.is_initialized():  # CUDA cannot be initialised again after a fork
        raise UsageError("isolate=True on cuda needs a caller that has not initialised CUDA yet (the child is forked)")
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(child_end, settings, target, seed, deadline, budget_s), name="attncheck-verify"
    )
    child.start()
    child_end.close()
    engine = EngineReport([target], {"profile": settings.profile, "isolated": True})
    running, stop, ended = "", "", False
    while not ended:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not parent_end.poll(wait):  # the budget ran out in the middle of a check
            stop = f"the budget of {budget_s:g} s ran out" + (f" during {_check_name(running)}" if running else "")
            break
        try:
            kind, value = parent_end.recv()
        except EOFError:  # the child is gone without a word: killed by a signal, or it exited
            break
        if kind == "probed":
            target.findings, target.caps, target.declared, target.observed_precision, known, run_settings = value
            engine.known, engine.settings = known, run_settings
        elif kind == "start":
            running = value
        elif kind == "result":
            engine.results.append(CheckResult.from_dict(value))
            running = ""
        elif kind == "done":
            engine.settings, stop = value
            ended = True
        elif kind == "usage":
            _end(child)
            raise UsageError(value)
        elif kind == "crash":
            _add_process_finding(target, engine, f"the verification raised in the child process: {value}", running)
            ended = True
    if not ended and not stop:  # EOF: find out how the child ended
        child.join(GRACE_S)
        code = child.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            why = " (as the out-of-memory killer does)" if -code == signal.SIGKILL else ""
            message = f"the kernel killed its process: signal {-code} ({name}){why}"
        else:
            message = f"the kernel ended its process: exit status {code}"
        _add_process_finding(target, engine, message, running)
    _end(child)
    if "properties" not in engine.settings:  # the child died in the first probe, before it sent the settings
        engine.settings.update(properties=settings.properties or "all", checks=settings.checks or "all")
    return engine, stop


def _check_name(nodeid: str) -> str:
    """``.../test_x.py::test_check[target]`` -> ``test_check``."""
    return nodeid.rpartition("::")[2].partition("[")[0]


def _add_process_finding(target: Target, engine: EngineReport, message: str, running: str) -> None:
    """The child died: a root cause of the target; the check it was in (if any) is an error pointing to it."""
    from attncheck.probe import Finding
    from attncheck.properties.catalog import check_catalog
    from attncheck.report import ERROR, CheckResult

    check = _check_name(running) if running else ""
    where = f" during {check}" if check else " during the first probe (before any check)"
    again = f"checks=[{check!r}], " if check else "properties=['matches_oracle'], "
    repro = (
        "import attncheck  # in this process the kernel ends it: the traceback or core dump shows where\n"
        f"attncheck.verify({target.name!r}, {again}profile={engine.settings.get('profile')!r})"
    )
    finding = Finding("process", message + where, repro, "a fix in the kernel", blocks_all=not check)
    target.findings = [*target.findings, finding]
    if check:
        engine.results.append(CheckResult(target.name, check_catalog().get(check, ""), check, ERROR, 0.0, message))


def _end(child: Any) -> None:
    """Stop the child: it had its chance to exit on its own (a hung kernel's thread may keep it alive)."""
    child.join(0.5)
    if child.is_alive():
        child.kill()
        child.join()
    child.close()
