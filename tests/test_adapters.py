"""The third-party built-in adapters: each is unavailable with a one-line reason, or agrees with the float64 oracle.

Also pins the divergences the adapters declare or document (properties/adapters.py), so a library upgrade that
changes them fails here and the declarations get revisited instead of silently going stale.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

from attncheck.errors import TargetError
from attncheck.properties.adapters import BUILTINS
from attncheck.properties.oracle import oracle, output_budget
from attncheck.properties.problems import Problem
from attncheck.properties.targets import Capabilities, Target, availability, resolve

ADAPTERS = ("torch-mha", "torch-mha-noweights", "flex-attention", "hf-eager", "hf-sdpa", "jax")
CUDA_ADAPTERS = ("torch-sdpa-cuda", "flash-attn", "xformers")
OPTIONAL = {
    "hf-eager": "transformers",
    "hf-sdpa": "transformers",
    "jax": "jax",
    "flash-attn": "flash_attn",
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
    alignment = target.caps.causal or "top-left"
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
        "import sys, attncheck.properties.targets, attncheck.properties.adapters; "
        f"print(sorted(m for m in {optional!r} if m in sys.modules))"
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
# transformers 5.24.0 and jax 0.10.2; the table in properties/adapters.py says the same.
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
