"""Fixtures shared by the suite's own tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _terminal_size_of_a_plain_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-xdist workers set COLUMNS=80; rendered tables must not depend on how the tests are distributed."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
