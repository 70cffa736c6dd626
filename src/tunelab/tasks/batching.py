"""Index batches shared by all tasks: shuffled per epoch, optionally grouped by length."""

from __future__ import annotations

import math

import numpy as np


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                           group_by_length: bool) -> list[np.ndarray]:
    """Training (rng given): a fresh permutation per epoch; with grouping, examples of similar length
    share a batch (sorted inside windows of 50 batches, then the batch order shuffled) so little
    compute goes to padding. Evaluation (rng None): original order."""
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if group_by_length and n:
        window = batch_size * 50
        order = np.concatenate(
            [w[np.argsort(-lengths[w], kind="stable")] for w in np.array_split(order, max(1, math.ceil(n / window)))]
        )
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if rng is not None and group_by_length:
        out = [out[i] for i in rng.permutation(len(out))]
    return out
