"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), Figure 1.

The code follows the Annotated Transformer and the paper's notation (``d_model``, ``d_k``, ``d_v``, ``d_ff``,
``h``, ``N``). Decisions where the paper is silent or where we differ from the Annotated Transformer:

* Sublayers are post-norm, ``LayerNorm(x + Sublayer(x))`` as in section 3.1 (the Annotated Transformer is
  pre-norm); ``norm_first=True`` gives pre-norm, ``x + Sublayer(LayerNorm(x))``, and then, as in
  ``torch.nn.TransformerEncoder``, a final LayerNorm closes each stack (post-norm stacks have none).
* :class:`LayerNorm` has torch semantics (biased variance, eps inside the square root), so a layer with
  ``layer_norm_eps=1e-5`` equals ``torch.nn.TransformerEncoderLayer``. The Annotated Transformer divides by the
  unbiased standard deviation plus eps instead. The default eps stays 1e-6, the Annotated Transformer's.
* Masks are boolean, True = may attend, broadcastable to (B, h, L, S): :func:`padding_mask` gives (B, 1, 1, S),
  :func:`target_mask` (B, 1, L, L). Attention dropout (on the weights) is the Annotated Transformer's; the paper
  only names residual and embedding dropout (section 5.4).
* Attention is pluggable: ``TransformerConfig.attention`` takes any function in the
  ``torch.nn.functional.scaled_dot_product_attention`` convention. It is called with a boolean ``attn_mask``
  (never with ``is_causal``), query (B, h, L, d_k), key and value (B, h_kv, S, d_k), and ``enable_gqa=True``
  only when h_kv < h. The default is the reference :func:`attncheck.reference.attention.attention`, which also records
  the weights in ``MultiHeadedAttention.attn``.
* Incremental decoding: each decoder self-attention keeps the keys and values of the positions decoded so far
  in a :class:`KVCache`; ``EncoderDecoder.decode(..., cache=model.init_cache())`` then takes only the new
  target tokens and offsets their positional encodings by the number of cached positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attncheck.reference.attention import attention, expand_kv_heads, subsequent_mask

AttentionFn = Callable[..., Tensor]


@dataclass
class TransformerConfig:
    """Hyperparameters; the defaults are the base model of Table 3."""

    src_vocab: int  # source vocabulary size
    tgt_vocab: int  # target vocabulary size
    N: int = 6  # identical layers in each of the encoder and decoder stacks (section 3.1)
    d_model: int = 512  # width of embeddings and of every sublayer output (section 3.1)
    d_ff: int = 2048  # inner width of the position-wise feed-forward network (section 3.3)
    h: int = 8  # attention heads; d_k = d_v = d_model / h (section 3.2.2)
    h_kv: int | None = None  # key/value heads for grouped-query attention; None = h (the paper)
    dropout: float = 0.1  # P_drop (section 5.4), also applied to the attention weights
    max_len: int = 5000  # longest sequence with a positional encoding
    positional_encoding: bool = True  # add sinusoidal encodings (section 3.5); False: a permutation-equivariant encoder
    norm_first: bool = False  # False: post-norm LayerNorm(x + Sublayer(x)) (section 3.1); True: pre-norm
    layer_norm_eps: float = 1e-6  # the Annotated Transformer's; torch.nn.LayerNorm's default is 1e-5
    share_embeddings: bool = False  # one matrix for both embeddings and the pre-softmax linear (section 3.4)
    attention: AttentionFn | None = None  # SDPA-convention attention function; None = reference attention()


@dataclass
class KVCache:
    """Keys and values of the target positions decoded so far, for one decoder self-attention (section 3.2.3)."""

    key: Tensor | None = None  # (B, h_kv, T, d_k)
    value: Tensor | None = None  # (B, h_kv, T, d_v)

    def __len__(self) -> int:
        """T, the number of cached positions."""
        return 0 if self.key is None else self.key.size(2)

    def append(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' key (B, h_kv, S, d_k) and value (B, h_kv, S, d_v); return all T + S of them."""
        if self.key is not None and self.value is not None:
            key = torch.cat([self.key, key], dim=2)  # (B, h_kv, T, d_k) and (B, h_kv, S, d_k) -> (B, h_kv, T + S, d_k)
            value = torch.cat([self.value, value], dim=2)  # (B, h_kv, T, d_v) and ... -> (B, h_kv, T + S, d_v)
        self.key, self.value = key, value
        return key, value


class MultiHeadedAttention(nn.Module):
    """Section 3.2.2: MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i)."""

    def __init__(
        self,
        h: int,
        d_model: int,
        dropout: float = 0.1,
        h_kv: int | None = None,
        attention_fn: AttentionFn | None = None,
    ) -> None:
        super().__init__()
        h_kv = h if h_kv is None else h_kv
        if d_model % h or h % h_kv:
            raise ValueError(f"need h | d_model and h_kv | h, got d_model={d_model}, h={h}, h_kv={h_kv}")
        self.h, self.h_kv = h, h_kv
        self.d_k = d_model // h  # d_k = d_v = d_model / h
        self.w_q = nn.Linear(d_model, h * self.d_k)  # W^Q_1, ..., W^Q_h side by side
        self.w_k = nn.Linear(d_model, h_kv * self.d_k)  # W^K of the h_kv key heads
        self.w_v = nn.Linear(d_model, h_kv * self.d_k)  # W^V of the h_kv value heads
        self.w_o = nn.Linear(h * self.d_k, d_model)  # W^O
        self.dropout = dropout
        self.attention_fn = attention_fn
        self.attn: Tensor | None = None  # weights (B, h, L, S) of the last call, reference attention only

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """query (B, L, d_model), key and value (B, S, d_model), mask broadcastable to (B, h, L, S) -> (B, L, d_model).

        With a ``cache``, the keys and values of this call are appended to it and the queries attend to all
        cached positions, so ``mask`` must then broadcast to (B, h, L, T + S).
        """
        B = query.size(0)
        q = self.w_q(query).view(B, -1, self.h, self.d_k).transpose(1, 2)  # (B, L, d_model) -> (B, h, L, d_k)
        k = self.w_k(key).view(B, -1, self.h_kv, self.d_k).transpose(1, 2)  # (B, S, d_model) -> (B, h_kv, S, d_k)
        v = self.w_v(value).view(B, -1, self.h_kv, self.d_k).transpose(1, 2)  # (B, S, d_model) -> (B, h_kv, S, d_v)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, h_kv, S, d_k) -> (B, h_kv, T + S, d_k)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention_fn is None:
            k, v = expand_kv_heads(k, v, self.h)  # (B, h_kv, S, d_k) -> (B, h, S, d_k): head i reads i // (h / h_kv)
            x, self.attn = attention(q, k, v, mask, dropout_p=dropout_p)  # (B, h, L, d_v), (B, h, L, S)
        else:
            gqa = {"enable_gqa": True} if self.h_kv != self.h else {}
            x = self.attention_fn(q, k, v, attn_mask=mask, dropout_p=dropout_p, **gqa)  # (B, h, L, d_v)
        x = x.transpose(1, 2).reshape(B, -1, self.h * self.d_k)  # (B, h, L, d_v) -> (B, L, h, d_v) -> (B, L, h * d_v)
        return self.w_o(x)  # (B, L, d_model)


class PositionwiseFeedForward(nn.Module):
    """Equation (2): FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, with dropout on the hidden layer."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.w_1(x).relu()))  # (B, L, d_model) -> (B, L, d_ff) -> (B, L, d_model)


class LayerNorm(nn.Module):
    """Layer normalization (Ba et al., 2016; section 3.1): a_2 * (x - mean) / sqrt(var + eps) + b_2, var biased."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))  # gain
        self.b_2 = nn.Parameter(torch.zeros(features))  # bias
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)  # (..., d_model) -> (..., 1)
        var = x.var(-1, correction=0, keepdim=True)  # (..., d_model) -> (..., 1)
        return self.a_2 * (x - mean) / torch.sqrt(var + self.eps) + self.b_2


class SublayerConnection(nn.Module):
    """Section 3.1: post-norm LayerNorm(x + Dropout(Sublayer(x))), or pre-norm x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(self, size: int, dropout: float, norm_first: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = LayerNorm(size, eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Section 3.1, Figure 1 (left): self-attention, then a position-wise feed-forward network."""

    def __init__(
        self,
        size: int,
        self_attn: MultiHeadedAttention,
        feed_forward: PositionwiseFeedForward,
        dropout: float,
        norm_first: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.sublayer = nn.ModuleList([SublayerConnection(size, dropout, norm_first, eps) for _ in range(2)])

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, S, d_model), mask broadcastable to (B, h, S, S) -> (B, S, d_model)."""
        x = self.sublayer[0](x, lambda x: self.self_attn(x, x, x, mask))
        return self.sublayer[1](x, self.feed_forward)


class Encoder(nn.Module):
    """Section 3.1: a stack of N identical layers, then ``norm`` (a LayerNorm for pre-norm, else the identity)."""

    def __init__(self, layers: list[EncoderLayer], norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


# The decoder side is written out beside the encoder's rather than sharing a stack or layer base with it: each
# reads as Section 3.1 and Figure 1 describe it (the Annotated Transformer's layout), at the cost of the repeated
# __init__ and stack loop.
class DecoderLayer(nn.Module):
    """Section 3.1, Figure 1 (right): masked self-attention, encoder-decoder attention, feed-forward network."""

    def __init__(
        self,
        size: int,
        self_attn: MultiHeadedAttention,
        src_attn: MultiHeadedAttention,
        feed_forward: PositionwiseFeedForward,
        dropout: float,
        norm_first: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.src_attn = src_attn
        self.feed_forward = feed_forward
        self.sublayer = nn.ModuleList([SublayerConnection(size, dropout, norm_first, eps) for _ in range(3)])

    def forward(
        self, x: Tensor, memory: Tensor, src_mask: Tensor | None, tgt_mask: Tensor | None, cache: KVCache | None = None
    ) -> Tensor:
        """x (B, L, d_model), memory (B, S, d_model) -> (B, L, d_model); ``cache`` serves the self-attention."""
        x = self.sublayer[0](x, lambda x: self.self_attn(x, x, x, tgt_mask, cache))
        x = self.sublayer[1](x, lambda x: self.src_attn(x, memory, memory, src_mask))
        return self.sublayer[2](x, self.feed_forward)


class Decoder(nn.Module):
    """Section 3.1: a stack of N identical layers, then ``norm`` (a LayerNorm for pre-norm, else the identity)."""

    def __init__(self, layers: list[DecoderLayer], norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
        cache: list[KVCache] | None = None,
    ) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, src_mask, tgt_mask, None if cache is None else cache[i])
        return self.norm(x)


class Embeddings(nn.Module):
    """Section 3.4: learned embeddings multiplied by sqrt(d_model)."""

    def __init__(self, d_model: int, vocab: int) -> None:
        super().__init__()
        self.lut = nn.Embedding(vocab, d_model)
        self.d_model = d_model

    def forward(self, x: Tensor) -> Tensor:
        return self.lut(x) * math.sqrt(self.d_model)  # (B, L) -> (B, L, d_model)


def sinusoidal_encoding(max_len: int, d_model: int) -> Tensor:
    """Section 3.5, (max_len, d_model) float64: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(..)."""
    position = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len,) -> (max_len, 1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * -(math.log(10000.0) / d_model))
    angle = position * div_term  # (max_len, 1) * (ceil(d_model / 2),) -> (max_len, ceil(d_model / 2))
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even columns 2i
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # odd columns 2i + 1 (one fewer when d_model is odd)
    return pe  # (max_len, d_model)


class PositionalEncoding(nn.Module):
    """Section 3.5: add sinusoidal encodings to the embeddings (if ``enabled``), then dropout (section 5.4).

    The table is built in float64 and rounded to the activations' dtype when added, so a model built in float32
    and then converted with ``model.double()`` adds exact float64 encodings (``.float()`` or ``.half()`` would
    round the table itself).
    """

    pe: Tensor

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000, enabled: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.enabled = enabled
        pe = sinusoidal_encoding(max_len, d_model)[None]  # (max_len, d_model) -> (1, max_len, d_model)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """x (B, L, d_model) holds positions start, ..., start + L - 1."""
        if self.enabled:
            x = x + self.pe[:, start : start + x.size(1)].to(x.dtype)  # (B, L, d_model) + (1, L, d_model)
        return self.dropout(x)


class Generator(nn.Module):
    """Section 3.4: the pre-softmax linear transformation and the softmax, as log-probabilities."""

    def __init__(self, d_model: int, vocab: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.proj(x), dim=-1)  # (B, L, d_model) -> (B, L, vocab)


class EncoderDecoder(nn.Module):
    """Figure 1: embeddings and positional encodings, the encoder and decoder stacks, and the generator."""

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        src_embed: Embeddings,
        tgt_embed: Embeddings,
        position: PositionalEncoding,
        generator: Generator,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.src_embed = src_embed
        self.tgt_embed = tgt_embed
        self.position = position
        self.generator = generator

    def encode(self, src: Tensor, src_mask: Tensor | None) -> Tensor:
        """src (B, S) tokens, src_mask broadcastable to (B, h, S, S) -> memory (B, S, d_model)."""
        return self.encoder(self.position(self.src_embed(src)), src_mask)

    def decode(
        self,
        memory: Tensor,
        src_mask: Tensor | None,
        tgt: Tensor,
        tgt_mask: Tensor | None,
        cache: list[KVCache] | None = None,
    ) -> Tensor:
        """memory (B, S, d_model), tgt (B, L) tokens -> (B, L, d_model); ``self.generator`` turns it into log-probs.

        Without ``cache``, tgt holds positions 0..L-1 and tgt_mask broadcasts to (B, h, L, L) (:func:`target_mask`).
        With ``cache`` (from :meth:`init_cache`, holding T positions), tgt holds the new positions T..T+L-1 only,
        tgt_mask broadcasts to (B, h, L, T + L) (None is right for L = 1), and the cache grows by L.
        """
        start = len(cache[0]) if cache else 0
        return self.decoder(self.position(self.tgt_embed(tgt), start), memory, src_mask, tgt_mask, cache)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None, tgt_mask: Tensor | None) -> Tensor:
        """src (B, S), tgt (B, L) -> decoder output (B, L, d_model) (teacher forcing)."""
        return self.decode(self.encode(src, src_mask), src_mask, tgt, tgt_mask)

    def init_cache(self) -> list[KVCache]:
        """An empty key/value cache, one :class:`KVCache` per decoder layer."""
        return [KVCache() for _ in self.decoder.layers]


def padding_mask(tokens: Tensor, pad: int) -> Tensor:
    """Keys that are not padding: tokens (B, S) -> bool (B, 1, 1, S), broadcastable to (B, h, L, S)."""
    return (tokens != pad)[:, None, None, :]  # (B, S) -> (B, 1, 1, S)


def target_mask(tgt: Tensor, pad: int | None = None) -> Tensor:
    """Decoder self-attention mask (section 3.2.3): no subsequent positions, no padding; bool (B or 1, 1, L, L)."""
    mask = subsequent_mask(tgt.size(1), tgt.device)[None]  # (1, L, L) -> (1, 1, L, L)
    if pad is not None:
        mask = mask & padding_mask(tgt, pad)  # (1, 1, L, L) & (B, 1, 1, L) -> (B, 1, L, L)
    return mask


def make_model(cfg: TransformerConfig) -> EncoderDecoder:
    """Build the Transformer of Figure 1 from ``cfg``, with Xavier-uniform weight matrices (Annotated Transformer)."""

    def mha() -> MultiHeadedAttention:
        return MultiHeadedAttention(cfg.h, cfg.d_model, cfg.dropout, cfg.h_kv, cfg.attention)

    def ffn() -> PositionwiseFeedForward:
        return PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)

    def final_norm() -> nn.Module:
        return LayerNorm(cfg.d_model, cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()

    d, p, pre, eps = cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps
    model = EncoderDecoder(
        Encoder([EncoderLayer(d, mha(), ffn(), p, pre, eps) for _ in range(cfg.N)], final_norm()),
        Decoder([DecoderLayer(d, mha(), mha(), ffn(), p, pre, eps) for _ in range(cfg.N)], final_norm()),
        Embeddings(d, cfg.src_vocab),
        Embeddings(d, cfg.tgt_vocab),
        PositionalEncoding(d, p, cfg.max_len, cfg.positional_encoding),
        Generator(d, cfg.tgt_vocab),
    )
    if cfg.share_embeddings:
        if cfg.src_vocab != cfg.tgt_vocab:
            raise ValueError(f"share_embeddings needs src_vocab == tgt_vocab, got {cfg.src_vocab} != {cfg.tgt_vocab}")
        model.tgt_embed.lut.weight = model.src_embed.lut.weight
        model.generator.proj.weight = model.src_embed.lut.weight
    for param in model.parameters():
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)
    return model
