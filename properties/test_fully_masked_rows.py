"""fully_masked_rows: rows with no admissible key are harmless, whatever the target returns for them.

Softmax over an empty set is undefined, so the output of a fully masked row is implementation-defined. The
suite observes the convention (zeros, NaN, the mean of V as a uniform softmax would give, or other) and
reports it; it fails a target only if (a) the target declared a convention it does not keep, or (b) the
masked rows affect the *other* rows: their outputs must match the oracle and their gradients must be
finite (NaN from a masked row must not poison dK and dV of the batch; docs/bugs.md #1, #2, #24).
"""

from __future__ import annotations

import torch
from hypothesis import given, reject
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import check, judge_output, live_rows, require, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.problems import Problem, problems


@prop("fully_masked_rows")
@given(data=st.data())
def test_fully_masked_rows(target: Target, data: st.DataObject) -> None:
    """Convention observed (and kept if declared); other rows match the oracle; their gradients are finite."""
    caps = target.caps
    require(bool(caps.masks), "target declares no mask support")
    always = None if caps.causal == "always" else False  # an always-causal target's rows: mask and triangle
    p = data.draw(
        problems(caps, masks=("bool", "float"), masked_rows=True, causal=always, max_len=33).filter(
            lambda p: p.masked_rows > 0
        ),
        label="problem",
    )
    _judge_rows(target, p)


@prop("fully_masked_rows")
@given(data=st.data())
def test_rows_emptied_by_the_causal_alignment(target: Target, data: st.DataObject) -> None:
    """Bottom-right causal with L > S leaves the first L - S queries no key (FlashAttention's convention): they
    are judged as fully masked rows, whatever the mask; the other rows match the oracle, gradients finite."""
    require(target.caps.causal == "bottom-right", "only a bottom-right causal alignment empties rows (L > S)")
    drawn = problems(target.caps, causal=True, masked_rows=True, max_len=33).filter(lambda p: p.L > p.S)
    _judge_rows(target, data.draw(drawn, label="problem"))


def _judge_rows(target: Target, p: Problem) -> None:
    """Observe (and judge where declared) the rows with no admissible key of ``p``; the other rows against the
    oracle, and the gradients with a zero output gradient on the empty rows finite."""
    caps = target.caps
    q, k, v, mask = p.tensors(target.device)
    lq, lk, lv = leaves = tuple(x.detach().clone().requires_grad_(caps.grad) for x in (q, k, v))
    out = target(lq, lk, lv, **p.call_kwargs(mask))  # (B, Hq, L, Ev)
    align = caps.alignment
    live = live_rows(p, mask, align).to(out.device)  # (B, Hq, L, 1)
    what = "rows with admissible keys, beside fully masked rows, vs the oracle"
    if judge_output(target, p, q, k, v, mask, out, quantity=what, judged=False) is None:  # empty rows judged too
        reject()  # inconclusive: half logits rounded to the input dtype cannot be told from a degenerate output
    if caps.grad and bool(live.any()):
        g = torch.Generator().manual_seed(p.seed + 11)
        d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device) * live
        grads = target_grads(target, out, leaves, d_out)
        found = []  # every non-finite gradient, in one message: dQ, dK and dV are usually poisoned together
        for name, grad in zip(("dQ", "dK", "dV"), grads, strict=True):
            bad = ~torch.isfinite(grad)
            if not bool(bad.any()):
                continue
            if name == "dQ":  # one row per query: say whether the NaN is in the masked rows or beside them
                in_live = int((bad & live).sum())
                where = f"{in_live} in rows with admissible keys" if in_live else "all in the fully masked rows"
                found.append(f"dQ {int(bad.sum())} ({where})")
            else:
                found.append(f"{name} {int(bad.sum())}")
        check(
            not found,
            f"non-finite gradient entries with a zero output gradient on the fully masked rows: {', '.join(found)} "
            "(in training they reach every parameter shared with other rows)",
            p,
        )
