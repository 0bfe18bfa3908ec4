"""The attncheck pytest plugin (entry point ``pytest11: attncheck``).

Run the property suite on any implementation from a project's own CI::

    pytest --pyargs properties --attncheck-target mypkg.kernels:attention
    ATTNCHECK_TARGET=mypkg.kernels:attention pytest --pyargs properties

The plugin is passive for tests that are not properties. For properties it parametrizes the ``target``
argument over the chosen targets (default: the built-in defaults), loads the Hypothesis profile, marks
known, accepted deviations as xfail (declared by the target or listed in ``--attncheck-known-failures``
files, one ``[target::]check_name  # reason`` per line, like array-api-tests' xfails files), prints
the targets, their capabilities and library versions in the report header, and collects every outcome
into a :class:`Report` (rendered by the CLI, written as JSON with ``--attncheck-json``).
"""

from __future__ import annotations

import ast
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import torch

from properties import targets as targets_mod
from properties.catalog import PROFILES, PROPERTIES
from properties.checks import OBSERVATIONS, PropertyFailure
from properties.problems import Problem
from properties.targets import Capabilities, Target, TargetError, TargetSpecError, TargetUnavailable

TARGETS_KEY = pytest.StashKey[list[Target]]()
REPORT_KEY = pytest.StashKey["Report"]()
KNOWN_KEY = pytest.StashKey[list[tuple[str | None, str, str]]]()  # (target or None, check, reason)


# ---------------------------------------------------------------------------------------------------------------
# Capability declarations on the command line (shared by pytest options and `attncheck verify` flags)


def parse_capability(text: str) -> dict[str, Any]:
    """``field=value`` -> a Capabilities change, e.g. ``causal=bottom-right``, ``masks=bool``, ``grad=no``."""
    key, sep, raw = text.partition("=")
    fields = Capabilities.__dataclass_fields__
    if not sep or key not in fields:
        raise TargetSpecError(f"bad capability {text!r}: expected FIELD=VALUE with FIELD in {sorted(fields)}")
    value: Any = raw
    if key in ("gqa", "scale", "dropout", "grad", "value_dim"):
        if raw.lower() not in ("yes", "no", "true", "false", "1", "0"):
            raise TargetSpecError(f"bad capability {text!r}: {key} takes yes or no")
        value = raw.lower() in ("yes", "true", "1")
    elif key == "masks":
        value = frozenset() if raw in ("", "none") else frozenset(raw.split(","))
        if value - {"bool", "float"}:
            raise TargetSpecError(f"bad capability {text!r}: masks takes bool, float, bool,float or none")
    elif key in ("dtypes", "devices", "strided_inputs"):
        value = tuple(raw.split(","))
    elif key == "causal":
        value = None if raw in ("none", "no") else raw
        if value not in (None, "top-left", "bottom-right"):
            raise TargetSpecError(f"bad capability {text!r}: causal takes top-left, bottom-right or none")
    elif key == "layout":
        if raw not in ("BHLD", "BLHD"):
            raise TargetSpecError(f"bad capability {text!r}: layout takes BHLD or BLHD")
    elif key == "masked_rows":
        value = None if raw in ("any", "none") else raw
        if value not in (None, "zeros", "nan", "uniform"):
            raise TargetSpecError(f"bad capability {text!r}: masked_rows takes zeros, nan, uniform or any")
    elif key in ("arg_names", "known_failures"):
        pairs = [item.partition(":") for item in raw.split(",") if item]
        value = {k: v for k, _, v in pairs}
    return {key: value}


def resolve_targets(
    specs: list[str], capability_changes: list[str], device: str, dtypes: list[str] | None, timeout: float | None
) -> list[Target]:
    """Resolve TARGET strings and apply the declared capability changes (raises TargetSpecError)."""
    changes: dict[str, Any] = {}
    for text in capability_changes:
        changes.update(parse_capability(text))
    if dtypes:
        changes["dtypes"] = tuple(dtypes)
    resolved = []
    for spec in specs or list(targets_mod.DEFAULT_TARGETS):
        try:
            target = targets_mod.resolve(spec)
        except TargetUnavailable as exc:
            raise TargetSpecError(f"target {spec!r} is unavailable here: {exc}") from None
        try:
            caps = target.caps.replace(**changes) if changes else target.caps
        except ValueError as exc:
            raise TargetSpecError(f"bad capabilities for {spec!r}: {exc}") from None
        if device not in caps.devices:
            raise TargetSpecError(f"target {spec!r} does not run on {device} (declares {caps.devices})")
        if device == "cuda" and not torch.cuda.is_available():
            raise TargetSpecError("--device cuda: CUDA is not available on this machine")
        target.caps, target.device = caps, device
        if timeout:
            target.timeout = timeout
        resolved.append(target)
    names = [t.name for t in resolved]
    if len(set(names)) != len(names):
        raise TargetSpecError(f"a target is named twice: {names}")
    return resolved


def read_known_failures(paths: list[str]) -> list[tuple[str | None, str, str]]:
    """Lines ``[target::]check_name  # reason`` -> (target or None, check, reason)."""
    entries = []
    for path in paths:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise TargetSpecError(f"cannot read known-failures file {path!r}: {exc.strerror}") from None
        for line in lines:
            body, _, reason = line.partition("#")
            body = body.strip()
            if not body:
                continue
            target, sep, check_name = body.rpartition("::")
            entries.append((target if sep else None, check_name, reason.strip() or f"listed in {path}"))
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class CheckResult:
    target: str
    property: str
    check: str
    status: str  # passed | failed | skipped | xfailed | xpassed
    duration: float
    message: str = ""
    counterexample: dict[str, Any] | None = None
    repro: str = ""


@dataclass
class Report:
    targets: list[Target]
    profile: str
    seed: int | None
    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def properties_of(self, target: str) -> list[dict[str, Any]]:
        """Per-property aggregate for ``target``: failed if any check failed, passed if any passed, else skipped."""
        rows = []
        for name in PROPERTIES:
            results = [r for r in self.results if r.target == target and r.property == name]
            if not results:
                continue
            failed = [r for r in results if r.status == "failed"]
            passed = [r for r in results if r.status in ("passed", "xpassed")]
            known = [r for r in results if r.status == "xfailed"]
            status = "failed" if failed else "passed" if passed else "skipped"
            first = failed[0] if failed else None
            message = first.message if first else "; ".join(sorted({r.message for r in results if r.message}))
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "message": message,
                    "counterexample": first.counterexample if first else None,
                    "repro": first.repro if first else "",
                    "duration": round(sum(r.duration for r in results), 3),
                    "known_failures": [{"check": r.check, "reason": r.message} for r in known],
                    "checks": [
                        {"name": r.check, "status": r.status, "message": r.message, "duration": round(r.duration, 3)}
                        for r in results
                    ],
                }
            )
        return rows

    def failed(self) -> bool:
        return any(r.status == "failed" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": [
                {
                    "name": t.name,
                    "description": t.description,
                    "device": t.device,
                    "capabilities": t.caps.to_dict(),
                    "observations": {k: sorted(v) for k, v in OBSERVATIONS.get(t.name, {}).items()},
                    "properties": self.properties_of(t.name),
                }
                for t in self.targets
            ],
            "versions": versions(),
            "settings": {"profile": self.profile, "seed": self.seed},
            "wall_time_s": round(time.time() - self.started, 2),
        }


def versions() -> dict[str, str]:
    import numpy

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


def failure_details(exc: BaseException) -> PropertyFailure | BaseException:
    """The most informative exception inside what Hypothesis raised (it may wrap several in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = failure_details(sub)
            if isinstance(found, PropertyFailure | TargetError):
                return found
        return exc.exceptions[0]
    return exc


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


def one_line(exc: BaseException) -> str:
    if isinstance(exc, PropertyFailure):
        return exc.summary
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------------
# pytest hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attncheck", "attncheck property suite")
    group.addoption(
        "--attncheck-target",
        action="append",
        default=[],
        metavar="TARGET",
        help="built-in name or module.path:attr (repeatable; env ATTNCHECK_TARGET, comma-separated)",
    )
    group.addoption(
        "--attncheck-cap",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="declare a capability, e.g. causal=bottom-right, masks=none, layout=BLHD (repeatable)",
    )
    group.addoption(
        "--attncheck-profile",
        choices=PROFILES,
        default=None,
        help="Hypothesis profile (default: ci when CI is set, else dev)",
    )
    group.addoption("--attncheck-device", default="cpu", choices=("cpu", "cuda"))
    group.addoption("--attncheck-dtype", action="append", default=[], help="restrict dtypes (repeatable)")
    group.addoption("--attncheck-timeout", type=float, default=None, help="seconds per target call (default 60)")
    group.addoption(
        "--attncheck-known-failures",
        action="append",
        default=[],
        metavar="FILE",
        help="file of known, accepted deviations: '[target::]check_name  # reason' per line",
    )
    group.addoption("--attncheck-max-examples", type=int, default=None, help="override the profile's max_examples")
    group.addoption(
        "--attncheck-property",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these properties of the catalog (repeatable)",
    )
    group.addoption("--attncheck-json", default=None, metavar="PATH", help="write the report as JSON (atomically)")


def choose_profile(config: pytest.Config) -> str:
    explicit = config.getoption("attncheck_profile") or os.environ.get("ATTNCHECK_PROFILE")
    if explicit:
        if explicit not in PROFILES:
            raise pytest.UsageError(f"unknown profile {explicit!r}; choose from {PROFILES}")
        return str(explicit)
    return "ci" if os.environ.get("CI") else "dev"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attncheck_property(name): a check of the named attncheck property")
    profile = choose_profile(config)
    if not config.getoption("hypothesis_profile", None):
        max_examples = config.getoption("attncheck_max_examples")
        if max_examples:
            parent = hypothesis.settings.get_profile(profile)
            hypothesis.settings.register_profile(f"{profile}-{max_examples}", parent=parent, max_examples=max_examples)
            profile = f"{profile}-{max_examples}"
        hypothesis.settings.load_profile(profile)
    specs = list(config.getoption("attncheck_target"))
    if not specs and os.environ.get("ATTNCHECK_TARGET"):
        specs = [s.strip() for s in os.environ["ATTNCHECK_TARGET"].split(",") if s.strip()]
    try:
        resolved = resolve_targets(
            specs,
            list(config.getoption("attncheck_cap")),
            config.getoption("attncheck_device"),
            list(config.getoption("attncheck_dtype")) or None,
            config.getoption("attncheck_timeout"),
        )
        known = read_known_failures(list(config.getoption("attncheck_known_failures")))
    except TargetSpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[TARGETS_KEY] = resolved
    config.stash[REPORT_KEY] = Report(resolved, profile, config.getoption("hypothesis_seed", None))
    config.stash[KNOWN_KEY] = known


def pytest_report_header(config: pytest.Config) -> list[str]:
    report = config.stash.get(REPORT_KEY, None)
    if report is None:
        return []
    v = versions()
    lines = [f"attncheck: profile={report.profile} torch={v['torch']} hypothesis={v['hypothesis']}"]
    for t in report.targets:
        lines.append(f"attncheck target {t.name} on {t.device}: {t.description}")
        lines.append(f"  capabilities: {t.caps.summary()}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if getattr(metafunc.function, "attncheck_property", None) is None or "target" not in metafunc.fixturenames:
        return
    targets = metafunc.config.stash[TARGETS_KEY]
    metafunc.parametrize("target", targets, ids=[t.name for t in targets])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = set(config.getoption("attncheck_property"))
    if only:
        unknown = only - set(PROPERTIES)
        if unknown:
            raise pytest.UsageError(f"unknown property {sorted(unknown)[0]!r}; the catalog: {', '.join(PROPERTIES)}")
        keep = [i for i in items if getattr(getattr(i, "function", None), "attncheck_property", None) in only]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    known = config.stash.get(KNOWN_KEY, [])
    for item in items:
        target = _target_of(item)
        if target is None:
            continue
        check_name = item.originalname if isinstance(item, pytest.Function) else item.name
        reason = target.caps.known_failures.get(check_name)
        for who, name, why in known:
            if name == check_name and who in (None, target.name):
                reason = why
        if reason:
            item.add_marker(pytest.mark.xfail(reason=f"known deviation: {reason}", strict=False))


def _target_of(item: pytest.Item) -> Target | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or getattr(getattr(item, "function", None), "attncheck_property", None) is None:
        return None
    target = callspec.params.get("target")
    return target if isinstance(target, Target) else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    target = _target_of(item)
    if target is None:
        return report
    store = item.config.stash[REPORT_KEY]
    prop_name = item.function.attncheck_property  # type: ignore[attr-defined]
    check_name = item.originalname  # type: ignore[attr-defined]
    status, message, counterexample, repro = None, "", None, ""
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            status = "xpassed" if report.passed else "xfailed"
            message = str(report.wasxfail).removeprefix("reason: ")
        elif report.skipped:
            status = "skipped"
            longrepr = report.longrepr
            message = longrepr[2].removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
        elif report.failed:
            status = "failed"
            exc = failure_details(call.excinfo.value) if call.excinfo else None
            message = one_line(exc) if exc else "failed"
            problem = getattr(exc, "problem", None) or (problem_from_notes(exc) if exc else None)
            if problem is not None:
                counterexample = problem.describe()
                repro = problem.repro(target.name)
                report.sections.append(("attncheck repro", repro))
        else:
            status = "passed"
    if status is not None:
        store.results.append(
            CheckResult(target.name, prop_name, check_name, status, report.duration, message, counterexample, repro)
        )
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or not report.results:
        return
    from properties.render import render_table

    terminalreporter.write_sep("=", "attncheck conformance")
    terminalreporter.write(render_table(report, color=terminalreporter.hasmarkup))
    path = config.getoption("attncheck_json")
    if path:
        from properties.render import write_json

        write_json(report, path)
        terminalreporter.write_line(f"attncheck: report written to {path}")
