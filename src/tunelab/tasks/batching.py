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
        # The batch with the most padded tokens runs first, as transformers' LengthGroupedSampler does:
        # memory peaks at step 1, so an out-of-memory shows at once instead of late in an epoch.
        widest = max(range(len(out)), key=lambda i: len(out[i]) * int(lengths[out[i]].max()))
        out.insert(0, out.pop(widest))
    return out


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    """Token lengths of the training examples, for the console and the summary."""
    return {
        "mean": round(float(lengths.mean()), 1),
        "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "truncated_percent": round(100 * float((lengths >= max_length).mean()), 2),
    }
