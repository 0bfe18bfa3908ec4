"""attncheck: property-based verification and benchmarks for Transformer attention.

One import package, so names as generic as ``properties`` or ``benchmarks`` never shadow (or are shadowed by) a
user's own packages: :mod:`attncheck.reference`, :mod:`attncheck.properties`, :mod:`attncheck.benchmarks`.

The public API is importable from here (``from attncheck import verify, declare, Capabilities, Target``). It is
loaded on first use (PEP 562), so importing :mod:`attncheck` (as the pytest plugin does in every pytest session) imports
neither torch nor Hypothesis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attncheck.api import Failure, Report, verify
    from attncheck.errors import AttncheckError
    from attncheck.properties.contract import Capabilities, Target, declare

__all__ = ["AttncheckError", "Capabilities", "Failure", "Report", "Target", "declare", "verify"]

_LAZY = {
    "AttncheckError": "attncheck.errors",
    "Failure": "attncheck.api",
    "Report": "attncheck.api",
    "verify": "attncheck.api",
    "Capabilities": "attncheck.properties.contract",
    "Target": "attncheck.properties.contract",
    "declare": "attncheck.properties.contract",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attncheck' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
