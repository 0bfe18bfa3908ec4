"""The one SDPA-signature helper of the meta-test fixtures: :class:`Call`, :func:`as_sdpa` and registration.

Mutants (tests/mutants.py) and correct variants (tests/variants.py) are targets in the SDPA convention
(docs/design.md, "The target contract")::

    f(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)
    query (B, Hq, L, E)   key (B, Hkv, S, E)   value (B, Hkv, S, Ev)   ->   (B, Hq, L, Ev)

but each is *written* as a function of one :class:`Call`, which holds those arguments and the values derived
from them (the default scale, the working dtype, the merged mask as an additive bias, the GQA-expanded key and
value, all through the reference's own helpers of ``attncheck.reference.attention``). :func:`as_sdpa` is the
only adapter: :class:`Call`'s fields are the one place the signature above is spelled out.
:meth:`Implementation.decorator` is what the ``@mutant`` and ``@variant`` decorators share: it adapts the
function, declares its capabilities on it (as :func:`attncheck.properties.contract.declare` does, so
``attncheck verify tests.mutants:no_scaling`` sees them too) and records it as an :class:`Implementation`.

The three steps both the mutants' pipeline and the variants need are here as well: masked scores, inverted
dropout, and zeroing the values of keys no query sees.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from attncheck.properties.contract import Capabilities, Target, declare
from attncheck.reference.attention import CausalAlignment, additive_bias, expand_kv_heads, merge_masks

NEG_INF = float("-inf")
TIMEOUT = 30.0  # seconds per call of a meta-test target

SDPAFunction = Callable[..., Tensor]  # f(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


@dataclass(frozen=True, eq=False)
class Call:
    """One call in the SDPA convention: its tensors and contract arguments, and what is derived from them."""

    query: Tensor  # (B, Hq, L, E)
    key: Tensor  # (B, Hkv, S, E)
    value: Tensor  # (B, Hkv, S, Ev)
    attn_mask: Tensor | None = None  # bool (True = the key takes part) or additive float; broadcasts to (B, Hq, L, S)
    dropout_p: float = 0.0
    is_causal: bool = False  # top-left aligned: query i sees keys j <= i
    scale: float | None = None
    enable_gqa: bool = False  # query head h reads kv head h // (Hq / Hkv)

    @property
    def L(self) -> int:
        return self.query.size(-2)

    @property
    def S(self) -> int:
        return self.key.size(-2)

    @property
    def softmax_scale(self) -> float:
        """Section 3.2.1: 1/sqrt(d_k) unless ``scale`` is given."""
        return 1.0 / math.sqrt(self.query.size(-1)) if self.scale is None else self.scale

    @property
    def work_dtype(self) -> torch.dtype:
        """float64 stays float64; float32, bfloat16 and float16 are computed in float32 (fp32 accumulation)."""
        return torch.float64 if self.query.dtype == torch.float64 else torch.float32

    def qkv(self, dtype: torch.dtype | None = None, expand_kv: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Query, key and value in ``dtype`` (default :attr:`work_dtype`), key and value expanded to Hq heads
        under GQA (``expand_kv_heads``, repeat_interleave semantics) unless ``expand_kv`` is False."""
        q, k, v = (t.to(dtype or self.work_dtype) for t in (self.query, self.key, self.value))
        if self.enable_gqa and expand_kv:
            k, v = expand_kv_heads(k, v, q.size(-3))  # (B, Hkv, S, D) -> (B, Hq, S, D) for D = E, Ev
        return q, k, v

    def mask(self, alignment: CausalAlignment = "top-left") -> Tensor | None:
        """``attn_mask`` merged with the causal triangle of ``alignment`` when ``is_causal`` (``merge_masks``)."""
        return merge_masks(self.attn_mask, self.is_causal, self.L, self.S, alignment, self.query.device)

    def bias(self, dtype: torch.dtype | None = None, alignment: CausalAlignment = "top-left") -> Tensor | None:
        """:meth:`mask` as the additive bias B of softmax(Q K^T * scale + B), in ``dtype`` (default
        :attr:`work_dtype`): 0 / -inf for a boolean mask; broadcasts to (B, Hq, L, S)."""
        return additive_bias(self.mask(alignment), dtype or self.work_dtype)

    def kwargs(self) -> dict[str, Any]:
        """The contract arguments after the tensors, as keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[3:]}

    def replace(self, **changes: Any) -> Call:
        return dataclasses.replace(self, **changes)


Body = Callable[[Call], Tensor]
Decorator = Callable[[Body], SDPAFunction]
# Call's fields are the SDPA signature, in order and with its defaults: Call(*args, **kwargs) takes a call as is.
SDPA_SIGNATURE = inspect.signature(Call).replace(return_annotation=Tensor)


def as_sdpa(body: Body) -> SDPAFunction:
    """``body`` as a callable in the SDPA convention, named and documented as ``body``."""

    def attend(*args: Any, **kwargs: Any) -> Tensor:
        return body(Call(*args, **kwargs))

    # Not functools.wraps: its __wrapped__ would make inspect.signature report (c: Call), which is not how to call it.
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(attend, attr, getattr(body, attr))
    attend.__signature__ = SDPA_SIGNATURE  # type: ignore[attr-defined]
    return attend


# ---------------------------------------------------------------------------------------------------------------
# Steps shared by the mutants' correct pipeline and the variants


def masked_scores(scores: Tensor, bias: Tensor | None) -> Tensor:
    """scores + B, and -inf wherever B is -inf: a masked key's score stays -inf even where its raw score is NaN
    (docs/bugs.md #3). scores (B, H, L, S), bias broadcasting to it."""
    if bias is None:
        return scores
    return (scores + bias).masked_fill(bias == NEG_INF, NEG_INF)  # (B, H, L, S)


def dropout(p: Tensor, dropout_p: float) -> Tensor:
    """Inverted dropout with torch's global RNG: drop with probability p, rescale by 1/(1 - p)."""
    if dropout_p > 0.0:
        keep = torch.rand(p.shape, device=p.device) >= dropout_p  # p's shape, (B, H, L, S)
        p = p * keep / (1.0 - dropout_p)
    return p


def zero_unseen_values(value: Tensor, scores: Tensor) -> Tensor:
    """Zero the values of keys no query sees: their weight is 0, but 0 * NaN = NaN in P V (docs/bugs.md #3)."""
    seen = (scores != NEG_INF).any(dim=-2).unsqueeze(-1)  # (B, H, L, S) -> (B, H, S) -> (B, H, S, 1)
    return value.masked_fill(~seen, 0.0)  # (B, H, S, Ev)


# ---------------------------------------------------------------------------------------------------------------
# Registration


@dataclass(frozen=True)
class Implementation:
    """A registered attention function of the meta-tests: its name, the SDPA callable, its declaration."""

    kind: ClassVar[str] = "implementation"
    name: str
    fn: SDPAFunction
    caps: Capabilities

    def target(self) -> Target:
        """The function as a property target named ``<kind>:<name>``, 30 s per call."""
        return Target(f"{self.kind}:{self.name}", self.fn, self.caps, timeout=TIMEOUT)

    @classmethod
    def decorator(cls, registry: dict[str, Self], capabilities: dict[str, Any], **fields: Any) -> Decorator:
        """A decorator: adapt a function of a :class:`Call` with :func:`as_sdpa`, declare ``capabilities`` on it
        (read by ``attncheck verify``), and add ``cls(name, fn, caps, **fields)`` to ``registry`` under the
        function's name. It returns the SDPA callable, which stays under that name in the defining module.

        ``capabilities`` are :class:`Capabilities` fields; a wrong one fails here, when the decorator is built.
        """
        declaration = declare(**capabilities)

        def register(body: Body) -> SDPAFunction:
            fn = declaration(as_sdpa(body))
            entry = cls(name=body.__name__, fn=fn, caps=fn.__attncheck__, **fields)  # type: ignore[attr-defined]
            if entry.name in registry:
                raise ValueError(f"{entry.kind} {entry.name!r} is registered twice")
            registry[entry.name] = entry
            return fn

        return register
