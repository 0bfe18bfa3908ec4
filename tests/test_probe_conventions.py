"""The first probe finds conventions, judges at the precision of each call, and suggests only valid declarations.

On kernels written in other projects' conventions (tests/fixtures/conventions.py) the probe reads argument names
from the signature (a misspelt ``casual`` included), tells BLHD from BHLD, declares native GQA, and the declaration
it prints, applied as printed, turns the correct kernel green. A convention is attributed only when it makes the
target agree with the oracle: the rescale bug and a forgotten scale are not causal root causes, and a causal
triangle that no alignment explains is a correctness finding whose checks stay on. Every probe case is judged
at the precision of the dtype it calls with: torch SDPA in every dtype, and a kernel that computes in bfloat16,
get no finding.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from attncheck.errors import TargetSpecError
from attncheck.options import VerifySettings, add_verify_options
from attncheck.probe import Finding, causal_alignments, observe_conventions, probe
from attncheck.properties.contract import ALL_DTYPES, Capabilities, Target
from attncheck.properties.problems import Problem
from attncheck.targets import resolve, resolve_targets
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]
CONV = "tests.fixtures.conventions"
SDPA = "torch.nn.functional:scaled_dot_product_attention"
FLASH = Capabilities(
    masks=frozenset(),
    causal="bottom-right",
    gqa="native",
    layout="BLHD",
    arg_names={"is_causal": "causal", "scale": "softmax_scale"},
)


def _probed(spec: str, caps: Capabilities | None = None) -> tuple[Target, list[Finding]]:
    target = resolve(spec)
    if caps is not None:
        target.caps = caps
    return target, probe(target)


def _applies(spec: str, fix: str) -> None:
    """A fix made of flags parses as verify flags and resolves into a declaration (valid as printed)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_verify_options(parser.add_argument)
    args = parser.parse_args(shlex.split(fix))
    resolve_targets(VerifySettings.from_options(lambda dest: getattr(args, dest, None), [spec]))


@pytest.mark.parametrize("dtypes", [(d,) for d in ALL_DTYPES] + [("float16", "bfloat16")])
def test_every_probe_case_in_every_dtype_is_judged_at_its_precision(dtypes: tuple[str, ...]) -> None:
    """torch SDPA restricted to each dtype: no finding (a float16 call is judged at float16 precision)."""
    target, findings = _probed(SDPA, Capabilities(dtypes=dtypes))
    assert findings == [], [f.message for f in findings]
    assert target.caps == Capabilities(dtypes=dtypes)
    seen = observe_conventions(target)  # `attncheck probe`: the same judgement at the same precision
    assert seen["scale="] == "honoured" and seen["GQA head mapping"].endswith("(grouped, as SDPA)")
    assert {name for _, name in causal_alignments(target)} == {"top-left"}


def test_a_kernel_computing_in_bfloat16_gets_no_convention_root_cause() -> None:
    _, findings = _probed(f"{CONV}:bf16_compute", Capabilities(compute_dtype="bfloat16"))
    assert findings == [], [f.message for f in findings]
    undeclared, findings = _probed(f"{CONV}:bf16_compute")
    assert findings == [], [f.message for f in findings]  # its precision is measured first, then relied on
    assert set(undeclared.observed_precision.values()) == {"bfloat16"}, undeclared.observed_precision
    assert undeclared.caps.causal == "top-left"


def test_flash_style_kernel_conventions_are_found() -> None:
    target, findings = _probed(f"{CONV}:flash")
    fixes = {f.case: f.fix for f in findings}
    assert fixes["argument names"] == "--arg-name is_causal=causal --arg-name scale=softmax_scale"
    assert fixes["layout"] == "--layout BLHD" and fixes["GQA"] == "--cap gqa=native"
    assert fixes["causal alignment"] == "--causal bottom-right"
    assert all(f.kind in ("convention", "unsupported") for f in findings)
    assert target.caps.replace(masks=frozenset()) == FLASH


def test_a_misspelt_keyword_gets_the_rename() -> None:
    _, findings = _probed(f"{CONV}:typo")
    assert [(f.case, f.fix) for f in findings] == [("argument names", "--arg-name is_causal=casual")]


def test_a_function_taking_cache_seqlens_is_offered_the_decode_entry() -> None:
    _, findings = _probed(f"{CONV}:decode_kernel")
    (finding,) = findings
    assert finding.blocks_all and finding.fix == "--cap entry=decode"


@pytest.mark.parametrize("bug", ["flash_no_rescale", "flash_no_scale", "flash_dv_halved"])
def test_bugs_outside_the_triangle_are_not_causal_root_causes(bug: str) -> None:
    target, findings = _probed(f"{CONV}:{bug}", FLASH)
    assert findings == [], [f.message for f in findings]
    assert target.caps == FLASH  # nothing narrowed: every check stays on
    observe_conventions(target)  # `attncheck probe`: a scale= that is ignored is not declared unscaled=yes
    assert target.caps.replace(dropout=False) == FLASH


def test_a_triangle_no_alignment_explains_is_a_correctness_finding_that_keeps_testing() -> None:
    target, findings = _probed(f"{CONV}:flash_causal_sign", FLASH)
    (finding,) = findings
    assert finding.kind == "wrong" and "wrong under every alignment tried" in finding.message
    assert "--causal" not in finding.fix and finding.assertion in finding.message
    assert target.caps == FLASH


def test_a_group_of_failures_with_one_cause_gets_one_declaration_covering_it() -> None:
    """Masks, is_causal, GQA and scale= all raise the same error: one finding whose fix declares them all away."""
    target, findings = _probed(f"{CONV}:thread_bound")
    (finding,) = findings
    assert finding.case == "bool masks, float masks, is_causal, GQA, scale="
    assert finding.fix == "--cap masks=none --cap causal=none --cap gqa=no --cap scale=no"
    _applies(f"{CONV}:thread_bound", finding.fix)
    assert target.caps == Capabilities(masks=frozenset(), causal=None, gqa=False, scale=False)


SIZES = Capabilities(length_multiple=16, head_dim_multiple=8)


def test_declared_sizes_narrow_the_problems_drawn_and_the_probe() -> None:
    """A kernel's precondition (a multiple of a block, a head dimension multiple of 8) is declarable: the probe
    calls nothing it excludes, and every problem drawn satisfies it."""
    from hypothesis import given, settings

    from attncheck.properties.problems import problems

    _, findings = _probed(f"{CONV}:blocked", SIZES)
    assert findings == [], [f.message for f in findings]
    _, undeclared = _probed(f"{CONV}:blocked")
    assert undeclared[0].blocks_all and "multiple of block_k" in undeclared[0].message

    @settings(max_examples=60, database=None, deadline=None)
    @given(problems(SIZES.replace(max_length=32)))
    def drawn(p: Problem) -> None:
        assert p.L % 16 == 0 and p.S % 16 == 0 and 16 <= min(p.L, p.S) and max(p.L, p.S) <= 32
        assert p.E % 8 == 0 and p.Ev % 8 == 0

    drawn()
    for fix in ("--cap length_multiple=16 --cap head_dim_multiple=8", "--cap min_length=2 --cap max_length=none"):
        _applies(f"{CONV}:blocked", fix)
    with pytest.raises(TargetSpecError, match="positive integer"):
        _applies(f"{CONV}:blocked", "--cap length_multiple=0")


KERNELS = ("flash", "hf", "einops_style", "typo", "decode_kernel", "bf16_compute", "thread_bound", "blocked")


@pytest.mark.parametrize("spec", [SDPA, *(f"{CONV}:{k}" for k in KERNELS)])
def test_every_suggested_flag_is_valid_as_printed(spec: str) -> None:
    _, findings = _probed(spec)
    for finding in findings:  # a fix is flags, or advice that starts with none (a correctness finding's "none: ...")
        if finding.fix.startswith("--"):
            _applies(spec, finding.fix)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["flash", "hf", "einops_style", "typo"])
def test_the_printed_declaration_turns_the_correct_kernel_green(kernel: str, tmp_path: Path, cli: Cli) -> None:
    """The probe's last line, split as a shell splits it, run as it reads (in process: tests/conftest.py)."""
    printed = cli("probe", f"{CONV}:{kernel}").stdout.strip().splitlines()[-1]
    line = shlex.split(printed)
    assert line[:3] == ["attncheck", "verify", f"{CONV}:{kernel}"], printed
    props = ["matches_oracle", "no_future_leakage", "mask_semantics", "batch_and_head_independence"]
    chosen = [arg for name in props for arg in ("--property", name)]
    out = tmp_path / "r.json"
    done = cli(*line[1:], *chosen, "--max-examples", "8", "--json", str(out))
    assert done.returncode == 0, done.stdout
    statuses = {p["name"]: p["status"] for p in json.loads(out.read_text())["targets"][0]["properties"]}
    assert set(statuses.values()) <= {"passed", "skipped"} and "passed" in statuses.values(), statuses
