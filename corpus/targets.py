"""Third-party attention implementations wrapped as attncheck targets.

Each wrapper adapts ONLY the calling convention (layout, argument names, mask polarity / kind / shape the
library expects, identity projections for modules) to the SDPA contract:

    f(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)
    query (B, Hq, L, E)   key (B, Hkv, S, E)   value (B, Hkv, S, Ev)   ->   (B, Hq, L, Ev)

Nothing the library computes is corrected here. What a library does not support is declared with
@declare(...). Inputs the library cannot express at all and that no declaration can describe
(key-padding-only masks, per-head masks, L != S for self-attention-only modules) raise NotImplementedError,
as a careful user's adapter would, rather than being silently mis-adapted.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # keras 3 must pick the torch backend before its first import

import torch
from torch import Tensor, nn

from attncheck import declare

# ---------------------------------------------------------------------------------------------------------------
# helpers (convention only)


def _mask4d(m: Tensor) -> Tensor:
    """SDPA masks broadcast from the right; make the (.., L, S) mask explicitly 4D: (B|1, H|1, L|1, S|1)."""
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m


def _key_padding(m: Tensor, B: int, S: int, lib: str) -> Tensor:
    """Libraries that take only a (B, S) key-padding mask: accept SDPA masks that are one; refuse the rest."""
    m = _mask4d(m)
    if m.size(1) != 1 or m.size(2) != 1:
        raise NotImplementedError(f"{lib} accepts only (B, S) key-padding masks, got a mask of shape {tuple(m.shape)}")
    return m[:, 0, 0, :].expand(B, S)


def _identity_linear(n_in: int, n_out: int, offset: int, dtype: torch.dtype, bias: bool = False) -> nn.Linear:
    """nn.Linear(n_in, n_out) selecting input features offset..offset+n_out (identity when n_in == n_out)."""
    lin = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:, offset : offset + n_out] = torch.eye(n_out)
        if bias:
            lin.bias.zero_()
    return lin.to(dtype)


def _flat(t: Tensor) -> Tensor:
    """(B, H, N, D) -> (B, N, H*D), the hidden-state layout of modules."""
    B, H, N, D = t.shape
    return t.transpose(1, 2).reshape(B, N, H * D)


def _unflat(t: Tensor, H: int) -> Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    B, N, HD = t.shape
    return t.reshape(B, N, H, HD // H).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# 1-2. x-transformers (lucidrains) Attend: einsum path and flash (SDPA) path


def _xt(q, k, v, attn_mask, dropout_p, is_causal, scale, flash):
    from x_transformers.attend import Attend

    m = Attend(causal=is_causal, scale=scale, dropout=dropout_p, heads=q.size(1), flash=flash)
    m.train(dropout_p > 0)
    mask = bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = _mask4d(attn_mask)  # True = attend, as SDPA
        else:
            bias = _mask4d(attn_mask)  # additive
    out, _ = m(q, k, v, mask=mask, attn_bias=bias)
    return out


# create_causal_mask = triu(j - i + 1): right-aligned; GQA repeats 'b kvh n d -> b (r kvh) n d' (attend.py:532)
# compute dtype: the einsum path's softmax is F.softmax(..., dtype=torch.float32) (attend.py:262) and the weights go
# back to the input dtype after it (attn.type(dtype), attend.py:629): float64 calls run at float32 precision by design.
# (The flash path calls F.scaled_dot_product_attention in the input dtype: no compute_dtype there.)
@declare(causal="bottom-right", dropout=True, gqa_mapping="interleaved", compute_dtype="float32")
def xt_attend(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _xt(q, k, v, attn_mask, dropout_p, is_causal, scale, flash=False)


@declare(causal="bottom-right", dropout=True, gqa_mapping="interleaved")
def xt_attend_flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _xt(q, k, v, attn_mask, dropout_p, is_causal, scale, flash=True)


# x-transformers' features beyond SDPA (einsum path; flash refuses both): Gemma-2-style logit softclamp
# (softclamp_logits, attend.py:572: applied to sim * scale + attn_bias, before the bool mask and causal fill) and
# learned per-head attention sinks (head_learned_sink, attend.py:609: a logit column concatenated after the
# masking, dropped after the softmax), set here to the sinks of the call.


def _xt_features(q, k, v, attn_mask, is_causal, scale, **features):
    from x_transformers.attend import Attend

    sinks = features.pop("sinks", None)
    m = Attend(causal=is_causal, scale=scale, heads=q.size(1), **features)
    if m.head_attn_sink is not None:
        m.head_attn_sink.data = sinks.to(q.dtype)  # (Hq,) the call's sink logits
    mask = bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = _mask4d(attn_mask)
        else:
            bias = _mask4d(attn_mask)
    out, _ = m(q, k, v, mask=mask, attn_bias=bias)
    return out


@declare(causal="bottom-right", gqa_mapping="interleaved", compute_dtype="float32", features={"softcap"})
def xt_attend_softcap(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, *, softcap=None):
    clamp = {"softclamp_logits": True, "logit_softclamp_value": softcap} if softcap is not None else {}
    return _xt_features(q, k, v, attn_mask, is_causal, scale, **clamp)


@declare(causal="bottom-right", gqa_mapping="interleaved", compute_dtype="float32", features={"sinks"})
def xt_attend_sinks(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, *, sinks=None):
    if sinks is None:
        return _xt_features(q, k, v, attn_mask, is_causal, scale)
    return _xt_features(q, k, v, attn_mask, is_causal, scale, head_learned_sink=True, sinks=sinks)


# ---------------------------------------------------------------------------------------------------------------
# 3-5. memory-efficient-attention-pytorch (lucidrains): plain attention, chunked (Rabe & Staats), flash (pure torch)

Q_BUCKET = K_BUCKET = 8  # small buckets so that the chunking is exercised at the suite's sizes (17, 33, ...)


# causal: torch.ones(i, j).triu(j - i + 1) (memory_efficient_attention.py:43) is right-aligned (bottom-right),
# while memory_efficient_attention() in the same file uses the top-left triu(q_start - k_start + 1).
@declare(gqa=False, scale=False, causal="bottom-right")
def mea_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from memory_efficient_attention_pytorch.memory_efficient_attention import attention

    mask = bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = _mask4d(attn_mask)  # a 2D mask would be read as (B, S) key padding: make it 4D
        else:
            bias = attn_mask
    return attention(q, k, v, mask=mask, causal=is_causal, attn_bias=bias)


# No compute_dtype: memory_efficient_attention() computes in the input dtype throughout; the "float64 at about
# float32 precision" it shows is its eps = 1e-8 in the denominator (memory_efficient_attention.py:92,163), a bias.
# dropout: F.dropout on exp_weight (memory_efficient_attention.py:77) enters both the numerator and the denominator
# sums (:160-163), so the kept weights renormalise to 1 per row: "renormalised" (declared "inverted" until the
# declared run's first pass, which attncheck flagged correctly).
@declare(gqa=False, scale=False, dropout="renormalised", mask_shapes=("key_padding",))  # bool masks: (B, S) key padding only
def mea_chunked(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from memory_efficient_attention_pytorch.memory_efficient_attention import memory_efficient_attention

    B, L, S = q.size(0), q.size(-2), k.size(-2)
    mask = bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = _key_padding(attn_mask, B, S, "memory_efficient_attention")
        else:  # the bias is split into (L, S) tiles: it must be materialised over its last two dims
            bias = attn_mask.expand(*attn_mask.shape[:-2], L, S)
    return memory_efficient_attention(
        q, k, v, mask=mask, causal=is_causal, attn_bias=bias,
        q_bucket_size=Q_BUCKET, k_bucket_size=K_BUCKET, dropout=dropout_p, training=dropout_p > 0,
    )


# float64 is not declared: the running max is torch.full(..., -finfo(float64).max) in a float32 buffer, which
# raises "value cannot be converted to type float without overflow" (flash_attention.py:36).
# value_dim: the output buffer is torch.zeros_like(q) (flash_attention.py:35), so Ev must equal E.
@declare(gqa=False, scale=False, masks=("bool",), causal="bottom-right", value_dim=False,
         dtypes=("float32", "bfloat16", "float16"))
def mea_flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from memory_efficient_attention_pytorch.flash_attention import FlashAttentionFunction

    mask = _mask4d(attn_mask) if attn_mask is not None else None
    return FlashAttentionFunction.apply(q, k, v, mask, is_causal, Q_BUCKET, K_BUCKET)


# ---------------------------------------------------------------------------------------------------------------
# 6. ring-attention-pytorch (lucidrains): ring flash attention, single process (world size 1), (B, N, H, D)


# float64 is not declared: same float32 running-max buffer as mea_flash (ring_flash_attention.py:121).
# value_dim: o = torch.zeros_like(q) (ring_flash_attention.py:121).
# causal: per bucket triu(1 + kc_len - qc_len) on the diagonal bucket (ring_flash_attention.py:206): right-aligned.
# masks: (B, S) key padding only; GQA: query head h reads kv head h % Hkv (the probe's findings, declared)
@declare(layout="BLHD", causal="bottom-right", scale=False, masks=("bool",), value_dim=False,
         dtypes=("float32", "bfloat16", "float16"), mask_shapes=("key_padding",), gqa_mapping="interleaved")
def ring_flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from ring_attention_pytorch.ring_flash_attention import ring_flash_attn

    B, S = q.size(0), k.size(1)  # BLHD here
    mask = _key_padding(attn_mask, B, S, "ring_flash_attn") if attn_mask is not None else None
    return ring_flash_attn(q, k, v, mask=mask, causal=is_causal, bucket_size=K_BUCKET)


# ---------------------------------------------------------------------------------------------------------------
# 7. keras 3 (torch backend) keras.ops.dot_product_attention, (B, T, N, H)


@declare(layout="BLHD")
def keras_dpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    import keras

    mask = bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = attn_mask  # True = attend, as SDPA; broadcast to (B, N, T, S)
        else:
            bias = attn_mask
    return keras.ops.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal)


# ---------------------------------------------------------------------------------------------------------------
# 8. diffusers Attention with the classic AttnProcessor (baddbmm + softmax), identity projections, cross-attention


@declare(masks=("float",), causal=None, gqa=False, value_dim=False)
def diffusers_attn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from diffusers.models.attention_processor import Attention, AttnProcessor

    B, H, L, E = q.shape
    S, C = k.size(-2), H * E
    attn = Attention(query_dim=C, cross_attention_dim=2 * C, heads=H, dim_head=E, processor=AttnProcessor())
    attn.to_q = _identity_linear(C, C, 0, q.dtype)
    attn.to_k = _identity_linear(2 * C, C, 0, q.dtype)  # context = [k | v]
    attn.to_v = _identity_linear(2 * C, C, C, q.dtype)
    attn.to_out[0] = _identity_linear(C, C, 0, q.dtype, bias=True)
    attn.eval()
    if scale is not None:
        attn.scale = scale
    mask = None
    if attn_mask is not None:  # additive, (B * heads, L, S) as prepare_attention_mask leaves it
        mask = _mask4d(attn_mask).expand(B, H, L, S).reshape(B * H, L, S)
    out = attn(_flat(q), encoder_hidden_states=torch.cat([_flat(k), _flat(v)], dim=-1), attention_mask=mask)
    return _unflat(out, H)


# ---------------------------------------------------------------------------------------------------------------
# 9. transformers GPT2Attention (cross-attention, eager, reorder_and_upcast_attn=True), identity projections


# compute dtype: reorder_and_upcast_attn computes the scores in a float32 buffer with q.float(), k.float()
# (modeling_gpt2.py:120,125), softmaxes in float32 and casts the weights to value.dtype (modeling_gpt2.py:135-137).
@declare(masks=("float",), causal=None, gqa=False, value_dim=False, dropout=True, compute_dtype="float32")
def hf_gpt2_upcast(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    B, H, L, E = q.shape
    C = H * E
    cfg = GPT2Config(n_embd=C, n_head=H, attn_pdrop=dropout_p, resid_pdrop=0.0, reorder_and_upcast_attn=True)
    cfg._attn_implementation = "eager"
    m = GPT2Attention(cfg, is_cross_attention=True, layer_idx=0)
    with torch.no_grad():  # Conv1D weight is (nx, nf): identity maps
        m.q_attn.weight.copy_(torch.eye(C)), m.q_attn.bias.zero_()
        m.c_proj.weight.copy_(torch.eye(C)), m.c_proj.bias.zero_()
    # c_attn maps the encoder states to [k | v]; the context here is [k | v] itself (2C features)
    from transformers.pytorch_utils import Conv1D

    m.c_attn = Conv1D(2 * C, 2 * C)
    with torch.no_grad():
        m.c_attn.weight.copy_(torch.eye(2 * C)), m.c_attn.bias.zero_()
    m = m.to(q.dtype)
    m.train(dropout_p > 0)
    if scale is not None:
        m.scaling = scale
    mask = _mask4d(attn_mask) if attn_mask is not None else None
    out, _ = m(_flat(q), encoder_hidden_states=torch.cat([_flat(k), _flat(v)], dim=-1), encoder_attention_mask=mask)
    return _unflat(out, H)


# ---------------------------------------------------------------------------------------------------------------
# 10. transformers T5Attention (cross-attention, eager, no relative bias), identity projections


# No compute_dtype for T5 or Whisper: their eager_attention_forward softmaxes in the input dtype
# (t5/modeling_t5.py:168, whisper/modeling_whisper.py:234).
@declare(masks=("float",), causal=None, gqa=False, value_dim=False, dropout=True, unscaled=True)  # T5: no 1/sqrt(d)
def hf_t5(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    B, H, L, E = q.shape
    C = H * E
    cfg = T5Config(d_model=C, d_kv=E, num_heads=H, dropout_rate=dropout_p, is_decoder=False)
    cfg._attn_implementation = "eager"
    m = T5Attention(cfg, has_relative_attention_bias=False, layer_idx=0)
    m.q = _identity_linear(C, C, 0, q.dtype)
    m.k = _identity_linear(2 * C, C, 0, q.dtype)  # key_value_states = [k | v]
    m.v = _identity_linear(2 * C, C, C, q.dtype)
    m.o = _identity_linear(C, C, 0, q.dtype)
    m.train(dropout_p > 0)
    if scale is not None:
        m.scaling = scale  # T5 keeps scaling = 1.0 by design (no 1/sqrt(d)); an explicit scale is honoured
    mask = _mask4d(attn_mask) if attn_mask is not None else None
    out = m(_flat(q), mask=mask, key_value_states=torch.cat([_flat(k), _flat(v)], dim=-1))[0]
    return _unflat(out, H)


# ---------------------------------------------------------------------------------------------------------------
# 11. transformers Whisper eager_attention_forward (module-level function, as WhisperAttention calls it)


class _Layer(nn.Module):
    def __init__(self, training: bool) -> None:
        super().__init__()
        self.train(training)


@declare(masks=("float",), causal=None, gqa=False, dropout=True)
def hf_whisper_eager(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from transformers.models.whisper.modeling_whisper import eager_attention_forward

    mask = _mask4d(attn_mask) if attn_mask is not None else None
    out, _ = eager_attention_forward(_Layer(dropout_p > 0), q, k, v, mask, scaling=scale, dropout=dropout_p)
    return out.transpose(1, 2)  # (B, L, H, Ev) -> (B, H, L, Ev)


# ---------------------------------------------------------------------------------------------------------------
# Variants: the same library calls with the dtypes the libraries actually run in (their running max / sum buffers
# are float32, torch.zeros/full without dtype: float16 and bfloat16 raise "expected scalar type Float", float64
# overflows). Declaring float32 only shows what the half-precision crashes hide in the variants above.

mea_flash_f32 = declare(gqa=False, scale=False, masks=("bool",), causal="bottom-right", value_dim=False,
                        dtypes=("float32",))(lambda *a, **kw: mea_flash(*a, **kw))
ring_flash_f32 = declare(layout="BLHD", causal="bottom-right", scale=False, masks=("bool",), value_dim=False,
                         dtypes=("float32",), mask_shapes=("key_padding",), gqa_mapping="interleaved")(lambda *a, **kw: ring_flash(*a, **kw))
