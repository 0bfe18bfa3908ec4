"""Problems with the features beyond SDPA (docs/design.md, "Beyond SDPA"), and the strategies that draw them.

A :class:`FeatureProblem` is a :class:`~attncheck.properties.problems.Problem` plus the feature arguments of one
dense call: ``window=(left, right)``, ``softcap=c`` and learned ``sinks`` (Hq,), drawn from the problem's seed as
its tensors are. It stays a few small integers, flags and a seed, so Hypothesis shrinks shapes, windows and
caps, never tensor entries, and a counterexample is one line that rebuilds the exact call.

:func:`feature_problems` draws a plain problem with :func:`~attncheck.properties.problems.problems` (so every
declaration that filters those draws filters these too) and the features on top; only what the property asks
for and the target declares is drawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from attncheck.properties.checks import require
from attncheck.properties.contract import Capabilities, Target
from attncheck.properties.oracle import Budget, expect, expect_lse
from attncheck.properties.problems import Problem, problems
from attncheck.reference.attention import window_mask

# Caps from 1 (where capping after masking lets masked keys leak, FlashAttention PR#1025) to Gemma 2's 50.
SOFTCAPS = (1.0, 5.0, 20.0, 50.0)
SINK_STD = 2.0  # sink logits ~ N(0, 2^2): from negligible to dominating a row of O(1) logits
# Lengths and head dims up to the block edge 17: the features act on the (L, S) logits, which longer draws and
# wider heads make costlier without reaching a case a 17-long band does not
MAX_LEN = MAX_DIM = 17


@dataclass(frozen=True)
class FeatureProblem(Problem):
    """A :class:`Problem` with the dense features: a window, a softcap and per-head sinks drawn from the seed."""

    window: tuple[int, int] | None = None  # (left, right), -1 = unbounded; aligned as the target's causal mask
    softcap: float | None = None
    sinks: bool = False  # sink logits (Hq,), N(0, SINK_STD^2) from the seed (see sink_logits)

    def replace(self, **changes: object) -> FeatureProblem:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def sink_logits(self, device: str | torch.device = "cpu") -> Tensor | None:
        """(Hq,) sink logits, float32 (float64 for float64 problems), deterministic in the seed; None without."""
        if not self.sinks:
            return None
        g = torch.Generator().manual_seed(self.seed + 17)
        dtype = torch.float64 if self.dtype == "float64" else torch.float32
        return (torch.randn(self.Hq, generator=g, dtype=torch.float64) * SINK_STD).to(dtype).to(device)  # (Hq,)

    def call_kwargs(self, mask: Tensor | None, device: str | torch.device = "cpu") -> dict[str, Any]:
        """The SDPA-convention keywords plus the features drawn (only those: a target may lack the rest)."""
        kwargs = super().call_kwargs(mask)
        features = {"window": self.window, "softcap": self.softcap, "sinks": self.sink_logits(device)}
        return kwargs | {name: value for name, value in features.items() if value is not None}

    def describe(self) -> dict[str, object]:
        d = super().describe()
        seed = d.pop("seed")
        if self.window is not None:
            d["window"] = self.window
        if self.softcap is not None:
            d["softcap"] = self.softcap
        if self.sinks:
            d["sinks"] = f"N(0, {SINK_STD:g}^2) per query head"
        d["seed"] = seed
        return d

    def admissible(self, mask: Tensor | None, alignment: str = "top-left") -> Tensor:
        """Boolean (B, Hq, L, S): the mask, is_causal and the window band under ``alignment``."""
        adm = super().admissible(mask, alignment)  # (B, Hq, L, S)
        if self.window is None:
            return adm
        return adm & window_mask(self.L, self.S, self.window, alignment)  # type: ignore[arg-type]


def require_feature(target: Target, feature: str) -> None:
    """Skip (never pass) a check of a feature the target does not declare."""
    require(feature in target.caps.features, f"the target declares no {feature} (--cap features=...)")


def windows(L: int, S: int) -> st.SearchStrategy[tuple[int, int]]:
    """(left, right): each side unbounded (-1), small (0..3: (0, 0) and off-by-ones), or anything up to past the
    longer sequence (a window wider than the sequence is no window)."""
    side = st.one_of(st.just(-1), st.integers(0, 3), st.integers(0, max(L, S) + 2))
    return st.tuples(side, side)


@st.composite
def feature_problems(
    draw: st.DrawFn,
    caps: Capabilities,
    *,
    window: bool = False,
    softcap: bool = False,
    sinks: bool = False,
    **problem_options: Any,
) -> FeatureProblem:
    """A :class:`FeatureProblem` the target ``caps`` supports: a plain problem (``problem_options`` go to
    :func:`~attncheck.properties.problems.problems`; lengths up to :data:`MAX_LEN` unless they say otherwise, head
    dims up to :data:`MAX_DIM`), and each feature asked for and declared, drawn on top."""
    p = draw(problems(caps, **{"max_len": MAX_LEN} | problem_options))
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(Problem)}
    fields["E"], fields["Ev"] = min(p.E, MAX_DIM), min(p.Ev, MAX_DIM)
    drawn: dict[str, Any] = {}
    if window and "window" in caps.features:
        drawn["window"] = draw(windows(p.L, p.S))
    if softcap and "softcap" in caps.features:
        drawn["softcap"] = draw(st.sampled_from(SOFTCAPS))
    if sinks and "sinks" in caps.features:
        drawn["sinks"] = True
    return FeatureProblem(**fields, **drawn)


def expected(
    target: Target, p: FeatureProblem, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> tuple[Tensor, Budget]:
    """(float64 oracle output, output budget) of the call ``p`` makes with these tensors, under the target's
    alignment and at its declared or observed precision (the structural properties' budget)."""
    kwargs = p.call_kwargs(mask, q.device)
    attn_mask = kwargs.pop("attn_mask")
    return expect(q, k, v, attn_mask, target.caps.alignment, target.precision(q.dtype), **kwargs)


def expected_lse(
    target: Target,
    p: FeatureProblem,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    lse_dtype: torch.dtype,
) -> tuple[Tensor, Budget]:
    """(float64 oracle lse (B, Hq, L), lse budget) of the call ``p`` makes, as :func:`expected`, for a target that
    returned its lse in ``lse_dtype``."""
    kwargs = p.call_kwargs(mask, q.device)
    attn_mask = kwargs.pop("attn_mask")
    return expect_lse(q, k, v, attn_mask, target.caps.alignment, lse_dtype, target.precision(q.dtype), **kwargs)
