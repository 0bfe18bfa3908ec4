"""The options of a verification run, defined once and shared by ``attncheck verify`` and the pytest plugin.

In the manner of pytest-benchmark's ``add_display_options(addoption, prefix=...)``: :func:`add_verify_options`
adds the same options to an argparse parser (``--dtype``) and to pytest (``--attncheck-dtype``), and
:meth:`VerifySettings.from_options` reads them back from either. :meth:`VerifySettings.pytest_args` turns
settings into pytest options again, for the processes of pytest-xdist, which rebuild their configuration from
the command line.

This module imports neither torch nor Hypothesis: the plugin loads it in every pytest session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from attncheck.properties import PROFILE_NAMES

DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")
PLUGIN_PREFIX = "attncheck-"
ENV_TARGET = "ATTNCHECK_TARGET"
ENV_PROFILE = "ATTNCHECK_PROFILE"  # read when a run is active; it does not activate one

# (flag without prefix, argparse/pytest keyword arguments); the destination is the flag with "-" -> "_".
_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("json", {"metavar": "PATH", "help": "write the report as JSON (atomically)"}),
    (
        "profile",
        {
            "choices": PROFILE_NAMES,
            "help": "Hypothesis profile (default: ci when CI is set, else dev); screen: stop at the first red check",
        },
    ),
    ("max-examples", {"type": int, "metavar": "N", "help": "override the profile's examples per check"}),
    ("device", {"choices": ("cpu", "cuda"), "help": "device the tensors are built on (default cpu)"}),
    ("dtype", {"action": "append", "choices": DTYPE_NAMES, "help": "restrict to these dtypes (repeatable)"}),
    ("property", {"action": "append", "metavar": "NAME", "help": "run only these properties (repeatable)"}),
    ("check", {"action": "append", "metavar": "NAME", "help": "run only these checks (repeatable)"}),
    ("timeout", {"type": float, "metavar": "S", "help": "seconds per target call before it counts as hung (60)"}),
    (
        "threads",
        {
            "type": int,
            "metavar": "N",
            "help": "torch intra-op threads during the run (default 1: the problems are tiny, more threads only wait "
            "on each other; raise it to exercise a kernel's own parallel paths)",
        },
    ),
    (
        "known-failures",
        {
            "action": "append",
            "metavar": "FILE",
            "help": "accepted deviations, one '[target::][property::]check  # reason' per line (xfail)",
        },
    ),
]
# Capability declarations: the same fields as attncheck.Capabilities and @declare(...).
_CAPABILITY_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "causal",
        {
            "choices": ("top-left", "bottom-right", "always", "none"),
            "help": "alignment of is_causal; always = causal with no flag; none = no is_causal",
        },
    ),
    ("masks", {"metavar": "KINDS", "help": "mask kinds accepted: bool, float, bool,float or none"}),
    ("no-mask", {"action": "store_true", "help": "no attn_mask support (= --masks none)"}),
    ("no-grad", {"action": "store_true", "help": "not differentiable"}),
    ("no-gqa", {"action": "store_true", "help": "no enable_gqa"}),
    (
        "gqa-mapping",
        {"choices": ("grouped", "interleaved"), "help": "kv head of query head h: h // (Hq/Hkv) (SDPA) or h %% Hkv"},
    ),
    ("no-scale", {"action": "store_true", "help": "the scale= argument is not supported"}),
    ("same-value-dim", {"action": "store_true", "help": "requires Ev == E"}),
    (
        "dropout",
        {
            "nargs": "?",
            "const": "inverted",
            "choices": ("inverted", "renormalised"),
            "help": "supports dropout_p > 0: inverted (kept / (1 - p), the default) or renormalised rows",
        },
    ),
    (
        "feature",
        {
            "action": "append",
            "choices": ("window", "softcap", "sinks", "lse"),
            "help": "a feature beyond SDPA the target supports (repeatable; docs/features.md)",
        },
    ),
    ("masked-rows", {"choices": ("zeros", "nan", "uniform"), "help": "declared output of fully masked rows"}),
    ("layout", {"choices": ("BHLD", "BLHD"), "help": "tensor layout of the target"}),
    (
        "arg-name",
        {
            "action": "append",
            "metavar": "CONTRACT=NAME",
            "help": "keyword renames, e.g. is_causal=causal scale=softmax_scale (repeatable)",
        },
    ),
    ("cap", {"action": "append", "metavar": "FIELD=VALUE", "help": "any Capabilities field (repeatable)"}),
]


def _dest(flag: str, prefix: str) -> str:
    return (prefix + flag).replace("-", "_")


def add_verify_options(
    addoption: Callable[..., Any], prefix: str = "", add_capability: Callable[..., Any] | None = None
) -> None:
    """Add the verify options through ``addoption`` (argparse ``add_argument`` or pytest ``addoption``).

    ``prefix`` is ``"attncheck-"`` for pytest; ``add_capability`` adds the capability flags to another group.
    """
    for flag, kwargs in _OPTIONS:
        addoption(f"--{prefix}{flag}", dest=_dest(flag, prefix), **kwargs)
    add_capability_options(add_capability or addoption, prefix)


def add_capability_options(addoption: Callable[..., Any], prefix: str = "") -> None:
    """The capability declarations alone (``attncheck probe`` takes these and no run options)."""
    for flag, kwargs in _CAPABILITY_OPTIONS:
        addoption(f"--{prefix}{flag}", dest=_dest(flag, prefix), **kwargs)


@dataclass
class VerifySettings:
    """Everything a verification run was asked: the one description that the CLI and the plugin share."""

    targets: list[str] = field(default_factory=list)  # TARGET specs; empty = the built-in defaults
    caps: list[str] = field(default_factory=list)  # FIELD=VALUE declarations, flags translated
    profile: str | None = None
    max_examples: int | None = None
    device: str = "cpu"
    dtypes: list[str] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    timeout: float | None = None
    threads: int | None = None  # torch intra-op threads during the run; None = 1
    known_failures: list[str] = field(default_factory=list)  # files
    json: str | None = None

    @classmethod
    def from_options(cls, get: Callable[[str], Any], targets: list[str]) -> VerifySettings:
        """Read the options through ``get(dest without prefix)``; ``targets`` are the TARGET specs."""
        caps = list(get("cap") or [])
        if get("causal"):
            caps.append(f"causal={get('causal')}")
        if get("masks") is not None:
            caps.append(f"masks={get('masks')}")
        if get("no_mask"):
            caps.append("masks=none")
        for flag, cap in (
            ("no_grad", "grad"),
            ("no_gqa", "gqa"),
            ("no_scale", "scale"),
            ("same_value_dim", "value_dim"),
        ):
            if get(flag):
                caps.append(f"{cap}=no")
        if get("dropout"):
            caps.append(f"dropout={get('dropout')}")
        if get("gqa_mapping"):
            caps.append(f"gqa_mapping={get('gqa_mapping')}")
        if get("feature"):
            caps.append("features=" + ",".join(get("feature")))
        if get("masked_rows"):
            caps.append(f"masked_rows={get('masked_rows')}")
        if get("layout"):
            caps.append(f"layout={get('layout')}")
        if get("arg_name"):
            caps.append("arg_names=" + ",".join(a.replace("=", ":", 1) for a in get("arg_name")))
        return cls(
            targets=list(targets),
            caps=caps,
            profile=get("profile"),
            max_examples=get("max_examples"),
            device=get("device") or "cpu",
            dtypes=list(get("dtype") or []),
            properties=list(get("property") or []),
            checks=list(get("check") or []),
            timeout=get("timeout"),
            threads=get("threads"),
            known_failures=list(get("known_failures") or []),
            json=get("json"),
        )

    def requested(self) -> bool:
        """Whether anything was asked of attncheck (otherwise the plugin stays inert)."""
        return self != VerifySettings()

    def pytest_args(self) -> list[str]:
        """These settings as ``--attncheck-*`` options (caps already translated to ``--attncheck-cap``)."""
        args: list[str] = []
        for spec in self.targets:
            args += [f"--{PLUGIN_PREFIX}target", spec]
        for flag, values in (
            ("cap", self.caps),
            ("dtype", self.dtypes),
            ("property", self.properties),
            ("check", self.checks),
            ("known-failures", self.known_failures),
        ):
            for item in values:
                args += [f"--{PLUGIN_PREFIX}{flag}", item]
        optional: tuple[tuple[str, object], ...] = (
            ("profile", self.profile),
            ("max-examples", self.max_examples),
            ("timeout", self.timeout),
            ("threads", self.threads),
            ("json", self.json),
        )
        for flag, value in optional:
            if value is not None:
                args += [f"--{PLUGIN_PREFIX}{flag}", str(value)]
        if self.device != "cpu":
            args += [f"--{PLUGIN_PREFIX}device", self.device]
        return args
