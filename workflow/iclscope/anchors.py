"""Label words as anchors (Wang et al. 2023, METHODS.md §3): measures over attention to label tokens.

This module holds the pure computations; the attention itself is read (and, for the
interventions, edited) by iclscope.capture, the one hook layer.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def class_attention(attn: np.ndarray, label_class: np.ndarray, n_classes: int) -> np.ndarray:
    """attn [N, L, H, K] (query -> each label token), label_class [N, K] -> [N, L, C].

    Heads are summed (METHODS.md §3.4); several demonstrations of one class are summed too.
    Missing demonstrations (class -1, attention NaN) contribute nothing.
    """
    summed = np.nan_to_num(attn, nan=0.0).sum(axis=2)  # [N, L, K]
    out = np.zeros((attn.shape[0], attn.shape[1], n_classes))
    for c in range(n_classes):
        mask = (label_class == c)[:, None, :]  # [N, 1, K]
        out[:, :, c] = (summed * mask).sum(-1)
    return out


def aucroc(features: np.ndarray, target: np.ndarray) -> float:
    """AUC of predicting `target` (the model's own predicted class) from per-class attention.

    features [N, C]. Binary: AUC of the class-1 feature. Multi-class: features normalised to sum
    1, one-vs-one macro AUC; classes never predicted are dropped (METHODS.md §3.4). NaN when fewer
    than two classes are predicted.
    """
    present = np.unique(target)
    if len(present) < 2:
        return float("nan")
    if features.shape[1] == 2:
        return float(roc_auc_score(target == 1, features[:, 1]))
    f = features[:, present]
    f = f / np.clip(f.sum(1, keepdims=True), 1e-12, None)
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[t] for t in target])
    if len(present) == 2:
        return float(roc_auc_score(y == 1, f[:, 1]))
    return float(roc_auc_score(y, f, multi_class="ovo", average="macro"))


def cumulative_share(auc_by_layer: np.ndarray) -> np.ndarray:
    """R_l = Σ_{i≤l}(AUC_i − 0.5) / Σ_i(AUC_i − 0.5) (METHODS.md §3.4)."""
    gain = np.nan_to_num(np.asarray(auc_by_layer, dtype=float) - 0.5)
    total = gain.sum()
    return np.cumsum(gain) / total if total != 0 else np.full(len(gain), np.nan)
