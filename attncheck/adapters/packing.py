"""The translations the varlen adapters share (docs/design.md, "Beyond SDPA"): packed rows into a padded batch
and back, and the packed outputs' padding rows (zeros, lse -inf), written once for :mod:`.entries`, :mod:`.jax`
and :mod:`.cuda_entries`. A sequence's keys in a KV cache, contiguous or paged, are gathered by the reference's
:func:`attncheck.reference.packed.cached_sequence`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def empty_outputs(query: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """The packed outputs before any sequence writes its rows: zeros (Tq + pad, Hq, Ev), the query's dtype, and
    lse -inf (Hq, Tq + pad), float32: the answer on padding rows (and on every row of a call without sequences)."""
    out = query.new_zeros(*query.shape[:-1], value.size(-1))  # (Tq + pad, Hq, Ev)
    lse = torch.full((query.size(1), query.size(0)), float("-inf"), device=query.device)  # (Hq, Tq + pad)
    return out, lse


def no_sequences(query: Tensor, value: Tensor, return_lse: bool) -> Any:
    """The answer to a varlen call without sequences: zeros, and lse -inf, on every (padding) row."""
    out, lse = empty_outputs(query, value)
    return (out, lse) if return_lse else out


def scatter_rows(query: Tensor, value: Tensor, out: Tensor, lse: Tensor | None) -> Any:
    """A library's output over the packed rows only, (Tq, Hq, Ev) and lse (Hq, Tq), placed into the contract's
    (Tq + pad, Hq, Ev) and (Hq, Tq + pad); padding rows get zeros and lse -inf."""
    Tq = out.size(0)
    packed, full = empty_outputs(query, value)  # (Tq + pad, Hq, Ev), (Hq, Tq + pad)
    packed[:Tq] = out
    if lse is None:
        return packed
    full[:, :Tq] = lse
    return packed, full


def pad_sequences(packed: Tensor, bounds: list[int], length: int) -> Tensor:
    """Packed rows (T + pad, H, D) -> a padded batch (B, length, H, D): sequence b, rows bounds[b]:bounds[b + 1],
    at the start of padded row b, zeros after it (``bounds`` is cu_seqlens as a list, B + 1 entries)."""
    B = len(bounds) - 1
    batch = packed.new_zeros(B, length, *packed.shape[1:])  # (B, length, H, D)
    for b in range(B):
        batch[b, : bounds[b + 1] - bounds[b]] = packed[bounds[b] : bounds[b + 1]]
    return batch


def unpad_sequences(batch: Tensor, bounds: list[int], packed: Tensor) -> Tensor:
    """The inverse of :func:`pad_sequences`: the first n_b rows of padded row b of ``batch`` (B, length, ...) are
    written into rows bounds[b]:bounds[b + 1] of ``packed`` (T + pad, ...), whose other rows keep what they hold;
    returns ``packed``."""
    for b in range(len(bounds) - 1):
        packed[bounds[b] : bounds[b + 1]] = batch[b, : bounds[b + 1] - bounds[b]]
    return packed
