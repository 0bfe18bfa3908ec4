"""The model benchmarks (``benchmarks/test_model.py``): the attention-share instrument attributes time where it is
spent and leaves the model as it found it, targets the model cannot call are skipped with the reason, and the
benchmarks run (once untimed, and a timed run of the copy-task model whose ``extra_info`` is all documented).

No speed is asserted: the timed run only checks that each figure is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attncheck.benchmarks import test_model as model_benchmarks
from attncheck.benchmarks.test_model import COPY, attention_shares, timed_layers, unsupported
from attncheck.properties.contract import Capabilities
from attncheck.reference.model import EncoderDecoder, MultiHeadedAttention, make_model, padding_mask, target_mask
from attncheck.targets import resolve

ROOT = Path(__file__).resolve().parent.parent
SLEEP = 0.002  # seconds each attention call of the slowed model sleeps


def copy_model(attention: Any) -> EncoderDecoder:
    torch.manual_seed(0)
    return make_model(dataclasses.replace(COPY, attention=attention)).eval()  # the copy-task model


def forward_of(model: EncoderDecoder) -> Any:
    src = torch.randint(2, 11, (4, 6), generator=torch.Generator().manual_seed(0))  # (B, L)
    tgt = src[:, :-1]  # (B, L - 1)

    def forward() -> None:
        with torch.no_grad():
            model.generator(model(src, tgt, padding_mask(src, 0), target_mask(tgt, 0)))  # (B, L - 1, vocab)

    return forward


def test_attention_time_is_attributed_to_its_layer() -> None:
    """An attention that sleeps SLEEP per call: each layer's attention time holds at least its calls' sleeps (an
    encoder layer 1 call, a decoder layer 2), and never more than the layer's own time."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def sleepy(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(SLEEP)
        return sdpa(*args, **kwargs)

    model = copy_model(sleepy)
    with timed_layers(model, lambda: None) as times:
        forward_of(model)()
    assert sorted(times.layer_s) == ["decoder.0", "decoder.1", "encoder.0", "encoder.1"]
    assert times.calls == 6  # 3N
    for name, seconds in times.attention_s.items():
        assert seconds >= SLEEP * (2 if name.startswith("decoder") else 1), (name, seconds)
        assert seconds <= times.layer_s[name], name


def test_attention_shares_are_fractions_and_the_model_is_restored() -> None:
    fn = resolve("torch-sdpa").fn
    model = copy_model(fn)
    share, per_layer, calls = attention_shares(model, forward_of(model), passes=3, sync=lambda: None)
    assert 0 < share < 1 and calls == 6
    assert sorted(per_layer) == ["decoder.0", "decoder.1", "encoder.0", "encoder.1"]
    assert all(0 < s <= 1 for s in per_layer.values()), per_layer
    attention = [m for m in model.modules() if isinstance(m, MultiHeadedAttention)]
    assert all(m.attention_fn is fn for m in attention)  # the timers are gone
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # and so are the hooks


def test_targets_the_model_cannot_call_are_refused_with_the_reason() -> None:
    assert unsupported(resolve("reference").caps, "cpu") is None
    assert unsupported(resolve("torch-sdpa").caps, "cpu") is None
    cases = {
        "layout": (Capabilities(layout="BLHD", dropout="inverted"), "SDPA convention"),
        "names": (Capabilities(arg_names={"attn_mask": "mask"}, dropout="inverted"), "SDPA convention"),
        "masks": (Capabilities(masks=frozenset({"float"}), dropout="inverted"), "boolean masks"),
        "lengths": (Capabilities(lengths="equal", dropout="inverted"), "L != S"),
        "dropout": (Capabilities(), "dropout_p"),
        "entry": (Capabilities(entry="varlen"), "a varlen target"),
        "device": (Capabilities(devices=("cuda",), dropout="inverted"), "does not run on cpu"),
    }
    for name, (caps, fragment) in cases.items():
        reason = unsupported(caps, "cpu")
        assert reason is not None and fragment in reason, (name, reason)


def documented_keys() -> set[str]:
    """The ``extra_info`` keys the module docstring names (as ``key``)."""
    doc = model_benchmarks.__doc__ or ""
    return set(re.findall(r"``([a-z_A-Z]+)``", doc.partition("``extra_info``")[2]))


def run_benchmarks(*args: str, module: str = "benchmarks/test_model.py") -> subprocess.CompletedProcess[str]:
    """``pytest MODULE ARGS`` in a fresh process. Without this session's xdist variables: with PYTEST_XDIST_WORKER
    set (inherited from a worker), pytest-benchmark disables timing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", module, "-p", "no:cacheprovider", "-q", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_model_benchmark_runs_once_untimed() -> None:
    proc = run_benchmarks("--benchmark-disable", "--bench-threads", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "16 passed" in proc.stdout  # (train, forward, decode full, decode cached) x (copy, base) x 2 targets


def test_timed_copy_model_run_records_every_documented_figure(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = run_benchmarks(
        "-k", "copy", "--bench-targets", "torch-sdpa", "--bench-threads", "1", "--benchmark-json", str(out)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    benchmarks = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert sorted(benchmarks) == [
        "test_forward[torch-sdpa-cpu-copy]",
        "test_greedy_decode[torch-sdpa-cpu-copy-cached]",
        "test_greedy_decode[torch-sdpa-cpu-copy-full]",
        "test_train_step[torch-sdpa-cpu-copy]",
    ]
    documented = documented_keys()
    for name, bench in benchmarks.items():
        info = bench["extra_info"]
        assert set(info) <= documented, (name, set(info) - documented)
        assert info["target"] == "torch-sdpa" and len(bench["stats"]["data"]) == 10  # raw rounds, for compare
        assert info["tokens_per_s"] > 0
    cached = benchmarks["test_greedy_decode[torch-sdpa-cpu-copy-cached]"]["extra_info"]
    assert cached["cache_speedup"] > 0 and cached["full_tokens_per_s"] > 0
    forward = benchmarks["test_forward[torch-sdpa-cpu-copy]"]["extra_info"]
    assert sorted(forward["attention_share_per_layer"]) == ["decoder.0", "decoder.1", "encoder.0", "encoder.1"]
    assert 0 < forward["attention_share"] < 1 and forward["attention_calls"] == 6
