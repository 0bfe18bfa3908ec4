"""The pytest plugin is a good citizen: inert in other projects, the same report serial or on pytest-xdist, and
one known-failures mechanism whose every printed form works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.fixtures.flash_kernels import DECLARATION

ROOT = Path(__file__).resolve().parents[1]

UNRELATED = """
import sys
from hypothesis import given, settings, strategies as st

calls = []

@given(st.integers())
def test_counts(x):
    calls.append(x)

def test_report():
    s = settings.default
    print("SETTINGS", s.max_examples, repr(s.database), s.derandomize, settings.get_current_profile_name())
    print("TORCH", "torch" in sys.modules, "ATTNCHECK", "attncheck._pytestplugin" in sys.modules)
    print("CALLS", len(calls))
"""


def run(args: list[str], cwd: Path, ci: bool, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTNCHECK_", "HYPOTHESIS_"))}
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(ROOT)  # tests.fixtures importable; the attncheck package as installed
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _lines(out: str, tag: str) -> str:
    return next(line[line.index(tag) :] for line in out.splitlines() if tag in line)


@pytest.mark.parametrize("ci", [False, True], ids=["local", "CI=true"])
def test_unrelated_hypothesis_project_keeps_its_settings(tmp_path: Path, ci: bool) -> None:
    """With attncheck installed, another project's Hypothesis tests run exactly as without it."""
    (tmp_path / "test_unrelated.py").write_text(UNRELATED)
    pytest_args = ["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_unrelated.py"]
    with_plugin = run(pytest_args, tmp_path, ci)
    without = run([*pytest_args, "-p", "no:attncheck"], tmp_path, ci)
    assert with_plugin.returncode == 0 and without.returncode == 0, with_plugin.stdout + with_plugin.stderr
    assert _lines(with_plugin.stdout, "SETTINGS") == _lines(without.stdout, "SETTINGS")
    assert _lines(with_plugin.stdout, "CALLS") == _lines(without.stdout, "CALLS") == "CALLS 100"
    # the plugin was loaded (so the comparison means something) and imported no torch
    assert _lines(with_plugin.stdout, "TORCH") == "TORCH False ATTNCHECK True", with_plugin.stdout
    settings_line = _lines(with_plugin.stdout, "SETTINGS")
    assert settings_line.startswith("SETTINGS 100 ") and "attncheck" not in settings_line  # not one of ours
    help_text = run(["-m", "pytest", "--help"], tmp_path, ci).stdout
    assert "--attncheck-target" in help_text and "--attncheck-dtype" in help_text


def _verdicts(path: Path) -> dict[str, dict[str, str]]:
    data = json.loads(path.read_text())
    return {t["name"]: {p["name"]: p["status"] for p in t["properties"]} for t in data["targets"]}


def test_xdist_gives_the_serial_verdicts(tmp_path: Path, cli: Cli) -> None:
    """`attncheck verify --jobs 2` and `pytest -n 2` report what a serial run does (derandomized ci profile)."""
    common = ["--max-examples", "4", "--property", "mask_semantics", "--property", "no_future_leakage"]
    serial = cli("verify", *common, "-q", "--json", str(tmp_path / "serial.json"))  # in process
    jobs = run(
        ["-m", "attncheck", "verify", *common, "-q", "-j", "2", "--json", str(tmp_path / "jobs.json")], ROOT, True
    )
    plugin_args = ["--attncheck-max-examples", "4", "--attncheck-property", "mask_semantics"]
    plugin_args += ["--attncheck-property", "no_future_leakage", "--attncheck-json", str(tmp_path / "xdist.json")]
    xdist = run(
        ["-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider", "--pyargs", "attncheck.properties", *plugin_args],
        tmp_path,
        True,
    )
    assert serial.returncode == jobs.returncode == xdist.returncode == 0, (serial.stderr, jobs.stderr, xdist.stdout)
    expected = _verdicts(tmp_path / "serial.json")
    assert set(expected) == {"reference", "torch-sdpa"} and all(expected.values())
    assert _verdicts(tmp_path / "jobs.json") == expected
    assert _verdicts(tmp_path / "xdist.json") == expected
    checks = {
        t["name"]: [c["name"] for p in t["properties"] for c in p["checks"]]
        for t in json.loads((tmp_path / "xdist.json").read_text())["targets"]
    }
    serial_checks = {
        t["name"]: [c["name"] for p in t["properties"] for c in p["checks"]]
        for t in json.loads((tmp_path / "serial.json").read_text())["targets"]
    }
    assert checks == serial_checks


SDPA = "tests.fixtures.cli_targets:claims_masked_values_ignored"  # declares what it does not do
CHECK = "test_masked_keys_nonfinite_irrelevant"
KNOWN_ARGS = ("verify", SDPA, "--check", CHECK, "--max-examples", "5", "-q")


@pytest.mark.parametrize(
    "entry",
    [CHECK, f"mask_semantics::{CHECK}", f"{SDPA}::{CHECK}", f"{SDPA}::mask_semantics::{CHECK}"],
    ids=["check", "property::check", "target::check", "target::property::check"],
)
def test_every_printed_form_of_a_known_failure_works(tmp_path: Path, entry: str, cli: Cli) -> None:
    known = tmp_path / "known.txt"
    known.write_text(f"{entry}  # 0 * NaN in P V\n")
    result = cli(*KNOWN_ARGS, "--json", str(tmp_path / "r.json"), "--known-failures", str(known))
    assert result.returncode == 0, result.stdout + result.stderr
    row = json.loads((tmp_path / "r.json").read_text())["targets"][0]["properties"][0]
    assert row["status"] == "known-failure", row  # its only check is a known failure: not "skipped"
    printed = row["known_failures"][0]["check"]
    assert printed == f"{SDPA}::mask_semantics::{CHECK}" and printed in result.stdout  # the form the file accepts


def test_the_known_failure_is_real_without_its_entry(cli: Cli) -> None:
    """What the forms above accept fails the run without a known-failures file."""
    without = cli(*KNOWN_ARGS)
    assert without.returncode == 1 and "FAILED" in without.stdout, without.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("test_masked_keys_nonfinite_irelevant", "did you mean 'test_masked_keys_nonfinite_irrelevant'"),
        ("test_made_up_check", "unknown check 'test_made_up_check'"),
        (f"numerical_range::{CHECK}", "belongs to property 'mask_semantics'"),
    ],
)
def test_a_bad_known_failure_entry_is_a_usage_error(tmp_path: Path, line: str, message: str, cli: Cli) -> None:
    known = tmp_path / "known.txt"
    known.write_text(f"# accepted deviations\n{line}  # reason\n")
    result = cli("verify", "--known-failures", str(known))
    assert result.returncode == 2 and message in result.stderr and f"{known}:2" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_entry_that_matches_nothing_is_a_warning(tmp_path: Path, cli: Cli) -> None:
    known = tmp_path / "known.txt"
    known.write_text(f"no-such-target::{CHECK}  # stale\n")
    args = ["verify", "reference", "--check", CHECK, "--max-examples", "2", "-q"]
    result = cli(*args, "--known-failures", str(known), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert len(warnings) == 1 and "no-such-target" in warnings[0] and "matches no check" in result.stdout


FLASH = "tests.fixtures.flash_kernels"
PROPS = ("rows_sum_to_one", "no_future_leakage", "matches_oracle")
FLAGS = DECLARATION.split()
AGREE = [  # (targets of one run, its declaration flags): the correct kernel alone, then the broken ones together
    ([f"{FLASH}:attention"], FLAGS),
    ([f"{FLASH}:attention_{b}" for b in ("bug_causal", "bug_tail", "bug_rescale", "wrong_layout")], FLAGS),
    (["tests.variants:online_softmax"], []),
    ([f"tests.mutants:{m}" for m in ("no_scaling", "causal_shows_next_token", "softmax_wrong_axis")], []),
]


def _results(path: Path) -> dict[str, Any]:
    """Per target: its root causes (case, message) and every property's (status, message)."""
    data = json.loads(path.read_text())
    return {
        t["name"]: (
            [(c["case"], c["message"]) for c in t["root_causes"]],
            {p["name"]: (p["status"], p["message"]) for p in t["properties"]},
        )
        for t in data["targets"]
    }


@pytest.mark.parametrize(("targets", "flags"), AGREE, ids=["flash", "flash-bugs", "variant", "mutants"])
def test_cli_and_plugin_give_one_verdict(tmp_path: Path, targets: list[str], flags: list[str], cli: Cli) -> None:
    """The same targets and declaration through `attncheck verify` and through pytest with the plugin: the same
    exit status, the same root causes, every property's status and message the same, and no broken kernel green."""
    common = ["--profile", "ci", "--max-examples", "5", *(a for p in PROPS for a in ("--property", p)), *flags]
    via = cli("verify", *targets, *common, "-q", "--json", str(tmp_path / "cli.json"))  # in process: the CLI's door
    plugin_args = [f"--attncheck-{a.removeprefix('--')}" if a.startswith("--") else a for a in common]
    plugin_args += [a for t in targets for a in ("--attncheck-target", t)]
    (tmp_path / "test_own.py").write_text("def test_own():\n    assert True\n")
    plugin_args += ["--attncheck-json", str(tmp_path / "plugin.json")]
    pytest_args = ["-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_own.py"]
    pytest_args += ["--pyargs", "attncheck.properties"]
    pytest_run = run([*pytest_args, *plugin_args], tmp_path, True)
    broken = any("bug" in t or "mutants" in t or "wrong" in t for t in targets)
    assert via.returncode == pytest_run.returncode == int(broken), (via.stdout[-3000:], pytest_run.stdout[-3000:])
    via_cli, via_plugin = _results(tmp_path / "cli.json"), _results(tmp_path / "plugin.json")
    assert via_cli == via_plugin
    for name, (causes, props) in via_cli.items():
        red = causes or any(status in ("failed", "error", "blocked") for status, _ in props.values())
        assert bool(red) == broken, (name, causes, props)  # a broken kernel is never a green column
        for prop, (status, message) in props.items():  # a check a root cause removed is never skipped
            assert not (status == "skipped" and causes and "not applicable" not in message), (name, prop, message)
    assert "PASSED test_own.py::test_own" in pytest_run.stdout  # the user's own test ran, not deselected
    cli_last = via.stdout.rstrip().splitlines()[-2]  # the outcome line, then "report written to"
    assert cli_last.startswith(f"attncheck: {'FAILED' if broken else 'passed'}: ") and cli_last.endswith(
        f"exit status {int(broken)}"
    ), cli_last


def test_a_good_guest_in_the_users_session(tmp_path: Path) -> None:
    """--attncheck-property selects among attncheck's checks and keeps the user's own tests; --attncheck-target
    without attncheck's property tests collected is a one-line usage error; no .benchmarks folder is left behind."""
    (tmp_path / "test_own.py").write_text("def test_own():\n    assert True\n")
    base = ["-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_own.py", "--attncheck-target", "reference"]
    base += ["--attncheck-max-examples", "1"]
    selected = run(
        [*base, "--pyargs", "attncheck.properties", "--attncheck-property", "rows_sum_to_one"], tmp_path, True
    )
    assert selected.returncode == 0, selected.stdout[-3000:]
    assert "PASSED test_own.py::test_own" in selected.stdout
    ran = [line for line in selected.stdout.splitlines() if line.startswith("PASSED ")]
    assert len(ran) == 3 and all("test_own" in line or "rows_sum_to_one" in line for line in ran), ran
    alone = run(base, tmp_path, True)
    assert alone.returncode == 4, alone.stdout + alone.stderr  # pytest's usage-error status
    [line] = [line for line in (alone.stdout + alone.stderr).splitlines() if "attncheck" in line]
    assert "no attncheck property test collected" in line and "--pyargs attncheck.properties" in line
    assert not (tmp_path / ".benchmarks").exists()  # pytest-benchmark's empty storage folder, removed
