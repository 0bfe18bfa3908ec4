"""CUDA-only built-in targets: torch SDPA on CUDA, FlashAttention, FlashInfer (single prefill and decode), xformers.

Written against the libraries' documented APIs; without CUDA each factory raises TargetUnavailable. The
translations (layouts, argument names, GQA) are tested on the CPU against stand-ins (tests/test_adapters.py).
The varlen and decode entries of the same libraries are in :mod:`.cuda_entries`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import torch
from torch import Tensor

from attncheck.adapters import HALF_AND_SINGLE, require_cuda
from attncheck.errors import TargetUnavailable
from attncheck.properties.contract import Alignment, Capabilities, Target

HALF = ("bfloat16", "float16")  # FlashAttention and FlashInfer: fp16/bf16 only

# ---------------------------------------------------------------------------------------------------------------
# CUDA only: torch SDPA on CUDA, FlashAttention


def torch_sdpa_cuda_target() -> Target:
    require_cuda("torch-sdpa-cuda")
    fn = torch.nn.functional.scaled_dot_product_attention
    caps = Capabilities(dropout="inverted", devices=("cuda",))
    description = f"torch {torch.__version__} SDPA on {torch.cuda.get_device_name()}, default dispatch"
    return Target("torch-sdpa-cuda", fn, caps, description, device="cuda")


def _version(text: str) -> tuple[int, ...]:
    """'2.6.3' or '2.1.0.post1' -> (2, 6)."""
    return tuple(int(part) for part in text.split(".")[:2])


def _import_cuda_library(module: str, library: str, pip: str, name: str) -> Any:
    """The top-level package of ``module`` (``xformers.ops`` imports xformers and its ops), or TargetUnavailable
    for the target ``name``: ``library`` is not installed (``pip install`` ``pip``), or there is no CUDA device."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise TargetUnavailable(f"{library} is not installed: pip install {pip} (CUDA only)") from None
    require_cuda(name)
    return sys.modules[module.partition(".")[0]]


def _import_flash_attn(name: str) -> Any:
    """The flash_attn module (FlashAttention 2), or TargetUnavailable for the target ``name``."""
    return _import_cuda_library("flash_attn", "flash-attn", "flash-attn", name)


def _flash_attn_caps(version: tuple[int, ...], **declared: Any) -> Capabilities:
    """What every FlashAttention 2 entry declares (see flash_attn_target), and ``declared`` besides."""
    alignment: Alignment = "bottom-right" if version >= (2, 1) else "top-left"
    features = {"lse"} | ({"window"} if version >= (2, 3) else set()) | ({"softcap"} if version >= (2, 6) else set())
    return Capabilities(
        masks=frozenset(),
        causal=alignment,
        value_dim=False,
        dtypes=HALF,
        devices=("cuda",),
        masked_rows="zeros",
        features=frozenset(features),
        lse_empty="+inf",
        **declared,
    )


def _flash_attn_kwargs(window: tuple[int, int] | None, softcap: float | None) -> dict[str, Any]:
    """window_size and softcap, passed only when set (flash-attn's defaults (-1, -1) and 0.0 mean off; None never
    reaches it)."""
    features: dict[str, Any] = {}
    if window is not None:
        features["window_size"] = window  # (left, right), -1 = unbounded: the contract's own count
    if softcap is not None:
        features["softcap"] = softcap
    return features


def flash_attn_target() -> Target:
    flash_attn = _import_flash_attn("flash-attn")
    version = _version(flash_attn.__version__)

    def flash(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: Hq a multiple of Hkv
        *,
        window: tuple[int, int] | None = None,
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> Any:
        result = flash_attn.flash_attn_func(
            query,
            key,
            value,
            dropout_p=dropout_p,
            softmax_scale=scale,
            causal=is_causal,
            return_attn_probs=return_lse,
            **_flash_attn_kwargs(window, softcap),
        )
        if return_lse:
            out, softmax_lse, _ = result  # (out, softmax_lse (B, Hq, L) float32, S_dmask)
            return out, softmax_lse
        return result  # (B, L, Hq, Ev)

    # flash-attn 2.1 moved causal from top-left to bottom-right alignment; its README: "If the row of the mask
    # is all zero, the output will be zero". Windows (2.3) align bottom-right as causal does; softcap arrived in
    # 2.6. softmax_lse is the natural-log logsumexp of the scaled (capped) logits, +inf on rows with no key (so that
    # the backward's exp(s - lse) is 0). Checked against the flash_attn_func docstring of flash-attn 2.8.3
    # (flash_attn/flash_attn_interface.py); the translation is tested on CPU with a stand-in (tests/test_adapters.py).
    caps = _flash_attn_caps(version, dropout="inverted", layout="BLHD")
    description = f"flash-attn {flash_attn.__version__} flash_attn_func on {torch.cuda.get_device_name()}"
    return Target("flash-attn", flash, caps, description, device="cuda")


# ---------------------------------------------------------------------------------------------------------------
# FlashInfer: single-request prefill and decode (written against flashinfer 0.6.18, flashinfer/prefill.py and
# flashinfer/decode.py at fb28d724). One call per batch element (and per query row for decode): the single-request
# functions take NHD tensors (length, heads, dim) without a batch. Both write lse in base 2 (the kernels keep
# log2-scaled logits and store log2(d) + m; FlashInfer #2113), declared lse_base="2"; their sliding window has a
# left bound only (``window_left``), which the (left, right) contract cannot declare, so it is not used.


def _import_flashinfer(name: str) -> Any:
    """The flashinfer module, or TargetUnavailable for the target ``name``."""
    return _import_cuda_library("flashinfer", "flashinfer", "flashinfer-python", name)


# What every FlashInfer wrapper declares: no mask, inference only, fp16/bf16 with one head dim, softcap, lse base 2.
FLASHINFER = Capabilities(
    masks=frozenset(),
    grad=False,
    value_dim=False,
    dtypes=HALF,
    devices=("cuda",),
    features=frozenset({"softcap", "lse"}),
    lse_base="2",
)


def flashinfer_prefill_target() -> Target:
    flashinfer = _import_flashinfer("flashinfer-prefill")

    def prefill(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: num_qo_heads a multiple of num_kv_heads
        *,
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> Any:
        results = [
            flashinfer.single_prefill_with_kv_cache(
                q,  # (L, Hq, E)
                k,  # (S, Hkv, E), kv_layout="NHD"
                v,  # (S, Hkv, Ev)
                causal=is_causal,
                sm_scale=scale,
                logits_soft_cap=softcap,  # None = 0 = off
                return_lse=return_lse,
            )
            for q, k, v in zip(query, key, value, strict=True)
        ]
        if not return_lse:
            return torch.stack(results)  # B x (L, Hq, Ev) -> (B, L, Hq, Ev)
        out = torch.stack([o for o, _ in results])  # B x (L, Hq, Ev) -> (B, L, Hq, Ev)
        lse = torch.stack([lse for _, lse in results]).transpose(1, 2)  # B x (L, Hq) -> (B, L, Hq) -> (B, Hq, L)
        return out, lse

    # Causal is bottom-right (its docstring builds the mask with diagonal=kv_len - qo_len). Inference only.
    caps = FLASHINFER.replace(causal="bottom-right", layout="BLHD")
    description = f"flashinfer {flashinfer.__version__} single_prefill_with_kv_cache on {torch.cuda.get_device_name()}"
    return Target("flashinfer-prefill", prefill, caps, description, device="cuda")


def flashinfer_decode_target() -> Target:
    flashinfer = _import_flashinfer("flashinfer-decode")

    def decode(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: num_qo_heads a multiple of num_kv_heads
        *,
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> Any:
        # each query row is one decode step against all S keys: (Hq, E) against (S, Hkv, E)
        results = [
            [
                flashinfer.single_decode_with_kv_cache(
                    q, k, v, sm_scale=scale, logits_soft_cap=softcap, return_lse=return_lse
                )
                for q in q_rows  # (Hq, E)
            ]
            for q_rows, k, v in zip(query, key, value, strict=True)  # (L, Hq, E), (S, Hkv, E), (S, Hkv, Ev)
        ]
        if not return_lse:
            return torch.stack([torch.stack(rows) for rows in results])  # B x L x (Hq, Ev) -> (B, L, Hq, Ev)
        out = torch.stack([torch.stack([o for o, _ in rows]) for rows in results])  # (B, L, Hq, Ev)
        lse = torch.stack([torch.stack([lse for _, lse in rows], dim=-1) for rows in results])  # B x (Hq, L)
        return out, lse  # (B, Hq, L)

    # A decode step sees every key (no causal flag); no mask; inference only.
    caps = FLASHINFER.replace(causal=None, layout="BLHD")
    description = f"flashinfer {flashinfer.__version__} single_decode_with_kv_cache on {torch.cuda.get_device_name()}"
    return Target("flashinfer-decode", decode, caps, description, device="cuda")


def _aligned_bias(bias: Tensor) -> Tensor:
    """The same values with a row stride padded to a multiple of 8, as xformers requires of tensor biases."""
    S = bias.size(-1)
    storage = bias.new_empty(*bias.shape[:-1], S + (-S % 8))  # (..., L, S'), S' = S rounded up to 8
    storage[..., :S] = bias
    return storage[..., :S]  # (..., L, S), row stride S'


def _import_xformers(name: str) -> Any:
    """The xformers module (its ``ops`` imported), or TargetUnavailable for the target ``name``."""
    return _import_cuda_library("xformers.ops", "xformers", "xformers", name)


def xformers_target() -> Target:
    xformers = _import_xformers("xformers")
    xops = xformers.ops

    def xformers_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        B, L, Hq, E = query.shape
        S, Hkv, Ev = key.size(1), key.size(2), value.size(-1)
        G = Hq // Hkv  # query heads per kv head
        bias: Any = None
        if attn_mask is not None:
            bias = _aligned_bias(attn_mask.expand(B, Hq, L, S).to(query.dtype))  # (B, Hq, L, S)
        if G > 1:  # GQA in xformers' BMGHK layout: kv head g serves query heads g*G .. g*G + G - 1
            query = query.unflatten(2, (Hkv, G))  # (B, L, Hq, E) -> (B, L, Hkv, G, E)
            key = key.unsqueeze(3).expand(B, S, Hkv, G, E)  # (B, S, Hkv, E) -> (B, S, Hkv, G, E), stride 0
            value = value.unsqueeze(3).expand(B, S, Hkv, G, Ev)  # (B, S, Hkv, Ev) -> (B, S, Hkv, G, Ev), stride 0
            if bias is not None:
                bias = bias.unflatten(1, (Hkv, G))  # (B, Hq, L, S) -> (B, Hkv, G, L, S)
        if is_causal:  # top-left; LowerTriangularFromBottomRightMask would be bottom-right
            bias = xops.LowerTriangularMask() if bias is None else xops.LowerTriangularMask().add_bias(bias)
        out = xops.memory_efficient_attention(query, key, value, attn_bias=bias, p=dropout_p, scale=scale)
        return out.reshape(B, L, Hq, Ev)  # (B, L, Hkv, G, Ev) or (B, L, Hq, Ev) -> (B, L, Hq, Ev)

    # Tensor biases are additive (no bool masks). float64 is not supported by any xformers operator.
    caps = Capabilities(
        masks=frozenset({"float"}), dropout="inverted", dtypes=HALF_AND_SINGLE, devices=("cuda",), layout="BLHD"
    )
    description = f"xformers {xformers.__version__} memory_efficient_attention on {torch.cuda.get_device_name()}"
    return Target("xformers", xformers_attention, caps, description, device="cuda")
