"""Built-in adapters for third-party attention implementations (docs/design.md, "The target contract").

:data:`BUILTINS` names each built-in target's factory by its import path (one module per library:
:mod:`.pytorch`, :mod:`.huggingface`, :mod:`.jax`, :mod:`.cuda`; the varlen and decode entries in :mod:`.entries`,
:mod:`.jax` and :mod:`.cuda_entries`, the packing they share in :mod:`.packing`), so nothing is imported until a
target is asked for; a factory returns a :class:`Target` whose function takes the contract's tensors (BHLD, or
BLHD where the capabilities say so; the entries' own layouts) and keyword arguments. A missing library or device
raises :class:`TargetUnavailable` with a one-line reason. Other distributions add targets under the entry-point
group ``attncheck.targets``.

The adapters translate conventions (layout, mask polarity, argument names) and nothing else: where a library
departs from the contract, its capabilities declare it (and a comment says why), or the properties report it.
Observed on CPU with torch 2.13.0, transformers 5.24.0 and jax 0.10.2 (tests/test_adapters.py pins the
conventions and the declared divergences; the property suite finds the rest):

===================  =========================  ============================================================
target               fully masked rows (-inf)   divergences (declared: D; found by the properties: P)
===================  =========================  ============================================================
torch-mha            NaN (explicit softmax)     P: NaN dK, dV from fully masked rows (docs/bugs.md #2)
torch-mha-noweights  zeros (torch SDPA)
flex-attention       zeros (documented, D)      D: no backward on CPU; eager only (compile: ~17 s a shape)
hf-eager             NaN                        D: float32 softmax for float64 inputs; P: #2, and float16
                                                q . k overflows before the scaling (#10)
hf-sdpa              zeros (torch SDPA)         P: is_causal dropped when L == 1 (decoding shortcut, #4)
hf-gemma2-eager      NaN                        D: as hf-eager; features: softcap
hf-gpt-oss-eager     NaN (no sink: a -inf sink) D: additive masks only; features: sinks
jax                  bool: uniform, float: NaN  D: float32 softmax for float64; jitted half types fail on
                                                CPU (they raise, or abort the process); P: a finite lse
                                                (-0.7 x finfo.max + log S) on rows with no key
===================  =========================  ============================================================

Features beyond SDPA (docs/features.md): reference all four; flex-attention window, softcap, lse; jax window,
lse; hf-gemma2-eager softcap; hf-gpt-oss-eager sinks; on CUDA flash-attn window, softcap, lse (+inf on empty
rows), flashinfer-prefill and flashinfer-decode softcap, lse (base 2).

Varlen and decode entries (docs/design.md, "Beyond SDPA"; causal and window bottom-right within a sequence unless
said): the reference targets and flex-varlen (:mod:`.entries`); jax-varlen (CPU: a padded batch with per-sequence
lengths, causal and window top-left, window and lse); on CUDA flash-attn-varlen, flash-attn-kvcache and
flash-attn-kvcache-paged (window, softcap, lse +inf on empty rows; pages not a multiple of 256 re-laid),
flashinfer-varlen and flashinfer-decode-paged (softcap, lse base 2; the decode is not causal), xformers-varlen
(L <= S per sequence) and xformers-decode (contiguous cache), torch-varlen-attn (window, lse).

Every one lets NaN or inf in masked-out *values* reach the output (0 * NaN in P V), as torch SDPA does. That is
observed and reported (``masked_values="observed"``, the default), not a failure; only the reference declares
``masked_values="ignored"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# name -> (one-line description, "module:factory"); the factories are imported only when the target is resolved.
BUILTINS: dict[str, tuple[str, str]] = {
    "reference": (
        "attncheck's reference, equation (1) with -inf masking (reference/attention.py)",
        "attncheck.adapters.pytorch:reference_target",
    ),
    "torch-sdpa": (
        "torch.nn.functional.scaled_dot_product_attention, default dispatch",
        "attncheck.adapters.pytorch:torch_sdpa_target",
    ),
    "torch-sdpa-math": (
        "torch SDPA forced to the MATH backend",
        "attncheck.adapters.pytorch:torch_sdpa_math_target",
    ),
    "torch-sdpa-flash": (
        "torch SDPA forced to the FLASH_ATTENTION backend (CPU flash kernel; CUDA flash on GPU)",
        "attncheck.adapters.pytorch:torch_sdpa_flash_target",
    ),
    "torch-mha": (
        "torch.nn.MultiheadAttention called as mha(q, k, v) (need_weights=True: explicit softmax)",
        "attncheck.adapters.pytorch:torch_mha_target",
    ),
    "torch-mha-noweights": (
        "torch.nn.MultiheadAttention with need_weights=False, as nn.Transformer layers call it",
        "attncheck.adapters.pytorch:torch_mha_noweights_target",
    ),
    "flex-attention": (
        "torch.nn.attention.flex_attention, eager (bool masks and causal as a BlockMask)",
        "attncheck.adapters.pytorch:flex_attention_target",
    ),
    "hf-eager": (
        "transformers eager_attention_forward (Llama): matmul, additive mask, float32 softmax",
        "attncheck.adapters.huggingface:hf_eager_target",
    ),
    "hf-sdpa": (
        "transformers sdpa_attention_forward: torch SDPA behind HF's GQA and causal shortcuts",
        "attncheck.adapters.huggingface:hf_sdpa_target",
    ),
    "hf-gemma2-eager": (
        "transformers Gemma 2 eager_attention_forward: softcap (features: softcap)",
        "attncheck.adapters.huggingface:hf_gemma2_eager_target",
    ),
    "hf-gpt-oss-eager": (
        "transformers gpt-oss eager_attention_forward: learned sinks as a logit column (features: sinks)",
        "attncheck.adapters.huggingface:hf_gpt_oss_eager_target",
    ),
    "jax": (
        "jax.nn.dot_product_attention (XLA, jitted), through numpy on the host",
        "attncheck.adapters.jax:jax_target",
    ),
    "torch-sdpa-cuda": (
        "torch.nn.functional.scaled_dot_product_attention on CUDA, default dispatch",
        "attncheck.adapters.cuda:torch_sdpa_cuda_target",
    ),
    "flash-attn": (
        "FlashAttention flash_attn_func (CUDA; fp16/bf16; causal bottom-right since 2.1; no masks)",
        "attncheck.adapters.cuda:flash_attn_target",
    ),
    "flashinfer-prefill": (
        "FlashInfer single_prefill_with_kv_cache (CUDA; per batch element; bottom-right causal; softcap, lse)",
        "attncheck.adapters.cuda:flashinfer_prefill_target",
    ),
    "flashinfer-decode": (
        "FlashInfer single_decode_with_kv_cache (CUDA; one decode step per query row; softcap, lse)",
        "attncheck.adapters.cuda:flashinfer_decode_target",
    ),
    "xformers": (
        "xformers.ops.memory_efficient_attention (CUDA; additive tensor bias; LowerTriangularMask)",
        "attncheck.adapters.cuda:xformers_target",
    ),
    "reference-varlen": (
        "attncheck's packed varlen reference, one sequence at a time (reference/packed.py)",
        "attncheck.adapters.entries:reference_varlen_target",
    ),
    "flex-varlen": (
        "torch.nn.attention.flex_attention over packed sequences with a document mask (eager)",
        "attncheck.adapters.entries:flex_varlen_target",
    ),
    "reference-decode": (
        "attncheck's KV-cache decode reference, contiguous cache (reference/packed.py)",
        "attncheck.adapters.entries:reference_decode_target",
    ),
    "reference-decode-paged": (
        "attncheck's KV-cache decode reference, paged cache with a block table (reference/packed.py)",
        "attncheck.adapters.entries:reference_decode_paged_target",
    ),
    "jax-varlen": (
        "jax.nn.dot_product_attention on a padded batch with query_seq_lengths/key_value_seq_lengths (top-left)",
        "attncheck.adapters.jax:jax_varlen_target",
    ),
    "flash-attn-varlen": (
        "FlashAttention flash_attn_varlen_func (CUDA; cu_seqlens int32; bottom-right; window, softcap, lse +inf)",
        "attncheck.adapters.cuda_entries:flash_attn_varlen_target",
    ),
    "flash-attn-kvcache": (
        "FlashAttention flash_attn_with_kvcache, contiguous cache (CUDA; cache_seqlens; window, softcap, lse)",
        "attncheck.adapters.cuda_entries:flash_attn_kvcache_target",
    ),
    "flash-attn-kvcache-paged": (
        "FlashAttention flash_attn_with_kvcache with block_table (CUDA; pages re-laid to 256 entries if needed)",
        "attncheck.adapters.cuda_entries:flash_attn_kvcache_paged_target",
    ),
    "flashinfer-varlen": (
        "FlashInfer BatchPrefillWithRaggedKVCacheWrapper plan()/run() (CUDA; qo/kv_indptr; softcap, lse base 2)",
        "attncheck.adapters.cuda_entries:flashinfer_varlen_target",
    ),
    "flashinfer-decode-paged": (
        "FlashInfer BatchDecodeWithPagedKVCacheWrapper plan()/run() (CUDA; one request per query row; lse base 2)",
        "attncheck.adapters.cuda_entries:flashinfer_decode_paged_target",
    ),
    "xformers-varlen": (
        "xformers memory_efficient_attention with BlockDiagonalMask.from_seqlens (CUDA; bottom-right; L <= S)",
        "attncheck.adapters.cuda_entries:xformers_varlen_target",
    ),
    "xformers-decode": (
        "xformers memory_efficient_attention with BlockDiagonal[CausalWithOffset]PaddedKeysMask (CUDA)",
        "attncheck.adapters.cuda_entries:xformers_decode_target",
    ),
    "torch-varlen-attn": (
        "torch.nn.attention.varlen.varlen_attn (CUDA; PyTorch's FlashAttention 2; causal as window (-1, 0))",
        "attncheck.adapters.cuda_entries:torch_varlen_target",
    ),
}
DEFAULT_TARGETS = ("reference", "torch-sdpa")

HALF_AND_SINGLE = ("float32", "bfloat16", "float16")  # every dtype but float64


def as_4d(mask: Tensor | None) -> Tensor | None:
    """Prepend broadcast dimensions to a mask, for interfaces that take only 4-D masks."""
    if mask is None:
        return None
    return mask[(None,) * (4 - mask.dim())]  # (..., L, S) -> (1.., ..., L, S), 4-D


def require_cuda(library: str) -> None:
    import torch

    from attncheck.errors import TargetUnavailable

    if not torch.cuda.is_available():
        raise TargetUnavailable(f"{library} needs a CUDA device (torch.cuda.is_available() is False)")
