"""Built-in target of JAX: ``jax.nn.dot_product_attention``, jitted, through numpy on the host (jax 0.10.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attncheck.errors import TargetUnavailable
from attncheck.properties.adapters import HALF_AND_SINGLE, as_4d
from attncheck.properties.targets import Capabilities, Target

# ---------------------------------------------------------------------------------------------------------------
# JAX


def jax_target() -> Target:
    try:
        import jax
        import ml_dtypes
        import numpy as np
    except ImportError:
        raise TargetUnavailable("jax is not installed: pip install 'attncheck[jax]'") from None

    def to_numpy(t: Tensor) -> Any:
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits as ml_dtypes.bfloat16
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def from_numpy(a: Any, like: Tensor) -> Tensor:
        a = np.array(a)  # a writable host copy of the jax.Array
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(like.device)
        return torch.from_numpy(a).to(like.device)

    backend = jax.default_backend()
    attention = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "scale"))  # as JAX code runs it

    def jax_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: N query heads, K kv heads
    ) -> Tensor:
        mask = as_4d(attn_mask)  # (., ., L, S): jax wants 4-D masks broadcastable to (B, N, T, S)
        bool_mask = to_numpy(mask) if mask is not None and mask.dtype == torch.bool else None
        bias = to_numpy(mask) if mask is not None and mask.dtype != torch.bool else None
        with jax.enable_x64(True):  # float64 stays float64 (jax would silently compute float32 otherwise)
            out = attention(
                to_numpy(query),
                to_numpy(key),
                to_numpy(value),
                bias=bias,
                mask=bool_mask,
                scale=scale,
                is_causal=is_causal,
            )  # (B, T, N, Ev)
        return from_numpy(out, query)

    # BTNH = BLHD. value must have key's shape (Ev == E). No dropout, no autograd through numpy.
    # float64 is not declared: jax computes the softmax in float32 for every input dtype (~1e-7 off in float64).
    # Half types are not declared on the CPU backend, where jitted XLA cannot run the dots the library asks for
    # (jaxlib 0.10.2): float16 always raises "The precision 'F16_F16_F32' is not supported by dot_general on CPU";
    # bfloat16 raises "Algorithm not supported by the ElementalIrEmitter: ALG_DOT_BF16_BF16_F32" on some shapes
    # (head dim 1) and aborts the whole process on others (XLA "Check failed: ... (reshape vs. bitcast)" in
    # ynn_emitter.cc, e.g. batch 1, head dim 1, L = S = 64). The library's eager fallback avoids them but costs
    # ~1 s per new shape. Bool-masked scores become -0.7 * finfo.max, not -inf: fully masked rows are uniform.
    dtypes = ("float32",) if backend == "cpu" else HALF_AND_SINGLE
    caps = Capabilities(grad=False, value_dim=False, dtypes=dtypes, devices=("cpu",), layout="BLHD")
    description = f"jax {jax.__version__} jax.jit(jax.nn.dot_product_attention) on the {backend} backend"
    return Target("jax", jax_attention, caps, description)
