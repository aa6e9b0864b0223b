"""Task decodability against ICL accuracy (Han et al., docs/methods.md §4.2): one point per task and
shot count, and the least-squares fit through them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame


def decodability_accuracy_fit(
    decodability: pd.DataFrame,
    accuracy: pd.DataFrame,
    *,
    model: str,
    dataset: str,
    metric: str = "decodability_euclidean",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Han et al.'s TD-vs-accuracy relation: one point per (task, shots), TD read at the peak layer
    of the overall TD for that shot count; least-squares line and R² over all points (`variant`: the
    decodability metric fitted).

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
        rows, model=model, dataset=dataset, family="decodability", position="query", variant=metric
    )
