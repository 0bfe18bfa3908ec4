"""Greedy decoding with the reference Transformer, by full recomputation or incrementally with a key/value cache.

Both paths share one step, :func:`next_log_probs`: given the target prefix ys (B, T), it decodes the positions
the cache does not hold yet (all T without a cache, the last one with a cache that is kept in step) under a
bottom-right aligned causal mask and returns the log-probabilities of token T + 1. Without a cache that is the
decoder mask of section 3.2.3 over the whole prefix; with one it is the prefill/offset rule of a KV cache
(docs/bugs.md #5). :func:`step_log_probs` teacher-forces a given target through either path and
:func:`cached_vs_full` returns both, so tests and properties compare the two on the same tokens (no
argmax ties involved). The model should be in eval mode (dropout off); nothing here builds autograd graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attncheck.reference.attention import causal_mask
from attncheck.reference.model import EncoderDecoder, KVCache


def next_log_probs(
    model: EncoderDecoder, memory: Tensor, src_mask: Tensor | None, ys: Tensor, cache: list[KVCache] | None
) -> Tensor:
    """Log-probabilities (B, tgt_vocab) of the token after the prefix ys (B, T); a ``cache`` grows to T positions."""
    past = len(cache[0]) if cache else 0
    new = ys[:, past:]  # (B, T) -> (B, T - past), the positions not cached yet
    tgt_mask = causal_mask(new.size(1), ys.size(1), "bottom-right", ys.device)[None, None]  # (1, 1, T - past, T)
    out = model.decode(memory, src_mask, new, tgt_mask, cache)  # (B, T - past, d_model)
    return model.generator(out[:, -1])  # (B, d_model) -> (B, tgt_vocab)


@torch.no_grad()
def greedy_decode(
    model: EncoderDecoder,
    src: Tensor,
    src_mask: Tensor | None,
    max_len: int,
    start_symbol: int,
    use_cache: bool = False,
) -> Tensor:
    """Greedy decoding of src (B, S) into (B, max_len) tokens starting with ``start_symbol``.

    ``use_cache=False`` recomputes the decoder over the whole prefix at every step (the Annotated Transformer);
    ``use_cache=True`` feeds one new token per step and reuses the cached keys and values.
    """
    memory = model.encode(src, src_mask)  # (B, S, d_model)
    ys = torch.full((src.size(0), 1), start_symbol, dtype=src.dtype, device=src.device)  # (B, 1)
    cache = model.init_cache() if use_cache else None
    for _ in range(max_len - 1):
        next_word = next_log_probs(model, memory, src_mask, ys, cache).argmax(dim=-1)  # (B, tgt_vocab) -> (B,)
        ys = torch.cat([ys, next_word[:, None]], dim=1)  # (B, T), (B, 1) -> (B, T + 1)
    return ys


@torch.no_grad()
def step_log_probs(
    model: EncoderDecoder, src: Tensor, src_mask: Tensor | None, tgt: Tensor, use_cache: bool = False, prefill: int = 1
) -> Tensor:
    """Teacher-forced per-step log-probabilities (B, T - prefill + 1, tgt_vocab) of the target tgt (B, T).

    Row t is the prediction after the prefix tgt[:, :prefill + t]. With ``use_cache`` the first step decodes the
    ``prefill`` first tokens at once and every later step one token, reusing the cache.
    """
    memory = model.encode(src, src_mask)  # (B, S, d_model)
    cache = model.init_cache() if use_cache else None
    steps = [next_log_probs(model, memory, src_mask, tgt[:, :t], cache) for t in range(prefill, tgt.size(1) + 1)]
    return torch.stack(steps, dim=1)  # T - prefill + 1 x (B, tgt_vocab) -> (B, T - prefill + 1, tgt_vocab)


def cached_vs_full(
    model: EncoderDecoder, src: Tensor, src_mask: Tensor | None, tgt: Tensor, prefill: int = 1
) -> tuple[Tensor, Tensor]:
    """Per-step log-probabilities of tgt (B, T) by full recomputation and by incremental decoding: (full, cached)."""
    full = step_log_probs(model, src, src_mask, tgt, use_cache=False, prefill=prefill)
    cached = step_log_probs(model, src, src_mask, tgt, use_cache=True, prefill=prefill)
    return full, cached
