"""The attncheck command line: exit codes, one-line usage errors, misbehaving targets, the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = "tests.fixtures.cli_targets"


def attncheck(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"}
    return subprocess.run(
        [sys.executable, "-m", "attncheck", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-builtin", "unknown target 'no-such-builtin'"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        (f"{FIX}:missing", "has no attribute 'missing'"),
        (f"{FIX}:not_callable", "is a int, not callable"),
        (f"{FIX}:", "bad target"),
    ],
)
def test_bad_target_is_a_one_line_usage_error(spec: str, message: str) -> None:
    result = attncheck("verify", spec)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("attncheck: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    assert attncheck("verify", "--property", "nonsense").returncode == 2
    assert attncheck("verify", "--cap", "causal=sideways").returncode == 2
    assert attncheck("verify", "--json", str(tmp_path)).returncode == 2
    assert attncheck("verify", "--known-failures", str(tmp_path / "absent.txt")).returncode == 2


def _report(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert set(data) >= {"targets", "versions", "settings"}
    for target in data["targets"]:
        assert set(target) >= {"name", "properties"}
        for prop in target["properties"]:
            assert set(prop) >= {"name", "status", "message", "counterexample"}
            assert prop["status"] in ("passed", "failed", "error", "blocked", "skipped", "known-failure")
    return data


def test_good_and_declared_targets_pass_with_json(tmp_path: Path) -> None:
    out, md = tmp_path / "report.json", tmp_path / "matrix.md"
    result = attncheck(
        "verify",
        f"{FIX}:good",
        f"{FIX}:blhd",
        "--property",
        "matches_oracle",
        "--property",
        "no_future_leakage",
        "--property",
        "mask_semantics",
        "--json",
        str(out),
        "--markdown",
        str(md),
        "-q",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = _report(out)
    by_name = {t["name"]: {p["name"]: p for p in t["properties"]} for t in data["targets"]}
    assert by_name[f"{FIX}:good"]["matches_oracle"]["status"] == "passed"
    assert by_name[f"{FIX}:blhd"]["no_future_leakage"]["status"] == "passed"
    assert by_name[f"{FIX}:blhd"]["mask_semantics"]["status"] == "skipped"  # declared no masks: not applicable
    assert data["settings"]["profile"] == "ci"
    outcome, _, header, *_ = md.read_text().splitlines()  # the outcome line, then the matrix
    assert outcome == "**attncheck: passed: 5 passed, 1 skipped; 0 root causes; exit status 0**", outcome
    assert header == f"| property | `{FIX}:good` | `{FIX}:blhd` |"
    assert result.stdout.rstrip().splitlines()[-3] == outcome.strip("*")  # the terminal's last line, then files


@pytest.mark.parametrize(
    ("name", "fragment", "status"),
    [
        ("raises", "raised RuntimeError: kernel exploded", "blocked"),  # the first probe's plain call: root cause
        ("wrong_shape", "returned shape", "blocked"),
        ("returns_nan", "non-finite output", "failed"),  # a wrong answer
    ],
)
def test_misbehaving_target_fails_the_property_and_the_run_goes_on(
    tmp_path: Path, name: str, fragment: str, status: str
) -> None:
    out = tmp_path / "report.json"
    result = attncheck(
        "verify",
        f"{FIX}:{name}",
        "reference",
        "--property",
        "matches_oracle",
        "--json",
        str(out),
        "-q",
        "--max-examples",
        "5",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    data = _report(out)
    bad, ref = data["targets"]
    failed = bad["properties"][0]
    assert failed["status"] == status and fragment in failed["message"], failed
    assert failed["counterexample"] is None or "query shape" in failed["counterexample"]
    assert ref["properties"][0]["status"] == "passed"  # the run went on to the next target
    assert status.upper() in result.stdout and fragment in result.stdout


def test_hanging_target_times_out(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = attncheck(
        "verify",
        f"{FIX}:hangs",
        "--property",
        "matches_oracle",
        "--timeout",
        "1",
        "--json",
        str(out),
        "-q",
        "--max-examples",
        "3",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    row = _report(out)["targets"][0]["properties"][0]
    assert row["status"] == "blocked" and "did not return within 1 s" in row["message"], row


def test_failure_shows_counterexample_and_repro(tmp_path: Path) -> None:
    result = attncheck("verify", "tests.mutants:no_scaling", "--property", "scaling_variance", "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "minimal counterexample:" in result.stdout and "reproduce with:" in result.stdout
    assert "Problem(" in result.stdout


def test_existing_report_is_not_clobbered_on_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("precious")
    assert attncheck("verify", "no-such-builtin", "--json", str(out)).returncode == 2
    assert out.read_text() == "precious"


def test_targets_lists_builtins() -> None:
    result = attncheck("targets")
    assert result.returncode == 0
    for name in ("reference", "torch-sdpa", "torch-sdpa-math"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "command",
    [[], ["verify"], ["targets"], ["probe"], ["bench"], ["bench", "compare"], ["bench", "history"]],
    ids=lambda c: " ".join(c) or "attncheck",
)
def test_every_help_works(command: list[str]) -> None:
    result = attncheck(*command, "--help")
    assert result.returncode == 0 and "usage: attncheck" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr


def test_targets_prints_install_hints_as_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich must not eat `[hf]` in `pip install 'attncheck[hf]'` as markup."""
    from attncheck import cli
    from attncheck.properties import targets

    rows = [("hf-eager", "transformers [eager]", "transformers is not installed: pip install 'attncheck[hf]'")]
    monkeypatch.setattr(targets, "availability", lambda: rows)
    assert cli.main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'attncheck[hf]'" in out.replace("\n", "") or "attncheck[hf]" in out, out
    assert "transformers [eager]" in out
