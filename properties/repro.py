"""Repros that reproduce: a failing check as a snippet that rebuilds the target with its declaration and replays
the check on the exact values it drew.

A repro is data, not prose (docs/design.md, "Style": cudnn-frontend's ``--repro``, Hypothesis'
``@reproduce_failure``): the snippet names the check (``module:function``), the target (its spec, plus the
``Capabilities`` of the run, whether they came from ``@declare``, verify flags or plugin options, and the
precision the first probe observed), and every value the check drew, in order, as Hypothesis printed them
("Draw 1 (problem): Problem(...)"). :func:`replay` runs the check's own body on those values, so it computes the
same quantity (the output; dQ, dK or dV with the same output gradient; both sides of a metamorphic check) and
ends in the same assertion, failing with the same message. A snippet written out by hand could drift from the
check; this one cannot.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from attncheck.properties.contract import Capabilities, Target

# The problem classes a drawn value may be (anything else drawn is a literal: ints, floats, tuples, lists).
PROBLEM_CLASSES = {
    "Problem": "attncheck.properties.problems",
    "FeatureProblem": "attncheck.properties.features",
    "VarlenProblem": "attncheck.properties.packed",
    "DecodeProblem": "attncheck.properties.packed",
}
_DRAW = re.compile(r"^Draw \d+(?: \((?P<label>.*?)\))?: (?P<value>.*)", re.S)
_FALSIFYING = "Falsifying example: "


def _literal(node: ast.expr) -> str:
    """The source of a drawn value after checking that it is a literal or a problem class called with literals
    (raises ValueError otherwise: nothing else is ever executed from a note); a problem's fields that keep their
    default are left out, as :meth:`Problem.repro` writes it."""
    if not isinstance(node, ast.Call):
        ast.literal_eval(node)
        return ast.unparse(node)
    name = getattr(node.func, "id", None)
    if name not in PROBLEM_CLASSES or node.args:
        raise ValueError(f"not a problem: {ast.unparse(node)}")
    fields = getattr(importlib.import_module(PROBLEM_CLASSES[name]), name).__dataclass_fields__
    node.keywords = [
        kw for kw in node.keywords if kw.arg not in fields or ast.literal_eval(kw.value) != fields[kw.arg].default
    ]
    return ast.unparse(node)


def drawn_values(exc: BaseException) -> tuple[list[str], dict[str, str]] | None:
    """From Hypothesis' notes on a failure: the source of each value drawn with ``data.draw``, in order, and of
    the check's other ``@given`` arguments; None when a value is not a literal or a problem (no replay)."""
    draws: list[str] = []
    given_args: dict[str, str] = {}
    try:
        for note in getattr(exc, "__notes__", []):
            found = _DRAW.match(note)
            if found:
                draws.append(_literal(ast.parse(found.group("value").strip(), mode="eval").body))
            elif note.startswith(_FALSIFYING):
                given_args = _given_arguments(note.removeprefix(_FALSIFYING))
    except (SyntaxError, ValueError, TypeError):
        return None
    return draws, given_args


def _given_arguments(call: str) -> dict[str, str]:
    """``test_x(\\n    target=..., data=data(...), a=1.0,\\n)`` -> {"a": "1.0"}: the top-level arguments (at four
    spaces, one per line in Hypothesis' pretty printing) except the target fixture and ``data``."""
    args: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in call.splitlines()[1:]:
        top = re.match(r"^    (\w+)=(.*)$", line)
        if top:
            current = args.setdefault(top.group(1), [top.group(2)])
        elif current is not None and line.startswith("     "):
            current.append(line)
    found = {}
    for name, lines in args.items():
        if name in ("target", "data"):
            continue
        found[name] = _literal(ast.parse("\n".join(lines).rstrip().removesuffix(","), mode="eval").body)
    return found


def declaration(target: Target) -> str:
    """``Capabilities(...)`` of the run: every field that differs from the default contract."""
    default = Capabilities()
    fields = []
    for name in Capabilities.__dataclass_fields__:
        value = getattr(target.caps, name)
        if value == getattr(default, name):
            continue
        if isinstance(value, frozenset):
            value = set(value) if value else frozenset()
        elif name in ("arg_names", "known_failures"):
            value = dict(value)
        fields.append(f"{name}={value!r}")
    return f"Capabilities({', '.join(fields)})"


def target_lines(target: Target) -> list[str]:
    """The lines that rebuild ``target`` as the run had it: resolved by name, with the run's declaration (the
    probe's narrowing included), the precision the probe observed, and the device."""
    lines = [f"target = resolve({target.name!r})", f"target.caps = {declaration(target)}"]
    if target.observed_precision:
        lines.append(f"target.observed_precision.update({dict(target.observed_precision)!r})")
    if target.device != "cpu":
        lines.append(f"target.device = {target.device!r}")
    return lines


def replay_snippet(target: Target, check: str, draws: list[str], given_args: dict[str, str]) -> str:
    """The repro of a failing check: rebuild the target, then :func:`replay` the check on the drawn values."""
    used = sorted({name for src in draws for name in PROBLEM_CLASSES if re.match(rf"{name}\(", src)})
    imports = [f"from {PROBLEM_CLASSES[name]} import {name}" for name in used]
    imports += [
        "from attncheck.properties.repro import replay",
        "from attncheck import Capabilities",
        "from attncheck.targets import resolve",
    ]
    values = "".join(f"\n    {src}," for src in draws)
    kwargs = "".join(f"\n    {name}={src}," for name, src in given_args.items())
    return "\n".join([*imports, *target_lines(target), f"replay(target, {check!r},{values}{kwargs}\n)"])


class _Replayed:
    """Stands for Hypothesis' ``data`` in a replay: each ``draw`` returns the next recorded value."""

    def __init__(self, values: tuple[Any, ...]) -> None:
        self._values: Iterator[Any] = iter(values)

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        try:
            return next(self._values)
        except StopIteration:
            wanted = label or strategy
            raise RuntimeError(f"replay: the check draws more values than were recorded ({wanted})") from None


def replay(target: Target, check: str, *draws: Any, **given_args: Any) -> None:
    """Run the check ``module:function`` on ``target`` with ``draws`` as the values of its ``data.draw`` calls, in
    order, and ``given_args`` as its other arguments: the same code, so the same quantity and assertion.

    The body runs under a one-example ``@given`` so that what it asks of Hypothesis (``target()``, ``note()``)
    works as in the run; the check's own exception propagates unchanged.
    """
    module_name, _, name = check.partition(":")
    test = getattr(importlib.import_module(module_name), name)
    body = test.hypothesis.inner_test  # the function under @given

    @settings(
        max_examples=1,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @given(st.just(None))
    def once(_: None) -> None:
        kwargs = {"target": target, **given_args}
        if "data" in inspect.signature(body).parameters:
            kwargs["data"] = _Replayed(draws)
        body(**kwargs)

    once()


def repro(exc: BaseException, target: Target, check: str) -> str:
    """The repro of one failure of ``check`` (``module:function``): a replay of the values Hypothesis drew, or
    '' when its notes hold none (the caller then falls back to the counterexample's own repro)."""
    drawn = drawn_values(exc)
    if drawn is None or not (drawn[0] or drawn[1]):
        return ""
    return replay_snippet(target, check, *drawn)
