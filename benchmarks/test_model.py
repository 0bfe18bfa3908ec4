"""Benchmarks of the reference Transformer with a target as its attention: a training step, greedy decoding with
and without the key/value cache, and the share of each layer's time spent in attention.

    python -m pytest benchmarks/test_model.py [--bench-size quick|full] [--bench-threads 1] --benchmark-json run.json

The model is :func:`attncheck.reference.model.make_model` in float32 with the target as the attention of every
``MultiHeadedAttention`` (``TransformerConfig.attention``, as the ``model`` property plugs a target in). It is
given ``target.fn`` itself, not ``Target.__call__``, whose per-call watchdog thread would be timed 3N times a
forward pass; so a target runs here when its function takes the model's call as it is, in the SDPA convention:
BHLD tensors, L != S, a boolean ``attn_mask`` of shapes (B, 1, 1, S) and (B or 1, 1, L, S), ``dropout_p``
(:func:`unsupported`). Others are skipped with the reason. Targets: ``conftest.MODEL_TARGETS`` (reference,
torch-sdpa) or those of ``--bench-targets``; devices: cpu, and cuda when available (each timed call then ends
with ``torch.cuda.synchronize()``, and so does each timed attention call and layer of the attention share).

Models (:data:`MODELS`); iterations per round are calibrated as in ``test_attention.py``:

* ``copy``: the copy task's model (``train_copy_task``'s defaults): N = 2, d_model = 32, d_ff = 64, h = 4, a
  vocabulary of 11, no dropout; batches of 64 sequences of 10 tokens at both sizes;
* ``base``: the base model of Table 3 (``TransformerConfig``'s defaults: N = 6, d_model = 512, d_ff = 2048, h = 8,
  dropout 0.1) with one 37000-token vocabulary shared by both embeddings and the generator (sections 3.4 and 5.1),
  63,119,496 parameters; short sequences: 2 sequences of 16 tokens (quick), 8 of 64 (full).

Sequences are the copy task's (``copy_batch``: START, then uniform symbols). A training step or forward pass reads
source tokens src (B, L) and the same sequence as the target: decoder input src[:, :-1], labels src[:, 1:].

* ``test_train_step``: one step in train mode (dropout on): forward with teacher forcing, the NLL loss, backward,
  and an Adam step (beta = (0.9, 0.98), eps = 1e-9: section 5.3; a constant rate, which does not change the time);
* ``test_forward``: one forward pass in eval mode without autograd (encoder, decoder, generator). Then
  :func:`attention_shares` times ``rounds`` more passes from the inside: a wrapper around each attention call and
  hooks around each layer. The attention is the target's function alone, eq. (1) over every head, not the
  projections W^Q, W^K, W^V, W^O around it. The backward pass's share is not measured;
* ``test_greedy_decode``: ``greedy_decode`` of the B sources into L tokens each (START, then L - 1 decoded; no
  early stop, so the work is fixed), by full recomputation (``full``) or with the key/value cache (``cached``).

``extra_info`` of every benchmark (units in the key names where there are units):

* ``target``, ``device``, ``dtype`` (float32), ``model`` (copy, base), ``N``, ``d_model``, ``d_ff``, ``h``,
  ``vocab``, ``params`` (parameter count), ``B`` (sequences), ``L`` (tokens per sequence), ``iterations`` (calls
  per round), ``timing`` (each round's CPU time and the calibration rounds around it:
  :mod:`attncheck.bench.timing`);
* ``test_train_step`` and ``test_forward``: ``tokens_per_s``: target tokens per second, B (L - 1) / median seconds;
* ``test_forward``: ``attention_share``: the median fraction of a forward pass spent in attention calls;
  ``attention_share_per_layer``: {"encoder.0": ..., "decoder.<N-1>": ...}, the median fraction of each layer's
  time spent in its attention calls (an encoder layer's self-attention; a decoder layer's masked self-attention
  and encoder-decoder attention); ``attention_calls``: attention calls per pass (3N); ``share_passes``: passes
  the medians are taken over;
* ``test_greedy_decode``: ``decoding`` (full, cached); ``new_tokens``: B (L - 1) tokens decoded per call;
  ``tokens_per_s``: new_tokens / median seconds; and, for ``cached`` only, ``cache_speedup``: median seconds of
  full / cached decoding (the ratio of medians, as ``attncheck bench compare``'s ratio), both timed in
  ``speedup_pairs`` alternating pairs after the benchmark, so that a busy machine's drift hits both alike, and
  ``full_tokens_per_s``: new_tokens / the full median of those pairs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attncheck.bench.cases import calibrate
from attncheck.bench.timing import timed_rounds
from attncheck.bench.workloads import synchronizer
from attncheck.errors import TargetUnavailable
from attncheck.properties.contract import Capabilities
from attncheck.reference.copy_task import PAD, START, copy_batch
from attncheck.reference.decoding import greedy_decode
from attncheck.reference.model import (
    DecoderLayer,
    EncoderDecoder,
    EncoderLayer,
    MultiHeadedAttention,
    TransformerConfig,
    make_model,
    padding_mask,
    target_mask,
)
from attncheck.targets import resolve


@dataclass(frozen=True)
class ModelCase:
    """A model and its workload at one ``--bench-size``."""

    config: TransformerConfig  # attention None: the target's function is plugged in per benchmark
    B: int  # sequences per batch
    L: int  # tokens per sequence (source, target, and decoded length)
    rounds: int  # timed rounds per benchmark (>= 5, the sample `attncheck bench compare` tests)
    round_time: float  # seconds: a round repeats the call until it lasts at least this long (calibrated once)


COPY = TransformerConfig(src_vocab=11, tgt_vocab=11, N=2, d_model=32, d_ff=64, h=4, dropout=0.0)
BASE = TransformerConfig(src_vocab=37000, tgt_vocab=37000, share_embeddings=True)  # Table 3 base, shared vocabulary
# quick: ~35 s per target on one thread of a 2-core machine (load ~2), most of it the base model's training step
# (0.7 to 0.9 s) and decoding (0.7 to 1 s a call, cached or full).
MODELS = {
    "quick": {"copy": ModelCase(COPY, 64, 10, rounds=10, round_time=0.05), "base": ModelCase(BASE, 2, 16, 5, 0.05)},
    "full": {"copy": ModelCase(COPY, 64, 10, rounds=20, round_time=0.1), "base": ModelCase(BASE, 8, 64, 10, 0.1)},
}


def unsupported(caps: Capabilities, device: str) -> str | None:
    """Why the model cannot call this target's function as it is (see the module docstring), or None."""
    if caps.entry != "dense":
        return f"a {caps.entry} target: the model calls a dense attention"
    if device not in caps.devices:
        return f"target does not run on {device} (declared devices {caps.devices})"
    if "float32" not in caps.dtypes:
        return f"target does not accept float32 (declared dtypes {caps.dtypes})"
    if caps.layout != "BHLD" or caps.unscaled or {"attn_mask", "dropout_p"} & set(caps.arg_names):
        return "the model calls target.fn in the SDPA convention; this one needs Target's layout, scale or names"
    if "bool" not in caps.masks or not {"full", "key_padding"} <= set(caps.mask_shapes):
        return "the model passes boolean masks of shapes (B, 1, 1, S) and (B, 1, L, S)"
    if caps.lengths == "equal" or caps.causal == "always":
        return f"the model calls with L != S and masks, no is_causal (lengths={caps.lengths}, causal={caps.causal})"
    if not caps.dropout:
        return "the model passes dropout_p (0 in eval mode); target declares no dropout"
    return None


@functools.cache
def _initial(model: str, target: str, device: str, size: str) -> EncoderDecoder:
    """The model with the target's attention, initialised from seed 0, built once a session (``make_model`` takes
    ~1 s for the base model's 63M parameters); every benchmark runs on a deep copy."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(MODELS[size][model].config, attention=resolve(target).fn)
    return make_model(cfg).to(device)


@pytest.fixture
def case(pytestconfig: pytest.Config, model: str) -> ModelCase:
    return MODELS[pytestconfig.getoption("--bench-size")][model]


@pytest.fixture
def transformer(pytestconfig: pytest.Config, model_target: str, device: str, model: str) -> EncoderDecoder:
    """A fresh copy of the model with ``model_target`` as its attention; skips targets it cannot call."""
    try:
        caps = resolve(model_target).caps
    except TargetUnavailable as exc:
        pytest.skip(f"{model_target} unavailable: {exc}")
    reason = unsupported(caps, device)
    if reason:
        pytest.skip(f"{model_target}: {reason}")
    return copy.deepcopy(_initial(model, model_target, device, pytestconfig.getoption("--bench-size")))


def batch(case: ModelCase, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """src (B, L), decoder input and labels (B, L - 1) each, src_mask (B, 1, 1, L), tgt_mask (B, 1, L - 1, L - 1)."""
    src = copy_batch(case.B, case.L, case.config.src_vocab, torch.Generator().manual_seed(0)).to(device)  # (B, L)
    tgt_in, tgt_out = src[:, :-1], src[:, 1:]  # (B, L) -> (B, L - 1) each: inputs and next tokens
    return src, tgt_in, tgt_out, padding_mask(src, PAD), target_mask(tgt_in, PAD)


def describe(
    benchmark: Any, kind: str, transformer: EncoderDecoder, case: ModelCase, target: str, device: str, model: str
) -> None:
    """The ``extra_info`` every model benchmark records; the group (``kind``, model, device) compares targets."""
    cfg = case.config
    benchmark.group = f"model-{kind}-{model}-{device}"
    benchmark.extra_info.update(
        target=target,
        device=device,
        dtype="float32",
        model=model,
        N=cfg.N,
        d_model=cfg.d_model,
        d_ff=cfg.d_ff,
        h=cfg.h,
        vocab=cfg.tgt_vocab,
        params=sum(p.numel() for p in transformer.parameters()),
        B=case.B,
        L=case.L,
    )


def measure(benchmark: Any, call: Callable[[], None], case: ModelCase, device: str) -> float:
    """Time ``call`` with ``benchmark.pedantic`` (calibrated iterations, ``case.rounds`` rounds); median seconds.

    Under ``--benchmark-disable`` it runs ``call`` once and returns NaN.
    """
    if benchmark.disabled:  # a smoke test: one call, nothing timed
        benchmark.pedantic(call)
        return float("nan")
    iterations = calibrate(call, case.round_time)  # its two calls are the warm-up
    benchmark.extra_info["iterations"] = iterations
    timed_rounds(benchmark, call, rounds=case.rounds, iterations=iterations, device=device, round_time=case.round_time)
    return float(benchmark.stats.stats.median)


@pytest.mark.parametrize("model", ("copy", "base"))
def test_train_step(
    benchmark: Any, transformer: EncoderDecoder, case: ModelCase, model_target: str, device: str, model: str
) -> None:
    if not resolve(model_target).caps.grad:
        pytest.skip(f"{model_target}: target is not differentiable (declared grad=False)")
    src, tgt_in, tgt_out, src_mask, tgt_mask = batch(case, device)
    transformer.train()
    optimizer = torch.optim.Adam(transformer.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)  # section 5.3
    sync = synchronizer(device)

    def step() -> None:
        log_probs = transformer.generator(transformer(src, tgt_in, src_mask, tgt_mask))  # (B, L - 1, vocab)
        log_probs = log_probs.flatten(0, 1)  # (B, L - 1, vocab) -> (B * (L - 1), vocab)
        loss = F.nll_loss(log_probs, tgt_out.flatten(), ignore_index=PAD)  # tgt_out (B, L - 1) -> (B * (L - 1),)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()

    describe(benchmark, "train", transformer, case, model_target, device, model)
    seconds = measure(benchmark, step, case, device)
    benchmark.extra_info["tokens_per_s"] = tgt_out.numel() / seconds


@dataclass
class LayerTimes:
    """What the instrumented forward passes of :func:`timed_layers` accumulate."""

    layer_s: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds in each layer
    attention_s: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds in its attention calls
    calls: int = 0  # attention calls

    def clear(self) -> None:
        self.layer_s.clear()
        self.attention_s.clear()
        self.calls = 0


@contextmanager
def timed_layers(transformer: EncoderDecoder, sync: Callable[[], None]) -> Iterator[LayerTimes]:
    """Inside: the :class:`LayerTimes` that every forward pass of ``transformer`` adds to.

    Each ``MultiHeadedAttention.attention_fn`` is wrapped in a timer and each encoder and decoder layer gets
    forward hooks that time it; layers are named ``encoder.i`` and ``decoder.i``. Both are removed on exit.
    """
    times = LayerTimes()
    started: dict[str, float] = {}
    handles, wrapped = [], []

    def layer_name(module_name: str) -> str:
        stack, _, index = module_name.split(".")[:3]  # "decoder.layers.3.src_attn" -> decoder, layers, 3
        return f"{stack}.{index}"

    def timer(fn: Callable[..., Tensor], name: str) -> Callable[..., Tensor]:
        def timed(*args: Any, **kwargs: Any) -> Tensor:
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            times.attention_s[name] = times.attention_s.get(name, 0.0) + time.perf_counter() - start
            times.calls += 1
            return out

        return timed

    def before(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            sync()
            started[name] = time.perf_counter()

        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            sync()
            times.layer_s[name] = times.layer_s.get(name, 0.0) + time.perf_counter() - started[name]

        return hook

    for module_name, module in transformer.named_modules():
        if isinstance(module, EncoderLayer | DecoderLayer):
            name = layer_name(module_name)
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        elif isinstance(module, MultiHeadedAttention) and module.attention_fn is not None:
            wrapped.append((module, module.attention_fn))
            module.attention_fn = timer(module.attention_fn, layer_name(module_name))
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()
        for module, fn in wrapped:
            module.attention_fn = fn


def attention_shares(
    transformer: EncoderDecoder, forward: Callable[[], None], passes: int, sync: Callable[[], None]
) -> tuple[float, dict[str, float], int]:
    """(median fraction of a forward pass spent in attention calls, median fraction of each layer's time, attention
    calls per pass) over ``passes`` instrumented passes of ``forward`` (:func:`timed_layers`)."""
    totals, per_layer, calls = [], [], set()
    with timed_layers(transformer, sync) as times:
        for _ in range(passes):
            times.clear()
            sync()
            start = time.perf_counter()
            forward()  # ends synchronised
            totals.append(sum(times.attention_s.values()) / (time.perf_counter() - start))
            per_layer.append({name: times.attention_s[name] / seconds for name, seconds in times.layer_s.items()})
            calls.add(times.calls)
    (count,) = calls  # the same every pass
    shares = {name: float(np.median([p[name] for p in per_layer])) for name in per_layer[0]}
    return float(np.median(totals)), shares, count


@pytest.mark.parametrize("model", ("copy", "base"))
def test_forward(
    benchmark: Any, transformer: EncoderDecoder, case: ModelCase, model_target: str, device: str, model: str
) -> None:
    src, tgt_in, _, src_mask, tgt_mask = batch(case, device)
    transformer.eval()
    sync = synchronizer(device)

    def forward() -> None:
        with torch.no_grad():
            transformer.generator(transformer(src, tgt_in, src_mask, tgt_mask))  # (B, L - 1, vocab)
        sync()

    describe(benchmark, "forward", transformer, case, model_target, device, model)
    seconds = measure(benchmark, forward, case, device)
    if benchmark.disabled:
        return
    share, per_layer, calls = attention_shares(transformer, forward, case.rounds, sync)
    benchmark.extra_info.update(
        tokens_per_s=tgt_in.numel() / seconds,
        attention_share=share,
        attention_share_per_layer=per_layer,
        attention_calls=calls,
        share_passes=case.rounds,
    )


def alternating_medians(calls: Sequence[Callable[[], None]], pairs: int) -> list[float]:
    """Median seconds of each call, timed ``pairs`` times in turn (call 0, call 1, call 0, call 1, ...)."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(pairs):
        for seconds, call in zip(times, calls, strict=True):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
    return [float(np.median(seconds)) for seconds in times]


@pytest.mark.parametrize("decoding", ("full", "cached"))
@pytest.mark.parametrize("model", ("copy", "base"))
def test_greedy_decode(
    benchmark: Any,
    transformer: EncoderDecoder,
    case: ModelCase,
    model_target: str,
    device: str,
    model: str,
    decoding: str,
) -> None:
    src, _, _, src_mask, _ = batch(case, device)
    transformer.eval()
    sync = synchronizer(device)

    def decode(use_cache: bool) -> Callable[[], None]:
        def call() -> None:
            greedy_decode(transformer, src, src_mask, case.L, START, use_cache=use_cache)  # (B, L)
            sync()

        return call

    new_tokens = case.B * (case.L - 1)
    describe(benchmark, "decode", transformer, case, model_target, device, model)
    benchmark.extra_info.update(decoding=decoding, new_tokens=new_tokens)
    seconds = measure(benchmark, decode(decoding == "cached"), case, device)
    benchmark.extra_info["tokens_per_s"] = new_tokens / seconds
    if decoding == "cached" and not benchmark.disabled:
        full, cached = alternating_medians((decode(False), decode(True)), case.rounds)
        benchmark.extra_info.update(
            cache_speedup=full / cached, full_tokens_per_s=new_tokens / full, speedup_pairs=case.rounds
        )
