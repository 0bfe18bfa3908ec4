"""decode: attention of new queries over a KV cache equals dense attention on the sliced cache.

The entry of docs/design.md, "Beyond SDPA": query (B, Lq, Hq, E), a cache of capacity S_cap per sequence,
contiguous (B, S_cap, Hkv, D) or paged (num_blocks, page_size, Hkv, D) with ``block_table``, and int32
``cache_seqlens`` (B,). Sequence b's keys are its first ``cache_seqlens[b]`` cache entries; its Lq queries are its
last Lq positions (causal aligned bottom-right). The real bugs (output depending on the allocated capacity,
reading past cache_seqlens, a block table treated as the identity, an off-by-one page index, a hard-coded page
size, a split-KV merge that drops a split) each break one of:

* the output equals the dense float64 oracle on each sequence's sliced cache, with NaN in every cache entry past
  ``cache_seqlens`` and in every block outside the table (none may be read);
* the same sequences in a larger cache give the same output;
* N decode steps of one query equal one causal prefill of the N queries;
* a paged cache gives the same output under another block-table permutation and another page size.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, require
from attncheck.properties.contract import Target
from attncheck.properties.packed import (
    PAGE_SIZES,
    DecodeProblem,
    decode_problems,
    expected,
    judge_empty_rows,
    judge_lse,
)
from attncheck.properties.problems import seeds


def _require_decode(target: Target) -> None:
    require(target.caps.entry == "decode", f"the target's entry is {target.caps.entry} (--cap entry=decode)")


def _call(target: Target, p: DecodeProblem, **changes: object):  # type: ignore[no-untyped-def]
    return target.decode(*p.tensors(target.device), **(p.features(target.device) | changes))


@prop("decode")
@given(data=st.data())
def test_decode_equals_attention_on_the_sliced_cache(target: Target, data: st.DataObject) -> None:
    """Each sequence's queries equal the dense oracle on its first cache_seqlens keys; NaN past cache_seqlens
    and in unused blocks is never read."""
    _require_decode(target)
    p = data.draw(decode_problems(target.caps), label="problem")
    out = _call(target, p)
    ref, tol, live = expected(target, p)
    assert_close(out, ref, tol, f"decode output vs the sliced cache (float64 oracle): {p.format()}", None, live)
    judge_empty_rows(target, out, live, p, torch.ones_like(live))


@prop("decode")
@given(data=st.data(), extra=st.sampled_from((1, 7, 64)))
def test_output_does_not_depend_on_capacity(target: Target, data: st.DataObject, extra: int) -> None:
    """The same sequences in a cache with more room (NaN in the extra entries) give the same output."""
    _require_decode(target)
    p = data.draw(decode_problems(target.caps), label="problem")
    out = _call(target, p)
    bigger = _call(target, p.replace(capacity=p.capacity + extra))
    _, tol, live = expected(target, p)
    assert_close(
        bigger, out, tol, f"output with capacity {p.capacity + extra} vs {p.capacity}: {p.format()}", None, live
    )


@prop("decode")
@given(data=st.data(), steps=st.integers(2, 4))
def test_decode_steps_equal_causal_prefill(target: Target, data: st.DataObject, steps: int) -> None:
    """Decoding N queries one at a time (cache_seqlens growing by one) equals one causal call with the N queries
    (bottom-right: query t sees the keys up to its own position)."""
    _require_decode(target)
    require(target.caps.causal is not None, "the target declares no is_causal")
    p = data.draw(decode_problems(target.caps, Lq=steps), label="problem")
    p = p.replace(is_causal=True, seqlens=tuple(max(n, steps) for n in p.seqlens))
    p = p.replace(capacity=max(p.capacity, *p.seqlens))
    prefill = _call(target, p)  # (B, N, Hq, Ev)
    q, k_cache, v_cache, lengths = p.tensors(target.device)
    features = p.features(target.device)
    _, tol, _ = expected(target, p)
    for t in range(steps):
        step = target.decode(q[:, t : t + 1], k_cache, v_cache, lengths - (steps - 1 - t), **features)  # (B, 1, Hq, Ev)
        assert_close(
            step, prefill[:, t : t + 1], tol, f"decode step {t} of {steps} vs the causal prefill: {p.format()}", None
        )


@prop("decode")
@given(data=st.data(), page_size=st.sampled_from(PAGE_SIZES), table_seed=seeds)
def test_paged_cache_is_layout_independent(
    target: Target, data: st.DataObject, page_size: int, table_seed: int
) -> None:
    """The same cache paged with another page size and another block-table permutation gives the same output."""
    _require_decode(target)
    require(target.caps.paged, "the target reads a contiguous cache (--cap paged=yes)")
    p = data.draw(decode_problems(target.caps), label="problem")
    out = _call(target, p)
    other = _call(target, p.replace(page_size=page_size, table_seed=table_seed))
    _, tol, live = expected(target, p)
    what = f"output with page size {page_size} and block-table seed {table_seed} vs page size {p.page_size}"
    assert_close(other, out, tol, f"{what}: {p.format()}", None, live)


@prop("decode")
@given(data=st.data())
def test_decode_lse_equals_the_sliced_cache(target: Target, data: st.DataObject) -> None:
    """With ``return_lse`` (declared ``lse``): lse (B, Hq, Lq) equals the logsumexp of each sequence's sliced cache
    (natural log, the sink included), as for the dense entry; sequences without keys have the declared lse_empty."""
    _require_decode(target)
    require("lse" in target.caps.features, "the target does not declare lse (--feature lse)")
    p = data.draw(decode_problems(target.caps), label="problem")
    out, lse = _call(target, p, return_lse=True)
    ref, tol, live = expected(target, p)
    assert_close(out, ref, tol, f"decode output with return_lse vs the sliced cache: {p.format()}", None, live)
    judge_lse(target, p, lse, torch.ones_like(lse, dtype=torch.bool))
