"""The long format of every metric table (docs/outputs.md#metric-tables): one row per value.

Each column means one thing in every family:

* `layer`: a residual index (0 = embeddings) or a block (1 … L), as the method defines it;
* `position`: where a state was read (`query`, `last_input`, `content_mean`, `token`);
* `arm`: the condition a value was measured under (an IC-ICL or TS-FT arm, a patching condition, the
  rows isolation cuts off, …), or a paired comparison `<arm>-<reference>`;
* `variant`: which form of a measure (a task-space variant, an entropy label type, an isolation window,
  an ordered class pair, the decodability measure a fit reads);
* `n_layers`: how many layers a setting spans (isolation's k);
* `task`: a task of the dataset, or `all`.

Kept apart from iclscope.core.tables (Parquet input and output), which every model stage runs:
a change to this shape reruns the metric stages, not the extraction.
"""

from __future__ import annotations

import pandas as pd

METRIC_COLUMNS = [
    "model",
    "dataset",
    "family",
    "metric",
    "layer",
    "position",
    "arm",
    "variant",
    "n_layers",
    "task",
    "shots",
    "seed",
    "value",
    "ci_low",
    "ci_high",
]
INTEGER_COLUMNS = ("layer", "n_layers", "shots", "seed")
FLOAT_COLUMNS = ("value", "ci_low", "ci_high")


def metric_frame(rows: list[dict], **common) -> pd.DataFrame:
    """Long-format metric table: `rows` (dicts with at least metric and value) + shared columns.

    A key that is not a column is an error: a family says what a value is in the columns above,
    never in a column of its own that the table would silently drop."""
    df = pd.DataFrame([{**common, **r} for r in rows])
    unknown = sorted(set(df.columns) - set(METRIC_COLUMNS))
    if unknown:
        raise ValueError(f"metric rows with keys that are no metric-table column: {unknown} (have {METRIC_COLUMNS})")
    for col in METRIC_COLUMNS:
        if col not in df:
            df[col] = None
    df = df[METRIC_COLUMNS]
    for col in INTEGER_COLUMNS:
        df[col] = pd.array(df[col], dtype="Int64")
    for col in FLOAT_COLUMNS:
        df[col] = df[col].astype("float64")
    for col in ("arm", "variant", "task", "position"):
        df[col] = df[col].astype("object")
    return df
