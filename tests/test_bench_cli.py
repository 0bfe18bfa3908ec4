"""Help: every ``--help`` of every ``attncheck`` command prints its options and exits 0.

argparse %-formats help strings, so a literal ``%`` in one (``default 10%``) crashes ``--help`` with a traceback;
these run the standalone entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HELP_CASES = {
    "bench": ((), ("compare", "history", "ab", "run")),
    "compare": (
        ("compare",),
        ("baseline", "candidate", "--threshold", "default 10%", "--alpha", "--force", "--markdown", "--json"),
    ),
    "history": (("history",), ("PATH", "--threshold", "default 10%", "--alpha", "--plot", "--html")),
    "ab": (
        ("ab",),
        ("TARGET_A", "TARGET_B", "--pairs", "--slowdown-b", "default 10%", "--json", "--causal", "--layout"),
    ),
    "run": (
        ("run",),
        ("TARGET", "--size", "--cases", "--json", "--html", "--save", "--device", "--dtype", "--arg-name"),
    ),
}


@pytest.mark.parametrize("case", sorted(HELP_CASES))
def test_help_exits_0_and_lists_the_options(case: str) -> None:
    argv, expected = HELP_CASES[case]
    proc = subprocess.run(
        [sys.executable, "-m", "attncheck.bench.cli", *argv, "--help"],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},  # one line per option, whatever the terminal
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith("usage: attncheck bench"), proc.stdout
    for text in expected:
        assert text in proc.stdout, f"{text!r} missing from the help:\n{proc.stdout}"


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of ``parser``: () for itself, then each subcommand's path, depth first."""
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*path, name))
    return paths


def test_every_attncheck_command_has_a_working_help(capsys: pytest.CaptureFixture) -> None:
    from attncheck.cli import build_parser, main

    paths = command_paths(build_parser())
    assert {("verify",), ("bench", "compare"), ("bench", "history"), ("bench", "ab")} <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(f"usage: attncheck {' '.join(path)}".rstrip()), (path, out)
