"""Fixtures shared by the suite's own tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

# One intra-op thread per test process, and for every subprocess a test starts (they inherit the environment).
# The problems the tests draw are tiny (a few hundred elements); on 2 cores with 2 pytest-xdist workers, torch's
# default of one OpenMP thread per core oversubscribes the machine and each small op waits for a descheduled
# thread: the model-level checks took 34 s of CPU with 2 threads and 6.5 s with 1.
Cli = Callable[..., subprocess.CompletedProcess[str]]  # the `cli` fixture: `attncheck ...` in this process
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _terminal_size_of_a_plain_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-xdist workers set COLUMNS=80; rendered tables must not depend on how the tests are distributed."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Cli:
    """``cli("verify", ...)``: `attncheck ...` run in this process, as CI runs it (CI=true: the ci profile), with
    what it wrote to stdout and stderr and its exit status, as `subprocess.run` would give them. For the tests
    whose subject is not the process boundary: a subprocess costs a Python start and a torch import (3-8 s on a
    busy 2-core runner); `python -m attncheck` itself is run by the Ctrl-C, hang and CI-recipe tests."""
    from attncheck.cli import main

    for name in [n for n in os.environ if n.startswith(("ATTNCHECK_", "HYPOTHESIS_"))]:
        monkeypatch.delenv(name)  # as a fresh process of the user's would see them: unset
    monkeypatch.setenv("CI", "true")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()  # what earlier calls left
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and its own usage errors (2)
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["attncheck", *args], code, out, err)

    return run
