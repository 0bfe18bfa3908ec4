"""CUDA-only built-in targets: torch SDPA on CUDA, FlashAttention, xformers.

Written against the libraries' documented APIs; without CUDA each factory raises TargetUnavailable. The
translations (layouts, argument names, GQA) are tested on the CPU against stand-ins (tests/test_adapters.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attncheck.errors import TargetUnavailable
from attncheck.properties.adapters import HALF_AND_SINGLE, require_cuda
from attncheck.properties.targets import Alignment, Capabilities, Target

# ---------------------------------------------------------------------------------------------------------------
# CUDA only: torch SDPA on CUDA, FlashAttention, xformers


def torch_sdpa_cuda_target() -> Target:
    require_cuda("torch-sdpa-cuda")
    fn = torch.nn.functional.scaled_dot_product_attention
    caps = Capabilities(dropout=True, devices=("cuda",))
    description = f"torch {torch.__version__} SDPA on {torch.cuda.get_device_name()}, default dispatch"
    return Target("torch-sdpa-cuda", fn, caps, description, device="cuda")


def _version(text: str) -> tuple[int, ...]:
    """'2.6.3' or '2.1.0.post1' -> (2, 6)."""
    return tuple(int(part) for part in text.split(".")[:2])


def flash_attn_target() -> Target:
    try:
        import flash_attn
        from flash_attn import flash_attn_func
    except ImportError:
        raise TargetUnavailable("flash-attn is not installed: pip install flash-attn (CUDA only)") from None
    require_cuda("flash-attn")

    def flash(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: Hq a multiple of Hkv
    ) -> Tensor:
        return flash_attn_func(query, key, value, dropout_p=dropout_p, softmax_scale=scale, causal=is_causal)

    # flash-attn 2.1 moved causal from top-left to bottom-right alignment; its README: "If the row of the mask
    # is all zero, the output will be zero".
    alignment: Alignment = "bottom-right" if _version(flash_attn.__version__) >= (2, 1) else "top-left"
    caps = Capabilities(
        masks=frozenset(),
        causal=alignment,
        dropout=True,
        value_dim=False,
        dtypes=("bfloat16", "float16"),
        devices=("cuda",),
        layout="BLHD",
        masked_rows="zeros",
    )
    description = f"flash-attn {flash_attn.__version__} flash_attn_func on {torch.cuda.get_device_name()}"
    return Target("flash-attn", flash, caps, description, device="cuda")


def _aligned_bias(bias: Tensor) -> Tensor:
    """The same values with a row stride padded to a multiple of 8, as xformers requires of tensor biases."""
    S = bias.size(-1)
    storage = bias.new_empty(*bias.shape[:-1], S + (-S % 8))  # (..., L, S'), S' = S rounded up to 8
    storage[..., :S] = bias
    return storage[..., :S]  # (..., L, S), row stride S'


def xformers_target() -> Target:
    try:
        import xformers
        import xformers.ops as xops
    except ImportError:
        raise TargetUnavailable("xformers is not installed: pip install xformers (CUDA only)") from None
    require_cuda("xformers")

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
        masks=frozenset({"float"}), dropout=True, dtypes=HALF_AND_SINGLE, devices=("cuda",), layout="BLHD"
    )
    description = f"xformers {xformers.__version__} memory_efficient_attention on {torch.cuda.get_device_name()}"
    return Target("xformers", xformers_attention, caps, description, device="cuda")
