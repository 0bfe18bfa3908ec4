"""mask_semantics: masks mean what the contract says, however they are expressed or broadcast.

A boolean mask (True = takes part) equals the additive mask 0 / -inf; an all-True mask equals no mask; keys
that no query may see are irrelevant, whatever their contents; and a mask broadcast over batch or heads
equals the same mask materialised to (B, Hq, L, S) (docs/bugs.md #3, #13, #16).
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, observe, require
from attncheck.properties.contract import Target
from attncheck.properties.oracle import expect
from attncheck.properties.problems import PRECISE, Problem, full_mask_problem, problems


def _with_dead_key(p: Problem, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the last key for every query (key 0 stays admissible); return (mask, dead (B, Hkv, S))."""
    if mask.dtype == torch.bool:
        mask = mask.clone()
        mask[..., 0], mask[..., -1] = True, False  # (..., L, S): key 0 seen by all, key S-1 by none
    else:
        mask = mask.clone()
        mask[..., 0], mask[..., -1] = 0.0, float("-inf")
    dead = torch.zeros(p.B, p.Hkv, p.S, dtype=torch.bool)  # (B, Hkv, S)
    dead[..., -1] = True
    return mask, dead


def _overwrite(x: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    """Copy of x (B, H, S, D) with rows where[b, h, s] set to ``value``."""
    return x.clone().masked_fill(where.unsqueeze(-1).to(x.device), value)  # (B, H, S, D)


@prop("mask_semantics")
@given(data=st.data())
def test_bool_mask_equals_additive_mask(target: Target, data: st.DataObject) -> None:
    """A boolean mask and the float mask 0 / -inf built from it give the same output."""
    require({"bool", "float"} <= target.caps.masks, "needs both bool and float masks")
    p = data.draw(problems(target.caps, dtypes=PRECISE, masks=("bool",)), label="problem")
    q, k, v, mask = p.tensors(target.device)
    assert mask is not None
    additive = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    out_bool = target(q, k, v, **p.call_kwargs(mask))
    out_float = target(q, k, v, **p.call_kwargs(additive))
    _, tol = expect(q, k, v, mask, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out_float, out_bool, tol, "output with float 0/-inf mask vs the same boolean mask", p)


@prop("mask_semantics")
@given(data=st.data())
def test_all_true_mask_equals_no_mask(target: Target, data: st.DataObject) -> None:
    """An all-True boolean mask (or all-zero float mask) equals no mask (catches inverted polarity)."""
    require(bool(target.caps.masks), "target declares no mask support")
    p = data.draw(problems(target.caps, dtypes=PRECISE, masks=("none",), causal=False), label="problem")
    kind = data.draw(st.sampled_from(sorted(target.caps.masks)), label="mask kind")
    q, k, v, _ = p.tensors(target.device)
    shapes = {"full": (p.B, 1, p.L, p.S), "key_padding": (p.B, 1, 1, p.S), "LS": (p.L, p.S)}
    shape = next(shapes[kind] for kind in shapes if kind in target.caps.mask_shapes)
    full = (torch.ones(shape, dtype=torch.bool) if kind == "bool" else torch.zeros(shape, dtype=q.dtype)).to(q.device)
    out = target(q, k, v, **p.call_kwargs(None))
    out_masked = target(q, k, v, **p.call_kwargs(full))
    ref, tol = expect(q, k, v, None, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out_masked, ref, tol, f"output with an all-admissible {kind} mask vs the float64 oracle", p)
    assert_close(out_masked, out, tol, f"output with an all-admissible {kind} mask vs no mask", p)


def _check_masked_keys_overwritten(target: Target, data: st.DataObject, k_fill: float | None, v_fill: float) -> None:
    """Write ``k_fill``/``v_fill`` into the key and value of a key no query may see: the output must not move.

    ``k_fill`` None writes the dtype's safe "huge" value (100 in float16, else 1e4) and -huge into the value.
    Non-finite fills that reach the output only as NaN/inf (0 x NaN in P V, as torch SDPA does) are observed and
    reported unless the target declares ``masked_values="ignored"`` (docs/design.md, "The target contract").
    """
    require(bool(target.caps.masks), "target declares no mask support")
    p = data.draw(
        problems(target.caps, dtypes=PRECISE, masks=("bool", "float"), causal=False, min_keys=2), label="problem"
    )
    q, k, v, mask = p.tensors(target.device)
    assert mask is not None
    mask, dead = _with_dead_key(p, mask)
    if k_fill is None:
        k_fill = 100.0 if q.dtype == torch.float16 else 1e4
        v_fill = -k_fill
    out = target(q, k, v, **p.call_kwargs(mask))
    out_dirty = target(q, _overwrite(k, dead, k_fill), _overwrite(v, dead, v_fill), **p.call_kwargs(mask))
    _, tol = expect(q, k, v, mask, "top-left", target.precision(q.dtype), scale=p.scale)
    what = f"output after writing {k_fill:g} into masked keys and {v_fill:g} into their values"
    if math.isfinite(k_fill) or target.caps.masked_values == "ignored":
        assert_close(out_dirty, out, tol, what, p)
        return
    reached = torch.isfinite(out) & ~torch.isfinite(out_dirty)  # (B, Hq, L, Ev): a NaN or inf that got through
    observe(target, "masked values", "NaN/inf reaches the output" if bool(reached.any()) else "never reach the output")
    assert_close(out_dirty, out, tol, what, p, where=~reached)  # every other output entry must not move


@prop("mask_semantics")
@given(data=st.data())
def test_masked_keys_irrelevant(target: Target, data: st.DataObject) -> None:
    """Overwriting keys and values that no query may see with huge values changes nothing."""
    _check_masked_keys_overwritten(target, data, None, 0.0)


@prop("mask_semantics")
@given(data=st.data())
def test_masked_keys_nonfinite_irrelevant(target: Target, data: st.DataObject) -> None:
    """NaN and inf in keys and values that no query may see: observed, judged where declared (docs/bugs.md #3)."""
    _check_masked_keys_overwritten(target, data, float("nan"), float("inf"))


@prop("mask_semantics")
@given(data=st.data())
def test_broadcast_mask_equals_materialised(target: Target, data: st.DataObject) -> None:
    """A mask broadcast over batch or heads equals the same mask expanded and copied to (B, Hq, L, S)."""
    p, q, k, v, mask = full_mask_problem(target, data)
    full = mask.expand(p.B, p.Hq, p.L, p.S).contiguous()  # (..., L, S) broadcast -> (B, Hq, L, S)
    out = target(q, k, v, **p.call_kwargs(mask))
    ref, tol = expect(q, k, v, full, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out, ref, tol, f"output with a {p.mask_shape} broadcast mask vs the oracle with it materialised", p)
    out_full = target(q, k, v, **p.call_kwargs(full))
    assert_close(out_full, out, tol, f"output with the materialised mask vs the {p.mask_shape} broadcast one", p)
