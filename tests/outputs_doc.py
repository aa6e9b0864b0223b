"""docs/outputs.md against the files of a run: every column of every table, every dataset and attribute
of every HDF5 file and every key a product's metadata holds is named, in backticks, in the doc's entry
for that file. Used by tests/unit/test_outputs_doc.py (a small run on the tiny model) and by
tests/workflow/test_end_to_end.py (the files of the end-to-end run).

An entry is found by its anchor: the paragraph, list item or table row holding the anchor (a
backticked path of outputs.md), or for an anchor that is a heading, the section under it. A
backticked name with a placeholder (`logit_<class>`) stands for every name of that shape.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "outputs.md"
DATASET_COLUMNS = ("row_id", "text", "label", "split", "task")  # iclscope.data.datasets's own

# (product glob under results/, the doc entry that lists its contents, what of it is checked)
# checked: "columns" (Parquet columns), "meta" (+ the top-level keys of its iclscope metadata),
# "dataset" (its metadata keys and the package's own columns; the source's other columns pass
# through), "hdf5" (datasets and attributes), "csv" (header). First match wins.
PRODUCTS = [
    ("datasets/*.parquet", "`results/datasets/<dataset>.parquet`", "dataset"),
    ("prompts/*/*.parquet", "`results/prompts/<model>/<dataset>.parquet`", "meta"),
    ("predictions/*/*.parquet", "`results/predictions/<model>/<dataset>.parquet`", "columns"),
    ("metrics/*/*/decodability_fit_points.parquet", "`decodability_fit_points.parquet`", "columns"),
    ("metrics/toy/regression/*.parquet", "`metrics/toy/regression/toy_regression.parquet`", "columns"),
    ("metrics/toy/*/entropy_training.parquet", "`metrics/toy/<dataset>/entropy_training.parquet`", "columns"),
    ("metrics/toy/*/entropy_training/*.parquet", "`metrics/toy/<dataset>/entropy_training.parquet`", "columns"),
    ("metrics/*/peak_layers.parquet", "`metrics/<model>/peak_layers.parquet`", "columns"),
    ("metrics/*/*/*.parquet", "### Metric tables", "columns"),
    ("icicl/*/*/predictions.parquet", "`results/icicl/<model>/<dataset>/predictions.parquet`", "columns"),
    ("icicl/*/*/sweep.parquet", "`results/icicl/<model>/<dataset>/sweep.parquet`", "columns"),
    (
        "anchors/*/*/saliency_examples.parquet",
        "`results/anchors/<model>/<dataset>/saliency_examples.parquet`",
        "columns",
    ),
    ("patching/*/*/answers.parquet", "`results/patching/<model>/<dataset>/answers.parquet`", "columns"),
    ("taskspace/*/*.view.parquet", "`results/taskspace/<model>/<dataset>.view.parquet`", "columns"),
    ("taskspace/*/*.h5", "`results/taskspace/<model>/<dataset>.h5`", "hdf5"),
    ("activations/*/*.anchors.h5", "`results/activations/<model>/<dataset>.anchors.h5`", "hdf5"),
    ("activations/*/*.tokens.h5", "`results/activations/<model>/<dataset>.tokens.h5`", "hdf5"),
    ("activations/*/*.shards/*.h5", "## Activation files", "hdf5"),
    ("activations/*/*.h5", "## Activation files", "hdf5"),
    ("layer_lora/*/*/*.h5", "## Activation files", "hdf5"),
    ("tsft/*/*/*/train_log.parquet", "`results/tsft/<model>/<dataset>/<arm>-seed<seed>/`", "columns"),
    ("tsft/*/*/*/eval_log.parquet", "`results/tsft/<model>/<dataset>/<arm>-seed<seed>/`", "columns"),
    ("tsft/*/*/*/eval.parquet", "`results/tsft/<model>/<dataset>/<arm>-seed<seed>/`", "columns"),
    ("layer_lora/*/*/*/train_log.parquet", "`results/layer_lora/<model>/<dataset>/<arm>/`", "columns"),
    ("layer_lora/*/*/prompts.parquet", "`results/prompts/<model>/<dataset>.parquet`", "meta"),
    ("summary/headline.csv", "`results/summary/headline.csv`", "csv"),
    ("summary/peak_layers.csv", "`results/summary/peak_layers.csv`", "csv"),
    ("summary/claims.csv", "`results/summary/claims.csv`", "csv"),
]


def entry(doc: str, anchor: str) -> str:
    """The doc text that documents `anchor`: its section when it is a heading, else the paragraph,
    list item or table row holding its first occurrence."""
    lines = doc.splitlines()
    if anchor.startswith("#"):
        level = len(anchor) - len(anchor.lstrip("#"))
        start = lines.index(anchor)
        end = next(
            (i for i in range(start + 1, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i])),
            len(lines),
        )
        return "\n".join(lines[start:end])
    start = next(i for i, line in enumerate(lines) if anchor in line)
    if lines[start].startswith("|"):
        return lines[start]
    end = start + 1
    while end < len(lines) and lines[end].strip() and not re.match(r"(- |\||#)", lines[end]):
        end += 1
    return "\n".join(lines[start:end])


def names_in(text: str) -> list[re.Pattern]:
    """The backticked names of `text` as patterns: a placeholder <...> stands for any name part."""
    out = []
    for token in re.findall(r"`([^`]+)`", text):
        for name in re.split(r"[\s,]+", token):
            if name:
                pattern = re.sub(r"<[^>]*>", ".+", re.escape(name))  # re.escape leaves < and > as they are
                out.append(re.compile(pattern))
    return out


def documented(name: str, patterns: list[re.Pattern]) -> bool:
    """A name (a column, a key; an HDF5 path "/a/b" also by its leaf "b") is one of `patterns`."""
    candidates = {name, name.rsplit("/", 1)[-1], name.lstrip("/")}
    return any(p.fullmatch(c) for p in patterns for c in candidates)


def contents(path: Path, kind: str) -> list[str]:
    """What of a product file the doc must name."""
    if kind in ("columns", "meta", "dataset"):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        names = [n for n in schema.names if not n.startswith("__index_level_")]
        if kind == "dataset":
            names = [n for n in names if n in DATASET_COLUMNS]
        if kind in ("meta", "dataset"):
            meta = json.loads((schema.metadata or {}).get(b"iclscope", b"{}"))
            names += [f"meta:{k}" for k in meta]
        return names
    if kind == "hdf5":
        import h5py

        names = []
        with h5py.File(path) as f:
            names += [f"attr:{k}" for k in f.attrs]

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    names.append("/" + name)
                names.extend(f"attr:{k}" for k in obj.attrs)

            f.visititems(visit)
        return sorted(set(names))
    if kind == "csv":
        return path.read_text().splitlines()[0].split(",")
    raise ValueError(kind)


def transient(rel: str) -> bool:
    """A running job's state (checkpoints, resume directories, hidden folders), not a product."""
    parts = Path(rel).parts
    return any(p.startswith(".") or p in ("checkpoint", "resume") or p.endswith(".resume") for p in parts)


def product_of(rel: str) -> tuple[str, str] | None:
    """(anchor, kind) of a file under results/ (its path relative to results/), or None."""
    for pattern, anchor, kind in PRODUCTS:
        if fnmatch(rel, pattern):
            return anchor, kind
    return None


def undocumented(results: Path, doc: str | None = None) -> list[str]:
    """ "<file>: <name>" for every column / dataset / attribute / metadata key of the products under
    `results` that the doc's entry for the product does not name; "<file>: no entry" for a product
    the doc has no entry for."""
    doc = DOC.read_text() if doc is None else doc
    problems = []
    for path in sorted(p for p in results.rglob("*") if p.is_file()):
        rel = str(path.relative_to(results))
        found = product_of(rel)
        if found is None or path.suffix not in (".parquet", ".h5", ".csv") or transient(rel):
            continue
        anchor, kind = found
        try:
            patterns = names_in(entry(doc, anchor))
        except (StopIteration, ValueError):
            problems.append(f"{rel}: no entry {anchor} in docs/outputs.md")
            continue
        for name in contents(path, kind):
            bare = name.split(":", 1)[1] if name.startswith(("attr:", "meta:")) else name
            if not documented(bare, patterns):
                problems.append(f"{rel}: {name}")
    return problems


def unlisted_products(results: Path) -> list[str]:
    """Product files (Parquet, HDF5, CSV) under `results` that no row of PRODUCTS covers."""
    return sorted(
        str(p.relative_to(results))
        for p in results.rglob("*")
        if p.is_file()
        and p.suffix in (".parquet", ".h5", ".csv")
        and not transient(str(p.relative_to(results)))
        and product_of(str(p.relative_to(results))) is None
    )
