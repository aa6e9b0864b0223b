"""k-shot prompts, assembled piece by piece with every token position recorded on the way.

A prompt is a list of `Piece`s (template literal, demonstration text, label word, separator,
query text). Their character spans are known while the string is built; after tokenizing the
whole string once (natural tokenization, no boundary artefacts) the fast tokenizer's offset
mapping turns each span into token positions. Positions are never found by searching token
ids afterwards (docs/methods.md §3.10).

Recorded per prompt (token indices into `input_ids`):
  query_pos    last prompt token: the position whose next-token logits give the prediction
  label_pos    [K] first token of each demonstration's label word (K = number of demos)
  label_class  [K] class index of that demonstration (classification; -1 for generation)
  demo_spans   [K, 2] [start, end) tokens of each demonstration's input text
  format_pos   template literal + separator tokens of the demonstrations (Hidden_anchor keeps them)
  query_span   [2] [start, end) tokens of the test input's text; its last token is the
               "last input token" position of the compression diagnostics

Sampling (docs/methods.md §3.1, classification): per seed, shuffle the train split with the seed and
take the first `shots_per_class` rows of each class in shuffled order, the same demonstrations
for every test prompt of that seed; `n_test` balanced test rows per seed, plus `n_train`
labelled queries from the train split (split='train') for methods that fit or train on prompts. Generation families
(docs/methods.md §4.4): per seed the same test inputs for every task, fresh seeded demonstrations
from the task's train rows for each prompt.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from iclscope.core.config import ConfigError, DatasetSpec, stable_hash

log = logging.getLogger(__name__)

LITERAL, TEXT, LABEL, SEPARATOR, QUERY = "literal", "text", "label", "separator", "query"


@dataclass(frozen=True)
class Piece:
    text: str
    kind: str  # LITERAL | TEXT | LABEL | SEPARATOR | QUERY
    demo: int = -1  # demonstration index, -1 for the query part


def split_template(template: str) -> tuple[str, str, str]:
    """'Tweet: {text}\\nSentiment:{label}' -> ('Tweet: ', '\\nSentiment:', '')."""
    parts = {"before_text": "", "between": "", "after": ""}
    slot = "before_text"
    for literal, fieldname, _, _ in string.Formatter().parse(template):
        parts[slot] += literal
        if fieldname == "text":
            slot = "between"
        elif fieldname == "label":
            slot = "after"
    return parts["before_text"], parts["between"], parts["after"]


def assemble(template: str, separator: str, demos: list[tuple[str, str]], query: str) -> list[Piece]:
    """Pieces of a prompt: each (text, label_text) demo, separator, then the query cut before its label."""
    before, between, after = split_template(template)
    pieces: list[Piece] = []
    for k, (text, label_text) in enumerate(demos):
        pieces += [
            Piece(before, LITERAL, k),
            Piece(text, TEXT, k),
            Piece(between, LITERAL, k),
            Piece(label_text, LABEL, k),
            Piece(after, LITERAL, k),
            Piece(separator, SEPARATOR, k),
        ]
    pieces += [Piece(before, LITERAL), Piece(query, QUERY), Piece(between.rstrip(" "), LITERAL)]
    return [p for p in pieces if p.text]


def tokenize_pieces(tokenizer, pieces: list[Piece]) -> dict:
    """Tokenize the joined pieces once and map every piece to its token positions."""
    text = "".join(p.text for p in pieces)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts  # special tokens (BOS) cover no characters

    def tokens_of(a: int, b: int) -> np.ndarray:
        return np.flatnonzero(real & (starts < b) & (ends > a))

    label_pos, label_last, demo_spans, format_pos = [], [], [], []
    query_span = None
    text_tokens: set[int] = set()  # a token holding any of an input's characters is text, not template
    cursor = 0
    for piece in pieces:
        a, b = cursor, cursor + len(piece.text)
        cursor = b
        tok = tokens_of(a, b)
        if piece.kind == LABEL:
            if len(tok) == 0 or (tok[0] > 0 and real[tok[0] - 1] and ends[tok[0] - 1] > a):
                raise ConfigError(
                    f"the label text {piece.text!r} does not start a token of its own in {text!r}: the "
                    "tokenizer merges it with the preceding template text. Put the space in the label "
                    "word (' negative') and end the template's label line without one ('Sentiment:{label}')"
                )
            label_pos.append(int(tok[0]))
            label_last.append(int(tok[-1]))
        elif piece.kind == TEXT:
            demo_spans.append([int(tok[0]), int(tok[-1]) + 1] if len(tok) else [-1, -1])
            text_tokens.update(int(t) for t in tok)
        elif piece.kind in (LITERAL, SEPARATOR) and piece.demo >= 0:
            format_pos.extend(int(t) for t in tok)
        elif piece.kind == QUERY:
            query_span = [int(tok[0]), int(tok[-1]) + 1] if len(tok) else [-1, -1]
    format_pos = sorted(set(format_pos) - set(label_pos) - text_tokens)
    return {
        "text": text,
        "input_ids": ids,
        "query_pos": len(ids) - 1,
        "label_pos": label_pos,
        "label_last": label_last,
        "demo_spans": demo_spans,
        "format_pos": format_pos,
        "query_span": query_span,
    }


def sample_demos_per_class(train: pd.DataFrame, classes: list[str], shots_per_class: int, seed: int) -> pd.DataFrame:
    """Shuffle with `seed`, take the first `shots_per_class` of each class, keep shuffled order."""
    order = train.iloc[np.random.default_rng(seed).permutation(len(train))]
    picked = order.groupby("label", sort=False).head(shots_per_class)
    for c in classes:
        n = int((picked["label"] == c).sum())
        if n < shots_per_class:
            raise ConfigError(
                f"class '{c}' has {n} training rows but shots_per_class is {shots_per_class}; "
                "lower prompts.shots_per_class or add data"
            )
    return picked


def balanced_sample(rows: pd.DataFrame, classes: list[str], n: int, seed: int, what: str) -> pd.DataFrame:
    """`n` rows spread evenly over `classes` (the first n % C classes get one more), seeded."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, c in enumerate(classes):
        want = n // len(classes) + (1 if i < n % len(classes) else 0)
        pool = rows[rows["label"] == c]
        if len(pool) < want:
            raise ConfigError(
                f"{what}: class '{c}' has {len(pool)} rows but {want} are needed; lower prompts.n_test or add data"
            )
        parts.append(pool.iloc[np.sort(rng.choice(len(pool), want, replace=False))])
    return pd.concat(parts).iloc[rng.permutation(n)]


def _record(tokenizer, spec: DatasetSpec, demos: pd.DataFrame, query, demo_label_text, **extra) -> dict:
    pieces = assemble(
        spec.prompts.template,
        spec.prompts.separator,
        [(r.text, demo_label_text(r)) for r in demos.itertuples()],
        query.text,
    )
    rec = tokenize_pieces(tokenizer, pieces)
    rec.pop("label_last")
    rec.update(row_id=int(query.row_id), demo_ids=[int(i) for i in demos["row_id"]], **extra)
    return rec


def carrier_prompts(tokenizer, carriers: list[str], label_words: list[str]) -> list[dict]:
    """Label-word anchor prompts (task-space variant A, docs/methods.md §1.2): each carrier with each
    label word in its `{label}` slot; records the label word's *last* sub-token position."""
    out = []
    for c, word in enumerate(label_words):
        for j, carrier in enumerate(carriers):
            before, after = carrier.split("{label}")
            pieces = [p for p in (Piece(before, LITERAL, 0), Piece(word, LABEL, 0), Piece(after, LITERAL, 0)) if p.text]
            rec = tokenize_pieces(tokenizer, pieces)
            out.append(
                {
                    "class": c,
                    "carrier": j,
                    "text": rec["text"],
                    "input_ids": rec["input_ids"],
                    "position": rec["label_last"][0],
                }
            )
    return out


def build_prompts(df: pd.DataFrame, spec: DatasetSpec, tokenizer, context_length: int) -> tuple[pd.DataFrame, dict]:
    """All prompts of one dataset for one tokenizer; returns (table, metadata)."""
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    records = []
    p = spec.prompts
    if spec.kind == "classification":
        classes = spec.class_names
        label_word = dict(zip(classes, spec.label_words, strict=True))
        for seed in p.seeds:
            demos = (
                sample_demos_per_class(train, classes, p.shots_per_class, seed) if p.shots_per_class else train.iloc[:0]
            )
            # labelled train-split queries (task-space fitting, training) never reuse a demonstration
            pools = [("test", test, p.n_test), ("train", train[~train["row_id"].isin(demos["row_id"])], p.n_train)]
            for split, pool, n in pools:
                if n == 0:
                    continue
                if p.balanced:
                    queries = balanced_sample(pool, classes, n, seed, f"dataset '{spec.name}' {split} split")
                else:
                    queries = pool.iloc[np.random.default_rng(seed).permutation(len(pool))[:n]]
                for q in queries.itertuples():
                    rec = _record(
                        tokenizer,
                        spec,
                        demos,
                        q,
                        lambda r: label_word[r.label],
                        seed=seed,
                        shots=p.shots_per_class,
                        task=q.task,
                        answer=q.label,
                        gold=classes.index(q.label),
                        split=split,
                    )
                    rec["label_class"] = [classes.index(c) for c in demos["label"]]
                    records.append(rec)
    else:
        tasks = sorted(df["task"].unique())
        inputs = sorted(test["text"].unique())
        for seed in p.seeds:
            rng = np.random.default_rng(seed)
            if len(inputs) < p.n_test:
                raise ConfigError(
                    f"dataset '{spec.name}': {len(inputs)} test inputs but prompts.n_test is "
                    f"{p.n_test}; lower n_test or raise n_per_task / test_fraction"
                )
            chosen = [inputs[i] for i in np.sort(rng.choice(len(inputs), p.n_test, replace=False))]
            for shots in p.shots:
                for task in tasks:
                    task_train = train[train["task"] == task]
                    task_test = test[test["task"] == task].set_index("text")
                    if len(task_train) < shots:
                        raise ConfigError(
                            f"dataset '{spec.name}': task '{task}' has {len(task_train)} training "
                            f"rows, fewer than {shots} shots"
                        )
                    for x in chosen:
                        q = task_test.loc[[x]].reset_index().iloc[0]
                        demos = task_train.iloc[np.sort(rng.choice(len(task_train), shots, replace=False))]
                        demos = demos.iloc[rng.permutation(shots)]
                        rec = _record(
                            tokenizer,
                            spec,
                            demos,
                            q,
                            lambda r: spec.answer_prefix + r.label,
                            seed=seed,
                            shots=shots,
                            task=task,
                            answer=q.label,
                            gold=tasks.index(task),
                            split="test",
                        )
                        rec["label_class"] = [-1] * shots
                        records.append(rec)
    table = pd.DataFrame(records)
    table.insert(0, "prompt_id", np.arange(len(table), dtype=np.int64))
    table["n_tokens"] = table["input_ids"].map(len)
    too_long = table["n_tokens"] > context_length
    if too_long.any():
        log.warning(
            "dataset '%s': %d of %d prompts exceed the model context (%d tokens; longest %d) and are left out",
            spec.name,
            int(too_long.sum()),
            len(table),
            context_length,
            int(table["n_tokens"].max()),
        )
    table = table[~too_long].reset_index(drop=True)
    if table.empty:
        raise ConfigError(
            f"dataset '{spec.name}': every prompt is longer than the model context "
            f"({context_length} tokens); shorten the template, use fewer shots or filter long texts"
        )
    table["prompt_id"] = np.arange(len(table), dtype=np.int64)
    label_ids = []
    if spec.kind == "classification":
        label_ids = label_token_ids(tokenizer, spec.label_words, spec.prompts.template)
        check_label_tokens(table, label_ids)
    meta = {
        "dataset": spec.name,
        "kind": spec.kind,
        "prompt_spec": {**spec.prompts.__dict__},
        "classes": spec.class_names if spec.kind == "classification" else sorted(df["task"].unique()),
        "label_words": spec.label_words,
        "label_token_ids": label_ids,
        "n_prompts": len(table),
        "n_too_long": int(too_long.sum()),
        "context_length": context_length,
        "tokens": {"mean": float(table["n_tokens"].mean()), "max": int(table["n_tokens"].max())},
    }
    meta["prompts_sha256"] = prompts_digest(table)
    return table, meta


def label_token_ids(tokenizer, label_words: list[str], template: str) -> list[int]:
    """Token id of each label word's first sub-token *as it appears after the template text*.

    Tokenized in context (template text before the label slot + label word), not standalone:
    SentencePiece-style tokenizers give ' negative' alone a different first token than the
    same word after 'Sentiment:' (docs/methods.md §3.10).
    """
    _, between, _ = split_template(template)
    ids = []
    for word in label_words:
        rec = tokenize_pieces(tokenizer, [Piece(between, LITERAL, 0), Piece(word, LABEL, 0)])
        ids.append(int(rec["input_ids"][rec["label_pos"][0]]))
    if len(set(ids)) != len(ids):
        raise ConfigError(
            f"label words {label_words} share their first token {ids}; the prediction reads "
            "the first sub-token, so pick label words that start differently"
        )
    return ids


def check_label_tokens(table: pd.DataFrame, ids: list[int]) -> None:
    """Every recorded label position must hold its class's label token."""
    for rec in table.itertuples():
        for pos, cls in zip(rec.label_pos, rec.label_class, strict=True):
            if rec.input_ids[pos] != ids[cls]:
                raise ConfigError(
                    f"prompt {rec.prompt_id}: the label token at position {pos} is {rec.input_ids[pos]}, "
                    f"but class {cls}'s label word starts with token {ids[cls]} elsewhere; the tokenizer "
                    "splits the label word differently in context. Change the separator or template"
                )


def prompts_digest(table: pd.DataFrame) -> str:
    cols = ["prompt_id", "input_ids", "query_pos", "label_pos", "gold", "task"]
    return stable_hash(
        table[cols].map(lambda v: v.tolist() if hasattr(v, "tolist") else v).to_dict(orient="list"), length=64
    )
