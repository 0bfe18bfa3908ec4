"""The Python API, ``attncheck.verify``: the CLI's verdicts in-process, isolation, budgets, the screen profile.

Every run here is restricted to one or two properties and a few examples: the checks themselves are tested by
the meta-tests; what is tested here is the door (the same engine, the same verdict) and what only the API does.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import attncheck
from attncheck.cli import main
from attncheck.errors import UsageError
from attncheck.properties.catalog import SCREEN_ORDER, check_catalog, checks
from tests.mutants import MUTANTS
from tests.variants import VARIANTS

FEW = {"profile": "ci", "max_examples": 5}  # derandomized: the API and the CLI draw the same examples


def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)


def _cli_statuses(spec: str, restriction: list[str], tmp_path: Path, examples: int = 5) -> tuple[int, dict[str, str]]:
    """The CLI's exit code and property statuses for ``spec`` under ``restriction`` (--property/--check NAME)."""
    out = tmp_path / "report.json"
    args = ["verify", spec, *restriction, "--max-examples", str(examples), "--profile", "ci", "--json", str(out), "-q"]
    code = main(args)
    [target] = json.loads(out.read_text())["targets"]
    return code, {p["name"]: p["status"] for p in target["properties"]}


@pytest.mark.parametrize(
    ("module", "name", "prop"),
    [
        ("tests.mutants", "no_scaling", "scaling_variance"),
        ("tests.mutants", "bool_mask_inverted", "mask_semantics"),
        ("tests.variants", "float64_inside", "scaling_variance"),
    ],
)
def test_verify_gives_the_cli_verdict(module: str, name: str, prop: str, tmp_path: Path) -> None:
    """The function object through attncheck.verify, its module:attr through the CLI: one verdict."""
    fn = (MUTANTS if module == "tests.mutants" else VARIANTS)[name].fn
    report = attncheck.verify(fn, properties=[prop], **FEW)
    code, statuses = _cli_statuses(f"{module}:{name}", ["--property", prop], tmp_path)
    assert report.passed == (code == 0)
    assert report.verdict == ("passed" if module == "tests.variants" else "failed")
    assert {p["name"]: p["status"] for p in report.target["properties"]} == statuses
    if not report.passed:
        first = report.failures[0]
        assert first.property == prop and first.message and first.repro
        assert report.to_json()["verdict"] == "failed"


def test_a_cheat_gets_the_cli_verdict(tmp_path: Path) -> None:
    """A cheating kernel (tests/cheats.py, the integrity property's meta-tests) on the check meant to catch it."""
    cheats = pytest.importorskip("tests.cheats")
    name, cheat = next(iter(cheats.CHEATS.items()))
    report = attncheck.verify(cheat.fn, checks=[cheat.check], profile="ci", max_examples=20)
    code, statuses = _cli_statuses(f"tests.cheats:{name}", ["--check", cheat.check], tmp_path, examples=20)
    assert report.verdict == "failed" and code == 1
    assert {p["name"]: p["status"] for p in report.target["properties"]} == statuses


def test_a_function_defined_here_is_verified_with_its_declarations() -> None:
    """No import path needed; keyword declarations are Capabilities fields (here: no masks at all)."""

    def local_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None) -> Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)

    report = attncheck.verify(local_attention, properties=["scaling_variance"], masks=(), gqa=False, **FEW)
    assert report.passed, str(report)
    assert report.target["name"].endswith("local_attention")
    assert report.target["capabilities"]["masks"] == []
    html = report._repr_html_()
    assert html.startswith("<iframe srcdoc=") and html.endswith("</iframe>")
    assert "passed" in repr(report)


def test_usage_errors_are_one_line() -> None:
    with pytest.raises(UsageError, match="unknown profile"):
        attncheck.verify(sdpa, profile="fast")
    with pytest.raises(UsageError, match="bad declaration"):
        attncheck.verify(sdpa, causal="sideways")
    with pytest.raises(UsageError, match="expected a callable"):
        attncheck.verify(42)
    with pytest.raises(UsageError, match="no such file"):
        attncheck.verify(sdpa, known_failures=["/nonexistent/known.txt"])
    with pytest.raises(UsageError, match="unknown property"):
        attncheck.verify(sdpa, properties=["rows_sum_to_two"])


def test_known_failures_as_a_mapping_are_xfail() -> None:
    mutant = MUTANTS["no_scaling"]
    accepted = {check.__name__: "accepted here" for check in checks()["scaling_variance"]}
    report = attncheck.verify(mutant.fn, properties=["scaling_variance"], known_failures=accepted, **FEW)
    [row] = report.target["properties"]
    assert row["status"] == "known-failure"
    assert not report.failures


def test_rerun_runs_the_failing_check_alone() -> None:
    report = attncheck.verify(MUTANTS["no_scaling"].fn, properties=["scaling_variance"], **FEW)
    again = report.rerun(max_examples=5)
    assert {r.check for r in again.engine.results} == {report.failures[0].check}
    assert again.verdict == "failed"


# -- the screen profile -------------------------------------------------------------------------------------------


def test_screen_order_names_checks_of_the_catalog() -> None:
    catalog = check_catalog()
    assert [name for name in SCREEN_ORDER if name not in catalog] == []
    assert len(set(SCREEN_ORDER)) == len(SCREEN_ORDER)


def test_screen_stops_at_the_first_red_check() -> None:
    """A mutant the first probe does not see: one red check, the last that ran; the note says why it stopped."""
    report = attncheck.verify(MUTANTS["nan_masked_rows"].fn, profile="screen")
    assert report.verdict == "failed"
    red = [r for r in report.engine.results if r.status in ("failed", "error")]
    assert len(red) == 1 and report.engine.results[-1] is red[0]
    assert len(report.engine.results) < len(check_catalog())
    assert "first red check" in report.note


def test_screen_stops_at_a_root_cause_of_the_first_probe() -> None:
    """The probe sees a causal triangle that no alignment explains (the next token shown): red before any check."""
    report = attncheck.verify(MUTANTS["causal_shows_next_token"].fn, profile="screen")
    assert report.verdict == "failed" and report.checks_run == 0 and report.root_causes
    assert "first probe's root cause" in report.note


# -- budgets and isolation ----------------------------------------------------------------------------------------


def slow_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
    time.sleep(0.05)
    return sdpa(q, k, v, attn_mask, **kwargs)


def test_a_run_cut_short_by_its_budget_is_inconclusive() -> None:
    report = attncheck.verify(slow_sdpa, properties=["mask_semantics", "matches_oracle"], budget_s=2, **FEW)
    assert report.verdict == "inconclusive" and not report.passed
    assert report.note.startswith(f"inconclusive after {len(report.engine.results)} checks: the budget of 2 s")


def aborts(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    os.abort()


def segfaults(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    if q.size(0) > 1:  # the first probe's calls (batch 1) survive; the first check with a batch does not
        ctypes.string_at(0)
    return sdpa(q, k, v, **kwargs)


@pytest.mark.parametrize(("fn", "signal_name"), [(aborts, "signal 6 (SIGABRT)"), (segfaults, "signal 11 (SIGSEGV)")])
def test_isolated_kernel_that_kills_its_process_is_a_root_cause(fn: Any, signal_name: str) -> None:
    started = time.monotonic()
    report = attncheck.verify(fn, isolate=True, budget_s=60, properties=["scaling_variance"], **FEW)
    assert time.monotonic() - started < 60
    assert report.verdict == "failed"
    [cause] = [c for c in report.root_causes if c["case"] == "process"]
    assert cause["message"].startswith(f"the kernel killed its process: {signal_name}")
    if fn is segfaults:  # killed inside a check: that check is an error, the root cause names it
        [failure] = report.failures
        assert failure.status == "error" and failure.check in cause["message"]
    else:  # killed in the first probe: nothing could be judged
        assert cause["blocks_all"] and all(p["status"] == "blocked" for p in report.target["properties"])


def hangs(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    time.sleep(3600)
    raise AssertionError("unreachable")


def test_isolated_kernel_that_hangs_fails_within_its_budget() -> None:
    started = time.monotonic()
    report = attncheck.verify(hangs, isolate=True, budget_s=6, properties=["scaling_variance"], **FEW)
    assert time.monotonic() - started < 6 + 10  # each call gets half the budget; the child is then killed
    assert report.verdict == "failed"
    assert "hung" in report.root_causes[0]["message"]


def very_slow_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
    time.sleep(1.0)  # under the per-call limit (half the budget), so only the budget stops it
    return sdpa(q, k, v, attn_mask, **kwargs)


def test_isolated_run_over_budget_is_killed_and_inconclusive() -> None:
    started = time.monotonic()
    report = attncheck.verify(very_slow_sdpa, isolate=True, budget_s=4, properties=["scaling_variance"], **FEW)
    assert time.monotonic() - started < 4 + 10
    assert report.verdict == "inconclusive"
    assert "the budget of 4 s ran out" in report.note


def test_isolated_verdict_equals_the_in_process_one() -> None:
    fn = MUTANTS["no_scaling"].fn
    inside = attncheck.verify(fn, properties=["scaling_variance"], **FEW)
    isolated = attncheck.verify(fn, properties=["scaling_variance"], isolate=True, **FEW)
    assert isolated.verdict == inside.verdict == "failed"
    assert [(f.check, f.message) for f in isolated.failures] == [(f.check, f.message) for f in inside.failures]
