"""varlen: a packed variable-length call equals each sequence attended alone, and sequences never meet.

The entry of docs/design.md, "Beyond SDPA": query (Tq, Hq, E), key (Tk, Hkv, E), value (Tk, Hkv, Ev) and int32
``cu_seqlens_q/k`` (B + 1,); sequence b owns rows cu[b]:cu[b + 1], sees no other sequence, and rows past
``cu_seqlens[-1]`` are never read. The real bugs (FlashAttention's varlen split-KV using the padded length,
later sequences' rows left unwritten, zero-length segments that crash or shift the others, a document mask off by
one at a border) are all departures from one of these checks:

* each sequence's rows equal the dense float64 oracle on that sequence alone (causal and window aligned within
  the sequence as declared), with NaN in every padding row, which must not be read;
* changing one sequence changes no other sequence's rows, and the gradient of one sequence's rows reaches no
  other sequence (nor the padding);
* reordering the sequences reorders the outputs.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, require, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.packed import VarlenProblem, expected, judge_empty_rows, judge_lse, varlen_problems


def _require_varlen(target: Target) -> None:
    require(target.caps.entry == "varlen", f"the target's entry is {target.caps.entry} (--cap entry=varlen)")


def _rows(p: VarlenProblem) -> torch.Tensor:
    """(Tq + pad, 1, 1) bool: the rows that are queries of some sequence (not padding)."""
    rows = torch.zeros(sum(p.seqlens_q) + p.pad, 1, 1, dtype=torch.bool)
    rows[: sum(p.seqlens_q)] = True
    return rows


def _call(target: Target, p: VarlenProblem) -> torch.Tensor:
    return target.varlen(*p.tensors(target.device), **p.features(target.device))


@prop("varlen")
@given(data=st.data())
def test_varlen_equals_each_sequence_alone(target: Target, data: st.DataObject) -> None:
    """Every sequence's rows equal the dense oracle on that sequence alone; NaN padding is never read."""
    _require_varlen(target)
    p = data.draw(varlen_problems(target.caps), label="problem")
    out = _call(target, p)
    ref, tol, live = expected(target, p)
    where = (live & _rows(p)).to(out.device)  # (Tq + pad, Hq, 1)
    assert_close(out, ref, tol, f"packed output vs each sequence alone (float64 oracle): {p.format()}", None, where)
    judge_empty_rows(target, out, live, p, _rows(p))


@prop("varlen")
@given(data=st.data())
def test_segments_are_isolated(target: Target, data: st.DataObject) -> None:
    """Redrawing sequence j leaves every other sequence's rows as they were; the gradient of sequence i's rows is
    finite on its own queries, keys and values and zero on every other sequence's and on the padding (empty
    segments included)."""
    _require_varlen(target)
    p = data.draw(varlen_problems(target.caps, min_sequences=2), label="problem")
    j = data.draw(st.integers(0, len(p.seqlens_q) - 1), label="changed sequence")
    q, k, v, cu_q, cu_k, max_q, max_k = p.tensors(target.device)
    other = p.replace(seed=p.seed + 1).tensors(target.device)  # the same lengths, other values
    bq, bk = cu_q.tolist(), cu_k.tolist()
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[bq[j] : bq[j + 1]] = other[0][bq[j] : bq[j + 1]]
    k2[bk[j] : bk[j + 1]], v2[bk[j] : bk[j + 1]] = other[1][bk[j] : bk[j + 1]], other[2][bk[j] : bk[j + 1]]
    features = p.features(target.device)
    out = target.varlen(q, k, v, cu_q, cu_k, max_q, max_k, **features)
    changed = target.varlen(q2, k2, v2, cu_q, cu_k, max_q, max_k, **features)
    _, tol, live = expected(target, p)
    keep = live & _rows(p)  # (Tq + pad, Hq, 1)
    keep[bq[j] : bq[j + 1]] = False
    assert_close(changed, out, tol, f"other sequences' rows after redrawing sequence {j}: {p.format()}", None, keep)
    if not target.caps.grad:
        return
    i = data.draw(st.integers(0, len(p.seqlens_q) - 1), label="differentiated sequence")
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = target.varlen(q, k, v, cu_q, cu_k, max_q, max_k, **features)
    grad_out = torch.zeros_like(out)
    grad_out[bq[i] : bq[i + 1]] = 1.0  # (Tq + pad, Hq, Ev): only sequence i's rows
    grads = target_grads(target, out, (q, k, v), grad_out)
    spans = ((bq[i], bq[i + 1]), (bk[i], bk[i + 1]), (bk[i], bk[i + 1]))  # sequence i's rows of Q, K, V
    for name, grad, (lo, hi) in zip(("dQ", "dK", "dV"), grads, spans, strict=True):
        outside = torch.ones(grad.size(0), dtype=torch.bool)
        outside[lo:hi] = False
        inside = grad[lo:hi]
        check(
            bool(torch.isfinite(inside).all()),
            f"gradient {name} of sequence {i}'s rows is not finite within the sequence (rows {lo}:{hi}; "
            f"{int((~torch.isfinite(inside)).sum())} entries) ({p.format()})",
            None,
        )
        leaked = grad[outside.to(grad.device)]
        check(
            bool((leaked == 0).all()),
            f"gradient {name} of sequence {i}'s rows reaches other sequences or the padding: max |{name}| "
            f"{float(leaked.double().abs().nan_to_num(float('inf')).max()) if leaked.numel() else 0:.3g} outside "
            f"rows {lo}:{hi} ({p.format()})",
            None,
        )


@prop("varlen")
@given(data=st.data())
def test_reordering_segments_reorders_outputs(target: Target, data: st.DataObject) -> None:
    """Packing the sequences in another order gives each sequence the same rows."""
    _require_varlen(target)
    p = data.draw(varlen_problems(target.caps, min_sequences=2), label="problem")
    order = data.draw(st.permutations(range(len(p.seqlens_q))), label="order")
    q, k, v, cu_q, cu_k, max_q, max_k = p.tensors(target.device)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    seqs_q, seqs_k = [slice(bq[b], bq[b + 1]) for b in order], [slice(bk[b], bk[b + 1]) for b in order]
    pad_q, pad_k = slice(bq[-1], None), slice(bk[-1], None)
    q2 = torch.cat([q[s] for s in seqs_q] + [q[pad_q]])  # (Tq + pad, Hq, E), sequences in ``order``
    k2, v2 = (torch.cat([t[s] for s in seqs_k] + [t[pad_k]]) for t in (k, v))  # (Tk + pad, Hkv, D)
    reordered = p.replace(
        seqlens_q=tuple(p.seqlens_q[b] for b in order), seqlens_k=tuple(p.seqlens_k[b] for b in order)
    )
    features = p.features(target.device)
    out = target.varlen(q, k, v, cu_q, cu_k, max_q, max_k, **features)
    out2 = target.varlen(q2, k2, v2, *reordered.tensors(target.device)[3:], **features)
    back = torch.cat([out[s] for s in seqs_q])  # (Tq, Hq, Ev): the first call's rows, in ``order``
    _, tol, live = expected(target, p)
    live_back = torch.cat([live[s] for s in seqs_q]).to(out.device)  # (Tq, Hq, 1)
    assert_close(
        out2[: bq[-1]],
        back,
        tol,
        f"outputs of the sequences packed in order {list(order)}: {p.format()}",
        None,
        live_back,
    )


@prop("varlen")
@given(data=st.data())
def test_varlen_lse_equals_each_sequence_alone(target: Target, data: st.DataObject) -> None:
    """With ``return_lse`` (declared ``lse``): lse (Hq, Tq) equals each sequence's own logsumexp (natural log, the
    sink included); rows of sequences without keys have the declared lse_empty; the output is unchanged."""
    _require_varlen(target)
    require("lse" in target.caps.features, "the target does not declare lse (--feature lse)")
    p = data.draw(varlen_problems(target.caps), label="problem")
    out, lse = target.varlen(*p.tensors(target.device), **p.features(target.device), return_lse=True)
    ref, tol, live = expected(target, p)
    where = (live & _rows(p)).to(out.device)  # (Tq + pad, Hq, 1)
    assert_close(out, ref, tol, f"packed output with return_lse vs each sequence alone: {p.format()}", None, where)
    rows = _rows(p).squeeze(-1).transpose(0, 1).expand(p.Hq, -1)  # (Tq + pad, 1, 1) -> (Hq, Tq + pad)
    judge_lse(target, p, lse, rows)
