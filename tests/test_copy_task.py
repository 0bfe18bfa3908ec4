"""The reference Transformer learns the copy task (Annotated Transformer) in a few hundred CPU steps."""

from __future__ import annotations

import pytest

from attncheck.reference.copy_task import train_copy_task


@pytest.mark.slow
def test_copy_task_reaches_high_token_accuracy() -> None:
    result = train_copy_task()  # fixed seed: the same data, initialisation and accuracy on every run
    assert result.token_accuracy > 0.95, (
        f"greedy copy accuracy {result.token_accuracy:.4f} <= 0.95 after {result.train_seconds:.1f} s of training "
        f"(final loss {result.final_loss:.4f})"
    )
