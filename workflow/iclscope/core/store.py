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
    /resid/label         [N, K, L+1, d]  ... at each demonstration's label token, stored per
                     prompt only where prompts share no demonstration prefix; otherwise
    /prefix/resid/label  [P, K, L+1, d]  once per shared prefix (schema 2), with
    /prefix/n_tokens     [P]  the prefix's length in tokens and /prompts/prefix_index [N] the
                     prefix each prompt continues. Read label states with `label_states(f)`
                     ([N, K, L+1, d] whatever the layout): no reader opens /resid/label itself.
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

SCHEMA_VERSION = 2  # 2: label states once per shared demonstration prefix (/prefix/*)
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

    def __init__(
        self, path: str | Path, layout: dict, attrs: dict, prompts: dict[str, np.ndarray], compression: str = "lzf"
    ):
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
        f.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                **attrs,
                "n_done": 0,
                "complete": False,
            }
        )
        g = f.create_group("prompts")
        for name, values in prompts.items():
            values = np.asarray(values)
            if values.dtype.kind in "OUS":
                g.create_dataset(name, data=values.astype(object), dtype=STR)
            else:
                g.create_dataset(name, data=values)
        kw = _compression(compression)
        dt = np.dtype(lay["store_dtype"])
        prefixes = lay.get("prefix_tokens")  # [P] lengths of the shared prefixes; None: label states per prompt
        if prefixes is not None:
            f.create_dataset("prefix/n_tokens", data=np.asarray(prefixes, dtype=np.int32))
        for pos in lay["positions"]:
            if pos == "label":
                if lay["max_demos"] and prefixes is not None:
                    f.create_dataset(
                        "prefix/resid/label",
                        (len(prefixes), lay["max_demos"], L1, d),
                        dtype=dt,
                        chunks=(1, lay["max_demos"], 1, d),
                        **kw,
                    )
                elif lay["max_demos"]:
                    f.create_dataset(
                        "resid/label",
                        (n, lay["max_demos"], L1, d),
                        dtype=dt,
                        chunks=(rows, lay["max_demos"], 1, d),
                        **kw,
                    )
            else:
                f.create_dataset(f"resid/{pos}", (n, L1, d), dtype=dt, chunks=(rows, 1, d), **kw)
        if lay["max_demos"]:
            f.create_dataset(
                "attn/query_to_label",
                (n, lay["n_layers"], lay["n_heads"], lay["max_demos"]),
                dtype=np.float32,
                chunks=(rows, lay["n_layers"], lay["n_heads"], lay["max_demos"]),
                fillvalue=np.nan,
                **kw,
            )
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
            n = len(values)
            self._put(name, slice(start, start + n), values)
        self.file.attrs["n_done"] = start + (n or 0)
        self.file.flush()

    def write_prefix(self, index: int, label: np.ndarray) -> None:
        """Label states [K, L+1, d] of shared prefix `index`, flushed before any prompt continuing it
        is written (a resumed job writes them again, identically)."""
        self._put("prefix/resid/label", index, label)
        self.file.flush()

    def _put(self, name: str, where, values: np.ndarray) -> None:
        ds = self.file[name]
        if ds.dtype == np.float16 and np.issubdtype(values.dtype, np.floating):
            peak = float(np.nanmax(np.abs(values))) if values.size else 0.0
            if peak > np.finfo(np.float16).max:
                raise OverflowError(
                    f"{name}: values up to {peak:.3g} overflow float16; set extract.store_dtype: float32"
                )
        ds[where] = values

    def commit(self) -> None:
        """Mark complete, fsync, rename `<path>.partial` to `<path>`."""
        if self.n_done != self.layout["n"]:
            raise IncompleteFileError(f"{self.tmp}: {self.n_done} of {self.layout['n']} prompts written")
        self.file.attrs["complete"] = True
        self.file.flush()
        self.file.close()
        commit(self.tmp, self.path)

    def close(self) -> None:
        """Close without committing (after an error: `commit` closes a finished file itself). An error of
        the close itself (a file whose flush already failed on a full disk) must not hide the first."""
        if self.file.id.valid:
            try:
                self.file.close()
            except (OSError, RuntimeError):
                pass


def open_activations(path: str | Path, require_complete: bool = True) -> h5py.File:
    """Open an activation file read-only; a partial, truncated or corrupt file raises with its name."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IncompleteFileError(
            f"{path} is not a readable HDF5 file (truncated or corrupt?): {exc}. Delete it and rerun the extract rule"
        ) from exc
    if require_complete and not bool(f.attrs.get("complete", False)):
        done = f.attrs.get("n_done", "?")
        f.close()
        raise IncompleteFileError(
            f"{path} is incomplete ({done} prompts written, 'complete' not set); rerun the extract rule to resume it"
        )
    version = int(f.attrs.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        f.close()
        raise IncompleteFileError(
            f"{path} has schema_version {version}, newer than this iclscope reads "
            f"({SCHEMA_VERSION}); update iclscope or rerun the extract rule"
        )
    return f


class LabelStates:
    """The label states of an activation file as one lazy array [N, K, L+1, d], whatever the layout:
    per prompt (/resid/label, schema 1 and prompts without a shared prefix) or once per shared
    prefix (/prefix/resid/label [P, K, L+1, d] referenced by /prompts/prefix_index [N]).

        label_states(f)[rows, :, layer]    # [n, K, d]; rows an int, slice or index array

    Only the prefixes the rows reference are read (one chunk per prefix and layer).
    """

    def __init__(self, f: h5py.File):
        if "prefix/resid/label" in f:
            self.data = f["prefix/resid/label"]
            self.index = f["prompts/prefix_index"][()].astype(np.int64)
        elif "resid/label" in f:
            self.data, self.index = f["resid/label"], None
        else:
            raise KeyError(
                f"{f.filename} stores no label states (no demonstrations, or 'label' not in extract.positions)"
            )
        n = len(self.index) if self.index is not None else self.data.shape[0]
        self.shape = (n, *self.data.shape[1:])
        self.dtype = self.data.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        if self.index is None and not isinstance(rows, np.ndarray | list):
            return self.data[(rows, *rest)]
        picked = np.arange(self.shape[0])[rows]  # int, slice, mask or index array -> prompt rows
        scalar = np.ndim(picked) == 0
        picked = np.atleast_1d(picked)
        source = picked if self.index is None else self.index[picked]
        unique, inverse = np.unique(source, return_inverse=True)  # h5py reads increasing indices only
        if not len(unique):
            return self.data[(slice(0, 0), *rest)]
        values = self.data[(unique, *rest)][inverse.reshape(-1)]
        return values[0] if scalar else values

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)


def label_states(f: h5py.File) -> LabelStates:
    """The one reader of label states: [N, K, L+1, d] lazily, from either layout (LabelStates)."""
    return LabelStates(f)


def resid(f: h5py.File, position: str):
    """The residual states of one position set ("query", "last_input", "content_mean", "label") as an
    array-like indexed [rows, ...]; None when the file does not store it."""
    if position == "label":
        return label_states(f) if ("prefix/resid/label" in f or "resid/label" in f) else None
    name = f"resid/{position}"
    return f[name] if name in f else None


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
                names = _dataset_names(shards[0])
                if any(_dataset_names(f) != names for f in shards[1:]):
                    raise ValueError(
                        "shards store different datasets (label states per prompt in one, per shared "
                        "prefix in another?); rerun their extraction with one iclscope version"
                    )
                # prefix rows of each shard [lo, hi) in the gathered /prefix/* (each shard numbers its own)
                n_prefix = [f["prefix/n_tokens"].shape[0] if "prefix/n_tokens" in f else 0 for f in shards]
                ends = np.cumsum(n_prefix).tolist()
                prefix_rows = [(end - k, end) for k, end in zip(n_prefix, ends, strict=True)]
                for name in names:
                    first = shards[0][name]
                    if name == "prompts/prefix_index":
                        data = np.concatenate(
                            [
                                np.where(f[name][()] >= 0, f[name][()] + lo, -1)
                                for f, (lo, _) in zip(shards, prefix_rows, strict=True)
                            ]
                        )
                        out.create_dataset(name, data=data.astype(first.dtype))
                        continue
                    if name.startswith("prompts/"):
                        data = np.concatenate([f[name][()] for f in shards])
                        out.create_dataset(name, data=data, dtype=first.dtype)
                        continue
                    spans = prefix_rows if name.startswith("prefix/") else rows
                    total = spans[-1][1]
                    layout = h5py.VirtualLayout(shape=(total, *first.shape[1:]), dtype=first.dtype)
                    for f, (lo, hi) in zip(shards, spans, strict=True):
                        if hi == lo:
                            continue
                        rel = os.path.relpath(f.filename, out_path.parent)
                        layout[lo:hi] = h5py.VirtualSource(rel, name, shape=(hi - lo, *first.shape[1:]))
                    out.create_virtual_dataset(name, layout, fillvalue=first.fillvalue)
                out.attrs["complete"] = True
    finally:
        for f in shards:
            f.close()


def _dataset_names(f: h5py.File) -> list[str]:
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


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
        act["resid/label"][:8, :, 15]  # [8, K, d], per prompt whatever the layout (label_states)
        act.prompts                    # DataFrame of /prompts/* (one row per prompt)
        act.attrs["model_id"]
    """

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        self.file = (
            open_activations(self.path, require_complete)
            if "resid/tokens" not in _peek(self.path)
            else open_token_states(self.path)
        )
        self.attrs = dict(self.file.attrs)

    @property
    def names(self) -> list[str]:
        found = []
        self.file.visititems(
            lambda name, obj: (
                found.append(name)
                if isinstance(obj, h5py.Dataset) and not name.startswith(("prompts/", "prefix/"))
                else None
            )
        )
        if "prefix/resid/label" in self.file:
            found.append("resid/label")
        return sorted(found)

    def __getitem__(self, name: str):
        """An h5py.Dataset, or for "resid/label" the per-prompt view of `label_states`."""
        if name == "resid/label" and "prefix/resid/label" in self.file:
            return label_states(self.file)
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
