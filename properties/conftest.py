"""Collecting the property tests activates the attncheck suite (``pytest --pyargs attncheck.properties``)."""

from __future__ import annotations

from typing import Any

from attncheck._pytestplugin import activate


def pytest_configure(config: Any) -> None:
    activate(config)
