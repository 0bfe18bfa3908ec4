"""Repros reproduce: every printed repro, run in a fresh interpreter, fails with the run's message, and passes on
the fixed kernel (docs/design.md, "One verdict on every path").

Three verify runs (mutants declared with ``@mutant``; FlashAttention-style kernels declared only on the command
line: --layout BLHD, --arg-name, --causal bottom-right) collect the repro of every failing check (every distinct
failure) and of every root cause; one child interpreter then executes them all, each in a fresh namespace, and
says how each ended. The same snippets with the target's name replaced by a correct kernel of the same convention
(the declaration they carry kept) must pass: a repro that fails for any other reason than the bug is caught too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONV = "tests.fixtures.conventions"
FLASH_FLAGS = ["--layout", "BLHD", "--causal", "bottom-right", "--arg-name", "is_causal=causal"]
FLASH_FLAGS += ["--arg-name", "scale=softmax_scale", "--no-mask", "--no-gqa"]
# (targets, flags, properties, the fixed kernel in the same convention)
RUNS = [
    (
        [f"{CONV}:flash_dv_halved", f"{CONV}:flash_causal_sign", f"{CONV}:flash_no_rescale"],
        FLASH_FLAGS,
        ["matches_oracle", "no_future_leakage"],
        f"{CONV}:flash",
    ),
    (
        ["tests.mutants:causal_shows_next_token", "tests.mutants:mask_batch0_broadcast"],
        [],
        ["no_future_leakage", "mask_semantics"],
        "reference",
    ),
    (["tests.mutants:wrong_softmax_backward"], [], ["matches_oracle"], "reference"),
]
# Run in the child: exec each snippet in a fresh namespace; print how each ended, as the report words it.
RUNNER = """
import json, sys
from attncheck.report import one_line
results = []
for snippet in json.load(sys.stdin):
    try:
        exec(compile(snippet, "<repro>", "exec"), {"__name__": "__repro__"})
        results.append(None)
    except BaseException as exc:
        results.append(one_line(exc))
print(json.dumps(results))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"}


def _verify(targets: list[str], flags: list[str], properties: list[str], out: Path) -> dict[str, Any]:
    chosen = [arg for name in properties for arg in ("--property", name)]
    args = ["verify", *targets, *flags, *chosen, "--dtype", "float64", "--max-examples", "15", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "attncheck", *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return json.loads(out.read_text())


def _failures(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, message, repro) of every failing check, every distinct failure and every root cause the first
    probe found by comparing with the oracle (its message ends with the assertion's)."""
    found = []
    for target in report["targets"]:
        for cause in target.get("root_causes", []):
            if cause.get("assertion"):
                found.append((target["name"], cause["assertion"], cause["repro"]))
        for prop in target["properties"]:
            for check in prop["checks"]:
                if check["status"] != "failed":
                    continue
                for failure in [check, *check["more_failures"]]:
                    found.append((target["name"], failure["message"], failure["repro"]))
    return found


def _execute(snippets: list[str]) -> list[str | None]:
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(snippets),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_repro_fails_the_same_way_and_passes_on_the_fixed_kernel(tmp_path: Path) -> None:
    failing: list[tuple[str, str, str]] = []
    fixed: list[str] = []
    for n, (targets, flags, properties, correct) in enumerate(RUNS):
        found = _failures(_verify(targets, flags, properties, tmp_path / f"run{n}.json"))
        assert {name for name, _, _ in found} == set(targets), "every kernel of the run fails some check"
        failing += found
        fixed += [repro.replace(repr(name), repr(correct)) for name, _, repro in found]
    assert all(repro for _, _, repro in failing), [m for _, m, r in failing if not r]
    assert any("gradient dV" in message for _, message, _ in failing), "the gradient-only bug is among them"
    ended = _execute([repro for _, _, repro in failing] + fixed)
    for (name, message, repro), got in zip(failing, ended[: len(failing)], strict=True):
        assert got == message, f"{name}: the repro ended with {got!r}, the run reported {message!r}\n{repro}"
    for snippet, got in zip(fixed, ended[len(failing) :], strict=True):
        assert got is None, f"on the fixed kernel the repro failed: {got}\n{snippet}"
