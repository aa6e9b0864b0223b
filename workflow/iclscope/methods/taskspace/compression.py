"""Compression diagnostics of the task spaces (docs/methods.md §1.3): how much of a state lies in
its layer's task space and how well the space decodes the class, per variant, layer and position."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.store import open_activations, read_prompts, resid
from iclscope.methods.taskspace.space import decode, energy_ratio, plugin_mutual_information, read_task_spaces


def compression_table(
    activations, task_spaces, *, model: str, dataset: str, positions=("query", "last_input", "content_mean")
) -> pd.DataFrame:
    """Compression diagnostics (docs/methods.md §1.3) per task-space variant (`variant`) x layer x position,
    on the test-split prompts: mean energy ratio, decoding accuracy by projection, plug-in
    I(Ĉ;Y) in nats and normalised by H(Y). Reads one layer of one position at a time."""
    rows = []
    with open_activations(activations) as f:
        prompts = read_prompts(f)
        test = np.sort(np.flatnonzero(prompts["split"] == "test"))
        gold = prompts["gold"][test]
        n_classes = len(f.attrs["classes"])
        for variant in ("anchor", "class_mean"):
            try:
                spaces = read_task_spaces(task_spaces, variant)
            except ValueError:
                continue
            for position in positions:
                states = resid(f, position)  # the one reader ("label": [N, K, L+1, d] from either layout)
                if states is None:
                    continue
                for layer, space in sorted(spaces.items()):
                    H = states[test, layer].astype(np.float64)
                    pred = decode(H, space)
                    mi, mi_norm = plugin_mutual_information(pred, gold, n_classes)
                    common = {"layer": layer, "position": position, "variant": variant}
                    rows += [
                        {**common, "metric": "energy_ratio", "value": float(energy_ratio(H, space).mean())},
                        {**common, "metric": "decoding_accuracy", "value": float((pred == gold).mean())},
                        {**common, "metric": "mutual_information", "value": mi},
                        {**common, "metric": "mutual_information_norm", "value": mi_norm},
                        {**common, "metric": "k", "value": float(space.k)},
                    ]
    return metric_frame(rows, model=model, dataset=dataset, family="compression")
