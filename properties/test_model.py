"""model: properties of the whole reference Transformer, run with the target as its attention.

The reference encoder-decoder (reference/model.py) takes any SDPA-convention attention function, so these
checks exercise the target inside a real model: multi-head attention and the encoder commute with
permutations when there is no positional encoding (and, as a negative control, do not with it); decoder
logits at t do not depend on tokens after t; padding tokens do not change the other positions; incremental
decoding with a key/value cache equals full recomputation (prefill of several tokens, then one at a time);
the sinusoidal encoding has its relative-position (rotation) property; LayerNorm normalises each position.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, check, require
from attncheck.properties.contract import Target
from attncheck.properties.problems import Problem
from attncheck.reference.decoding import cached_vs_full
from attncheck.reference.model import (
    EncoderDecoder,
    LayerNorm,
    TransformerConfig,
    make_model,
    padding_mask,
    sinusoidal_encoding,
    target_mask,
)

VOCAB = 11
PAD = 0


def _model(target: Target, seed: int, positional_encoding: bool = False, h_kv: int | None = None) -> EncoderDecoder:
    """A small eval-mode model (N=2, d_model=16, h=4) using ``target`` for every attention, float64 if supported."""
    require("bool" in target.caps.masks, "the model passes boolean masks; target declares none")
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        VOCAB,
        VOCAB,
        N=2,
        d_model=16,
        d_ff=32,
        h=4,
        h_kv=h_kv,
        dropout=0.0,
        max_len=64,
        positional_encoding=positional_encoding,
        attention=target,
    )
    model = make_model(cfg).eval()
    return model.to(_dtype(target)).to(target.device)


def _dtype(target: Target) -> torch.dtype:
    return torch.float64 if "float64" in target.caps.dtypes else torch.float32


def _tol(target: Target) -> float:
    """Model outputs are O(1): allow reordering error of a few layers at the precision the attention computes in
    (a float64 model whose attention computes in float32, declared or observed, gets the float32 allowance)."""
    return 1e-9 if target.precision(_dtype(target)) == torch.float64 else 2e-4


def _tokens(B: int, S: int, seed: int, device: str) -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed)).to(device)  # (B, S)


def _problem(B: int, S: int, seed: int, target: Target) -> Problem:
    """The counterexample as reported: a model-level problem is described by its token shape and seed."""
    return Problem(B=B, Hq=4, Hkv=4, L=S, S=S, E=4, Ev=4, dtype=str(_dtype(target)).removeprefix("torch."), seed=seed)


sizes = st.tuples(st.integers(1, 3), st.integers(2, 12), st.integers(0, 2**16))


@prop("model")
@given(sizes=sizes)
def test_encoder_permutation_equivariance_without_pe(target: Target, sizes: tuple[int, int, int]) -> None:
    """Without positional encoding, encode(Pi src) = Pi encode(src): the encoder stack is a set function."""
    B, S, seed = sizes
    model = _model(target, seed)
    src = _tokens(B, S, seed, target.device)
    perm = torch.randperm(S, generator=torch.Generator().manual_seed(seed + 1)).to(target.device)
    with torch.no_grad():
        memory = model.encode(src, None)  # (B, S, d_model)
        memory_perm = model.encode(src[:, perm], None)  # (B, S, d_model)
    assert_close(
        memory_perm,
        memory[:, perm],
        _tol(target),
        "encoder output of permuted tokens vs permuted output",
        _problem(B, S, seed, target),
    )


@prop("model")
@given(sizes=sizes.filter(lambda s: s[1] >= 3))
def test_encoder_with_pe_is_not_equivariant(target: Target, sizes: tuple[int, int, int]) -> None:
    """Negative control: with sinusoidal positional encoding, permuting the tokens does change the output."""
    B, S, seed = sizes
    model = _model(target, seed, positional_encoding=True)
    src = _tokens(B, S, seed, target.device)
    perm = torch.roll(torch.arange(S), 1).to(target.device)  # a cyclic shift: no position keeps its token
    with torch.no_grad():
        diff = (model.encode(src[:, perm], None) - model.encode(src, None)[:, perm]).abs().max()
    check(
        float(diff) > 100 * _tol(target),
        f"with positional encoding the encoder still commutes with a permutation "
        f"(max difference {float(diff):.3g}): positions are ignored",
        _problem(B, S, seed, target),
    )


@prop("model")
@given(sizes=sizes, data=st.data())
def test_decoder_is_causal(target: Target, sizes: tuple[int, int, int], data: st.DataObject) -> None:
    """Decoder log-probabilities at t do not depend on target tokens after t (section 3.2.3)."""
    require(target.caps.lengths != "equal", "encoder-decoder attention has L != S; target declares L == S only")
    require("full" in target.caps.mask_shapes, "the decoder's causal mask is (1, 1, L, L); target takes no full masks")
    B, L, seed = sizes
    t = data.draw(st.integers(0, L - 2), label="t")
    model = _model(target, seed, positional_encoding=True)
    src, tgt = _tokens(B, L + 1, seed, target.device), _tokens(B, L, seed + 2, target.device)
    changed = tgt.clone()
    changed[:, t + 1 :] = _tokens(B, L - t - 1, seed + 3, target.device)
    with torch.no_grad():
        memory = model.encode(src, None)
        out = model.generator(model.decode(memory, None, tgt, target_mask(tgt)))  # (B, L, vocab)
        out_changed = model.generator(model.decode(memory, None, changed, target_mask(changed)))
    assert_close(
        out_changed[:, : t + 1],
        out[:, : t + 1],
        _tol(target),
        f"decoder log-probs at positions 0..{t} after changing tokens after {t}",
        _problem(B, L, seed, target),
    )


@prop("model")
@given(sizes=sizes, data=st.data())
def test_padding_does_not_change_other_positions(
    target: Target, sizes: tuple[int, int, int], data: st.DataObject
) -> None:
    """A batch of sequences of different lengths, padded and masked, encodes each one as if it were alone."""
    require("key_padding" in target.caps.mask_shapes, "the encoder's padding mask is (B, 1, 1, S)")
    B, S, seed = sizes
    lengths = data.draw(st.lists(st.integers(1, S), min_size=B, max_size=B), label="lengths")
    model = _model(target, seed, positional_encoding=True)
    src = _tokens(B, S, seed, target.device)
    padded = src.clone()
    for b, n in enumerate(lengths):
        padded[b, n:] = PAD  # (B, S): row b is n real tokens, then padding
    with torch.no_grad():
        batch = model.encode(padded, padding_mask(padded, PAD))  # (B, S, d_model)
        for b, n in enumerate(lengths):
            alone = model.encode(src[b : b + 1, :n], None)  # (1, n, d_model)
            assert_close(
                batch[b : b + 1, :n],
                alone,
                _tol(target),
                f"encoder output of sequence {b} (length {n}) in a padded batch vs alone",
                _problem(B, S, seed, target),
            )


@prop("model")
@given(sizes=sizes, data=st.data(), gqa=st.booleans())
def test_kv_cache_equals_full_recomputation(
    target: Target, sizes: tuple[int, int, int], data: st.DataObject, gqa: bool
) -> None:
    """Incremental decoding with a key/value cache (prefill, then one token at a time) equals full recomputation."""
    require(target.caps.lengths != "equal", "cached decoding attends L new queries to S > L keys; target: L == S")
    require({"full", "key_padding"} <= set(target.caps.mask_shapes), "needs (1, 1, L, S) and (B, 1, 1, S) masks")
    B, T, seed = sizes
    prefill = data.draw(st.integers(1, T), label="prefill")
    use_gqa = gqa and target.caps.gqa
    model = _model(target, seed, positional_encoding=True, h_kv=2 if use_gqa else None)
    src, tgt = _tokens(B, T + 2, seed, target.device), _tokens(B, T, seed + 5, target.device)
    src_mask = padding_mask(src, PAD)
    full, cached = cached_vs_full(model, src, src_mask, tgt, prefill=prefill)
    assert_close(
        cached,
        full,
        _tol(target),
        f"log-probs with a KV cache (prefill {prefill}{', GQA' if use_gqa else ''}) vs full recomputation",
        _problem(B, T, seed, target),
    )


@prop("model")
@given(pos=st.integers(0, 200), k=st.integers(1, 50), d_model=st.sampled_from((4, 16, 64)))
def test_sinusoidal_encoding_relative_position(target: Target, pos: int, k: int, d_model: int) -> None:
    """Section 3.5: PE(pos + k) is a fixed rotation R_k of PE(pos), for each frequency pair (sin, cos)."""
    pe = sinusoidal_encoding(pos + k + 1, d_model)  # (max_len, d_model), float64
    i = torch.arange(0, d_model, 2, dtype=torch.float64)
    omega = torch.exp(-i * math.log(10000.0) / d_model)  # (d_model/2,) the frequencies 1 / 10000^(2i/d_model)
    sin, cos = pe[pos, 0::2], pe[pos, 1::2]
    c, s = torch.cos(omega * k), torch.sin(omega * k)
    rotated = torch.stack([sin * c + cos * s, cos * c - sin * s], dim=-1).flatten()  # (d_model/2, 2) -> (d_model,)
    assert_close(rotated, pe[pos + k], 1e-9, f"R_{k} PE({pos}) vs PE({pos + k})", None)


@prop("model")
@given(seed=st.integers(0, 2**16), shift=st.floats(-100, 100), spread=st.floats(1e-2, 1e3))
def test_layernorm_normalises_each_position(target: Target, seed: int, shift: float, spread: float) -> None:
    """LayerNorm with its initial gain 1 and bias 0 gives zero mean and unit variance at every position."""
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread + shift
    y = LayerNorm(64, eps=1e-12).double()(x)  # (2, 5, 64)
    assert_close(y.mean(-1), torch.zeros(2, 5), 1e-9, "LayerNorm output mean per position", None)
    assert_close(y.var(-1, unbiased=False), torch.ones(2, 5), 1e-6, "LayerNorm output variance per position", None)
