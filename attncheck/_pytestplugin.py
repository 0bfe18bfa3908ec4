"""attncheck's pytest plugin entry point (``pytest11: attncheck``): inert unless a session asks for attncheck.

Loaded by pytest in every session of every project where attncheck is installed, so, like Hypothesis's own
``_hypothesis_pytestplugin``, it imports neither torch nor Hypothesis and changes no settings. It registers the
``--attncheck-*`` options; the suite itself (:class:`attncheck.plugin.AttncheckPlugin`) is activated
only when a session passes an ``--attncheck-*`` option, sets ``ATTNCHECK_TARGET``, or collects the property
tests (``pytest --pyargs attncheck.properties``, whose conftest activates it).

pytest-benchmark, which attncheck installs, creates its storage folder ``.benchmarks`` in every session of every
project, benchmarks or not; an empty one that this session created is removed when the session ends, so
installing attncheck leaves no stray folder in the user's project.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attncheck.options import ENV_TARGET, PLUGIN_PREFIX, VerifySettings, add_verify_options

PLUGIN_NAME = "attncheck-suite"  # the name the active suite is registered under
BENCHMARK_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default --benchmark-storage
_stray: list[Path] = []  # the default storage folder, when it did not exist as the session began


def pytest_addoption(parser: Any) -> None:
    folder = Path(BENCHMARK_STORAGE.removeprefix("file://")).absolute()
    if not folder.exists():  # before pytest-benchmark's pytest_configure creates it
        _stray.append(folder)
    group = parser.getgroup("attncheck", "attncheck property suite (inert unless one of these is given)")
    group.addoption(
        f"--{PLUGIN_PREFIX}target",
        dest="attncheck_target",
        action="append",
        metavar="TARGET",
        help=f"built-in name, registered entry point or module.path:attr (repeatable; env {ENV_TARGET})",
    )
    add_verify_options(group.addoption, PLUGIN_PREFIX)


def requested_settings(config: Any) -> VerifySettings:
    """The verify settings this session's options and ``ATTNCHECK_TARGET`` ask for."""
    targets = list(config.getoption("attncheck_target") or [])
    if not targets and os.environ.get(ENV_TARGET):
        targets = [s.strip() for s in os.environ[ENV_TARGET].split(",") if s.strip()]
    return VerifySettings.from_options(lambda dest: config.getoption(f"attncheck_{dest}"), targets)


def activate(config: Any) -> None:
    """Register the suite for this session unless it already is (by this hook, the conftest, or the CLI)."""
    import pytest

    from attncheck.errors import UsageError
    from attncheck.plugin import AttncheckPlugin

    if any(isinstance(plugin, AttncheckPlugin) for plugin in config.pluginmanager.get_plugins()):
        return
    try:
        suite = AttncheckPlugin(requested_settings(config))
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(suite, PLUGIN_NAME)


def pytest_configure(config: Any) -> None:
    if requested_settings(config).requested():
        activate(config)


def pytest_unconfigure(config: Any) -> None:
    storage = config.getoption("benchmark_storage", BENCHMARK_STORAGE)
    for folder in _stray:
        if storage == BENCHMARK_STORAGE and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # created empty by this session (pytest-benchmark): no trace in the user's project
