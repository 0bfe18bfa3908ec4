"""Built-in adapters for third-party attention implementations (shared/DESIGN.md, "The target contract").

Each factory below is registered with :func:`properties.targets.builtin` and returns a :class:`Target` whose
function takes the contract's tensors (BHLD, or BLHD where the capabilities say so) and keyword arguments.
Optional libraries are imported inside the factories only, so importing this module costs nothing; a missing
library or device raises :class:`TargetUnavailable` with a one-line reason.

The adapters translate conventions (layout, mask polarity, argument names) and nothing else: where a library
departs from the contract, its capabilities declare it (and a comment says why), or the properties report it.
Observed on CPU with torch 2.13.0, transformers 5.24.0 and jax 0.10.2 (tests/test_adapters.py pins the
conventions and the declared divergences; the property suite finds the rest):

===================  =========================  ============================================================
target               fully masked rows (-inf)   divergences (declared: D; found by the properties: P)
===================  =========================  ============================================================
torch-mha            NaN (explicit softmax)     P: NaN dK, dV from fully masked rows (BUGS.md #2)
torch-mha-noweights  zeros (torch SDPA)
flex-attention       zeros (documented, D)      D: no backward on CPU; eager only (compile: ~17 s a shape)
hf-eager             NaN                        D: float32 softmax for float64 inputs; P: #2, and float16
                                                q . k overflows before the scaling (#10)
hf-sdpa              zeros (torch SDPA)         P: is_causal dropped when L == 1 (decoding shortcut, #4)
jax                  bool: uniform, float: NaN  D: float32 softmax for float64; jitted half types fail on
                                                CPU (they raise, or abort the process)
===================  =========================  ============================================================

Every one lets NaN or inf in masked-out *values* reach the output (0 * NaN in P V), as torch SDPA does: declared
as a known failure of ``test_masked_keys_nonfinite_irrelevant``, like ``SDPA_KNOWN``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from properties.targets import SDPA_KNOWN, Alignment, Capabilities, Target, TargetUnavailable, builtin

HALF_AND_SINGLE = ("float32", "bfloat16", "float16")  # every dtype but float64


def _as_4d(mask: Tensor | None) -> Tensor | None:
    """Prepend broadcast dimensions to a mask, for interfaces that take only 4-D masks."""
    if mask is None:
        return None
    return mask[(None,) * (4 - mask.dim())]  # (..., L, S) -> (1.., ..., L, S), 4-D


def _require_cuda(library: str) -> None:
    if not torch.cuda.is_available():
        raise TargetUnavailable(f"{library} needs a CUDA device (torch.cuda.is_available() is False)")


def _masked_values_leak(library: str) -> dict[str, str]:
    """Known failure shared with torch SDPA: masked weights are exactly 0, but 0 * NaN = NaN in P V."""
    return {
        "test_masked_keys_nonfinite_irrelevant": f"{library}: NaN or inf in masked-out values reaches the output "
        "(0 * NaN in P V, as in torch SDPA; pytorch/pytorch#101967)"
    }


# ---------------------------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention

# The module projects its inputs: with identity projections x @ I, a NaN or inf in one entry of a key or value
# becomes NaN in every feature of that position (NaN * 0 = NaN), hence in every head; and 0 * NaN in P V leaks
# as in torch SDPA.
MHA_KNOWN = {
    "test_masked_keys_nonfinite_irrelevant": "nn.MultiheadAttention: the in-projection x @ W spreads a non-finite "
    "key or value entry to every head of that position, and 0 * NaN in P V leaks (pytorch/pytorch#101967)",
}


def _identity_mha(
    h: int, d_k: int, dtype: torch.dtype, device: torch.device, dropout_p: float
) -> torch.nn.MultiheadAttention:
    """nn.MultiheadAttention(h * d_k, h) with W_q = W_k = W_v = W_o = I and zero biases, so it is bare attention."""
    d_model = h * d_k
    mha = torch.nn.utils.skip_init(
        torch.nn.MultiheadAttention, d_model, h, dropout=dropout_p, batch_first=True, device=device, dtype=dtype
    )
    with torch.no_grad():
        eye = torch.eye(d_model, dtype=dtype, device=device)  # (d_model, d_model)
        mha.in_proj_weight.copy_(torch.cat([eye, eye, eye]))  # (3 d_model, d_model): packed W_q, W_k, W_v
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(eye)
        mha.out_proj.bias.zero_()
    mha.requires_grad_(False)  # gradients flow to the inputs only
    return mha.train(dropout_p > 0)  # eval unless dropout is asked for: MHA drops only in training mode


def _heads_to_model(x: Tensor) -> Tensor:
    """Concatenate the heads into MHA's model dimension (head h holds features h*d_k .. (h+1)*d_k - 1)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)  # (B, H, N, D) -> (B, N, H, D) -> (B, N, H*D)


def _mha_mask(
    attn_mask: Tensor | None, is_causal: bool, B: int, H: int, L: int, S: int, device: torch.device
) -> tuple[Tensor | None, bool]:
    """(attn_mask in MHA's convention, is_causal hint): bool True = NOT allowed, float additive; (L, S) or (B*H, L, S).

    MHA has no causal flag of its own: ``is_causal`` is a hint that ``attn_mask`` *is* the causal mask, so the
    top-left causal mask is built here; the hint is passed only when the mask is exactly that.
    """
    mask = attn_mask
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=device).tril()  # (L, S), top-left: query i sees j <= i
        if mask is None:
            mask = causal
        elif mask.dtype == torch.bool:
            mask = mask & causal  # broadcast to (..., L, S)
        else:
            mask = mask.masked_fill(~causal, float("-inf"))  # broadcast to (..., L, S)
    if mask is None:
        return None, False
    if mask.dim() <= 2:
        mask = mask.expand(L, S)  # (L, S), shared by every batch element and head
    else:
        mask = mask.expand(B, H, L, S).reshape(B * H, L, S)  # (B, H, L, S) -> (B*H, L, S), batch-major as MHA
    if mask.dtype == torch.bool:
        mask = ~mask  # MHA polarity: True = the key may NOT be attended to
    return mask, is_causal and attn_mask is None


def _mha_factory(name: str, need_weights: bool) -> Callable[[], Target]:
    def factory() -> Target:
        def mha(
            query: Tensor,
            key: Tensor,
            value: Tensor,
            attn_mask: Tensor | None = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
        ) -> Tensor:
            B, H, L, d_k = query.shape
            S = key.size(-2)
            module = _identity_mha(H, d_k, query.dtype, query.device, dropout_p)
            # Keep identity: self-attention (query is key is value) may take MHA's fast path in eval mode.
            x_q = _heads_to_model(query)  # (B, L, H*d_k)
            x_k = x_q if key is query else _heads_to_model(key)  # (B, S, H*d_k)
            x_v = x_k if value is key else _heads_to_model(value)  # (B, S, H*d_k)
            mask, hint = _mha_mask(attn_mask, is_causal, B, H, L, S, query.device)
            out, _ = module(x_q, x_k, x_v, attn_mask=mask, need_weights=need_weights, is_causal=hint)
            return out.view(B, L, H, d_k).transpose(1, 2)  # (B, L, H*d_k) -> (B, L, H, d_k) -> (B, H, L, d_k)

        caps = Capabilities(gqa=False, scale=False, dropout=True, value_dim=False, known_failures=MHA_KNOWN)
        path = "explicit softmax, need_weights=True" if need_weights else "torch SDPA inside, need_weights=False"
        return Target(
            name, mha, caps, f"torch {torch.__version__} nn.MultiheadAttention, identity projections ({path})"
        )

    return factory


# Self-attention calls (query is key is value) in eval mode, without autograd and with an even head count take
# MHA's fast path, torch._native_multi_head_attention; every other call runs F.multi_head_attention_forward.
builtin("torch-mha", "torch.nn.MultiheadAttention called as mha(q, k, v) (need_weights=True: explicit softmax)")(
    _mha_factory("torch-mha", need_weights=True)
)
builtin("torch-mha-noweights", "torch.nn.MultiheadAttention with need_weights=False, as nn.Transformer layers call it")(
    _mha_factory("torch-mha-noweights", need_weights=False)
)


# ---------------------------------------------------------------------------------------------------------------
# FlexAttention


@builtin("flex-attention", "torch.nn.attention.flex_attention, eager (bool masks and causal as a BlockMask)")
def _flex_attention() -> Target:
    try:
        from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention
    except ImportError:
        raise TargetUnavailable(f"torch {torch.__version__} has no torch.nn.attention.flex_attention") from None

    def flex(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        B, Hq, L, _ = query.shape
        S = key.size(-2)
        score_mod = None
        mask_mods = []
        if attn_mask is not None:
            mask = attn_mask.expand(B, Hq, L, S)  # (B, Hq, L, S), stride 0 over broadcast dimensions
            if mask.dtype == torch.bool:

                def admissible(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                    return mask[b, h, q_idx, kv_idx]

                mask_mods.append(admissible)
            else:

                def add_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                    return score + mask[b, h, q_idx, kv_idx]

                score_mod = add_bias
        if is_causal:

            def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return kv_idx <= q_idx  # top-left, the causal mask_mod of the FlexAttention docs

            mask_mods.append(causal)
        block_mask = create_block_mask(and_masks(*mask_mods), B, Hq, L, S, device=query.device) if mask_mods else None
        return flex_attention(
            query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa
        )

    # Eager (no torch.compile): it runs on CPU at tens to hundreds of ms per call; compiling costs ~17 s per new
    # shape on CPU, too much for property tests. CPU backward raises NotImplementedError, hence grad=False.
    caps = Capabilities(grad=False, masked_rows="zeros", known_failures=_masked_values_leak("flex_attention"))
    return Target("flex-attention", flex, caps, f"torch {torch.__version__} flex_attention, eager")


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face transformers attention functions


class _HFAttentionLayer(torch.nn.Module):
    """Stand-in for a transformers attention layer: the attributes its attention functions read."""

    def __init__(self, num_key_value_groups: int, training: bool) -> None:
        super().__init__()
        self.num_key_value_groups = num_key_value_groups  # Hq // Hkv: repeat_kv, or SDPA's enable_gqa
        self.is_causal = False  # the layer default sdpa_attention_forward uses when is_causal=None
        self.train(training)  # eager_attention_forward drops only when module.training


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TargetUnavailable("transformers is not installed: pip install 'attncheck[hf]'") from None
    return transformers


@builtin("hf-eager", "transformers eager_attention_forward (Llama): matmul, additive mask, float32 softmax")
def _hf_eager() -> Target:
    transformers = _import_transformers()
    from transformers.models.llama.modeling_llama import eager_attention_forward

    def hf_eager(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA comes from the layer's num_key_value_groups
    ) -> Tensor:
        layer = _HFAttentionLayer(query.size(1) // key.size(1), training=dropout_p > 0)
        scaling = scale if scale is not None else query.size(-1) ** -0.5  # LlamaAttention.scaling = head_dim**-0.5
        out, _ = eager_attention_forward(
            layer, query, key, value, attention_mask=_as_4d(attn_mask), scaling=scaling, dropout=dropout_p
        )
        return out.transpose(1, 2)  # (B, L, Hq, Ev) -> (B, Hq, L, Ev)

    # Masks are additive only (a bool mask would be *added*); no is_causal (callers build the mask).
    # float64 is not declared: the softmax runs in float32 (dtype=torch.float32), ~1e-7 from the float64 oracle.
    known = _masked_values_leak("eager_attention_forward")
    caps = Capabilities(
        masks=frozenset({"float"}), causal=None, dropout=True, dtypes=HALF_AND_SINGLE, known_failures=known
    )
    return Target("hf-eager", hf_eager, caps, f"transformers {transformers.__version__} eager_attention_forward")


@builtin("hf-sdpa", "transformers sdpa_attention_forward: torch SDPA behind HF's GQA and causal shortcuts")
def _hf_sdpa() -> Target:
    transformers = _import_transformers()
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def hf_sdpa(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA comes from the layer's num_key_value_groups
    ) -> Tensor:
        layer = _HFAttentionLayer(query.size(1) // key.size(1), training=dropout_p > 0)
        out, _ = sdpa_attention_forward(
            layer,
            query,
            key,
            value,
            attention_mask=_as_4d(attn_mask),
            dropout=dropout_p,
            scaling=scale,
            is_causal=is_causal,  # always explicit: None would mean the layer's default
        )
        return out.transpose(1, 2)  # (B, L, Hq, Ev) -> (B, Hq, L, Ev)

    # is_causal is top-left (SDPA's) except that sdpa_attention_forward drops it when L == 1 (the decoding step:
    # the one query then sees every key, as bottom-right would). Not declarable; the properties report it.
    caps = Capabilities(dropout=True, known_failures=SDPA_KNOWN)
    return Target("hf-sdpa", hf_sdpa, caps, f"transformers {transformers.__version__} sdpa_attention_forward")


# ---------------------------------------------------------------------------------------------------------------
# JAX


@builtin("jax", "jax.nn.dot_product_attention (XLA, jitted), through numpy on the host")
def _jax() -> Target:
    try:
        import jax
        import ml_dtypes
        import numpy as np
    except ImportError:
        raise TargetUnavailable("jax is not installed: pip install 'attncheck[jax]'") from None

    def to_numpy(t: Tensor) -> Any:
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits as ml_dtypes.bfloat16
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def from_numpy(a: Any, like: Tensor) -> Tensor:
        a = np.array(a)  # a writable host copy of the jax.Array
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(like.device)
        return torch.from_numpy(a).to(like.device)

    backend = jax.default_backend()
    attention = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "scale"))  # as JAX code runs it

    def jax_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: N query heads, K kv heads
    ) -> Tensor:
        mask = _as_4d(attn_mask)  # (., ., L, S): jax wants 4-D masks broadcastable to (B, N, T, S)
        bool_mask = to_numpy(mask) if mask is not None and mask.dtype == torch.bool else None
        bias = to_numpy(mask) if mask is not None and mask.dtype != torch.bool else None
        with jax.enable_x64(True):  # float64 stays float64 (jax would silently compute float32 otherwise)
            out = attention(
                to_numpy(query),
                to_numpy(key),
                to_numpy(value),
                bias=bias,
                mask=bool_mask,
                scale=scale,
                is_causal=is_causal,
            )  # (B, T, N, Ev)
        return from_numpy(out, query)

    # BTNH = BLHD. value must have key's shape (Ev == E). No dropout, no autograd through numpy.
    # float64 is not declared: jax computes the softmax in float32 for every input dtype (~1e-7 off in float64).
    # Half types are not declared on the CPU backend, where jitted XLA cannot run the dots the library asks for
    # (jaxlib 0.10.2): float16 always raises "The precision 'F16_F16_F32' is not supported by dot_general on CPU";
    # bfloat16 raises "Algorithm not supported by the ElementalIrEmitter: ALG_DOT_BF16_BF16_F32" on some shapes
    # (head dim 1) and aborts the whole process on others (XLA "Check failed: ... (reshape vs. bitcast)" in
    # ynn_emitter.cc, e.g. batch 1, head dim 1, L = S = 64). The library's eager fallback avoids them but costs
    # ~1 s per new shape. Bool-masked scores become -0.7 * finfo.max, not -inf: fully masked rows are uniform.
    dtypes = ("float32",) if backend == "cpu" else HALF_AND_SINGLE
    known = _masked_values_leak("jax.nn.dot_product_attention")
    caps = Capabilities(
        grad=False, value_dim=False, dtypes=dtypes, devices=("cpu",), layout="BLHD", known_failures=known
    )
    description = f"jax {jax.__version__} jax.jit(jax.nn.dot_product_attention) on the {backend} backend"
    return Target("jax", jax_attention, caps, description)


# ---------------------------------------------------------------------------------------------------------------
# CUDA only: torch SDPA on CUDA, FlashAttention, xformers


@builtin("torch-sdpa-cuda", "torch.nn.functional.scaled_dot_product_attention on CUDA, default dispatch")
def _torch_sdpa_cuda() -> Target:
    _require_cuda("torch-sdpa-cuda")
    fn = torch.nn.functional.scaled_dot_product_attention
    caps = Capabilities(dropout=True, devices=("cuda",))
    description = f"torch {torch.__version__} SDPA on {torch.cuda.get_device_name()}, default dispatch"
    return Target("torch-sdpa-cuda", fn, caps, description, device="cuda")


def _version(text: str) -> tuple[int, ...]:
    """'2.6.3' or '2.1.0.post1' -> (2, 6)."""
    return tuple(int(part) for part in text.split(".")[:2])


@builtin("flash-attn", "FlashAttention flash_attn_func (CUDA; fp16/bf16; causal bottom-right since 2.1; no masks)")
def _flash_attn() -> Target:
    try:
        import flash_attn
        from flash_attn import flash_attn_func
    except ImportError:
        raise TargetUnavailable("flash-attn is not installed: pip install flash-attn (CUDA only)") from None
    _require_cuda("flash-attn")

    def flash(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,  # GQA is native: Hq a multiple of Hkv
    ) -> Tensor:
        return flash_attn_func(query, key, value, dropout_p=dropout_p, softmax_scale=scale, causal=is_causal)

    # flash-attn 2.1 moved causal from top-left to bottom-right alignment; its README: "If the row of the mask
    # is all zero, the output will be zero".
    alignment: Alignment = "bottom-right" if _version(flash_attn.__version__) >= (2, 1) else "top-left"
    caps = Capabilities(
        masks=frozenset(),
        causal=alignment,
        dropout=True,
        value_dim=False,
        dtypes=("bfloat16", "float16"),
        devices=("cuda",),
        layout="BLHD",
        masked_rows="zeros",
    )
    description = f"flash-attn {flash_attn.__version__} flash_attn_func on {torch.cuda.get_device_name()}"
    return Target("flash-attn", flash, caps, description, device="cuda")


def _aligned_bias(bias: Tensor) -> Tensor:
    """The same values with a row stride padded to a multiple of 8, as xformers requires of tensor biases."""
    S = bias.size(-1)
    storage = bias.new_empty(*bias.shape[:-1], S + (-S % 8))  # (..., L, S'), S' = S rounded up to 8
    storage[..., :S] = bias
    return storage[..., :S]  # (..., L, S), row stride S'


@builtin("xformers", "xformers.ops.memory_efficient_attention (CUDA; additive tensor bias; LowerTriangularMask)")
def _xformers() -> Target:
    try:
        import xformers
        import xformers.ops as xops
    except ImportError:
        raise TargetUnavailable("xformers is not installed: pip install xformers (CUDA only)") from None
    _require_cuda("xformers")

    def xformers_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        B, L, Hq, E = query.shape
        S, Hkv, Ev = key.size(1), key.size(2), value.size(-1)
        G = Hq // Hkv  # query heads per kv head
        bias: Any = None
        if attn_mask is not None:
            bias = _aligned_bias(attn_mask.expand(B, Hq, L, S).to(query.dtype))  # (B, Hq, L, S)
        if G > 1:  # GQA in xformers' BMGHK layout: kv head g serves query heads g*G .. g*G + G - 1
            query = query.unflatten(2, (Hkv, G))  # (B, L, Hq, E) -> (B, L, Hkv, G, E)
            key = key.unsqueeze(3).expand(B, S, Hkv, G, E)  # (B, S, Hkv, E) -> (B, S, Hkv, G, E), stride 0
            value = value.unsqueeze(3).expand(B, S, Hkv, G, Ev)  # (B, S, Hkv, Ev) -> (B, S, Hkv, G, Ev), stride 0
            if bias is not None:
                bias = bias.unflatten(1, (Hkv, G))  # (B, Hq, L, S) -> (B, Hkv, G, L, S)
        if is_causal:  # top-left; LowerTriangularFromBottomRightMask would be bottom-right
            bias = xops.LowerTriangularMask() if bias is None else xops.LowerTriangularMask().add_bias(bias)
        out = xops.memory_efficient_attention(query, key, value, attn_bias=bias, p=dropout_p, scale=scale)
        return out.reshape(B, L, Hq, Ev)  # (B, L, Hkv, G, Ev) or (B, L, Hq, Ev) -> (B, L, Hq, Ev)

    # Tensor biases are additive (no bool masks). float64 is not supported by any xformers operator.
    caps = Capabilities(
        masks=frozenset({"float"}), dropout=True, dtypes=HALF_AND_SINGLE, devices=("cuda",), layout="BLHD"
    )
    description = f"xformers {xformers.__version__} memory_efficient_attention on {torch.cuda.get_device_name()}"
    return Target("xformers", xformers_attention, caps, description, device="cuda")
