"""The target contract: how a check calls an attention implementation, and what the implementation declares.

A target is a callable in the convention of ``torch.nn.functional.scaled_dot_product_attention``
(docs/design.md, "The target contract")::

    f(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)
    query (B, Hq, L, E)   key (B, Hkv, S, E)   value (B, Hkv, S, Ev)   ->   (B, Hq, L, Ev)

An implementation that differs (another layout, other argument names, bottom-right causal alignment,
no mask support...) *declares* it with :class:`Capabilities`, either in Python::

    from attncheck import declare

    @declare(layout="BLHD", causal="bottom-right", arg_names={"is_causal": "causal", "scale": "softmax_scale"})
    def my_attention(q, k, v, causal=False, softmax_scale=None): ...

or with the equivalent ``attncheck verify`` flags. :class:`Target` adapts every call to the declared
convention, runs it under a per-call timeout and validates what comes back, so a target that raises,
hangs or returns the wrong shape, dtype or device fails the property at hand with a clear message
instead of stopping the run. Properties that need an undeclared feature are skipped, never passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import torch
from torch import Tensor

from attncheck.errors import TargetError

Layout = Literal["BHLD", "BLHD"]
Alignment = Literal["top-left", "bottom-right"]
Causal = Literal["top-left", "bottom-right", "always"]  # "always": causal with no flag (top-left where L != S)
GqaMapping = Literal["grouped", "interleaved"]
Dropout = Literal[False, "inverted", "renormalised"]
RowConvention = Literal["zeros", "nan", "uniform"]
MaskedValues = Literal["observed", "ignored"]
Lengths = Literal["any", "equal", "q<=k"]

ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")
# transposed: BLHD storage seen as BHLD; sliced: last-dim stride 2; expanded: stride 0 over the batch
STRIDED = ("transposed", "sliced", "expanded")
MASK_SHAPES = ("full", "LS", "key_padding")
FEATURES = ("window", "softcap", "sinks", "lse")  # beyond SDPA (docs/design.md, "Beyond SDPA")
CONTRACT_ARGS = (
    *("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
    *("window", "softcap", "sinks", "return_lse"),  # the features
    *("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"),  # varlen
    *("cache_seqlens", "block_table"),  # decode
)
SIZES = ("length_multiple", "min_length", "max_length", "head_dim_multiple")  # integer Capabilities fields
SIZE_DEFAULTS = {"length_multiple": 1, "min_length": 1, "max_length": None, "head_dim_multiple": 1}
# The values a literal Capabilities field takes (None / False: "none" / "no" on the command line).
CHOICES: dict[str, tuple[Any, ...]] = {
    "causal": ("top-left", "bottom-right", "always", None),
    "lengths": ("any", "equal", "q<=k"),
    "gqa_mapping": ("grouped", "interleaved"),
    "dropout": (False, "inverted", "renormalised"),
    "layout": ("BHLD", "BLHD"),
    "masked_rows": ("zeros", "nan", "uniform", None),
    "masked_values": ("observed", "ignored"),
    "compute_dtype": (*ALL_DTYPES, None),
    "lse_base": ("e", "2"),
    "lse_empty": ("-inf", "+inf", "any"),
    "entry": ("dense", "varlen", "decode"),
}


@dataclass(frozen=True)
class Capabilities:
    """What a target supports and how it differs from the SDPA convention.

    Every field's default is the full SDPA contract; declare only what differs.
    """

    masks: frozenset[str] = frozenset({"bool", "float"})  # kinds of attn_mask accepted; empty = no mask support
    # mask shapes accepted: full (B, Hq, L, S) and its 4-D broadcasts, LS (L, S), key_padding (B, 1, 1, S)
    mask_shapes: tuple[str, ...] = MASK_SHAPES
    # alignment of is_causal when L != S; "always" = causal without a flag (top-left); None = no is_causal
    causal: Causal | None = "top-left"
    # attn_mask together with is_causal, the two ANDed, is accepted (the reference; torch SDPA 2.13 on the CPU
    # accepts it only without grad, and raises otherwise, so it is not the contract's default)
    mask_with_causal: bool = False
    lengths: Lengths = "any"  # query/key lengths accepted: any, equal (self-attention only), q<=k (L <= S)
    # sizes a kernel documents as preconditions: L and S a multiple of length_multiple (a block), at least
    # min_length and at most max_length (None = any); E and Ev a multiple of head_dim_multiple. The problems drawn
    # (and the probe's calls) are narrowed to them, so a precondition is never a failure.
    length_multiple: int = 1
    min_length: int = 1
    max_length: int | None = None
    head_dim_multiple: int = 1
    # enable_gqa: Hq a multiple of Hkv; "native": Hkv < Hq accepted with no flag (FlashAttention's convention:
    # Target then passes no enable_gqa)
    gqa: bool | Literal["native"] = True
    # which kv head query head h reads: grouped h // (Hq / Hkv) (SDPA, repeat_interleave) or interleaved h % Hkv
    # (einops "(r h)", tiling); Target translates an interleaved target to the contract by reordering the heads
    gqa_mapping: GqaMapping = "grouped"
    scale: bool = True  # the scale= argument is honoured
    # the target computes q . k with no scale at all, by design (T5 folds 1/sqrt(d_k) into its initialisation):
    # Target multiplies the query by the contract's scale (scale= or 1/sqrt(E)) and passes no scale= argument
    unscaled: bool = False
    # dropout_p > 0: False (unsupported), "inverted" (kept weights / (1 - p), SDPA) or "renormalised" (kept
    # weights renormalised to sum to 1 per row); True is read as "inverted"
    dropout: Dropout = False
    grad: bool = True  # differentiable with respect to query, key and value
    value_dim: bool = True  # Ev may differ from E
    dtypes: tuple[str, ...] = ALL_DTYPES  # dtypes accepted
    devices: tuple[str, ...] = ("cpu", "cuda")  # devices accepted
    layout: Layout = "BHLD"  # BHLD = (batch, heads, length, dim); BLHD = (batch, length, heads, dim)
    strided_inputs: tuple[str, ...] = STRIDED  # non-contiguous inputs accepted (a kernel may refuse, not miscompute)
    masked_rows: RowConvention | None = None  # declared output for rows with no admissible key; None = any
    # NaN/inf written into keys and values that no query may see: "observed" (reported, as torch SDPA lets
    # 0 x NaN reach the output) or "ignored" (declared: such values never reach the output)
    masked_values: MaskedValues = "observed"
    # the dtype the target computes in where coarser than its inputs (e.g. "float32": softmax(x.float()) called in
    # float64); None = the input dtype. matches_oracle judges precision against it; structural properties
    # budget with it (or with the precision the probe observes when undeclared).
    compute_dtype: str | None = None
    # beyond SDPA (docs/design.md): the entry (the dense SDPA call, a packed varlen call, a decode call over a KV
    # cache, paged or not) and the features: window=(left, right), softcap=c, sinks (Hq,), return_lse=True
    entry: Literal["dense", "varlen", "decode"] = "dense"
    paged: bool = False  # decode: the cache is paged (block_table), contiguous otherwise
    features: frozenset[str] = frozenset()
    window_counts_self: bool = False  # the target's left window counts the query's own key (Mistral-style size)
    lse_base: Literal["e", "2"] = "e"  # base of the returned log-sum-exp (Target converts base 2 to natural log)
    # declared lse of a row with no admissible key and no sink; "any": observed, not judged (jax: -0.7 finfo.max)
    lse_empty: Literal["-inf", "+inf", "any"] = "-inf"
    arg_names: Mapping[str, str] = field(default_factory=dict)  # contract name -> the target's keyword
    known_failures: Mapping[str, str] = field(default_factory=dict)  # check name -> reason (accepted, xfail)
    # a row's output is bitwise the same alone, inside a batch of any size and beside sequences of other lengths
    # (vllm's batch invariance, thinking-machines' batch_invariant_ops); undeclared, it is observed and reported
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", frozenset(self.masks))
        object.__setattr__(self, "features", frozenset(self.features))
        if self.dropout is True:
            object.__setattr__(self, "dropout", "inverted")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {allowed}")
        for name in SIZES:
            value = getattr(self, name)
            if not (value is None and name == "max_length") and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: {value!r} is not a positive integer")
        if self.max_length is not None and self.max_length < max(self.min_length, self.length_multiple):
            raise ValueError(f"max_length {self.max_length} admits no length (min_length, length_multiple)")
        if self.gqa not in (True, False, "native"):
            raise ValueError(f"gqa: {self.gqa!r} is not one of (True, False, 'native')")
        if self.paged and self.entry != "decode":
            raise ValueError("paged: only a decode entry reads a paged cache")
        self._require_known("features", FEATURES)
        unknown = set(self.arg_names) - set(CONTRACT_ARGS)
        if unknown:
            raise ValueError(f"arg_names: unknown contract argument(s) {sorted(unknown)}; known: {CONTRACT_ARGS}")
        for name, known in (("dtypes", ALL_DTYPES), ("mask_shapes", MASK_SHAPES), ("strided_inputs", STRIDED)):
            self._require_known(name, known)

    def _require_known(self, name: str, known: tuple[str, ...]) -> None:
        """ValueError unless every name the field ``name`` holds is one of ``known``."""
        bad = set(getattr(self, name)) - set(known)
        if bad:
            raise ValueError(f"{name}: unknown {sorted(bad)}; known: {known}")

    @property
    def alignment(self) -> Alignment:
        """Where the causal triangle sits when L != S ("always" is top-left)."""
        return "bottom-right" if self.causal == "bottom-right" else "top-left"

    def replace(self, **changes: Any) -> Capabilities:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready declaration (for reports)."""
        d = dataclasses.asdict(self)
        d["masks"], d["features"] = sorted(self.masks), sorted(self.features)
        d["dtypes"], d["devices"], d["strided_inputs"], d["mask_shapes"] = (
            list(self.dtypes),
            list(self.devices),
            list(self.strided_inputs),
            list(self.mask_shapes),
        )
        d["arg_names"], d["known_failures"] = dict(self.arg_names), dict(self.known_failures)
        return d

    def summary(self) -> str:
        """One line for report headers."""
        masks = ",".join(sorted(self.masks)) or "none"
        parts = [
            f"layout={self.layout}",
            f"masks={masks}",
            f"mask_shapes={','.join(self.mask_shapes) or 'none'}",
            f"causal={self.causal or 'no'}",
            f"lengths={self.lengths}",
            *(f"{name}={getattr(self, name)}" for name in SIZES if getattr(self, name) != SIZE_DEFAULTS[name]),
            f"gqa={self.gqa_mapping if self.gqa else 'no'}{' (native)' if self.gqa == 'native' else ''}",
            f"scale={'yes' if self.scale else 'no'}{' (unscaled q.k: attncheck scales q)' if self.unscaled else ''}",
            f"grad={'yes' if self.grad else 'no'}",
            f"dropout={self.dropout or 'no'}",
            f"Ev!=E={'yes' if self.value_dim else 'no'}",
            f"dtypes={','.join(self.dtypes)}",
            f"strided={','.join(self.strided_inputs) or 'none'}",
            f"masked_rows={self.masked_rows or 'any'}",
            f"masked_values={self.masked_values}",
            f"compute_dtype={self.compute_dtype or 'input'}",
            f"entry={self.entry}{' (paged)' if self.paged else ''}",
            f"features={','.join(sorted(self.features)) or 'none'}",
        ]
        if self.arg_names:
            parts.append("args=" + ",".join(f"{k}->{v}" for k, v in self.arg_names.items()))
        return " ".join(parts)


def declare(**capabilities: Any) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: attach :class:`Capabilities` to an attention function (read by ``attncheck verify``)."""
    caps = Capabilities(**capabilities)

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        fn.__attncheck__ = caps  # type: ignore[attr-defined]
        return fn

    return wrap


@dataclass
class Target:
    """An attention implementation under test, adapted to the SDPA convention."""

    name: str
    fn: Callable[..., Any]
    caps: Capabilities = field(default_factory=Capabilities)
    description: str = ""
    timeout: float = 60.0  # seconds per call; a call that takes longer fails the property as hung
    device: str = "cpu"  # where the properties build their tensors
    calls: int = field(default=0, init=False, repr=False)  # completed calls (a check that made none judged nothing)
    # input dtype -> the coarser dtype the first probe saw it computed in (undeclared reduced precision)
    observed_precision: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    findings: list[Any] = field(default_factory=list, init=False, repr=False)  # the first probe's root causes
    declared: Capabilities | None = field(default=None, init=False, repr=False)  # caps before the probe narrowed them
    _hung: str | None = field(default=None, init=False, repr=False)

    def __call__(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        window: tuple[int, int] | None = None,
        softcap: float | None = None,
        sinks: Tensor | None = None,
        return_lse: bool = False,
    ) -> Any:
        """Call the (dense) target with BHLD tensors and contract arguments; return a validated BHLD output, and
        with ``return_lse`` the pair (output, lse (B, Hq, L) in natural log)."""
        caps = self.caps
        self._require_entry("dense")
        B, Hq, L = query.shape[:-1]  # (B, Hq, L, E)
        if caps.causal == "always" and not is_causal:
            not_applicable("the target is always causal (causal=always); this check calls without it")
        group = Hq // key.size(-3)
        reorder = enable_gqa and group > 1 and caps.gqa_mapping == "interleaved"
        if reorder:  # query head h = kv * G + r is the target's head r * Hkv + kv, which reads kv head kv
            query = _interleave_heads(query, group, -3)
            sinks = None if sinks is None else _interleave_heads(sinks, group, -1)
            if attn_mask is not None and attn_mask.dim() >= 3 and attn_mask.size(-3) == Hq:
                attn_mask = _interleave_heads(attn_mask, group, -3)
        if caps.unscaled:  # eq. (1)'s 1/sqrt(d_k) (or scale=) applied to q: the target's q . k is then the contract's
            query = query * (scale if scale is not None else query.size(-1) ** -0.5)
            scale = None
        given = {
            "attn_mask": attn_mask,
            "dropout_p": dropout_p if dropout_p else None,
            "is_causal": True if is_causal and caps.causal != "always" else None,
            "scale": scale,
            "enable_gqa": True if enable_gqa and group > 1 and caps.gqa is True else None,
        }
        expected: tuple[int, ...] = (B, Hq, L, value.shape[-1])  # (B, Hq, L, Ev)
        if caps.layout == "BLHD":
            query, key, value = (t.transpose(-3, -2) for t in (query, key, value))  # (B, H, L, D) -> (B, L, H, D)
            expected = (B, L, Hq, value.shape[-1])  # (B, L, Hq, Ev)
        features = {"window": window, "softcap": softcap, "sinks": sinks, "return_lse": return_lse}
        out, lse = self._invoke((query, key, value), given, features, expected, (B, Hq, L))
        if caps.layout == "BLHD":
            out = out.transpose(-3, -2)  # (B, L, H, Ev) -> (B, H, L, Ev)
        if reorder:
            out = _deinterleave_heads(out, group, -3)
            lse = None if lse is None else _deinterleave_heads(lse, group, -2)
        return out if lse is None else (out, lse)

    def varlen(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        cu_seqlens_q: Tensor,
        cu_seqlens_k: Tensor,
        max_seqlen_q: int,
        max_seqlen_k: int,
        *,
        is_causal: bool = False,
        scale: float | None = None,
        window: tuple[int, int] | None = None,
        softcap: float | None = None,
        sinks: Tensor | None = None,
        return_lse: bool = False,
    ) -> Any:
        """Call a varlen target: query (Tq, Hq, E), key (Tk, Hkv, E), value (Tk, Hkv, Ev) and int32
        cu_seqlens (B + 1,) -> out (Tq, Hq, Ev), or (out, lse (Hq, Tq)) with ``return_lse``."""
        self._require_entry("varlen")
        given = {
            "cu_seqlens_q": cu_seqlens_q,
            "cu_seqlens_k": cu_seqlens_k,
            "max_seqlen_q": max_seqlen_q,
            "max_seqlen_k": max_seqlen_k,
            "is_causal": True if is_causal else None,
            "scale": scale,
        }
        features = {"window": window, "softcap": softcap, "sinks": sinks, "return_lse": return_lse}
        Tq, Hq = query.shape[:2]
        out, lse = self._invoke((query, key, value), given, features, (Tq, Hq, value.size(-1)), (Hq, Tq))
        return out if lse is None else (out, lse)

    def decode(
        self,
        query: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        cache_seqlens: Tensor,
        *,
        block_table: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        window: tuple[int, int] | None = None,
        softcap: float | None = None,
        sinks: Tensor | None = None,
        return_lse: bool = False,
    ) -> Any:
        """Call a decode target: query (B, Lq, Hq, E), a contiguous cache (B, S_cap, Hkv, E|Ev) or a paged one
        (num_blocks, block_size, Hkv, E|Ev) with ``block_table`` (B, max_blocks), int32 cache_seqlens (B,) ->
        out (B, Lq, Hq, Ev), or (out, lse (B, Hq, Lq)) with ``return_lse``."""
        self._require_entry("decode")
        if (block_table is not None) != self.caps.paged:
            not_applicable(f"the target reads a {'paged' if self.caps.paged else 'contiguous'} cache")
        given = {
            "cache_seqlens": cache_seqlens,
            "block_table": block_table,
            "is_causal": True if is_causal else None,
            "scale": scale,
        }
        features = {"window": window, "softcap": softcap, "sinks": sinks, "return_lse": return_lse}
        B, Lq, Hq = query.shape[:3]
        expected = (B, Lq, Hq, v_cache.size(-1))  # (B, Lq, Hq, Ev)
        out, lse = self._invoke((query, k_cache, v_cache), given, features, expected, (B, Hq, Lq))
        return out if lse is None else (out, lse)

    def _require_entry(self, entry: str) -> None:
        if self.caps.entry != entry:
            not_applicable(f"a {entry} check; the target's entry is {self.caps.entry}")

    def _invoke(
        self,
        tensors: tuple[Tensor, Tensor, Tensor],
        given: dict[str, Any],
        features: dict[str, Any],
        expected: tuple[int, ...],
        lse_shape: tuple[int, ...],
    ) -> tuple[Tensor, Tensor | None]:
        """Call the target with ``tensors`` and the contract arguments that are set (renamed as declared; a target
        may lack the others), under the timeout; validate the output (shape ``expected``, the query's dtype and
        device) and, when asked for, the lse (shape ``lse_shape``, natural log)."""
        caps = self.caps
        window, return_lse = features["window"], features["return_lse"]
        if window is not None and caps.window_counts_self:
            window = (window[0] + 1 if window[0] >= 0 else window[0], window[1])  # left size includes the query
        given = {**given, **features, "window": window, "return_lse": True if return_lse else None}
        kwargs = {caps.arg_names.get(arg, arg): val for arg, val in given.items() if val is not None}
        result = self._call_with_timeout(*tensors, kwargs)
        lse = None
        if return_lse:
            if not (isinstance(result, tuple | list) and len(result) >= 2 and isinstance(result[1], Tensor)):
                raise TargetError(f"target {self.name!r} was asked for return_lse and did not return (out, lse)")
            result, lse = result[0], result[1]
        elif isinstance(result, tuple | list) and result and isinstance(result[0], Tensor):
            result = result[0]  # (output, weights) or (output, lse): the output comes first
        if not isinstance(result, Tensor):
            raise TargetError(f"target {self.name!r} returned {type(result).__name__}, expected a torch.Tensor")
        query = tensors[0]
        if tuple(result.shape) != tuple(expected):
            raise TargetError(
                f"target {self.name!r} returned shape {tuple(result.shape)}, expected {tuple(expected)} "
                f"(query {tuple(query.shape)}, value {tuple(tensors[2].shape)}, layout {caps.layout})"
            )
        if result.dtype != query.dtype:
            raise TargetError(
                f"target {self.name!r} returned dtype {result.dtype}, expected {query.dtype} (the input's)"
            )
        if result.device != query.device:
            raise TargetError(f"target {self.name!r} returned a tensor on {result.device}, expected {query.device}")
        if lse is not None:
            if tuple(lse.shape) != lse_shape or not lse.is_floating_point():
                raise TargetError(
                    f"target {self.name!r} returned lse of shape {tuple(lse.shape)} and dtype {lse.dtype}, "
                    f"expected a float tensor of shape {lse_shape}"
                )
            if caps.lse_base == "2":
                lse = lse * math.log(2)  # log2(x) * ln 2 = ln(x)
        self.calls += 1
        return result, lse

    def precision(self, dtype: torch.dtype, judged: bool = False) -> torch.dtype:
        """The precision this target computes ``dtype`` inputs in: declared (``compute_dtype``), else, for the
        structural properties, what the first probe observed; ``judged=True`` (matches_oracle) ignores the
        observation, so an undeclared reduced precision is one matches_oracle finding."""
        from attncheck.properties.oracle import precision

        name = str(dtype).removeprefix("torch.")
        compute = self.caps.compute_dtype or (None if judged else self.observed_precision.get(name))
        return precision(dtype, getattr(torch, compute) if compute else None)

    def _call_with_timeout(self, query: Tensor, key: Tensor, value: Tensor, kwargs: dict[str, Any]) -> Any:
        """Run one call in a worker thread; a call that outlives ``timeout`` marks the target hung."""
        if self._hung:
            raise TargetError(self._hung, "hung")
        result: dict[str, Any] = {}
        grad_enabled = torch.is_grad_enabled()  # grad mode is thread-local: carry the caller's over
        inference = torch.is_inference_mode_enabled()  # so is inference mode (integrity calls under it)

        def work() -> None:
            try:
                mode = torch.inference_mode() if inference else contextlib.nullcontext()
                with mode, torch.set_grad_enabled(grad_enabled):
                    result["out"] = self.fn(query, key, value, **kwargs)
            except BaseException as exc:
                result["exc"] = exc

        worker = threading.Thread(target=work, name=f"attncheck-{self.name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            self._hung = (
                f"target {self.name!r} did not return within {self.timeout:g} s (hung); "
                "it is not called again in this run"
            )
            raise TargetError(self._hung, "hung")
        if "exc" in result:
            exc = result["exc"]
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TargetError(f"target {self.name!r} raised {type(exc).__name__}: {first_line}", "raised") from exc
        return result["out"]


def not_applicable(reason: str) -> NoReturn:
    """Skip the check at hand: the call or feature it needs does not exist for this target (never a pass)."""
    import pytest  # imported here: the plugin loads this module in sessions that never run a check

    pytest.skip(f"not applicable: {reason}")


def require(condition: bool, reason: str) -> None:
    """Skip the property as not applicable (never pass it) when the target lacks a feature."""
    if not condition:
        not_applicable(reason)


def _interleave_heads(t: Tensor, group: int, dim: int) -> Tensor:
    """Contract head order (kv, r) -> the interleaved order (r, kv) along the head dimension ``dim``."""
    dim %= t.dim()
    grouped = t.unflatten(dim, (t.size(dim) // group, group))  # (..., Hq, ...) -> (..., Hkv, G, ...)
    return grouped.transpose(dim, dim + 1).flatten(dim, dim + 1)  # (..., G, Hkv, ...) -> (..., Hq, ...)


def _deinterleave_heads(t: Tensor, group: int, dim: int) -> Tensor:
    """The interleaved head order (r, kv) back to the contract order (kv, r): the inverse of the above."""
    return _interleave_heads(t, t.size(dim) // group, dim)


# ---------------------------------------------------------------------------------------------------------------
