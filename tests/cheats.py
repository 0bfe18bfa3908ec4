"""Cheating attention kernels: right on a KernelBench-style gate, wrong by an exploit; the suite must catch each.

Generated kernels learn to game weak correctness checks (issue 19; KernelBench's ``eval.py`` and its adversarial
kernels, the Sakana "AI CUDA Engineer" post-mortem, robust-kbench, CUDA-L1). Each cheat below is one exploit
class, written as a function of one :class:`~tests.meta_call.Call` and registered with
``@cheat("check_name", **capabilities)``: the check of the catalog meant to catch it (usually a check of the
``integrity`` property, properties/test_integrity.py). Everything a cheat computes honestly is torch SDPA
(:func:`_honest`); the line that cheats is marked ``# CHEAT``. :data:`HONEST` holds correct kernels that do
the legitimate thing next to each exploit (a copy where the cheat returns a view, a cache keyed on the whole
content, a helper thread that is joined), which every integrity check must pass.

:func:`kernelbench_check` is KernelBench's own gate (torch.rand inputs, five seeded trials on one shape,
``allclose`` at one tolerance), for the cheat-by-check matrix (tests/test_integrity.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from attncheck.properties.catalog import check_catalog
from tests.meta_call import NEG_INF, Call, Decorator, Implementation, masked_scores, zero_unseen_values


@dataclass(frozen=True)
class Cheat(Implementation):
    """A cheating kernel and the check (a function name of the catalog) that must catch it."""

    kind: ClassVar[str] = "cheat"
    check: str


@dataclass(frozen=True)
class Honest(Implementation):
    """A correct kernel doing the legitimate counterpart of an exploit."""

    kind: ClassVar[str] = "honest"


CHEATS: dict[str, Cheat] = {}
HONEST: dict[str, Honest] = {}


def cheat(check_name: str, **capabilities: Any) -> Decorator:
    """Register a function of a :class:`Call` as a cheat ``check_name`` must catch, declaring ``capabilities``."""
    if check_name not in check_catalog():
        raise ValueError(f"unknown check {check_name!r}")
    return Cheat.decorator(CHEATS, capabilities, check=check_name)


def honest(**capabilities: Any) -> Decorator:
    return Honest.decorator(HONEST, capabilities)


def _honest(c: Call) -> Tensor:
    """The right answer: torch SDPA on the call as given (it applies a mask together with is_causal)."""
    return torch.nn.functional.scaled_dot_product_attention(c.query, c.key, c.value, **c.kwargs())


def _explicit(c: Call, split: bool = False) -> Tensor:
    """Equation (1) step by step in the working dtype; ``split`` sums P V over two halves of the keys (another
    summation order, the same answer up to rounding). Rows with no admissible key give zeros."""
    q, k, v = c.qkv()
    s = masked_scores(torch.matmul(q, k.transpose(-2, -1)) * c.softmax_scale, c.bias())  # (B, H, L, S)
    live = (s != NEG_INF).any(-1, keepdim=True)  # (B, H, L, 1)
    p = torch.softmax(s.masked_fill(~live, 0.0), -1) * live  # (B, H, L, S)
    v = zero_unseen_values(v, s)  # (B, H, S, Ev)
    if split:
        h = c.S // 2
        out = p[..., :h] @ v[..., :h, :] + p[..., h:] @ v[..., h:, :]  # (B, H, L, Ev), two partial sums
    else:
        out = p @ v  # (B, H, L, S) @ (B, H, S, Ev) -> (B, H, L, Ev)
    return out.to(c.query.dtype)


def _live_rows(c: Call) -> Tensor:
    """(B, Hq, L) bool: rows with at least one admissible key."""
    bias = c.bias()
    shape = (*torch.broadcast_shapes(c.query.shape[:-2], c.key.shape[:-2]), c.L)
    if bias is None:
        return torch.ones(shape, dtype=torch.bool)
    return (bias != NEG_INF).any(-1).expand(shape)  # (..., L, S) -> (B, Hq, L)


# ---------------------------------------------------------------------------------------------------------------
# Output aliases an input


@cheat("test_output_shares_no_storage")
def value_view_one_key(c: Call) -> Tensor:
    """With one key the softmax is 1 and the output is V: return a view of the caller's V (right, but aliased)."""
    if c.S == 1 and c.attn_mask is None and c.query.size(-3) == c.value.size(-3):
        return c.value.expand(*c.query.shape[:-1], c.value.size(-1))  # CHEAT: (B, H, 1, Ev) -> (B, H, L, Ev) view
    return _honest(c)


@cheat("test_output_shares_no_storage")
def output_in_query_storage(c: Call) -> Tensor:
    """When no input needs grad, write the result into the front of Q's storage and return that view."""
    out = _honest(c)
    if not any(t.requires_grad for t in (c.query, c.key, c.value)) and c.query.is_contiguous():
        if c.query.numel() >= out.numel():
            front = c.query.view(-1)[: out.numel()]  # CHEAT: the caller's storage reused as the output
            front.copy_(out.flatten())
            return front.view(out.shape)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Writes into its inputs


@cheat("test_inputs_unchanged_in_every_grad_mode")
def zeroes_value_under_no_grad(c: Call) -> Tensor:
    """Under no_grad, zero V after the call: a reference computed afterwards sees zeros and agrees with zeros."""
    out = _honest(c)
    if not torch.is_grad_enabled():
        c.value.zero_()  # CHEAT
    return out


@cheat("test_inputs_unchanged_in_every_grad_mode")
def scratch_in_query_under_inference_mode(c: Call) -> Tensor:
    """Under inference_mode, use Q as scratch space (it is 'not needed for backward')."""
    out = _honest(c)
    if torch.is_inference_mode_enabled():
        c.query.mul_(0.5)  # CHEAT
    return out


# ---------------------------------------------------------------------------------------------------------------
# Stale caches


_CACHE: dict[Any, Tensor] = {}


def _cached(key: Any, c: Call) -> Tensor:
    if key not in _CACHE:
        _CACHE[key] = _honest(c).clone()
    return _CACHE[key].clone()


def _shape_key(c: Call) -> tuple[Any, ...]:
    mask = None if c.attn_mask is None else (tuple(c.attn_mask.shape), c.attn_mask.dtype)
    return (c.query.shape, c.key.shape, c.value.shape, c.query.dtype, mask, c.is_causal, c.scale, c.enable_gqa)


@cheat("test_refilled_buffers_give_the_new_answer")
def pointer_keyed_cache(c: Call) -> Tensor:
    """Cache the output by the inputs' data pointers (and shapes): buffers refilled in place get the old answer."""
    ptrs = tuple(0 if t is None else t.data_ptr() for t in (c.query, c.key, c.value, c.attn_mask))
    return _cached(("ptr", ptrs, _shape_key(c)), c)  # CHEAT


@cheat("test_refilled_buffers_give_the_new_answer")
def shape_keyed_cache(c: Call) -> Tensor:
    """Cache the output by shapes, dtype and flags: right only for the first data of each shape."""
    return _cached(("shape", _shape_key(c)), c)  # CHEAT


@cheat("test_refilled_buffers_give_the_new_answer")
def fingerprint_keyed_cache(c: Call) -> Tensor:
    """Cache the output by shapes plus the first four entries of Q, K and V (a cheap 'content hash')."""
    prints = tuple(tuple(t.detach().flatten()[:4].tolist()) for t in (c.query, c.key, c.value))
    return _cached(("print", prints, _shape_key(c)), c)  # CHEAT


# ---------------------------------------------------------------------------------------------------------------
# Not a plain, finished tensor; threads left running


class _Deferred(torch.Tensor):
    """A tensor subclass standing for a value 'materialised on access' (the lazy-output exploit)."""


@cheat("test_output_plain_complete_no_threads")
def lazy_subclass_output(c: Call) -> Tensor:
    """Return the right values as a torch.Tensor subclass, which may compute on access and fool a timer."""
    return _honest(c).as_subclass(_Deferred)  # CHEAT


@cheat("test_output_plain_complete_no_threads")
def finishes_after_return(c: Call) -> Tensor:
    """Return zeros at once and write the answer from a background thread 10 ms later (a timer stops early)."""
    out = torch.zeros(*c.query.shape[:-1], c.value.size(-1), dtype=c.query.dtype)  # (B, Hq, L, Ev)

    def finish() -> None:
        time.sleep(0.01)
        with torch.inference_mode():  # out may be an inference tensor (a call under inference_mode)
            out.copy_(_honest(c))

    threading.Thread(target=finish, daemon=True).start()  # CHEAT
    return out


@cheat("test_output_plain_complete_no_threads")
def leaves_thread_running(c: Call) -> Tensor:
    """Right answer, but a 'prefetch' thread keeps running after the call (work that a timer does not see)."""
    threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()  # CHEAT
    return _honest(c)


# ---------------------------------------------------------------------------------------------------------------
# Uninitialised memory


@cheat("test_no_uninitialised_memory_in_the_output")
def empty_output(c: Call) -> Tensor:
    """Return torch.empty: where the reference's freed output lies, the allocator hands back the right answer."""
    return torch.empty(*c.query.shape[:-1], c.value.size(-1), dtype=c.query.dtype)  # CHEAT


@cheat("test_no_uninitialised_memory_in_the_output")
def keyless_rows_unwritten(c: Call) -> Tensor:
    """Write live rows only; rows with no admissible key keep whatever torch.empty held."""
    right = _honest(c)
    out = torch.empty_like(right)  # CHEAT: rows without keys are never written
    live = _live_rows(c)
    out[live] = right[live]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Fast paths judged on a slice; what a benchmark never passes


@cheat("test_forward_matches_oracle")
def mask_dropped_when_first_row_full(c: Call) -> Tensor:
    """A 'no masking needed' fast path that looks only at the mask's first row (of the first batch and head)."""
    m = c.attn_mask
    if m is not None:
        first = m.reshape(-1, m.size(-1))[0]  # (S,): row 0 of batch 0, head 0
        if bool((first if m.dtype == torch.bool else first != NEG_INF).all()):
            return _honest(c.replace(attn_mask=None))  # CHEAT: the other rows' masks are dropped
    return _honest(c)


@cheat("test_forward_matches_oracle", mask_with_causal=True)
def mask_dropped_under_causal(c: Call) -> Tensor:
    """With is_causal, ignore attn_mask (as one inference runtime documents): right whenever no mask is passed."""
    if c.is_causal:
        return _honest(c.replace(attn_mask=None))  # CHEAT
    return _honest(c)


# ---------------------------------------------------------------------------------------------------------------
# Precision


@cheat("test_forward_matches_oracle")
def float32_computed_in_bfloat16(c: Call) -> Tensor:
    """float32 inputs computed in bfloat16 (undeclared), returned as float32."""
    if c.query.dtype != torch.float32:
        return _honest(c)
    half = c.replace(**{n: getattr(c, n).bfloat16() for n in ("query", "key", "value")})  # CHEAT
    if c.attn_mask is not None and c.attn_mask.is_floating_point():
        half = half.replace(attn_mask=c.attn_mask.bfloat16())
    return _honest(half).float()


@cheat("test_forward_matches_oracle", dtypes=("bfloat16",))
def mean_of_v_in_bfloat16(c: Call) -> Tensor:
    """The mean of V for every query, in bfloat16 only (issue 19: passed the old budget 7.30 with error 3.18)."""
    _, _, v = c.qkv()  # (B, Hq, S, Ev), float32
    return v.mean(-2, keepdim=True).expand(-1, -1, c.L, -1).to(c.query.dtype)  # CHEAT: (B, Hq, L, Ev)


@cheat("test_forward_matches_oracle", dtypes=("float16",))
def halved_scale_in_float16(c: Call) -> Tensor:
    """Half the softmax scale, in float16 only (issue 19: error 1.46 passed the old budget of 1.66)."""
    return _honest(c.replace(scale=c.softmax_scale / 2))  # CHEAT


# ---------------------------------------------------------------------------------------------------------------
# Batch invariance


@cheat("test_row_bitwise_same_alone_and_in_a_batch", batch_invariant=True, masked_rows="zeros")
def batch_dependent_reduction(c: Call) -> Tensor:
    """Declares batch invariance but switches to a split-K reduction for batches (another summation order)."""
    return _explicit(c, split=c.query.size(0) > 1)  # CHEAT: the order depends on the batch size


# ---------------------------------------------------------------------------------------------------------------
# Honest counterparts


@honest(masked_rows="zeros")
def copies_value_for_one_key(c: Call) -> Tensor:
    """With one key, return a fresh copy of V (what value_view_one_key should have done)."""
    if c.S == 1 and c.attn_mask is None and c.query.size(-3) == c.value.size(-3):
        return c.value.expand(*c.query.shape[:-1], c.value.size(-1)).clone()  # (B, H, L, Ev), own storage
    return _explicit(c)


_WHOLE: dict[Any, Tensor] = {}


@honest(masked_rows="zeros", grad=False)  # a memoised output carries no autograd graph
def whole_content_cache(c: Call) -> Tensor:
    """Memoise on the inputs' whole content (every byte) and the flags: legitimate, never stale."""
    tensors = (c.query, c.key, c.value, c.attn_mask)
    content = tuple(
        None if t is None else t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() for t in tensors
    )  # every byte of every input
    key = (_shape_key(c), content)
    if key not in _WHOLE:
        _WHOLE[key] = _explicit(c)
    return _WHOLE[key].clone()


@honest(masked_rows="zeros")
def joined_helper_thread(c: Call) -> Tensor:
    """Compute on a helper thread and join it before returning."""
    result: list[Tensor] = []
    worker = threading.Thread(target=lambda: result.append(_explicit(c)))
    worker.start()
    worker.join()
    return result[0]


@honest(masked_rows="zeros", batch_invariant=True)
def per_sequence_loop(c: Call) -> Tensor:
    """Batch invariant by construction: each batch element computed on its own, in the same order."""
    rows = []
    for b in range(c.query.size(0)):
        mask = c.attn_mask
        if mask is not None and mask.dim() == 4 and mask.size(0) > 1:
            mask = mask[b : b + 1]  # (B, *, L|1, S) -> (1, *, L|1, S)
        one = c.replace(query=c.query[b : b + 1], key=c.key[b : b + 1], value=c.value[b : b + 1], attn_mask=mask)
        rows.append(_explicit(one))  # (1, Hq, L, Ev)
    return torch.cat(rows)  # (B, Hq, L, Ev)


# ---------------------------------------------------------------------------------------------------------------
# KernelBench's gate, for comparison


def kernelbench_check(fn: Any, atol: float, shape: tuple[int, int, int, int] = (2, 4, 64, 32), trials: int = 5) -> bool:
    """KernelBench's correctness check (``eval.py``): ``trials`` seeded draws of torch.rand inputs of one shape
    (B, H, L, E), the reference model run first, then the candidate, ``torch.allclose(atol=rtol=atol)``."""
    for trial in range(trials):
        g = torch.Generator().manual_seed(42 + trial)
        q, k, v = (torch.rand(shape, generator=g) for _ in range(3))  # (B, H, L, E), float32 in [0, 1)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        try:
            out = fn(q, k, v)
        except Exception:
            return False
        if not (isinstance(out, Tensor) and out.shape == ref.shape and torch.allclose(out, ref, atol=atol, rtol=atol)):
            return False
    return True
