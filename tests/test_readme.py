"""The README's commands work as printed, and its links lead somewhere.

The README's kernel (the ```python block that defines ``attention``) is saved as ``mykernel.py`` in a fresh folder,
as the README says, and every ``attncheck ...`` and ``pytest ...`` line of its ```bash blocks (the install block
aside) runs there as printed, through this interpreter (``python -m attncheck``, ``python -m pytest``) with this
checkout on ``PYTHONPATH`` and ``CI=true``, as CI runs it. A line's expected exit status is the ``exit N`` its
comment names, else 0. The README keeps its examples cheap (``--max-examples 3``, one benchmark case), so the whole
file costs about 40 s of CPU.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def _commands() -> list[tuple[str, int]]:
    """Each runnable line of the README's bash blocks (the first block, the install, aside) and its exit status."""
    commands = []
    for block in _blocks("bash")[1:]:
        for line in block.splitlines():
            if line.startswith(("attncheck ", "pytest ")):
                comment = line.partition(" # ")[2]
                status = re.search(r"\bexit (\d+)", comment)
                commands.append((line, int(status.group(1)) if status else 0))
    return commands


def test_the_readme_opens_with_the_two_commands() -> None:
    """``.ci/run`` and the user rely on these two lines, unchanged, at the top."""
    assert _blocks("bash")[0].splitlines()[:2] == [
        "pip install torch==2.13.0 -e . && attncheck verify      # main job: verify the built-in default targets "
        "(reference, torch SDPA)",
        'pip install "tox>=4" && tox                             # tests: the suite\'s own tests + properties on the '
        "defaults, lint, type",
    ]


def test_the_readme_has_runnable_commands() -> None:
    """The extraction below finds what it should: a test that runs nothing would pass vacuously."""
    lines = [line for line, _ in _commands()]
    assert any(line.startswith("attncheck verify mykernel:attention") for line in lines), lines
    assert any(line.startswith("attncheck probe mykernel:attention") for line in lines), lines
    assert any(line.startswith("pytest ") for line in lines), lines
    assert any(line.startswith("attncheck bench run mykernel:attention") for line in lines), lines


@pytest.fixture(scope="module")
def kernel_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder holding the README's ``mykernel.py``, exactly as printed."""
    [kernel] = [body for body in _blocks("python") if "\ndef attention(" in body]
    folder = tmp_path_factory.mktemp("readme")
    (folder / "mykernel.py").write_text(kernel)
    return folder


COMMANDS = _commands()


@pytest.mark.parametrize(("line", "status"), COMMANDS, ids=[line.partition(" # ")[0].strip() for line, _ in COMMANDS])
def test_a_readme_command_runs_as_printed(kernel_folder: Path, line: str, status: int) -> None:
    argv = shlex.split(line, comments=True)
    program = {"attncheck": [sys.executable, "-m", "attncheck"], "pytest": [sys.executable, "-m", "pytest"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTNCHECK_", "HYPOTHESIS_", "PYTEST_"))}
    env |= {"PYTHONPATH": str(ROOT), "CI": "true"}
    result = subprocess.run(
        program[argv[0]] + argv[1:], cwd=kernel_folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == status, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_every_relative_link_of_the_readme_exists() -> None:
    """Every ``[text](path)`` and ``![alt](path)`` that is not a URL names a file or folder of this checkout."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    relative = [link.split("#", 1)[0] for link in links if not re.match(r"[a-z]+:", link)]
    assert relative, "the README links no page of docs/"
    missing = [link for link in relative if link and not (ROOT / link).exists()]
    assert not missing, missing
