"""The attention benchmark grid as an engine: which cases a target's declaration supports, and the call of each.

Shared by the pytest benchmarks (``benchmarks/test_attention.py``), ``attncheck bench run`` (which runs them) and
``attncheck bench ab`` (which times two targets case by case in one process), so that none of them imports a test
module and all three drop a case for one reason, printed.

A case is one cell of the grid: device x dtype x pass (fwd, fwd+bwd) x mask (noncausal, causal, window, softcap)
x shape (:mod:`attncheck.bench.workloads`). Every grid shape has L = S (self-attention), where the top-left
and bottom-right causal alignments are the same mask, so a causal case runs for every target with an
``is_causal`` whatever its declared alignment; a target declared ``causal="always"`` (causal without a flag) runs
the causal cases with no flag and none of the non-causal ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attncheck.bench.workloads import DTYPES, MASKS, PASSES, SIZES, SOFTCAP, Shape, synchronizer, window_of
from attncheck.properties.contract import Capabilities, Target


@dataclass(frozen=True)
class Case:
    """One cell of the attention benchmark grid."""

    device: str
    dtype: str
    pass_: str
    mask: str
    shape: Shape

    @property
    def id(self) -> str:
        return "-".join((self.device, self.dtype, self.pass_, self.mask, self.shape.id))

    @property
    def backward(self) -> bool:
        return self.pass_ == "fwdbwd"


def grid(size: str, devices: tuple[str, ...]) -> list[Case]:
    """Every case of the ``size`` grid on ``devices`` (the dtypes of each device: :data:`workloads.DTYPES`)."""
    return [
        Case(device, dtype, pass_, mask, shape)
        for device in devices
        for dtype in DTYPES[device]
        for pass_ in PASSES
        for mask in MASKS
        for shape in SIZES[size].shapes
    ]


def split(targets: list[Target], cases: list[Case]) -> tuple[list[Case], list[tuple[Case, str]]]:
    """The cases every target supports, and each other case with the first target's reason to drop it."""
    kept, dropped = [], []
    for case in cases:
        reasons = [
            f"{t.name}: {why}"
            for t in targets
            if (why := unsupported(t.caps, case.device, case.dtype, case.pass_, case.mask))
        ]
        if reasons:
            dropped.append((case, reasons[0]))
        else:
            kept.append(case)
    return kept, dropped


def unsupported(caps: Capabilities, device: str, dtype: str, pass_: str, mask: str) -> str | None:
    """Why a target's declared capabilities exclude this case, or None (every grid shape has L = S)."""
    if caps.entry != "dense":
        return f"a {caps.entry} target (benchmarked by benchmarks/test_entries.py)"
    if device not in caps.devices:
        return f"target does not run on {device} (declared devices {caps.devices})"
    if dtype not in caps.dtypes:
        return f"target does not accept {dtype} (declared dtypes {caps.dtypes})"
    if mask in ("causal", "window") and caps.causal is None:
        return "target has no is_causal (declared causal=none)"
    if mask in ("noncausal", "softcap") and caps.causal == "always":
        return "target is always causal (declared causal=always)"
    if mask in ("window", "softcap") and mask not in caps.features:
        return f"target does not declare the {mask} feature"
    if pass_ == "fwdbwd" and not caps.grad:
        return "target is not differentiable (declared grad=False)"
    return None


def make_call(
    target: Target,
    device: str,
    dtype: torch.dtype,
    backward: bool,
    mask: str,
    shape: Shape,
    *,
    synchronize: bool = True,
) -> Callable:
    """A zero-argument callable that runs one call of ``target.fn`` (and its backward) on fixed inputs, with the
    mask case's keyword arguments (is_causal, window, softcap) under the target's own names and conventions, and
    returns what the call produced (the output, or the gradients) once the device has finished it
    (``synchronize=False``: as soon as the call returns, for :func:`attncheck.bench.devicetime.leftover_work`).

    The inputs are created in the target's own layout (BLHD targets get contiguous (B, L, H, D) tensors), so no
    transpose is timed. The forward pass runs without autograd (inputs do not require grad); the backward pass
    uses ``torch.autograd.grad`` (no accumulation into ``.grad``).
    """
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape.B, shape.H, shape.L, shape.D, generator=gen) for _ in range(3))  # (B, H, L, D)
    if target.caps.layout == "BLHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # (B, H, L, D) -> (B, L, H, D)
    q, k, v = (t.to(device, dtype).requires_grad_(backward) for t in (q, k, v))
    given: dict[str, Any] = {}
    if mask in ("causal", "window") and target.caps.causal != "always":
        given["is_causal"] = True
    if mask == "window":
        left, right = window_of(shape)
        given["window"] = (left + 1 if target.caps.window_counts_self else left, right)  # as Target translates it
    if mask == "softcap":
        given["softcap"] = SOFTCAP
    kwargs = {target.caps.arg_names.get(arg, arg): value for arg, value in given.items()}
    sync = synchronizer(device if synchronize else "cpu")  # the CPU's synchroniser does nothing

    def forward() -> Tensor:
        out = target.fn(q, k, v, **kwargs)
        return out[0] if isinstance(out, tuple | list) else out  # (output, weights) or (output, lse)

    if not backward:

        def call() -> Tensor:
            out = forward()
            sync()
            return out

        return call
    grad_out = torch.randn(forward().shape, generator=gen).to(device, dtype)  # same layout as the output

    def call_backward() -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(forward(), (q, k, v), grad_out)
        sync()
        return grads

    return call_backward


def calibrate(call: Callable[[], Any], round_time: float) -> int:
    """Iterations per round so that a round lasts at least ``round_time`` (from one warm call)."""
    call()  # warm-up: first-call allocations, kernel selection, lazy initialisation
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    return max(1, math.ceil(round_time / once))
