"""Token positions recorded while assembling prompts land on the right tokens."""

import pandas as pd
import pytest

from iclscope.core.config import ConfigError, DatasetSpec, PromptSpec
from iclscope.model.prompts import build_prompts, split_template
from tiny_models import train_tokenizer


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tokenizer(request, tmp_path_factory):
    return train_tokenizer(request.param, tmp_path_factory.mktemp(f"tok-{request.param}"))


def tweets_frame():
    rows = []
    texts = {
        "positive": ["I love this car", "great fun plot", "so much love", "fun fun car", "I love it"],
        "negative": ["the flight was late", "rude crew again", "late and rude", "the car was late", "crew was rude"],
    }
    for label, items in texts.items():
        for i, t in enumerate(items):
            rows.append({"text": t, "label": label, "split": "train" if i < 3 else "test", "task": "tw"})
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    return df


def spec(**prompt_kw):
    p = PromptSpec(template="Tweet: {text}\nSentiment:{label}", seeds=(1, 2), n_test=4, shots_per_class=1, **prompt_kw)
    return DatasetSpec(
        name="tw", source="local", path="x", classes={"negative": " negative", "positive": " positive"}, prompts=p
    )


def test_split_template():
    assert split_template("Tweet: {text}\nSentiment:{label}") == ("Tweet: ", "\nSentiment:", "")


def test_positions_land_on_the_right_tokens(tokenizer):
    df = tweets_frame()
    table, meta = build_prompts(df, spec(), tokenizer, context_length=256)
    assert len(table) == 2 * 4
    label_ids = meta["label_token_ids"]
    for rec in table.itertuples():
        ids = list(rec.input_ids)
        assert rec.query_pos == len(ids) - 1
        assert tokenizer.decode(ids[rec.query_pos :]).endswith(":")  # prompt ends at 'Sentiment:'
        assert rec.text.endswith("\nSentiment:")
        for pos, cls in zip(rec.label_pos, rec.label_class, strict=True):
            assert ids[pos] == label_ids[cls]
            assert tokenizer.decode([ids[pos]]).strip() in ("negative", "positive")[cls]
        demo_rows = df.set_index("row_id").loc[rec.demo_ids]
        for (start, end), text in zip(rec.demo_spans, demo_rows["text"], strict=True):
            assert text in tokenizer.decode(ids[start:end])  # a token may straddle into the template
        start, end = rec.query_span
        query_text = df.set_index("row_id").loc[rec.row_id, "text"]
        assert query_text in tokenizer.decode(ids[start:end])
        assert query_text not in tokenizer.decode(ids[start + 1 : end])  # the span starts on the text
        fmt = tokenizer.decode([ids[p] for p in rec.format_pos])
        assert "Tweet" in fmt and "Sentiment" in fmt
        assert not set(rec.format_pos) & set(rec.label_pos)
        # a token that straddles template and input (' I' after 'Tweet:') is the input's, not an anchor
        text_tokens = {p for start, end in rec.demo_spans for p in range(start, end)}
        assert not set(rec.format_pos) & text_tokens


def test_same_demos_within_a_seed_balanced_queries(tokenizer):
    table, _ = build_prompts(tweets_frame(), spec(), tokenizer, context_length=256)
    for _, g in table.groupby("seed"):
        assert g["demo_ids"].map(tuple).nunique() == 1
        assert sorted(g["gold"].tolist()) == [0, 0, 1, 1]
    assert not set(table["row_id"]) & {i for d in table["demo_ids"] for i in d}


def test_too_long_prompts_are_counted_not_truncated(tokenizer):
    table, meta = build_prompts(tweets_frame(), spec(), tokenizer, context_length=256)
    limit = int(table["n_tokens"].median())
    short, meta = build_prompts(tweets_frame(), spec(), tokenizer, context_length=limit)
    assert meta["n_too_long"] == int((table["n_tokens"] > limit).sum()) > 0
    assert (short["n_tokens"] <= limit).all()
    with pytest.raises(ConfigError, match="longer than the model context"):
        build_prompts(tweets_frame(), spec(), tokenizer, context_length=5)


def test_not_enough_rows_for_shots(tokenizer):
    s = spec()
    s = DatasetSpec(**{**s.__dict__, "prompts": PromptSpec(template=s.prompts.template, shots_per_class=9)})
    with pytest.raises(ConfigError, match="shots_per_class"):
        build_prompts(tweets_frame(), s, tokenizer, context_length=256)


def test_generation_prompts_share_queries_across_tasks(tokenizer):
    rows = []
    words = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late"]
    for task, fn in {"upper": str.upper, "first": lambda w: w[0]}.items():
        for i, w in enumerate(words):
            rows.append({"text": w, "label": fn(w), "split": "test" if i >= 5 else "train", "task": task})
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    s = DatasetSpec(
        name="w",
        source="words",
        kind="generation",
        prompts=PromptSpec(template="{text} ->{label}", shots=(2,), seeds=(3,), n_test=3),
    )
    table, meta = build_prompts(df, s, tokenizer, context_length=256)
    assert meta["classes"] == ["first", "upper"]
    by_task = {t: g.sort_values("prompt_id") for t, g in table.groupby("task")}
    queries = [df.set_index("row_id").loc[list(g["row_id"]), "text"].tolist() for g in by_task.values()]
    assert queries[0] == queries[1]  # the same test inputs for every task
    for rec in table.itertuples():
        assert rec.text.endswith(" ->") and len(rec.label_pos) == 2


def test_train_split_queries_never_reuse_demonstrations(tokenizer):
    s = spec()
    s = DatasetSpec(
        **{**s.__dict__, "prompts": PromptSpec(template=s.prompts.template, seeds=(1,), n_test=4, n_train=2)}
    )
    table, _ = build_prompts(tweets_frame(), s, tokenizer, context_length=256)
    assert table["split"].value_counts().to_dict() == {"test": 4, "train": 2}
    train = table[table["split"] == "train"]
    demos = {i for d in table["demo_ids"] for i in d}
    assert not set(train["row_id"]) & demos
    df = tweets_frame().set_index("row_id")
    assert (df.loc[list(train["row_id"]), "split"] == "train").all()
