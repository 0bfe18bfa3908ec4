"""batch_and_head_independence: batch elements and heads are separate problems.

A slice of the batch or of the heads gives the same result as the whole (nothing crosses batch elements or
heads, docs/bugs.md #13), and grouped-query attention equals explicit ``repeat_interleave`` of K and V
(query head h reads kv head h // (Hq / Hkv), not h % Hkv: docs/bugs.md #12).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, require
from attncheck.properties.contract import Target
from attncheck.properties.oracle import expect
from attncheck.properties.problems import PRECISE, problems


def _slice(mask: torch.Tensor | None, dim: int, index: int, full: int) -> torch.Tensor | None:
    """mask[..., index:index+1 along dim] where the mask is not broadcast along dim (4-D masks only)."""
    if mask is None or mask.dim() < 4 or mask.size(dim) != full:
        return mask
    return mask.narrow(dim, index, 1)


@prop("batch_and_head_independence")
@given(data=st.data())
def test_batch_slice_equals_whole(target: Target, data: st.DataObject) -> None:
    """out[b] computed alone equals out[b] computed with the whole batch."""
    p = data.draw(problems(target.caps, dtypes=PRECISE).map(lambda p: p.replace(B=max(p.B, 2))), label="problem")
    b = data.draw(st.integers(0, p.B - 1), label="b")
    q, k, v, mask = p.tensors(target.device)
    whole = target(q, k, v, **p.call_kwargs(mask))
    alone = target(q[b : b + 1], k[b : b + 1], v[b : b + 1], **p.call_kwargs(_slice(mask, 0, b, p.B)))
    align = target.caps.alignment
    _, tol = expect(q, k, v, mask, align, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale)
    assert_close(alone, whole[b : b + 1], tol, f"batch element {b} alone vs within the batch of {p.B}", p)


@prop("batch_and_head_independence")
@given(data=st.data())
def test_head_slice_equals_whole(target: Target, data: st.DataObject) -> None:
    """Query head h computed alone (with its kv head) equals head h computed with all heads."""
    p = data.draw(
        problems(target.caps, dtypes=PRECISE, gqa=False).map(lambda p: p.replace(Hq=max(p.Hq, 2), Hkv=max(p.Hq, 2))),
        label="problem",
    )
    h = data.draw(st.integers(0, p.Hq - 1), label="h")
    q, k, v, mask = p.tensors(target.device)
    whole = target(q, k, v, **p.call_kwargs(mask))
    alone = target(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], **p.call_kwargs(_slice(mask, 1, h, p.Hq)))
    align = target.caps.alignment
    _, tol = expect(q, k, v, mask, align, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale)
    assert_close(alone, whole[:, h : h + 1], tol, f"head {h} alone vs within {p.Hq} heads", p)


@prop("batch_and_head_independence")
@given(data=st.data())
def test_gqa_equals_repeat_interleave(target: Target, data: st.DataObject) -> None:
    """enable_gqa with Hkv < Hq equals passing K and V repeat_interleave'd to Hq heads."""
    require(bool(target.caps.gqa), "target declares no GQA")
    p = data.draw(problems(target.caps, dtypes=PRECISE).filter(lambda p: p.gqa), label="problem")
    q, k, v, mask = p.tensors(target.device)
    group = p.Hq // p.Hkv
    out = target(q, k, v, **p.call_kwargs(mask))
    k_rep = k.repeat_interleave(group, dim=1)  # (B, Hkv, S, E) -> (B, Hq, S, E)
    v_rep = v.repeat_interleave(group, dim=1)  # (B, Hkv, S, Ev) -> (B, Hq, S, Ev)
    explicit = target(q, k_rep, v_rep, **{**p.call_kwargs(mask), "enable_gqa": False})
    align = target.caps.alignment
    _, tol = expect(q, k, v, mask, align, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale)
    assert_close(out, explicit, tol, f"GQA ({p.Hq} query heads on {p.Hkv} kv heads) vs repeat_interleave", p)
