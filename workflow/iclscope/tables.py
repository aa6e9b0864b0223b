"""Parquet tables with their run parameters in the schema metadata, written atomically.

Metric tables are long format (docs/outputs.md): one row per value with the columns of
`METRIC_COLUMNS`; `metric_frame` builds one so that every family writes the same shape.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"iclscope"
METRIC_COLUMNS = ["model", "dataset", "family", "metric", "layer", "position", "label_type", "task",
                  "shots", "seed", "value", "ci_low", "ci_high"]


def atomic_path(path: str | Path) -> Path:
    """The temporary sibling a file is written to before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def commit(tmp: Path, path: str | Path) -> None:
    """fsync `tmp` and rename it to `path` (atomic on one filesystem)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, as the OS raises it or as HDF5 reports it (a RuntimeError with errno = 28 in its text)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, OSError | RuntimeError) and "No space left on device" in str(exc)


@contextlib.contextmanager
def removed_when_disk_full(partial: str | Path, final: str | Path):
    """Run the body that writes `partial`; if the disk fills up, delete `partial` and raise an error
    that names the file, the filesystem's free space and what to do. (A kill leaves `partial` for
    the next run to resume; a full disk may have left it torn, so it goes.)"""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        Path(partial).unlink(missing_ok=True)
        parent = Path(final).parent
        free = shutil.disk_usage(parent).free if parent.exists() else 0
        raise OSError(errno.ENOSPC, f"disk full while writing {final} ({free / 1e6:.1f} MB free on the filesystem of "
                                    f"{parent}); the partial file was removed. Free space there, or run in a "
                                    "directory on a larger filesystem, then rerun") from exc


def write_table(df: pd.DataFrame, path: str | Path, meta: dict | None = None) -> None:
    """Write `df` to Parquet with `meta` (JSON) in the schema metadata; never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata({**existing, META_KEY: json.dumps(meta or {}, default=str)})
    tmp = atomic_path(path)
    with removed_when_disk_full(tmp, path):
        pq.write_table(table, tmp)
        commit(tmp, path)


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


def metric_frame(rows: list[dict], **common) -> pd.DataFrame:
    """Long-format metric table: `rows` (dicts with at least metric and value) + shared columns."""
    df = pd.DataFrame([{**common, **r} for r in rows])
    for col in METRIC_COLUMNS:
        if col not in df:
            df[col] = None
    df = df[METRIC_COLUMNS]
    for col in ("layer", "shots", "seed"):
        df[col] = pd.array(df[col], dtype="Int64")
    for col in ("value", "ci_low", "ci_high"):
        df[col] = df[col].astype("float64")
    return df
