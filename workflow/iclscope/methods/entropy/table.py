"""The entropy measures of a model's stored token states (docs/methods.md §2.3), layer by layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.core.store import open_token_states
from iclscope.methods.entropy.measures import (
    EntropySettings,
    layer_measures,
    neighbour_bigram_labels,
    next_from_prev,
    pair_labels,
)


def entropy_table(
    token_states, *, model: str, dataset: str, settings: EntropySettings, layers: list[int] | None = None
) -> pd.DataFrame:
    """The four representation measures per layer and label type (`variant`): token id (flat), left bigram
    (previous token, token) nested under its token, and `bigram_h`, both neighbouring bigrams nested
    under the token as hcoxec/h labels them (docs/methods.md §2.3).

    Reads one layer [N, d] of `/resid/tokens` at a time. Metrics from the min/max binning keep
    their names; those from the quantile-clipped binning end in `_clipped`.
    """
    with open_token_states(token_states) as f:
        ids, prev = f["tokens/id"][()], f["tokens/prev"][()]
        labels = {
            "token": ids,
            "bigram": pair_labels(prev, ids),
            "bigram_h": neighbour_bigram_labels(ids, prev, next_from_prev(ids, prev)),
        }
        n_layers = f.attrs["n_layers"]
        rows = []
        for layer in tqdm(layers if layers is not None else range(n_layers + 1), desc="entropy", unit="layer"):
            states = f["resid/tokens"][:, layer, :].astype(np.float32)  # [N, d]
            for r in layer_measures(states, labels, settings):
                suffix = "" if r["range"] == "minmax" else f"_{r['range']}"
                rows += [
                    {"metric": f"{name}{suffix}", "value": value, "layer": layer, "variant": r["label_type"]}
                    for name, value in r.items()
                    if name not in ("range", "label_type")
                ]
    return metric_frame(rows, model=model, dataset=dataset, family="entropy", position="token")
