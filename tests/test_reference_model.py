"""The reference Transformer (reference/model.py, reference/decoding.py) against torch.nn and against itself.

Layers are compared with torch.nn's in float64 with the weights copied across; equality is claimed to ATOL
(absolute; activations are O(1)). Observed max |difference|: 0 for multi-head attention and its weights against
nn.MultiheadAttention, <= 1.8e-15 for layers, stacks and their input gradients, <= 1.8e-15 between cached and
full decoding; 2.3e-13 for the PE rotation over 2000 positions (the angles reach 2000 rad).
"""

from __future__ import annotations

import math
from typing import TypeVar

import pytest
import torch
from torch import Tensor, nn

from attncheck.reference.attention import causal_mask, scaled_dot_product_attention
from attncheck.reference.decoding import cached_vs_full, greedy_decode, step_log_probs
from attncheck.reference.model import (
    DecoderLayer,
    Encoder,
    EncoderDecoder,
    EncoderLayer,
    LayerNorm,
    MultiHeadedAttention,
    PositionwiseFeedForward,
    TransformerConfig,
    make_model,
    padding_mask,
    sinusoidal_encoding,
    target_mask,
)

ModuleT = TypeVar("ModuleT", bound=nn.Module)
ATOL = 1e-14
F64 = torch.float64
B, L, S, d_model, h, d_ff = 3, 5, 7, 16, 4, 24
PAD = 0


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def key_padding() -> Tensor:
    """(B, S) True where the key is padding: sequences of lengths S, S - 2 and 1."""
    lengths = torch.tensor([S, S - 2, 1])
    return torch.arange(S)[None, :] >= lengths[:, None]  # (1, S) >= (B, 1) -> (B, S)


def copy_attention_weights(ours: MultiHeadedAttention, theirs: nn.MultiheadAttention) -> None:
    """Give ``theirs`` the projections of ``ours`` (W^Q, W^K, W^V stacked in in_proj; W^O in out_proj)."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        theirs.out_proj.weight.copy_(ours.w_o.weight)
        theirs.out_proj.bias.copy_(ours.w_o.bias)


def copy_layer_weights(
    ours: EncoderLayer | DecoderLayer, theirs: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer
) -> None:
    """Copy every weight of one of our layers into the corresponding torch.nn layer."""
    copy_attention_weights(ours.self_attn, theirs.self_attn)
    norms = [theirs.norm1, theirs.norm2]
    if isinstance(ours, DecoderLayer) and isinstance(theirs, nn.TransformerDecoderLayer):
        copy_attention_weights(ours.src_attn, theirs.multihead_attn)
        norms.append(theirs.norm3)
    with torch.no_grad():
        theirs.linear1.weight.copy_(ours.feed_forward.w_1.weight)
        theirs.linear1.bias.copy_(ours.feed_forward.w_1.bias)
        theirs.linear2.weight.copy_(ours.feed_forward.w_2.weight)
        theirs.linear2.bias.copy_(ours.feed_forward.w_2.bias)
        for sublayer, norm in zip(ours.sublayer, norms, strict=True):
            norm.weight.copy_(sublayer.norm.a_2)
            norm.bias.copy_(sublayer.norm.b_2)


def randomize(module: ModuleT, seed: int = 0) -> ModuleT:
    """Random float64 parameters (LayerNorm gains and biases included, so that a swapped copy shows)."""
    g = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / math.sqrt(p.shape[-1]))
    return module.eval()


MHA_MASKS = ["none", "attn_mask", "key_padding", "both", "float"]


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("mask", MHA_MASKS)
def test_multi_headed_attention_equals_nn_multihead_attention(mask: str, cross: bool) -> None:
    ours = randomize(MultiHeadedAttention(h, d_model, dropout=0.0))
    theirs = nn.MultiheadAttention(d_model, h, batch_first=True, dtype=F64).eval()
    copy_attention_weights(ours, theirs)
    x = randn(B, L, d_model, seed=1)
    memory = randn(B, S, d_model, seed=2) if cross else x
    n_keys = memory.size(1)
    allowed = torch.rand(L, n_keys, generator=torch.Generator().manual_seed(3)) < 0.6  # (L, S), True = attend
    allowed[:, 0] = True
    pad = key_padding()[:, :n_keys]  # (B, S), True = padding
    ours_mask: Tensor | None = None
    theirs_kwargs: dict[str, Tensor] = {}
    if mask in ("attn_mask", "both"):
        ours_mask = allowed
        theirs_kwargs["attn_mask"] = ~allowed  # nn.MultiheadAttention: True = NOT allowed
    if mask in ("key_padding", "both"):
        not_pad = ~pad[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
        ours_mask = not_pad if ours_mask is None else ours_mask & not_pad  # (L, S) & (B, 1, 1, S) -> (B, 1, L, S)
        theirs_kwargs["key_padding_mask"] = pad
    if mask == "float":
        ours_mask = randn(L, n_keys, seed=4).masked_fill(~allowed, float("-inf"))
        theirs_kwargs["attn_mask"] = ours_mask
    got = ours(x, memory, memory, ours_mask)
    expected, weights = theirs(x, memory, memory, need_weights=True, average_attn_weights=False, **theirs_kwargs)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.attn, weights, atol=ATOL, rtol=0, msg=lambda m: f"attention weights: {m}")


def test_grouped_query_attention_equals_multi_head_attention_with_shared_key_value_heads() -> None:
    """h_kv < h: query head i reads key/value head i // (h / h_kv) (repeat_interleave, not tiling)."""
    h_kv, d_k = 2, d_model // h
    gqa = randomize(MultiHeadedAttention(h, d_model, dropout=0.0, h_kv=h_kv))
    mha = randomize(MultiHeadedAttention(h, d_model, dropout=0.0))
    with torch.no_grad():
        for name in ("w_q", "w_o"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("w_k", "w_v"):
            ours, full = getattr(gqa, name), getattr(mha, name)
            weight = ours.weight.view(h_kv, d_k, d_model)  # (h_kv * d_k, d_model) -> (h_kv, d_k, d_model)
            weight = weight.repeat_interleave(h // h_kv, dim=0)  # (h_kv, d_k, d_model) -> (h, d_k, d_model)
            full.weight.copy_(weight.reshape(h * d_k, d_model))  # (h, d_k, d_model) -> (h * d_k, d_model)
            bias = ours.bias.view(h_kv, d_k).repeat_interleave(h // h_kv, dim=0)  # (h_kv * d_k,) -> (h, d_k)
            full.bias.copy_(bias.flatten())  # (h, d_k) -> (h * d_k,)
    x, memory = randn(B, L, d_model, seed=1), randn(B, S, d_model, seed=2)
    mask = ~key_padding()[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
    torch.testing.assert_close(gqa(x, memory, memory, mask), mha(x, memory, memory, mask), atol=ATOL, rtol=0)


@pytest.mark.parametrize("h_kv", [h, 2], ids=["mha", "gqa"])
def test_pluggable_attention_gets_sdpa_arguments_and_matches_the_reference(h_kv: int) -> None:
    calls: list[dict[str, object]] = []

    def spy(q: Tensor, k: Tensor, v: Tensor, **kwargs: object) -> Tensor:
        mask = kwargs.get("attn_mask")
        mask_kind = None if not isinstance(mask, Tensor) else (mask.dtype, mask.dim())
        calls.append({"heads": (q.size(1), k.size(1)), "mask": mask_kind, **kwargs})
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)  # type: ignore[arg-type]

    cfg = TransformerConfig(src_vocab=11, tgt_vocab=13, N=2, d_model=d_model, d_ff=d_ff, h=h, h_kv=h_kv, dropout=0.0)
    torch.manual_seed(0)
    reference = make_model(cfg).double().eval()
    plugged = make_model(TransformerConfig(**{**vars(cfg), "attention": spy})).double().eval()
    plugged.load_state_dict(reference.state_dict())
    src, tgt = torch.tensor([[1, 3, 4, 5, 0, 0], [1, 6, 7, 8, 9, 2]]), torch.tensor([[1, 4, 2], [1, 5, 12]])
    args = (src, tgt, padding_mask(src, PAD), target_mask(tgt, PAD))
    torch.testing.assert_close(plugged(*args), reference(*args), atol=ATOL, rtol=0)
    assert len(calls) == 3 * cfg.N, "one call per attention sublayer"
    for call in calls:
        assert call["heads"] == (h, h_kv), f"query and key/value heads: {call}"
        assert "is_causal" not in call, f"is_causal passed: {call}"
        assert call["mask"] == (torch.bool, 4), f"attn_mask should be boolean (B, h, L, S)-broadcastable: {call}"
        assert call.get("enable_gqa", False) == (h_kv != h), f"enable_gqa wrong for h_kv={h_kv}: {call}"
        assert call["dropout_p"] == 0.0, f"dropout in eval: {call}"


def test_layer_norm_equals_torch_layer_norm_and_normalizes() -> None:
    x = 3.0 + 5.0 * randn(B, L, d_model)
    ours = randomize(LayerNorm(d_model, eps=1e-5))
    theirs = nn.LayerNorm(d_model, eps=1e-5, dtype=F64)
    with torch.no_grad():
        theirs.weight.copy_(ours.a_2)
        theirs.bias.copy_(ours.b_2)
    torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=0)
    plain = LayerNorm(d_model, eps=0.0).double()(x)
    torch.testing.assert_close(plain.mean(-1), torch.zeros(B, L, dtype=F64), atol=ATOL, rtol=0)
    torch.testing.assert_close(plain.var(-1, correction=0), torch.ones(B, L, dtype=F64), atol=ATOL, rtol=0)


def encoder_layer(norm_first: bool) -> EncoderLayer:
    attn = MultiHeadedAttention(h, d_model, dropout=0.0)
    return EncoderLayer(d_model, attn, PositionwiseFeedForward(d_model, d_ff, 0.0), 0.0, norm_first, eps=1e-5)


def nn_encoder_layer(norm_first: bool) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(d_model, h, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=F64)


def assert_forward_and_input_grad_equal(ours: Tensor, theirs: Tensor, inputs: tuple[Tensor, ...]) -> None:
    """Outputs equal to ATOL, and so are the gradients of a random projection of them w.r.t. ``inputs``."""
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    grad_out = randn(*ours.shape, seed=9)
    grads = zip(torch.autograd.grad(ours, inputs, grad_out), torch.autograd.grad(theirs, inputs, grad_out), strict=True)
    for i, (g, e) in enumerate(grads):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0, msg=lambda m, i=i: f"gradient w.r.t. input {i}: {m}")


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_encoder_layer_equals_nn_transformer_encoder_layer(norm_first: bool) -> None:
    ours = randomize(encoder_layer(norm_first))
    theirs = nn_encoder_layer(norm_first).eval()
    copy_layer_weights(ours, theirs)
    x = randn(B, S, d_model, seed=1).requires_grad_()  # requires_grad also keeps torch off its inference fast path
    pad = key_padding()
    expected = theirs(x, src_key_padding_mask=pad)
    assert_forward_and_input_grad_equal(ours(x, ~pad[:, None, None, :]), expected, (x,))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_encoder_stack_equals_nn_transformer_encoder(norm_first: bool) -> None:
    """Post-norm stacks end with the last layer's LayerNorm; pre-norm stacks add a final LayerNorm."""
    N = 3
    final = LayerNorm(d_model, eps=1e-5) if norm_first else nn.Identity()
    ours = randomize(Encoder([encoder_layer(norm_first) for _ in range(N)], final))
    theirs_norm = nn.LayerNorm(d_model, eps=1e-5, dtype=F64) if norm_first else None
    theirs = nn.TransformerEncoder(nn_encoder_layer(norm_first), N, theirs_norm, enable_nested_tensor=False).eval()
    for our_layer, their_layer in zip(ours.layers, theirs.layers, strict=True):
        copy_layer_weights(our_layer, their_layer)
    if isinstance(final, LayerNorm) and theirs.norm is not None:
        with torch.no_grad():
            theirs.norm.weight.copy_(final.a_2)
            theirs.norm.bias.copy_(final.b_2)
    x = randn(B, S, d_model, seed=1).requires_grad_()
    pad = key_padding()
    assert_forward_and_input_grad_equal(ours(x, ~pad[:, None, None, :]), theirs(x, src_key_padding_mask=pad), (x,))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_decoder_layer_equals_nn_transformer_decoder_layer(norm_first: bool) -> None:
    def mha() -> MultiHeadedAttention:
        return MultiHeadedAttention(h, d_model, dropout=0.0)

    ffn = PositionwiseFeedForward(d_model, d_ff, 0.0)
    ours = randomize(DecoderLayer(d_model, mha(), mha(), ffn, 0.0, norm_first, eps=1e-5))
    theirs = nn.TransformerDecoderLayer(d_model, h, d_ff, 0.0, batch_first=True, norm_first=norm_first, dtype=F64)
    copy_layer_weights(ours, theirs)
    x = randn(B, L, d_model, seed=1).requires_grad_()
    memory = randn(B, S, d_model, seed=2).requires_grad_()
    pad = key_padding()
    causal = causal_mask(L, L)  # (L, L), True = attend
    expected = theirs(x, memory, tgt_mask=~causal, memory_key_padding_mask=pad)
    got = ours(x, memory, ~pad[:, None, None, :], causal)
    assert_forward_and_input_grad_equal(got, expected, (x, memory))


def small_config(**overrides: object) -> TransformerConfig:
    base = TransformerConfig(src_vocab=11, tgt_vocab=13, N=2, d_model=d_model, d_ff=d_ff, h=h, dropout=0.0)
    return TransformerConfig(**{**vars(base), **overrides})


def small_model(seed: int = 0, **overrides: object) -> EncoderDecoder:
    torch.manual_seed(seed)
    return make_model(small_config(**overrides)).double().eval()


def source_and_target() -> tuple[Tensor, Tensor, Tensor]:
    """src (B, 7) with padding, its mask (B, 1, 1, 7), and tgt (B, 6)."""
    g = torch.Generator().manual_seed(5)
    src = torch.randint(1, 11, (B, 7), generator=g)
    src[1, 5:] = PAD
    src[2, 2:] = PAD
    return src, padding_mask(src, PAD), torch.randint(1, 13, (B, 6), generator=g)


DECODER_VARIANTS = {
    "post-norm": {},
    "pre-norm": {"norm_first": True},
    "gqa": {"h_kv": 2},
    "sdpa": {"attention": scaled_dot_product_attention},
}


@pytest.mark.parametrize("overrides", DECODER_VARIANTS.values(), ids=DECODER_VARIANTS.keys())
@pytest.mark.parametrize("prefill", [1, 3])
def test_incremental_decoding_with_cache_equals_full_recomputation(overrides: dict[str, object], prefill: int) -> None:
    model = small_model(**overrides)
    src, src_mask, tgt = source_and_target()
    full, cached = cached_vs_full(model, src, src_mask, tgt, prefill=prefill)
    assert full.shape == (B, tgt.size(1) - prefill + 1, 13)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)


def test_stepwise_decoding_equals_one_teacher_forced_pass() -> None:
    """Row t of a single causal pass over tgt is the prediction from the prefix tgt[:, :t + 1] (decoder causality)."""
    model = small_model()
    src, src_mask, tgt = source_and_target()
    with torch.no_grad():
        parallel = model.generator(model(src, tgt, src_mask, target_mask(tgt)))  # (B, T, tgt_vocab)
    torch.testing.assert_close(step_log_probs(model, src, src_mask, tgt), parallel, atol=ATOL, rtol=0)


def test_greedy_decoding_with_and_without_cache_agree() -> None:
    model = small_model()
    src, src_mask, _ = source_and_target()
    full = greedy_decode(model, src, src_mask, max_len=9, start_symbol=1)
    cached = greedy_decode(model, src, src_mask, max_len=9, start_symbol=1, use_cache=True)
    assert full.shape == (B, 9) and (full[:, 0] == 1).all()
    assert torch.equal(cached, full), f"greedy tokens differ:\nfull\n{full}\ncached\n{cached}"


def expected_parameter_count(cfg: TransformerConfig) -> int:
    """Parameters of Figure 1 counted from the paper's formulas (no GQA), independent of the module tree."""
    d, d_ff, N = cfg.d_model, cfg.d_ff, cfg.N
    attn = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O with biases
    ffn = d * d_ff + d_ff + d_ff * d + d  # W_1, b_1, W_2, b_2
    norm = 2 * d  # gain and bias
    encoder = N * (attn + ffn + 2 * norm) + (norm if cfg.norm_first else 0)
    decoder = N * (2 * attn + ffn + 3 * norm) + (norm if cfg.norm_first else 0)
    if cfg.share_embeddings:
        embeddings = cfg.src_vocab * d + cfg.tgt_vocab  # one matrix, plus the generator's bias
    else:
        embeddings = cfg.src_vocab * d + cfg.tgt_vocab * d + (d * cfg.tgt_vocab + cfg.tgt_vocab)
    return encoder + decoder + embeddings


@pytest.mark.parametrize(
    "cfg",
    [
        TransformerConfig(src_vocab=37000, tgt_vocab=37000, share_embeddings=True),
        TransformerConfig(src_vocab=32000, tgt_vocab=30000),
        TransformerConfig(src_vocab=1000, tgt_vocab=1000, norm_first=True),
    ],
    ids=["base-shared-37000", "base-32000-30000", "base-pre-norm"],
)
def test_base_model_shapes_and_parameter_count(cfg: TransformerConfig) -> None:
    with torch.device("meta"):  # shapes and counts only: nothing is allocated
        model = make_model(cfg)
        src = torch.zeros(2, 11, dtype=torch.long)
        tgt = torch.zeros(2, 9, dtype=torch.long)
        memory = model.encode(src, padding_mask(src, PAD))
        log_probs = model.generator(model.decode(memory, padding_mask(src, PAD), tgt, target_mask(tgt)))
    assert memory.shape == (2, 11, 512)
    assert log_probs.shape == (2, 9, cfg.tgt_vocab)
    attn = model.encoder.layers[0].self_attn
    assert (attn.h, attn.d_k, len(model.encoder.layers), len(model.decoder.layers)) == (8, 64, 6, 6)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameter_count(cfg)
    if cfg.share_embeddings:
        # Table 3 reports 65M for the base model with a shared 37000-token vocabulary (section 5.1)
        assert count == 63_119_496


def test_sinusoidal_encoding_rotates_with_relative_position() -> None:
    """Section 3.5: PE(pos + k) is a fixed linear function of PE(pos): each (sin, cos) pair rotates by k * omega_i."""
    max_len, d = 2000, 64
    pe = sinusoidal_encoding(max_len, d)  # (max_len, d)
    omega = 10000.0 ** (-torch.arange(0, d, 2, dtype=F64) / d)  # (d / 2,)
    sin, cos = pe[:, 0::2], pe[:, 1::2]  # (max_len, d / 2) each
    for k in (1, 7, 250):
        c, s = torch.cos(k * omega), torch.sin(k * omega)  # (d / 2,)
        rotated_sin = sin[:-k] * c + cos[:-k] * s  # sin(a + b) = sin a cos b + cos a sin b
        rotated_cos = cos[:-k] * c - sin[:-k] * s  # cos(a + b) = cos a cos b - sin a sin b
        torch.testing.assert_close(rotated_sin, sin[k:], atol=1e-12, rtol=0, msg=lambda m, k=k: f"sin, k={k}: {m}")
        torch.testing.assert_close(rotated_cos, cos[k:], atol=1e-12, rtol=0, msg=lambda m, k=k: f"cos, k={k}: {m}")
    position = small_model().position  # float64 model: adds the float64 table, rows start, start + 1, ...
    table = sinusoidal_encoding(100, d_model)
    zeros = torch.zeros(1, 100, d_model, dtype=F64)
    torch.testing.assert_close(position(zeros), table[None], atol=0, rtol=0)
    torch.testing.assert_close(position(zeros[:, :3], start=41), table[None, 41:44], atol=0, rtol=0)


@pytest.mark.parametrize("positional_encoding", [False, True], ids=["no-PE", "PE"])
def test_encoder_is_permutation_equivariant_exactly_without_positional_encoding(positional_encoding: bool) -> None:
    model = small_model(positional_encoding=positional_encoding)
    src, src_mask, _ = source_and_target()
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    with torch.no_grad():
        permuted = model.encode(src[:, perm], src_mask[..., perm])
        reference = model.encode(src, src_mask)[:, perm]
    close = torch.allclose(permuted, reference, atol=ATOL, rtol=0)
    assert close == (not positional_encoding), f"positional_encoding={positional_encoding}: equivariant={close}"
