"""Sanity of the meta-test fixtures: the variants are right, and each mutant's bug is real (direct demos).

These are plain fixed-input checks, not property tests: a variant must agree with the reference on chosen
problems (every mask broadcast shape, causal with L != S, GQA, scale, non-contiguous layouts, block edges,
all dtypes, large logits, fully masked rows, gradients, dropout), and each mutant must visibly misbehave on
an input of our choosing that exhibits its bug, while agreeing with the reference on a nearby input that
does not (where such an input exists), which shows the bug is the only one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from attncheck.properties.catalog import PROPERTIES
from attncheck.properties.contract import Capabilities
from attncheck.properties.oracle import output_budget
from attncheck.properties.problems import Problem
from attncheck.reference.attention import scaled_dot_product_attention as reference
from tests import mutants as mutants_module
from tests.meta_call import Call, as_sdpa
from tests.mutants import MUTANTS, mutant
from tests.variants import INVERTED_DROPOUT, VARIANTS, variant, variant_target

Fn = Callable[..., Tensor]

# ---------------------------------------------------------------------------------------------------------------
# Helpers


def run(fn: Fn, p: Problem, **overrides: object) -> tuple[Tensor, Tensor]:
    """(target output, reference output) on the problem's tensors, the reference in float64."""
    q, k, v, mask = p.tensors()
    kwargs = {**p.call_kwargs(mask), **overrides}
    out = fn(q, k, v, **kwargs)
    ref = reference(q.double(), k.double(), v.double(), **kwargs)
    return out, ref


def close(out: Tensor, ref: Tensor, atol: float = 1e-10) -> bool:
    return out.shape == ref.shape and bool(torch.allclose(out.double(), ref.double(), rtol=1e-8, atol=atol))


def assert_matches(name: str, out: Tensor, ref: Tensor, where: str, atol: float = 1e-10) -> None:
    assert out.shape == ref.shape, f"{name} {where}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = (out.double() - ref.double()).abs().nan_to_num(float("inf")).max().item() if out.numel() else 0.0
    assert close(out, ref, atol), f"{name} {where}: max |out - reference| = {err:.3g} > {atol:g}"


def admissible_rows(p: Problem, mask: Tensor | None) -> Tensor:
    """(B, Hq, L, 1) True where the query row has at least one admissible key."""
    return p.admissible(mask).any(dim=-1, keepdim=True)


def grads(fn: Fn, p: Problem, weight_seed: int = 1) -> tuple[Tensor, list[Tensor]]:
    """Output and (dQ, dK, dV) of a weighted sum of the output over rows with an admissible key."""
    q, k, v, mask = p.tensors()
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **p.call_kwargs(mask))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(weight_seed), dtype=out.dtype)
    loss = torch.where(admissible_rows(p, mask), out * w, 0.0).sum()  # NaN rows (a legal convention) left out
    loss.backward()
    return out.detach(), [q.grad, k.grad, v.grad]  # type: ignore[list-item]


def ref_grads(p: Problem) -> list[Tensor]:
    _, g = grads(reference, p)
    return g


# ---------------------------------------------------------------------------------------------------------------
# Variants: correct on fixed problems

F64 = Problem(B=2, Hq=2, Hkv=2, L=5, S=7, E=4, Ev=3, dtype="float64", seed=3)
VARIANT_PROBLEMS: dict[str, Problem] = {
    "plain": F64,
    "square": F64.replace(L=6, S=6, Ev=4),
    "size_one": F64.replace(B=1, Hq=1, Hkv=1, L=1, S=1, E=1, Ev=1),
    "block_edge_17": F64.replace(L=3, S=17),
    "block_edge_33": F64.replace(L=4, S=33, Ev=5),
    "causal_L_lt_S": F64.replace(is_causal=True, L=3, S=7),
    "causal_L_gt_S": F64.replace(is_causal=True, L=7, S=3),
    "causal_square": F64.replace(is_causal=True, L=6, S=6),
    "gqa_2": F64.replace(Hq=4, Hkv=2),
    "gqa_3_causal": F64.replace(Hq=6, Hkv=2, is_causal=True, L=4, S=9),
    "scale_0.125": F64.replace(scale=0.125),
    "scale_2": F64.replace(scale=2.0),
    "transposed": F64.replace(layout="transposed"),
    "sliced": F64.replace(layout="sliced", Hq=4, Hkv=2),
    "expanded": F64.replace(layout="expanded", mask="bool", mask_shape="B11S"),
    "large_logits": F64.replace(magnitude=40.0, E=16),
    **{
        f"{kind}_{shape}": F64.replace(mask=kind, mask_shape=shape, Hq=4, Hkv=2, seed=5)
        for kind in ("bool", "float")
        for shape in ("LS", "B1LS", "BHLS", "1HLS", "B11S")
    },
    "bool_block_edge_17": F64.replace(mask="bool", mask_shape="BHLS", S=17, L=4),
}
MASKED_ROW_PROBLEMS: dict[str, Problem] = {
    f"{kind}_{shape}_rows": F64.replace(mask=kind, mask_shape=shape, masked_rows=2, Hq=4, Hkv=2, seed=7)
    for kind in ("bool", "float")
    for shape in ("LS", "B1LS", "BHLS", "1HLS", "B11S")
}
MASKED_ROW_PROBLEMS["online_all_blocks_masked"] = F64.replace(mask="bool", mask_shape="BHLS", masked_rows=1, S=33)


def assert_convention(
    name: str, where: str, out: Tensor, ref: Tensor, p: Problem, mask: Tensor | None, v: Tensor
) -> None:
    """Rows with an admissible key match the reference; the others follow the declared convention."""
    rows = admissible_rows(p, mask).expand_as(out)  # (B, H, L, Ev)
    assert_matches(name, out[rows], ref[rows], f"{where}: rows with an admissible key")
    convention = VARIANTS[name].caps.masked_rows
    masked = out[~rows]
    if convention == "zeros":
        assert torch.equal(masked, torch.zeros_like(masked)), f"{name} {where}: fully masked rows are not zeros"
    elif convention == "nan":
        assert masked.isnan().all(), f"{name} {where}: fully masked rows are not NaN"
    elif convention == "uniform":
        vv = v.double().repeat_interleave(p.Hq // p.Hkv, dim=1)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
        uniform = vv.mean(dim=-2, keepdim=True).expand_as(out)  # (B, Hq, L, Ev)
        assert_matches(name, masked, uniform[~rows], f"{where}: fully masked rows (uniform)")


# The variants that take the whole contract at full precision; the declared ones are checked below them.
FULL = [
    n
    for n, v in VARIANTS.items()
    if v.caps.compute_dtype is None
    and v.caps.lengths == "any"
    and v.caps.gqa_mapping == "grouped"
    and v.caps.causal == "top-left"
]


@pytest.mark.parametrize("name", FULL)
def test_variant_matches_reference_float64(name: str) -> None:
    for where, p in VARIANT_PROBLEMS.items():
        out, ref = run(VARIANTS[name].fn, p)
        assert out.dtype == torch.float64, f"{name} {where}: dtype {out.dtype}"
        assert_matches(name, out, ref, where)


@pytest.mark.parametrize("name", FULL)
def test_variant_fully_masked_rows_keep_declared_convention(name: str) -> None:
    for where, p in MASKED_ROW_PROBLEMS.items():
        q, k, v, mask = p.tensors()
        out = VARIANTS[name].fn(q, k, v, **p.call_kwargs(mask))
        ref = reference(q, k, v, **p.call_kwargs(mask))
        assert_convention(name, where, out, ref, p, mask, v)


@pytest.mark.parametrize("name", FULL)
def test_variant_gradients_match_reference(name: str) -> None:
    problems = {
        "plain": F64,
        "causal_L_gt_S": VARIANT_PROBLEMS["causal_L_gt_S"],
        "gqa_3_causal": VARIANT_PROBLEMS["gqa_3_causal"],
        "float_B11S": VARIANT_PROBLEMS["float_B11S"],
        "bool_block_edge_17": VARIANT_PROBLEMS["bool_block_edge_17"],
        "transposed": VARIANT_PROBLEMS["transposed"],
        **{k: MASKED_ROW_PROBLEMS[k] for k in ("bool_BHLS_rows", "float_B11S_rows", "online_all_blocks_masked")},
    }
    for where, p in problems.items():
        _, got = grads(VARIANTS[name].fn, p)
        for label, g, r in zip(("dQ", "dK", "dV"), got, ref_grads(p), strict=True):
            assert torch.isfinite(g).all(), f"{name} {where}: {label} has non-finite entries"
            assert_matches(name, g, r, f"{where} {label}", atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("name", FULL)
def test_variant_low_precision_within_budget(name: str, dtype: str) -> None:
    for where in ("plain", "causal_L_lt_S", "gqa_3_causal", "bool_B1LS", "float_1HLS", "block_edge_33", "sliced"):
        p = VARIANT_PROBLEMS[where].replace(dtype=dtype)
        q, k, v, mask = p.tensors()
        kwargs = p.call_kwargs(mask)
        out = VARIANTS[name].fn(q, k, v, **kwargs)
        assert out.dtype == q.dtype, f"{name} {where}: returned {out.dtype} for {q.dtype} inputs"
        ref = reference(q.double(), k.double(), v.double(), **kwargs)
        b = output_budget(q, k, v, ref, **kwargs)
        err = (out.double() - ref).abs().max().item()
        assert err <= b.value, f"{name} {where} {dtype}: error {err:.3g} > budget {b.explain()}"


@pytest.mark.parametrize("name", FULL)
def test_variant_large_logits_finite(name: str) -> None:
    """Logits of several hundred (far beyond exp's float32 range) and fp16 dot products beyond 65504."""
    for dtype, magnitude, E in (("float32", 30.0, 16), ("float16", 100.0, 64), ("bfloat16", 100.0, 64)):
        p = F64.replace(dtype=dtype, magnitude=magnitude, E=E, Ev=4)
        out, ref = run(VARIANTS[name].fn, p)
        assert torch.isfinite(ref).all()
        assert torch.isfinite(out).all(), f"{name}: non-finite output for {dtype} logits of magnitude {magnitude}"


@pytest.mark.parametrize("name", [n for n in FULL if VARIANTS[n].caps.masked_values == "ignored"])
def test_variant_unseen_keys_nonfinite_irrelevant(name: str) -> None:
    """NaN and inf in the keys and values of padded keys (a (B, 1, 1, S) mask) change nothing.

    Every variant that declares ``masked_values="ignored"``: all but torch_sdpa (pytorch#101967).
    """
    p = F64.replace(mask="bool", mask_shape="B11S", seed=11)
    q, k, v, mask = p.tensors()
    assert mask is not None
    ref = reference(q, k, v, attn_mask=mask)
    pad = ~mask.expand(p.B, 1, 1, p.S)[:, :, 0, :]  # (B, 1, 1, S) -> (B, 1, S) True at padded keys
    assert pad.any()
    k2 = k.masked_fill(pad.unsqueeze(-1), float("nan"))  # (B, Hkv, S, E)
    v2 = v.masked_fill(pad.unsqueeze(-1), float("inf"))  # (B, Hkv, S, Ev)
    assert_matches(name, VARIANTS[name].fn(q, k2, v2, attn_mask=mask), ref, "NaN/inf at padded keys")


@pytest.mark.parametrize("name", INVERTED_DROPOUT)
def test_variant_inverted_dropout(name: str) -> None:
    """With V = identity (Ev = S) the output is the dropped weight matrix: kept entries are P / (1 - p)."""
    p_drop = 0.3
    p = Problem(B=2, Hq=2, Hkv=2, L=16, S=16, E=4, Ev=16, dtype="float64", seed=2)
    q, k, _, _ = p.tensors()
    v = torch.eye(p.S, dtype=torch.float64).expand(p.B, p.Hkv, p.S, p.S)  # (B, Hkv, S, S)
    weights = reference(q, k, v)  # (B, H, L, S) = P
    torch.manual_seed(0)
    dropped = VARIANTS[name].fn(q, k, v, dropout_p=p_drop)
    kept = dropped != 0
    n, frac = kept.numel(), 1.0 - kept.double().mean().item()
    sd = (p_drop * (1 - p_drop) / n) ** 0.5
    assert abs(frac - p_drop) < 5 * sd, f"{name}: dropped fraction {frac:.3f}, expected {p_drop} +- {5 * sd:.3f}"
    assert_matches(name, dropped[kept], weights[kept] / (1 - p_drop), "kept weights rescaled by 1/(1-p)")


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if not v.caps.dropout])
def test_variant_without_dropout_refuses_it(name: str) -> None:
    q, k, v, _ = F64.tensors()
    assert not VARIANTS[name].caps.dropout
    with pytest.raises(NotImplementedError):
        VARIANTS[name].fn(q, k, v, dropout_p=0.1)


# ---------------------------------------------------------------------------------------------------------------
# Mutants: each bug demonstrated on an input of our choosing


def test_float32_internal_variant_is_float32_accurate_in_float64() -> None:
    """Declared compute_dtype=float32: float64 in, float64 out, float32-level error (not float64's)."""
    for where, p in VARIANT_PROBLEMS.items():
        out, ref = run(VARIANTS["float32_internal"].fn, p)
        assert out.dtype == torch.float64, where
        err = float((out - ref).abs().max())
        assert 0 < err < 1e-5 or p.S == 1, f"{where}: error {err:.3g}"


def test_self_attention_only_variant_refuses_l_ne_s_and_is_exact_otherwise() -> None:
    fn = VARIANTS["self_attention_only"].fn
    with pytest.raises(ValueError, match="self-attention only"):
        run(fn, F64.replace(L=3, S=5))
    for where, p in VARIANT_PROBLEMS.items():
        if p.L == p.S:
            out, ref = run(fn, p)
            assert_matches("self_attention_only", out, ref, where)


def test_interleaved_gqa_variant_tiles_the_heads_and_is_exact_once_translated() -> None:
    """Called directly, query head h reads kv head h % Hkv; through its Target (declared interleaved) it answers
    the contract's question exactly."""
    fn, target = VARIANTS["interleaved_gqa"].fn, variant_target("interleaved_gqa")
    for where, p in VARIANT_PROBLEMS.items():
        q, k, v, _ = p.tensors()
        if p.gqa:
            tiled = reference(q, k.repeat(1, p.Hq // p.Hkv, 1, 1), v.repeat(1, p.Hq // p.Hkv, 1, 1))
            assert_matches("interleaved_gqa", fn(q, k, v, enable_gqa=True), tiled, f"{where} (direct)")
        out, ref = run(target, p)
        assert_matches("interleaved_gqa", out, ref, f"{where} (translated)")


def test_always_causal_variant_is_causal_without_the_flag() -> None:
    fn = VARIANTS["always_causal"].fn
    for where, p in VARIANT_PROBLEMS.items():
        # the causal problem's tensors (its mask keeps each row a key the triangle admits), called without the flag
        out, _ = run(fn, p.replace(is_causal=True), is_causal=False)
        _, causal = run(reference, p.replace(is_causal=True))
        rows = admissible_rows(p.replace(is_causal=True), p.tensors()[3]).expand_as(out)
        assert_matches("always_causal", out[rows], causal[rows], where)


def test_renormalised_dropout_variant_rows_sum_to_one() -> None:
    """With V = ones, a renormalised row gives exactly 1 (inverted dropout gives 1 only in expectation)."""
    q, k, _, _ = F64.tensors()
    ones = torch.ones(F64.B, F64.Hkv, F64.S, F64.Ev, dtype=torch.float64)
    torch.manual_seed(0)
    out = VARIANTS["renormalised_dropout"].fn(q, k, ones, dropout_p=0.5)
    kept_any = out != 0
    assert torch.allclose(out[kept_any], torch.ones_like(out[kept_any]))


def test_registry() -> None:
    assert len(MUTANTS) >= 24
    for name, m in MUTANTS.items():
        assert m.name == name and m.fn is getattr(mutants_module, name), name  # the module name is the SDPA callable
        assert m.property in PROPERTIES, f"{name}: {m.property!r} is not a stable property name"
        assert m.fn.__doc__ and ("docs/bugs.md" in m.fn.__doc__ or "Textbook" in m.fn.__doc__), f"{name}: docstring"
        assert m.fn.__attncheck__ is m.caps  # type: ignore[attr-defined]  # declared as attncheck verify reads it
        assert m.target().name == f"mutant:{name}" and m.target().caps is m.caps
    declared = {name: m.caps for name, m in MUTANTS.items() if m.caps != Capabilities()}
    assert declared == {
        "nan_masked_rows": Capabilities(masked_rows="zeros"),
        "masked_value_nan_leak": Capabilities(masked_values="ignored"),
        "dropout_not_rescaled": Capabilities(dropout=True),
        "dropout_renormalised": Capabilities(dropout=True),
        "mask_times_scale": Capabilities(masks=frozenset({"float"})),  # the one mask kind its bug needs
    }
    assert len(VARIANTS) >= 6
    assert all(v.fn.__attncheck__ is v.caps for v in VARIANTS.values())  # type: ignore[attr-defined]
    assert [n for n, v in VARIANTS.items() if v.caps.masked_values != "ignored"] == ["torch_sdpa"]
    assert set(DEMOS) == set(MUTANTS), f"demos missing: {set(MUTANTS) - set(DEMOS)}"


def test_declarations_are_checked_when_decorating() -> None:
    with pytest.raises(ValueError, match="unknown property 'no_such_property'"):
        mutant("no_such_property")
    with pytest.raises(TypeError, match="no_such_capability"):
        mutant("matches_oracle", no_such_capability=True)
    with pytest.raises(ValueError, match="dtypes"):
        variant(dtypes=("float8",))

    def no_scaling(c: Call) -> Tensor:
        return c.query

    with pytest.raises(ValueError, match="registered twice"):
        mutant("scaling_variance")(no_scaling)
    assert MUTANTS["no_scaling"].fn is mutants_module.no_scaling


def test_as_sdpa_passes_the_contract_to_one_call() -> None:
    calls: list[Call] = []

    def body(c: Call) -> Tensor:
        """Records its call."""
        calls.append(c)
        return c.query

    fn = as_sdpa(body)
    assert (fn.__name__, fn.__doc__) == ("body", "Records its call.")
    q, k, v, _ = F64.replace(Hq=4, Hkv=2).tensors()
    mask = torch.ones(F64.L, F64.S, dtype=torch.bool)  # (L, S)
    assert fn(q, k, v, mask, 0.25, True, 0.5, True) is q
    assert fn(q, k, v, scale=0.5) is q
    positional, keywords = calls
    got = (positional.query, positional.key, positional.value, positional.attn_mask)
    assert all(a is b for a, b in zip(got, (q, k, v, mask), strict=True))  # the caller's tensors, not copies
    assert positional.kwargs() | {"attn_mask": None} == {
        "attn_mask": None,
        "dropout_p": 0.25,
        "is_causal": True,
        "scale": 0.5,
        "enable_gqa": True,
    }
    assert keywords.kwargs() == {
        "attn_mask": None,
        "dropout_p": 0.0,
        "is_causal": False,
        "scale": 0.5,
        "enable_gqa": False,
    }
    assert positional.qkv()[1].shape == (F64.B, 4, F64.S, F64.E)  # GQA: kv heads expanded to Hq
    assert keywords.softmax_scale == 0.5 and positional.replace(scale=None).softmax_scale == F64.E**-0.5


def differs(fn: Fn, p: Problem, **overrides: object) -> None:
    out, ref = run(fn, p, **overrides)
    assert not close(out, ref), f"{fn.__name__} agrees with the reference on {p.describe()}"


def agrees(fn: Fn, p: Problem, **overrides: object) -> None:
    out, ref = run(fn, p, **overrides)
    assert_matches(fn.__name__, out, ref, f"clean input {p.describe()}")


def output_demo(bug: Problem, clean: Problem | None = None) -> Callable[[Fn], None]:
    """The mutant differs from the reference on ``bug`` and (if given) agrees with it on ``clean``."""

    def demo(fn: Fn) -> None:
        differs(fn, bug)
        if clean is not None:
            agrees(fn, clean)

    return demo


MASKED = F64.replace(mask="bool", mask_shape="BHLS", masked_rows=2, seed=7)


def demo_nan_masked_rows(fn: Fn) -> None:
    """NaN exactly in the fully masked rows, everything else (output and gradients) exact: wrong only by
    the declaration of zeros."""
    assert MUTANTS["nan_masked_rows"].caps == Capabilities(masked_rows="zeros")
    out, grad = grads(fn, MASKED)
    q, k, v, mask = MASKED.tensors()
    rows = admissible_rows(MASKED, mask).expand_as(out)
    assert out[~rows].isnan().all() and not out[rows].isnan().any()
    ref = reference(q, k, v, attn_mask=mask)
    assert_matches("nan_masked_rows", out[rows], ref[rows], "admissible rows")
    assert all(torch.isfinite(g).all() for g in grad)


def demo_nan_grad_other_rows(fn: Fn) -> None:
    """dV is NaN (it sums over every row, the NaN weights too), although the loss uses admissible rows only."""
    _, (_, _, dv) = grads(fn, MASKED)
    assert dv.isnan().any(), "dV should be poisoned by the fully masked rows"
    assert ref_grads(MASKED)[2].isfinite().all()


def demo_nan_grad_forward_clean(fn: Fn) -> None:
    """Forward equals the reference (zeros in the masked rows), backward is NaN."""
    out, ref = run(fn, MASKED)
    assert_matches("nan_grad_masked_rows", out, ref, "forward")
    demo_nan_grad_other_rows(fn)


def demo_masked_value_nan(fn: Fn) -> None:
    """NaN in the values of padded keys ((B, 1, 1, S) key-padding mask) reaches every row of that batch."""
    p = F64.replace(mask="bool", mask_shape="B11S", seed=11)
    q, k, v, mask = p.tensors()
    assert mask is not None
    pad = ~mask[:, :, 0, :]  # (B, 1, 1, S) -> (B, 1, S)
    ref = reference(q, k, v, attn_mask=mask)
    agrees(fn, p)  # finite values: right
    out = fn(q, k, v.masked_fill(pad.unsqueeze(-1), float("nan")), attn_mask=mask)  # pad (B, 1, S) -> (B, 1, S, 1)
    assert out.isnan().any() and not ref.isnan().any()
    k_nan = k.masked_fill(pad.unsqueeze(-1), float("nan"))  # (B, Hkv, S, E), NaN at padded keys
    assert_matches("masked_value_nan_leak", fn(q, k_nan, v, attn_mask=mask), ref, "NaN keys are masked right")


def demo_finite_neg_inf(fn: Fn) -> None:
    """A masked key whose score exceeds the admissible ones by more than 1e4 revives."""
    p = Problem(B=1, Hq=1, Hkv=1, L=1, S=4, E=4, Ev=4, dtype="float64", seed=4)
    q, k, v, _ = p.tensors()
    mask = torch.tensor([[True, True, False, False]])  # (L, S)
    k = torch.cat([k[..., :2, :], 1e4 * q.expand(1, 1, 2, 4)], dim=-2)  # (1, 1, S, E): masked keys aligned with q
    ref = reference(q, k, v, attn_mask=mask)
    out = fn(q, k, v, attn_mask=mask)
    assert not close(out, ref), "masked keys with huge scores should revive under a -1e4 fill"
    agrees(fn, F64.replace(mask="bool", mask_shape="BHLS", seed=5))  # ordinary scores: exp(-1e4) = 0


def demo_fp16_overflow(fn: Fn) -> None:
    """float16 dot products beyond 65504 give inf and NaN; the float64 oracle (and float32) is finite."""
    p = F64.replace(dtype="float16", magnitude=100.0, E=64, Ev=4)
    q, k, _, _ = p.tensors()
    raw = q.double() @ k.double().transpose(-2, -1)  # (B, H, L, E) @ (B, H, E, S) -> (B, H, L, S)
    assert raw.abs().max() > 65504
    out, ref = run(fn, p)
    assert torch.isfinite(ref).all() and not torch.isfinite(out).all()
    agrees_within_budget(fn, p.replace(dtype="float32"))


def agrees_within_budget(fn: Fn, p: Problem) -> None:
    q, k, v, mask = p.tensors()
    kwargs = p.call_kwargs(mask)
    out = fn(q, k, v, **kwargs)
    ref = reference(q.double(), k.double(), v.double(), **kwargs)
    b = output_budget(q, k, v, ref, **kwargs)
    err = (out.double() - ref).abs().max().item()
    assert err <= b.value, f"{fn.__name__}: error {err:.3g} > budget {b.explain()} on {p.describe()}"


def demo_no_max_subtraction(fn: Fn) -> None:
    """float32 logits of several hundred overflow exp: inf / inf = NaN."""
    p = F64.replace(dtype="float32", magnitude=30.0, E=16)
    out, ref = run(fn, p)
    assert torch.isfinite(ref).all() and not torch.isfinite(out).all()
    agrees_within_budget(fn, p.replace(magnitude=1.0))


def demo_wrong_backward(fn: Fn) -> None:
    """Forward exact, dQ and dK wrong, dV right."""
    p = F64.replace(mask="float", mask_shape="B1LS", Hq=4, Hkv=2)
    out, (dq, dk, dv) = grads(fn, p)
    rq, rk, rv = ref_grads(p)
    assert_matches("wrong_softmax_backward", out, run(reference, p)[1], "forward")
    assert_matches("wrong_softmax_backward", dv, rv, "dV", atol=1e-9)
    assert not close(dq, rq) and not close(dk, rk)


def demo_dropout_always_on(fn: Fn) -> None:
    """dropout_p = 0, and still the output depends on torch's RNG state (reseeding reproduces it)."""
    q, k, v, _ = F64.tensors()
    torch.manual_seed(0)
    a = fn(q, k, v)
    torch.manual_seed(1)
    b = fn(q, k, v)
    torch.manual_seed(0)
    c = fn(q, k, v)
    assert not torch.equal(a, b) and torch.equal(a, c)
    assert not close(a, reference(q, k, v))


def demo_jitter(fn: Fn) -> None:
    """Two calls under the same torch seed disagree (the noise does not come from torch's RNG)."""
    q, k, v, _ = F64.tensors()
    torch.manual_seed(0)
    a = fn(q, k, v)
    torch.manual_seed(0)
    b = fn(q, k, v)
    assert not torch.equal(a, b)
    assert close(a, reference(q, k, v), atol=1e-2)  # close, but not equal


def demo_mutates_input(fn: Fn) -> None:
    """The output is right, the caller's query is left scaled by 1/sqrt(E)."""
    q, k, v, _ = F64.tensors()
    ref = reference(q, k, v)
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    out = fn(q, k, v)
    assert_matches("mutates_input", out, ref, "first call")
    assert torch.equal(k, k0) and torch.equal(v, v0)
    assert not torch.equal(q, q0), "query should have been modified in place"
    assert torch.allclose(q, q0 / 2.0)  # E = 4: scale 1/2


def demo_stale_buffer(fn: Fn) -> None:
    """Two identical calls disagree: the second adds the first call's scores."""
    mutants_module._SCORE_BUFFERS.clear()
    p = F64.replace(seed=21)
    q, k, v, _ = p.tensors()
    ref = reference(q, k, v)
    first = fn(q, k, v)
    second = fn(q, k, v)
    assert_matches("stale_score_buffer", first, ref, "first call")
    assert not close(second, ref)
    mutants_module._SCORE_BUFFERS.clear()


def demo_dropout_not_rescaled(fn: Fn) -> None:
    """With V = identity the kept weights equal P, not P / (1 - p): rows sum to about 1 - p."""
    assert MUTANTS["dropout_not_rescaled"].caps == Capabilities(dropout=True)
    p = Problem(B=2, Hq=2, Hkv=2, L=16, S=16, E=4, Ev=16, dtype="float64", seed=2)
    q, k, _, _ = p.tensors()
    v = torch.eye(p.S, dtype=torch.float64).expand(p.B, p.Hkv, p.S, p.S)  # (B, Hkv, S, S)
    weights = reference(q, k, v)  # (B, H, L, S)
    torch.manual_seed(0)
    dropped = fn(q, k, v, dropout_p=0.5)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], weights[kept])  # no 1/(1-p)
    assert abs(dropped.sum(-1).mean().item() - 0.5) < 0.1  # inverted dropout would give 1
    agrees(fn, F64)


def demo_float64_returns_float32(fn: Fn) -> None:
    """float64 in, float32 out, with float32-level values."""
    out, ref = run(fn, F64)
    assert out.dtype == torch.float32
    assert float((out.double() - ref).abs().max()) < 1e-5


def demo_dropout_renormalised(fn: Fn) -> None:
    """With V = identity each dropped row sums to exactly one (renormalised), not about one in expectation."""
    p = Problem(B=2, Hq=2, Hkv=2, L=16, S=16, E=4, Ev=16, dtype="float64", seed=2)
    q, k, _, _ = p.tensors()
    v = torch.eye(p.S, dtype=torch.float64).expand(p.B, p.Hkv, p.S, p.S)  # (B, Hkv, S, S)
    torch.manual_seed(0)
    dropped = fn(q, k, v, dropout_p=0.5)
    assert torch.allclose(dropped.sum(-1), torch.ones(p.B, p.Hq, p.L, dtype=torch.float64))
    weights = reference(q, k, v)  # (B, H, L, S)
    kept = dropped != 0
    assert not torch.allclose(dropped[kept], weights[kept] / 0.5)  # not the inverted-dropout rescale
    agrees(fn, F64)


def demo_softmax_wrong_axis(fn: Fn) -> None:
    """With V = ones the output is the row sums of the weights: not one."""
    q, k, _, _ = F64.tensors()
    v = torch.ones(F64.B, F64.Hkv, F64.S, 1, dtype=torch.float64)  # (B, Hkv, S, 1)
    assert not torch.allclose(fn(q, k, v), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(reference(q, k, v), torch.ones(1, dtype=torch.float64))


def demo_sink(fn: Fn) -> None:
    """Rows sum to less than one (V = ones), and a per-row shift of the scores changes the output."""
    q, k, _, _ = F64.tensors()
    v = torch.ones(F64.B, F64.Hkv, F64.S, 1, dtype=torch.float64)  # (B, Hkv, S, 1)
    assert (fn(q, k, v) < 1 - 1e-6).all()
    differs(fn, F64)


BUG_CAUSAL = F64.replace(is_causal=True, L=3, S=7)
SQUARE_CAUSAL = F64.replace(is_causal=True, L=6, S=6)
BOOL_BHLS = F64.replace(mask="bool", mask_shape="BHLS", seed=5)

DEMOS: dict[str, Callable[[Fn], None]] = {
    "nan_masked_rows": demo_nan_masked_rows,
    "naive_softmax_masked_rows": demo_nan_grad_other_rows,
    "nan_grad_masked_rows": demo_nan_grad_forward_clean,
    "masked_value_nan_leak": demo_masked_value_nan,
    "finite_neg_inf_mask": demo_finite_neg_inf,
    "bool_mask_inverted": output_demo(BOOL_BHLS, clean=BOOL_BHLS.replace(mask="float")),
    "mask_after_softmax": output_demo(BOOL_BHLS, clean=F64),
    "mask_batch0_broadcast": output_demo(
        BOOL_BHLS.replace(mask_shape="B1LS"), clean=BOOL_BHLS.replace(mask_shape="LS")
    ),
    "mask_head0_broadcast": output_demo(BOOL_BHLS, clean=BOOL_BHLS.replace(mask_shape="B1LS")),
    "mask_times_scale": output_demo(BOOL_BHLS.replace(mask="float"), clean=BOOL_BHLS),
    "bottom_right_causal": output_demo(BUG_CAUSAL, clean=SQUARE_CAUSAL),
    "causal_prefill_offset": output_demo(BUG_CAUSAL, clean=SQUARE_CAUSAL),
    "decode_skips_causal": output_demo(BUG_CAUSAL.replace(L=1), clean=BUG_CAUSAL),
    "causal_shows_next_token": output_demo(SQUARE_CAUSAL, clean=F64),
    "causal_hides_diagonal": output_demo(SQUARE_CAUSAL, clean=F64),
    "scale_twice": output_demo(F64, clean=F64.replace(scale=1.0)),
    "custom_scale_ignored": output_demo(F64.replace(scale=0.125), clean=F64),
    "no_scaling": output_demo(F64, clean=F64.replace(scale=1.0)),
    "inverse_dk_scale": output_demo(F64, clean=F64.replace(scale=0.3)),
    "inverse_sqrt_seq_len_scale": output_demo(F64, clean=F64.replace(scale=0.3)),
    "fp16_qk_overflow": demo_fp16_overflow,
    "softmax_no_max_subtraction": demo_no_max_subtraction,
    "sink_double_counted": demo_sink,
    "tail_tile_dropped": output_demo(F64.replace(S=17), clean=F64.replace(S=16)),
    "softmax_wrong_axis": demo_softmax_wrong_axis,
    "batch_coupled_softmax": output_demo(F64, clean=F64.replace(B=1)),
    "heads_mixed": output_demo(F64, clean=F64.replace(Hq=1, Hkv=1)),
    "gqa_tiling": output_demo(F64.replace(Hq=4, Hkv=2), clean=F64.replace(Hq=4, Hkv=1)),
    "strided_as_contiguous": output_demo(F64.replace(layout="transposed"), clean=F64.replace(layout="expanded")),
    "wrong_softmax_backward": demo_wrong_backward,
    "dropout_always_on": demo_dropout_always_on,
    "nondeterministic_jitter": demo_jitter,
    "mutates_input": demo_mutates_input,
    "stale_score_buffer": demo_stale_buffer,
    "dropout_not_rescaled": demo_dropout_not_rescaled,
    "masked_chunk_poisons_row": output_demo(BUG_CAUSAL, clean=F64),
    "causal_alignment_switches": output_demo(BUG_CAUSAL, clean=SQUARE_CAUSAL),
    "float64_returns_float32": demo_float64_returns_float32,
    "dropout_renormalised": demo_dropout_renormalised,
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_bug_is_real(name: str) -> None:
    DEMOS[name](MUTANTS[name].fn)


# Clean inputs on which every deterministic, stateless mutant must agree with the reference: its bug needs
# something these do not have (masks, causality, GQA, several heads or batch elements, large logits...).
PLAIN = Problem(B=1, Hq=1, Hkv=1, L=4, S=4, E=1, Ev=3, dtype="float64", scale=None, seed=9)
NOT_CLEAN_ON_PLAIN = {
    "inverse_sqrt_seq_len_scale",  # 1/sqrt(S) = 1/2, while E = 1 makes the other scale bugs vanish
    "softmax_wrong_axis",
    "sink_double_counted",
    "dropout_always_on",
    "nondeterministic_jitter",
    "float64_returns_float32",  # its bug is the dtype it returns, on every input
}


@pytest.mark.parametrize("name", [n for n in MUTANTS if n not in NOT_CLEAN_ON_PLAIN])
def test_mutant_is_otherwise_correct_on_a_plain_problem(name: str) -> None:
    """Single batch, single head, square, E = 1 (scale 1), no mask: every other mutant is exact here."""
    if name == "stale_score_buffer":
        mutants_module._SCORE_BUFFERS.clear()
    try:
        agrees(MUTANTS[name].fn, PLAIN)
    finally:
        mutants_module._SCORE_BUFFERS.clear()
