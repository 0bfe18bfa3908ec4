"""Attention problems and the Hypothesis strategies that draw them.

A problem is a handful of small integers, flags and a seed (:class:`Problem`); its tensors are built from a
seeded ``torch.Generator`` (:meth:`Problem.tensors`). Hypothesis therefore shrinks shapes, flags and seeds,
never tensor entries, and a counterexample prints as one line that rebuilds the exact inputs
(``Problem(...).tensors()``), which is what :meth:`Problem.repro` writes out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from hypothesis import strategies as st
from torch import Tensor

from attncheck.properties.contract import Capabilities, Target, require

MaskKind = Literal["none", "bool", "float"]
MaskShape = Literal["LS", "B1LS", "BHLS", "1HLS", "B11S"]  # broadcast pattern of the mask over (B, Hq, L, S)
# the declared mask_shapes (Capabilities) each problem mask shape belongs to
SHAPE_KIND: dict[str, str] = {"LS": "LS", "B1LS": "full", "BHLS": "full", "1HLS": "full", "B11S": "key_padding"}
LayoutKind = Literal["contiguous", "transposed", "sliced", "expanded"]

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Structural properties (masks, permutations, slicing, layouts) are checked in the precise dtypes, where the
# budget is tight enough to see a wrong mask row or head; precision itself is the business of matches_oracle,
# fully_masked_rows and numerical_range, which draw every dtype the target declares.
PRECISE = ("float64", "float32")
# Sizes just past the block sizes of tiled kernels (16, 32, 64, 128) catch unmasked or dropped tail tiles
# (docs/bugs.md #23).
BLOCK_EDGES = (16, 17, 33, 65, 129)


@dataclass(frozen=True)
class Problem:
    """One attention call: shapes, dtype, mask, flags and the seed its tensors are drawn from."""

    B: int = 1  # batch
    Hq: int = 1  # query heads
    Hkv: int = 1  # key/value heads (Hq % Hkv == 0; < Hq means GQA)
    L: int = 1  # query length
    S: int = 1  # key/value length
    E: int = 4  # query/key head dim (d_k)
    Ev: int = 4  # value head dim (d_v)
    dtype: str = "float32"
    mask: MaskKind = "none"
    mask_shape: MaskShape = "BHLS"
    masked_rows: int = 0  # number of query rows with no admissible key (needs a mask)
    # the mask's first slice (batch 0, else head 0, else row 0) is all admissible while the others are not: a fast
    # path that judges the whole mask on its first row, head or batch drops it (issue 19)
    first_full: bool = False
    is_causal: bool = False
    scale: float | None = None
    layout: LayoutKind = "contiguous"
    magnitude: float = 1.0  # standard deviation of the query and key entries
    seed: int = 0

    @property
    def gqa(self) -> bool:
        return self.Hq != self.Hkv

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def replace(self, **changes: object) -> Problem:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        """The counterexample as it is reported: only what differs from a plain problem, plus the shapes."""
        d: dict[str, object] = {
            "query shape": (self.B, self.Hq, self.L, self.E),
            "key shape": (self.B, self.Hkv, self.S, self.E),
            "value shape": (self.B, self.Hkv, self.S, self.Ev),
            "dtype": self.dtype,
        }
        if self.mask != "none":
            d["attn_mask"] = (
                f"{self.mask} {self.mask_shape}"
                + (f", {self.masked_rows} fully masked row(s)" if self.masked_rows else "")
                + (", first batch/head/row all admissible" if self.first_full else "")
            )
        if self.is_causal:
            d["is_causal"] = True
        if self.scale is not None:
            d["scale"] = self.scale
        if self.gqa:
            d["enable_gqa"] = True
        if self.layout != "contiguous":
            d["layout"] = self.layout
        if self.magnitude != 1.0:
            d["magnitude"] = self.magnitude
        d["seed"] = self.seed
        return d

    def format(self) -> str:
        """The counterexample as one line (shapes as shapes)."""
        return format_counterexample(self.describe())

    def call_kwargs(self, mask: Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the SDPA-convention call for this problem."""
        return {"attn_mask": mask, "is_causal": self.is_causal, "scale": self.scale, "enable_gqa": self.gqa}

    def repro(self, target: Target) -> str:
        """A copy-pasteable snippet: rebuild ``target`` with its declaration and the exact inputs, call it, and
        assert its output against the float64 oracle inside the budget, as matches_oracle does."""
        from attncheck.properties.repro import target_lines

        fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        )
        return "\n".join(
            [
                f"from {type(self).__module__} import {type(self).__name__}",
                "from attncheck import Capabilities",
                "from attncheck.targets import resolve",
                "from attncheck.properties.oracle import expect",
                "from attncheck.properties.checks import assert_close, live_rows",
                *target_lines(target),
                f"p = {type(self).__name__}({fields})",
                "q, k, v, mask = p.tensors(target.device)",
                "kwargs = p.call_kwargs(mask)",
                "out = target(q, k, v, **kwargs)",
                "align, compute = target.caps.alignment, target.precision(q.dtype, judged=True)",
                "ref, budget = expect(q, k, v, kwargs.pop('attn_mask'), align, compute, **kwargs)",
                "assert_close(out, ref, budget, 'output vs float64 oracle', p, where=live_rows(p, mask, align))",
            ]
        )

    def tensors(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(query, key, value, attn_mask), BHLD, deterministic in ``seed``, in the problem's dtype and layout."""
        g = torch.Generator().manual_seed(self.seed)
        q = self._draw((self.B, self.Hq, self.L, self.E), g, self.magnitude)  # (B, Hq, L, E)
        k = self._draw((self.B, self.Hkv, self.S, self.E), g, self.magnitude)  # (B, Hkv, S, E)
        v = self._draw((self.B, self.Hkv, self.S, self.Ev), g, 1.0)  # (B, Hkv, S, Ev)
        mask = self._mask(g)
        return q.to(device), k.to(device), v.to(device), None if mask is None else mask.to(device)

    def _draw(self, shape: tuple[int, int, int, int], g: torch.Generator, std: float) -> Tensor:
        """Standard normal entries times ``std``, rounded to the dtype, laid out as the problem asks."""
        B, H, N, D = shape
        dtype = self.torch_dtype
        if self.layout == "transposed":
            x = torch.randn(B, N, H, D, generator=g, dtype=torch.float64) * std  # (B, N, H, D)
            return x.to(dtype).transpose(1, 2)  # (B, H, N, D), non-contiguous (BLHD storage)
        if self.layout == "sliced":
            x = torch.randn(B, H, N, 2 * D, generator=g, dtype=torch.float64) * std  # (B, H, N, 2D)
            return x.to(dtype)[..., ::2]  # (B, H, N, D), last-dim stride 2
        if self.layout == "expanded":
            x = torch.randn(1, H, N, D, generator=g, dtype=torch.float64) * std  # (1, H, N, D)
            return x.to(dtype).expand(B, H, N, D)  # (B, H, N, D), batch stride 0
        return (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) * std).to(dtype)  # (B, H, N, D)

    def mask_broadcast_shape(self) -> tuple[int, ...]:
        B, H, L, S = self.B, self.Hq, self.L, self.S
        return {"LS": (L, S), "B1LS": (B, 1, L, S), "BHLS": (B, H, L, S), "1HLS": (1, H, L, S), "B11S": (B, 1, 1, S)}[
            self.mask_shape
        ]

    def _mask(self, g: torch.Generator) -> Tensor | None:
        """Boolean admissibility (True = attend) or additive float bias with -inf where not admissible."""
        if self.mask == "none":
            return None
        shape = self.mask_broadcast_shape()
        admissible = torch.rand(shape, generator=g) < 0.7  # (*shape)
        # Every row keeps at least one admissible key (a random one), except the rows asked to be fully masked.
        keep = torch.randint(0, self.S, shape[:-1], generator=g)  # (*shape[:-1])
        if self.is_causal:  # the kept key must survive the causal triangle too, under either alignment
            rows = torch.arange(shape[-2]) if shape[-2] == self.L else torch.zeros(1, dtype=torch.long)  # (L|1,)
            # top-left: row i sees keys j <= i; bottom-right: j <= i - (L - S) (all rows live when L <= S)
            keep = torch.minimum(keep, (rows - max(0, self.L - self.S)).clamp(min=0))  # (*shape[:-1])
        admissible.scatter_(-1, keep.unsqueeze(-1), True)  # (*shape)
        if self.first_full:
            lead = next((d for d, n in enumerate(shape[:-1]) if n > 1), None)  # batch, else head, else row
            if lead is not None:
                admissible.select(lead, 0).fill_(True)  # (*shape): that slice all admissible, the others not
        if self.masked_rows and shape[-2] != 1:
            admissible[..., : self.masked_rows, :] = False  # the first rows see no key
        elif self.masked_rows:
            admissible[0] = False  # key padding (B, 1, 1, S): batch element 0 is all padding, every row masked
        if self.mask == "bool":
            return admissible
        bias = torch.randn(shape, generator=g, dtype=torch.float64)  # (*shape) additive bias B
        return bias.masked_fill(~admissible, float("-inf")).to(self.torch_dtype)

    def admissible(self, mask: Tensor | None, alignment: str = "top-left") -> Tensor:
        """Boolean (B, Hq, L, S) admissibility implied by the mask and is_causal under ``alignment``."""
        from attncheck.reference.attention import causal_mask

        adm = torch.ones(self.B, self.Hq, self.L, self.S, dtype=torch.bool)  # (B, Hq, L, S)
        if mask is not None:
            m = mask if mask.dtype == torch.bool else mask != float("-inf")
            adm = adm & m.cpu()  # broadcast (*shape) -> (B, Hq, L, S)
        if self.is_causal:
            adm = adm & causal_mask(self.L, self.S, alignment)  # type: ignore[arg-type]
        return adm


def format_counterexample(described: dict[str, object]) -> str:
    """``Problem.describe()`` (or its JSON) as one line: ``query shape (1, 1, 2, 1), ..., dtype=float64``."""
    return ", ".join(
        f"{k} {tuple(v)}" if k.endswith(" shape") and isinstance(v, list | tuple) else f"{k}={v}"
        for k, v in described.items()
    )


# ---------------------------------------------------------------------------------------------------------------
# Strategies

lengths = st.one_of(st.integers(1, 9), st.sampled_from(BLOCK_EDGES))
head_dims = st.one_of(st.integers(1, 8), st.sampled_from((16, 17, 32, 64)))
seeds = st.integers(0, 2**16)


@st.composite
def problems(
    draw: st.DrawFn,
    caps: Capabilities = Capabilities(),
    *,
    dtypes: tuple[str, ...] | None = None,
    masks: tuple[MaskKind, ...] = ("none", "bool", "float"),
    causal: bool | None = None,
    masked_rows: bool = False,
    layouts: tuple[LayoutKind, ...] = ("contiguous", "transposed", "sliced", "expanded"),
    magnitudes: st.SearchStrategy[float] = st.sampled_from((1.0, 1.0, 1e-3, 10.0)),
    max_len: int | None = None,
    min_keys: int = 1,
    custom_scale: bool = True,
    gqa: bool = True,
) -> Problem:
    """Draw a :class:`Problem` that the target ``caps`` supports.

    ``causal`` None draws it, True/False forces it (needs the target's is_causal). ``masked_rows`` allows rows
    with no admissible key; otherwise every row keeps at least one key.
    """
    allowed = tuple(d for d in (dtypes or caps.dtypes) if d in caps.dtypes) or caps.dtypes
    dtype = draw(st.sampled_from(allowed))
    L = draw(lengths)
    S = draw(lengths)
    if max_len is not None:
        L, S = min(L, max_len), min(S, max_len)
    S = max(S, min_keys)
    if caps.lengths == "equal":  # self-attention only
        L = S = max(L, min_keys)
    elif caps.lengths == "q<=k":
        L = min(L, S)
    E = draw(head_dims)
    Ev = draw(head_dims) if caps.value_dim else E
    B = draw(st.integers(1, 3))
    Hkv = draw(st.integers(1, 3))
    group = draw(st.sampled_from((1, 1, 2, 3))) if (caps.gqa and gqa) else 1
    Hq = Hkv * group
    shapes = tuple(shape for shape, kind in SHAPE_KIND.items() if kind in caps.mask_shapes)
    mask_kinds = tuple(m for m in masks if m == "none" or (m in caps.masks and shapes)) or ("none",)
    is_causal = False
    if caps.causal == "always":  # causal with no flag: every problem is causal, and may carry a mask too
        require(causal is not False, "the target is always causal (causal=always); this check is not causal")
        is_causal = True
    elif caps.causal is not None and causal is not False and "none" in mask_kinds:
        is_causal = True if causal else draw(st.booleans())
    # a mask together with is_causal (both apply, ANDed) where the target declares the pair (mask_with_causal)
    pair = caps.causal == "always" or caps.mask_with_causal
    mask: MaskKind = "none" if is_causal and not pair else draw(st.sampled_from(mask_kinds))
    mask_shape: MaskShape = draw(st.sampled_from(shapes)) if mask != "none" else "BHLS"  # type: ignore[assignment]
    first_full = mask != "none" and draw(st.booleans())
    rows = 0
    if masked_rows and mask != "none":
        rows = draw(st.integers(0, min(L, 3)))
    if is_causal and caps.alignment == "bottom-right" and not masked_rows:
        L = min(L, S)  # L > S empties the first L - S rows under a bottom-right triangle: no keyless rows here
    scale = None
    if caps.scale and custom_scale and draw(st.booleans()):
        scale = draw(st.sampled_from((0.5, 0.125, 1.0, 2.0, 0.01)))
    layout = draw(
        st.sampled_from(tuple(x for x in layouts if x == "contiguous" or x in caps.strided_inputs) or ("contiguous",))
    )
    magnitude = draw(magnitudes)
    seed = draw(seeds)
    drawn = Problem(
        B, Hq, Hkv, L, S, E, Ev, dtype, mask, mask_shape, rows, first_full, is_causal, scale, layout, magnitude, seed
    )
    return fit_sizes(drawn, caps)


# ---------------------------------------------------------------------------------------------------------------
# The sizes a target declares (a kernel's preconditions), applied to every problem drawn or probed


def full_mask_problem(target: Target, data: st.DataObject) -> tuple[Problem, Tensor, Tensor, Tensor, Tensor]:
    """A problem with a bool or float mask and no causal flag, drawn for a target that takes full (B, Hq, L, S)
    masks (not applicable otherwise), and its tensors q, k, v, mask on the target's device."""
    require(bool(target.caps.masks), "target declares no mask support")
    require("full" in target.caps.mask_shapes, "target declares no full (B, Hq, L, S) masks")
    p = data.draw(problems(target.caps, dtypes=PRECISE, masks=("bool", "float"), causal=False), label="problem")
    q, k, v, mask = p.tensors(target.device)
    assert mask is not None
    return p, q, k, v, mask


def fit_sizes(p: Problem, caps: Capabilities) -> Problem:
    """The nearest problem whose sizes the target declares it supports: L and S raised to at least min_length and
    to a multiple of length_multiple (lowered to the largest such length within max_length), E and Ev raised to a
    multiple of head_dim_multiple. Mapping each draw (rather than filtering) keeps every draw, and its shrinking:
    a block of 16 turns the draws 1..16 into 16 and 17 into 32, the block edges of tiled kernels."""

    def length(n: int) -> int:
        m = caps.length_multiple
        n = -(-max(n, caps.min_length) // m) * m  # ceil to a multiple of m
        return n if caps.max_length is None or n <= caps.max_length else caps.max_length // m * m

    def dim(n: int) -> int:
        return -(-n // caps.head_dim_multiple) * caps.head_dim_multiple

    sizes = {"L": length(p.L), "S": length(p.S), "E": dim(p.E), "Ev": dim(p.Ev)}
    return p if all(getattr(p, k) == v for k, v in sizes.items()) else p.replace(**sizes)
