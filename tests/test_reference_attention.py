"""The reference attention (equation (1)) against torch's scaled_dot_product_attention, in float64.

Equality is claimed to the absolute tolerances below (inputs are O(1)): both sides evaluate the same float64
expression in a different order. Observed over these cases and 5 seeds: max |difference| 2.1e-15 for outputs and
3.3e-14 for gradients, so the bounds leave a margin of 3 to 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attncheck.reference.attention import (
    attention,
    causal_mask,
    scaled_dot_product_attention,
    subsequent_mask,
    window_mask,
)

OUT_ATOL = 1e-14
GRAD_ATOL = 1e-13
F64 = torch.float64


@dataclass(frozen=True)
class Case:
    """One comparison: (B, Hq, L, E) queries against (B, Hkv, S, E) keys and (B, Hkv, S, Ev) values."""

    L: int = 5
    S: int = 7
    E: int = 8
    Ev: int = 8
    Hq: int = 3
    Hkv: int = 3
    mask: str = "none"  # "none", "bool" or "float"
    mask_shape: tuple[str, ...] = ("B", "H", "L", "S")  # which of (B, Hq, L, S) the mask spans; "1" = broadcast
    is_causal: bool = False
    scale: float | None = None


B = 2
CASES = {
    "plain": Case(),
    "L>S": Case(L=9, S=4),
    "L<S": Case(L=3, S=11),
    "size1": Case(L=1, S=1, E=1, Ev=1, Hq=1, Hkv=1),
    "Ev!=E": Case(E=6, Ev=10),
    "scale": Case(scale=0.37),
    "causal": Case(L=6, S=6, is_causal=True),
    "causal-L>S": Case(L=8, S=5, is_causal=True),
    "causal-L<S": Case(L=4, S=9, is_causal=True),
    "gqa-6/2": Case(Hq=6, Hkv=2),
    "gqa-6/3-mask": Case(Hq=6, Hkv=3, mask="bool", mask_shape=("B", "1", "L", "S")),
    "bool-LS": Case(mask="bool", mask_shape=("L", "S")),
    "bool-B1LS": Case(mask="bool", mask_shape=("B", "1", "L", "S")),
    "bool-1HLS": Case(mask="bool", mask_shape=("1", "H", "L", "S")),
    "bool-BHLS": Case(mask="bool", mask_shape=("B", "H", "L", "S")),
    "bool-B11S": Case(mask="bool", mask_shape=("B", "1", "1", "S")),
    "bool-L>S": Case(L=9, S=4, mask="bool"),
    "float-LS": Case(mask="float", mask_shape=("L", "S")),
    "float-B1LS": Case(mask="float", mask_shape=("B", "1", "L", "S")),
    "float-BHLS-scale": Case(mask="float", scale=2.5),
    "float-B11S-L<S": Case(L=3, S=10, mask="float", mask_shape=("B", "1", "1", "S")),
}


def make_inputs(case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Random float64 q, k, v (requiring grad) and a mask in which every query row keeps an admissible key."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, case.Hq, case.L, case.E, generator=g, dtype=F64, requires_grad=True)
    k = torch.randn(B, case.Hkv, case.S, case.E, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(B, case.Hkv, case.S, case.Ev, generator=g, dtype=F64, requires_grad=True)
    if case.mask == "none":
        return q, k, v, None
    sizes = {"B": B, "H": case.Hq, "L": case.L, "S": case.S, "1": 1}
    shape = [sizes[d] for d in case.mask_shape]
    keep = torch.rand(shape, generator=g) < 0.6
    keep[..., 0] = True  # no fully masked row: torch's SDPA convention for those rows differs (tested separately)
    if case.mask == "bool":
        return q, k, v, keep
    bias = torch.randn(shape, generator=g, dtype=F64)
    return q, k, v, bias.masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_torch_sdpa_forward_and_backward(case: Case) -> None:
    q, k, v, mask = make_inputs(case)
    kwargs = {"attn_mask": mask, "is_causal": case.is_causal, "scale": case.scale, "enable_gqa": case.Hq != case.Hkv}
    got = scaled_dot_product_attention(q, k, v, **kwargs)  # type: ignore[arg-type]
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)  # type: ignore[arg-type]  # default dispatch
    torch.testing.assert_close(got, expected, atol=OUT_ATOL, rtol=0)
    grad_out = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, (q, k, v), grad_out)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    for name, g, e in zip("qkv", got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=GRAD_ATOL, rtol=0, msg=lambda m, name=name: f"d{name}: {m}")


def test_bool_mask_equals_additive_zero_minus_inf_mask() -> None:
    q, k, v, keep = make_inputs(CASES["bool-BHLS"])
    assert keep is not None
    additive = torch.zeros(keep.shape, dtype=F64).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(attention(q, k, v, keep)[0], attention(q, k, v, additive)[0], atol=0, rtol=0)


def test_causal_masks() -> None:
    assert torch.equal(causal_mask(4, 6), torch.ones(4, 6, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(4, 6, "bottom-right"), torch.ones(4, 6, dtype=torch.bool).tril(2))
    assert torch.equal(causal_mask(6, 4, "bottom-right"), torch.ones(6, 4, dtype=torch.bool).tril(-2))
    assert torch.equal(subsequent_mask(5), torch.ones(1, 5, 5, dtype=torch.bool).tril())


def test_weights_are_a_distribution_with_exact_zeros_where_masked() -> None:
    q, k, v, keep = make_inputs(CASES["bool-BHLS"])
    assert keep is not None
    _, p = attention(q, k, v, keep)
    assert (p >= 0).all(), "negative attention weight"
    assert torch.equal(p[~keep.expand_as(p)], torch.zeros_like(p[~keep.expand_as(p)])), "masked weight not exactly 0"
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1], dtype=F64), atol=4e-16, rtol=0)


def fully_masked_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q (1, 2, 4, 3), k, v (1, 2, 5, 3) and a mask whose query row 1 is fully masked and key 4 is never seen."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 3, generator=g, dtype=F64, requires_grad=True) for n in (4, 5, 5))
    keep = torch.rand(1, 2, 4, 5, generator=g) < 0.7
    keep[..., 0] = True
    keep[..., 1, :] = False
    keep[..., 4] = False
    return q, k, v, keep


def test_fully_masked_rows_give_zeros_and_leave_other_rows_alone() -> None:
    q, k, v, keep = fully_masked_inputs()
    out, p = attention(q, k, v, keep)
    assert torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :])), f"fully masked row: {out[..., 1, :]}"
    assert torch.equal(p[..., 1, :], torch.zeros_like(p[..., 1, :]))
    rows = [0, 2, 3]
    alone, _ = attention(q[..., rows, :], k, v, keep[..., rows, :])
    torch.testing.assert_close(out[..., rows, :], alone, atol=0, rtol=0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    for name, grad in zip("qkv", grads, strict=True):
        assert torch.isfinite(grad).all(), f"non-finite d{name} with a fully masked row"
    assert torch.equal(grads[0][..., 1, :], torch.zeros_like(grads[0][..., 1, :])), "dq of a fully masked row"


def test_nan_in_never_seen_values_does_not_leak_even_with_a_fully_masked_row() -> None:
    q, k, v, keep = fully_masked_inputs()
    clean, _ = attention(q, k, v, keep)
    poisoned = v.detach().clone()
    poisoned[..., 4, :] = float("nan")  # key 4 is masked for every query
    got, _ = attention(q, k, poisoned, keep)
    torch.testing.assert_close(got, clean, atol=0, rtol=0)


@pytest.mark.parametrize("mask", ["none", "bool-with-fully-masked-row", "float"])
def test_gradcheck(mask: str) -> None:
    q, k, v, keep = fully_masked_inputs()
    inputs: tuple[Tensor, ...] = (q, k, v)
    if mask == "bool-with-fully-masked-row":
        inputs = (q, k, v, keep)
    elif mask == "float":
        bias = torch.randn(keep.shape, dtype=F64).masked_fill(~keep, float("-inf"))
        bias[..., 1, 0] = 0.0  # every row admissible, so that all of the float mask is differentiable
        inputs = (q, k, v, bias.requires_grad_())

    def output(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        return attention(q, k, v, mask, scale=0.8)[0]

    assert torch.autograd.gradcheck(output, inputs, eps=1e-6, atol=1e-9, rtol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Features beyond equation (1): window, softcap, sinks, returned lse (docs/design.md, "Beyond SDPA")


def test_window_masks() -> None:
    """(left, right) around the aligned diagonal; -1 leaves a side open; bottom-right shifts the diagonal by S - L."""
    ones = torch.ones(4, 6, dtype=torch.bool)
    assert torch.equal(window_mask(4, 6, (1, 0)), ones.tril() & ones.triu(-1))
    assert torch.equal(window_mask(4, 6, (0, 0)), torch.eye(4, 6, dtype=torch.bool))
    assert torch.equal(window_mask(4, 6, (-1, 2)), ones.tril(2))
    assert torch.equal(window_mask(4, 6, (2, -1)), ones.triu(-2))
    assert torch.equal(window_mask(4, 6, (-1, -1)), ones)
    assert torch.equal(window_mask(4, 6, (1, 0), "bottom-right"), ones.tril(2) & ones.triu(1))
    assert torch.equal(window_mask(6, 4, (0, 0), "bottom-right"), torch.ones(6, 4, dtype=torch.bool).tril(-2).triu(-2))


@pytest.mark.parametrize("case", ["plain", "L>S", "causal-L<S", "gqa-6/2", "bool-B1LS", "float-B11S-L<S"])
def test_window_equals_torch_sdpa_with_the_band_as_mask(case: str) -> None:
    """window=(l, r) = torch SDPA with the band ANDed into the mask (bool) or -inf in it (float), is_causal too."""
    c = CASES[case]
    q, k, v, mask = make_inputs(c)
    window = (1, 2)
    band = window_mask(c.L, c.S, window) & (causal_mask(c.L, c.S) if c.is_causal else True)  # (L, S)
    merged = band if mask is None else mask & band if mask.dtype == torch.bool else mask.masked_fill(~band, -torch.inf)
    kwargs = {"scale": c.scale, "enable_gqa": c.Hq != c.Hkv}
    got = scaled_dot_product_attention(q, k, v, merged, **kwargs)  # type: ignore[arg-type]
    windowed = scaled_dot_product_attention(q, k, v, mask, is_causal=c.is_causal, window=window, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(windowed, got, atol=0, rtol=0)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=merged, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(windowed, expected, atol=OUT_ATOL, rtol=0)  # rows left without a key: zeros in both


def test_softcap_caps_the_scaled_logits_before_the_mask() -> None:
    """c * tanh(scale * q . k / c), then the float mask; masked keys keep weight exactly 0 whatever c is."""
    q, k, v, mask = make_inputs(CASES["float-BHLS-scale"])
    assert mask is not None
    c = 0.5
    s = c * torch.tanh(q @ k.transpose(-2, -1) * 2.5 / c) + mask  # (B, H, L, S)
    out, p = attention(q, k, v, mask, scale=2.5, softcap=c)
    torch.testing.assert_close(p, torch.softmax(s, -1), atol=OUT_ATOL, rtol=0)
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, atol=OUT_ATOL, rtol=0)
    assert (p[mask.isinf().expand_as(p)] == 0).all()


def test_sinks_equal_an_extra_zero_key_with_the_sink_as_logit() -> None:
    """torch SDPA on [K; 0], [V; 0] with a float mask whose last column is the sink = the reference with sinks."""
    c = CASES["gqa-6/2"]
    q, k, v, _ = make_inputs(c)
    sinks = torch.linspace(-2.0, 3.0, c.Hq, dtype=F64)  # (Hq,)
    got, lse = scaled_dot_product_attention(q, k, v, enable_gqa=True, sinks=sinks, return_lse=True)
    zero_k, zero_v = k.new_zeros(B, c.Hkv, 1, c.E), v.new_zeros(B, c.Hkv, 1, c.Ev)  # (B, Hkv, 1, E), (B, Hkv, 1, Ev)
    bias = torch.zeros(B, c.Hq, c.L, c.S + 1, dtype=F64)  # (B, Hq, L, S + 1)
    bias[..., -1] = sinks[:, None]  # q . 0 + sink
    expected = F.scaled_dot_product_attention(
        q, torch.cat([k, zero_k], -2), torch.cat([v, zero_v], -2), attn_mask=bias, enable_gqa=True
    )
    torch.testing.assert_close(got, expected, atol=OUT_ATOL, rtol=0)
    plain, plain_lse = scaled_dot_product_attention(q, k, v, enable_gqa=True, return_lse=True)
    sink = sinks[:, None]  # (Hq, 1), against (B, Hq, L)
    torch.testing.assert_close(lse, torch.logaddexp(plain_lse, sink), atol=OUT_ATOL, rtol=0)
    torch.testing.assert_close(got, plain * torch.sigmoid(plain_lse - sink)[..., None], atol=OUT_ATOL, rtol=0)


def test_lse_is_the_natural_logsumexp_of_the_final_logits() -> None:
    q, k, v, keep = fully_masked_inputs()
    out, lse = scaled_dot_product_attention(q, k, v, keep, scale=0.8, softcap=3.0, return_lse=True)
    s = (3.0 * torch.tanh(q @ k.transpose(-2, -1) * 0.8 / 3.0)).masked_fill(~keep, -torch.inf)  # (1, 2, 4, 5)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1), atol=OUT_ATOL, rtol=0)  # row 1: -inf on both sides
    assert (lse[..., 1] == -torch.inf).all()
    sinks = torch.tensor([0.5, -1.0], dtype=F64)
    out, lse = scaled_dot_product_attention(q, k, v, keep, sinks=sinks, return_lse=True)
    assert torch.equal(lse[..., 1], sinks[None]), "a row whose only logit is the sink has lse = sink"
    assert torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :])), "and output 0 (the sink's value)"


def test_gradients_with_every_feature_are_finite() -> None:
    """gradcheck through window, softcap, sinks and the returned lse, with a row left without keys."""
    q, k, v, keep = fully_masked_inputs()
    sinks = torch.tensor([0.5, -1.0], dtype=F64, requires_grad=True)

    def outputs(q: Tensor, k: Tensor, v: Tensor, sinks: Tensor) -> tuple[Tensor, Tensor]:
        return scaled_dot_product_attention(q, k, v, keep, window=(1, 1), softcap=2.0, sinks=sinks, return_lse=True)

    assert torch.autograd.gradcheck(outputs, (q, k, v, sinks), eps=1e-6, atol=1e-9, rtol=1e-7)
