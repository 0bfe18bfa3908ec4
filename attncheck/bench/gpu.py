"""The GPU run in one command: conformance of the GPU attention implementations and a GPU baseline of the quick grid.

    scripts/gpu-run.sh [OUT_DIR]                          # installs attncheck --no-deps, then runs this
    python -m attncheck.bench.gpu --out OUT_DIR [--budget 480] [--dry-run]

On a CUDA machine that already has PyTorch, Triton and JAX, and no network (nothing is downloaded), it runs, each
step a separate ``attncheck`` process with its own time limit (a crash or a hang costs that step only):

1. ``attncheck verify`` of torch SDPA forced to each CUDA backend (flash, memory-efficient, cuDNN, math:
   :data:`TARGETS`, ``attncheck.bench.gpu:sdpa_flash``...), ``--device cuda``;
2. FlexAttention compiled with Triton (``flex_compiled``: dense, window, softcap, lse) and over packed
   sequences with the document mask (``flex_varlen_compiled``), ``--device cuda``;
3. JAX on the GPU, its XLA and cuDNN implementations (``jax_xla``, ``jax_cudnn``);
4. ``attncheck bench run`` of the SDPA backends, then of compiled FlexAttention, on the quick grid (bfloat16 and
   float16, forward and forward + backward, ``--device cuda``): medians, GFLOP/s, the same-run roofline fraction.

Into OUT_DIR: each step's JSON and HTML report and log, ``environment.json`` (versions, GPU), and ``summary.md``
(the conformance matrix, the baseline table, each step's status and time). Exit 0 when every step ran to its end
(a FAILED property is a finding, not a failure of the run), 1 when a step crashed or ran out of time, 2 usage.

The time budget (default 480 s: 8 minutes, a short slot on a borrowed H100 or H200) is shared out by each step's
weight; a step gets the time its weight entitles it to, plus what earlier steps left unused. A step out of time
is interrupted as by Ctrl-C (``bench run`` keeps the cases it finished), then killed 20 s later.

``--dry-run`` (or a machine without CUDA) runs the plan with every CUDA step skipped, with its reason, and
CPU stand-ins for the two kinds of step (a one-check verify of ``reference`` and a one-case ``bench run`` of
``torch-sdpa``), so that the driver, the reports and the summary are exercised anywhere
(``tests/test_bench_gpu_run.py``).

The targets are the built-in adapters run another way, declared here (conservatively: what
``torch.backends.cuda``'s dispatch constraints and the libraries' documentation promise), not new adapters.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HALF = ("float16", "bfloat16")
HERE = "attncheck.bench.gpu"
GRACE_S = 20.0  # seconds a step has to write what it finished after its time is up (SIGINT), before SIGKILL


# --- the targets ------------------------------------------------------------------------------------------------


def recompile_limit_name(config: Any) -> str:
    """The name of dynamo's limit of compiled graphs per function: ``recompile_limit`` in current torch,
    ``cache_size_limit`` in older ones (now a deprecated alias)."""
    return "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"


def _sdpa(backend: str, **caps: Any) -> Any:
    """torch SDPA forced to ``SDPBackend.<backend>`` (the built-in adapter's forcing), declared for CUDA."""
    import torch

    from attncheck.adapters import require_cuda
    from attncheck.adapters.pytorch import _sdpa_backend
    from attncheck.properties.contract import Capabilities, Target

    require_cuda(f"torch SDPA {backend}")
    forced = _sdpa_backend(backend, Capabilities(devices=("cuda",), **caps))
    name = forced.name + "-cuda"
    description = f"{forced.description} on {torch.cuda.get_device_name()}"
    return Target(name, forced.fn, forced.caps, description, device="cuda")


# The fused CUDA kernels' documented limits (torch's sdp_utils checks), declared so that a refusal ("No available
# kernel") is not read as a failure: a contiguous last dimension (like the CPU flash kernel: strided inputs only
# transposed or expanded), no enable_gqa (not every backend has it in every torch release), Ev == E.
FUSED = {"strided_inputs": ("transposed", "expanded"), "gqa": False, "value_dim": False}


def _sdpa_flash() -> Any:
    # FlashAttention 2 inside torch: half types only, no attn_mask
    return _sdpa("FLASH_ATTENTION", dtypes=HALF, masks=frozenset(), dropout="inverted", **FUSED)


def _sdpa_efficient() -> Any:
    # xformers' memory-efficient kernel: float32 and half types, float and bool masks
    return _sdpa("EFFICIENT_ATTENTION", dtypes=("float32", *HALF), dropout="inverted", **FUSED)


def _sdpa_cudnn() -> Any:
    # cuDNN's fused attention: half types; masks and dropout left undeclared (conservative)
    return _sdpa("CUDNN_ATTENTION", dtypes=HALF, masks=frozenset(), **FUSED)


def _sdpa_math() -> Any:
    return _sdpa("MATH", dropout="inverted")


def _compiled_flex(factory: Any, name: str) -> Any:
    """A built-in FlexAttention adapter built with ``flex_attention`` compiled by ``torch.compile`` (Triton
    kernels on CUDA, as FlexAttention is meant to run), differentiable, on CUDA."""
    import torch
    import torch.nn.attention.flex_attention as flex

    from attncheck.adapters import require_cuda
    from attncheck.properties.contract import Target

    require_cuda(name)
    # one compiled graph per shape and mask: past dynamo's recompile limit (8) it would fall back to eager, silently
    config, limit = torch._dynamo.config, recompile_limit_name(torch._dynamo.config)
    setattr(config, limit, max(getattr(config, limit), 256))
    eager = flex.flex_attention
    # torch.compile(flex_attention), as the FlexAttention documentation compiles it (dynamic shapes after the first
    # recompilation), put where the adapter imports it from while it is built
    flex.flex_attention = torch.compile(eager)  # type: ignore[assignment]
    try:
        built = factory()
    finally:
        flex.flex_attention = eager
    caps = built.caps.replace(devices=("cuda",), grad=True, dtypes=("float32", *HALF))
    description = f"{built.description}, compiled (torch.compile, Triton) on {torch.cuda.get_device_name()}"
    return Target(name, built.fn, caps, description, device="cuda")


def _flex_compiled() -> Any:
    from attncheck.adapters.pytorch import flex_attention_target

    return _compiled_flex(flex_attention_target, "flex-attention-compiled")


def _flex_varlen_compiled() -> Any:
    from attncheck.adapters.entries import flex_varlen_target

    return _compiled_flex(flex_varlen_target, "flex-varlen-compiled")


def _jax(implementation: str) -> Any:
    """The built-in ``jax`` adapter with ``jax.nn.dot_product_attention(implementation=...)`` on JAX's GPU backend
    (tensors cross through numpy on the host, as in the built-in)."""
    from attncheck.adapters.jax import _import_jax, jax_target
    from attncheck.errors import TargetUnavailable
    from attncheck.properties.contract import Target

    jax = _import_jax()  # TargetUnavailable without JAX
    if jax.default_backend() != "gpu":
        raise TargetUnavailable(f"JAX's default backend is {jax.default_backend()}, not gpu")
    library = jax.nn.dot_product_attention
    jax.nn.dot_product_attention = functools.partial(library, implementation=implementation)
    try:
        built = jax_target()
    finally:
        jax.nn.dot_product_attention = library
    dtypes = HALF if implementation == "cudnn" else ("float32", *HALF)  # cuDNN: half types only
    caps = built.caps.replace(dtypes=dtypes)
    if implementation == "cudnn":  # cuDNN's kernel: no boolean or float mask beyond causal (conservative)
        caps = caps.replace(masks=frozenset())
    return Target(f"jax-{implementation}", built.fn, caps, f"{built.description}, implementation={implementation!r}")


def _jax_xla() -> Any:
    return _jax("xla")


def _jax_cudnn() -> Any:
    return _jax("cudnn")


TARGETS = {
    "sdpa_flash": _sdpa_flash,
    "sdpa_efficient": _sdpa_efficient,
    "sdpa_cudnn": _sdpa_cudnn,
    "sdpa_math": _sdpa_math,
    "flex_compiled": _flex_compiled,
    "flex_varlen_compiled": _flex_varlen_compiled,
    "jax_xla": _jax_xla,
    "jax_cudnn": _jax_cudnn,
}


def __getattr__(name: str) -> Any:
    """``attncheck.bench.gpu:sdpa_flash`` and the others: each a :class:`Target`, built when it is named
    (PEP 562), so that importing this module needs no GPU (TargetUnavailable without one)."""
    if name in TARGETS:
        return TARGETS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *TARGETS]


# --- the plan ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One ``attncheck`` process of the run."""

    name: str
    argv: tuple[str, ...]  # after ``attncheck``; {out} is the output folder
    weight: float  # share of the time budget
    cuda: bool = True  # needs CUDA (skipped, with the reason, without it)


def _verify(name: str, targets: Sequence[str], device: str, weight: float, *extra: str) -> Step:
    """``attncheck verify`` of ``targets``: JSON, HTML and markdown reports; 10 examples per check (the budget)."""
    argv = ("verify", *targets, "--device", device, "--profile", "ci", "--timeout", "30", *extra)
    argv += () if "--max-examples" in extra else ("--max-examples", "10")  # the budget: 10 examples per check
    argv += ("--json", f"{{out}}/{name}.json", "--html", f"{{out}}/{name}.html", "--markdown", f"{{out}}/{name}.md")
    return Step(name, argv, weight, cuda=device == "cuda" or "jax" in name)


def _bench(name: str, targets: Sequence[str], weight: float, *extra: str, cuda: bool = True) -> Step:
    argv = ("bench", "run", *targets, *extra, "--json", f"{{out}}/{name}.json", "--html", f"{{out}}/{name}.html")
    return Step(name, argv, weight, cuda)


SDPA = tuple(f"{HERE}:sdpa_{b}" for b in ("flash", "efficient", "cudnn", "math"))
FLEX = (f"{HERE}:flex_compiled",)
PLAN = (
    _verify("verify-sdpa", SDPA, "cuda", 3),
    # 3 examples a check: every new shape compiles (seconds each), and a verify out of time reports nothing
    _verify("verify-flex", (*FLEX, f"{HERE}:flex_varlen_compiled"), "cuda", 3, "--max-examples", "3"),
    _verify("verify-jax", (f"{HERE}:jax_xla", f"{HERE}:jax_cudnn"), "cpu", 2),  # torch tensors on the host
    _bench("bench-gpu-quick", SDPA, 3, "--device", "cuda", "--size", "quick"),
    # last and apart: one compilation per shape, mask, dtype and pass; out of time, it keeps the cases it finished
    _bench("bench-gpu-quick-flex", FLEX, 2, "--device", "cuda", "--size", "quick"),
)
# Without CUDA: the same two kinds of step on the CPU, small, so that the driver's whole path runs.
STAND_INS = (
    _verify("verify-cpu-stand-in", ("reference",), "cpu", 1, "--property", "matches_oracle", "--max-examples", "2"),
    _bench("bench-cpu-stand-in", ("torch-sdpa",), 1, "--cases", "cpu-float32-fwd-causal-B4H8L128D64", cuda=False),
)


@dataclass
class Outcome:
    step: Step
    status: str  # ok, exit N, timed out after S s, skipped: why
    seconds: float = 0.0


def environment() -> dict[str, Any]:
    """What the run ran on: versions of the libraries (None where absent) and the GPU."""
    import torch

    found: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("triton", "jax", "jaxlib"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = None
    cuda = torch.cuda.is_available()
    found["cuda"] = torch.version.cuda if cuda else None
    found["gpu"] = torch.cuda.get_device_name(0) if cuda else None
    found["cudnn"] = torch.backends.cudnn.version() if cuda else None
    return found


def run_step(step: Step, out: Path, seconds: float) -> Outcome:
    """Run one step in its own process, its output into ``out/<name>.log``. After ``seconds`` it is interrupted
    as by Ctrl-C (``bench run`` then writes the cases that finished), and killed :data:`GRACE_S` later."""
    argv = [sys.executable, "-m", "attncheck", *(a.format(out=out) for a in step.argv)]
    start = time.monotonic()
    with open(out / f"{step.name}.log", "w", encoding="utf-8") as log:
        log.write(" ".join(argv[2:]) + "\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return Outcome(step, f"timed out after {seconds:.0f} s", time.monotonic() - start)
    elapsed = time.monotonic() - start
    # verify exits 1 when a property failed: a finding of the run, which reached its end
    ran = code == 0 or (code == 1 and step.argv[0] == "verify")
    return Outcome(step, "ok" if ran else f"exit {code}", elapsed)


def summary(out: Path, env: dict[str, Any], outcomes: list[Outcome], budget: float) -> str:
    """``summary.md``: the environment, each step's status, the conformance matrices and the baseline table."""
    from attncheck.bench.report import COLUMNS, rows_of

    lines = ["# attncheck GPU run", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    lines += ["", f"Time budget {budget:.0f} s.", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {o.step.name} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    for o in outcomes:
        matrix = out / f"{o.step.name}.md"
        if matrix.is_file():
            lines += ["", f"## {o.step.name}", "", matrix.read_text().strip()]
        run = out / f"{o.step.name}.json"
        if o.step.argv[0] == "bench" and run.is_file():
            rows = rows_of(json.loads(run.read_text()))
            lines += ["", f"## {o.step.name}", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attncheck.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--budget", type=float, default=480.0, metavar="S", help="seconds for the whole run (480)")
    parser.add_argument("--dry-run", action="store_true", help="skip the CUDA steps; run the CPU stand-ins")
    args = parser.parse_args(argv)
    from attncheck.errors import UsageError
    from attncheck.render import check_writable, write_atomic

    try:
        check_writable("--out", args.out, directory=True)
    except UsageError as exc:
        print(f"attncheck: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    env = environment()
    write_atomic(args.out / "environment.json", (json.dumps(env, indent=2) + "\n").encode())
    no_cuda = "dry run" if args.dry_run else None if env["gpu"] else "CUDA is not available here"
    steps = [*PLAN, *(STAND_INS if no_cuda else ())]
    outcomes: list[Outcome] = []
    for step in steps:
        if step.cuda and no_cuda:
            outcomes.append(Outcome(step, f"skipped: {no_cuda}"))
            print(f"{step.name}: skipped ({no_cuda})", flush=True)
            continue
        left = deadline - time.monotonic()
        if left < 5:
            outcomes.append(Outcome(step, "skipped: the time budget is spent"))
            continue
        remaining = sum(s.weight for s in steps[steps.index(step) :] if not (s.cuda and no_cuda))
        outcome = run_step(step, args.out, left * step.weight / remaining)
        outcomes.append(outcome)
        print(f"{step.name}: {outcome.status} ({outcome.seconds:.0f} s)", flush=True)
    write_atomic(args.out / "summary.md", summary(args.out, env, outcomes, args.budget).encode())
    print(f"summary written to {args.out / 'summary.md'}")
    failed = [o for o in outcomes if not (o.status == "ok" or o.status.startswith("skipped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
