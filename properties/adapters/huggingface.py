"""Built-in targets of Hugging Face transformers: its eager and SDPA attention functions (transformers 5.24.0)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attncheck.errors import TargetUnavailable
from attncheck.properties.adapters import HALF_AND_SINGLE, as_4d
from attncheck.properties.targets import Capabilities, Target

# ---------------------------------------------------------------------------------------------------------------
# Hugging Face transformers attention functions


class _HFAttentionLayer(torch.nn.Module):
    """Stand-in for a transformers attention layer: the attributes its attention functions read."""

    def __init__(self, num_key_value_groups: int, training: bool) -> None:
        super().__init__()
        self.num_key_value_groups = num_key_value_groups  # Hq // Hkv: repeat_kv, or SDPA's enable_gqa
        self.is_causal = False  # the layer default sdpa_attention_forward uses when is_causal=None
        self.train(training)  # eager_attention_forward drops only when module.training


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TargetUnavailable("transformers is not installed: pip install 'attncheck[hf]'") from None
    return transformers


def hf_eager_target() -> Target:
    transformers = _import_transformers()
    from transformers.models.llama.modeling_llama import eager_attention_forward

    def hf_eager(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA comes from the layer's num_key_value_groups
    ) -> Tensor:
        layer = _HFAttentionLayer(query.size(1) // key.size(1), training=dropout_p > 0)
        scaling = scale if scale is not None else query.size(-1) ** -0.5  # LlamaAttention.scaling = head_dim**-0.5
        out, _ = eager_attention_forward(
            layer, query, key, value, attention_mask=as_4d(attn_mask), scaling=scaling, dropout=dropout_p
        )
        return out.transpose(1, 2)  # (B, L, Hq, Ev) -> (B, Hq, L, Ev)

    # Masks are additive only (a bool mask would be *added*); no is_causal (callers build the mask).
    # float64 is not declared: the softmax runs in float32 (dtype=torch.float32), ~1e-7 from the float64 oracle.
    caps = Capabilities(masks=frozenset({"float"}), causal=None, dropout=True, dtypes=HALF_AND_SINGLE)
    return Target("hf-eager", hf_eager, caps, f"transformers {transformers.__version__} eager_attention_forward")


def hf_sdpa_target() -> Target:
    transformers = _import_transformers()
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def hf_sdpa(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA comes from the layer's num_key_value_groups
    ) -> Tensor:
        layer = _HFAttentionLayer(query.size(1) // key.size(1), training=dropout_p > 0)
        out, _ = sdpa_attention_forward(
            layer,
            query,
            key,
            value,
            attention_mask=as_4d(attn_mask),
            dropout=dropout_p,
            scaling=scale,
            is_causal=is_causal,  # always explicit: None would mean the layer's default
        )
        return out.transpose(1, 2)  # (B, L, Hq, Ev) -> (B, Hq, L, Ev)

    # is_causal is top-left (SDPA's) except that sdpa_attention_forward drops it when L == 1 (the decoding step:
    # the one query then sees every key, as bottom-right would). Not declarable; the properties report it.
    caps = Capabilities(dropout=True)
    return Target("hf-sdpa", hf_sdpa, caps, f"transformers {transformers.__version__} sdpa_attention_forward")
