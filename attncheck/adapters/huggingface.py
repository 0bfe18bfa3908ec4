"""Built-in targets of Hugging Face transformers: its eager and SDPA attention functions (transformers 5.24.0),
and the eager functions of the models that bring features: Gemma 2 (softcap) and gpt-oss (sinks)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attncheck.adapters import HALF_AND_SINGLE, as_4d
from attncheck.errors import TargetUnavailable
from attncheck.properties.contract import Capabilities, Target

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


def _hf_call(
    forward: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
    scaling: float | None,
    layer_attrs: dict[str, Any] | None = None,
    **extra: Any,
) -> Tensor:
    """One call of a transformers attention function (``eager_attention_forward``, ``sdpa_attention_forward``): a
    layer carrying num_key_value_groups (GQA), its training flag and ``layer_attrs`` (gpt-oss reads its sinks
    there), the mask as 4-D, and ``extra`` keywords of that function. BHLD in; the function returns (B, L, Hq, Ev),
    given back as BHLD."""
    layer = _HFAttentionLayer(query.size(1) // key.size(1), training=dropout_p > 0)
    for name, attr in (layer_attrs or {}).items():
        setattr(layer, name, attr)
    out, _ = forward(
        layer, query, key, value, attention_mask=as_4d(attn_mask), scaling=scaling, dropout=dropout_p, **extra
    )
    return out.transpose(1, 2)  # (B, L, Hq, Ev) -> (B, Hq, L, Ev)


def _eager_scaling(query: Tensor, scale: float | None) -> float:
    """The scaling an ``eager_attention_forward`` gets: ``scale``, else the layers' default head_dim**-0.5
    (LlamaAttention.scaling; Gemma 2's query_pre_attn_scalar**-0.5 with the scalar = head_dim)."""
    return scale if scale is not None else query.size(-1) ** -0.5


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
        scaling = _eager_scaling(query, scale)
        return _hf_call(eager_attention_forward, query, key, value, attn_mask, dropout_p, scaling)

    # Masks are additive only (a bool mask would be *added*); no is_causal (callers build the mask).
    # float64 is not declared: the softmax runs in float32 (dtype=torch.float32), ~1e-7 from the float64 oracle.
    caps = Capabilities(masks=frozenset({"float"}), causal=None, dropout="inverted", dtypes=HALF_AND_SINGLE)
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
        # scaling None is SDPA's own default; is_causal always explicit: None would mean the layer's default
        return _hf_call(sdpa_attention_forward, query, key, value, attn_mask, dropout_p, scale, is_causal=is_causal)

    # is_causal is top-left (SDPA's) except that sdpa_attention_forward drops it when L == 1 (the decoding step:
    # the one query then sees every key, as bottom-right would). Not declarable; the properties report it.
    caps = Capabilities(dropout="inverted")
    return Target("hf-sdpa", hf_sdpa, caps, f"transformers {transformers.__version__} sdpa_attention_forward")


# ---------------------------------------------------------------------------------------------------------------
# Model-specific eager attention functions with features (checked against transformers 5.24.0)
#
# HF's sliding windows live in its mask functions (masking_utils: the window is built into the 4-D mask, counted
# with the query's own key, always causal), not in the eager functions, which ignore ``sliding_window``: there is
# no eager function that takes a window to adapt.


def hf_gemma2_eager_target() -> Target:
    transformers = _import_transformers()
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    def hf_gemma2(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA comes from the layer's num_key_value_groups
        *,
        softcap: float | None = None,
    ) -> Tensor:
        # softcap: c * tanh(s / c) of the scaled logits, before the mask is added (Gemma 2's cap)
        scaling = _eager_scaling(query, scale)
        return _hf_call(eager_attention_forward, query, key, value, attn_mask, dropout_p, scaling, softcap=softcap)

    # As hf-eager: additive masks only, no is_causal, softmax in float32 (float64 not declared).
    caps = Capabilities(
        masks=frozenset({"float"}),
        causal=None,
        dropout="inverted",
        dtypes=HALF_AND_SINGLE,
        features=frozenset({"softcap"}),
    )
    description = f"transformers {transformers.__version__} Gemma 2 eager_attention_forward (softcap)"
    return Target("hf-gemma2-eager", hf_gemma2, caps, description)


def hf_gpt_oss_eager_target() -> Target:
    transformers = _import_transformers()
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    def hf_gpt_oss(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA comes from the layer's num_key_value_groups
        *,
        sinks: Tensor | None = None,
    ) -> Tensor:
        # GptOssAttention.sinks is an (Hq,) parameter in the model's dtype, concatenated to the logits as one more
        # column. No sinks is a sink of -inf (e^-inf = 0 in the denominator): the function always has one.
        Hq = query.size(1)
        logits = torch.full((Hq,), -torch.inf, dtype=query.dtype) if sinks is None else sinks.to(query.dtype)
        scaling = _eager_scaling(query, scale)
        return _hf_call(eager_attention_forward, query, key, value, attn_mask, dropout_p, scaling, {"sinks": logits})

    # Additive masks only, no is_causal (callers build the mask). The softmax runs in the inputs' dtype (float64
    # included). A row with no admissible key and no sink is -inf - (-inf) = NaN (observed, not declared).
    caps = Capabilities(masks=frozenset({"float"}), causal=None, dropout="inverted", features=frozenset({"sinks"}))
    description = f"transformers {transformers.__version__} gpt-oss eager_attention_forward (sinks)"
    return Target("hf-gpt-oss-eager", hf_gpt_oss, caps, description)
