"""Batching prompts by length: each batch holds prompts of similar length (less padding), bounded in
prompts and in padded tokens; ragged per-prompt lists padded to arrays. Used by extraction, token
states, label scoring and the methods that run their own forward passes."""

from __future__ import annotations

import numpy as np


def pad_lists(values, width: int, fill: int = -1, inner: int | None = None) -> np.ndarray:
    """Ragged lists -> [N, width] (or [N, width, inner]) int32 padded with `fill`."""
    shape = (len(values), width) if inner is None else (len(values), width, inner)
    out = np.full(shape, fill, dtype=np.int32)
    for i, v in enumerate(values):
        v = np.asarray(list(v), dtype=np.int32)
        if len(v):
            out[i, : len(v)] = v
    return out


def make_batches(lengths: np.ndarray, batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Indices into `lengths`, sorted by length, cut into batches of bounded padded size."""
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (len(current) == batch_size or longest * (len(current) + 1) > max_batch_tokens):
            batches.append(np.array(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.array(current))
    return batches


def token_batches(examples: list[dict], batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Indices of `examples` sorted by length and cut into batches of at most `batch_size` prompts and
    `max_batch_tokens` padded tokens (inference passes: less padding than batches in the given order)."""
    return make_batches(np.array([len(x["input_ids"]) for x in examples]), batch_size, max_batch_tokens)
