"""integrity: a target cannot pass by gaming the checks (generated kernels' exploits, docs/design.md, "Integrity").

KernelBench-style correctness gates (a few ``allclose`` calls on one fixed shape) are gamed by search loops and
language models: kernels that return views of their inputs, write into them, cache outputs keyed by pointers,
shapes or a few entries, return lazy or unfinished tensors, read memory they never wrote, or keep working on a
background thread (KernelBench's ``eval.py`` and its adversarial kernels, Sakana's "AI CUDA Engineer"
post-mortem, robust-kbench). Each check closes one such door and names the exploit class in its message:

* the output shares storage with no input (storage ranges, not only ``data_ptr``: a view at an offset counts);
* every input is bitwise unchanged after the call, with and without ``requires_grad``, under ``torch.no_grad()``
  and under ``torch.inference_mode()``;
* buffers refilled in place A, B, A never return an earlier call's right answer to other data, where B is a new draw or
  differs from A only in its last value row (pointer-, shape- and fingerprint-keyed caches);
* the output is a plain dense ``torch.Tensor`` (no subclass, no lazy value) and complete when returned (read,
  let time pass, read again), and the call leaves no new Python thread running;
* no uninitialised memory reaches the output: the call runs once with ``torch.empty`` filled with NaN
  (``torch.utils.deterministic.fill_uninitialized_memory`` under deterministic algorithms) and once after freed
  blocks of the output's size were filled with a finite pattern; live rows the oracle does not confirm must agree
  between the two calls, and rows with no admissible key must be bitwise the same on both calls (a convention, not
  whatever memory held).

Each check claims its exploit only on the exploit's signature (an earlier call's answer, an answer that depends on
what memory held): a kernel that is simply wrong is matches_oracle's finding, never called a cheat here.

batch_invariance (declared ``batch_invariant=True``): a row's output is bitwise the same computed alone, inside a
batch, and beside sequences of other lengths (key padding); undeclared, whether it holds is observed and reported.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from attncheck.errors import PropertyFailure
from attncheck.properties.catalog import prop
from attncheck.properties.checks import assert_close, assert_identical, check, live_rows, observe, require
from attncheck.properties.contract import Target
from attncheck.properties.oracle import Budget, expect
from attncheck.properties.problems import PRECISE, Problem, problems

SETTLE_S = 0.05  # how long the output is left alone before it is read again (work finished after return)
POISON = 1234.5  # the finite pattern written into freed blocks before the second call (exactly representable)


def _draw(target: Target, data: st.DataObject, **kwargs: object) -> Problem:
    return data.draw(problems(target.caps, dtypes=PRECISE, max_len=33, **kwargs), label="problem")  # type: ignore[arg-type]


def _inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
    named = {"query": q, "key": k, "value": v}
    return named if mask is None else {**named, "attn_mask": mask}


def _span(t: Tensor) -> tuple[int, int]:
    """[first byte, past the last byte) of the storage ``t`` is a view of."""
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _reference(target: Target, p: Problem, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, ...]:
    """(float64 oracle output, budget, live rows (B, Hq, L, 1)) of the call ``p`` makes with these tensors."""
    align = target.caps.alignment
    ref, tol = expect(q, k, v, mask, align, target.precision(q.dtype), is_causal=p.is_causal, scale=p.scale)
    return ref, tol, live_rows(p, mask, align)  # type: ignore[return-value]


@prop("integrity")
@given(data=st.data(), one_key=st.booleans())
def test_output_shares_no_storage(target: Target, data: st.DataObject, one_key: bool) -> None:
    """The output's storage overlaps no input's (query, key, value, mask), also with one key (output = V)."""
    p = _draw(target, data)
    if one_key:  # softmax over one key is 1: out = V, the case where returning value.expand(...) is right
        p = p.replace(S=1, L=1 if target.caps.lengths != "any" else p.L)
    q, k, v, mask = p.tensors(target.device)
    out = target(q, k, v, **p.call_kwargs(mask))
    start, end = _span(out)
    for name, x in _inputs(q, k, v, mask).items():
        lo, hi = _span(x)
        check(
            out.numel() == 0 or x.numel() == 0 or end <= lo or hi <= start,
            f"exploit class 'output aliases an input': the output's storage [{start:#x}, {end:#x}) overlaps "
            f"{name}'s [{lo:#x}, {hi:#x}) (a view of, or a write into, the caller's tensor)",
            p,
        )


def _modes(grad: bool) -> Iterator[tuple[str, bool, contextlib.AbstractContextManager[object]]]:
    """(name, inputs require grad, context) of every autograd mode a caller may use."""
    if grad:
        yield "with requires_grad inputs", True, contextlib.nullcontext()
    yield "without requires_grad", False, contextlib.nullcontext()
    yield "under torch.no_grad()", False, torch.no_grad()
    yield "under torch.inference_mode()", False, torch.inference_mode()


@prop("integrity")
@given(data=st.data())
def test_inputs_unchanged_in_every_grad_mode(target: Target, data: st.DataObject) -> None:
    """Inputs bitwise unchanged after the call with and without grad, under no_grad and inference_mode."""
    p = _draw(target, data)
    q, k, v, mask = p.tensors(target.device)
    for mode, grad, context in _modes(target.caps.grad):
        given = {
            name: x.detach().clone().requires_grad_(grad and name != "attn_mask")
            for name, x in _inputs(q, k, v, mask).items()
        }
        before = {name: x.detach().clone() for name, x in given.items()}
        with context:
            target(given["query"], given["key"], given["value"], **p.call_kwargs(given.get("attn_mask")))
        for name, x in given.items():
            assert_identical(
                x.detach(),
                before[name],
                f"exploit class 'writes into its inputs' ({mode}): {name} after the call vs before",
                p,
            )


@prop("integrity")
@given(data=st.data())
def test_refilled_buffers_give_the_new_answer(target: Target, data: st.DataObject) -> None:
    """A, B, A refilled in place into the same buffers: no call returns an earlier call's answer to other data. B
    is a new draw (pointer- and shape-keyed caches) or A with its last value row changed (caches keyed on a few
    entries)."""
    p = _draw(target, data)
    fingerprint = data.draw(st.booleans(), label="B differs from A only in its last value row")
    a = p.tensors(target.device)
    if fingerprint:
        v_b = a[2].clone()
        v_b[..., -1, :] = -2.0 * v_b[..., -1, :] + 1.0  # (B, Hkv, S, Ev): only key S-1's value changes
        b = (a[0], a[1], v_b, a[3])
    else:
        b = p.replace(seed=p.seed + 1).tensors(target.device)
    q, k, v = (x.clone() for x in a[:3])  # the caller's fixed buffers
    mask = None if a[3] is None else a[3].clone()
    answers: list[tuple[str, Tensor, Tensor]] = []  # (call, its output, its oracle)
    for label, data_in in (("A", a), ("B", b), ("A again", a)):
        for buf, x in zip((q, k, v, mask), data_in, strict=True):
            if buf is not None and x is not None:
                buf.copy_(x)  # in place: same pointer, same shape, new content
        out = target(q, k, v, **p.call_kwargs(mask)).detach().clone()
        ref, tol, live = _reference(target, p, *data_in)
        where = live.to(out.device)
        # The exploit's signature: a wrong answer that is an earlier call's right answer to other data. A kernel
        # that is wrong anyway (it ignores the changed row, or every answer is off) is matches_oracle's finding.
        if not _close(out, ref, tol, where):  # type: ignore[arg-type]
            earlier = next(
                (
                    name
                    for name, old_out, old_ref in answers
                    if _close(out, old_out, tol, where)  # type: ignore[arg-type]
                    and _close(old_out, old_ref, tol, where)  # type: ignore[arg-type]
                    and not _close(ref, old_ref, tol, where)  # type: ignore[arg-type]
                ),
                None,
            )
            check(
                earlier is None,
                f"exploit class 'stale cache' (pointer-, shape- or content-keyed): call {label} on buffers refilled "
                f"in place{' (B = A with its last value row changed)' if fingerprint else ''} returned call "
                f"{earlier}'s answer, not its own data's (float64 oracle)",
                p,
            )
        answers.append((label, out, ref))


def _close(got: Tensor, expected: Tensor, tol: Budget, where: Tensor) -> bool:
    """Whether ``got`` is within ``tol`` of ``expected`` on ``where`` (assert_close's rule, as a question)."""
    try:
        assert_close(got, expected, tol, "", None, where=where)
    except PropertyFailure:
        return False
    return True


@prop("integrity")
@given(data=st.data())
def test_output_plain_complete_no_threads(target: Target, data: st.DataObject) -> None:
    """The output is a plain dense torch.Tensor, unchanged when read again after a pause, and the call leaves
    no new Python thread running."""
    p = _draw(target, data)
    q, k, v, mask = p.tensors(target.device)
    before = set(threading.enumerate())
    out = target(q, k, v, **p.call_kwargs(mask))
    first = out.detach().clone()
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    check(
        type(out) is Tensor and out.layout == torch.strided and not out.is_meta,
        f"exploit class 'lazy or non-dense output': the output is a {type(out).__module__}.{type(out).__name__} "
        f"with layout {out.layout}, not a plain dense torch.Tensor",
        p,
    )
    check(
        not left,
        f"exploit class 'work left running after return': the call left {len(left)} new thread(s) running: {left}",
        p,
    )
    time.sleep(SETTLE_S)
    assert_identical(
        out.detach(),
        first,
        f"exploit class 'output finished after return': the output read {SETTLE_S:g} s later vs when returned",
        p,
    )


@contextlib.contextmanager
def _empty_is_nan() -> Iterator[None]:
    """torch.empty filled with NaN for the duration (deterministic algorithms' fill_uninitialized_memory)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)  # only to fill: no op may fail for lack of one
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]


def _poison_freed(like: Tensor) -> None:
    """Allocate blocks of ``like``'s size filled with POISON and free them: an allocation of that size that is
    never written then reads POISON (or other stale data), not the zeros of fresh pages."""
    blocks = [torch.full_like(like, POISON) for _ in range(4)]
    del blocks


@prop("integrity")
@given(data=st.data())
def test_no_uninitialised_memory_in_the_output(target: Target, data: st.DataObject) -> None:
    """Live rows do not depend on what unwritten memory holds (NaN from torch.empty, or a finite pattern in freed
    blocks) unless both calls match the oracle; rows with no admissible key are bitwise the same on both."""
    p = _draw(target, data, masked_rows=True)
    q, k, v, mask = p.tensors(target.device)
    ref, tol, live = _reference(target, p, q, k, v, mask)
    with _empty_is_nan():
        first = target(q, k, v, **p.call_kwargs(mask)).detach().clone()
    _poison_freed(first)
    second = target(q, k, v, **p.call_kwargs(mask)).detach().clone()
    where = live.to(first.device)
    # The exploit's signature: live rows that depend on what unwritten memory holds. Two calls that agree, both
    # wrong, are a wrong answer (matches_oracle's finding), not this exploit.
    if not _close(first, ref, tol, where):  # type: ignore[arg-type]
        assert_close(
            first,
            second,
            tol,  # type: ignore[arg-type]
            "exploit class 'uninitialised memory': live rows with torch.empty filled with NaN vs the same call with "
            f"freed blocks holding {POISON} (the oracle agrees with neither)",
            p,
            where=where,
        )
    dead = ~live.squeeze(-1).to(first.device)  # (B, Hq, L)
    assert_identical(
        second[dead],
        first[dead],
        "exploit class 'uninitialised memory': rows with no admissible key return what memory held (call with "
        f"freed blocks holding {POISON} vs call with torch.empty holding NaN)",
        p,
    )


# ---------------------------------------------------------------------------------------------------------------
# batch_invariance


@prop("batch_invariance")
@given(data=st.data())
def test_row_bitwise_same_alone_and_in_a_batch(target: Target, data: st.DataObject) -> None:
    """Batch element 0 alone, inside the batch, and beside sequences of other lengths (a key-padding mask) gives
    bitwise the same output. Judged where the target declares batch_invariant; observed otherwise."""
    caps = target.caps
    p = _draw(target, data, masks=("none",), causal=False)
    p = p.replace(B=max(p.B, 2) + data.draw(st.integers(0, 3), label="extra batch"))
    q, k, v, _ = p.tensors(target.device)
    alone = target(q[:1].clone(), k[:1].clone(), v[:1].clone(), **p.call_kwargs(None))
    batched = target(q, k, v, **p.call_kwargs(None))
    pairs = [(f"inside a batch of {p.B}", batched[:1], alone)]
    if "bool" in caps.masks and "key_padding" in caps.mask_shapes:  # the others padded to other lengths
        lengths = torch.randint(1, p.S + 1, (p.B,), generator=torch.Generator().manual_seed(p.seed))
        lengths[0] = p.S  # element 0 keeps all its keys
        padding = (torch.arange(p.S) < lengths[:, None]).view(p.B, 1, 1, p.S).to(target.device)  # (B, 1, 1, S)
        padded = p.replace(mask="bool", mask_shape="B11S")
        alone_masked = target(q[:1].clone(), k[:1].clone(), v[:1].clone(), **padded.call_kwargs(padding[:1]))
        beside = target(q, k, v, **padded.call_kwargs(padding))
        pairs.append(("beside sequences of other lengths (key padding)", beside[:1], alone_masked))
    held = all(torch.equal(got.nan_to_num(1.5), own.nan_to_num(1.5)) for _, got, own in pairs)
    if not caps.batch_invariant:
        observe(target, "batch invariant", "yes" if held else "no (outputs differ alone vs in a batch)")
        require(False, "batch invariance observed, not declared (declare --cap batch_invariant=yes to judge it)")
    for where, got, own in pairs:
        assert_identical(got, own, f"declared batch_invariant: batch element 0 {where} vs computed alone", p)
