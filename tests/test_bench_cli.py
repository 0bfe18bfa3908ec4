"""``attncheck bench`` help: every ``--help`` prints its options and exits 0.

argparse %-formats help strings, so a literal ``%`` in one (``default 10%``) crashes ``--help`` with a traceback;
these run the standalone entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HELP_CASES = {
    "bench": ((), ("compare", "history")),
    "compare": (
        ("compare",),
        ("baseline", "candidate", "--threshold", "default 10%", "--alpha", "--force", "--markdown", "--json"),
    ),
    "history": (("history",), ("PATH", "--threshold", "default 10%", "--alpha", "--plot")),
}


@pytest.mark.parametrize("case", sorted(HELP_CASES))
def test_help_exits_0_and_lists_the_options(case: str) -> None:
    argv, expected = HELP_CASES[case]
    proc = subprocess.run(
        [sys.executable, "-m", "attncheck.benchmarks.cli", *argv, "--help"],
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
