"""Task (concept) decodability, Han et al. (docs/methods.md §4.2): leave-one-out k-NN majority vote.

For points X [n, d] labelled by task y, each point is removed, its k nearest neighbours among
the rest vote, and TD is the fraction voted right. Ties between classes are broken
deterministically: the class whose tied neighbours have the smallest summed distance, then the
smallest label. Distances are Euclidean on raw states (the paper's unstated default) or cosine.

Cost: O(n² d) time, computed in row blocks so memory is O(block · n), never a full n×n matrix
for large n (1,400 points × 576 dims: milliseconds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.stats import bootstrap_mean
from iclscope.core.store import open_activations, read_prompts

BLOCK = 1024


def _check(X: np.ndarray, y: np.ndarray, k: int) -> None:
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be [n, d] with one label per row; got X {X.shape}, y {np.shape(y)}")
    if len(np.unique(y)) < 2:
        raise ValueError("decodability needs at least two classes (tasks)")
    if not 1 <= k < len(X):
        raise ValueError(f"k={k} must be between 1 and n-1={len(X) - 1}")


def _distances(X: np.ndarray, rows: slice, metric: str) -> np.ndarray:
    """[block, n] distances from X[rows] to all of X."""
    if metric == "euclidean":
        sq = (X**2).sum(1)
        d2 = sq[rows, None] + sq[None, :] - 2 * X[rows] @ X.T
        return np.sqrt(np.maximum(d2, 0))
    if metric == "cosine":
        unit = X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12)
        return 1 - unit[rows] @ unit.T
    raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")


def knn_loo_predict(X: np.ndarray, y, k: int = 10, metric: str = "euclidean") -> np.ndarray:
    """Leave-one-out k-NN majority-vote predictions, one per row of X (labels as given in y)."""
    y = np.asarray(y)
    X = np.asarray(X, dtype=np.float64)
    _check(X, y, k)
    labels, codes = np.unique(y, return_inverse=True)
    C, n = len(labels), len(X)
    pred = np.empty(n, dtype=np.int64)
    for start in range(0, n, BLOCK):
        rows = slice(start, min(n, start + BLOCK))
        dist = _distances(X, rows, metric)
        dist[np.arange(dist.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # leave one out
        # k nearest, ordered by (distance, index) so equal distances resolve deterministically
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
        near_codes = codes[nearest]  # [b, k]
        near_dist = np.take_along_axis(dist, nearest, axis=1)
        votes = np.zeros((len(nearest), C))
        summed = np.zeros((len(nearest), C))
        np.add.at(votes, (np.arange(len(nearest))[:, None], near_codes), 1)
        np.add.at(summed, (np.arange(len(nearest))[:, None], near_codes), near_dist)
        # most votes, then smallest summed distance, then smallest label index
        best = votes.max(1, keepdims=True)
        score = np.where(votes == best, summed, np.inf)
        pred[rows] = np.argmin(score, axis=1)
    return labels[pred]


def decodability(X: np.ndarray, y, k: int = 10, metric: str = "euclidean") -> float:
    return float(np.mean(knn_loo_predict(X, y, k, metric) == np.asarray(y)))


def decodability_per_class(X: np.ndarray, y, k: int = 10, metric: str = "euclidean") -> dict:
    """TD restricted to each class's points (the same neighbourhoods as the overall TD)."""
    y = np.asarray(y)
    correct = knn_loo_predict(X, y, k, metric) == y
    return {label: float(correct[y == label].mean()) for label in np.unique(y)}


def pairwise_decodability(X: np.ndarray, y, k: int = 10, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """(labels, M [C, C]): M[i, j] = TD on the points of classes i and j alone; diagonal NaN."""
    y = np.asarray(y)
    labels = np.unique(y)
    M = np.full((len(labels), len(labels)), np.nan)
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            sel = np.isin(y, labels[[i, j]])
            M[i, j] = M[j, i] = decodability(X[sel], y[sel], min(k, int(sel.sum()) - 1), metric)
    return labels, M


def decodability_by_layer(
    H: np.ndarray, y, k: int = 10, metrics=("euclidean", "cosine"), n_boot: int = 200, seed: int = 0
) -> pd.DataFrame:
    """H [n, L+1, d] -> long table: layer, metric_space, task ('all' or a task), value, ci_low, ci_high."""
    y = np.asarray(y)
    rows = []
    for layer in range(H.shape[1]):
        X = np.asarray(H[:, layer], dtype=np.float64)
        for metric in metrics:
            correct = knn_loo_predict(X, y, k, metric) == y
            lo, hi = bootstrap_mean(correct, n_boot, seed=seed)
            rows.append(
                {
                    "layer": layer,
                    "metric_space": metric,
                    "task": "all",
                    "value": correct.mean(),
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
            for label in np.unique(y):
                sel = y == label
                lo, hi = bootstrap_mean(correct[sel], n_boot, seed=seed)
                rows.append(
                    {
                        "layer": layer,
                        "metric_space": metric,
                        "task": str(label),
                        "value": correct[sel].mean(),
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    return pd.DataFrame(rows)


def peak_layer(df: pd.DataFrame) -> int:
    """The layer of highest overall ('all') decodability in a decodability_by_layer table (first if tied)."""
    overall = df[df["task"] == "all"].sort_values("layer")
    return int(overall.loc[overall["value"].idxmax(), "layer"])


def decodability_table(
    path, *, model: str, dataset: str, k: int = 10, metrics=("euclidean", "cosine"), n_boot: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, dict]:
    """Task decodability per layer at the query position, per (seed, shots) prompt set.

    Reads /resid/query [N, L+1, d] one prompt set at a time (memory: that set's states).
    """
    frames, peaks = [], {}
    with open_activations(path) as f:
        prompts = read_prompts(f)
        attrs = {k_: (v.tolist() if hasattr(v, "tolist") else v) for k_, v in f.attrs.items()}
        groups = pd.DataFrame({"seed": prompts["seed"], "shots": prompts["shots"]}).groupby(["seed", "shots"])
        for (s, shots), g in groups:
            idx = np.sort(g.index.to_numpy())
            states = f["resid/query"][idx].astype(np.float32)  # [n, L+1, d]
            tasks = prompts["task"][idx]
            df = decodability_by_layer(states, tasks, k=k, metrics=tuple(metrics), n_boot=n_boot, seed=seed)
            peaks[f"seed={s},shots={shots}"] = {
                m: int(peak_layer(df[df.metric_space == m])) for m in df.metric_space.unique()
            }
            df = df.assign(seed=int(s), shots=int(shots))
            frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.assign(metric="decodability_" + rows.pop("metric_space"))
    table = metric_frame(
        rows.to_dict("records"),
        model=model,
        dataset=dataset,
        family="decodability",
        position="query",
    )
    attrs["peak_layers"] = peaks
    return table, attrs
