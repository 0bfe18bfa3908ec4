"""Targets: attention implementations under test, their declared capabilities, and the built-in registry.

A target is a callable in the convention of ``torch.nn.functional.scaled_dot_product_attention``
(shared/DESIGN.md, "The target contract")::

    f(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)
    query (B, Hq, L, E)   key (B, Hkv, S, E)   value (B, Hkv, S, Ev)   ->   (B, Hq, L, Ev)

An implementation that differs (another layout, other argument names, bottom-right causal alignment,
no mask support...) *declares* it with :class:`Capabilities`, either in Python::

    from properties import declare

    @declare(layout="BLHD", causal="bottom-right", arg_names={"is_causal": "causal", "scale": "softmax_scale"})
    def my_attention(q, k, v, causal=False, softmax_scale=None): ...

or with the equivalent ``attncheck verify`` flags. :class:`Target` adapts every call to the declared
convention, runs it under a per-call timeout and validates what comes back, so a target that raises,
hangs or returns the wrong shape, dtype or device fails the property at hand with a clear message
instead of stopping the run. Properties that need an undeclared feature are skipped, never passed.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Layout = Literal["BHLD", "BLHD"]
Alignment = Literal["top-left", "bottom-right"]
RowConvention = Literal["zeros", "nan", "uniform"]

ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")
# transposed: BLHD storage seen as BHLD; sliced: last-dim stride 2; expanded: stride 0 over the batch
STRIDED = ("transposed", "sliced", "expanded")
CONTRACT_ARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass(frozen=True)
class Capabilities:
    """What a target supports and how it differs from the SDPA convention.

    Every field's default is the full SDPA contract; declare only what differs.
    """

    masks: frozenset[str] = frozenset({"bool", "float"})  # kinds of attn_mask accepted; empty = no mask support
    causal: Alignment | None = "top-left"  # alignment of is_causal when L != S; None = no is_causal
    gqa: bool = True  # enable_gqa (Hq a multiple of Hkv, head h reads kv head h // (Hq / Hkv))
    scale: bool = True  # the scale= argument is honoured
    dropout: bool = False  # dropout_p > 0 is supported (property dropout_statistics)
    grad: bool = True  # differentiable with respect to query, key and value
    value_dim: bool = True  # Ev may differ from E
    dtypes: tuple[str, ...] = ALL_DTYPES  # dtypes accepted
    devices: tuple[str, ...] = ("cpu", "cuda")  # devices accepted
    layout: Layout = "BHLD"  # BHLD = (batch, heads, length, dim); BLHD = (batch, length, heads, dim)
    strided_inputs: tuple[str, ...] = STRIDED  # non-contiguous inputs accepted (a kernel may refuse, not miscompute)
    masked_rows: RowConvention | None = None  # declared output for rows with no admissible key; None = any
    arg_names: Mapping[str, str] = field(default_factory=dict)  # contract name -> the target's keyword
    known_failures: Mapping[str, str] = field(default_factory=dict)  # check name -> reason (accepted, xfail)

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", frozenset(self.masks))
        unknown = set(self.arg_names) - set(CONTRACT_ARGS)
        if unknown:
            raise ValueError(f"arg_names: unknown contract argument(s) {sorted(unknown)}; known: {CONTRACT_ARGS}")
        bad = set(self.dtypes) - set(ALL_DTYPES)
        if bad:
            raise ValueError(f"dtypes: unknown {sorted(bad)}; known: {ALL_DTYPES}")
        bad = set(self.strided_inputs) - set(STRIDED)
        if bad:
            raise ValueError(f"strided_inputs: unknown {sorted(bad)}; known: {STRIDED}")

    def replace(self, **changes: Any) -> Capabilities:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready declaration (for reports)."""
        d = dataclasses.asdict(self)
        d["masks"] = sorted(self.masks)
        d["dtypes"], d["devices"], d["strided_inputs"] = (
            list(self.dtypes),
            list(self.devices),
            list(self.strided_inputs),
        )
        d["arg_names"], d["known_failures"] = dict(self.arg_names), dict(self.known_failures)
        return d

    def summary(self) -> str:
        """One line for report headers."""
        masks = ",".join(sorted(self.masks)) or "none"
        parts = [
            f"layout={self.layout}",
            f"masks={masks}",
            f"causal={self.causal or 'no'}",
            f"gqa={'yes' if self.gqa else 'no'}",
            f"scale={'yes' if self.scale else 'no'}",
            f"grad={'yes' if self.grad else 'no'}",
            f"dropout={'yes' if self.dropout else 'no'}",
            f"Ev!=E={'yes' if self.value_dim else 'no'}",
            f"dtypes={','.join(self.dtypes)}",
            f"strided={','.join(self.strided_inputs) or 'none'}",
            f"masked_rows={self.masked_rows or 'any'}",
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


class TargetError(AssertionError):
    """The target misbehaved as a program: it raised, hung, or returned something of the wrong kind."""


class TargetUnavailable(Exception):
    """A built-in target cannot run here (optional library missing, no CUDA...)."""


class TargetSpecError(Exception):
    """A TARGET string on the command line cannot be resolved (usage error, exit code 2)."""


@dataclass
class Target:
    """An attention implementation under test, adapted to the SDPA convention."""

    name: str
    fn: Callable[..., Any]
    caps: Capabilities = field(default_factory=Capabilities)
    description: str = ""
    timeout: float = 60.0  # seconds per call; a call that takes longer fails the property as hung
    device: str = "cpu"  # where the properties build their tensors
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
    ) -> Tensor:
        """Call the target with BHLD tensors and contract arguments; return a validated BHLD output."""
        expected = (*query.shape[:-1], value.shape[-1])  # (B, Hq, L, Ev)
        kwargs: dict[str, Any] = {}
        given = {
            "attn_mask": attn_mask,
            "dropout_p": dropout_p if dropout_p else None,
            "is_causal": True if is_causal else None,
            "scale": scale,
            "enable_gqa": True if enable_gqa and key.size(-3) != query.size(-3) else None,
        }
        for arg, val in given.items():
            if val is not None:
                kwargs[self.caps.arg_names.get(arg, arg)] = val  # only what is used: a target may lack the rest
        if self.caps.layout == "BLHD":
            query, key, value = (t.transpose(-3, -2) for t in (query, key, value))  # (B, H, L, D) -> (B, L, H, D)
        out = self._call_with_timeout(query, key, value, kwargs)
        if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
            out = out[0]  # (output, weights) or (output, lse): the output comes first
        if not isinstance(out, Tensor):
            raise TargetError(f"target {self.name!r} returned {type(out).__name__}, expected a torch.Tensor")
        if self.caps.layout == "BLHD" and out.dim() >= 3:
            out = out.transpose(-3, -2)  # (B, L, H, Ev) -> (B, H, L, Ev)
        if tuple(out.shape) != tuple(expected):
            raise TargetError(
                f"target {self.name!r} returned shape {tuple(out.shape)}, expected {tuple(expected)} "
                f"(query {tuple(query.shape)}, value {tuple(value.shape)}, layout {self.caps.layout})"
            )
        if out.dtype != query.dtype:
            raise TargetError(f"target {self.name!r} returned dtype {out.dtype}, expected {query.dtype} (the input's)")
        if out.device != query.device:
            raise TargetError(f"target {self.name!r} returned a tensor on {out.device}, expected {query.device}")
        return out

    def _call_with_timeout(self, query: Tensor, key: Tensor, value: Tensor, kwargs: dict[str, Any]) -> Any:
        """Run one call in a worker thread; a call that outlives ``timeout`` marks the target hung."""
        if self._hung:
            raise TargetError(self._hung)
        result: dict[str, Any] = {}
        grad_enabled = torch.is_grad_enabled()  # grad mode is thread-local: carry the caller's over

        def work() -> None:
            try:
                with torch.set_grad_enabled(grad_enabled):
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
            raise TargetError(self._hung)
        if "exc" in result:
            exc = result["exc"]
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TargetError(f"target {self.name!r} raised {type(exc).__name__}: {first_line}") from exc
        return result["out"]


# ---------------------------------------------------------------------------------------------------------------
# Built-in targets

Factory = Callable[[], Target]
BUILTINS: dict[str, tuple[str, Factory]] = {}  # name -> (one-line description, factory)
DEFAULT_TARGETS = ("reference", "torch-sdpa")

# torch SDPA (every CPU backend) lets NaN or inf in the key or value of a fully masked key column leak into the
# output: its masked weights are exactly zero but 0 * NaN = NaN in P V (pytorch/pytorch#101967 class).
SDPA_KNOWN = {
    "test_masked_keys_nonfinite_irrelevant": "torch SDPA: NaN in masked-out keys/values reaches the output "
    "(0 * NaN in P V; pytorch/pytorch#101967)",
}


def builtin(name: str, description: str) -> Callable[[Factory], Factory]:
    """Register a built-in target factory under ``name``."""

    def register(factory: Factory) -> Factory:
        BUILTINS[name] = (description, factory)
        return factory

    return register


@builtin("reference", "attncheck's reference, equation (1) with -inf masking (reference/attention.py)")
def _reference() -> Target:
    from reference.attention import scaled_dot_product_attention

    caps = Capabilities(dropout=True, masked_rows="zeros")
    return Target("reference", scaled_dot_product_attention, caps, "reference.attention.scaled_dot_product_attention")


@builtin("torch-sdpa", "torch.nn.functional.scaled_dot_product_attention, default dispatch")
def _torch_sdpa() -> Target:
    fn = torch.nn.functional.scaled_dot_product_attention
    caps = Capabilities(dropout=True, known_failures=SDPA_KNOWN)
    return Target("torch-sdpa", fn, caps, f"torch {torch.__version__} SDPA, default dispatch")


def _sdpa_backend(backend_name: str, caps: Capabilities) -> Factory:
    def factory() -> Target:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)

        def forced(query: Tensor, key: Tensor, value: Tensor, **kwargs: Any) -> Tensor:
            with sdpa_kernel(backend):  # forced: raises "No available kernel" instead of falling back
                return torch.nn.functional.scaled_dot_product_attention(query, key, value, **kwargs)

        name = f"torch-sdpa-{backend_name.lower().replace('_attention', '')}"
        return Target(name, forced, caps, f"torch {torch.__version__} SDPA forced to SDPBackend.{backend_name}")

    return factory


builtin("torch-sdpa-math", "torch SDPA forced to the MATH backend")(
    _sdpa_backend("MATH", Capabilities(dropout=True, known_failures=SDPA_KNOWN))
)
# The CPU flash kernel takes 4-D inputs with Ev == E, a contiguous last dimension and no dropout only (otherwise
# it raises "No available kernel": a refusal, declared, not a wrong result).
builtin("torch-sdpa-flash", "torch SDPA forced to the FLASH_ATTENTION backend (CPU flash kernel; CUDA flash on GPU)")(
    _sdpa_backend(
        "FLASH_ATTENTION",
        Capabilities(value_dim=False, strided_inputs=("transposed", "expanded"), known_failures=SDPA_KNOWN),
    )
)


def resolve(spec: str) -> Target:
    """A built-in name or ``module.path:attr`` -> :class:`Target` (raises TargetSpecError / TargetUnavailable)."""
    if spec in BUILTINS:
        return BUILTINS[spec][1]()
    if ":" not in spec:
        known = ", ".join(BUILTINS)
        raise TargetSpecError(f"unknown target {spec!r}: not a built-in ({known}) and not of the form module.path:attr")
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise TargetSpecError(f"bad target {spec!r}: expected module.path:attr")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise TargetSpecError(
            f"cannot import module {module_name!r} for target {spec!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetSpecError(f"module {module_name!r} has no attribute {attr_path!r} (target {spec!r})") from None
    if isinstance(obj, Target):
        return obj
    if not callable(obj):
        raise TargetSpecError(f"target {spec!r} is a {type(obj).__name__}, not callable")
    caps = getattr(obj, "__attncheck__", None) or Capabilities()
    return Target(spec, obj, caps, f"{spec} (user target)")


def availability() -> list[tuple[str, str, str | None]]:
    """(name, description, reason unavailable or None) for every built-in target."""
    rows: list[tuple[str, str, str | None]] = []
    for name, (description, factory) in BUILTINS.items():
        try:
            factory()
            rows.append((name, description, None))
        except TargetUnavailable as exc:
            rows.append((name, description, str(exc)))
    return rows


import properties.adapters  # noqa: E402, F401  (registers the third-party built-ins)
