"""The attncheck command line: exit codes, one-line usage errors, misbehaving targets, the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]
FIX = "tests.fixtures.cli_targets"


def attncheck(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m attncheck ...` in a process of its own (CI=true), for the tests of the process itself."""
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
def test_bad_target_is_a_one_line_usage_error(spec: str, message: str, cli: Cli) -> None:
    result = cli("verify", spec)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("attncheck: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flags_are_usage_errors(tmp_path: Path, cli: Cli) -> None:
    assert cli("verify", "--property", "nonsense").returncode == 2
    assert cli("verify", "--cap", "causal=sideways").returncode == 2
    assert cli("verify", "--json", str(tmp_path)).returncode == 2
    assert cli("verify", "--known-failures", str(tmp_path / "absent.txt")).returncode == 2


def _report(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert set(data) >= {"targets", "versions", "settings"}
    for target in data["targets"]:
        assert set(target) >= {"name", "properties"}
        for prop in target["properties"]:
            assert set(prop) >= {"name", "status", "message", "counterexample"}
            assert prop["status"] in ("passed", "failed", "error", "blocked", "skipped", "known-failure")
    return data


def test_good_and_declared_targets_pass_with_json(tmp_path: Path, cli: Cli) -> None:
    out, md = tmp_path / "report.json", tmp_path / "matrix.md"
    result = cli(
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
    tmp_path: Path, name: str, fragment: str, status: str, cli: Cli
) -> None:
    out = tmp_path / "report.json"
    result = cli(
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


def test_failure_shows_counterexample_and_repro(tmp_path: Path, cli: Cli) -> None:
    result = cli("verify", "tests.mutants:no_scaling", "--property", "scaling_variance", "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "minimal counterexample:" in result.stdout and "reproduce with:" in result.stdout
    assert "Problem(" in result.stdout


def test_existing_report_is_not_clobbered_on_usage_error(tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "report.json"
    out.write_text("precious")
    assert cli("verify", "no-such-builtin", "--json", str(out)).returncode == 2
    assert out.read_text() == "precious"


def test_targets_lists_builtins(cli: Cli) -> None:
    result = cli("targets")
    assert result.returncode == 0
    for name in ("reference", "torch-sdpa", "torch-sdpa-math"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "command",
    [[], ["verify"], ["targets"], ["probe"], ["bench"], ["bench", "compare"], ["bench", "history"]],
    ids=lambda c: " ".join(c) or "attncheck",
)
def test_every_help_works(command: list[str], cli: Cli) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage: attncheck" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr


def test_targets_prints_install_hints_as_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich must not eat `[hf]` in `pip install 'attncheck[hf]'` as markup."""
    from attncheck import cli, targets

    rows = [("hf-eager", "transformers [eager]", "transformers is not installed: pip install 'attncheck[hf]'")]
    monkeypatch.setattr(targets, "availability", lambda: rows)
    assert cli.main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'attncheck[hf]'" in out.replace("\n", "") or "attncheck[hf]" in out, out
    assert "transformers [eager]" in out


def test_ctrl_c_exits_130_with_the_partial_table_and_reports(tmp_path: Path) -> None:
    """Ctrl-C after the first property finished: exit 130, the table of what finished, reports marked partial."""
    import signal

    out, md = tmp_path / "r.json", tmp_path / "r.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"}
    checks = ["--check", "batch_and_head_independence::test_gqa_equals_repeat_interleave"]  # runs first: quick
    checks += ["--check", "matches_oracle::test_gradients_match_oracle"]  # then a long one, interrupted
    args = ["verify", "reference", *checks, "--max-examples", "300", "--json", str(out), "--markdown", str(md)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "attncheck", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()  # stdout is a pipe: one line per finished property, as it goes
    assert first.startswith("reference\t"), first
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=300)
    lines = rest.decode().rstrip().splitlines()
    assert proc.returncode == 130, err.decode()
    assert any("PARTIAL" in line for line in lines), lines
    assert next(line for line in lines if line.startswith("attncheck: ")).endswith("exit status 130"), lines
    data = json.loads(out.read_text())
    assert data["partial"] is True and data["targets"][0]["properties"], data
    assert md.read_text().startswith("**attncheck: INTERRUPTED:")


def test_check_names_and_misspellings(tmp_path: Path, cli: Cli) -> None:
    """--check takes the property::check names --list-checks prints; a misspelt check or property gets a
    "did you mean"; a known-failures file that is not text and an output path that cannot be written are one-line
    usage errors naming the user's file, before any target is called."""
    listed = cli("verify", "--list-checks").stdout.splitlines()[0].split("  #")[0]
    assert "::" in listed
    ok = cli("verify", "reference", "--check", listed, "--max-examples", "1", "-q", "--json", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr
    [prop] = json.loads((tmp_path / "r").read_text())["targets"][0]["properties"]
    assert [f"{prop['name']}::{c['name']}" for c in prop["checks"]] == [listed]
    binary = tmp_path / "known.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    for args, message in (
        (("--check", listed.replace("_", "", 1)), "did you mean"),
        (("--property", "rows_sum_to_on"), "did you mean 'rows_sum_to_one'?"),
        (("--check", "matches_oracle::test_ones_in_ones_out"), "belongs to property 'rows_sum_to_one'"),
        (("--known-failures", str(binary)), f"known-failures file '{binary}' is not UTF-8 text"),
        (("--json", "/proc/r.json"), "--json /proc/r.json: cannot write into /proc"),
    ):
        result = cli("verify", f"{FIX}:raises", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def _workflow() -> dict[str, Any]:
    """The GitHub Actions workflow of docs/ci.md, parsed."""
    import yaml

    text = (ROOT / "docs" / "ci.md").read_text()
    return yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])


@pytest.mark.parametrize(("kernel", "status"), [("attention", 0), ("attention_bug_causal", 1)])
def test_the_ci_recipe_runs_as_printed(tmp_path: Path, kernel: str, status: int) -> None:
    """The workflow's shell steps, run as GitHub runs them (bash -e, a failed step skips the next unless
    ``if: always()``), on the fixture flash kernel with the declaration the workflow prints: the job's outcome is
    the verdict, the job summary holds the outcome line and the matrix, the artifact's folder holds the report."""
    from tests.fixtures.flash_kernels import DECLARATION

    job = _workflow()["jobs"]["attention"]
    assert job["env"]["DECLARE"] == DECLARATION  # the workflow's example declaration is the fixture kernel's
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTNCHECK_", "HYPOTHESIS_"))}
    env |= {**job["env"], "PYTHONPATH": str(ROOT), "CI": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")}
    env["KERNEL"] = f"tests.fixtures.flash_kernels:{kernel}"
    env["DECLARE"] += " --max-examples 3 --property matches_oracle --property no_future_leakage"  # cheap
    failed, ran = False, []
    for step in job["steps"]:
        if "run" not in step or (failed and step.get("if") != "always()"):
            continue
        if step["name"] == "Install":  # offline here: this checkout is on PYTHONPATH instead
            assert "pip install attncheck" in step["run"]
            continue
        command = ["bash", "-e", "-c", step["run"]]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode in (0, status), result.stdout[-2000:] + result.stderr[-2000:]
        ran.append((step["name"], result.returncode))
        failed = failed or result.returncode != 0
    assert ran == [("Verify", status), ("Job summary", 0)], ran
    summary = (tmp_path / "summary").read_text()
    assert summary.startswith(f"**attncheck: {'FAILED' if status else 'passed'}: ") and "| matches_oracle |" in summary
    [upload] = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "always()" and (tmp_path / upload["with"]["path"] / "index.html").is_file()
