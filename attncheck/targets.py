"""Resolving TARGET strings: built-in names, entry points of other distributions, ``module.path:attr``.

The contract a target is called with (:class:`~attncheck.properties.contract.Target`, :class:`Capabilities`,
``@declare``) lives with the properties that call it (``properties/contract.py``); this module turns what a user
typed (``attncheck verify TARGET --cap ...``, ``--attncheck-target``) into declared targets, from the built-in
adapters (:mod:`attncheck.adapters`), the ``attncheck.targets`` entry points and importable callables.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from attncheck.errors import TargetSpecError, TargetUnavailable
from attncheck.options import VerifySettings
from attncheck.properties.contract import CHOICES, FEATURES, SIZES, Capabilities, Target

ENTRY_POINT_GROUP = "attncheck.targets"  # name -> a factory returning a Target (or the Target itself)


def entry_point_targets() -> dict[str, importlib.metadata.EntryPoint]:
    """Targets that installed distributions register under the entry-point group ``attncheck.targets``."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load(factory: Callable[[], Any], spec: str) -> Target:
    """Call a target factory; what it returns must be a :class:`Target` (or a declared callable)."""
    made = factory()
    if isinstance(made, Target):
        return made
    if callable(made):
        return Target(spec, made, getattr(made, "__attncheck__", None) or Capabilities(), f"{spec} (entry point)")
    raise TargetSpecError(f"target {spec!r}: its factory returned a {type(made).__name__}, not a Target")


def _import_attr(spec: str) -> Any:
    """``module.path:attr.sub`` -> the object; the current directory is importable, as for ``python -m``."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise TargetSpecError(f"bad target {spec!r}: expected module.path:attr")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # a newcomer's `attncheck verify mykernel:attention` next to mykernel.py
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise TargetSpecError(
            f"cannot import module {module_name!r} for target {spec!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {module_name}:{close[0]}?" if close else ""
            raise TargetSpecError(
                f"module {module_name!r} has no attribute {attr_path!r} (target {spec!r}){hint}"
            ) from None
    return obj


def resolve(spec: str) -> Target:
    """A built-in name, an entry-point name or ``module.path:attr`` -> :class:`Target`.

    Raises :class:`TargetSpecError` (usage error) or :class:`TargetUnavailable` (known but cannot run here).
    """
    from attncheck.adapters import BUILTINS

    if spec in BUILTINS:
        return _load(_import_attr(BUILTINS[spec][1]), spec)
    entry, _, dense = spec.partition(":")
    if entry in ("varlen", "decode", "decode-paged") and dense:  # a dense target behind a pad-and-mask fallback
        from attncheck.adapters import entries

        if entry == "varlen":
            return entries.varlen_fallback(dense, resolve(dense))
        return entries.decode_fallback(dense, resolve(dense), paged=entry == "decode-paged")
    registered = entry_point_targets()
    if spec in registered:
        try:
            factory = registered[spec].load()
        except Exception as exc:
            raise TargetSpecError(f"cannot load entry point {spec!r}: {type(exc).__name__}: {exc}") from None
        return _load(factory, spec)
    if ":" not in spec:
        known = [*BUILTINS, *registered]
        close = difflib.get_close_matches(spec, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TargetSpecError(
            f"unknown target {spec!r}: {hint}not a built-in or registered target (see `attncheck targets`) "
            "and not of the form module.path:attr"
        )
    obj = _import_attr(spec)
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, type):
        raise TargetSpecError(
            f"target {spec!r} is a class: pass an instance (or a function), e.g. a module-level object"
        )
    if not callable(obj):
        raise TargetSpecError(f"target {spec!r} is a {type(obj).__name__}, not callable")
    caps = getattr(obj, "__attncheck__", None) or Capabilities()
    return Target(spec, obj, caps, f"{spec} (user target)")


def availability() -> list[tuple[str, str, str | None]]:
    """(name, description, reason unavailable or None) for every built-in and registered target."""
    from attncheck.adapters import BUILTINS

    rows: list[tuple[str, str, str | None]] = []
    candidates = [(name, description) for name, (description, _) in BUILTINS.items()]
    candidates += [
        (name, f"{ep.value} (from {ep.dist.name if ep.dist else 'an entry point'})")
        for name, ep in entry_point_targets().items()
    ]
    for name, description in candidates:
        try:
            resolve(name)
            rows.append((name, description, None))
        except TargetUnavailable as exc:
            rows.append((name, description, str(exc)))
        except TargetSpecError as exc:
            rows.append((name, description, str(exc)))
    return rows


YES_NO = ("yes", "no", "true", "false", "1", "0")


def parse_capability(text: str) -> dict[str, Any]:
    """``field=value`` -> a Capabilities change, e.g. ``causal=bottom-right``, ``masks=bool``, ``grad=no``."""
    key, sep, raw = text.partition("=")
    fields = Capabilities.__dataclass_fields__
    if not sep or key not in fields:
        raise TargetSpecError(f"bad capability {text!r}: expected FIELD=VALUE with FIELD in {sorted(fields)}")
    value: Any = raw
    if key == "gqa" and raw == "native":
        value = raw
    elif key in (
        "gqa",
        "scale",
        "unscaled",
        "grad",
        "value_dim",
        "window_counts_self",
        "paged",
        "batch_invariant",
        "mask_with_causal",
    ) or (key == "dropout" and raw in YES_NO):
        if raw.lower() not in YES_NO:
            native = ", native" if key == "gqa" else ""
            raise TargetSpecError(f"bad capability {text!r}: {key} takes yes or no{native}")
        value = raw.lower() in ("yes", "true", "1")
        if key == "dropout":
            value = "inverted" if value else False
    elif key in CHOICES:
        allowed = CHOICES[key]
        value = None if raw in ("none", "any", "input") and None in allowed else raw
        if value not in allowed:
            named = ", ".join("none" if a is None else "no" if a is False else str(a) for a in allowed)
            raise TargetSpecError(f"bad capability {text!r}: {key} takes {named}")
    elif key in SIZES:
        if key == "max_length" and raw in ("none", "any"):
            value = None
        elif raw.isdigit() and int(raw) >= 1:
            value = int(raw)
        else:
            raise TargetSpecError(f"bad capability {text!r}: {key} takes a positive integer")
    elif key in ("masks", "features"):
        value = frozenset() if raw in ("", "none") else frozenset(raw.split(","))
        known = {"bool", "float"} if key == "masks" else set(FEATURES)
        if value - known:
            raise TargetSpecError(f"bad capability {text!r}: {key} takes a comma-separated subset of {sorted(known)}")
    elif key in ("dtypes", "devices", "strided_inputs", "mask_shapes"):
        value = tuple(raw.split(","))
    elif key in ("arg_names", "known_failures"):
        pairs = [item.partition(":") for item in raw.split(",") if item]
        value = {k: v for k, _, v in pairs}
    return {key: value}


def resolve_targets(settings: VerifySettings) -> list[Target]:
    """The run's targets, with the declared capability changes and restrictions applied (raises TargetSpecError)."""
    from attncheck.adapters import DEFAULT_TARGETS

    changes: dict[str, Any] = {}
    for text in settings.caps:
        changes.update(parse_capability(text))
    dtypes, device, timeout = settings.dtypes, settings.device, settings.timeout
    resolved = []
    for spec in settings.targets or list(DEFAULT_TARGETS):
        try:
            target = resolve(spec)
        except TargetUnavailable as exc:
            raise TargetSpecError(f"target {spec!r} is unavailable here: {exc}") from None
        declared = target.declared or target.caps  # a Target reused in one process: not what a probe narrowed
        try:
            caps = declared.replace(**changes) if changes else declared
        except ValueError as exc:
            raise TargetSpecError(f"bad capabilities for {spec!r}: {exc}") from None
        if dtypes:  # a restriction of the run: only dtypes the target declares
            kept = tuple(d for d in caps.dtypes if d in dtypes)
            if not kept:
                raise TargetSpecError(f"target {spec!r} declares none of the dtypes asked for ({', '.join(dtypes)})")
            caps = caps.replace(dtypes=kept)
        if device not in caps.devices:
            raise TargetSpecError(f"target {spec!r} does not run on {device} (declares {caps.devices})")
        if device == "cuda" and not torch.cuda.is_available():
            raise TargetSpecError("--device cuda: CUDA is not available on this machine")
        target.caps, target.device, target.declared = caps, device, None
        if timeout:
            target.timeout = timeout
        resolved.append(target)
    names = [t.name for t in resolved]
    if len(set(names)) != len(names):
        raise TargetSpecError(f"a target is named twice: {names}")
    return resolved
