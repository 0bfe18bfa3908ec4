"""Problems for the varlen and decode entries (docs/design.md, "Beyond SDPA"), their strategies and their oracle.

A :class:`VarlenProblem` is a packed batch: per-sequence query and key lengths (0 to 6 sequences; lengths 0, 1,
odd and block edges), padding rows past ``cu_seqlens[-1]`` filled with NaN (never to be read), heads, dims,
dtype, is_causal, scale, the dense features the target declares (window, softcap, sinks) and a seed. A
:class:`DecodeProblem` is a batch of sequences in a KV cache: per-sequence cache lengths (0 to the capacity),
Lq new queries per sequence, a capacity larger than the longest sequence, and for a paged cache a page size
(1, 16 or odd) and a block table that is a random permutation of the blocks, with unused blocks; every cache entry
that must not be read holds NaN. Both stay small integers and a seed, so Hypothesis shrinks lengths and shapes,
and a counterexample is one line that rebuilds the exact call.

The oracle reduces both entries to dense attention per sequence, in float64 (:func:`attncheck.properties.oracle.
expect`, with its calibrated budget), so one oracle serves every entry: varlen sequence b is the dense call on
its own rows; decode sequence b is the dense call of its Lq queries on its first ``cache_seqlens[b]`` keys,
aligned bottom-right.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from attncheck.properties.checks import assert_close, check, observe, row_convention
from attncheck.properties.contract import Capabilities, Target
from attncheck.properties.features import SINK_STD, SOFTCAPS, windows
from attncheck.properties.oracle import Budget, expect, expect_lse, oracle
from attncheck.properties.problems import DTYPES, seeds

SEQ_LENGTHS = st.one_of(st.integers(0, 5), st.sampled_from((1, 7, 16, 17)))  # 0 = empty segment; block edges
PAGE_SIZES = (1, 3, 16)  # one entry per page, odd, a common kernel page


@dataclass(frozen=True)
class _EntryProblem:
    """What varlen and decode problems share: heads, dims, dtype, flags, features and the seed."""

    Hq: int = 1
    Hkv: int = 1
    E: int = 4
    Ev: int = 4
    dtype: str = "float32"
    is_causal: bool = False
    scale: float | None = None
    window: tuple[int, int] | None = None
    softcap: float | None = None
    sinks: bool = False
    seed: int = 0

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)

    def _draw(self, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(DTYPES[self.dtype])

    def features(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """The contract keywords of the call: is_causal, scale and the features drawn."""
        sinks = None
        if self.sinks:
            g = torch.Generator().manual_seed(self.seed + 17)
            sink_dtype = torch.float64 if self.dtype == "float64" else torch.float32
            sinks = (torch.randn(self.Hq, generator=g, dtype=torch.float64) * SINK_STD).to(sink_dtype).to(device)
        return {"is_causal": self.is_causal, "scale": self.scale, "window": self.window, "softcap": self.softcap} | (
            {"sinks": sinks} if sinks is not None else {}
        )

    def describe(self) -> dict[str, object]:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in shown.items() if v != getattr(type(self), k, None) or k in ("dtype", "seed")}

    def format(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items())

    def repro(self, target: Target) -> str:
        """A copy-pasteable snippet: rebuild ``target`` with its declaration and the exact packed or cached inputs,
        call the entry, and assert its output against the per-sequence float64 oracle inside the budget."""
        from attncheck.properties.repro import target_lines

        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        kind = type(self).__name__
        entry = "varlen" if kind == "VarlenProblem" else "decode"
        return "\n".join(
            [
                f"from attncheck.properties.packed import {kind}, expected",
                "from attncheck import Capabilities",
                "from attncheck.targets import resolve",
                "from attncheck.properties.checks import assert_close",
                *target_lines(target),
                f"p = {kind}({fields})",
                f"out = target.{entry}(*p.tensors(target.device), **p.features(target.device))",
                "ref, budget, live = expected(target, p)",
                f"assert_close(out, ref, budget, '{entry} output vs float64 oracle', p, where=live)",
            ]
        )


@dataclass(frozen=True)
class VarlenProblem(_EntryProblem):
    """A packed batch: sequence b has ``seqlens_q[b]`` queries and ``seqlens_k[b]`` keys; ``pad`` NaN rows follow
    the last sequence in every packed tensor."""

    seqlens_q: tuple[int, ...] = (1,)
    seqlens_k: tuple[int, ...] = (1,)
    pad: int = 0

    def cu_seqlens(self, lengths: tuple[int, ...], device: str | torch.device = "cpu") -> Tensor:
        """(B + 1,) int32 prefix sums: sequence b owns rows cu[b]:cu[b + 1]."""
        return torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()], dtype=torch.int32).to(
            device
        )

    def tensors(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int, int]:
        """(query (Tq, Hq, E), key (Tk, Hkv, E), value (Tk, Hkv, Ev), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k); rows past cu_seqlens[-1] are NaN."""
        g = torch.Generator().manual_seed(self.seed)
        Tq, Tk = sum(self.seqlens_q), sum(self.seqlens_k)
        q = self._draw((Tq + self.pad, self.Hq, self.E), g)  # (Tq + pad, Hq, E)
        k = self._draw((Tk + self.pad, self.Hkv, self.E), g)  # (Tk + pad, Hkv, E)
        v = self._draw((Tk + self.pad, self.Hkv, self.Ev), g)  # (Tk + pad, Hkv, Ev)
        for t, T in ((q, Tq), (k, Tk), (v, Tk)):
            t[T:] = float("nan")  # padding: never read
        return (
            *(t.to(device) for t in (q, k, v)),
            self.cu_seqlens(self.seqlens_q, device),
            self.cu_seqlens(self.seqlens_k, device),
            max(self.seqlens_q, default=0),
            max(self.seqlens_k, default=0),
        )  # type: ignore[return-value]


@dataclass(frozen=True)
class DecodeProblem(_EntryProblem):
    """Lq new queries per sequence over a KV cache of ``capacity`` entries per sequence, sequence b holding
    ``seqlens[b]`` of them; ``page_size`` > 0 pages the cache (a shuffled block table, ``spare_blocks`` unused
    blocks); every entry that must not be read is NaN."""

    seqlens: tuple[int, ...] = (1,)
    Lq: int = 1
    capacity: int = 1
    page_size: int = 0  # 0 = contiguous cache
    spare_blocks: int = 0
    table_seed: int = 0  # the block table's permutation

    def tensors(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(query (B, Lq, Hq, E), k_cache, v_cache, cache_seqlens (B,) int32), plus ``block_table`` from
        :meth:`block_table` for a paged cache. Contiguous caches are (B, capacity, Hkv, E|Ev); paged ones
        (num_blocks, page_size, Hkv, E|Ev). Entries past each sequence's length, and unused blocks, are NaN."""
        g = torch.Generator().manual_seed(self.seed)
        B, longest = len(self.seqlens), max(self.seqlens)
        q = self._draw((B, self.Lq, self.Hq, self.E), g)  # (B, Lq, Hq, E)
        k = torch.full((B, self.capacity, self.Hkv, self.E), float("nan"), dtype=DTYPES[self.dtype])  # (B, S_cap, ...)
        v = torch.full((B, self.capacity, self.Hkv, self.Ev), float("nan"), dtype=DTYPES[self.dtype])
        # drawn at the longest length, whatever the capacity: the same sequences in a larger cache
        k[:, :longest] = self._draw((B, longest, self.Hkv, self.E), g)  # (B, longest, Hkv, E)
        v[:, :longest] = self._draw((B, longest, self.Hkv, self.Ev), g)  # (B, longest, Hkv, Ev)
        for b, n in enumerate(self.seqlens):
            k[b, n:], v[b, n:] = float("nan"), float("nan")  # past cache_seqlens: never read
        lengths = torch.tensor(self.seqlens, dtype=torch.int32)
        if self.page_size:
            k, v = (self._paged(t) for t in (k, v))
        return q.to(device), k.to(device), v.to(device), lengths.to(device)

    @property
    def blocks_per_sequence(self) -> int:
        return -(-self.capacity // self.page_size)  # ceil(capacity / page_size)

    def block_table(self, device: str | torch.device = "cpu") -> Tensor | None:
        """(B, blocks_per_sequence) int32: a random permutation of the used block ids; None if contiguous."""
        if not self.page_size:
            return None
        B, n = len(self.seqlens), self.blocks_per_sequence
        order = torch.randperm(B * n + self.spare_blocks, generator=torch.Generator().manual_seed(self.table_seed))
        return order[: B * n].view(B, n).to(torch.int32).to(device)  # (B * n,) -> (B, n)

    def _paged(self, contiguous: Tensor) -> Tensor:
        """(B, capacity, H, D) -> (num_blocks, page_size, H, D) at the block table's ids; unused blocks are NaN."""
        B, _, H, D = contiguous.shape
        n, size = self.blocks_per_sequence, self.page_size
        padded = torch.full((B, n * size, H, D), float("nan"), dtype=contiguous.dtype)  # (B, n * size, H, D)
        padded[:, : self.capacity] = contiguous
        pages = torch.full((B * n + self.spare_blocks, size, H, D), float("nan"), dtype=contiguous.dtype)
        table = self.block_table()
        assert table is not None
        pages[table.flatten().long()] = padded.view(B * n, size, H, D)  # (B, n * size, H, D) -> (B * n, size, H, D)
        return pages

    def features(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        return super().features(device) | ({"block_table": self.block_table(device)} if self.page_size else {})


# ---------------------------------------------------------------------------------------------------------------
# Strategies


def _shared(draw: st.DrawFn, caps: Capabilities) -> dict[str, Any]:
    """Heads, dims, dtype, flags and the declared features of one entry problem."""
    Hkv = draw(st.integers(1, 2))
    group = draw(st.sampled_from((1, 2))) if caps.gqa else 1
    E = draw(st.sampled_from((1, 4, 8, 16)))
    fields: dict[str, Any] = {
        "Hq": Hkv * group,
        "Hkv": Hkv,
        "E": E,
        "Ev": draw(st.sampled_from((4, 8))) if caps.value_dim else E,
        "dtype": draw(st.sampled_from(caps.dtypes)),
        "is_causal": caps.causal is not None and draw(st.booleans()),
        "scale": draw(st.sampled_from((None, None, 0.5))) if caps.scale else None,
        "seed": draw(seeds),
    }
    if "window" in caps.features and draw(st.booleans()):
        fields["window"] = draw(windows(8, 8))
    if "softcap" in caps.features and draw(st.booleans()):
        fields["softcap"] = draw(st.sampled_from(SOFTCAPS))
    if "sinks" in caps.features:
        fields["sinks"] = draw(st.booleans())
    return fields


@st.composite
def varlen_problems(draw: st.DrawFn, caps: Capabilities, min_sequences: int = 0) -> VarlenProblem:
    """A packed batch the varlen target ``caps`` supports: 0 to 6 sequences (``min_sequences`` at least), lengths
    from 0 to a block edge, L != S per sequence unless the target is self-attention only, 0 to 3 NaN pad rows."""
    B = draw(st.integers(min_sequences, 6))
    seqlens_q = tuple(draw(st.lists(SEQ_LENGTHS, min_size=B, max_size=B)))
    if caps.lengths == "equal":
        seqlens_k = seqlens_q
    else:
        seqlens_k = tuple(draw(st.lists(SEQ_LENGTHS, min_size=B, max_size=B)))
        if caps.lengths == "q<=k":
            seqlens_q = tuple(min(a, b) for a, b in zip(seqlens_q, seqlens_k, strict=True))
    return VarlenProblem(seqlens_q=seqlens_q, seqlens_k=seqlens_k, pad=draw(st.integers(0, 3)), **_shared(draw, caps))


@st.composite
def decode_problems(draw: st.DrawFn, caps: Capabilities, Lq: int | None = None) -> DecodeProblem:
    """Sequences in a KV cache the decode target ``caps`` reads: 1 to 4 sequences of 0 to capacity cached keys
    (some of them the Lq new queries' own), capacity above the longest; paged caches as the target declares."""
    B = draw(st.integers(1, 4))
    seqlens = tuple(draw(st.lists(SEQ_LENGTHS, min_size=B, max_size=B)))
    capacity = max(seqlens) + draw(st.sampled_from((0, 1, 5)))
    capacity = max(capacity, 1)
    paged: dict[str, Any] = {}
    if caps.paged:
        paged = {
            "page_size": draw(st.sampled_from(PAGE_SIZES)),
            "spare_blocks": draw(st.integers(0, 3)),
            "table_seed": draw(seeds),
        }
    lq = Lq if Lq is not None else draw(st.sampled_from((1, 1, 2, 3)))
    return DecodeProblem(seqlens=seqlens, Lq=lq, capacity=capacity, **paged, **_shared(draw, caps))


# ---------------------------------------------------------------------------------------------------------------
# The oracle: each sequence alone, dense, in float64


def _dense(
    target: Target, p: _EntryProblem, q: Tensor, k: Tensor, v: Tensor, alignment: str
) -> tuple[Tensor, Budget, Tensor]:
    """(oracle, budget, live rows) of one sequence: q (L, Hq, E), k (S, Hkv, E), v (S, Hkv, Ev) -> out (L, Hq,
    Ev) and live (L, Hq, 1), False where a row has no admissible key and no sink (its lse is -inf)."""
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (L, H, D) -> (1, H, L, D)
    kwargs = p.features(q.device)
    kwargs.pop("block_table", None)
    ref, tol = expect(q4, k4, v4, None, alignment, target.precision(q.dtype), enable_gqa=True, **kwargs)
    _, lse = oracle(q4, k4, v4, alignment=alignment, enable_gqa=True, return_lse=True, **kwargs)  # (1, Hq, L)
    live = torch.isfinite(lse[0]).transpose(0, 1).unsqueeze(-1)  # (1, Hq, L) -> (L, Hq, 1)
    return ref[0].transpose(0, 1), tol, live  # (1, Hq, L, Ev) -> (L, Hq, Ev)


def expected(target: Target, p: VarlenProblem | DecodeProblem) -> tuple[Tensor, Budget, Tensor]:
    """(float64 oracle output in the entry's layout, the largest per-sequence budget, live rows) of the call ``p``
    makes; live is (..., Hq, 1), False on padding rows and on rows with no admissible key and no sink."""
    budgets: list[Budget] = []
    if isinstance(p, VarlenProblem):
        q, k, v, cu_q, cu_k, _, _ = p.tensors()
        ref = torch.zeros(q.size(0), p.Hq, p.Ev, dtype=torch.float64)  # (Tq + pad, Hq, Ev); padding rows 0
        live = torch.zeros(q.size(0), p.Hq, 1, dtype=torch.bool)  # (Tq + pad, Hq, 1)
        bq, bk = cu_q.tolist(), cu_k.tolist()
        for b in range(len(p.seqlens_q)):
            rows, keys = slice(bq[b], bq[b + 1]), slice(bk[b], bk[b + 1])
            ref[rows], tol, live[rows] = _dense(target, p, q[rows], k[keys], v[keys], target.caps.alignment)
            budgets.append(tol)
    else:
        q, k_cache, v_cache, lengths = p.tensors()
        contiguous = p.replace(page_size=0, spare_blocks=0, table_seed=0).tensors() if p.page_size else None
        k_all, v_all = (k_cache, v_cache) if contiguous is None else contiguous[1:3]
        outs, lives = [], []
        for b, n in enumerate(lengths.tolist()):
            out, tol, alive = _dense(target, p, q[b], k_all[b, :n], v_all[b, :n], "bottom-right")  # (Lq, Hq, Ev)
            outs.append(out)
            lives.append(alive)
            budgets.append(tol)
        ref, live = torch.stack(outs), torch.stack(lives)  # (B, Lq, Hq, Ev), (B, Lq, Hq, 1)
    tol = max(budgets, key=lambda t: t.value, default=Budget(0.0, 0.0, 1.0, 0.0, DTYPES[p.dtype]))
    return ref, tol, live


def expected_lse(target: Target, p: VarlenProblem | DecodeProblem, lse_dtype: torch.dtype) -> tuple[Tensor, Budget]:
    """(float64 oracle lse in the entry's layout, the largest per-sequence lse budget) of the call ``p`` makes,
    for a target returning its lse in ``lse_dtype``: varlen (Hq, Tq + pad), -inf on padding rows; decode
    (B, Hq, Lq). Rows with no admissible key and no sink are -inf (their lse is judged against ``lse_empty``)."""
    kwargs = p.features()
    kwargs.pop("block_table", None)
    budgets: list[Budget] = []

    def dense(q: Tensor, k: Tensor, v: Tensor, alignment: str) -> Tensor:
        q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (L, H, D) -> (1, H, L, D)
        ref, tol = expect_lse(
            q4, k4, v4, None, alignment, lse_dtype, target.precision(q.dtype), enable_gqa=True, **kwargs
        )
        budgets.append(tol)
        return ref[0]  # (1, Hq, L) -> (Hq, L)

    if isinstance(p, VarlenProblem):
        q, k, v, cu_q, cu_k, _, _ = p.tensors()
        ref = torch.full((p.Hq, q.size(0)), float("-inf"), dtype=torch.float64)  # (Hq, Tq + pad)
        bq, bk = cu_q.tolist(), cu_k.tolist()
        for b in range(len(p.seqlens_q)):
            rows, keys = slice(bq[b], bq[b + 1]), slice(bk[b], bk[b + 1])
            ref[:, rows] = dense(q[rows], k[keys], v[keys], target.caps.alignment)
    else:
        q, _, _, lengths = p.tensors()
        contiguous = p.replace(page_size=0, spare_blocks=0, table_seed=0).tensors()
        k_all, v_all = contiguous[1:3]
        ref = torch.stack(
            [dense(q[b], k_all[b, :n], v_all[b, :n], "bottom-right") for b, n in enumerate(lengths.tolist())]
        )  # (B, Hq, Lq)
    tol = max(budgets, key=lambda t: t.value, default=Budget(0.0, 0.0, 1.0, 0.0, lse_dtype))
    return ref, tol


def judge_lse(target: Target, p: VarlenProblem | DecodeProblem, lse: Tensor, rows: Tensor) -> None:
    """The entry's returned lse (natural log, after Target's conversion) against the float64 oracle's, on the
    ``rows`` that are queries (same layout as lse); rows with no admissible key and no sink have the declared
    ``lse_empty`` (docs/features.md)."""
    ref, tol = expected_lse(target, p, lse.dtype)
    rows = rows.to(lse.device)
    live = rows & torch.isfinite(ref).to(lse.device)
    assert_close(lse, ref, tol, f"lse vs each sequence's float64 logsumexp: {p.format()}", None, live)
    dead = rows & ~live
    declared = target.caps.lse_empty
    if bool(dead.any()):
        values = sorted({str(float(x)) for x in lse[dead].tolist()})
        observe(target, "lse of rows without keys", ", ".join(values))
        check(
            declared == "any" or bool((lse[dead] == float(declared)).all()),
            f"rows with no admissible key return lse {', '.join(values)}; the declared value is {declared} "
            f"(--cap lse_empty=...): {p.format()}",
            None,
        )


def judge_empty_rows(target: Target, out: Tensor, live: Tensor, p: _EntryProblem, rows: Tensor) -> None:
    """Observe what the rows of real queries with no admissible key return (``rows`` (..., Hq, 1): the rows that
    are queries, not padding) and fail only against a convention the target declared (docs/bugs.md #1)."""
    dead = (rows & ~live).squeeze(-1)  # (..., Hq)
    if not bool(dead.any()):
        return
    found = out.detach().double().cpu()[dead]  # (n, Ev)
    nothing_seen = torch.full((found.size(0), 1, found.size(-1)), float("nan"), dtype=torch.float64)  # no keys
    convention = row_convention(found, nothing_seen, atol=4 * torch.finfo(out.dtype).eps)
    observe(target, "fully masked rows", convention)
    declared = target.caps.masked_rows
    check(
        declared is None or convention == declared,
        f"rows with no admissible key return {convention}, but the target declares {declared}",
        None,
    )
