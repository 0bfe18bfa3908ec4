"""Fixtures shared by the suite's own tests."""

from __future__ import annotations

import os

import pytest

# One intra-op thread per test process, and for every subprocess a test starts (they inherit the environment).
# The problems the tests draw are tiny (a few hundred elements); on 2 cores with 2 pytest-xdist workers, torch's
# default of one OpenMP thread per core oversubscribes the machine and each small op waits for a descheduled
# thread: the model-level checks took 34 s of CPU with 2 threads and 6.5 s with 1.
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
