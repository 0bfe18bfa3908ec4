"""One exception hierarchy for attncheck: every error the package raises derives from :class:`AttncheckError`.

Two families, told apart by how they surface:

* *usage errors* (:class:`UsageError` and its subclasses) become a one-line message and exit code 2;
* *findings* (:class:`PropertyFailure`, :class:`TargetError`) are also ``AssertionError``, so pytest reports
  them as a failing check, and the report renders their one-line summary.

This module imports nothing heavy: the pytest plugin and the CLI load it before torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attncheck.properties.problems import Problem


class AttncheckError(Exception):
    """Base class of every exception raised by attncheck."""


class UsageError(AttncheckError):
    """The user asked for something that cannot be done (bad flag, unknown target, unreadable file): exit 2."""


class TargetSpecError(UsageError):
    """A TARGET (built-in name, entry point or ``module.path:attr``) cannot be resolved."""


class BenchmarkDataError(UsageError, ValueError):
    """A benchmark file is unreadable, truncated, or not pytest-benchmark JSON with raw rounds."""


class TargetUnavailable(AttncheckError):
    """A target cannot run here (optional library missing, no CUDA...): reported as unavailable, not an error."""


class TargetError(AttncheckError, AssertionError):
    """The target misbehaved as a program: it raised, hung, or returned something of the wrong kind.

    ``kind`` is ``"raised"`` or ``"hung"`` (reported with status *error*: no answer to judge) or ``"returned"``
    (a wrong kind of answer: wrong shape, dtype, device or type; status *failed*).
    """

    def __init__(self, message: str, kind: str = "returned"):
        super().__init__(message)
        self.kind = kind


class PropertyFailure(AttncheckError, AssertionError):
    """A property does not hold on a target; ``problem`` is the counterexample, ``worst`` the worst element."""

    def __init__(self, message: str, problem: Problem | None = None, worst: dict[str, Any] | None = None):
        self.problem = problem
        self.worst = worst or {}
        self.summary = message
        inputs = "" if problem is None else f"\n  inputs: {problem.format()}"
        super().__init__(message + inputs)
