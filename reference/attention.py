"""Scaled dot-product attention, equation (1) of "Attention Is All You Need".

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V                      (1)

Two entry points:

* :func:`attention` is the paper's function: it returns the output *and* the
  attention weights ``P = softmax(Q K^T / sqrt(d_k) + B)``, so the weights can be
  read directly (property ``rows_sum_to_one`` does).
* :func:`scaled_dot_product_attention` exposes the same math in the target
  convention of ``torch.nn.functional.scaled_dot_product_attention`` (see
  docs/design.md, "The target contract"), so the reference is itself a target.

Masking convention (pinned):

* a boolean mask is *admissibility*: ``True`` = the key takes part;
* a float mask is an additive bias ``B`` on the scaled scores;
* masked scores are set to ``-inf`` (never a finite "large negative" such as
  -1e9, which overflows in half precision and lets masked keys revive when all
  admissible scores are lower still, docs/bugs.md #9);
* a row with *no* admissible key (fully masked) has all-zero weights and hence a
  zero output, with finite (zero) gradients. Softmax is undefined there; zeros
  are the convention of PyTorch's safe softmax (pytorch/pytorch#131863) and of
  FlexAttention.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

CausalAlignment = Literal["top-left", "bottom-right"]


def causal_mask(
    L: int, S: int, alignment: CausalAlignment = "top-left", device: torch.device | str | None = None
) -> Tensor:
    """Boolean (L, S) admissibility mask of causal attention.

    ``top-left``: query i sees keys j <= i (PyTorch SDPA's ``is_causal``).
    ``bottom-right``: query i sees keys j <= i + (S - L), i.e. the last query is
    aligned with the last key (FlashAttention >= 2.1, KV-cache decoding).
    """
    i = torch.arange(L, device=device)[:, None]  # (L, 1)
    j = torch.arange(S, device=device)[None, :]  # (1, S)
    offset = 0 if alignment == "top-left" else S - L
    return j <= i + offset  # (L, S)


def merge_masks(
    attn_mask: Tensor | None,
    is_causal: bool,
    L: int,
    S: int,
    alignment: CausalAlignment = "top-left",
    device: torch.device | str | None = None,
) -> Tensor | None:
    """One mask from ``attn_mask`` and ``is_causal``: what a key must satisfy to take part (section 3.2.3).

    A boolean mask is ANDed with the causal triangle; a float (additive) mask gets -inf where the triangle hides
    a key; ``None`` with ``is_causal`` is the triangle itself. The result broadcasts to (..., L, S).
    """
    if not is_causal:
        return attn_mask
    causal = causal_mask(L, S, alignment, device)  # (L, S)
    if attn_mask is None:
        return causal
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal  # (..., L, S)
    return attn_mask.masked_fill(~causal, float("-inf"))  # (..., L, S)


def additive_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The mask as the additive bias B of ``softmax(Q K^T * scale + B)``: 0 / -inf for a boolean mask."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def expand_kv_heads(key: Tensor, value: Tensor, h: int) -> tuple[Tensor, Tensor]:
    """Grouped-query attention: query head i reads key/value head i // (h / h_kv) (``repeat_interleave``).

    key (..., h_kv, S, d_k), value (..., h_kv, S, d_v) -> (..., h, S, d_k), (..., h, S, d_v).
    """
    group = h // key.size(-3)
    if group == 1:
        return key, value
    key = key.repeat_interleave(group, dim=-3)  # (..., h_kv, S, d_k) -> (..., h, S, d_k)
    value = value.repeat_interleave(group, dim=-3)  # (..., h_kv, S, d_v) -> (..., h, S, d_v)
    return key, value


def subsequent_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """The decoder's mask of section 3.2.3: position i attends to positions <= i; shape (1, size, size)."""
    return causal_mask(size, size, "top-left", device)[None]  # (1, size, size)


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Equation (1): returns ``(softmax(Q K^T * scale + B) V, P)``.

    query (..., L, d_k), key (..., S, d_k), value (..., S, d_v); ``mask`` broadcasts
    to (..., L, S) and is boolean (True = admissible) or an additive float bias.
    ``scale`` defaults to 1/sqrt(d_k) (section 3.2.1). Returns the output
    (..., L, d_v) and the weights P (..., L, S) after dropout (if any).
    """
    d_k = query.size(-1)
    if scale is None:
        scale = 1.0 / math.sqrt(d_k)  # section 3.2.1: "we scale the dot products by 1/sqrt(d_k)"
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (..., L, d_k) @ (..., d_k, S) -> (..., L, S)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # (..., L, S); masked keys get -inf
        else:
            scores = scores + mask  # additive bias B, added after the scale (not multiplied by it, docs/bugs.md #8)
            scores = scores.masked_fill(mask == float("-inf"), float("-inf"))  # -inf + NaN score stays masked
    # Rows with no admissible key: softmax(-inf, ..., -inf) is 0/0. Softmax a row of zeros instead (finite
    # forward and backward), then zero the row, so neither the output nor any gradient is NaN (docs/bugs.md #1, #2).
    admissible = scores != float("-inf")  # (..., L, S)
    admissible_row = admissible.any(dim=-1, keepdim=True)  # (..., L, S) -> (..., L, 1)
    scores = scores.masked_fill(~admissible_row, 0.0)  # (..., L, S)
    p_attn = torch.softmax(scores, dim=-1) * admissible_row  # (..., L, S); softmax subtracts the row max
    if dropout_p > 0.0:
        keep = torch.rand(p_attn.shape, generator=generator, device=p_attn.device) >= dropout_p  # (..., L, S)
        p_attn = p_attn * keep / (1.0 - dropout_p)  # inverted dropout keeps the expectation
    # A masked key has weight exactly 0, but 0 * inf = NaN in the product: the values of keys that no query
    # may see are zeroed so that non-finite values there cannot leak into the output (docs/bugs.md #3). Read from
    # the scores before fully masked rows were refilled with zeros, or such a row would "see" every key.
    key_seen = admissible.any(dim=-2).unsqueeze(-1)  # (..., L, S) -> (..., S) -> (..., S, 1)
    value = value.masked_fill(~key_seen, 0.0)  # (..., S, d_v)
    return torch.matmul(p_attn, value), p_attn  # (..., L, S) @ (..., S, d_v) -> (..., L, d_v)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Equation (1) in the convention of ``torch.nn.functional.scaled_dot_product_attention``.

    float16 and bfloat16 inputs are computed in float32 and the output rounded back to the input dtype.

    query (..., Hq, L, E), key (..., Hkv, S, E), value (..., Hkv, S, Ev) -> (..., Hq, L, Ev).
    ``is_causal`` is the top-left aligned lower triangle; with ``enable_gqa`` query
    head h reads key/value head h // (Hq / Hkv).
    """
    if enable_gqa and key.dim() >= 3:
        key, value = expand_kv_heads(key, value, query.size(-3))  # (..., Hkv, S, E) -> (..., Hq, S, E)
    mask = merge_masks(attn_mask, is_causal, query.size(-2), key.size(-2), "top-left", query.device)  # (..., L, S)
    # Half precision: compute scores, softmax and P V in float32 and round once at the end, as PyTorch's math
    # backend does. In float16 the raw q . k overflows 65504 before any scaling (docs/bugs.md #10).
    compute = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute)
    out, _ = attention(query.to(compute), key.to(compute), value.to(compute), mask, scale, dropout_p)
    return out.to(query.dtype)
