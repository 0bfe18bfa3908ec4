"""Built-in targets of JAX: ``jax.nn.dot_product_attention``, jitted, through numpy on the host (jax 0.10.2).

* ``jax``: the dense call (BTNH = BLHD).
* ``jax-varlen``: the varlen entry through the same function's padding arguments: the packed sequences are
  scattered into a padded (B, T_max, N, H) batch, their lengths passed as ``query_seq_lengths`` and
  ``key_value_seq_lengths``, and the rows gathered back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attncheck.adapters import HALF_AND_SINGLE, as_4d
from attncheck.adapters.packing import empty_outputs, pad_sequences, unpad_sequences
from attncheck.errors import TargetUnavailable
from attncheck.properties.contract import Capabilities, Target

STATIC = ("is_causal", "scale", "local_window_size", "return_residual")  # jax.jit's static arguments

# ---------------------------------------------------------------------------------------------------------------
# JAX


def _import_jax() -> Any:
    try:
        import jax
        import ml_dtypes  # noqa: F401  (bfloat16 on the host)
    except ImportError:
        raise TargetUnavailable("jax is not installed: pip install 'attncheck[jax]'") from None
    return jax


def _to_numpy(t: Tensor) -> Any:
    import ml_dtypes

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits as ml_dtypes.bfloat16
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _from_numpy(a: Any, like: Tensor) -> Tensor:
    import ml_dtypes
    import numpy as np

    a = np.array(a)  # a writable host copy of the jax.Array
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(like.device)
    return torch.from_numpy(a).to(like.device)


def _local_window(window: tuple[int, int] | None, L: int, S: int) -> tuple[int, int] | None:
    """The contract's window as local_window_size: (left, right) counts as the contract does (the docs: (3, 2)
    lets token c see 3 keys before it and 2 after), aligned top-left; it has no "unbounded" value: -1 becomes
    L + S, past every key."""
    return None if window is None else (L + S if window[0] < 0 else window[0], L + S if window[1] < 0 else window[1])


def _dtypes(backend: str) -> tuple[str, ...]:
    """float32 on the CPU backend (see jax_target), the half types too elsewhere."""
    return ("float32",) if backend == "cpu" else HALF_AND_SINGLE


def _call(
    jax: Any,
    attention: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    window: tuple[int, int] | None,
    return_lse: bool,
    **given: Any,
) -> tuple[Tensor, Tensor | None]:
    """One call of the jitted ``attention`` on host copies of query (B, T, N, H), key and value (B, S, K, H), with
    the contract's window for T x S and the ``given`` keywords -> (out (B, T, N, Ev), lse (B, T, N) or None unless
    ``return_lse``) as tensors on the query's device."""
    with jax.enable_x64(True):  # float64 stays float64 (jax would silently compute float32 otherwise)
        result = attention(
            _to_numpy(query),
            _to_numpy(key),
            _to_numpy(value),
            local_window_size=_local_window(window, query.size(1), key.size(1)),
            return_residual=return_lse,
            **given,
        )  # (B, T, N, Ev), and with return_residual the lse (B, T, N)
    if return_lse:
        out, lse = result
        return _from_numpy(out, query), _from_numpy(lse, query)
    return _from_numpy(result, query), None


def jax_target() -> Target:
    jax = _import_jax()
    backend = jax.default_backend()
    attention = jax.jit(jax.nn.dot_product_attention, static_argnames=STATIC)  # as JAX code runs it

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
        mask = as_4d(attn_mask)  # (., ., L, S): jax wants 4-D masks broadcastable to (B, N, T, S)
        bool_mask = _to_numpy(mask) if mask is not None and mask.dtype == torch.bool else None
        bias = _to_numpy(mask) if mask is not None and mask.dtype != torch.bool else None
        given = {"bias": bias, "mask": bool_mask, "scale": scale, "is_causal": is_causal}
        out, lse = _call(jax, attention, query, key, value, window, return_lse, **given)  # (B, T, N, Ev)
        return out if lse is None else (out, lse.transpose(1, 2))  # lse (B, T, N) -> (B, N, T)

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
    features = frozenset({"window", "lse"})
    caps = Capabilities(
        grad=False,
        value_dim=False,
        dtypes=_dtypes(backend),
        devices=("cpu",),
        layout="BLHD",
        features=features,
        lse_empty="any",
    )
    description = f"jax {jax.__version__} jax.jit(jax.nn.dot_product_attention) on the {backend} backend"
    return Target("jax", jax_attention, caps, description)


def jax_varlen_target() -> Target:
    import numpy as np

    jax = _import_jax()
    backend = jax.default_backend()
    attention = jax.jit(jax.nn.dot_product_attention, static_argnames=STATIC)

    def jax_varlen(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        cu_seqlens_q: Tensor,
        cu_seqlens_k: Tensor,
        max_seqlen_q: int,
        max_seqlen_k: int,
        *,
        is_causal: bool = False,
        scale: float | None = None,
        window: tuple[int, int] | None = None,
        return_lse: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        T, S = max(max_seqlen_q, 1), max(max_seqlen_k, 1)
        q = pad_sequences(query, bq, T)  # (Tq + pad, N, H) -> (B, T_max, N, H): sequence b at the start of row b
        k, v = (pad_sequences(t, bk, S) for t in (key, value))  # (Tk + pad, K, H) -> (B, S_max, K, H)
        lengths_q = np.diff(np.asarray(bq, dtype=np.int32))  # (B,) int32, as documented
        lengths_k = np.diff(np.asarray(bk, dtype=np.int32))
        lengths = {"query_seq_lengths": lengths_q, "key_value_seq_lengths": lengths_k}  # int32 under enable_x64 too
        out, lse = _call(jax, attention, q, k, v, window, return_lse, scale=scale, is_causal=is_causal, **lengths)
        packed, packed_lse = empty_outputs(query, value)  # (Tq + pad, Hq, Ev), (Hq, Tq + pad); padding 0, -inf
        unpad_sequences(out, bq, packed)  # the first seqlens_q[b] rows of padded row b are sequence b's
        if lse is None:
            return packed
        unpad_sequences(lse, bq, packed_lse.T)  # (B, T_max, N) into (Tq + pad, N), a view of (N, Tq + pad)
        return packed, packed_lse

    # jax 0.10.2, jax/_src/nn/functions.py (xla implementation, the default): _apply_masks ANDs the causal mask
    # (tril over the padded (T, S) box), the window mask (query_pos - left <= key_pos <= query_pos + right) and the
    # padding mask (query row < query_seq_lengths[b], key < key_value_seq_lengths[b]). Each sequence sits at the
    # start of its padded row, so causal and window align top-left within each sequence: causal="top-left". Rows
    # past the query length are masked and zeroed (_dot_product_attention_core multiplies them by the query padding
    # mask); they are not gathered back. Masked logits are -0.7 * finfo(float32).max, not -inf: a query row with no
    # admissible key averages all S_max padded values (its sequence's values and the zero padding), so
    # masked_rows is not declared (observed), and its lse is finite (lse_empty="any", as jax). Dtypes, GQA (N
    # query heads over K kv heads, grouped), Ev == E, no autograd through numpy: as jax.
    caps = Capabilities(
        entry="varlen",
        causal="top-left",
        masks=frozenset(),
        grad=False,
        value_dim=False,
        dtypes=_dtypes(backend),
        devices=("cpu",),
        features=frozenset({"window", "lse"}),
        lse_empty="any",
    )
    description = f"jax {jax.__version__} jax.jit(jax.nn.dot_product_attention) with *_seq_lengths on {backend}"
    return Target("jax-varlen", jax_varlen, caps, description)
