"""Verdicts that hold when a reviewer reads the target's code: one root cause once, precision judged once, a
crash reported as an error, conventions observed rather than failed (docs/design.md, "Verdicts")."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from attncheck.properties.catalog import PROPERTIES
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]
FIX = "tests.fixtures.cli_targets"


def verify(cli: Cli, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], float]:
    """`attncheck verify ARGS -q --json` (in process, CI=true: tests/conftest.py), its report and its wall time."""
    out = tmp_path / "report.json"
    start = time.perf_counter()
    result = cli("verify", *args, "-q", "--json", str(out))
    elapsed = time.perf_counter() - start
    data = json.loads(out.read_text()) if out.exists() else {}
    return result, data, elapsed


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["status"] for p in data["targets"][0]["properties"]}


def test_torch_sdpa_passes_with_no_declaration(tmp_path: Path, cli: Cli) -> None:
    """NaN in masked-out values reaching the output (0 x NaN in P V) is observed, not failed."""
    result, data, _ = verify(
        cli,
        tmp_path,
        "torch.nn.functional:scaled_dot_product_attention",
        "--property",
        "mask_semantics",
        "--max-examples",
        "10",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    target = data["targets"][0]
    assert statuses(data) == {"mask_semantics": "passed"}
    assert target["observations"]["masked values"] == ["NaN/inf reaches the output"]


def test_a_target_that_cannot_be_called_is_blocked_in_seconds(tmp_path: Path, cli: Cli) -> None:
    """One root cause, reported once: every property blocked by the first probe's plain call, nothing else run."""
    result, data, elapsed = verify(cli, tmp_path, f"{FIX}:raises")
    assert result.returncode == 1
    assert set(statuses(data).values()) == {"blocked"} and len(statuses(data)) == len(PROPERTIES)
    causes = data["targets"][0]["root_causes"]
    assert len(causes) == 1 and causes[0]["case"] == "plain call" and "kernel exploded" in causes[0]["message"]
    assert result.stdout.count("kernel exploded") == 1  # said once, not once per property
    assert elapsed < 60, f"diagnosis took {elapsed:.0f} s"


def test_numpy_output_names_the_fix(tmp_path: Path, cli: Cli) -> None:
    result, data, _ = verify(cli, tmp_path, f"{FIX}:returns_numpy")
    assert result.returncode == 1
    cause = data["targets"][0]["root_causes"][0]
    assert "returned ndarray" in cause["message"] and "torch.Tensor" in cause["fix"]


def test_one_missing_keyword_is_one_root_cause_with_its_declaration(tmp_path: Path, cli: Cli) -> None:
    """A (q, k, v, mask) kernel: the attn_mask keyword it names ``mask`` (read from its signature) is one finding
    naming --arg-name attn_mask=mask, and the run goes on with it; is_causal and scale, which it does not take,
    each name their own declaration."""
    result, data, _ = verify(
        cli, tmp_path, f"{FIX}:positional_mask", "--max-examples", "5", "--property", "matches_oracle"
    )
    assert result.returncode == 1
    causes = {c["case"]: c for c in data["targets"][0]["root_causes"]}
    assert causes["argument names"]["fix"] == "--arg-name attn_mask=mask"
    assert "bool masks, float masks" not in causes
    assert "--causal none" in causes["is_causal"]["fix"] and "--no-scale" in causes["scale="]["fix"]
    assert statuses(data) == {"matches_oracle": "passed"}  # the rest is judged, and is correct
    declared, _, _ = verify(
        cli,
        tmp_path,
        f"{FIX}:positional_mask",
        "--max-examples",
        "5",
        "--property",
        "matches_oracle",
        "--arg-name",
        "attn_mask=mask",
        "--causal",
        "none",
        "--no-scale",
        "--no-gqa",
    )
    assert declared.returncode == 0, declared.stdout


def test_a_refused_dtype_is_one_root_cause_and_the_rest_is_judged(tmp_path: Path, cli: Cli) -> None:
    result, data, _ = verify(
        cli,
        tmp_path,
        f"{FIX}:float64_refused",
        "--max-examples",
        "5",
        "--property",
        "matches_oracle",
        "--property",
        "permutation_equivariance",
    )
    assert result.returncode == 1
    causes = data["targets"][0]["root_causes"]
    assert [c["case"] for c in causes] == ["dtype float64"] and "--cap dtypes=" in causes[0]["fix"]
    assert set(statuses(data).values()) == {"passed"}


def test_float32_internal_precision_is_one_finding_not_structural(tmp_path: Path, cli: Cli) -> None:
    """softmax(x.float()) called in float64: structural properties pass at its observed precision; matches_oracle
    alone says so, naming the declaration; declared, everything passes."""
    structural = ["permutation_equivariance", "shift_and_linearity", "batch_and_head_independence", "model"]
    props = [arg for name in ["matches_oracle", *structural] for arg in ("--property", name)]
    result, data, _ = verify(cli, tmp_path, f"{FIX}:float32_softmax", "--max-examples", "8", *props)
    assert result.returncode == 1
    got = statuses(data)
    assert got["matches_oracle"] == "failed" and {got[name] for name in structural} == {"passed"}, got
    message = next(row["message"] for row in data["targets"][0]["properties"] if row["name"] == "matches_oracle")
    assert "float64 inputs computed at about float32 precision" in message and "compute_dtype=float32" in message
    declared, data, _ = verify(
        cli, tmp_path, f"{FIX}:float32_softmax", "--max-examples", "8", *props, "--cap", "compute_dtype=float32"
    )
    assert declared.returncode == 0, declared.stdout


def test_a_check_that_never_called_the_target_does_not_pass_a_property(tmp_path: Path, cli: Cli) -> None:
    """model with no boolean masks: only the PE and LayerNorm checks run, and they never call the target."""
    result, data, _ = verify(cli, tmp_path, f"{FIX}:good", "--property", "model", "--no-mask", "--max-examples", "3")
    assert result.returncode == 0
    row = data["targets"][0]["properties"][0]
    assert row["status"] == "skipped" and "no check called the target" in row["message"], row


def test_rows_emptied_by_the_causal_alignment_follow_the_masked_rows_convention(tmp_path: Path, cli: Cli) -> None:
    """Bottom-right causal with L > S: the first L - S queries see no key; returning the mean of V there is a
    convention (observed), not a wrong answer. The strategies draw such rows only into fully_masked_rows (issue
    19: no check that promises keys meets a row without one); the others pass on the rows they do draw."""
    props = ["fully_masked_rows", "matches_oracle", "no_future_leakage", "numerical_range"]
    args = [arg for name in props for arg in ("--property", name)]
    result, data, _ = verify(cli, tmp_path, f"{FIX}:bottom_right_uniform", "--max-examples", "15", *args)
    assert result.returncode == 0, result.stdout
    assert set(statuses(data).values()) == {"passed"}
    assert "uniform" in data["targets"][0]["observations"]["fully masked rows"]
    declared, data, _ = verify(
        cli, tmp_path, f"{FIX}:bottom_right_uniform", "--max-examples", "15", *args, "--masked-rows", "zeros"
    )
    assert declared.returncode == 1  # a declared convention that is not kept is a failure
    assert "return uniform, but the target declares zeros" in declared.stdout


def probe(cli: Cli, target: str) -> subprocess.CompletedProcess[str]:
    return cli("probe", target)


@pytest.mark.parametrize(
    ("name", "observed", "declared"),
    [
        ("float32_softmax", "float64 inputs computed at about float32 precision", "--cap compute_dtype=float32"),
        (
            "bottom_right_uniform",
            "causal alignment: L=2, S=5: bottom-right; L=5, S=2: bottom-right; L=1, S=3: bottom-right",
            "--cap causal=bottom-right",
        ),
        ("blhd", "causal alignment: L=2, S=5: top-left", "--cap layout=BLHD"),
        ("causal_built_in", "without is_causal: causal anyway", "--cap causal=always"),
        (
            "positional_mask",
            "found: argument names",
            "--cap causal=none --cap gqa=no --cap scale=no --cap arg_names=attn_mask:mask",
        ),
        ("unscaled", "default scale: none: q . k unscaled", "--cap unscaled=yes"),
    ],
)
def test_probe_observes_conventions_and_prints_the_declaration(
    name: str, observed: str, declared: str, cli: Cli
) -> None:
    result = probe(cli, f"{FIX}:{name}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert observed in result.stdout and declared in result.stdout, result.stdout


def test_the_probed_declaration_verifies(tmp_path: Path, cli: Cli) -> None:
    """What `attncheck probe` prints for a (q, k, v, mask) kernel is a declaration under which it passes."""
    line = probe(cli, f"{FIX}:positional_mask").stdout.strip().splitlines()[-1].split()
    assert line[:3] == ["attncheck", "verify", f"{FIX}:positional_mask"]
    flags = [*line[3:], "--arg-name", "attn_mask=mask", "--cap", "masks=bool,float"]  # the mask is positional
    result, data, _ = verify(
        cli,
        tmp_path,
        f"{FIX}:positional_mask",
        *flags,
        "--max-examples",
        "5",
        "--property",
        "matches_oracle",
        "--property",
        "mask_semantics",
    )
    assert result.returncode == 0, result.stdout
    assert set(statuses(data).values()) == {"passed"}


def test_dtypes_returned_as_float32_are_one_root_cause_with_one_declaration() -> None:
    """The probe names the dtype that comes back for each input dtype, in one finding whose declaration keeps
    every dtype that works (not one fix per dtype, each leaving the others to fail), and the run goes on."""
    from attncheck.probe import probe as first_probe
    from tests.mutants import MUTANTS

    target = MUTANTS["float64_returns_float32"].target()
    findings = first_probe(target)
    assert [f.case for f in findings] == ["dtypes float64, bfloat16, float16"]
    assert findings[0].fix == "--cap dtypes=float32"
    assert "returned dtype torch.float32, expected torch.float64" in findings[0].message
    assert target.caps.dtypes == ("float32",) and target.declared is not None
    assert target.declared.dtypes == ("float64", "float32", "bfloat16", "float16")


def test_a_key_padding_only_kernel_is_one_shape_finding_and_passes_once_declared(tmp_path: Path, cli: Cli) -> None:
    """A kernel that takes (B, 1, 1, S) masks only: one root cause naming --cap mask_shapes=key_padding (not
    'masks do not work'); declared so, every property passes or is not applicable."""
    result = probe(cli, f"{FIX}:key_padding_only")
    assert "does not work: mask shapes full, LS" in result.stdout and "--cap mask_shapes=key_padding" in result.stdout
    assert "bool masks" not in result.stdout
    flags = ["--cap", "mask_shapes=key_padding", "--causal", "none", "--no-gqa", "--no-scale"]
    declared, data, _ = verify(cli, tmp_path, f"{FIX}:key_padding_only", *flags, "--max-examples", "8")
    assert declared.returncode == 0, declared.stdout
    assert set(statuses(data).values()) <= {"passed", "skipped"}
    assert statuses(data)["mask_semantics"] == "passed" and statuses(data)["model"] == "passed"


def test_an_interleaved_gqa_mapping_is_one_root_cause_and_declarable(tmp_path: Path, cli: Cli) -> None:
    """GQA that tiles the kv heads (h % Hkv) is named once by the probe, not as failures of every property that
    happens to draw GQA; the run goes on under the observed mapping, and declared, it passes."""
    result = probe(cli, "tests.mutants:gqa_tiling")
    assert "does not work: GQA head mapping: query head h reads kv head h % Hkv" in result.stdout, result.stdout
    assert "--cap gqa_mapping=interleaved" in result.stdout.splitlines()[-1]
    props = ["--property", "batch_and_head_independence", "--property", "matches_oracle", "--max-examples", "10"]
    undeclared, data, _ = verify(cli, tmp_path, "tests.mutants:gqa_tiling", *props)
    assert undeclared.returncode == 1 and [c["case"] for c in data["targets"][0]["root_causes"]] == ["GQA head mapping"]
    assert set(statuses(data).values()) == {"passed"}, statuses(data)
    declared, data, _ = verify(cli, tmp_path, "tests.mutants:gqa_tiling", "--cap", "gqa_mapping=interleaved", *props)
    assert declared.returncode == 0, declared.stdout
    assert set(statuses(data).values()) == {"passed"}


def test_is_causal_dropped_for_a_single_query_is_a_correctness_finding_that_stays_red(tmp_path: Path, cli: Cli) -> None:
    """Hugging Face's sdpa convention (no causal mask when L = 1, top-left otherwise): no alignment explains every
    shape, so it is one correctness finding naming the shapes, with its counterexample; no declaration switches
    causal testing off, and no_future_leakage stays red (docs/design.md, "One verdict on every path")."""
    props = ["no_future_leakage", "matches_oracle", "rows_sum_to_one"]
    args = [arg for name in props for arg in ("--property", name)]
    result, data, _ = verify(cli, tmp_path, f"{FIX}:causal_dropped_for_one_query", "--max-examples", "10", *args)
    assert result.returncode == 1
    (cause,) = data["targets"][0]["root_causes"]
    assert cause["case"] == "causal alignment" and cause["kind"] == "wrong"
    assert "wrong under every alignment tried (top-left, bottom-right) on L=1, S=3" in cause["message"]
    assert "--causal" not in cause["fix"] and cause["assertion"] in cause["message"]
    assert statuses(data)["no_future_leakage"] == "failed", statuses(data)


def test_an_always_causal_target_is_one_root_cause_and_passes_once_declared(tmp_path: Path, cli: Cli) -> None:
    """A target with the causal mask built in and no flag: undeclared, one root cause naming --causal always (not
    a dozen red properties); declared, it passes what applies and the non-causal checks are skipped."""
    flags = ["--no-gqa", "--no-scale", "--max-examples", "8"]
    undeclared, data, _ = verify(cli, tmp_path, f"{FIX}:causal_built_in", *flags)
    assert undeclared.returncode == 1
    assert [(c["case"], c["fix"]) for c in data["targets"][0]["root_causes"]] == [
        ("without is_causal", "--causal always")
    ]
    assert "failed" not in statuses(data).values(), statuses(data)
    declared, data, _ = verify(cli, tmp_path, f"{FIX}:causal_built_in", "--cap", "causal=always", *flags)
    assert declared.returncode == 0, declared.stdout
    assert statuses(data)["no_future_leakage"] == "passed" and statuses(data)["matches_oracle"] == "passed"
    skipped = {c["message"] for p in data["targets"][0]["properties"] for c in p["checks"] if c["status"] == "skipped"}
    assert any("always causal" in m for m in skipped), skipped


def test_distinct_bugs_of_one_check_are_each_reported(tmp_path: Path, cli: Cli) -> None:
    """Hypothesis finds two distinct bugs in one check (a crash on some inputs, a wrong answer on others): both
    are reported, each with its own minimal counterexample and repro."""
    result, data, _ = verify(
        cli, tmp_path, f"{FIX}:two_bugs", "--check", "test_forward_matches_oracle", "--max-examples", "60"
    )
    assert result.returncode == 1
    (row,) = [p for p in data["targets"][0]["properties"] if p["name"] == "matches_oracle"]
    (check,) = row["checks"]
    found = [check, *check["more_failures"]]
    messages = " | ".join(f["message"] for f in found)
    assert len(found) == 2, messages
    assert "no float16 kernel for more than 4 keys" in messages and "exceeds the budget" in messages
    assert all(f["counterexample"] and f["repro"] for f in found)
    assert check["status"] == "failed"  # the wrong answer leads; the crash is the second report
    assert "(distinct failure 2 of 2)" in result.stdout


def test_a_crash_met_in_many_checks_is_one_root_cause(tmp_path: Path, cli: Cli) -> None:
    """The same exception (up to its numbers) raised in several checks during the run is printed once, as a root
    cause listing the checks it explains; each of those checks is an error that points at it."""
    args = ("--property", "permutation_equivariance", "--property", "shift_and_linearity", "--max-examples", "30")
    result, data, _ = verify(cli, tmp_path, f"{FIX}:raises_on_many_keys", *args)
    assert result.returncode == 1
    target = data["targets"][0]
    causes = [c for c in target["root_causes"] if "checks" in c]
    assert len(causes) == 1, target["root_causes"]
    cause = causes[0]
    assert "no tile schedule for" in cause["message"] and len(cause["checks"]) >= 2
    errors = [f"{p['name']}::{c['name']}" for p in target["properties"] for c in p["checks"] if c["status"] == "error"]
    assert sorted(errors) == sorted(cause["checks"])
    assert all(c["root_cause"] == 1 for p in target["properties"] for c in p["checks"] if c["status"] == "error")
    # a property whose only red checks are that crash is blocked by it, not one more red row
    assert set(statuses(data).values()) <= {"blocked", "passed"} and "blocked" in statuses(data).values()
    assert "BLOCKED (root cause 1)" in result.stdout
    assert result.stdout.count("no tile schedule for") == 1  # once, not once per check
    assert "root cause 1 of the run" in result.stdout


def test_an_unscaled_target_is_declared_not_failed(tmp_path: Path, cli: Cli) -> None:
    """T5 computes q . k unscaled by design: undeclared, the effective scale is a true finding; declared
    (unscaled=yes), attncheck scales the query (scale= or 1/sqrt(E)) and the target passes."""
    args = ("--property", "scaling_variance", "--property", "matches_oracle", "--max-examples", "10")
    result, data, _ = verify(cli, tmp_path, f"{FIX}:unscaled", *args)
    assert result.returncode == 1 and statuses(data)["scaling_variance"] == "failed"
    result, data, _ = verify(cli, tmp_path, f"{FIX}:unscaled", *args, "--cap", "unscaled=yes")
    assert result.returncode == 0, result.stdout
    assert statuses(data) == {"scaling_variance": "passed", "matches_oracle": "passed"}


def test_crashes_are_one_cause_up_to_their_numbers_only() -> None:
    """Two checks meet one crash when the exception's line differs in its numbers alone (sizes, shapes)."""
    from attncheck.report import crash_key

    first = "TargetError: target 'k' raised RuntimeError: no kernel for (1, 2, 16, 8)"
    assert crash_key(first) == crash_key("TargetError: target 'k' raised RuntimeError: no kernel for (1, 2, 33, 4)")
    assert crash_key(first) != crash_key("TargetError: target 'k' raised RuntimeError: out of memory for (1, 2)")


def test_a_backward_that_raises_or_is_missing_is_named_once_and_blocks_only_gradients(tmp_path: Path, cli: Cli) -> None:
    """A backward that raises and an output detached from its inputs: each one root cause of the first probe, named
    for what it is (the target raising; no autograd graph, not "element 0 of tensors does not require grad"), the
    gradient checks BLOCKED by it in every property that takes gradients, and the forward checks judged."""
    props = ["--property", "matches_oracle", "--property", "purity_and_determinism", "--max-examples", "3"]
    result, data, _ = verify(cli, tmp_path, f"{FIX}:backward_raises", f"{FIX}:detached", *props)
    assert result.returncode == 1, result.stdout
    raising, detached = data["targets"]
    for target, words in ((raising, "backward raised RuntimeError: backward kernel"), (detached, "detached from")):
        [cause] = target["root_causes"]
        assert cause["case"] == "backward" and words in cause["message"], cause
        assert "does not require grad" not in cause["message"]
        checks = {c["name"]: c for p in target["properties"] for c in p["checks"]}
        assert checks["test_gradients_match_oracle"]["status"] == "blocked", checks["test_gradients_match_oracle"]
        assert checks["test_gradients_match_oracle"]["root_cause"] == cause["number"] == 1
        assert checks["test_forward_matches_oracle"]["status"] == "passed"
        assert {p["name"]: p["status"] for p in target["properties"]}["matches_oracle"] == "blocked"
    assert "BLOCKED (root cause 1)" in result.stdout
