"""Known, accepted deviations: one mechanism for declarations (``known_failures=`` of a target) and files.

An entry names a check in one of the forms the report prints (docs/design.md, "Verdicts")::

    check                          e.g. test_masked_keys_nonfinite_irrelevant
    property::check                e.g. mask_semantics::test_masked_keys_nonfinite_irrelevant
    target::check                  e.g. torch-sdpa::test_masked_keys_nonfinite_irrelevant
    target::property::check        e.g. torch-sdpa::mask_semantics::test_masked_keys_nonfinite_irrelevant

followed in a file by ``# reason``. Names are validated against the catalog (a misspelt check or property is a
usage error with a suggestion); an entry that matches no check of a run is reported as a warning, as
array-api-tests does for stale xfail ids.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from attncheck.errors import UsageError


@dataclass(frozen=True)
class KnownFailure:
    target: str | None  # None = any target
    property: str | None  # None = the check's own property
    check: str
    reason: str
    text: str  # the entry as written
    source: str  # "FILE:LINE" or "declared by TARGET"

    def matches(self, target: str, prop: str, check: str) -> bool:
        return self.check == check and self.target in (None, target) and self.property in (None, prop)


def parse_entry(text: str, reason: str, source: str, catalog: Mapping[str, str]) -> KnownFailure:
    """One entry -> :class:`KnownFailure`; ``catalog`` maps every check name to its property."""
    parts = [p.strip() for p in text.split("::")]
    properties = set(catalog.values())
    if len(parts) > 3 or not all(parts):
        raise UsageError(f"{source}: bad known-failure entry {text!r}: expected [target::][property::]check")
    check = parts[-1]
    target = prop = None
    if len(parts) == 3:
        target, prop = parts[0], parts[1]
    elif len(parts) == 2:
        if parts[0] in properties:
            prop = parts[0]
        else:
            target = parts[0]
    if check not in catalog:
        close = difflib.get_close_matches(check, list(catalog), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see `attncheck verify --list-checks`)"
        raise UsageError(f"{source}: unknown check {check!r} in known-failure entry {text!r}{hint}")
    if prop is not None and catalog[check] != prop:
        raise UsageError(f"{source}: check {check!r} belongs to property {catalog[check]!r}, not {prop!r}")
    return KnownFailure(target, prop, check, reason, text, source)


def read_files(paths: Iterable[str], catalog: Mapping[str, str]) -> list[KnownFailure]:
    """Lines ``[target::][property::]check  # reason`` of each file."""
    entries = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read known-failures file {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"known-failures file {path!r} is not UTF-8 text (byte {exc.start})") from None
        for number, line in enumerate(lines, 1):
            body, _, reason = line.partition("#")
            if body.strip():
                source = f"{path}:{number}"
                entries.append(parse_entry(body.strip(), reason.strip() or f"listed in {path}", source, catalog))
    return entries


def declared(target: str, known_failures: Mapping[str, str], catalog: Mapping[str, str]) -> list[KnownFailure]:
    """A target's own ``known_failures`` declaration ({entry: reason}), bound to that target."""
    entries = []
    for text, reason in known_failures.items():
        entry = parse_entry(text, reason, f"declared by {target}", catalog)
        if entry.target not in (None, target):
            raise UsageError(f"target {target!r} declares a known failure of another target: {text!r}")
        entries.append(KnownFailure(target, entry.property, entry.check, reason, text, entry.source))
    return entries
