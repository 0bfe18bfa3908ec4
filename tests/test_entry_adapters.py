"""The adapters of the varlen and decode entries of real libraries (attncheck/adapters/cuda_entries.py, jax.py).

The CUDA adapters run on the CPU against stand-ins with the libraries' documented signatures and semantics
(tests/fixtures/entry_stand_ins.py): each goes through its entry's property (varlen or decode) and, where it
declares lse, through a check of the returned lse (natural log, (Hq, Tq) or (B, Hq, Lq), the declared value on
rows with no key), so its translation (argument names, layouts, int32 index arrays, lse base and layout, window
count, causal alignment, paging) is pinned. Deliberate mistranslations show that these checks can fail.
jax-varlen runs for real on the CPU.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.adapters import BUILTINS, cuda, cuda_entries
from attncheck.properties.contract import Target
from attncheck.properties.packed import DecodeProblem, VarlenProblem, expected
from attncheck.reference.packed import decode_attention, paged_to_contiguous, varlen_attention
from attncheck.targets import availability, resolve
from tests.fixtures import entry_stand_ins
from tests.test_meta import CATCH_SETTINGS, run_property

CUDA_ENTRIES: dict[str, Callable[[], Target]] = {
    "flash-attn-varlen": cuda_entries.flash_attn_varlen_target,
    "flash-attn-kvcache": cuda_entries.flash_attn_kvcache_target,
    "flash-attn-kvcache-paged": cuda_entries.flash_attn_kvcache_paged_target,
    "flashinfer-varlen": cuda_entries.flashinfer_varlen_target,
    "flashinfer-decode-paged": cuda_entries.flashinfer_decode_paged_target,
    "xformers-varlen": cuda_entries.xformers_varlen_target,
    "xformers-decode": cuda_entries.xformers_decode_target,
    "torch-varlen-attn": cuda_entries.torch_varlen_target,
}


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in libraries installed, CUDA pretended, the device named."""
    for name, module in entry_stand_ins.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", entry_stand_ins.varlen_attn)
    monkeypatch.setattr(cuda, "require_cuda", lambda library: None)
    monkeypatch.setattr(cuda_entries, "require_cuda", lambda library: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "a CPU stand-in")


def on_cpu(target: Target) -> Target:
    """The CUDA target's declaration, run on the CPU (where the stand-ins compute)."""
    target.device, target.caps = "cpu", target.caps.replace(devices=("cpu",))
    return target


def assert_entry_property_passes(target: Target) -> None:
    failures, passes, skips = run_property(target, target.caps.entry)
    assert not failures and passes, f"{target.name} ({target.caps.summary()}): {failures}; skipped {skips}"


def assert_entry_property_fails(target: Target) -> None:
    failures, passes, _ = run_property(target, target.caps.entry, CATCH_SETTINGS)
    wrong = [f for f in failures if " raised " not in f]  # a wrong answer, not a crash
    assert wrong, f"{target.name}: the mistranslation was not caught (failed {failures}, passed {passes})"


# ---------------------------------------------------------------------------------------------------------------
# lse: not drawn by the entry properties, so checked here on fixed problems with rows that see no key


def lse_problem(target: Target) -> VarlenProblem | DecodeProblem:
    """A problem in what the target declares, with GQA, several rows without any key (empty key segments, and
    under causal more queries than keys) and padding; the window where declared."""
    caps = target.caps
    shared: dict[str, Any] = {
        "Hq": 4,
        "Hkv": 2,
        "E": 8,
        "Ev": 8,
        "dtype": caps.dtypes[0],
        "is_causal": caps.causal is not None,
        "window": (2, 1) if "window" in caps.features else None,
        "softcap": 5.0 if "softcap" in caps.features else None,
        "seed": 3,
    }
    if caps.entry == "varlen":
        return VarlenProblem(seqlens_q=(3, 0, 4, 2, 1), seqlens_k=(5, 2, 1, 0, 7), pad=2, **shared)
    paged: dict[str, Any] = {"page_size": 16, "spare_blocks": 2, "table_seed": 1} if caps.paged else {}
    return DecodeProblem(seqlens=(5, 0, 2, 9), Lq=3, capacity=11, **paged, **shared)


def assert_lse_matches(target: Target, p: VarlenProblem | DecodeProblem) -> None:
    """lse in natural log and the contract's layout, within 1e-3 (relative) of the float64 reference on the rows
    that see a key; the declared value on the query rows that see none."""
    features = p.features(target.device)
    if isinstance(p, VarlenProblem):
        tensors = p.tensors(target.device)
        _, lse = target.varlen(*tensors, **features, return_lse=True)  # (Hq, Tq + pad)
        q, k, v, cu_q, cu_k, max_q, max_k = tensors
        _, ref = varlen_attention(
            q.double(),
            k.double(),
            v.double(),
            cu_q,
            cu_k,
            max_q,
            max_k,
            **features,
            alignment=target.caps.alignment,
            return_lse=True,
        )  # type: ignore[misc]
        rows = torch.zeros_like(ref, dtype=torch.bool)  # (Hq, Tq + pad)
        rows[:, : sum(p.seqlens_q)] = True
    else:
        q, k_cache, v_cache, lengths = p.tensors(target.device)
        _, lse = target.decode(q, k_cache, v_cache, lengths, **features, return_lse=True)  # (B, Hq, Lq)
        _, ref = decode_attention(q.double(), k_cache.double(), v_cache.double(), lengths, **features, return_lse=True)  # type: ignore[misc]
        rows = torch.ones_like(ref, dtype=torch.bool)
    lse, ref = lse.double().cpu(), ref.double()
    live = rows & torch.isfinite(ref)
    assert live.any() and (rows & ~live).any(), f"{p.format()}: the fixed problem must have rows with and without keys"
    err = ((lse - ref).abs() / (1 + ref.abs()))[live]
    assert float(err.max()) < 1e-3, f"{target.name}: lse off the reference by {float(err.max()):.3g} ({p.format()})"
    empty = {"-inf": -math.inf, "+inf": math.inf}.get(target.caps.lse_empty)
    if empty is not None:
        got = lse[rows & ~live]
        assert (got == empty).all(), f"{target.name}: lse {got.tolist()} on rows with no key, declared {empty}"


# ---------------------------------------------------------------------------------------------------------------
# Registration and availability here (no CUDA, none of the libraries)


def test_entry_adapters_are_registered() -> None:
    assert {*CUDA_ENTRIES, "jax-varlen"} <= set(BUILTINS)
    for name, factory in CUDA_ENTRIES.items():
        assert BUILTINS[name][1].endswith(f"cuda_entries:{factory.__name__}"), name


def test_cuda_entry_adapters_are_unavailable_with_one_line_reasons() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rows = {name: reason for name, _, reason in availability()}
    for name in CUDA_ENTRIES:
        reason = rows[name]
        assert reason is not None and reason.strip() and "\n" not in reason, f"{name}: {reason!r}"


def test_importing_the_entry_adapters_imports_no_optional_library() -> None:
    code = (
        "import sys, attncheck.adapters.cuda_entries, attncheck.adapters.jax; "
        "print(sorted(m for m in ('flash_attn', 'flashinfer', 'xformers', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing the entry adapters imported {out.strip()}"


# ---------------------------------------------------------------------------------------------------------------
# The CUDA adapters against the stand-ins


@pytest.mark.usefixtures("stand_ins")
@pytest.mark.parametrize("name", sorted(CUDA_ENTRIES))
def test_cuda_entry_adapter_passes_its_entry_property(name: str) -> None:
    assert_entry_property_passes(on_cpu(CUDA_ENTRIES[name]()))


@pytest.mark.usefixtures("stand_ins")
@pytest.mark.parametrize("name", sorted(n for n in CUDA_ENTRIES if n.startswith(("flash", "torch"))))
def test_cuda_entry_adapter_returns_the_contracts_lse(name: str) -> None:
    target = on_cpu(CUDA_ENTRIES[name]())
    assert "lse" in target.caps.features
    assert_lse_matches(target, lse_problem(target))


def test_repaged_cache_holds_the_same_sequences() -> None:
    """flash-attn-kvcache-paged's re-laying: every sequence reads the same entries through the new table, unused
    entries stay NaN, page 0 is never referenced, and the caller's block order carries over to the new table."""
    p = DecodeProblem(seqlens=(5, 0, 17), capacity=20, page_size=3, spare_blocks=2, Hq=2, Hkv=2, table_seed=4)
    _, k_cache, v_cache, lengths = p.tensors()
    table = p.block_table()
    assert table is not None
    k_new, v_new, new_table = cuda_entries._repaged(k_cache, v_cache, table, 16)
    assert new_table.dtype == torch.int32 and k_new.size(1) == 16 and 0 not in new_table.tolist()
    assert k_new[0].isnan().all(), "page 0 must stay unused (NaN)"
    capacity = table.size(1) * k_cache.size(1)
    for b in range(len(lengths)):
        for old, new in ((k_cache, k_new), (v_cache, v_new)):
            before, after = (
                paged_to_contiguous(old, table, capacity, b),
                paged_to_contiguous(new, new_table, capacity, b),
            )
            assert torch.equal(before.isnan(), after.isnan()) and torch.equal(before.nan_to_num(), after.nan_to_num())
    other = cuda_entries._repaged(k_cache, v_cache, p.replace(table_seed=5).block_table(), 16)[2]  # type: ignore[arg-type]
    assert not torch.equal(other, new_table), "another caller permutation must give another table"


@pytest.mark.usefixtures("stand_ins")
def test_flash_attn_kvcache_paged_passes_pages_of_256_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages the library accepts reach it untouched: the caller's cache and block table, the oracle's output."""
    seen: dict[str, Tensor] = {}
    kvcache = sys.modules["flash_attn"].flash_attn_with_kvcache  # type: ignore[attr-defined]

    def recording(q: Tensor, k_cache: Tensor, v_cache: Tensor, **kwargs: Any) -> Any:
        seen["k_cache"], seen["block_table"] = k_cache, kwargs["block_table"]
        return kvcache(q, k_cache, v_cache, **kwargs)

    monkeypatch.setattr(sys.modules["flash_attn"], "flash_attn_with_kvcache", recording)
    target = on_cpu(cuda_entries.flash_attn_kvcache_paged_target())
    p = DecodeProblem(seqlens=(300, 0, 7), Lq=2, capacity=513, page_size=256, spare_blocks=1, Hq=2, Hkv=1)
    p = p.replace(dtype="float16", is_causal=True, table_seed=2)
    q, k_cache, v_cache, lengths = p.tensors()
    out = target.decode(q, k_cache, v_cache, lengths, **p.features())
    assert seen["k_cache"] is k_cache and torch.equal(seen["block_table"], p.features()["block_table"])
    ref, tol, live = expected(target, p)
    assert float(((out.double() - ref).abs() * live).max()) <= tol.value


# Deliberate mistranslations: each must be caught by the check that pins the translation.


def _base_2_lse_taken_as_natural(target: Target, monkeypatch: pytest.MonkeyPatch) -> Target:
    target.caps = target.caps.replace(lse_base="e")
    return target


def _window_counted_with_self(target: Target, monkeypatch: pytest.MonkeyPatch) -> Target:
    target.caps = target.caps.replace(window_counts_self=True)
    return target


def _causal_top_left(target: Target, monkeypatch: pytest.MonkeyPatch) -> Target:
    monkeypatch.setattr(
        entry_stand_ins.BlockDiagonalMask, "make_causal_from_bottomright", entry_stand_ins.BlockDiagonalMask.make_causal
    )
    return target


def _block_table_ignored(target: Target, monkeypatch: pytest.MonkeyPatch) -> Target:
    kvcache = sys.modules["flash_attn"].flash_attn_with_kvcache  # type: ignore[attr-defined]

    def identity_table(*args: object, block_table: Tensor | None = None, **kwargs: object) -> object:
        if block_table is not None:  # sequence b's j-th page read as block b * n + j + 1 (page 0 is spare)
            block_table = torch.arange(1, block_table.numel() + 1, dtype=torch.int32).view_as(block_table)
        return kvcache(*args, block_table=block_table, **kwargs)

    monkeypatch.setattr(sys.modules["flash_attn"], "flash_attn_with_kvcache", identity_table)
    return target


MISTRANSLATIONS = {
    "flashinfer-varlen lse base 2 not converted": ("flashinfer-varlen", _base_2_lse_taken_as_natural, "lse"),
    "flashinfer-decode-paged lse base 2 not converted": (
        "flashinfer-decode-paged",
        _base_2_lse_taken_as_natural,
        "lse",
    ),
    "flash-attn-varlen window counted with self": ("flash-attn-varlen", _window_counted_with_self, "entry"),
    "xformers-varlen causal top-left": ("xformers-varlen", _causal_top_left, "entry"),
    "flash-attn-kvcache-paged block table ignored": ("flash-attn-kvcache-paged", _block_table_ignored, "entry"),
}


@pytest.mark.usefixtures("stand_ins")
@pytest.mark.parametrize("case", sorted(MISTRANSLATIONS))
def test_a_mistranslation_is_caught(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name, mistranslate, check = MISTRANSLATIONS[case]
    target = mistranslate(on_cpu(CUDA_ENTRIES[name]()), monkeypatch)
    if check == "lse":
        with pytest.raises(AssertionError, match="lse off the reference"):
            assert_lse_matches(target, lse_problem(target))
    else:
        assert_entry_property_fails(target)


# ---------------------------------------------------------------------------------------------------------------
# jax-varlen, for real on the CPU


def jax_varlen() -> Target:
    pytest.importorskip("jax")
    return resolve("jax-varlen")


def test_jax_varlen_passes_the_varlen_property() -> None:
    assert_entry_property_passes(jax_varlen())


def test_jax_varlen_returns_the_contracts_lse() -> None:
    assert_lse_matches(jax_varlen(), lse_problem(jax_varlen()))


def test_jax_varlen_aligns_causal_top_left() -> None:
    """Why causal="top-left": declared bottom-right (FlashAttention's varlen convention), the property fails."""
    target = jax_varlen()
    target.caps = target.caps.replace(causal="bottom-right")
    assert_entry_property_fails(target)
