"""Metric tables computed from activation files: read HDF5 layer by layer, call the pure
measures (iclscope.methods.decodability.knn, …), return long-format tables (iclscope.core.tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from iclscope.core.store import open_activations, open_token_states, read_prompts, resid
from iclscope.core.tables import metric_frame
from iclscope.methods.entropy.measures import (
    EntropySettings,
    layer_measures,
    neighbour_bigram_labels,
    next_from_prev,
    pair_labels,
)


def compression_table(
    activations, task_spaces, *, model: str, dataset: str, positions=("query", "last_input", "content_mean")
) -> pd.DataFrame:
    """Compression diagnostics (docs/methods.md §1.3) per task-space variant x layer x position type,
    on the test-split prompts: mean energy ratio, decoding accuracy by projection, plug-in
    I(Ĉ;Y) in nats and normalised by H(Y). Reads one layer of one position at a time."""
    from iclscope.methods.taskspace.space import decode, energy_ratio, plugin_mutual_information, read_task_spaces

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
                    common = {"layer": layer, "position": position, "label_type": variant}
                    rows += [
                        {**common, "metric": "energy_ratio", "value": float(energy_ratio(H, space).mean())},
                        {**common, "metric": "decoding_accuracy", "value": float((pred == gold).mean())},
                        {**common, "metric": "mutual_information", "value": mi},
                        {**common, "metric": "mutual_information_norm", "value": mi_norm},
                        {**common, "metric": "k", "value": float(space.k)},
                    ]
    return metric_frame(rows, model=model, dataset=dataset, family="compression")


def aucroc_table(activations, *, model: str, dataset: str) -> pd.DataFrame:
    """AUCROC_l per layer and seed, and R_l per layer (docs/methods.md §3.4), from the stored
    query->label attention; the target is the model's own prediction, on test-split prompts.

    R_l is taken from AUCROC_l averaged over seeds, as the reference analysis does, so its rows
    have no seed: one seed's Σ_i (AUCROC_i − 0.5) can be near zero and its ratio meaningless.
    """
    from iclscope.methods.anchors.measures import aucroc, class_attention, cumulative_share

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
        rows, model=model, dataset=dataset, family="anchors", position="query", label_type="model_prediction"
    )


def decodability_accuracy_fit(
    decodability: pd.DataFrame,
    accuracy: pd.DataFrame,
    *,
    model: str,
    dataset: str,
    metric: str = "decodability_euclidean",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Han et al.'s TD-vs-accuracy relation: one point per (task, shots), TD read at the peak layer
    of the overall TD for that shot count; least-squares line and R² over all points.

    The Null task is left out of the fit: its answer is random, so its accuracy measures nothing.
    Returns (points: task, shots, layer, decodability, accuracy; long-format fit table).
    """
    dec = decodability[(decodability.metric == metric) & (decodability.task != "Null")]
    acc = accuracy[(accuracy.metric == "accuracy") & (accuracy.task != "all")]
    points = []
    for shots, g in dec.groupby("shots"):
        overall = g[g.task == "all"]
        layer = int(overall.loc[overall["value"].idxmax(), "layer"])
        at_peak = g[(g.layer == layer) & (g.task != "all")].set_index("task")["value"]
        acc_s = acc[acc.shots == shots].groupby("task")["value"].mean()
        for task in sorted(set(at_peak.index) & set(acc_s.index)):
            points.append(
                {
                    "task": task,
                    "shots": int(shots),
                    "layer": layer,
                    "decodability": float(at_peak[task]),
                    "accuracy": float(acc_s[task]),
                }
            )
    points = pd.DataFrame(points)
    rows = []
    if len(points) >= 3 and points["decodability"].std() > 0:
        x, y = points["decodability"].to_numpy(), points["accuracy"].to_numpy()
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        r2 = 1 - (residual**2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
        rows = [
            {"metric": "fit_r2", "value": r2},
            {"metric": "fit_slope", "value": slope},
            {"metric": "fit_intercept", "value": intercept},
            {"metric": "fit_points", "value": float(len(x))},
        ]
    return points, metric_frame(
        rows, model=model, dataset=dataset, family="decodability", position="query", label_type=metric
    )


def entropy_table(
    token_states, *, model: str, dataset: str, settings: EntropySettings, layers: list[int] | None = None
) -> pd.DataFrame:
    """The four representation measures per layer and label type: token id (flat), left bigram
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
                    {"metric": f"{name}{suffix}", "value": value, "layer": layer, "label_type": r["label_type"]}
                    for name, value in r.items()
                    if name not in ("range", "label_type")
                ]
    return metric_frame(rows, model=model, dataset=dataset, family="entropy", position="token")
