"""ICL predictions and accuracy, read from an activation file (no model needed).

Classification: the prediction is the argmax over the label words' first-token logits
(docs/methods.md §3.1). Generation: the greedy answer cut at the first newline, stripped, and
compared for exact match with the expected answer (docs/methods.md §4.7).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.stats import bootstrap_mean
from iclscope.core.store import open_activations, read_prompts


def clean_generation(text: str) -> str:
    """The answer part of a greedy continuation: up to the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


def exact_match(preds: pd.Series, answers: pd.Series) -> pd.Series:
    """Generation tasks: a cleaned greedy answer is right when it equals the stripped expected answer."""
    return preds == answers.str.strip()


def predictions(path) -> tuple[pd.DataFrame, dict]:
    """One row per prompt: prompt_id, split, seed, shots, task, gold/answer, pred, correct."""
    with open_activations(path) as f:
        prompts = read_prompts(f)
        attrs = dict(f.attrs)
        kind = attrs["kind"]
        df = pd.DataFrame({k: prompts[k] for k in ("prompt_id", "split", "seed", "shots", "task", "gold", "answer")})
        if kind == "classification":
            logits = f["logits/label"][()]  # [N, C]
            classes = list(attrs["classes"])
            df["pred_index"] = logits.argmax(1)
            df["pred"] = [classes[i] for i in df["pred_index"]]
            df["correct"] = df["pred_index"] == df["gold"]
            for c, name in enumerate(classes):
                df[f"logit_{name}"] = logits[:, c]
        else:
            df["pred"] = [clean_generation(t) for t in f["generation/text"].asstr()[()]]
            df["correct"] = exact_match(df["pred"], df["answer"])
    return df, {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in attrs.items()}


def macro_f1(gold: np.ndarray, pred: np.ndarray, labels) -> float:
    scores = []
    for c in labels:
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def accuracy_table(preds: pd.DataFrame, kind: str, n_boot: int, model: str, dataset: str) -> pd.DataFrame:
    """Long-format rows: accuracy (+ bootstrap CI), macro-F1 and majority baseline per group.

    Classification groups by seed; generation by seed x shots x task, plus 'all' tasks.
    Only test-split prompts count.
    """
    preds = preds[preds["split"] == "test"]
    rows = []
    keys = ["seed", "shots"] if kind == "classification" else ["seed", "shots", "task"]
    groups = list(preds.groupby(keys, sort=True))
    if kind == "generation":
        groups += [((s, k, "all"), g) for (s, k), g in preds.groupby(["seed", "shots"], sort=True)]
    for key, g in groups:
        key = dict(zip(keys, key, strict=True))
        correct = g["correct"].to_numpy(float)
        lo, hi = bootstrap_mean(correct, n_boot, seed=int(key["seed"]))
        common = {"seed": key["seed"], "shots": key["shots"], "task": key.get("task", dataset)}
        rows.append({**common, "metric": "accuracy", "value": correct.mean(), "ci_low": lo, "ci_high": hi})
        if kind == "classification":
            gold = g["gold"].to_numpy()
            rows.append(
                {**common, "metric": "macro_f1", "value": macro_f1(gold, g["pred_index"].to_numpy(), np.unique(gold))}
            )
            rows.append({**common, "metric": "majority_baseline", "value": np.bincount(gold).max() / len(gold)})
            rows.append(
                {**common, "metric": "prediction_share_max", "value": np.bincount(g["pred_index"]).max() / len(g)}
            )
    return metric_frame(rows, model=model, dataset=dataset, family="icl_accuracy", position="query")
