"""purity_and_determinism: attention is a pure, deterministic function of its inputs.

Inputs are unchanged after forward and backward (docs/bugs.md #20); repeated calls are bitwise identical,
also with another call in between (no stale state, #22) and in the backward pass (#19); with dropout_p = 0 the
output does not depend on the random number generator (dropout left on, #17).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_identical, target_grads
from attncheck.properties.contract import Target
from attncheck.properties.problems import problems


@prop("purity_and_determinism")
@given(data=st.data())
def test_inputs_unchanged(target: Target, data: st.DataObject) -> None:
    """query, key, value and mask are bitwise unchanged after forward (and backward where supported)."""
    p = data.draw(problems(target.caps, max_len=33), label="problem")
    q, k, v, mask = p.tensors(target.device)
    leaves = [x.detach().clone().requires_grad_(target.caps.grad) for x in (q, k, v)]
    before = [x.detach().clone() for x in leaves] + ([mask.clone()] if mask is not None else [])
    out = target(leaves[0], leaves[1], leaves[2], **p.call_kwargs(mask))
    if target.caps.grad:  # through target_grads: a backward that raises is the target raising, as everywhere
        target_grads(target, out, tuple(leaves), torch.ones_like(out))
    after = [x.detach() for x in leaves] + ([mask] if mask is not None else [])
    for name, b, a in zip(("query", "key", "value", "attn_mask"), before, after, strict=False):
        assert_identical(a, b, f"{name} after the call vs before (the target wrote into its input)", p)


@prop("purity_and_determinism")
@given(data=st.data())
def test_repeated_calls_identical(target: Target, data: st.DataObject) -> None:
    """f(x) == f(x) bitwise, also after a call on other inputs, forward and backward."""
    p = data.draw(problems(target.caps, max_len=33), label="problem")
    other = p.replace(seed=p.seed + 1)
    q, k, v, mask = p.tensors(target.device)
    oq, ok, ov, omask = other.tensors(target.device)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        leaves = [x.detach().clone().requires_grad_(target.caps.grad) for x in (q, k, v)]
        out = target(leaves[0], leaves[1], leaves[2], **p.call_kwargs(mask))
        if not target.caps.grad:
            return [out.detach()]
        return [out.detach(), *target_grads(target, out, tuple(leaves), torch.ones_like(out))]

    first = run(q, k, v, mask)
    run(oq, ok, ov, omask)
    second = run(q, k, v, mask)
    for name, a, b in zip(("output", "dQ", "dK", "dV"), first, second, strict=False):
        if a is not None and b is not None:
            assert_identical(b, a, f"{name} of a repeated call (with another call in between)", p)


@prop("purity_and_determinism")
@given(data=st.data(), rng_seed=st.integers(0, 2**31 - 1))
def test_no_rng_dependence_without_dropout(target: Target, data: st.DataObject, rng_seed: int) -> None:
    """With dropout_p = 0 the output is the same whatever the global RNG state."""
    p = data.draw(problems(target.caps, max_len=33), label="problem")
    q, k, v, mask = p.tensors(target.device)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(rng_seed)
        first = target(q, k, v, **p.call_kwargs(mask))
        torch.manual_seed(rng_seed + 1)
        second = target(q, k, v, **p.call_kwargs(mask))
    finally:
        torch.random.set_rng_state(state)
    assert_identical(second, first, "output under two RNG states with dropout_p = 0", p)
