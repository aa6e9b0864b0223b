"""IC-ICL's arms: retrieval, each arm's prompts, and ICICLRun (the model, its scorer, the fixed pool
with its demonstrations' states) that the evaluation and the sweep share."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from iclscope.core.config import ConfigError, DatasetSpec, ModelSpec
from iclscope.methods.taskspace.icicl.settings import ICICLSettings
from iclscope.methods.taskspace.space import TaskSpace, fit_task_space, project, reconstruct
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model
from iclscope.model.prompts import (
    LABEL,
    LITERAL,
    SEPARATOR,
    TEXT,
    Piece,
    assemble,
    balanced_sample,
    label_token_ids,
    split_template,
    tokenize_pieces,
)
from iclscope.model.scoring import Prompt, PromptScorer, Readout


def retrieve(test_emb: np.ndarray, pool_emb: np.ndarray, k: int, how: str, seed: int) -> np.ndarray:
    """Indices [n_test, k] into the pool, ordered least to most similar (most similar nearest the query).

    test_emb [n, d], pool_emb [P, d]; 'random' draws k distinct pool items per test input.
    """
    if how == "random":
        rng = np.random.default_rng(seed)
        return np.stack([rng.choice(len(pool_emb), k, replace=False) for _ in range(len(test_emb))])
    a = test_emb / np.linalg.norm(test_emb, axis=1, keepdims=True).clip(1e-12)
    b = pool_emb / np.linalg.norm(pool_emb, axis=1, keepdims=True).clip(1e-12)
    sims = a @ b.T  # [n, P]
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return top[:, ::-1].copy()


def demo_pieces(spec: DatasetSpec, text: str, label_word: str) -> list[Piece]:
    """The pieces of one demonstration, separator included, without a query."""
    before, between, after = split_template(spec.prompts.template)
    pieces = [
        Piece(before, LITERAL, 0),
        Piece(text, TEXT, 0),
        Piece(between, LITERAL, 0),
        Piece(label_word, LABEL, 0),
        Piece(after, LITERAL, 0),
        Piece(spec.prompts.separator, SEPARATOR, 0),
    ]
    return [p for p in pieces if p.text]


def text_anchor_prompt(tokenizer, spec: DatasetSpec, demo_label_words: list[str], query_text: str) -> dict:
    """Text_anchor (§3.7): each demonstration's template + label text with its input text removed
    ('Tweet: \nSentiment: negative\n'), then the zero-shot query; tokenized as one prompt."""
    pieces = [p for word in demo_label_words for p in demo_pieces(spec, "", word)]
    return tokenize_pieces(tokenizer, pieces + assemble(spec.prompts.template, spec.prompts.separator, [], query_text))


def soft_prompt(
    tokenizer, spec: DatasetSpec, labels: list[str], query_text: str, label_line: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of '[soft]<label line>' per demonstration, then the zero-shot query; soft-slot positions.

    Built from separately tokenized segments so every soft slot is exactly one token: a stand-in
    token (the separator's first) whose residual state is overwritten at the injection layer.
    A demonstration 'Tweet: …\nSentiment: negative\n' becomes '[ĥ]Sentiment: negative\n', or
    only '[ĥ]' without the label line.
    """
    before, between, after = split_template(spec.prompts.template)
    label_word = dict(zip(spec.class_names, spec.label_words, strict=True))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    slot_token = encode(spec.prompts.separator or "\n")[0]
    ids = list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS when the model uses one
    slots = []
    for lab in labels:
        slots.append(len(ids))
        ids += [slot_token]
        if label_line:
            ids += encode(between.lstrip("\n") + label_word[lab] + after + spec.prompts.separator)
    ids += encode(before + query_text + between.rstrip(" "))
    return [int(t) for t in ids], slots


class Inputs(NamedTuple):
    """Inputs (test or validation rows) with their retrieved demonstrations."""

    rows: pd.DataFrame
    prompts: list[dict]  # zero-shot records (tokenize_pieces)
    demos: np.ndarray  # [n, k] pool indices, least to most similar
    gold: np.ndarray  # [n] class indices
    embed_seconds: float  # retrieval-embedding time per input
    zero_shot: list[Readout]  # the zero-shot arm's readouts: the retrieval-embedding pass yields them


class ICICLRun:
    """What the test evaluation and the sweep share for one model × dataset: the model and scorer,
    the fixed pool with its demonstrations' states (computed once, batched), retrieval, and the
    prompts of every arm.

    Pool states: "last" / "mean" from each demonstration's zero-shot prompt ('Tweet: …\nSentiment:'),
    "label" at its label token in 'Tweet: …\nSentiment: negative\n'; kept at `layers` only,
    [P, len(layers), d] float32 each (3·P·len(layers)·d·4 bytes).
    """

    def __init__(
        self,
        df: pd.DataFrame,
        spec: DatasetSpec,
        model_dir,
        model: ModelSpec,
        settings: ICICLSettings,
        layers_of=None,
        *,
        var_threshold: float = 0.9,
        max_k: int | None = None,
    ):
        if spec.kind != "classification":
            raise ConfigError(f"IC-ICL needs a classification dataset; '{spec.name}' is {spec.kind}")
        self.spec, self.settings, self.var_threshold, self.max_k = spec, settings, var_threshold, max_k
        self.net, self.tokenizer, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
        L = self.n_layers = manifest["n_layers"]
        self.embed_layer = settings.embed_layer if settings.embed_layer is not None else L // 2
        self.inject_layer = settings.inject_layer if settings.inject_layer is not None else L // 2
        if not 0 < self.inject_layer < L:
            raise ConfigError(f"icicl.inject_layer {self.inject_layer}: need a residual index in 1..{L - 1}")
        self.tv_layer = settings.task_vector_layer if settings.task_vector_layer is not None else self.inject_layer
        if not 0 < self.tv_layer < L:
            raise ConfigError(f"icicl.task_vector_layer {self.tv_layer}: need a residual index in 1..{L - 1}")
        self.layers = sorted(set(layers_of(L) if layers_of else [self.inject_layer, self.tv_layer]))
        self.classes = spec.class_names
        self.label_word = dict(zip(self.classes, spec.label_words, strict=True))
        label_ids = label_token_ids(self.tokenizer, spec.label_words, spec.prompts.template)
        self.scorer = PromptScorer(
            self.net, self.tokenizer, label_ids, L, settings.word_k, model.batch_size, model.max_batch_tokens
        )
        train = df[df["split"] == "train"]
        self.test_rows = df[df["split"] == "test"]
        self.pool = balanced_sample(
            train,
            self.classes,
            settings.pool_size,
            settings.seed,
            f"dataset '{spec.name}' train split (icicl.pool_size)",
        )
        self.train_rest = train[~train["row_id"].isin(self.pool["row_id"])]  # validation inputs come from here
        self.pool_labels = self.pool["label"].astype(str).tolist()
        self.pool_texts = self.pool["text"].tolist()

        t0 = time.perf_counter()
        zero_shot = [self.zero_shot(t) for t in self.pool_texts]
        labelled = [
            tokenize_pieces(self.tokenizer, demo_pieces(spec, t, self.label_word[lab]))
            for t, lab in zip(self.pool_texts, self.pool_labels, strict=True)
        ]
        plain = self.scorer.states(zero_shot, [self.embed_layer, *self.layers], "pool states").values
        label = self.scorer.states(labelled, self.layers, "pool label states").values
        self.pool_embedding = plain["mean"][:, 0]  # [P, d] retrieval embedding
        self.pool_states = {"last": plain["last"][:, 1:], "mean": plain["mean"][:, 1:], "label": label["label"]}
        self.pool_seconds = time.perf_counter() - t0

    def zero_shot(self, text: str) -> dict:
        spec = self.spec
        return tokenize_pieces(self.tokenizer, assemble(spec.prompts.template, spec.prompts.separator, [], text))

    def state_vectors(self, layer: int, state: str) -> np.ndarray:
        """[P, d] the pool demonstrations' `state` at resid index `layer`."""
        return self.pool_states[state][:, self.layers.index(layer)]

    def compressed(
        self, layer: int, state: str, variant: str, spaces: Mapping[str, Mapping[int, TaskSpace]]
    ) -> tuple[np.ndarray, TaskSpace | None]:
        """The soft tokens of every pool demonstration [P, d] and the space that made them
        (variant "identity": the states themselves, no space)."""
        h = self.state_vectors(layer, state)
        if variant == "identity":
            return h, None
        if variant == "pool":
            space = fit_task_space(
                h,
                self.pool_labels,
                self.classes,
                variant=f"pool_{state}",
                layer=layer,
                var_threshold=self.var_threshold,
                max_k=self.max_k,
            )
        elif layer in spaces.get(variant, {}):
            space = spaces[variant][layer]
        else:
            raise ConfigError(f"icicl: no '{variant}' task space at layer {layer} (icicl.task_space / inject_layer)")
        return reconstruct(project(h, space), space).astype(np.float32), space

    def inputs(self, rows: pd.DataFrame) -> Inputs:
        prompts = [self.zero_shot(t) for t in rows["text"]]
        t0 = time.perf_counter()
        states = self.scorer.states(prompts, [self.embed_layer], "retrieval embeddings (and zero-shot scores)")
        emb = states.values["mean"][:, 0]
        seconds = (time.perf_counter() - t0) / len(rows)
        s = self.settings
        demos = retrieve(emb, self.pool_embedding, s.k, s.retrieval, s.seed)
        gold = np.array([self.classes.index(str(v)) for v in rows["label"]])
        return Inputs(rows, prompts, demos, gold, seconds, states.readouts)

    # ------------------------------------------------------------------ the arms' prompts
    def zero_shot_prompts(self, inputs: Inputs) -> list[Prompt]:
        return [Prompt(p["input_ids"].tolist()) for p in inputs.prompts]

    def full_prompts(self, inputs: Inputs) -> list[Prompt]:
        spec = self.spec
        return [
            Prompt(
                tokenize_pieces(
                    self.tokenizer,
                    assemble(
                        spec.prompts.template,
                        spec.prompts.separator,
                        [(self.pool_texts[j], self.label_word[self.pool_labels[j]]) for j in demos],
                        text,
                    ),
                )["input_ids"].tolist()
            )
            for text, demos in zip(inputs.rows["text"], inputs.demos, strict=True)
        ]

    def soft_prompts(self, inputs: Inputs, vectors: np.ndarray, label_line: bool) -> list[Prompt]:
        """'[ĥ_1]<label line>…[ĥ_k]<label line>' + the query; vectors [P, d] are the pool's soft tokens."""
        out = []
        for text, demos in zip(inputs.rows["text"], inputs.demos, strict=True):
            ids, slots = soft_prompt(self.tokenizer, self.spec, [self.pool_labels[j] for j in demos], text, label_line)
            out.append(Prompt(ids, slots, vectors[demos]))
        return out

    def task_vector_prompts(self, inputs: Inputs, vectors: np.ndarray) -> list[Prompt]:
        """The zero-shot prompt with its last position's state replaced by the demonstrations' mean."""
        return [
            Prompt(p.ids, [len(p.ids) - 1], vectors[demos].mean(0, keepdims=True))
            for p, demos in zip(self.zero_shot_prompts(inputs), inputs.demos, strict=True)
        ]

    def text_anchor_prompts(self, inputs: Inputs) -> list[Prompt]:
        return [
            Prompt(
                text_anchor_prompt(self.tokenizer, self.spec, [self.label_word[self.pool_labels[j]] for j in d], text)[
                    "input_ids"
                ].tolist()
            )
            for text, d in zip(inputs.rows["text"], inputs.demos, strict=True)
        ]

    def query_ids(self, inputs: Inputs) -> list[list[int]]:
        """The query's own tokens (no BOS), as they continue an anchor cache."""
        before, between, _ = split_template(self.spec.prompts.template)
        return [
            self.tokenizer(before + t + between.rstrip(" "), add_special_tokens=False)["input_ids"]
            for t in inputs.rows["text"]
        ]
