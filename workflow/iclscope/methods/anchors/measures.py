"""Label words as anchors (Wang et al. 2023, docs/methods.md §3): the measures, pure numpy.

Attention to label tokens, AUCROC_l and R_l (§3.4), the saliency flows S_wp / S_pq / S_ww (§3.2)
and word loyalty (§3.3). The stages that read the attention (through iclscope.model.capture, the one
hook layer) live beside this module: saliency, isolation, reweighting, compression.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def class_attention(attn: np.ndarray, label_class: np.ndarray, n_classes: int) -> np.ndarray:
    """attn [N, L, H, K] (query -> each label token), label_class [N, K] -> [N, L, C].

    Heads are summed (docs/methods.md §3.4); several demonstrations of one class are summed too.
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

    features [N, C]; classes never predicted are dropped (docs/methods.md §3.4). With two classes
    predicted (a binary task, or a multi-class task where only two occur) the score is the raw
    attention of the higher of the two, not renormalised over the pair, as in the reference
    analysis; with three or more, features are normalised to sum 1 over the predicted classes and
    scored with the one-vs-one macro AUC. NaN when fewer than two classes are predicted.
    """
    present = np.unique(target)
    if len(present) < 2:
        return float("nan")
    if len(present) == 2:
        return float(roc_auc_score(target == present[1], features[:, present[1]]))
    f = features[:, present]
    f = f / np.clip(f.sum(1, keepdims=True), 1e-12, None)
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[t] for t in target])
    return float(roc_auc_score(y, f, multi_class="ovo", average="macro"))


def cumulative_share(auc: np.ndarray) -> np.ndarray:
    """R_l = Σ_{i≤l}(AUC_i − 0.5) / Σ_i(AUC_i − 0.5) (docs/methods.md §3.4), from AUC [L] or [S, L].

    Per-seed AUCs [S, L] are averaged over seeds first (seeds with no AUC, NaN, left out), then
    the share is taken, as the reference analysis does; a mean of per-seed shares would divide by
    each seed's own total, which can be near zero. NaN everywhere when the total gain is zero.
    """
    auc = np.asarray(auc, dtype=float)
    if auc.ndim == 2:
        seen = ~np.isnan(auc)
        auc = np.where(seen.any(0), np.where(seen, auc, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)
    gain = np.nan_to_num(auc - 0.5)
    total = gain.sum()
    return np.cumsum(gain) / total if total != 0 else np.full(len(gain), np.nan)


def saliency_flows(saliency: np.ndarray, label_pos, query_pos: int) -> dict[str, np.ndarray]:
    """S_wp, S_pq, S_ww per layer from saliency I [L, T, T] (docs/methods.md §3.2; diagonal excluded).

    C_wp = {(p_k, j): j < p_k}; C_pq = {(q, p_k)}; C_ww = {(i, j): j < i} − C_wp − C_pq.
    """
    L, T, _ = saliency.shape
    lower = np.tril(np.ones((T, T), dtype=bool), k=-1)
    wp = np.zeros((T, T), dtype=bool)
    pq = np.zeros((T, T), dtype=bool)
    for p in label_pos:
        wp[p, :p] = True
        pq[query_pos, p] = True
    ww = lower & ~wp & ~pq
    return {
        name: saliency[:, mask].mean(axis=1) if mask.any() else np.full(L, np.nan)
        for name, mask in (("s_wp", wp), ("s_pq", pq), ("s_ww", ww))
    }


def relative_flows(flows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's three flows divided by their sum (the paper's 'relative size')."""
    total = sum(flows.values())
    return {k: np.divide(v, total, out=np.full_like(v, np.nan), where=total > 0) for k, v in flows.items()}


def jaccard_topk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise |A ∩ B| / |A ∪ B| of top-k id sets a, b [N, k] (word loyalty, docs/methods.md §3.3)."""
    return np.array([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a, b, strict=True)])
