"""dropout_statistics: where dropout is supported, it drops a fraction p of the weights and rescales by 1/(1-p).

With q = 0 every admissible weight is 1/S; with V = the identity the output row *is* the dropped weight row,
so every entry is either 0 (dropped) or 1 / (S (1 - p)) (kept and rescaled). The number dropped out of n
is Binomial(n, p): a two-sided binomial test at false-alarm rate 1e-6 per example (scipy.stats.binomtest).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, require
from attncheck.properties.targets import Target

ALPHA = 1e-6


@prop("dropout_statistics")
@given(p_drop=st.sampled_from((0.1, 0.25, 0.5, 0.8)), S=st.integers(4, 33), seed=st.integers(0, 2**16))
def test_dropout_fraction_and_rescale(target: Target, p_drop: float, S: int, seed: int) -> None:
    """Dropped fraction consistent with p; kept weights rescaled to 1 / (S (1 - p))."""
    require(target.caps.dropout, "target declares no dropout")
    dtype_name = "float32" if "float32" in target.caps.dtypes else target.caps.dtypes[0]
    dtype = getattr(torch, dtype_name)
    B, H = 4, 4
    L = S if target.caps.lengths == "equal" else 16 if target.caps.lengths == "any" else min(16, S)
    E = S  # identity values need Ev >= S (and Ev == E for some targets)
    q = torch.zeros(B, H, L, E, dtype=dtype, device=target.device)  # (B, H, L, E): uniform weights 1/S
    k = torch.randn(B, H, S, E, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    eye = torch.eye(S, E, dtype=dtype).expand(B, H, S, E).contiguous().to(target.device)  # (B, H, S, E)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        out = target(q, k.to(target.device), eye, dropout_p=p_drop).double()  # (B, H, L, S)
    finally:
        torch.random.set_rng_state(state)
    kept_value = 1.0 / (S * (1 - p_drop))
    dropped = int((out == 0).sum())
    n = out.numel()
    test = stats.binomtest(dropped, n, p_drop)
    check(
        test.pvalue >= ALPHA,
        f"dropout_p={p_drop}: dropped {dropped} of {n} weights ({dropped / n:.3f}), binomial p-value "
        f"{test.pvalue:.2g} < {ALPHA:g}",
        None,
        dropped=dropped,
        n=n,
    )
    kept = out[out != 0]
    eps = torch.finfo(dtype).eps
    assert_close(
        kept,
        torch.full_like(kept, kept_value),
        8 * eps * kept_value,
        f"kept weights vs 1 / (S (1 - p)) = {kept_value:.6g} (inverted dropout rescaling)",
        None,
    )
