"""Cost of the entropy measures against the number of tokens: seconds per token at N tokens over
seconds per token at the smallest N, on random heavy-tailed states [N, 576] with token labels from
a fixed vocabulary of 300 values (so the O(K·d·n_bins) histogram term is the same for every N and
what is measured is the O(N·d) part; target: linear, ratio ≈ 1). With real text K grows with N
(more values pass min_labels), which adds K·d·n_bins per label type."""

from __future__ import annotations

import numpy as np

from .common import row, timed

SIZES = (2_500, 10_000, 40_000)


def run() -> list[dict]:
    from iclscope.methods.entropy.measures import EntropySettings, layer_measures

    rng = np.random.default_rng(0)
    settings = EntropySettings()
    per_token = {}
    for n in SIZES:
        states = rng.standard_t(df=3, size=(n, 576)).astype(np.float32)
        labels = {"token": rng.integers(0, 300, size=n)}
        per_token[n] = timed(lambda: layer_measures(states, labels, settings), repeats=2) / n  # noqa: B023
    base = per_token[SIZES[0]]
    return [
        row(
            "entropy",
            f"seconds per token per layer, N = {n:,}",
            s * 1e6,
            "µs",
            f"N = {SIZES[0]:,}",
            s / base,
            "≈ 1 (linear)",
            s / base <= 1.3,
        )
        for n, s in per_token.items()
    ]
