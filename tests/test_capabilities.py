"""Declarations: what ``--cap FIELD=VALUE`` and the verify flags accept, and how :class:`Target` honours them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from attncheck.errors import TargetError, TargetSpecError
from attncheck.options import VerifySettings
from attncheck.properties.contract import CHOICES, Capabilities, Target
from attncheck.properties.oracle import oracle
from attncheck.targets import parse_capability
from tests.variants import VARIANTS


@pytest.mark.parametrize(
    ("text", "change"),
    [
        ("causal=always", {"causal": "always"}),
        ("causal=none", {"causal": None}),
        ("gqa_mapping=interleaved", {"gqa_mapping": "interleaved"}),
        ("dropout=yes", {"dropout": "inverted"}),
        ("dropout=no", {"dropout": False}),
        ("dropout=renormalised", {"dropout": "renormalised"}),
        ("features=window,lse", {"features": frozenset({"window", "lse"})}),
        ("lse_base=2", {"lse_base": "2"}),
        ("masked_rows=any", {"masked_rows": None}),
        ("compute_dtype=input", {"compute_dtype": None}),
        ("window_counts_self=yes", {"window_counts_self": True}),
    ],
)
def test_capability_values_parse(text: str, change: dict[str, Any]) -> None:
    assert parse_capability(text) == change
    Capabilities(**change)  # and the declaration is valid


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("causal=sideways", "causal takes top-left, bottom-right, always, none"),
        ("gqa_mapping=tiled", "gqa_mapping takes grouped, interleaved"),
        ("dropout=sometimes", "dropout takes no, inverted, renormalised"),
        ("features=window,alibi", "features takes a comma-separated subset"),
        ("nonsense=1", "expected FIELD=VALUE"),
    ],
)
def test_bad_capability_values_are_one_line_errors(text: str, named: str) -> None:
    with pytest.raises(TargetSpecError, match=named):
        parse_capability(text)


def test_every_literal_field_is_validated_by_capabilities() -> None:
    for name in CHOICES:
        with pytest.raises(ValueError, match=name):
            Capabilities(**{name: "no such value"})
    assert Capabilities(dropout=True).dropout == "inverted"  # the old boolean declaration keeps its meaning


def test_verify_flags_become_declarations() -> None:
    given = {"dropout": "renormalised", "gqa_mapping": "interleaved", "feature": ["window", "lse"], "causal": "always"}
    settings = VerifySettings.from_options(given.get, [])
    caps = Capabilities()
    for text in settings.caps:
        caps = caps.replace(**parse_capability(text))
    assert (caps.dropout, caps.gqa_mapping, caps.features, caps.causal) == (
        "renormalised",
        "interleaved",
        frozenset({"window", "lse"}),
        "always",
    )


def _qkv(Hq: int = 6, Hkv: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, Hq, 3, 4, generator=g, dtype=torch.float64)  # (B, Hq, L, E)
    k = torch.randn(2, Hkv, 5, 4, generator=g, dtype=torch.float64)  # (B, Hkv, S, E)
    v = torch.randn(2, Hkv, 5, 3, generator=g, dtype=torch.float64)  # (B, Hkv, S, Ev)
    return q, k, v


def test_an_interleaved_target_is_translated_to_the_grouped_contract() -> None:
    """Declared interleaved, a tiling kernel answers the contract's (grouped) question, per-head masks included;
    a grouped kernel declared interleaved does not."""
    q, k, v = _qkv()
    mask = torch.rand(2, 6, 3, 5, generator=torch.Generator().manual_seed(1)) > 0.3  # (B, Hq, L, S)
    mask[..., 0] = True
    tiling = VARIANTS["interleaved_gqa"]
    declared = Target("tiling", tiling.fn, tiling.caps)
    expected = oracle(q, k, v, mask, enable_gqa=True)
    assert torch.allclose(declared(q, k, v, mask, enable_gqa=True), expected)
    undeclared = Target("tiling", tiling.fn, tiling.caps.replace(gqa_mapping="grouped"))
    assert not torch.allclose(undeclared(q, k, v, mask, enable_gqa=True), expected)
    grouped = VARIANTS["float64_inside"]
    misdeclared = Target("grouped", grouped.fn, grouped.caps.replace(gqa_mapping="interleaved"))
    assert not torch.allclose(misdeclared(q, k, v, mask, enable_gqa=True), expected)


def test_an_always_causal_target_is_called_without_the_flag_and_never_non_causal() -> None:
    seen: list[dict[str, Any]] = []

    def built_in(query: Tensor, key: Tensor, value: Tensor, **kwargs: Any) -> Tensor:
        seen.append(kwargs)
        return oracle(query, key, value, is_causal=True)

    target = Target("always", built_in, Capabilities(causal="always"))
    q, k, v = _qkv(2, 2)
    target(q, k, v, is_causal=True)
    assert seen == [{}]
    with pytest.raises(pytest.skip.Exception, match="always causal"):
        target(q, k, v)


def test_feature_conventions_are_translated() -> None:
    """A window counting the query's own key gets left + 1; a base-2 lse comes back in natural log; an lse of the
    wrong shape is the target's error."""
    seen: list[dict[str, Any]] = []
    q, k, v = _qkv(2, 2)
    lse2 = torch.full((2, 2, 3), 3.0, dtype=torch.float32)  # (B, Hq, L)

    def kernel(query: Tensor, key: Tensor, value: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        seen.append(kwargs)
        return oracle(query, key, value), lse2 if kwargs.get("return_lse") else lse2[0]

    caps = Capabilities(features=frozenset({"window", "lse"}), window_counts_self=True, lse_base="2")
    _, lse = Target("k", kernel, caps)(q, k, v, window=(2, 0), return_lse=True)
    assert seen[-1] == {"window": (3, 0), "return_lse": True}
    assert torch.allclose(lse, torch.full_like(lse2, 3.0 * math.log(2)))
    Target("k", kernel, caps)(q, k, v, window=(-1, 1))
    assert seen[-1] == {"window": (-1, 1)}  # unbounded stays unbounded
    bad = Target("k", lambda *a, **kw: (oracle(*a[:3]), lse2[0]), caps)
    with pytest.raises(TargetError, match="returned lse of shape"):
        bad(q, k, v, return_lse=True)
