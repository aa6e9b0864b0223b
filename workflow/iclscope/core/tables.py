"""Parquet tables with their run parameters in the schema metadata, written atomically.

The long format of metric tables is iclscope.core.metrics (kept out of this module, which every
model stage runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from iclscope.core.atomic import written

META_KEY = b"iclscope"


def write_table(df: pd.DataFrame, path: str | Path, meta: dict | None = None) -> None:
    """Write `df` to Parquet with `meta` (JSON) in the schema metadata; never a partial file."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata({**existing, META_KEY: json.dumps(meta or {}, default=str)})
    with written(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pd.read_parquet(path, columns=columns)


def iter_list_column(path: str | Path, column: str, start: int = 0, batch_rows: int = 256):
    """Yield one numpy array per row of a list-valued Parquet column, from row `start` on.

    Decodes `batch_rows` rows at a time, so memory does not grow with the table (reading the
    column into pandas holds one Python object per row plus the decoder's buffers).
    """
    seen = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[column]):
        values, n = batch.column(0), batch.num_rows
        for i in range(max(0, start - seen), n):
            yield values[i].values.to_numpy()
        seen += n


def read_meta(path: str | Path) -> dict:
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(META_KEY, b"{}"))
