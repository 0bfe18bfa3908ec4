"""layout_invariance: memory layout is not semantics.

Transposed (BLHD storage), sliced (stride 2) and expanded (stride 0 over the batch) inputs, and a stride-0
expanded mask, give the same result as contiguous copies (docs/bugs.md #14).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, require
from attncheck.properties.contract import Target
from attncheck.properties.oracle import expect
from attncheck.properties.problems import PRECISE, full_mask_problem, problems


@prop("layout_invariance")
@given(data=st.data())
def test_strided_inputs_equal_contiguous(target: Target, data: st.DataObject) -> None:
    """Non-contiguous q, k, v (and mask) give the same output as their contiguous copies."""
    require(bool(target.caps.strided_inputs), "target declares no strided inputs")
    p = data.draw(problems(target.caps, dtypes=PRECISE, layouts=("transposed", "sliced", "expanded")), label="problem")
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask))
    contiguous_mask = None if mask is None else mask.contiguous()
    out_c = target(q.contiguous(), k.contiguous(), v.contiguous(), **p.call_kwargs(contiguous_mask))
    align = target.caps.alignment
    _, tol = expect(q, k, v, mask, align, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale)
    assert_close(out, out_c, tol, f"output for {p.layout} inputs vs contiguous copies", p)


@prop("layout_invariance")
@given(data=st.data())
def test_expanded_mask_equals_contiguous(target: Target, data: st.DataObject) -> None:
    """A mask expanded with stride 0 to (B, Hq, L, S) equals its contiguous copy."""
    p, q, k, v, mask = full_mask_problem(target, data)
    expanded = mask.expand(p.B, p.Hq, p.L, p.S)  # broadcast shape -> (B, Hq, L, S), stride 0 where broadcast
    out = target(q, k, v, **p.call_kwargs(expanded))
    out_c = target(q, k, v, **p.call_kwargs(expanded.contiguous()))
    _, tol = expect(q, k, v, mask, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out, out_c, tol, f"output with a stride-0 expanded {p.mask_shape} mask vs its contiguous copy", p)
