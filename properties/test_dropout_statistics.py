"""dropout_statistics: where dropout is supported, it drops a fraction p of the weights and rescales the kept ones
as the target declares.

With q = 0 every admissible weight is 1/S; with V = the identity the output row *is* the dropped weight row,
so every entry is 0 (dropped) or the kept weight: 1 / (S (1 - p)) for inverted dropout (SDPA, ``dropout=
"inverted"``: unbiased, E[out] = out without dropout), or 1 / (number kept in the row) for dropout applied to the
unnormalised weights before the row sum (``dropout="renormalised"``: each row sums to 1 again; a row that drops
every key is 0/0 and counts as dropped). The number dropped out of n is Binomial(n, p): a two-sided binomial test
at false-alarm rate 1e-6 per example (scipy.stats.binomtest).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, require
from attncheck.properties.contract import Target
from attncheck.reference.attention import causal_mask

ALPHA = 1e-6


@prop("dropout_statistics")
@given(p_drop=st.sampled_from((0.1, 0.25, 0.5, 0.8)), S=st.integers(4, 33), seed=st.integers(0, 2**16))
def test_dropout_fraction_and_rescale(target: Target, p_drop: float, S: int, seed: int) -> None:
    """Dropped fraction consistent with p; kept weights rescaled as declared (inverted or renormalised)."""
    require(bool(target.caps.dropout), "target declares no dropout")
    dtype_name = "float32" if "float32" in target.caps.dtypes else target.caps.dtypes[0]
    dtype = getattr(torch, dtype_name)
    B, H = 4, 4
    causal = target.caps.causal == "always"  # then row i of L = S queries admits keys 0..i (top-left)
    L = S if target.caps.lengths == "equal" or causal else 16 if target.caps.lengths == "any" else min(16, S)
    E = S  # identity values need Ev >= S (and Ev == E for some targets)
    q = torch.zeros(B, H, L, E, dtype=dtype, device=target.device)  # (B, H, L, E): uniform weights 1/n_i
    k = torch.randn(B, H, S, E, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    eye = torch.eye(S, E, dtype=dtype).expand(B, H, S, E).contiguous().to(target.device)  # (B, H, S, E)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        out = target(q, k.to(target.device), eye, dropout_p=p_drop, is_causal=causal).double().cpu()  # (B, H, L, S)
    finally:
        torch.random.set_rng_state(state)
    adm = (causal_mask(L, S) if causal else torch.ones(L, S, dtype=torch.bool)).expand(B, H, L, S)  # (B, H, L, S)
    renormalised = target.caps.dropout == "renormalised"
    out = torch.nan_to_num(out, nan=0.0) if renormalised else out  # a row that dropped every key: 0 / 0
    dropped = int(((out == 0) & adm).sum())
    n = int(adm.sum())
    test = stats.binomtest(dropped, n, p_drop)
    check(
        test.pvalue >= ALPHA,
        f"dropout_p={p_drop}: dropped {dropped} of {n} weights ({dropped / n:.3f}), binomial p-value "
        f"{test.pvalue:.2g} < {ALPHA:g}",
        None,
        dropped=dropped,
        n=n,
    )
    kept = (out != 0) & adm
    if renormalised:
        expected = 1.0 / kept.sum(-1, keepdim=True).clamp(min=1).double()  # (B, H, L, 1)
        rule = "1 / (keys kept in the row) (renormalised)"
    else:
        expected = 1.0 / (adm.sum(-1, keepdim=True).double() * (1 - p_drop))  # (B, H, L, 1)
        rule = "1 / (n (1 - p)), n = admissible keys of the row (inverted)"
    expected = expected.expand_as(out)  # (B, H, L, S)
    eps = torch.finfo(dtype).eps
    assert_close(
        out[kept],
        expected[kept],
        8 * eps * float(expected.max()),
        f"kept weights vs {rule} dropout rescaling, as declared dropout={target.caps.dropout!r}",
        None,
    )
    check(
        bool((out[~adm] == 0).all()),
        "weights of keys outside the causal triangle are not 0 under dropout",
        None,
        leaked=int((out[~adm] != 0).sum()),
    )
