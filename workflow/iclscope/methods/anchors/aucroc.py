"""AUCROC_l and R_l (docs/methods.md §3.4): how well the query's attention to each class's label
words predicts the model's answer, per layer, from the stored activation file."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.store import open_activations, read_prompts
from iclscope.methods.anchors.measures import aucroc, class_attention, cumulative_share


def aucroc_table(activations, *, model: str, dataset: str) -> pd.DataFrame:
    """AUCROC_l per layer and seed, and R_l per layer (docs/methods.md §3.4), from the stored
    query->label attention; the target is the model's own prediction (`variant` model_prediction),
    on test-split prompts.

    R_l is taken from AUCROC_l averaged over seeds, as the reference analysis does, so its rows
    have no seed: one seed's Σ_i (AUCROC_i − 0.5) can be near zero and its ratio meaningless.
    """
    rows = []
    with open_activations(activations) as f:
        if "attn/query_to_label" not in f:
            raise ValueError(
                f"{activations} has no label positions (a zero-shot or generation dataset): "
                "AUCROC_l needs demonstrations with label words"
            )
        prompts = read_prompts(f)
        n_classes = len(f.attrs["classes"])
        test = np.sort(np.flatnonzero(prompts["split"] == "test"))
        attn = f["attn/query_to_label"][test]  # [N, L, H, K]
        pred = f["logits/label"][test].argmax(1)
        feats = class_attention(attn, prompts["label_class"][test], n_classes)  # [N, L, C]
        seeds = prompts["seed"][test]
        auc = np.array(
            [
                [aucroc(feats[seeds == seed, layer], pred[seeds == seed]) for layer in range(feats.shape[1])]
                for seed in np.unique(seeds)
            ]
        )  # [S, L]
        for seed, by_layer in zip(np.unique(seeds), auc, strict=True):
            rows += [
                {"layer": layer + 1, "seed": int(seed), "metric": "aucroc", "value": value}
                for layer, value in enumerate(by_layer)
            ]
        rows += [
            {"layer": layer + 1, "metric": "aucroc_cumulative_share", "value": value}
            for layer, value in enumerate(cumulative_share(auc))
        ]
    return metric_frame(
        rows, model=model, dataset=dataset, family="anchors", position="query", variant="model_prediction"
    )
