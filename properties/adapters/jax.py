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
    static = ("is_causal", "scale", "local_window_size", "return_residual")
    attention = jax.jit(jax.nn.dot_product_attention, static_argnames=static)  # as JAX code runs it

    def jax_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: N query heads, K kv heads
        *,
        window: tuple[int, int] | None = None,
        return_lse: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        L, S = query.size(1), key.size(1)  # (B, T, N, H), (B, S, K, H)
        mask = as_4d(attn_mask)  # (., ., L, S): jax wants 4-D masks broadcastable to (B, N, T, S)
        bool_mask = to_numpy(mask) if mask is not None and mask.dtype == torch.bool else None
        bias = to_numpy(mask) if mask is not None and mask.dtype != torch.bool else None
        # local_window_size=(left, right) counts as the contract does (the docs: (3, 2) lets token c see 3 keys
        # before it and 2 after), aligned top-left; it has no "unbounded" value: -1 becomes L + S, past every key
        local = None if window is None else tuple(L + S if side < 0 else side for side in window)
        with jax.enable_x64(True):  # float64 stays float64 (jax would silently compute float32 otherwise)
            result = attention(
                to_numpy(query),
                to_numpy(key),
                to_numpy(value),
                bias=bias,
                mask=bool_mask,
                scale=scale,
                is_causal=is_causal,
                local_window_size=local,
                return_residual=return_lse,
            )  # (B, T, N, Ev), and with return_residual the lse (B, T, N)
        if return_lse:
            out, lse = result
            return from_numpy(out, query), from_numpy(lse, query).transpose(1, 2)  # lse (B, T, N) -> (B, N, T)
        return from_numpy(result, query)

    # BTNH = BLHD. value must have key's shape (Ev == E). No dropout, no autograd through numpy.
    # float64 is not declared: jax computes the softmax in float32 for every input dtype (~1e-7 off in float64).
    # Half types are not declared on the CPU backend, where jitted XLA cannot run the dots the library asks for
    # (jaxlib 0.10.2): float16 always raises "The precision 'F16_F16_F32' is not supported by dot_general on CPU";
    # bfloat16 raises "Algorithm not supported by the ElementalIrEmitter: ALG_DOT_BF16_BF16_F32" on some shapes
    # (head dim 1) and aborts the whole process on others (XLA "Check failed: ... (reshape vs. bitcast)" in
    # ynn_emitter.cc, e.g. batch 1, head dim 1, L = S = 64). The library's eager fallback avoids them but costs
    # ~1 s per new shape. Bool-masked scores become -0.7 * finfo.max, not -inf: fully masked rows are uniform.
    # Features: window (local_window_size) and lse (return_residual, natural log; jax 0.10.2). On rows with no key
    # the lse is finite, about -2.4e38 (_dot_product_attention_core masks with -0.7 * finfo(float32).max and returns
    # logsumexp of those logits): a merge treats it as -inf wherever another split has a key, so it is a
    # convention, declared lse_empty="any" (observed and reported), not a wrong answer.
    dtypes = ("float32",) if backend == "cpu" else HALF_AND_SINGLE
    features = frozenset({"window", "lse"})
    caps = Capabilities(
        grad=False,
        value_dim=False,
        dtypes=dtypes,
        devices=("cpu",),
        layout="BLHD",
        features=features,
        lse_empty="any",
    )
    description = f"jax {jax.__version__} jax.jit(jax.nn.dot_product_attention) on the {backend} backend"
    return Target("jax", jax_attention, caps, description)
