"""The copy task of the Annotated Transformer: a small reference Transformer learns to output its input.

Sequences are ``START`` followed by symbols drawn uniformly from {2, ..., vocab - 1} (0 is padding, unused
here). A model with N=2, d_model=32, h=4, d_ff=64 and no dropout is trained with teacher forcing on the
negative log-likelihood (no label smoothing, no dropout: both only slow a task this small), with Adam and the
learning-rate schedule of section 5.3, then scored by greedy decoding (with the key/value cache) on held-out
sequences. With the defaults, seeds 0 to 11 all reach a token accuracy above 0.96 (seed 0: 0.9957).
``python -m attncheck.reference.copy_task`` prints the training time and the token accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from attncheck.reference.decoding import greedy_decode
from attncheck.reference.model import EncoderDecoder, TransformerConfig, make_model, padding_mask, target_mask

PAD, START = 0, 1


@dataclass(frozen=True)
class CopyTaskResult:
    """What :func:`train_copy_task` measured."""

    token_accuracy: float  # greedy-decoded symbols equal to the source, held-out sequences (START not counted)
    train_seconds: float  # wall time of the training loop
    final_loss: float  # mean per-token NLL of the last training batch
    model: EncoderDecoder = field(repr=False)  # the trained model, in eval mode


def copy_batch(batch_size: int, seq_len: int, vocab: int, generator: torch.Generator) -> Tensor:
    """Random sequences (batch_size, seq_len): START, then symbols in {2, ..., vocab - 1}."""
    data = torch.randint(2, vocab, (batch_size, seq_len), generator=generator)  # (B, L)
    data[:, 0] = START
    return data


def noam_rate(step: int, d_model: int, warmup: int, factor: float) -> float:
    """Section 5.3: lrate = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), steps counted from 1."""
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def token_accuracy(model: EncoderDecoder, src: Tensor) -> float:
    """Fraction of symbols (START excluded) that greedy decoding of src (B, L) copies correctly."""
    out = greedy_decode(model, src, padding_mask(src, PAD), src.size(1), START, use_cache=True)  # (B, L)
    return float((out[:, 1:] == src[:, 1:]).double().mean())


def train_copy_task(
    steps: int = 500,
    batch_size: int = 64,
    seq_len: int = 10,
    vocab: int = 11,
    N: int = 2,
    d_model: int = 32,
    d_ff: int = 64,
    h: int = 4,
    warmup: int = 100,
    factor: float = 0.7,
    eval_sequences: int = 256,
    seed: int = 0,
) -> CopyTaskResult:
    """Train a small Transformer on the copy task for ``steps`` batches and score it on held-out sequences.

    Runs on one intra-op thread (restored afterwards): the matrices are tiny (64 x 32), so a second thread only
    adds synchronisation, and on a loaded 2-core machine that wait dominated (training 8 s on one thread, 30 to
    320 s on two).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(steps, batch_size, seq_len, vocab, N, d_model, d_ff, h, warmup, factor, eval_sequences, seed)
    finally:
        torch.set_num_threads(threads)


def _train(
    steps: int,
    batch_size: int,
    seq_len: int,
    vocab: int,
    N: int,
    d_model: int,
    d_ff: int,
    h: int,
    warmup: int,
    factor: float,
    eval_sequences: int,
    seed: int,
) -> CopyTaskResult:
    torch.manual_seed(seed)  # model initialisation
    train_gen = torch.Generator().manual_seed(seed)
    eval_gen = torch.Generator().manual_seed(seed + 1)
    cfg = TransformerConfig(src_vocab=vocab, tgt_vocab=vocab, N=N, d_model=d_model, d_ff=d_ff, h=h, dropout=0.0)
    model = make_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)  # section 5.3; lr x noam_rate
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: noam_rate(i + 1, d_model, warmup, factor))
    loss = torch.tensor(float("nan"))
    begin = time.perf_counter()
    for _ in range(steps):
        data = copy_batch(batch_size, seq_len, vocab, train_gen)  # (B, L)
        tgt_in, tgt_out = data[:, :-1], data[:, 1:]  # (B, L) -> (B, L - 1) each: inputs and next tokens
        log_probs = model.generator(model(data, tgt_in, padding_mask(data, PAD), target_mask(tgt_in, PAD)))
        log_probs = log_probs.flatten(0, 1)  # (B, L - 1, vocab) -> (B * (L - 1), vocab)
        loss = F.nll_loss(log_probs, tgt_out.flatten(), ignore_index=PAD)  # tgt_out (B, L - 1) -> (B * (L - 1),)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    train_seconds = time.perf_counter() - begin
    model.eval()
    accuracy = token_accuracy(model, copy_batch(eval_sequences, seq_len, vocab, eval_gen))
    return CopyTaskResult(accuracy, train_seconds, loss.item(), model)


def main() -> None:
    result = train_copy_task()
    print(
        f"copy task: trained in {result.train_seconds:.1f} s, final loss {result.final_loss:.4f}, "
        f"greedy token accuracy {result.token_accuracy:.4f} on held-out sequences"
    )


if __name__ == "__main__":
    main()
