"""The third-party built-in adapters: each is unavailable with a one-line reason, or agrees with the float64 oracle.

Also pins the divergences the adapters declare or document (attncheck/adapters.py), so a library upgrade that
changes them fails here and the declarations get revisited instead of silently going stale.
"""

from __future__ import annotations

import math
import subprocess
import sys
import types
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.adapters import BUILTINS, cuda
from attncheck.errors import TargetError
from attncheck.properties.contract import Capabilities, Target
from attncheck.properties.features import FeatureProblem
from attncheck.properties.oracle import lse_budget, oracle, output_budget
from attncheck.properties.problems import Problem
from attncheck.reference.attention import scaled_dot_product_attention, window_mask
from attncheck.targets import availability, resolve
from tests.test_meta import run_property

ADAPTERS = (
    *("torch-mha", "torch-mha-noweights", "flex-attention", "hf-eager", "hf-sdpa"),
    *("hf-gemma2-eager", "hf-gpt-oss-eager", "jax"),
)
CUDA_ADAPTERS = ("torch-sdpa-cuda", "flash-attn", "flashinfer-prefill", "flashinfer-decode", "xformers")
OPTIONAL = {
    "hf-eager": "transformers",
    "hf-sdpa": "transformers",
    "hf-gemma2-eager": "transformers",
    "hf-gpt-oss-eager": "transformers",
    "jax": "jax",
    "flash-attn": "flash_attn",
    "flashinfer-prefill": "flashinfer",
    "flashinfer-decode": "flashinfer",
    "xformers": "xformers",
}  # target -> module its library installs

PROBLEMS = (  # each adapter runs those its capabilities support (at least 3; see test_adapter_matches_oracle)
    Problem(B=2, Hq=3, Hkv=3, L=5, S=7, E=8, Ev=8),
    Problem(B=2, Hq=4, Hkv=2, L=7, S=5, E=8, Ev=8, is_causal=True, scale=0.125),
    Problem(B=2, Hq=2, Hkv=2, L=7, S=5, E=8, Ev=8, is_causal=True, layout="transposed"),
    Problem(B=1, Hq=2, Hkv=2, L=4, S=9, E=8, Ev=8, dtype="float64", is_causal=True),
    Problem(B=2, Hq=2, Hkv=2, L=5, S=7, E=8, Ev=8, dtype="float64", mask="bool", mask_shape="B11S"),
    Problem(B=2, Hq=4, Hkv=2, L=5, S=7, E=8, Ev=8, mask="float", mask_shape="BHLS", layout="transposed", seed=1),
    Problem(B=1, Hq=2, Hkv=2, L=4, S=4, E=8, Ev=8, mask="float", mask_shape="LS", layout="sliced"),
    Problem(B=2, Hq=6, Hkv=2, L=3, S=8, E=8, Ev=5, dtype="float64", mask="float", mask_shape="B1LS", scale=2.0),
    Problem(B=2, Hq=2, Hkv=1, L=1, S=6, E=4, Ev=4, mask="bool", mask_shape="1HLS", seed=2),
    Problem(B=2, Hq=2, Hkv=2, L=5, S=7, E=16, Ev=16, dtype="bfloat16", mask="float", mask_shape="B1LS"),
    Problem(B=2, Hq=2, Hkv=2, L=6, S=6, E=16, Ev=16, dtype="float16", layout="expanded"),
    Problem(B=1, Hq=4, Hkv=1, L=5, S=12, E=16, Ev=16, dtype="bfloat16", is_causal=True),
    Problem(B=2, Hq=4, Hkv=2, L=9, S=4, E=32, Ev=32, dtype="float16", is_causal=True, scale=0.25, seed=3),
)


# xformers requires stride(-1) == 1 of its inputs and refuses the rest (a contract deviation that the property
# layout_invariance reports); flash_attn_func makes them contiguous itself.
REFUSED_LAYOUTS = {"xformers": ("sliced",)}


def supports(caps: Capabilities, p: Problem) -> bool:
    """Whether the problem only uses what the capabilities declare."""
    return (
        p.dtype in caps.dtypes
        and (p.mask == "none" or p.mask in caps.masks)
        and (not p.is_causal or caps.causal is not None)
        and (not p.gqa or caps.gqa)
        and (p.scale is None or caps.scale)
        and (p.E == p.Ev or caps.value_dim)
    )


def available(name: str) -> Target:
    """The built-in target, or a skip when its optional library or CUDA is missing here."""
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    if name in CUDA_ADAPTERS and not torch.cuda.is_available():
        pytest.skip(f"{name}: no CUDA device")
    return resolve(name)


def assert_agrees_with_oracle(target: Target, p: Problem) -> None:
    """Output inside the budget of the float64 oracle on every row that has an admissible key."""
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask)).cpu()
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    mask = None if mask is None else mask.cpu()
    alignment = target.caps.alignment
    kwargs = {**p.call_kwargs(mask), "alignment": alignment}
    ref = oracle(q, k, v, **kwargs)  # (B, Hq, L, Ev)
    tol = output_budget(q, k, v, ref, **kwargs)
    rows = p.admissible(mask, alignment).any(-1)  # (B, Hq, L): rows with no admissible key are a convention
    err = (out.double() - ref).abs()[rows]  # (rows, Ev)
    worst = float(err.max()) if err.numel() else 0.0
    assert worst <= tol.value, (
        f"{target.name} disagrees with the float64 oracle on {p.describe()}: "
        f"max error {worst:.3g} > budget {tol.explain()}"
    )


def test_adapters_are_registered() -> None:
    assert set(ADAPTERS + CUDA_ADAPTERS) <= set(BUILTINS), sorted(set(ADAPTERS + CUDA_ADAPTERS) - set(BUILTINS))


def test_unavailable_targets_give_one_line_reasons() -> None:
    rows = {name: reason for name, _, reason in availability()}
    for name, reason in rows.items():
        assert reason is None or (reason.strip() and "\n" not in reason), f"{name}: reason {reason!r}"
    if not torch.cuda.is_available():
        assert all(rows[name] for name in CUDA_ADAPTERS), {name: rows[name] for name in CUDA_ADAPTERS}


def test_importing_adapters_imports_no_optional_library() -> None:
    optional = sorted(OPTIONAL.values())
    code = (
        f"import sys, attncheck.targets, attncheck.adapters; print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing the targets and the adapter registry imported {out.strip()}"


@pytest.mark.parametrize("name", ADAPTERS + CUDA_ADAPTERS)
def test_adapter_matches_oracle(name: str) -> None:
    target = available(name)
    supported = [p for p in PROBLEMS if supports(target.caps, p) and p.layout not in REFUSED_LAYOUTS.get(name, ())]
    assert len(supported) >= 3, f"{name}: only {len(supported)} fixed problems fit {target.caps.summary()}"
    for p in supported:
        assert_agrees_with_oracle(target, p)


# Rows with no admissible key (-inf float bias or all-False bool mask), as observed with torch 2.13.0,
# transformers 5.24.0 and jax 0.10.2; the table in attncheck/adapters.py says the same.
MASKED_ROWS = {
    ("torch-mha", "bool"): "nan",
    ("torch-mha-noweights", "bool"): "zeros",
    ("flex-attention", "bool"): "zeros",
    ("flex-attention", "float"): "zeros",
    ("hf-eager", "float"): "nan",
    ("hf-sdpa", "bool"): "zeros",
    ("jax", "bool"): "uniform",
    ("jax", "float"): "nan",
}


@pytest.mark.parametrize(("name", "kind"), MASKED_ROWS)
def test_fully_masked_row_convention(name: str, kind: str) -> None:
    target = available(name)
    p = Problem(B=1, Hq=2, Hkv=2, L=4, S=5, E=8, Ev=8, mask=kind, mask_shape="BHLS", masked_rows=1)  # type: ignore[arg-type]
    q, k, v, mask = p.tensors()
    row = target(q, k, v, **p.call_kwargs(mask))[:, :, 0]  # (B, Hq, Ev): query 0 sees no key
    observed = {
        "nan": bool(row.isnan().all()),
        "zeros": bool((row == 0).all()),
        "uniform": bool(torch.allclose(row, v.mean(-2), atol=1e-6)),
    }
    assert observed[MASKED_ROWS[name, kind]], f"{name} ({kind} mask): fully masked row {row.tolist()}, {observed}"
    assert target.caps.masked_rows in (None, MASKED_ROWS[name, kind]), target.caps.masked_rows


def test_mha_self_attention_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """query is key is value, eval, no autograd, even heads: torch._native_multi_head_attention, still correct."""
    calls = []
    native = torch._native_multi_head_attention

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", counting)
    target = resolve("torch-mha")
    x = Problem(B=2, Hq=2, Hkv=2, L=6, S=6, E=8, Ev=8).tensors()[0]  # (B, H, L, E)
    with torch.no_grad():
        out = target(x, x, x)
    assert calls, "nn.MultiheadAttention did not take its fast path for self-attention in eval mode"
    ref = oracle(x, x, x)
    tol = output_budget(x, x, x, ref)
    assert float((out.double() - ref).abs().max()) <= tol.value


def test_hf_sdpa_drops_is_causal_for_a_single_query() -> None:
    """sdpa_attention_forward ignores is_causal when L == 1: the query sees every key (bottom-right), not key 0."""
    target = available("hf-sdpa")
    p = Problem(B=1, Hq=2, Hkv=2, L=1, S=6, E=8, Ev=8, is_causal=True)
    q, k, v, _ = p.tensors()
    out = target(q, k, v, is_causal=True).double()
    bottom_right = oracle(q, k, v, is_causal=True, alignment="bottom-right")
    top_left = oracle(q, k, v, is_causal=True, alignment="top-left")
    assert torch.allclose(out, bottom_right, atol=1e-6) and not torch.allclose(out, top_left, atol=1e-3)


@pytest.mark.parametrize("name", ["hf-eager", "jax"])
def test_float64_runs_its_softmax_in_float32(name: str) -> None:
    """Why float64 is not declared: the output is float32-accurate, far outside the float64 budget."""
    target = available(name)
    assert "float64" not in target.caps.dtypes
    p = Problem(B=2, Hq=2, Hkv=2, L=5, S=7, E=8, Ev=8, dtype="float64")
    q, k, v, _ = p.tensors()
    out = target(q, k, v)
    assert out.dtype == torch.float64
    ref = oracle(q, k, v)
    err = float((out - ref).abs().max())
    assert output_budget(q, k, v, ref).value < err < 1e-5, f"{name} float64 error {err:.3g}"


@pytest.mark.parametrize(("dtype", "message"), [("float16", "F16_F16_F32"), ("bfloat16", "ALG_DOT_BF16_BF16_F32")])
def test_jitted_jax_rejects_half_types_on_cpu(dtype: str, message: str) -> None:
    """Why jax declares float32 only on CPU: jitted, XLA:CPU cannot run the half-type dots the library asks for."""
    target = available("jax")
    if target.caps.dtypes != ("float32",):
        pytest.skip(f"jax backend is not CPU: {target.description}")
    q, k, v, _ = Problem(E=1, Ev=1, dtype=dtype).tensors()  # type: ignore[arg-type]
    with pytest.raises(TargetError, match=message):
        target(q, k, v)


# ---------------------------------------------------------------------------------------------------------------
# Features beyond SDPA (docs/design.md, "Beyond SDPA"): window, softcap, sinks, lse

FEATURE_PROBLEMS = (
    FeatureProblem(B=2, Hq=4, Hkv=2, L=6, S=9, E=8, Ev=8, window=(2, 1)),
    FeatureProblem(B=1, Hq=2, Hkv=2, L=9, S=5, E=8, Ev=8, is_causal=True, window=(0, -1)),
    FeatureProblem(B=2, Hq=2, Hkv=2, L=5, S=7, E=8, Ev=8, magnitude=10.0, softcap=5.0),
    FeatureProblem(B=2, Hq=4, Hkv=2, L=5, S=7, E=8, Ev=8, mask="float", mask_shape="B1LS", sinks=True),
    FeatureProblem(B=2, Hq=2, Hkv=2, L=5, S=7, E=16, Ev=16, dtype="bfloat16", window=(3, 0), softcap=20.0),
    FeatureProblem(B=1, Hq=3, Hkv=1, L=4, S=6, E=8, Ev=8, dtype="float64", softcap=1.0, sinks=True),
    FeatureProblem(B=1, Hq=2, Hkv=2, L=4, S=6, E=8, Ev=8, magnitude=10.0, sinks=True, seed=4),
    FeatureProblem(B=2, Hq=4, Hkv=2, L=5, S=7, E=16, Ev=16, dtype="float16", mask="float", softcap=2.0, seed=5),
)
FEATURE_ADAPTERS = ("flex-attention", "hf-gemma2-eager", "hf-gpt-oss-eager", "jax")


def supports_features(caps: Capabilities, p: FeatureProblem) -> bool:
    drawn = {f for f, on in (("window", p.window), ("softcap", p.softcap), ("sinks", p.sinks)) if on}
    return supports(caps, p) and drawn <= caps.features


@pytest.mark.parametrize("name", FEATURE_ADAPTERS)
def test_feature_adapter_matches_oracle(name: str) -> None:
    """Output (and lse where declared) inside the budget of the float64 oracle, on the fixed feature problems."""
    target = available(name)
    supported = [p for p in FEATURE_PROBLEMS if supports_features(target.caps, p)]
    assert len(supported) >= 2, f"{name}: only {len(supported)} feature problems fit {target.caps.summary()}"
    with_lse = "lse" in target.caps.features
    for p in supported:
        q, k, v, mask = p.tensors()
        kwargs = {**p.call_kwargs(mask), "alignment": target.caps.alignment}
        result = target(q, k, v, **p.call_kwargs(mask), return_lse=with_lse)
        out, lse = result if with_lse else (result, None)
        ref, ref_lse = oracle(q, k, v, **kwargs, return_lse=True)  # (B, Hq, L, Ev), (B, Hq, L)
        rows = p.admissible(mask, target.caps.alignment).any(-1)  # (B, Hq, L)
        tol = output_budget(q, k, v, ref, **kwargs)
        worst = float((out.double() - ref).abs()[rows].max())
        assert worst <= tol.value, f"{name} on {p.describe()}: output error {worst:.3g} > {tol.explain()}"
        if lse is not None:
            lse_tol = lse_budget(q, k, v, ref_lse, lse.dtype, **kwargs)
            worst = float((lse.double() - ref_lse).abs()[rows].max())
            assert worst <= lse_tol.value, f"{name} on {p.describe()}: lse error {worst:.3g} > {lse_tol.explain()}"


def test_jax_lse_of_a_row_without_keys_is_finite() -> None:
    """jax masks with -0.7 * finfo(float32).max, not -inf: a row with no key has lse -0.7 * max + log S, finite
    (the lse property reports it against the declared -inf); flex-attention returns -inf."""
    p = FeatureProblem(B=1, Hq=2, Hkv=2, L=4, S=5, E=8, Ev=8, mask="bool", mask_shape="BHLS", masked_rows=1)
    q, k, v, mask = p.tensors()
    _, lse = available("jax")(q, k, v, mask, return_lse=True)
    expected = -0.7 * torch.finfo(torch.float32).max + math.log(p.S)
    row = lse[..., 0].double()  # (B, Hq): query 0 sees no key
    assert torch.isfinite(row).all() and torch.allclose(row, torch.full_like(row, expected))
    _, lse = available("flex-attention")(q, k, v, mask, return_lse=True)
    assert (lse[..., 0] == -math.inf).all()


# The CUDA feature adapters, on the CPU: stand-in modules with the documented signatures and semantics (their
# docstrings, cited in attncheck/adapters/cuda.py) implemented with the reference, so the adapters' translation
# (layout, argument names, lse shape, base and empty-row value, alignment) is checked by the properties themselves.


def _reference_nhd(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None, softcap: float | None
) -> tuple[Tensor, Tensor]:
    """The reference on (..., N, H, D) tensors (BLHD, NHD), GQA by shape, softcap 0 or None = off -> out (..., L,
    Hq, Ev), lse (..., Hq, L) in natural log."""
    out, lse = scaled_dot_product_attention(
        *(t.transpose(-3, -2) for t in (q, k, v)),  # (..., N, H, D) -> (..., H, N, D)
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
        softcap=softcap or None,
        return_lse=True,
    )
    return out.transpose(-3, -2), lse  # (..., H, L, Dv) -> (..., L, H, Dv)


def _stand_in_flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> Any:
    """flash-attn 2.8 flash_attn_func: (B, L, H, D); query i sees keys [i + S - L - left, i + S - L + right], causal
    is right = 0; softcap 0 = off; with return_attn_probs (out, softmax_lse (B, H, L), S_dmask), +inf on empty rows."""
    assert dropout_p == 0.0 and alibi_slopes is None
    L, S = q.size(1), k.size(1)
    left, right = window_size[0], 0 if causal else window_size[1]
    band = window_mask(L, S, (left, right), "bottom-right") if (left, right) != (-1, -1) else None
    out, lse = _reference_nhd(q, k, v, band, softmax_scale, softcap)  # (B, L, H, Dv), (B, H, L)
    return (out, lse.float().masked_fill(lse == -math.inf, math.inf), None) if return_attn_probs else out


def _stand_in_single_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    logits_soft_cap: float | None = None,
    return_lse: bool = False,
) -> Any:
    """flashinfer 0.6.18 single_prefill_with_kv_cache, NHD: q (L, Hq, E), k (S, Hkv, E); causal bottom-right;
    logits_soft_cap None or 0 = off; lse (L, Hq) in base 2."""
    L, S = q.size(0), k.size(0)
    mask = window_mask(L, S, (-1, 0), "bottom-right") if causal else None  # bottom-right causal triangle
    out, lse = _reference_nhd(q, k, v, mask, sm_scale, logits_soft_cap)  # (L, Hq, Ev), (Hq, L)
    lse = (lse.float() / math.log(2)).transpose(0, 1)  # (Hq, L) -> (L, Hq), base 2
    return (out, lse) if return_lse else out


def _stand_in_single_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sm_scale: float | None = None,
    logits_soft_cap: float | None = None,
    return_lse: bool = False,
) -> Any:
    """flashinfer 0.6.18 single_decode_with_kv_cache, NHD: q (Hq, E) against k (S, Hkv, E); lse (Hq,) in base 2."""
    result = _stand_in_single_prefill(q[None], k, v, False, sm_scale, logits_soft_cap, return_lse)
    return (result[0][0], result[1][0]) if return_lse else result[0]  # (1, Hq, ...) -> (Hq, ...)


@pytest.fixture
def cuda_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    flash_attn = types.ModuleType("flash_attn")
    flash_attn.__version__ = "2.8.3"  # type: ignore[attr-defined]
    flash_attn.flash_attn_func = _stand_in_flash_attn_func  # type: ignore[attr-defined]
    flashinfer = types.ModuleType("flashinfer")
    flashinfer.__version__ = "0.6.18"  # type: ignore[attr-defined]
    flashinfer.single_prefill_with_kv_cache = _stand_in_single_prefill  # type: ignore[attr-defined]
    flashinfer.single_decode_with_kv_cache = _stand_in_single_decode  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", flash_attn)
    monkeypatch.setitem(sys.modules, "flashinfer", flashinfer)
    monkeypatch.setattr(cuda, "require_cuda", lambda library: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "a CPU stand-in")


CUDA_FEATURE_FACTORIES = {
    "flash-attn": cuda.flash_attn_target,
    "flashinfer-prefill": cuda.flashinfer_prefill_target,
    "flashinfer-decode": cuda.flashinfer_decode_target,
}


@pytest.mark.parametrize("prop", ["window", "softcap", "lse"])
@pytest.mark.parametrize("name", sorted(CUDA_FEATURE_FACTORIES))
@pytest.mark.usefixtures("cuda_stand_ins")
def test_cuda_feature_adapter_translates_to_the_documented_api(name: str, prop: str) -> None:
    target = CUDA_FEATURE_FACTORIES[name]()
    target.device, target.caps = "cpu", target.caps.replace(devices=("cpu",))
    failures, passes, skips = run_property(target, prop)
    assert not failures, f"{name} ({target.caps.summary()}): {failures}"
    assert bool(passes) == (prop in target.caps.features), f"{name}: passed {passes}, skipped {skips}"
