"""The layer atlas: every layer-wise curve of the four method families of one model, for each of
its datasets, on one relative-depth axis, with each curve's peak layer; and the headline summary
across runs.

Built from the metric tables a job is given (no model, no activations, no directory listing). A
family that was not run for a model × dataset is simply absent. Relative depth = layer / L for
curves over the residual stream (index 0 = embeddings, L = last block) and over blocks (1..L).

Curves (name: table, selection, mean over seeds / tasks):

    decodability          decodability.parquet   decodability_euclidean, task all, most shots
    task-space decoding   compression.parquet    decoding_accuracy, class_mean, query
    task-space energy     compression.parquet    energy_ratio, class_mean, query
    S_wp, S_pq            saliency.parquet       s_wp_relative, s_pq_relative
    AUCROC_l              aucroc.parquet         aucroc
    isolation loyalty     isolation.parquet      label_loyalty of label words isolated in the
                                                 first / last k layers, at the window's middle
    information, regularity  entropy.parquet     token labels, min/max binning
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CURVES = {
    # name: (file, metric, filters)
    "decodability": ("decodability", "decodability_euclidean", {"task": "all"}),
    "task-space decoding": ("compression", "decoding_accuracy", {"variant": "class_mean", "position": "query"}),
    "task-space energy": ("compression", "energy_ratio", {"variant": "class_mean", "position": "query"}),
    "S_wp": ("saliency", "s_wp_relative", {}),
    "S_pq": ("saliency", "s_pq_relative", {}),
    "AUCROC_l": ("aucroc", "aucroc", {}),
    "information": ("entropy", "information", {"variant": "token"}),
    "regularity": ("entropy", "regularity", {"variant": "token"}),
}
TABLES = sorted({file for file, _, _ in CURVES.values()} | {"isolation"})


def _curve(table: pd.DataFrame, metric: str, filters: dict) -> pd.Series:
    sel = table[table.metric == metric]
    for column, value in filters.items():
        sel = sel[sel[column] == value]
    if "shots" in sel and sel["shots"].notna().any():
        sel = sel[sel["shots"] == sel["shots"].max()]
    return sel.groupby("layer")["value"].mean().sort_index()


def atlas_curves(tables: dict[str, pd.DataFrame], n_layers: int) -> pd.DataFrame:
    """Long table: curve, layer, depth (layer / n_layers), value; from whichever tables exist."""
    parts = []
    for name, (file, metric, filters) in CURVES.items():
        if file not in tables:
            continue
        curve = _curve(tables[file], metric, filters)
        if len(curve):
            parts.append(pd.DataFrame({"curve": name, "layer": curve.index.astype(int), "value": curve.to_numpy()}))
    if "isolation" in tables:
        iso = tables["isolation"]
        iso = iso[(iso.metric == "label_loyalty") & (iso.arm == "label")]
        for side, g in iso.groupby("variant"):
            g = g.groupby("n_layers")["value"].mean()
            k = g.index.to_numpy(dtype=float)
            middle = (k - 1) / 2 + 1 if side == "first" else n_layers - (k - 1) / 2
            parts.append(
                pd.DataFrame({"curve": f"isolation loyalty ({side} k)", "layer": middle, "value": g.to_numpy()})
            )
    if not parts:
        return pd.DataFrame(columns=["curve", "layer", "depth", "value"])
    out = pd.concat(parts, ignore_index=True)
    out["depth"] = out["layer"] / n_layers
    return out


def peak_layers(curves: pd.DataFrame) -> pd.DataFrame:
    """Per curve (per dataset and curve when `curves` has a dataset column): the layer (and depth) of
    its maximum; for isolation and information, of its minimum.

    A curve with no finite value (e.g. AUCROC when the model predicts one class only) gets NaNs.
    """
    keys = ["dataset", "curve"] if "dataset" in curves else ["curve"]
    rows = []
    for key, g in curves.groupby(keys, sort=False):
        name = key[-1]
        lowest = name.startswith("isolation") or name == "information"
        row = dict(zip(keys, key, strict=True)) | {"peak": "min" if lowest else "max"}
        if g["value"].isna().all():
            rows.append(row | {"layer": np.nan, "depth": np.nan, "value": np.nan})
            continue
        i = g["value"].idxmin() if lowest else g["value"].idxmax()
        rows.append(
            row
            | {"layer": float(g.loc[i, "layer"]), "depth": float(g.loc[i, "depth"]), "value": float(g.loc[i, "value"])}
        )
    return pd.DataFrame(rows, columns=[*keys, "peak", "layer", "depth", "value"])


def read_tables(table_paths) -> dict[str, dict[str, pd.DataFrame]]:
    """{dataset: {family: table}} of the atlas's tables among `table_paths`
    (`results/metrics/<model>/<dataset>/<family>.parquet`); other tables are ignored."""
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for path in map(Path, table_paths):
        if path.stem in TABLES:
            out.setdefault(path.parent.name, {})[path.stem] = pd.read_parquet(path)
    return out


def model_atlas(tables: dict[str, dict[str, pd.DataFrame]], n_layers: int) -> pd.DataFrame:
    """Long table: dataset, curve, layer, depth, value; every dataset's curves (`read_tables`)."""
    parts = [atlas_curves(by_family, n_layers).assign(dataset=dataset) for dataset, by_family in tables.items()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=["dataset", "curve", "layer", "depth", "value"])
    out = pd.concat(parts, ignore_index=True)
    return out[["dataset", "curve", "layer", "depth", "value"]]


def headline(table_paths, model: str, dataset: str) -> dict:
    """Headline numbers of one model × dataset from its metric tables `table_paths` (named
    <family>.parquet; NaN where a family was not run). Paired differences come with their
    interval, their Holm-adjusted p-value (`<key>_p`) and the raw one (`<key>_p_raw`; iclscope.core.stats)."""
    tables = {Path(p).stem: pd.read_parquet(p) for p in table_paths}
    out = {"model": model, "dataset": dataset}

    def rows(name, metric, **filters) -> pd.DataFrame | None:
        """Rows of table `name` with `metric` and every column == value (None = empty); None without the table."""
        t = tables.get(name)
        if t is None:
            return None
        t = t[t.metric == metric]
        for column, value in filters.items():
            t = t[t[column].isna()] if value is None else t[t[column] == value]
        return t

    def mean(name, metric, **filters):
        t = rows(name, metric, **filters)
        return float(t["value"].mean()) if t is not None and len(t) else np.nan

    def paired(name, key, metric, p_metric, **filters):
        """{key, key_lo, key_hi, key_p, key_p_raw}: a paired difference row, its interval, its Holm-adjusted
        p-value (the family: the paired tests of its table; the headline reports this one) and the raw one."""
        row = rows(name, metric, **filters)
        if row is None or len(row) != 1:
            return {key: np.nan, f"{key}_lo": np.nan, f"{key}_hi": np.nan, f"{key}_p": np.nan, f"{key}_p_raw": np.nan}
        return {
            key: float(row["value"].iat[0]),
            f"{key}_lo": float(row["ci_low"].iat[0]),
            f"{key}_hi": float(row["ci_high"].iat[0]),
            f"{key}_p": mean(name, p_metric.replace("p_value", "p_holm", 1), **filters),
            f"{key}_p_raw": mean(name, p_metric, **filters),
        }

    acc = tables.get("icl_accuracy")
    if acc is not None:
        acc = acc[acc.metric == "accuracy"]
        if "task" in acc and (acc["task"] == "all").any():
            acc = acc[acc["task"] == "all"]
        out["icl_accuracy"] = float(acc["value"].mean())
    if "decodability" in tables:
        curve = _curve(tables["decodability"], "decodability_euclidean", {"task": "all"})
        if len(curve):
            out["peak_decodability_layer"] = int(curve.idxmax())
            out["peak_decodability"] = float(curve.max())
    out["icicl_accuracy"] = mean("icicl", "accuracy", arm="icicl_soft")
    out["full_icl_accuracy"] = mean("icicl", "accuracy", arm="full_icl")
    out.update(paired("icicl", "icicl_minus_full_icl", "accuracy_diff", "p_value", arm="icicl_soft-full_icl"))
    for key, arm in (("icicl_speedup", "icicl_soft"), ("anchor_kv_speedup", "anchor_kv")):
        # the median speed-up over the timed inputs (interleaved rounds) with its bootstrap interval
        row = rows("icicl", "speedup_vs_full_icl", arm=arm)
        one = row is not None and len(row) == 1
        out[key] = float(row["value"].iat[0]) if one else np.nan
        out[f"{key}_lo"] = float(row["ci_low"].iat[0]) if one else np.nan
        out[f"{key}_hi"] = float(row["ci_high"].iat[0]) if one else np.nan
    # paired gains pooled over seeds (seed empty), with their interval and p-value
    out.update(paired("tsft", "tsft_gain", "gain", "p_value", arm="space-baseline", seed=None))
    out["patching_positive_delta"] = mean("patching", "delta_accuracy", arm="positive")
    out["patching_negative_delta"] = mean("patching", "delta_accuracy", arm="negative")
    out.update(paired("reweighting", "reweighting_gain", "gain", "p_value", arm="reweighted-vanilla", seed=None))
    return out
