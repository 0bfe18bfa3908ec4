"""permutation_equivariance: attention without positional information is a set operation.

Equation (1) has no notion of position: permuting the queries permutes the output rows (equivariance), and
permuting the keys, the values and the mask's key columns together changes nothing (invariance). The
model-level versions (multi-head attention, the whole encoder, and the negative control with positional
encoding) are in test_model.py.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close
from attncheck.properties.contract import Target
from attncheck.properties.oracle import expect
from attncheck.properties.problems import PRECISE, Problem, problems


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _permute_mask(mask: torch.Tensor | None, p: Problem, perm: torch.Tensor, dim: int) -> torch.Tensor | None:
    """Permute the mask along query rows (dim -2) or key columns (dim -1) where it is not broadcast."""
    if mask is None or mask.size(dim) == 1:
        return mask
    return mask.index_select(dim, perm.to(mask.device))


@prop("permutation_equivariance")
@given(data=st.data())
def test_query_permutation_equivariance(target: Target, data: st.DataObject) -> None:
    """f(Pi Q, K, V) = Pi f(Q, K, V) for a random permutation Pi of the queries (no causal mask)."""
    p = data.draw(problems(target.caps, dtypes=PRECISE, causal=False), label="problem")
    q, k, v, mask = p.tensors(target.device)
    perm = _permutation(p.L, p.seed + 3).to(q.device)
    out = target(q, k, v, **p.call_kwargs(mask))
    out_perm = target(q.index_select(-2, perm), k, v, **p.call_kwargs(_permute_mask(mask, p, perm, -2)))
    _, tol = expect(q, k, v, mask, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out_perm, out.index_select(-2, perm), tol, "f(permuted queries) vs permuted f(queries)", p)


@prop("permutation_equivariance")
@given(data=st.data())
def test_key_permutation_invariance(target: Target, data: st.DataObject) -> None:
    """f(Q, Pi K, Pi V) with mask columns permuted alike = f(Q, K, V) (no causal mask)."""
    p = data.draw(problems(target.caps, dtypes=PRECISE, causal=False), label="problem")
    q, k, v, mask = p.tensors(target.device)
    perm = _permutation(p.S, p.seed + 5).to(q.device)
    out = target(q, k, v, **p.call_kwargs(mask))
    out_perm = target(
        q, k.index_select(-2, perm), v.index_select(-2, perm), **p.call_kwargs(_permute_mask(mask, p, perm, -1))
    )
    _, tol = expect(q, k, v, mask, "top-left", target.precision(q.dtype), scale=p.scale)
    assert_close(out_perm, out, tol, "f(Q, permuted K and V) vs f(Q, K, V)", p)
