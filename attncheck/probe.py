"""The first probe: a few basic calls before the catalog runs, so that one root cause is reported once.

A library that raises on float64, returns float32 for float16, refuses L != S or has no GQA would otherwise fail
ten properties with the same message (docs/design.md, "Verdicts"). The probe calls the target on the basic
cases its capabilities declare (the plain call, each dtype, L != S both ways, each mask kind, is_causal, GQA,
``scale=``, Ev != E, the backward pass). Each basic case that does not hold is a :class:`Finding`: reported
once, with the minimal call and the declaration that would describe the target, and the run goes on without
that case (the capability is narrowed), so the properties judge the rest. When the plain call itself does not
work, nothing else can be judged: every property is *blocked* by it, in seconds instead of minutes.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attncheck.errors import PropertyFailure, TargetError
from attncheck.properties.checks import row_convention, target_grads
from attncheck.properties.contract import CONTRACT_ARGS, Capabilities, Target
from attncheck.properties.oracle import expect, oracle, output_budget
from attncheck.properties.problems import Problem, fit_sizes
from attncheck.reference.attention import causal_mask


@dataclass(frozen=True)
class Finding:
    """A basic case that does not hold: what was called, what happened, and what would describe the target."""

    case: str  # e.g. "plain call", "dtype float64", "L != S", "bool masks"
    message: str  # what was observed, one line
    repro: str  # the minimal call
    fix: str  # a declaration (verify flag / @declare field) that would describe the target, or advice
    blocks_all: bool = False  # the plain call fails: no property can be judged
    narrowed: dict[str, Any] = field(default_factory=dict)  # Capabilities fields the run continues with
    # "unsupported": a basic case does not work (declare it away); "convention": an undeclared convention that makes
    # the target agree with the oracle (declare it); "wrong": no convention tried makes it agree, a correctness
    # finding whose checks stay on
    kind: str = "unsupported"
    assertion: str = ""  # the message the repro fails with, where the probe compared with the oracle

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "kind": self.kind,
            "message": self.message,
            "repro": self.repro,
            "fix": self.fix,
            "blocks_all": self.blocks_all,
            "assertion": self.assertion,
        }


# The names kernels give the contract's keywords (FlashAttention, Hugging Face, xformers, einops-style code).
ALIASES: dict[str, tuple[str, ...]] = {
    "is_causal": ("causal", "is_causal", "use_causal", "causal_mask"),
    "scale": ("softmax_scale", "sm_scale", "scale", "scaling", "softmax_scaling"),
    "attn_mask": ("attn_mask", "mask", "attention_mask", "attn_bias", "bias"),
    "dropout_p": ("dropout_p", "dropout", "p_dropout", "dropout_rate", "attention_dropout"),
    "window": ("window", "window_size", "sliding_window"),
    "softcap": ("softcap", "logit_softcapping", "soft_cap"),
    "sinks": ("sinks", "s_aux", "sink"),
    "return_lse": ("return_lse", "return_softmax_lse"),
    "enable_gqa": ("enable_gqa",),
}
# What an entry's own arguments in a dense target's signature say to declare.
ENTRY_ARGS = {"cache_seqlens": "--cap entry=decode", "cu_seqlens_q": "--cap entry=varlen"}


def parameters(fn: Any) -> list[str]:
    """The keyword names ``fn`` takes after query, key and value (empty where its signature cannot be read)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [p.name for p in named[3:]]


def rename(target: Target, arg: str) -> str | None:
    """The target's own name for the contract keyword ``arg``, read from its signature: a known alias, else a
    close spelling (``casual`` for is_causal); None where it takes none (or ``arg`` itself)."""
    params = [p for p in parameters(target.fn) if p not in CONTRACT_ARGS and p not in target.caps.arg_names.values()]
    if arg in parameters(target.fn):
        return None
    for alias in ALIASES.get(arg, ()):
        if alias in params:
            return alias
    for spelling in (arg, *ALIASES.get(arg, ())):
        close = difflib.get_close_matches(spelling, params, n=1, cutoff=0.8)
        if close:
            return close[0]
    return None


def _unexpected(error: TargetError) -> str | None:
    """The keyword a TypeError says the target does not take."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    return found.group(1) if found else None


def _hint(error: TargetError, target: Target) -> str:
    """The declaration that an undeclared convention would explain, read from the error and the target's
    signature (empty if none)."""
    text = str(error)
    entry = [flag for arg, flag in ENTRY_ARGS.items() if arg in parameters(target.fn)]
    if entry and target.caps.entry == "dense":
        return entry[0]
    arg = _unexpected(error)
    if arg:
        theirs = rename(target, arg)
        if theirs:
            return f"--arg-name {arg}={theirs}"
        return {
            "attn_mask": "--no-mask",
            "is_causal": "--causal none",
            "scale": "--no-scale",
            "enable_gqa": "--no-gqa",
            "dropout_p": "--cap dropout=no",
        }.get(arg, "")
    if "ndarray" in text or "numpy" in text:
        return "return a torch.Tensor (torch.from_numpy(...)) from the target"
    return ""


class _Prober:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.caps = target.caps

    def attempt(self, p: Problem, *, backward: bool = False) -> TargetError | None:
        """Call the target on ``p`` (and run its backward pass); the error, or None if it worked."""
        p = sized(self.target, p)
        q, k, v, mask = p.tensors(self.target.device)
        try:
            if backward:
                q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
            out = self.target(q, k, v, **p.call_kwargs(mask))
            if backward:  # as the properties take gradients: .backward() where torch.autograd.grad raises
                target_grads(self.target, out, (q, k, v), torch.ones_like(out))
        except TargetError as exc:
            return exc
        return None

    def expected_shape_hint(self, error: TargetError, p: Problem) -> str:
        """A wrong shape that is the expected one in the other layout says which layout to declare."""
        found = re.search(r"returned shape \(([\d, ]+)\)", str(error))
        if not found:
            return ""
        shape = tuple(int(x) for x in found.group(1).split(","))
        blhd = (p.B, p.L, p.Hq, p.Ev)
        if self.caps.layout == "BHLD" and shape == blhd:
            return "--layout BLHD"
        return ""


def probe(target: Target) -> list[Finding]:
    """Run the basic cases; narrow ``target.caps`` by every case that does not hold; return the findings."""
    if target.declared is None:
        target.declared = target.caps
    target.caps = target.declared  # probing again (a second run in one process) starts from the declaration
    target.observed_precision.clear()
    if target.caps.entry != "dense":
        return _probe_entry(target)
    prober = _Prober(target)
    caps = target.caps
    order = [d for d in ("float32", "float64", "bfloat16", "float16") if d in caps.dtypes]
    always = caps.causal == "always"  # an always-causal target is called with is_causal (it has no flag)
    findings: list[Finding] = _layout_finding(target, order, always)
    caps = target.caps
    base, first_error = None, None
    for dtype in order:  # the plain call, in the first declared dtype that works
        candidate = sized(target, Problem(B=1, Hq=2, Hkv=2, L=3, S=3, E=4, Ev=4, dtype=dtype, is_causal=always, seed=1))
        error = prober.attempt(candidate)
        if error is None:
            base = candidate
            break
        first_error = first_error or (candidate, error)
        if error.kind == "hung":
            break
    if base is None:
        assert first_error is not None
        problem, error = first_error
        hint = _hint(error, target) or prober.expected_shape_hint(error, problem)
        fix = hint or "check that the target follows the SDPA convention (see `attncheck verify --help`)"
        return [Finding("plain call", str(error), problem.repro(target), fix, blocks_all=True)]

    if not always:  # before the is_causal case: a target without the flag may have the triangle built in
        findings += _always_causal_finding(target, base)
        caps = target.caps
        base = base.replace(is_causal=caps.causal == "always")
    observe_precision(target)  # before any case is judged against the oracle
    # (case, the call, the declaration that would describe a failure, the capabilities the run goes on with)
    cases: list[tuple[str, Problem | list[Problem], str, dict[str, Any]]] = []
    for other in caps.dtypes:
        if other != base.dtype:  # those tried before the base (they failed) are tried again: one finding each
            rest = tuple(d for d in caps.dtypes if d != other)
            cases.append(
                (f"dtype {other}", base.replace(dtype=other), f"--cap dtypes={','.join(rest)}", {"dtypes": rest})
            )
    if caps.lengths != "equal":
        cases.append(("L < S", base.replace(L=2, S=5), "--cap lengths=equal", {"lengths": "equal"}))
    if caps.lengths == "any":
        cases.append(("L > S", base.replace(L=5, S=2), "--cap lengths=q<=k", {"lengths": "q<=k"}))
    # A mask kind works if it works in some declared shape; a shape works if it works with some kind: a kernel
    # that takes (B, 1, 1, S) key padding only is one finding about full masks, not one about masks.
    shape_of = {"full": "BHLS", "key_padding": "B11S", "LS": "LS"}
    for kind in sorted(caps.masks):
        tries = [base.replace(mask=kind, mask_shape=shape_of[shape]) for shape in caps.mask_shapes]
        others = caps.masks - {kind}
        cases.append((f"{kind} masks", tries, f"--masks {','.join(sorted(others)) or 'none'}", {"masks": others}))
    for shape in caps.mask_shapes if len(caps.mask_shapes) > 1 else ():
        tries = [base.replace(mask=kind, mask_shape=shape_of[shape]) for kind in sorted(caps.masks)]
        rest = tuple(x for x in caps.mask_shapes if x != shape)
        cases.append((f"{shape} mask shape", tries, f"--cap mask_shapes={','.join(rest)}", {"mask_shapes": rest}))
    if caps.causal is not None and caps.causal != "always":
        cases.append(("is_causal", base.replace(is_causal=True), "--causal none", {"causal": None}))
    if caps.gqa:
        cases.append(("GQA", base.replace(Hq=4, Hkv=2), "--no-gqa", {"gqa": False}))
    if caps.scale:
        cases.append(("scale=", base.replace(scale=0.5), "--no-scale", {"scale": False}))
    if caps.value_dim:
        cases.append(("Ev != E", base.replace(Ev=6), "--same-value-dim", {"value_dim": False}))
    if caps.grad:
        cases.append(("backward", base, "--no-grad", {"grad": False}))

    for case, calls, fix, narrowed in cases:
        if case == "L > S" and target.caps.lengths == "equal":
            continue  # L < S failed already: the run is self-attention only
        if case.endswith("mask shape") and not target.caps.masks:
            continue  # no mask kind works at all: that is the finding, not each shape
        alternatives = calls if isinstance(calls, list) else [calls]
        errors = [prober.attempt(p, backward=case == "backward") for p in alternatives]
        if alternatives and all(e is not None for e in errors):
            errors = _found_convention(target, prober, case, alternatives, errors, findings)
        if not alternatives or any(e is None for e in errors):
            continue
        error, problem = errors[0], alternatives[0]
        assert error is not None
        # a dtype that fails is declared away whatever the error says (a TypeError about bfloat16 is no numpy hint)
        hint = "" if case.startswith("dtype ") else _hint(error, target) or prober.expected_shape_hint(error, problem)
        current = target.caps  # several dtypes or mask kinds may fail: remove each from what is left
        if "dtypes" in narrowed:
            narrowed = {"dtypes": tuple(d for d in current.dtypes if d in narrowed["dtypes"])}
        if "masks" in narrowed:
            narrowed = {"masks": current.masks & narrowed["masks"]}
        if "mask_shapes" in narrowed:
            narrowed = {"mask_shapes": tuple(x for x in current.mask_shapes if x in narrowed["mask_shapes"])}
        target.caps = current.replace(**narrowed)
        same = next((i for i, f in enumerate(findings) if f.message == str(error)), None)
        if same is not None:  # one root cause (e.g. no attn_mask keyword) behind several cases: reported once, with
            earlier = findings[same]  # the declaration that covers the whole group
            group = {**earlier.narrowed, **narrowed}
            fixed = earlier.fix if earlier.fix == hint and hint else cap_flags(group)
            findings[same] = Finding(f"{earlier.case}, {case}", earlier.message, earlier.repro, fixed, narrowed=group)
        else:
            findings.append(Finding(case, str(error), problem.repro(target), hint or fix, narrowed=narrowed))
    if {"bool", "float"} <= target.caps.masks:
        findings += _bool_mask_added_finding(target, base)
    if target.caps.gqa:
        findings += _gqa_mapping_finding(target)
    if target.caps.causal is not None:
        findings += _causal_alignment_finding(target)
    renamed = {a: n for a, n in target.caps.arg_names.items() if target.declared.arg_names.get(a) != n}
    if renamed:  # one finding for every keyword named otherwise, applied as the run goes on
        flags = " ".join(f"--arg-name {a}={n}" for a, n in renamed.items())
        said = ", ".join(f"{a} is {n!r}" for a, n in renamed.items())
        findings.insert(
            0,
            Finding(
                "argument names",
                f"the target names the contract's keywords otherwise ({said}, read from its signature): "
                "the calls with these names work",
                "",
                flags,
                narrowed={"arg_names": dict(target.caps.arg_names)},
                kind="convention",
            ),
        )
    shapes = [f for f in findings if f.case.endswith("mask shape")]
    if len(shapes) > 1:  # the shapes a kernel refuses are one declaration: the shapes it takes
        merged = Finding(
            "mask shapes " + ", ".join(f.case.removesuffix(" mask shape") for f in shapes),
            shapes[0].message,
            shapes[0].repro,
            f"--cap mask_shapes={','.join(target.caps.mask_shapes)}",
        )
        findings = [merged if f is shapes[0] else f for f in findings if f is shapes[0] or f not in shapes]
    dtypes = [f for f in findings if f.case.startswith("dtype ")]
    if len(dtypes) > 1:  # likewise the dtypes it refuses (e.g. float32 buffers that meet bfloat16 and float16)
        merged = Finding(
            "dtypes " + ", ".join(f.case.removeprefix("dtype ") for f in dtypes),
            "; ".join(dict.fromkeys(f.message for f in dtypes)),
            dtypes[0].repro,
            f"--cap dtypes={','.join(target.caps.dtypes)}",
        )
        findings = [merged if f is dtypes[0] else f for f in findings if f is dtypes[0] or f not in dtypes]
    return findings


def _found_convention(
    target: Target,
    prober: _Prober,
    case: str,
    calls: list[Problem],
    errors: list[TargetError | None],
    findings: list[Finding],
) -> list[TargetError | None]:
    """A case that raised because the target spells a keyword otherwise (its signature names it) or takes GQA
    natively (no enable_gqa: Hkv < Hq is enough): try again with that convention; if the call then works, the
    run goes on with it (the renames are one finding after the cases; native GQA is one here). The errors of
    the last try are returned."""
    for _ in range(3):  # a call may need several renames (is_causal and scale=)
        arg = _unexpected(errors[0]) if errors[0] is not None else None
        theirs = rename(target, arg) if arg else None
        before = target.caps
        if theirs is not None and arg is not None:
            target.caps = before.replace(arg_names={**before.arg_names, arg: theirs})
        elif arg == "enable_gqa" and before.gqa is True:
            target.caps = before.replace(gqa="native")
        else:
            return errors
        again = [prober.attempt(p, backward=case == "backward") for p in calls]
        native = target.caps.gqa == "native" and before.gqa is True
        if all(e is not None and (native or str(e) == str(errors[0])) for e in again):
            target.caps = before  # not the explanation: the other name changes nothing, or GQA fails without the flag
            return errors
        if native:
            findings.append(
                Finding(
                    "GQA",
                    "the target takes Hkv < Hq with no enable_gqa keyword (native GQA, as FlashAttention)",
                    "",
                    "--cap gqa=native",
                    narrowed={"gqa": "native"},
                    kind="convention",
                )
            )
        errors = again
        if any(e is None for e in errors):
            return errors
    return errors


def sized(target: Target, p: Problem) -> Problem:
    """``p`` within the sizes the target declares (a block multiple, a minimum or maximum length, a head-dimension
    multiple): the probe calls nothing a declared precondition excludes."""
    return fit_sizes(p, target.caps)


def _plain_agrees(target: Target, p: Problem) -> bool:
    """The target's call on ``p`` (no mask) agrees with the oracle at a coarse precision (a layout is an O(1)
    difference, whatever the precision), under the default scale or none at all: a layout is told apart by
    where heads and positions go, and a kernel that also forgets the scale still has one (scaling_variance and
    matches_oracle judge the scale)."""
    q, k, v, _ = p.tensors(target.device)
    try:
        out = target(q, k, v, is_causal=p.is_causal)
    except TargetError:
        return False
    return any(_agrees(target, out, q, k, v, coarse=True, is_causal=p.is_causal, scale=s) for s in (None, 1.0))


def _layout_finding(target: Target, order: Sequence[str], always: bool) -> list[Finding]:
    """A target that agrees with the oracle only in the other layout, (B, L, H, D) vs (B, H, L, D), told apart by
    a call with H = 2 and L = 3: one convention finding, and the run goes on in that layout."""
    if not order:
        return []
    p = sized(target, Problem(B=1, Hq=2, Hkv=2, L=3, S=3, E=4, Ev=4, dtype=order[0], is_causal=always, seed=1))  # type: ignore[arg-type]
    if _plain_agrees(target, p):
        return []
    declared = target.caps
    other = "BLHD" if declared.layout == "BHLD" else "BHLD"
    target.caps = declared.replace(layout=other)
    if not _plain_agrees(target, p):
        target.caps = declared
        return []
    axes = {"BLHD": "(B, L, H, D)", "BHLD": "(B, H, L, D)"}
    target.caps = declared
    repro, assertion = counterexample(target, p)
    target.caps = declared.replace(layout=other)
    return [
        Finding(
            "layout",
            f"the target reads and writes {axes[other]}, not {axes[declared.layout]}: with H = 2 and L = 3 its output "
            "agrees with the oracle in that layout only",
            repro,
            f"--layout {other}",
            narrowed={"layout": other},
            kind="convention",
            assertion=assertion,
        )
    ]


def counterexample(target: Target, p: Problem) -> tuple[str, str]:
    """(the repro of ``p`` on the target as it is declared now, the message that repro fails with): the probe runs
    the repro's own assertion, so what it reports is what the repro shows."""
    p = sized(target, p)
    from attncheck.properties.checks import assert_close, live_rows
    from attncheck.properties.oracle import expect

    q, k, v, mask = p.tensors(target.device)
    kwargs = p.call_kwargs(mask)
    try:
        out = target(q, k, v, **kwargs)
        align = target.caps.alignment
        compute = target.precision(q.dtype, judged=True)
        ref, budget = expect(q, k, v, kwargs.pop("attn_mask"), align, compute, **kwargs)
        assert_close(out, ref, budget, "output vs float64 oracle", p, where=live_rows(p, mask, align))
    except PropertyFailure as exc:
        return p.repro(target), exc.summary
    except TargetError as exc:
        return p.repro(target), f"{type(exc).__name__}: {exc}"
    return p.repro(target), ""


def _bool_mask_added_finding(target: Target, base: Problem) -> list[Finding]:
    """A target that takes additive float masks only (Hugging Face's ``attention_mask``) and adds a boolean mask
    as 0/1: its bool call agrees with the oracle of the mask added as floats and not with the mask's meaning.
    Only that reading is attributed (a convention: --masks float); a bool mask read otherwise (inverted, ignored)
    stays a correctness matter for mask_semantics."""
    p = sized(target, base.replace(L=4, S=5, E=8, Ev=8, mask="bool", mask_shape="BHLS", seed=4))
    q, k, v, mask = p.tensors(target.device)
    causal = p.is_causal
    try:
        out = target(q, k, v, attn_mask=mask, is_causal=causal)
    except TargetError:
        return []
    if mask is None or _agrees(target, out, q, k, v, attn_mask=mask, is_causal=causal):
        return []
    if not _agrees(target, out, q, k, v, attn_mask=mask.to(q.dtype), is_causal=causal):
        return []
    repro, assertion = counterexample(target, p)
    target.caps = target.caps.replace(masks=target.caps.masks - {"bool"})
    return [
        Finding(
            "bool masks",
            "a boolean mask is added to the scores as 0/1 (the target takes additive float masks only)",
            repro,
            "--masks float",
            narrowed={"masks": target.caps.masks},
            kind="convention",
            assertion=assertion,
        )
    ]


def _probe_entry(target: Target) -> list[Finding]:
    """The basic calls of a varlen or decode target: two sequences (one of them empty) in each declared dtype,
    causal where declared. The first dtype that works is the plain call (none works: every property is blocked);
    each other dtype that raises is one finding, and the run goes on without it."""
    from attncheck.properties.packed import DecodeProblem, VarlenProblem

    caps = target.caps
    failed: list[tuple[str, TargetError, str]] = []  # (dtype, error, repro)
    for dtype in caps.dtypes:
        fields: dict[str, Any] = {"Hq": 2, "Hkv": 2, "E": 4, "Ev": 4, "dtype": dtype, "seed": 1}
        p: VarlenProblem | DecodeProblem
        if caps.entry == "varlen":
            p = VarlenProblem(seqlens_q=(3, 0), seqlens_k=(3, 2), pad=1, **fields)
        else:
            p = DecodeProblem(seqlens=(3, 5), Lq=1, capacity=6, page_size=4 if caps.paged else 0, **fields)
        call = target.varlen if isinstance(p, VarlenProblem) else target.decode
        try:
            call(*p.tensors(target.device), **p.features(target.device))
        except TargetError as exc:
            failed.append((dtype, exc, p.repro(target)))
            if exc.kind == "hung":
                break
    works = tuple(d for d in caps.dtypes if d not in {dtype for dtype, _, _ in failed})
    hung = [f for f in failed if f[1].kind == "hung"]
    if hung or not works:  # a hung target is not called again: nothing can be judged either
        _, error, repro = (hung or failed)[0]
        return [Finding("plain call", str(error), repro, _hint(error, target), blocks_all=True)]
    target.caps = caps.replace(dtypes=works)
    return [
        Finding(f"dtype {dtype}", str(error), repro, f"--cap dtypes={','.join(works)}", narrowed={"dtypes": works})
        for dtype, error, repro in failed
    ]


def _always_causal_finding(target: Target, base: Problem) -> list[Finding]:
    """A target whose output is causal although is_causal was not passed (the triangle is built in): one
    finding, and the run goes on with it declared ``causal="always"``, instead of every property failing."""
    p = sized(target, base.replace(L=4, S=4, E=8, Ev=8, seed=3))
    q, k, v, _ = p.tensors(target.device)
    try:
        out = target(q, k, v)
    except TargetError:
        return []
    if _agrees(target, out, q, k, v, coarse=True) or not _agrees(target, out, q, k, v, coarse=True, is_causal=True):
        return []
    target.caps = target.caps.replace(causal="always")
    return [
        Finding(
            "without is_causal",
            "the output is causal (top-left) although is_causal was not passed: the causal mask is built in",
            p.repro(target),
            "--causal always",
            narrowed={"causal": "always"},
        )
    ]


def _causal_call(target: Target) -> bool:
    """is_causal for the probe's plain calls: True for an always-causal target (it cannot be called without)."""
    return target.caps.causal == "always"


def gqa_mapping(target: Target) -> tuple[str, Problem] | None:
    """Which kv head query head h reads, observed with Hq = 4, Hkv = 2 through the declared mapping (Target
    reorders the heads of an interleaved declaration): "grouped" (as declared), "interleaved" (the other mapping
    than declared: h % Hkv where grouped is declared), or "neither"; None if the GQA call raises."""
    dtype = "float32" if "float32" in target.caps.dtypes else target.caps.dtypes[0]
    causal = _causal_call(target)
    p = sized(target, Problem(B=1, Hq=4, Hkv=2, L=4, S=4, E=8, Ev=8, dtype=dtype, is_causal=causal, seed=3))  # type: ignore[arg-type]
    q, k, v, _ = p.tensors(target.device)
    try:
        out = target(q, k, v, enable_gqa=True, is_causal=causal)
    except TargetError:
        return None
    if _agrees(target, out, q, k, v, is_causal=causal):
        return "grouped", p
    # (B, Hkv, S, E) -> (B, Hq, S, E), tiled: with Hq = 2 Hkv this is also a grouped target under an interleaved
    # declaration (the reordering is its own inverse)
    tiled = _agrees(target, out, q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1), is_causal=causal)
    return ("interleaved" if tiled else "neither"), p


def _gqa_mapping_finding(target: Target) -> list[Finding]:
    """GQA that runs with the other head mapping than declared: one finding, and the run goes on with the mapping
    observed (Target translates it), instead of every property that draws GQA failing about its own subject."""
    seen = gqa_mapping(target)
    if seen is None or seen[0] != "interleaved":
        return []
    declared = target.caps.gqa_mapping
    actual = "grouped" if declared == "interleaved" else "interleaved"
    target.caps = target.caps.replace(gqa_mapping=actual)
    return [
        Finding(
            "GQA head mapping",
            f"query head h reads kv head {MAPPING[actual]}; "
            + ("the contract is" if declared == "grouped" else "the declaration says")
            + f" {MAPPING[declared]}",
            seen[1].repro(target),
            f"--cap gqa_mapping={actual}",
            narrowed={"gqa_mapping": actual},
        )
    ]


MAPPING = {"grouped": "h // (Hq / Hkv) (grouped, as SDPA)", "interleaved": "h % Hkv (interleaved, as einops '(r h)')"}


def causal_alignments(target: Target) -> list[tuple[Problem, str]]:
    """For each causal shape the declared lengths allow (L < S, L > S, a single query, and queries over 17 keys,
    past a kernel's block of 8 or 16 keys), the alignment the target's is_causal output matches: "top-left",
    "bottom-right", "not causal" or "neither"; or "plain call wrong" where the call without is_causal on the
    same inputs already disagrees with the oracle: a bug of its own (a dropped tail block, a missing rescale or
    scale), which says nothing about the triangle and which matches_oracle judges. Each call is judged at the
    precision of the dtype it calls with."""
    caps = target.caps
    dtype = "float32" if "float32" in caps.dtypes else caps.dtypes[0]
    seen: list[tuple[Problem, str]] = []
    for L, S in ((2, 5), (5, 2), (1, 3), (1, 17), (4, 17)):
        if caps.lengths == "equal" or (caps.lengths == "q<=k" and L > S):
            continue
        p = sized(target, Problem(B=1, Hq=2, Hkv=2, L=L, S=S, E=8, Ev=8, dtype=dtype, is_causal=True, seed=3))  # type: ignore[arg-type]
        q, k, v, _ = p.tensors(target.device)
        try:
            out = target(q, k, v, is_causal=True)
            plain = None if caps.causal == "always" else target(q, k, v)
        except TargetError:
            continue  # a raising call is a finding of the basic cases
        if plain is not None and not _agrees(target, plain, q, k, v):
            seen.append((p, "plain call wrong"))
            continue
        names = [
            a
            for a in (caps.alignment, "bottom-right" if caps.alignment == "top-left" else "top-left")
            if _agrees(target, out, q, k, v, p.admissible(None, a).any(-1, True), alignment=a, is_causal=True)
        ]
        seen.append((p, names[0] if names else "not causal" if _agrees(target, out, q, k, v) else "neither"))
    return seen


def _shape(p: Problem) -> str:
    return f"L={p.L}, S={p.S}"


def _causal_alignment_finding(target: Target) -> list[Finding]:
    """is_causal that does not follow the declared alignment on some shape. Where the other alignment explains
    every shape, it is an undeclared convention: one finding, and the run goes on with it. Where no alignment
    does (it changes with L vs S, a row sees a key it must not or misses one it may see, NaN), it is a
    correctness finding with its counterexample, and the causal checks stay on: no declaration switches off the
    testing of what is broken. Shapes whose call without is_causal is already wrong are not judged here."""
    declared = target.caps.alignment
    seen = [(p, name) for p, name in causal_alignments(target) if name != "plain call wrong"]
    wrong = [(p, name) for p, name in seen if name != declared]
    if not wrong:
        return []
    names = {name for _, name in seen}
    observed = "; ".join(f"{_shape(p)}: {name}" for p, name in seen)
    repro, assertion = counterexample(target, wrong[0][0])
    if len(names) == 1 and names <= {"top-left", "bottom-right"}:
        (other,) = names
        target.caps = target.caps.replace(causal=other)
        return [
            Finding(
                "causal alignment",
                f"is_causal is {other}-aligned, not {declared} (observed {observed})",
                repro,
                f"--causal {other}",
                narrowed={"causal": other},
                kind="convention",
                assertion=assertion,
            )
        ]
    nan = ", NaN in the output" if "non-finite" in assertion else ""
    return [
        Finding(
            "causal alignment",
            f"is_causal is wrong under every alignment tried (top-left, bottom-right) on "
            f"{', '.join(_shape(p) for p, _ in wrong)}{nan} (observed {observed}): {assertion}",
            repro,
            "none: no declaration describes it (a fix in the target); the causal checks stay on",
            kind="wrong",
            assertion=assertion,
        )
    ]


# Coarser precisions a correct kernel may compute an input dtype in (softmax(x.float()) for float64 inputs;
# bfloat16 or TF32-like float32 matmuls).
COARSER = {
    "float64": ("float32", "bfloat16", "float16"),
    "float32": ("bfloat16", "float16"),
    "float16": ("bfloat16",),
}


def observe_precision(target: Target) -> None:
    """Record in ``target.observed_precision`` each input dtype that is computed at a coarser precision than its
    own: the output's error on a benign call fits the budget of a coarser dtype and not its own. The structural
    properties then budget with it; matches_oracle still judges the precision (undeclared, it is one finding)."""
    for dtype in COARSER:
        if dtype not in target.caps.dtypes or target.caps.compute_dtype:
            continue
        causal = _causal_call(target)
        p = sized(target, Problem(B=1, Hq=2, Hkv=2, L=8, S=8, E=8, Ev=8, dtype=dtype, seed=2))  # type: ignore[arg-type]
        q, k, v, _ = p.tensors(target.device)
        try:
            out = target(q, k, v, is_causal=causal)
        except TargetError:
            continue  # the dtype cases below report it
        ref = oracle(q, k, v, is_causal=causal)
        err = float((out.double() - ref).abs().max())
        if err <= output_budget(q, k, v, ref).value:
            continue
        for coarser in COARSER[dtype]:
            if err <= output_budget(q, k, v, ref, compute=getattr(torch, coarser)).value:
                target.observed_precision[dtype] = coarser
                break


# ---------------------------------------------------------------------------------------------------------------
# `attncheck probe`: observe a target's conventions and say how to declare them


def _agrees(
    target: Target,
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    coarse: bool = False,
    alignment: str = "top-left",
    **kwargs: Any,
) -> bool:
    """``out`` agrees with the float64 oracle of the call (q, k, v, ``kwargs``) under ``alignment``, within the
    budget of the precision the target computes q's dtype in (docs/design.md, "Oracle and tolerance": declared
    compute_dtype, else the precision the probe observed, else the dtype itself), on ``rows`` (B, H, L, 1) when
    given: rows with no admissible key follow their own convention. ``coarse``: within bfloat16's budget, for the
    questions asked before the precision is measured, whose wrong answers are O(1) (a layout, a causal triangle)."""
    compute = torch.bfloat16 if coarse else target.precision(q.dtype)
    ref, tol = expect(q, k, v, kwargs.pop("attn_mask", None), alignment, compute, **kwargs)
    got = out.detach().double().cpu()
    both = torch.isfinite(ref) & (True if rows is None else rows.cpu().expand_as(ref))
    if not bool(torch.isfinite(got[both]).all()):
        return False
    return not bool(both.any()) or float((got - ref)[both].abs().max()) <= tol.value


def observe_conventions(target: Target) -> dict[str, str]:
    """Call the target on small cases and name the conventions it follows (after :func:`probe`)."""
    caps, seen = target.caps, {}
    dtype = "float32" if "float32" in caps.dtypes else caps.dtypes[0]
    causal = _causal_call(target)
    base = sized(target, Problem(B=1, Hq=2, Hkv=2, L=4, S=4, E=8, Ev=8, dtype=dtype, is_causal=causal, seed=3))  # type: ignore[arg-type]

    def run(p: Problem, **kwargs: Any) -> torch.Tensor | None:
        q, k, v, mask = p.tensors(target.device)
        try:
            return target(q, k, v, **{**p.call_kwargs(mask), **kwargs})
        except TargetError:
            return None

    if caps.causal is not None:
        seen["causal alignment"] = "; ".join(f"{_shape(p)}: {name}" for p, name in causal_alignments(target))
    q, k, v, _ = base.tensors(target.device)
    if caps.causal == "always":
        seen["without is_causal"] = "causal anyway (always causal, no flag)"
    mapping = gqa_mapping(target) if caps.gqa else None
    if mapping is not None:  # gqa_mapping answers relative to the declaration: name the mapping itself
        other = "grouped" if caps.gqa_mapping == "interleaved" else "interleaved"
        actual = {"grouped": caps.gqa_mapping, "interleaved": other}.get(mapping[0])
        seen["GQA head mapping"] = f"query head h reads kv head {MAPPING[actual]}" if actual else "neither mapping"
    dropout = dropout_semantics(target)
    seen["dropout"] = DROPOUT[dropout] if dropout in DROPOUT else dropout
    if dropout in ("inverted", "renormalised"):
        target.caps = target.caps.replace(dropout=dropout)
    if not caps.unscaled:  # the default scale: eq. (1)'s 1/sqrt(d_k), or none at all (T5)
        out, causal = run(base), base.is_causal
        if out is not None and not _agrees(target, out, q, k, v, is_causal=causal):
            if _agrees(target, out, q, k, v, scale=1.0, is_causal=causal) and caps.scale:
                # a target that takes scale= and still computes q . k unscaled has a broken scale: declaring it
                # unscaled would switch off the testing of what is broken (scaling_variance judges it)
                seen["default scale"] = "none: q . k unscaled although the target takes scale= (no declaration)"
            elif _agrees(target, out, q, k, v, scale=1.0, is_causal=causal):
                seen["default scale"] = "none: q . k unscaled (declare unscaled=yes: attncheck then scales q)"
                target.caps = target.caps.replace(unscaled=True)
    if caps.scale and not target.caps.unscaled:
        out = run(base, scale=0.5)
        causal = base.is_causal
        if out is not None:
            seen["scale="] = (
                "honoured"
                if _agrees(target, out, q, k, v, scale=0.5, is_causal=causal)
                else (
                    "ignored (the default 1/sqrt(E) is used)"
                    if _agrees(target, out, q, k, v, is_causal=causal)
                    else "neither"
                )
            )
    for kind in sorted(caps.masks):
        p = base.replace(mask=kind, mask_shape="BHLS", masked_rows=1)
        q, k, v, _ = p.tensors(target.device)
        out = run(p)
        if out is not None:  # query 0 sees no key: the convention the properties observe
            row = out[..., 0, :].detach().double().flatten(0, -2)  # (B, H, Ev) -> (B*H, Ev)
            seen[f"fully masked rows ({kind} mask)"] = row_convention(row, v.double().flatten(0, -3), atol=1e-6)
    return seen


DROPOUT = {
    "inverted": "inverted (kept weights / (1 - p), as SDPA)",
    "renormalised": "renormalised (kept weights renormalised to sum to 1 per row)",
    "ignored": "ignored (dropout_p = 0.5 changes nothing)",
}


def dropout_semantics(target: Target, p_drop: float = 0.5) -> str:
    """What ``dropout_p`` does, seen on q = 0 (uniform weights) and V = the identity (the output row is the
    weight row): "inverted", "renormalised", "ignored", "neither ..." or "raises: ..."."""
    dtype = getattr(torch, "float32" if "float32" in target.caps.dtypes else target.caps.dtypes[0])
    causal, S, E = _causal_call(target), 8, 8
    q = torch.zeros(1, 2, S, E, dtype=dtype, device=target.device)  # (B, H, L, E): uniform weights
    k = torch.randn(1, 2, S, E, generator=torch.Generator().manual_seed(0)).to(dtype).to(target.device)
    eye = torch.eye(S, E, dtype=dtype, device=target.device).expand(1, 2, S, E)  # (B, H, S, Ev = S)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        out = target(q, k, eye, dropout_p=p_drop, is_causal=causal).double().cpu()  # (B, H, L, S)
    except TargetError as exc:
        return f"raises: {exc}"
    finally:
        torch.random.set_rng_state(state)
    adm = causal_mask(S, S) if causal else torch.ones(S, S, dtype=torch.bool)  # (L, S)
    n = adm.sum(-1, keepdim=True).double()  # (L, 1): admissible keys per row
    close = functools.partial(torch.allclose, rtol=1e-3, atol=1e-6)
    if close(out, adm / n):
        return "ignored"
    kept = (out != 0) & adm  # (B, H, L, S)
    for name, weight in (("inverted", 1 / (n * (1 - p_drop))), ("renormalised", 1 / kept.sum(-1, keepdim=True))):
        if close(out[kept], weight.expand_as(out)[kept].double()):
            return name
    return "neither inverted nor renormalised"


def declaration(target: Target) -> tuple[str, str]:
    """The ``@declare(...)`` line and the verify flags for what differs from the default contract."""
    default, caps = Capabilities(), target.caps
    changed = {
        f: getattr(caps, f)
        for f in (
            "masks",
            "mask_shapes",
            "causal",
            "lengths",
            "length_multiple",
            "min_length",
            "max_length",
            "head_dim_multiple",
            "gqa",
            "gqa_mapping",
            "scale",
            "unscaled",
            "dropout",
            "grad",
            "value_dim",
            "dtypes",
            "layout",
            "masked_rows",
            "compute_dtype",
            "entry",
            "paged",
            "features",
            "window_counts_self",
            "lse_base",
            "lse_empty",
            "arg_names",
        )
        if getattr(caps, f) != getattr(default, f)
    }
    if target.observed_precision and not caps.compute_dtype:
        changed["compute_dtype"] = sorted(set(target.observed_precision.values()))[0]
    python = ", ".join(f"{k}={tuple(sorted(v)) if isinstance(v, frozenset) else v!r}" for k, v in changed.items())
    return f"@declare({python})", cap_flags(changed)


def cap_flags(changes: dict[str, Any]) -> str:
    """Capabilities changes as ``--cap FIELD=VALUE`` verify flags (each parses back to the same value)."""
    flags = []
    for k, v in changes.items():
        if isinstance(v, frozenset):
            v = ",".join(sorted(v)) or "none"
        elif isinstance(v, tuple):
            v = ",".join(v)
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif isinstance(v, Mapping):
            v = ",".join(f"{a}:{b}" for a, b in v.items())
        elif v is None:
            v = "none"
        flags.append(f"--cap {k}={v}")
    return " ".join(flags)
