"""The activation file: HDF5 layout, streaming writes, atomic commit, resume, reading.

Layout (docs/outputs.md; N prompts, L layers, d = d_model, H heads, K demonstrations,
C classes, k = top-k):

    attrs            schema_version, model_id, model_revision, model_sha, dtype, n_layers,
                     d_model, n_heads, prompts_sha256, params_sha256, iclscope_version,
                     created, n_done (prompts written, a prefix), complete (set last)
    /prompts/*       prompt_id, gold, task, answer, seed, shots, n_tokens, query_pos [N];
                     label_pos, label_class [N, K] (-1 = none); demo_spans [N, K, 2]; query_span [N, 2]
    /resid/query         [N, L+1, d]  residual stream at the query position (index 0 = embeddings)
    /resid/last_input    [N, L+1, d]  ... at the last token of the test input's text
    /resid/content_mean  [N, L+1, d]  ... mean over the test input's text tokens
    /resid/label         [N, K, L+1, d]  ... at each demonstration's label token
    /attn/query_to_label [N, L, H, K] float32  post-softmax attention of the query to label tokens
    /logits/label        [N, C] float32  logits of the first sub-token of each label word
    /logits/topk_ids, /logits/topk_values [N, k]  top-k of the full vocabulary at the query
    /generation/tokens [N, G] int32 (-1 pad), /generation/text [N]  greedy answers (generation tasks)

Residual states are float16 (or float32, `store_dtype`). Chunks are one layer of `CHUNK_ROWS`
prompts, so reading one layer across all prompts touches only that layer's chunks.

Writing goes to `<path>.partial`; `n_done` is advanced after each flushed window, so a killed
job leaves a file that says how far it got and is never mistaken for a complete one. `commit()`
sets `complete`, fsyncs and renames.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import h5py
import numpy as np

from iclscope.core.atomic import commit, partial_path, written

SCHEMA_VERSION = 1
CHUNK_ROWS = 64
STR = h5py.string_dtype("utf-8")


class IncompleteFileError(RuntimeError):
    """An activation file is partial, truncated or corrupt."""


def _compression(name: str) -> dict:
    return {} if name == "none" else {"compression": name}


class ActivationWriter:
    """Create or resume `<path>.partial` and write prompts in order, window by window.

    `layout` gives the dataset shapes: n, n_layers, d_model, n_heads, max_demos, n_classes,
    topk, max_new_tokens (0 = no generation), store_dtype, positions (resid names to store).
    `attrs` must contain prompts_sha256 and params_sha256: a partial file written with other
    prompts or parameters is discarded, one with the same is resumed from `n_done`.
    """

    def __init__(self, path: str | Path, layout: dict, attrs: dict, prompts: dict[str, np.ndarray],
                 compression: str = "lzf"):
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.layout = layout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self._open_or_resume(attrs)
        if self.file is None:
            self.file = self._create(attrs, prompts, compression)

    # ------------------------------------------------------------------ setup
    def _open_or_resume(self, attrs: dict):
        if not self.tmp.exists():
            return None
        try:
            f = h5py.File(self.tmp, "r+")
            same = all(f.attrs.get(k) == attrs[k] for k in ("prompts_sha256", "params_sha256"))
            if same and "n_done" in f.attrs:
                return f
            f.close()
        except OSError:
            pass  # truncated by a kill mid-write: start again
        self.tmp.unlink()
        return None

    def _create(self, attrs: dict, prompts: dict[str, np.ndarray], compression: str):
        lay = self.layout
        n, L1, d = lay["n"], lay["n_layers"] + 1, lay["d_model"]
        rows = min(CHUNK_ROWS, n)
        f = h5py.File(self.tmp, "w")
        f.attrs.update({
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **attrs,
            "n_done": 0,
            "complete": False,
        })
        g = f.create_group("prompts")
        for name, values in prompts.items():
            values = np.asarray(values)
            if values.dtype.kind in "OUS":
                g.create_dataset(name, data=values.astype(object), dtype=STR)
            else:
                g.create_dataset(name, data=values)
        kw = _compression(compression)
        dt = np.dtype(lay["store_dtype"])
        for pos in lay["positions"]:
            if pos == "label":
                if lay["max_demos"]:
                    f.create_dataset("resid/label", (n, lay["max_demos"], L1, d), dtype=dt,
                                     chunks=(rows, lay["max_demos"], 1, d), **kw)
            else:
                f.create_dataset(f"resid/{pos}", (n, L1, d), dtype=dt, chunks=(rows, 1, d), **kw)
        if lay["max_demos"]:
            f.create_dataset("attn/query_to_label", (n, lay["n_layers"], lay["n_heads"], lay["max_demos"]),
                             dtype=np.float32, chunks=(rows, lay["n_layers"], lay["n_heads"], lay["max_demos"]),
                             fillvalue=np.nan, **kw)
        if lay["n_classes"]:
            f.create_dataset("logits/label", (n, lay["n_classes"]), dtype=np.float32, **kw)
        f.create_dataset("logits/topk_ids", (n, lay["topk"]), dtype=np.int32, **kw)
        f.create_dataset("logits/topk_values", (n, lay["topk"]), dtype=np.float32, **kw)
        if lay["max_new_tokens"]:
            f.create_dataset("generation/tokens", (n, lay["max_new_tokens"]), dtype=np.int32, fillvalue=-1, **kw)
            f.create_dataset("generation/text", (n,), dtype=STR)
        f.flush()
        return f

    # ------------------------------------------------------------------ writing
    @property
    def n_done(self) -> int:
        return int(self.file.attrs["n_done"])

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write rows [start, start + len) of every named dataset, then advance n_done.

        Rows must be written in order (start == n_done): the prefix invariant is what makes a
        partial file resumable.
        """
        if start != self.n_done:
            raise ValueError(f"rows must be written in order: got start={start}, n_done={self.n_done}")
        n = None
        for name, values in arrays.items():
            ds = self.file[name]
            n = len(values)
            if ds.dtype == np.float16 and np.issubdtype(values.dtype, np.floating):
                peak = float(np.nanmax(np.abs(values))) if values.size else 0.0
                if peak > np.finfo(np.float16).max:
                    raise OverflowError(f"{name}: values up to {peak:.3g} overflow float16; "
                                        "set extract.store_dtype: float32")
            ds[start:start + n] = values
        self.file.attrs["n_done"] = start + (n or 0)
        self.file.flush()

    def commit(self) -> None:
        """Mark complete, fsync, rename `<path>.partial` to `<path>`."""
        if self.n_done != self.layout["n"]:
            raise IncompleteFileError(f"{self.tmp}: {self.n_done} of {self.layout['n']} prompts written")
        self.file.attrs["complete"] = True
        self.file.flush()
        self.file.close()
        commit(self.tmp, self.path)

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def open_activations(path: str | Path, require_complete: bool = True) -> h5py.File:
    """Open an activation file read-only; a partial, truncated or corrupt file raises with its name."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IncompleteFileError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {exc}. "
                                  "Delete it and rerun the extract rule") from exc
    if require_complete and not bool(f.attrs.get("complete", False)):
        done = f.attrs.get("n_done", "?")
        f.close()
        raise IncompleteFileError(f"{path} is incomplete ({done} prompts written, 'complete' not set); "
                                  "rerun the extract rule to resume it")
    return f


def read_prompts(f: h5py.File) -> dict[str, np.ndarray]:
    """All /prompts/* arrays (strings decoded)."""
    out = {}
    for name, ds in f["prompts"].items():
        out[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    return out


def shard_rows(n: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Contiguous rows [lo, hi) of shard `shard` (1-based) out of `n_shards` over n prompts."""
    if not 1 <= shard <= n_shards:
        raise ValueError(f"shard {shard} is not in 1..{n_shards}")
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    return int(bounds[shard - 1]), int(bounds[shard])


def gather_shards(shard_paths: list[str | Path], out_path: str | Path) -> None:
    """One file whose datasets are HDF5 virtual datasets over the shards' (no copy of activations).

    Shards must be complete and consecutive (rows attrs [lo, hi) adjoining). /prompts/* are small
    and copied. Source files are referenced by paths relative to `out_path`'s directory, so the
    result and its shard directory can be moved or shared together.
    """
    out_path = Path(out_path)
    shards = [open_activations(p) for p in shard_paths]
    try:
        rows = [tuple(int(r) for r in f.attrs["rows"]) for f in shards]
        if rows[0][0] != 0 or any(a[1] != b[0] for a, b in zip(rows, rows[1:], strict=False)):
            raise ValueError(f"shards do not tile the prompts: rows {rows}")
        digests = {(f.attrs["prompts_sha256"], f.attrs["params_sha256"]) for f in shards}
        if len(digests) != 1:
            raise ValueError("shards were extracted from different prompts or with different parameters")
        n = rows[-1][1]
        with written(out_path) as tmp:
            with h5py.File(tmp, "w") as out:
                out.attrs.update(dict(shards[0].attrs))
                out.attrs.update(rows=[0, n], n_done=n, shards=len(shards), complete=False)
                names = []
                shards[0].visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
                for name in names:
                    first = shards[0][name]
                    if name.startswith("prompts/"):
                        data = np.concatenate([f[name][()] for f in shards])
                        out.create_dataset(name, data=data, dtype=first.dtype)
                        continue
                    layout = h5py.VirtualLayout(shape=(n, *first.shape[1:]), dtype=first.dtype)
                    for f, (lo, hi) in zip(shards, rows, strict=True):
                        rel = os.path.relpath(f.filename, out_path.parent)
                        layout[lo:hi] = h5py.VirtualSource(rel, name, shape=(hi - lo, *first.shape[1:]))
                    out.create_virtual_dataset(name, layout, fillvalue=first.fillvalue)
                out.attrs["complete"] = True
    finally:
        for f in shards:
            f.close()


def open_token_states(path: str | Path) -> h5py.File:
    """Open a token-state file; a partial or unreadable one raises with its name."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IncompleteFileError(f"{path} is not a readable HDF5 file: {exc}; delete it and rerun") from exc
    if not bool(f.attrs.get("complete", False)):
        f.close()
        raise IncompleteFileError(f"{path} is incomplete; rerun the token_states rule")
    return f


class ActivationFile:
    """A lazy, named view of an activation file (`iclscope.open`): nothing is read until sliced.

        with iclscope.open("results/activations/smollm2-135m/tweets.h5") as act:
            act.names                      # ['attn/query_to_label', 'logits/label', 'resid/query', ...]
            act["resid/query"][:, 15]      # [N, d] of layer 15, read from that layer's chunks only
            act.prompts                    # DataFrame of /prompts/* (one row per prompt)
            act.attrs["model_id"]
    """

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        self.file = open_activations(self.path, require_complete) if "resid/tokens" not in _peek(self.path) \
            else open_token_states(self.path)
        self.attrs = dict(self.file.attrs)

    @property
    def names(self) -> list[str]:
        found = []
        self.file.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset)
                             and not name.startswith("prompts/") else None)
        return sorted(found)

    def __getitem__(self, name: str) -> h5py.Dataset:
        if name not in self.file:
            raise KeyError(f"{self.path} has no dataset '{name}'; it has: {', '.join(self.names)}")
        return self.file[name]

    @property
    def prompts(self):
        import pandas as pd

        prompts = read_prompts(self.file) if "prompts" in self.file else {}
        return pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in prompts.items()})

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ActivationFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ActivationFile({str(self.path)!r}, {len(self.names)} datasets)"


def _peek(path: Path) -> set[str]:
    """Top-level groups/datasets of an HDF5 file ('resid/tokens' marks a token-state file)."""
    try:
        with h5py.File(path, "r") as f:
            return {"resid/tokens"} if "resid/tokens" in f else set(f)
    except OSError:
        return set()  # open_activations reports it with its name
