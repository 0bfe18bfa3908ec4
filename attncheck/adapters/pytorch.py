"""Built-in targets of PyTorch itself: the reference, torch SDPA (default dispatch and forced backends),
nn.MultiheadAttention and FlexAttention. Conventions observed with torch 2.13.0 on CPU (tests/test_adapters.py)."""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor

from attncheck.errors import TargetUnavailable
from attncheck.properties.contract import FEATURES, Capabilities, Target
from attncheck.reference.attention import merge_masks


def reference_target() -> Target:
    from attncheck.reference.attention import scaled_dot_product_attention

    caps = Capabilities(dropout="inverted", masked_rows="zeros", features=frozenset(FEATURES), mask_with_causal=True)
    return Target(
        "reference", scaled_dot_product_attention, caps, "attncheck.reference.attention.scaled_dot_product_attention"
    )


def torch_sdpa_target() -> Target:
    fn = torch.nn.functional.scaled_dot_product_attention
    caps = Capabilities(dropout="inverted")
    return Target("torch-sdpa", fn, caps, f"torch {torch.__version__} SDPA, default dispatch")


def _sdpa_backend(backend_name: str, caps: Capabilities) -> Target:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def forced(query: Tensor, key: Tensor, value: Tensor, **kwargs: Any) -> Tensor:
        with sdpa_kernel(backend):  # forced: raises "No available kernel" instead of falling back
            return torch.nn.functional.scaled_dot_product_attention(query, key, value, **kwargs)

    name = f"torch-sdpa-{backend_name.lower().replace('_attention', '')}"
    return Target(name, forced, caps, f"torch {torch.__version__} SDPA forced to SDPBackend.{backend_name}")


def torch_sdpa_math_target() -> Target:
    return _sdpa_backend("MATH", Capabilities(dropout="inverted"))


def torch_sdpa_flash_target() -> Target:
    # The CPU flash kernel takes 4-D inputs with Ev == E, a contiguous last dimension and no dropout only
    # (otherwise it raises "No available kernel": a refusal, declared, not a wrong result).
    caps = Capabilities(value_dim=False, strided_inputs=("transposed", "expanded"))
    return _sdpa_backend("FLASH_ATTENTION", caps)


# ---------------------------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention

# The module projects its inputs: with identity projections x @ I, a NaN or inf in one entry of a key or value
# becomes NaN in every feature of that position (NaN * 0 = NaN), hence in every head; and 0 * NaN in P V reaches
# the output as in torch SDPA (observed, like every library's masked values).


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
    mask = merge_masks(attn_mask, is_causal, L, S, "top-left", device)  # (..., L, S)
    if mask is None:
        return None, False
    if mask.dim() <= 2:
        mask = mask.expand(L, S)  # (L, S), shared by every batch element and head
    else:
        mask = mask.expand(B, H, L, S).reshape(B * H, L, S)  # (B, H, L, S) -> (B*H, L, S), batch-major as MHA
    if mask.dtype == torch.bool:
        mask = ~mask  # MHA polarity: True = the key may NOT be attended to
    return mask, is_causal and attn_mask is None


def _mha(name: str, need_weights: bool) -> Target:
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

    caps = Capabilities(gqa=False, scale=False, dropout="inverted", value_dim=False)
    path = "explicit softmax, need_weights=True" if need_weights else "torch SDPA inside, need_weights=False"
    return Target(name, mha, caps, f"torch {torch.__version__} nn.MultiheadAttention, identity projections ({path})")


# Self-attention calls (query is key is value) in eval mode, without autograd and with an even head count take
# MHA's fast path, torch._native_multi_head_attention; every other call runs F.multi_head_attention_forward.
def torch_mha_target() -> Target:
    return _mha("torch-mha", need_weights=True)


def torch_mha_noweights_target() -> Target:
    return _mha("torch-mha-noweights", need_weights=False)


# ---------------------------------------------------------------------------------------------------------------
# FlexAttention


def import_flex_attention() -> Any:
    """What the FlexAttention adapters use of torch.nn.attention.flex_attention (AuxRequest, and_masks,
    create_block_mask, flex_attention), or TargetUnavailable where this torch lacks any of it."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest, and_masks, create_block_mask, flex_attention
    except ImportError:
        raise TargetUnavailable(f"torch {torch.__version__} has no torch.nn.attention.flex_attention") from None
    return types.SimpleNamespace(
        AuxRequest=AuxRequest, and_masks=and_masks, create_block_mask=create_block_mask, flex_attention=flex_attention
    )


def softcap_mod(softcap: float) -> Any:
    """The score_mod c * tanh(score / c): the tanh soft-cap of the FlexAttention docs (flex hands a score_mod the
    scaled q . k)."""

    def cap(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return softcap * torch.tanh(score / softcap)

    return cap


def flex_call(
    flex: Any,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    score_mod: Any,
    block_mask: Any,
    scale: float | None,
    enable_gqa: bool,
    return_lse: bool,
) -> tuple[Tensor, Tensor | None]:
    """One eager flex_attention call on BHLD tensors -> (out (B, Hq, L, Ev), lse (B, Hq, L) in natural log, through
    return_aux=AuxRequest(lse=True), or None when not asked for)."""
    result = flex.flex_attention(
        q,
        k,
        v,
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=enable_gqa,
        return_aux=flex.AuxRequest(lse=True) if return_lse else None,
    )
    if return_lse:
        out, aux = result
        return out, aux.lse
    return result, None


def flex_attention_target() -> Target:
    flex_module = import_flex_attention()

    def flex(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        window: tuple[int, int] | None = None,
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> Any:
        B, Hq, L, _ = query.shape
        S = key.size(-2)
        score_mods = []
        mask_mods = []
        if softcap is not None:  # first: flex hands score_mod the scaled q . k, and the cap precedes the bias
            score_mods.append(softcap_mod(softcap))
        if attn_mask is not None:
            mask = attn_mask.expand(B, Hq, L, S)  # (B, Hq, L, S), stride 0 over broadcast dimensions
            if mask.dtype == torch.bool:

                def admissible(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                    return mask[b, h, q_idx, kv_idx]

                mask_mods.append(admissible)
            else:

                def add_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                    return score + mask[b, h, q_idx, kv_idx]

                score_mods.append(add_bias)
        if is_causal:

            def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return kv_idx <= q_idx  # top-left, the causal mask_mod of the FlexAttention docs

            mask_mods.append(causal)
        if window is not None:  # the sliding-window mask_mod of the FlexAttention docs, with both bounds
            left, right = (L + S if side < 0 else side for side in window)  # -1: no key is L + S away

            def band(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)  # top-left, as causal above

            mask_mods.append(band)

        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            for mod in score_mods:
                score = mod(score, b, h, q_idx, kv_idx)
            return score

        block_mask = (
            flex_module.create_block_mask(flex_module.and_masks(*mask_mods), B, Hq, L, S, device=query.device)
            if mask_mods
            else None
        )
        mod = score_mod if score_mods else None
        out, lse = flex_call(flex_module, query, key, value, mod, block_mask, scale, enable_gqa, return_lse)
        return out if lse is None else (out, lse)  # (B, Hq, L, Ev) [, (B, Hq, L), natural log]

    # Eager (no torch.compile): it runs on CPU at tens to hundreds of ms per call; compiling costs ~17 s per new
    # shape on CPU, too much for property tests. CPU backward raises NotImplementedError, hence grad=False.
    # Features (torch 2.13.0): window as a mask_mod, softcap as a score_mod, lse through return_aux=AuxRequest(lse=
    # True) (natural log, -inf on rows with no key). No sinks: a score_mod cannot add a key to the denominator.
    caps = Capabilities(grad=False, masked_rows="zeros", features=frozenset({"window", "softcap", "lse"}))
    return Target("flex-attention", flex, caps, f"torch {torch.__version__} flex_attention, eager")
