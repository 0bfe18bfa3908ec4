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

Beyond equation (1), the features fast kernels ship (docs/design.md, "Beyond SDPA"), each a keyword-only
argument that is off by default. Every one is a visibility mask, a logit transform or a sink on equation (1):

* ``window=(left, right)``, a sliding window (Longformer, Beltagy et al. 2020, section 3.1; Mistral 7B, Jiang et
  al. 2023, section 2): the query at aligned position p sees key j iff p - left <= j <= p + right, -1 =
  unbounded (FlashAttention's count: the query's own key is not part of ``left``). A visibility mask, ANDed
  with ``is_causal`` and the mask (:func:`window_mask`).
* ``softcap=c`` (Gemma 2, Gemma Team 2024, section 2.2, "logit soft-capping"): the scaled logits
  s = scale * q . k become c * tanh(s / c), before the float mask is added and before masking (so a masked key
  stays at -inf whatever c is).
* ``sinks`` (Hq,), one learned logit per query head (gpt-oss model card, OpenAI 2025, section 2.1: "a learned bias
  in the denominator of the softmax"; the sink *key* of StreamingLLM, Xiao et al. 2024, section 3.3, with a zero
  value): P_ij = e^(s_ij) / (e^(sink) + sum_j' e^(s_ij')). The sink is a logit, neither scaled nor capped.
* ``return_lse=True``: also return lse_i = log(e^(sink) + sum_j e^(s_ij)) over the final logits (natural log;
  FlashAttention-2, Dao 2023, section 3.1.1, "logsumexp L"); -inf for a row with no admissible key and no sink.
"""

from __future__ import annotations

import math
from typing import Literal, overload

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


def window_mask(
    L: int,
    S: int,
    window: tuple[int, int],
    alignment: CausalAlignment = "top-left",
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean (L, S) band of a sliding window ``(left, right)``; -1 leaves that side unbounded.

    Longformer's sliding window (Beltagy et al. 2020, section 3.1) and Mistral's (Jiang et al. 2023, section 2,
    "position i attends to positions between i - W and i") as FlashAttention counts it: the query at aligned
    position p = i + offset sees key j iff p - left <= j <= p + right, the query's own key not counted in
    ``left``. The offset is that of :func:`causal_mask`: 0 top-left, S - L bottom-right.
    """
    left, right = window
    i = torch.arange(L, device=device)[:, None]  # (L, 1)
    j = torch.arange(S, device=device)[None, :]  # (1, S)
    p = i + (0 if alignment == "top-left" else S - L)  # (L, 1) aligned query positions
    band = torch.ones(L, S, dtype=torch.bool, device=device)  # (L, S)
    if left >= 0:
        band &= j >= p - left
    if right >= 0:
        band &= j <= p + right
    return band  # (L, S)


def merge_masks(
    attn_mask: Tensor | None,
    is_causal: bool,
    L: int,
    S: int,
    alignment: CausalAlignment = "top-left",
    device: torch.device | str | None = None,
    *,
    window: tuple[int, int] | None = None,
) -> Tensor | None:
    """One mask from ``attn_mask``, ``is_causal`` and ``window``: what a key must satisfy to take part (section
    3.2.3, and the sliding window of :func:`window_mask`).

    A boolean mask is ANDed with the causal triangle and the window band; a float (additive) mask gets -inf where
    they hide a key; ``None`` is the triangle and/or the band itself. The result broadcasts to (..., L, S).
    """
    visible = causal_mask(L, S, alignment, device) if is_causal else None  # (L, S)
    if window is not None:
        band = window_mask(L, S, window, alignment, device)  # (L, S)
        visible = band if visible is None else visible & band
    if visible is None:
        return attn_mask
    if attn_mask is None:
        return visible
    if attn_mask.dtype == torch.bool:
        return attn_mask & visible  # (..., L, S)
    return attn_mask.masked_fill(~visible, float("-inf"))  # (..., L, S)


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


def attention_logits(
    query: Tensor, key: Tensor, mask: Tensor | None = None, scale: float | None = None, *, softcap: float | None = None
) -> Tensor:
    """The final logits s = Q K^T * scale, soft-capped, plus the bias B, -inf at masked keys: (..., L, S).

    ``softcap`` c maps the scaled logits to c * tanh(s / c) (Gemma 2, section 2.2) before B is added and before
    masking, so a masked key stays at -inf whatever c is.
    """
    d_k = query.size(-1)
    if scale is None:
        scale = 1.0 / math.sqrt(d_k)  # section 3.2.1: "we scale the dot products by 1/sqrt(d_k)"
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (..., L, d_k) @ (..., d_k, S) -> (..., L, S)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)  # Gemma 2: soft-capped logits in (-c, c), before masking
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # (..., L, S); masked keys get -inf
        else:
            scores = scores + mask  # additive bias B, added after the scale (not multiplied by it, docs/bugs.md #8)
            scores = scores.masked_fill(mask == float("-inf"), float("-inf"))  # -inf + NaN score stays masked
    return scores  # (..., L, S)


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    softcap: float | None = None,
    sink: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Equation (1): returns ``(softmax(Q K^T * scale + B) V, P)``.

    query (..., L, d_k), key (..., S, d_k), value (..., S, d_v); ``mask`` broadcasts
    to (..., L, S) and is boolean (True = admissible) or an additive float bias.
    ``scale`` defaults to 1/sqrt(d_k) (section 3.2.1). Returns the output
    (..., L, d_v) and the weights P (..., L, S) after dropout (if any).
    ``softcap`` and ``sink`` (a logit broadcasting to (..., L, 1)) are those of :func:`attention_with_lse`.
    """
    out, p_attn, _ = attention_with_lse(
        query, key, value, mask, scale, dropout_p, generator, softcap=softcap, sink=sink
    )
    return out, p_attn


def attention_with_lse(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    softcap: float | None = None,
    sink: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Equation (1) with a logit soft-cap and a sink: returns ``(output, P, lse)``.

    As :func:`attention`, and:

    * ``softcap`` c: the logits of :func:`attention_logits`, capped before the bias B is added and before masking;
    * ``sink``: a logit broadcasting to (..., L, 1) that joins every row's softmax with a zero value vector
      (gpt-oss model card, section 2.1; StreamingLLM, section 3.3): P_ij = e^(s_ij) / (e^(sink) + sum_j' e^(s_ij'));
      the weights P (..., L, S) of the real keys then sum to less than one;
    * lse (..., L) = log(e^(sink) + sum_j e^(s_ij)) over the admissible keys (FlashAttention-2, section 3.1.1), in
      natural log; -inf for a row with no admissible key and no sink.
    """
    scores = attention_logits(query, key, mask, scale, softcap=softcap)  # (..., L, S)
    admissible = scores != float("-inf")  # (..., L, S), read before the sink joins
    S = scores.size(-1)
    if sink is not None:
        sink_column = sink.to(scores.dtype).expand(*scores.shape[:-1], 1)  # (..., L, 1)
        scores = torch.cat([scores, sink_column], dim=-1)  # (..., L, S + 1): the sink is one more key, value 0
    # Rows with no admissible key (and no finite sink): softmax(-inf, ..., -inf) is 0/0. Softmax a row of zeros
    # instead (finite forward and backward), then zero the row, so neither the output nor any gradient is NaN
    # (docs/bugs.md #1, #2).
    admissible_row = (scores != float("-inf")).any(dim=-1, keepdim=True)  # (..., L, S [+ 1]) -> (..., L, 1)
    scores = scores.masked_fill(~admissible_row, 0.0)  # (..., L, S [+ 1])
    lse = torch.logsumexp(scores, dim=-1).masked_fill(~admissible_row.squeeze(-1), float("-inf"))  # (..., L)
    p_attn = torch.softmax(scores, dim=-1) * admissible_row  # (..., L, S [+ 1]); softmax subtracts the row max
    p_attn = p_attn[..., :S]  # (..., L, S): the sink's weight multiplies a zero value, it is dropped
    if dropout_p > 0.0:
        keep = torch.rand(p_attn.shape, generator=generator, device=p_attn.device) >= dropout_p  # (..., L, S)
        p_attn = p_attn * keep / (1.0 - dropout_p)  # inverted dropout keeps the expectation
    # A masked key has weight exactly 0, but 0 * inf = NaN in the product: the values of keys that no query may see
    # are zeroed so that non-finite values there cannot leak into the output (docs/bugs.md #3).
    key_seen = admissible.any(dim=-2).unsqueeze(-1)  # (..., L, S) -> (..., S) -> (..., S, 1)
    value = value.masked_fill(~key_seen, 0.0)  # (..., S, d_v)
    return torch.matmul(p_attn, value), p_attn, lse  # (..., L, S) @ (..., S, d_v) -> (..., L, d_v)


@overload
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = ...,
    dropout_p: float = ...,
    is_causal: bool = ...,
    scale: float | None = ...,
    enable_gqa: bool = ...,
    *,
    window: tuple[int, int] | None = ...,
    softcap: float | None = ...,
    sinks: Tensor | None = ...,
    return_lse: Literal[False] = ...,
) -> Tensor: ...


@overload
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = ...,
    dropout_p: float = ...,
    is_causal: bool = ...,
    scale: float | None = ...,
    enable_gqa: bool = ...,
    *,
    window: tuple[int, int] | None = ...,
    softcap: float | None = ...,
    sinks: Tensor | None = ...,
    return_lse: Literal[True],
) -> tuple[Tensor, Tensor]: ...


def scaled_dot_product_attention(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Equation (1) in the convention of ``torch.nn.functional.scaled_dot_product_attention``.

    float16 and bfloat16 inputs are computed in float32 and the output rounded back to the input dtype.

    query (..., Hq, L, E), key (..., Hkv, S, E), value (..., Hkv, S, Ev) -> (..., Hq, L, Ev).
    ``is_causal`` is the top-left aligned lower triangle; with ``enable_gqa`` query
    head h reads key/value head h // (Hq / Hkv). The features (module docstring): ``window=(left, right)``
    aligned top-left as ``is_causal``, ``softcap=c``, ``sinks`` (Hq,) and ``return_lse``, which also returns lse
    (..., Hq, L) in natural log, in float32 (float64 for float64 inputs).
    """
    if enable_gqa and key.dim() >= 3:
        key, value = expand_kv_heads(key, value, query.size(-3))  # (..., Hkv, S, E) -> (..., Hq, S, E)
    L, S = query.size(-2), key.size(-2)
    mask = merge_masks(attn_mask, is_causal, L, S, "top-left", query.device, window=window)  # (..., L, S)
    # Half precision: compute scores, softmax and P V in float32 and round once at the end, as PyTorch's math
    # backend does. In float16 the raw q . k overflows 65504 before any scaling (docs/bugs.md #10).
    compute = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute)
    sink = None if sinks is None else sinks.to(compute)[:, None, None]  # (Hq,) -> (Hq, 1, 1), against (..., Hq, L, 1)
    out, _, lse = attention_with_lse(
        query.to(compute), key.to(compute), value.to(compute), mask, scale, dropout_p, softcap=softcap, sink=sink
    )
    out = out.to(query.dtype)
    return (out, lse) if return_lse else out
