"""The part-of-speech lexicon config/datasets/word_classes.csv, a claims dataset (docs/methods.md §5.1):
clean single words, each in one class, and enough of every class for IC-ICL's balanced test inputs,
its pool, its validation inputs and re-weighting's training prompts, split as `prepare_dataset` splits it."""

import csv
from collections import Counter
from dataclasses import replace
from pathlib import Path

import yaml

from iclscope.core.config import DatasetSpec
from iclscope.core.jobs import dataset_settings
from iclscope.core.validate import validate_config
from iclscope.data.datasets import prepare_dataset
from iclscope.model.prompts import balanced_sample

REPO = Path(__file__).resolve().parents[2]
LEXICON = REPO / "config" / "datasets" / "word_classes.csv"
CLASSES = {"noun": " noun", "verb": " verb", "adjective": " adjective", "adverb": " adverb"}


def lexicon_rows() -> list[tuple[str, str]]:
    with LEXICON.open(newline="", encoding="ascii") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["text", "label"]
        return [(r["text"], r["label"]) for r in reader]


def test_lexicon_words_are_clean_and_in_one_class():
    rows = lexicon_rows()
    words = [w for w, _ in rows]
    assert len(set(words)) == len(words)  # no word twice, so no word in two classes
    assert all(w.isascii() and w.isalpha() and w.islower() for w in words)  # lower-case single words
    counts = Counter(label for _, label in rows)
    assert set(counts) == set(CLASSES) and min(counts.values()) >= 170
    # the rule of inclusion: one usual part of speech, so no word commonly used in two classes
    two_classes = {"run", "walk", "light", "fast", "well", "back", "hard", "late", "early", "love", "open", "clean"}
    two_classes |= {"table", "book", "water", "cheap", "easy", "quiet", "steal", "invite", "daily", "kindly"}
    assert not two_classes & set(words)
    known = {"bring": "verb", "choose": "verb", "forget": "verb", "elephant": "noun", "curious": "adjective"}
    known |= {"lonely": "adjective", "quickly": "adverb", "seldom": "adverb"}
    assert all((w, c) in rows for w, c in known.items())


def test_claims_config_reads_the_lexicon_and_its_split_fits_icicl():
    cfg = validate_config(yaml.safe_load((REPO / "config" / "examples" / "claims.yaml").read_text()))
    block = cfg["datasets"]["word_classes"]
    assert block["source"] == "local" and block["path"] == "config/datasets/word_classes.csv"
    assert (block["text_column"], block["label_column"]) == ("text", "label")
    assert block["classes"] == CLASSES and block["test_fraction"] == 0.5
    spec = DatasetSpec.from_config("word_classes", dataset_settings(cfg, "word_classes"))
    df, meta = prepare_dataset(replace(spec, path=str(REPO / spec.path)))  # the config's path is the repo's
    assert meta["report"]["dropped"] == {} and len(df) == len(lexicon_rows())
    per = df.groupby(["label", "split"]).size().unstack()
    n = len(CLASSES)
    icicl = cfg["icicl"]
    assert per["test"].min() >= icicl["n_test"] // n  # IC-ICL's balanced test inputs (320: 80 per class)
    # the train half holds IC-ICL's pool, its sweep's validation inputs outside the pool, and
    # re-weighting's training prompts besides one demonstration per class
    train_need = (icicl["pool_size"] + icicl["sweep"]["n_val"] + block["prompts"]["n_train"]) // n + 1
    assert per["train"].min() >= train_need
    tests = balanced_sample(df[df["split"] == "test"], list(CLASSES), icicl["n_test"], 43, "test split")
    assert tests["label"].value_counts().to_dict() == {c: icicl["n_test"] // n for c in CLASSES}
