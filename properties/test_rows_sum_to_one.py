"""rows_sum_to_one: attention weights are a probability distribution over the admissible keys.

The weights are recovered from the black box (equation (1) is linear in V): with V = ones the output is
ones, and with V = the identity (Ev >= S, V[j] = e_j) the output row i *is* the weight row P[i, :].
The reference's own weights, read directly from ``attncheck.reference.attention.attention``, are the oracle's.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check
from attncheck.properties.contract import Target
from attncheck.properties.oracle import budget, max_logit, oracle
from attncheck.properties.problems import Problem, problems


def with_identity_room(p: Problem, value_dim: bool) -> Problem:
    """Widen Ev (and E where the target needs Ev == E) to at least S, so V can be the identity."""
    if value_dim:
        return p.replace(Ev=max(p.Ev, p.S))
    return p.replace(E=max(p.E, p.S), Ev=max(p.E, p.S))


def identity_values(p: Problem, like: torch.Tensor) -> torch.Tensor:
    """V[b, h, j] = e_j: (B, Hkv, S, Ev) with Ev >= S, so that P V = P padded with zeros."""
    eye = torch.eye(p.S, p.Ev, dtype=like.dtype, device=like.device)  # (S, Ev)
    return eye.expand(p.B, p.Hkv, p.S, p.Ev)  # (B, Hkv, S, Ev), stride 0 over batch and heads


def recover_weights(target: Target, p: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(weights read from the target (B, Hq, L, S), float64 oracle weights, mask)."""
    q, k, v, mask = p.tensors(target.device)
    eye = identity_values(p, v).contiguous()  # (B, Hkv, S, Ev)
    out = target(q, k, eye, **p.call_kwargs(mask))  # (B, Hq, L, Ev)
    ref = oracle(q, k, eye, mask, alignment=target.caps.alignment, is_causal=p.is_causal, scale=p.scale)
    return out[..., : p.S], ref[..., : p.S], mask  # (B, Hq, L, S)


@prop("rows_sum_to_one")
@given(data=st.data())
def test_weights_are_distributions(target: Target, data: st.DataObject) -> None:
    """Recovered weights are >= 0, sum to one per row, and are exactly 0 on masked keys."""
    caps = target.caps
    p = data.draw(problems(caps).map(lambda p: with_identity_room(p, caps.value_dim)), label="problem")
    weights, ref, mask = recover_weights(target, p)
    adm = p.admissible(mask, caps.alignment).to(weights.device)  # (B, Hq, L, S)
    row_live = adm.any(-1)  # (B, Hq, L)
    q, k, _, _ = p.tensors(target.device)
    work = target.precision(q.dtype)
    naive = oracle(
        q,
        k,
        identity_values(p, q),
        mask,
        alignment=caps.alignment,
        is_causal=p.is_causal,
        scale=p.scale,
        dtype=work,
    )[..., : p.S].to(q.dtype)  # (B, Hq, L, S) at the target's precision, in the inputs' dtype
    tol = budget(naive, ref, 1.0, work, logit_scale=max_logit(q, k, p.scale))
    w = weights.double()
    check(bool((w[adm.expand_as(w)] >= -tol.value).all()), f"negative attention weight {float(w.min()):.3g}", p)
    masked = w.masked_select(~adm.expand_as(w) & row_live.unsqueeze(-1).expand_as(w))
    worst = float(masked.abs().max()) if masked.numel() else 0.0
    excluded_by = f"mask or the {caps.alignment} causal triangle" if p.is_causal else "mask"
    check(
        bool((masked == 0).all()),
        f"keys excluded by the {excluded_by} get nonzero weight (max {worst:.3g}, "
        f"{int((masked != 0).sum())} of {masked.numel()} excluded entries)",
        p,
    )
    sums = w.sum(-1)  # (B, Hq, L)
    row_tol = budget(naive.double().sum(-1), ref.sum(-1), 1.0, work, logit_scale=max_logit(q, k, p.scale))
    assert_close(sums, torch.ones_like(sums), row_tol, "attention weight row sums vs 1", p, where=row_live)


@prop("rows_sum_to_one")
@given(data=st.data())
def test_ones_in_ones_out(target: Target, data: st.DataObject) -> None:
    """V = ones gives an output of ones on every row with an admissible key."""
    p = data.draw(problems(target.caps), label="problem")
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, torch.ones_like(v), **p.call_kwargs(mask))
    live = p.admissible(mask, target.caps.alignment).any(-1, keepdim=True)  # (B, Hq, L, 1)
    ones = torch.ones_like(out, dtype=torch.float64)
    # The only error allowed is rounding: of the logits (a logsumexp-form kernel computes exp(s - lse), whose
    # relative error grows with |s|) and of the S-term sum (floor x sqrt(S), random-walk accumulation).
    logits = max_logit(q, k, p.scale)
    work = target.precision(q.dtype)
    tol = budget(ones.to(q.dtype), ones, 1.0, work, logit_scale=logits).value * max(1.0, p.S**0.5)
    assert_close(out, ones, tol, "output for V = ones", p, where=live.to(out.device))
