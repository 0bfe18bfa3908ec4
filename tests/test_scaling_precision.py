"""scaling_variance judges the recovered scale against its rounding bound at the target's precision: honest
half-precision kernels are not flagged, and the scale bugs still are, in every dtype."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention

from attncheck.errors import PropertyFailure
from attncheck.properties.contract import Capabilities, Target
from attncheck.properties.problems import Problem
from attncheck.properties.test_scaling_variance import judge_effective_scale
from tests.mutants import MUTANTS

# The draw on which torch SDPA in float16 was called wrong (effective scale 2.00819 for scale= 2.0 against a fixed
# 16-ulp tolerance of 0.004): its float16 weights carry ~1e-3 relative rounding each.
FALSE_ALARM = Problem(B=1, Hq=2, Hkv=2, L=4, S=16, E=64, Ev=64, dtype="float16", scale=2.0, magnitude=0.5, seed=2)
PROBLEMS = [FALSE_ALARM.replace(layout="transposed")] + [
    FALSE_ALARM.replace(dtype=dtype, scale=scale, seed=seed)
    for dtype in ("float16", "bfloat16", "float32", "float64")
    for scale in (None, 2.0, 0.3)
    for seed in (0, 1)
]


def _sdpa() -> Target:
    return Target("torch-sdpa", scaled_dot_product_attention, Capabilities())


def test_torch_sdpa_scale_is_judged_at_its_precision() -> None:
    """No false alarm on any problem, and most are judged (not set aside as too imprecise), half dtypes too."""
    judged = {p: judge_effective_scale(_sdpa(), p) for p in PROBLEMS}
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        of_dtype = [ok for p, ok in judged.items() if p.dtype == dtype]
        assert sum(of_dtype) >= len(of_dtype) // 2, (dtype, of_dtype)


def test_a_bfloat16_computing_kernel_declared_so_passes() -> None:
    """Computing in bfloat16 by design (declared) is judged at bfloat16 for float32 inputs."""

    def bf16(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: object) -> torch.Tensor:
        args = (t.to(torch.bfloat16) for t in (query, key, value))
        return scaled_dot_product_attention(*args, **kwargs).to(query.dtype)  # type: ignore[arg-type]

    target = Target("bf16-compute", bf16, Capabilities(compute_dtype="bfloat16"))
    judged = [judge_effective_scale(target, FALSE_ALARM.replace(dtype="float32", seed=seed)) for seed in range(4)]
    assert any(judged)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", ["scale_twice", "custom_scale_ignored", "no_scaling", "inverse_dk_scale"])
def test_scale_bugs_are_caught_in_every_dtype(name: str, dtype: str) -> None:
    scale = 2.0 if name == "custom_scale_ignored" else None
    p = FALSE_ALARM.replace(dtype=dtype, scale=scale)
    with pytest.raises(PropertyFailure, match="effective scale"):
        judge_effective_scale(MUTANTS[name].target(), p)
