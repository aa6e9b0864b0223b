"""IC-ICL: retrieved demonstrations compressed into the task space, against full-text ICL.

A reconstruction of Yang et al. 2025 (docs/methods.md §1.4; the paper's details are unknown, every
choice is a setting recorded with the results, and chosen on a validation split by `sweep_icicl`).
For each input the same k demonstrations are retrieved from a fixed pool (top-k cosine of
mean-pooled states, or random), then fed to the model in several ways ("arms"), each predicting
by argmax over the label words:

  zero_shot     the test input alone                        (cost: |x| tokens)
  full_icl      the k demonstrations as text, then the input (cost: k·|demo| + |x|)
  icicl_soft    per demonstration one *soft token* ĥ_j = μ + Bᵀ B (h_j − μ): its state h_j at the
                injection layer l (`state`: its last token, its label token, or the mean over its
                text) projected onto the task space and back, written into the residual stream at
                layer l, followed by its label line as text unless `label_line` is off
                (cost: k·(1 + |label line|) + |x|)
  icicl_identity  icicl_soft without compression (ĥ_j = h_j), to separate the effect of the
                task-space projection from that of the soft-token format
  task_vector   zero-shot prompt with the query state at layer l replaced by the mean of the k
                demonstrations' states (task/function vectors; cost: |x|)
  anchor_kv     iclscope's retrieval variant of Hidden_anchor: each demonstration run alone and kept
                only as the keys/values of its template and label tokens (AnchorKV), the query
                continuing that cache. The paper's own setting is the anchor_compression stage.
and the equally short anchor-only baselines of docs/methods.md §3.7 (Table 2 of Wang et al. 2023):
  text_anchor   the demonstrations' template + label *text* with the input text removed
                ('Tweet: \nSentiment: negative\n'), then the query, as plain tokens
  hidden_random anchor_kv with each label token's KV replaced by the KV of one random token of
                that demonstration's input text (seeded); `random_draws` draws, reported as their
                mean, and as hidden_random_top, the draw with the best label loyalty (named in the table)

Task spaces (`task_space`): "pool" is fitted on the pool demonstrations' own states at layer l
(the states it compresses: class means of the pool's labels, PCA-denoised as the task-space
stage does); "class_mean" / "anchor" are the task-space stage's, fitted on other distributions
(k-shot query states of train prompts / label words in carrier sentences).

Accuracy, label loyalty (same predicted label as full_icl) and word loyalty (Jaccard of the
top-`word_k` vocabulary ids, §3.3) come from batched forward passes over every test input. The
§3.8 timing protocol (batch 1, no padding, warm-up, median over repeats) runs on a fixed random
sample of `n_timed` inputs. Every arm is compared with full_icl on the same inputs by a paired
bootstrap interval of the accuracy difference and McNemar's exact test (iclscope.core.stats).

Pool demonstrations are run once and their states cached (the pool is fixed; retrieval only
picks), so their one-time cost is reported apart, as docs/methods.md §3.8 does for anchor caches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from iclscope.core.config import ConfigError, DatasetSpec, ModelSpec
from iclscope.core.stats import bootstrap_mean, holm, paired_difference
from iclscope.core.timing import interleaved, speedup, tokens_per_second
from iclscope.methods.anchors.measures import jaccard_topk
from iclscope.methods.icl import macro_f1
from iclscope.methods.taskspace.space import TaskSpace, fit_task_space, project, reconstruct
from iclscope.model.capture import (
    ATTN_IMPLEMENTATION,
    Positions,
    Recorder,
    ResidualPatch,
    full_kv_cache,
    input_device,
    left_pad,
    no_positions,
    recording,
)
from iclscope.model.extract import make_batches
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

log = logging.getLogger(__name__)

STATES = ("last", "label", "mean")  # which state of a demonstration becomes its soft token
# anchor_kv's kept set: template + separator + label tokens (the paper's anchors), or the label tokens alone
ANCHOR_KEEP = ("anchors", "label")
TASK_SPACES = ("pool", "class_mean", "anchor")  # + "identity" in the sweep: no compression
# the paired comparisons beside "every arm against full_icl" (arm, reference)
PAIRS = (
    ("icicl_soft", "icicl_identity"),
    ("icicl_soft", "task_vector"),
    ("icicl_soft", "anchor_kv"),
    ("icicl_soft", "zero_shot"),
)


@dataclass(frozen=True)
class ICICLSettings:
    k: int = 4
    pool_size: int = 200
    n_test: int | None = 400  # None = every test row
    n_timed: int = 40  # test inputs timed at batch 1 (a fixed random sample)
    retrieval: str = "similar"  # similar | random
    embed_layer: int | None = None  # None = middle layer
    inject_layer: int | None = None  # None = middle layer
    state: str = "last"  # last | label | mean
    task_space: str = "pool"  # pool | class_mean | anchor
    label_line: bool = True  # the soft token is followed by its label line as text
    warmup: int = 3
    repeats: int = 5  # interleaved timing rounds (iclscope.core.timing)
    seed: int = 42
    random_draws: int = 3  # Hidden_random draws (paper 20); each costs one short forward per test input
    word_k: int = 5  # word loyalty: top-k vocabulary tokens (the anchors.word_k config key)
    n_boot: int = 1000  # bootstrap resamples of the paired intervals
    # the other arms' own settings (chosen by `sweep_icicl` on the validation split, as IC-ICL's)
    task_vector_layer: int | None = None  # residual index the task vector is written at; None = inject_layer
    task_vector_state: str | None = None  # the demonstrations' state it averages; None = `state`
    anchor_keep: str = "anchors"  # anchor_kv's kept set (ANCHOR_KEEP)

    def __post_init__(self):
        if self.task_vector_state is not None and self.task_vector_state not in STATES:
            raise ConfigError(f"icicl.task_vector_state: {self.task_vector_state!r}; use one of {STATES} or null")
        if self.anchor_keep not in ANCHOR_KEEP:
            raise ConfigError(f"icicl.anchor_keep: {self.anchor_keep!r}; use one of {ANCHOR_KEEP}")
        if self.random_draws < 1:
            raise ConfigError(f"icicl.random_draws: {self.random_draws}; need at least one Hidden_random draw")
        if self.word_k < 1:
            raise ConfigError(f"anchors.word_k: {self.word_k}; need at least 1")
        if self.retrieval not in ("similar", "random"):
            raise ConfigError(f"icicl.retrieval: {self.retrieval!r}; use 'similar' or 'random'")
        if self.k < 1 or self.pool_size < self.k:
            raise ConfigError(f"icicl: need 1 <= k ({self.k}) <= pool_size ({self.pool_size})")
        if self.state not in STATES:
            raise ConfigError(f"icicl.state: {self.state!r}; use one of {STATES}")
        if self.task_space not in TASK_SPACES:
            raise ConfigError(f"icicl.task_space: {self.task_space!r}; use one of {TASK_SPACES}")
        if self.n_test is not None and self.n_test < 1 or self.n_timed < 1:
            raise ConfigError(f"icicl: n_test ({self.n_test}) and n_timed ({self.n_timed}) must be >= 1")


@dataclass(frozen=True)
class SweepGrid:
    """The reconstruction choices `sweep_icicl` scores on the validation split (the full grid)."""

    depths: tuple[float, ...] = (0.33, 0.5, 0.67)  # injection layers as a share of the depth
    states: tuple[str, ...] = STATES
    task_spaces: tuple[str, ...] = (*TASK_SPACES, "identity")
    label_line: tuple[bool, ...] = (True, False)
    n_val: int = 200  # balanced train-split inputs outside the pool

    def __post_init__(self):
        if not self.depths or any(not 0 < d < 1 for d in self.depths):
            raise ConfigError(f"icicl.sweep.depths: {self.depths}; need values strictly between 0 and 1")
        bad = set(self.states) - set(STATES) or set(self.task_spaces) - {*TASK_SPACES, "identity"}
        if bad or not self.states or not self.task_spaces or not self.label_line:
            raise ConfigError(f"icicl.sweep: unknown or empty choices {sorted(map(str, bad)) or ''}")

    def layers(self, n_layers: int) -> list[int]:
        """Residual indices round(depth · L), inside [1, L − 1], without repeats."""
        return sorted({min(max(round(d * n_layers), 1), n_layers - 1) for d in self.depths})


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


class Readout(NamedTuple):
    """What one scored prompt yields at its last position."""

    label_logits: np.ndarray  # [C] logits of the label words' first tokens
    top_ids: np.ndarray  # [word_k] the highest-logit vocabulary ids, best first (word loyalty)


@dataclass(frozen=True)
class Prompt:
    """One prompt of an arm: token ids, and the soft-token slots written at the injection layer."""

    ids: list[int]
    slots: list[int] = field(default_factory=list)  # positions in `ids`
    vectors: np.ndarray | None = None  # [len(slots), d] the states written there


class PromptScorer:
    """Reads label logits and the top-`word_k` vocabulary ids at the last position of prompts:
    batched (left padding, `batch_size` prompts and at most `max_batch_tokens` padded tokens per
    pass) for accuracy, or one prompt at a time for the batch-1 timing protocol. Only the last
    position goes through the vocabulary head (logits_to_keep=1): one [d, V] product per prompt."""

    def __init__(
        self,
        model,
        tokenizer,
        label_ids: list[int],
        n_layers: int,
        word_k: int = 5,
        batch_size: int = 16,
        max_batch_tokens: int = 4096,
    ):
        self.model, self.tokenizer, self.label_ids, self.n_layers = model, tokenizer, label_ids, n_layers
        self.word_k, self.batch_size, self.max_batch_tokens = word_k, batch_size, max_batch_tokens
        self.device = input_device(model)

    def readouts(self, logits: torch.Tensor) -> list[Readout]:
        """logits [B, V] of the last positions -> one Readout per row."""
        labels = logits[:, self.label_ids].float().cpu().numpy()
        top = logits.topk(self.word_k, dim=-1).indices.cpu().numpy()
        return [Readout(a, b) for a, b in zip(labels, top, strict=True)]

    def batches(self, lengths: list[int], desc: str):
        """Index arrays of length-sorted batches, with a progress bar."""
        batches = make_batches(np.asarray(lengths), self.batch_size, self.max_batch_tokens)
        return tqdm(batches, desc=desc, leave=False)

    def states(self, token_lists: list, layers, desc: str = "states") -> dict[str, np.ndarray]:
        """Batched states of each prompt at `layers` [n, len(layers), d]: "last" (the final position),
        "mean" (mean over the input text: `query_span`, or a demonstration's own span) and, for records
        with a label, "label" (its first token)."""
        layers = list(layers)
        out = {name: [None] * len(token_lists) for name in STATES}
        with_label = all(len(r["label_pos"]) for r in token_lists)
        for idx in self.batches([len(r["input_ids"]) for r in token_lists], desc):
            batch = [token_lists[i] for i in idx]
            ids, mask, pos = left_pad([b["input_ids"] for b in batch], self.tokenizer.pad_token_id, self.device)
            offset = ids.shape[1] - torch.as_tensor([len(b["input_ids"]) for b in batch], device=self.device)
            spans = [b["query_span"] if b["query_span"] is not None else b["demo_spans"][0] for b in batch]
            span = torch.as_tensor(spans, device=self.device) + offset[:, None]
            label = (
                torch.as_tensor([b["label_pos"][:1] for b in batch], device=self.device) + offset[:, None]
                if with_label
                else no_positions(len(batch), self.device).label
            )
            names = ("query", "content_mean") + (("label",) if with_label else ())
            rec = Recorder(self.n_layers, Positions(label, span), names)
            with torch.inference_mode(), recording(self.model, rec):
                self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
            got = {"last": rec.resid["query"], "mean": rec.resid["content_mean"]}
            if with_label:
                got["label"] = rec.resid["label"][:, 0]
            for name, value in got.items():
                value = value[:, layers].cpu().numpy()
                for row, i in enumerate(idx):
                    out[name][i] = value[row]
        return {name: np.stack(v) for name, v in out.items() if v[0] is not None}

    @torch.inference_mode()
    def score_many(self, prompts: list[Prompt], layer: int | None = None, desc: str = "score") -> list[Readout]:
        """Batched readouts of `prompts` (soft-token slots written at resid index `layer`), in order."""
        out: list[Readout | None] = [None] * len(prompts)
        for idx in self.batches([len(p.ids) for p in prompts], desc):
            batch = [prompts[i] for i in idx]
            ids, mask, pos = left_pad([p.ids for p in batch], self.tokenizer.pad_token_id, self.device)
            patches = ()
            n_slots = max(len(p.slots) for p in batch)
            if n_slots:
                offset = ids.shape[1] - np.array([len(p.ids) for p in batch])
                slots = np.full((len(batch), n_slots), -1)
                values = np.zeros((len(batch), n_slots, batch[0].vectors.shape[-1]), dtype=np.float32)
                for row, p in enumerate(batch):
                    slots[row, : len(p.slots)] = np.asarray(p.slots) + offset[row]
                    values[row, : len(p.slots)] = p.vectors
                patches = (
                    ResidualPatch(
                        layer, torch.as_tensor(slots, device=self.device), torch.as_tensor(values, device=self.device)
                    ),
                )
            rec = Recorder(self.n_layers, no_positions(len(batch), self.device), (), patches=patches)
            with recording(self.model, rec):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            for i, r in zip(idx, self.readouts(logits[:, -1]), strict=True):
                out[i] = r
        return out

    @torch.inference_mode()
    def score(self, prompt: Prompt, layer: int | None = None) -> Readout:
        """One prompt, batch 1, no padding (the timing protocol)."""
        ids = torch.as_tensor([prompt.ids], dtype=torch.long, device=self.device)
        patches = ()
        if prompt.slots:
            patches = (
                ResidualPatch(
                    layer,
                    torch.as_tensor([prompt.slots], device=self.device),
                    torch.as_tensor(prompt.vectors[None], dtype=torch.float32, device=self.device),
                ),
            )
        rec = Recorder(self.n_layers, no_positions(1, self.device), (), patches=patches)
        with recording(self.model, rec):
            out = self.model(input_ids=ids, logits_to_keep=1)
        return self.readouts(out.logits[:, -1])[0]

    @torch.inference_mode()
    def score_on_cache(self, input_ids: list[int], cache, start: int) -> Readout:
        """Readout of `input_ids` continuing a prepared KV cache whose next position is `start` (batch 1)."""
        ids = torch.as_tensor([input_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(input_ids), device=self.device)[None]
        mask = torch.ones(1, cache.get_seq_length() + len(input_ids), dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return self.readouts(out.logits[:, -1])[0]

    def score_anchor_kv(self, anchor_kv: AnchorKV, demos, input_ids: list[int], draw: int | None = None) -> Readout:
        """Assemble the demonstrations' anchor cache (per call: the forward pass extends it) and score.
        draw None = Hidden_anchor; draw d = Hidden_random draw d (see AnchorKV.kept)."""
        cache, start = anchor_kv.cache_for(demos, draw)
        return self.score_on_cache(input_ids, cache, start)

    @torch.inference_mode()
    def score_many_on_anchor_kv(
        self,
        anchor_kv: AnchorKV,
        demos: np.ndarray,
        queries: list[list[int]],
        draw: int | None = None,
        desc: str = "anchor kv",
    ) -> list[Readout]:
        """Batched `score_anchor_kv`: demos [n, k] pool indices, queries n token lists. Each row's
        kept KV is left-padded to the batch's longest and masked out; the queries are left-padded
        after it (masked too) and continue at the same first position k·stride."""
        out: list[Readout | None] = [None] * len(queries)
        start = demos.shape[1] * anchor_kv.stride
        lengths = [len(q) + anchor_kv.kept_length(d, draw) for q, d in zip(queries, demos, strict=True)]
        for idx in self.batches(lengths, desc):
            kv, kv_mask = anchor_kv.batch_cache([demos[i] for i in idx], draw)
            ids, q_mask, q_pos = left_pad([queries[i] for i in idx], self.tokenizer.pad_token_id, self.device)
            mask = torch.cat([kv_mask, q_mask], dim=1)
            logits = self.model(
                input_ids=ids,
                position_ids=q_pos + start,
                attention_mask=mask,
                past_key_values=kv,
                use_cache=True,
                logits_to_keep=1,
            ).logits
            for i, r in zip(idx, self.readouts(logits[:, -1]), strict=True):
                out[i] = r
        return out


class AnchorKV:
    """Anchor-only KV compression of pool demonstrations (the Hidden_anchor idea of docs/methods.md §3.7).

    A demonstration 'Tweet: …\nSentiment: negative\n' is run once, alone, and only the keys and
    values of its anchor tokens (template text, label token, separator; the input text dropped)
    are kept, per layer. Demonstrations computed alone would all start at position 0; to keep
    positions increasing, the demonstration for prompt slot s is run at positions
    s·stride + t, so a cache is computed per (demonstration, slot) on first use (memoised;
    its cost is reported as one-time compression). The query then continues at k·stride.

    Hidden_random (§3.7) is the same cache with another kept set: each demonstration's label token
    swapped for one random token of its input text (`kept(j, slot, draw)`, draw = 0..random_draws-1,
    seeded by (seed, draw, j)). One forward pass per (demonstration, slot) fills the kept KV of
    every variant, so the random draws add no compression cost.
    """

    def __init__(
        self,
        model,
        tokenizer,
        spec: DatasetSpec,
        texts: list[str],
        labels: list[str],
        random_draws: int = 0,
        seed: int = 0,
        keep: str = "anchors",
    ):
        if keep not in ANCHOR_KEEP:
            raise ConfigError(f"icicl.anchor_keep: {keep!r}; use one of {ANCHOR_KEEP}")
        self.model, self.tokenizer, self.spec, self.keep = model, tokenizer, spec, keep
        self.device = input_device(model)
        label_word = dict(zip(spec.class_names, spec.label_words, strict=True))
        self.records = [
            tokenize_pieces(tokenizer, demo_pieces(spec, t, label_word[lab]))
            for t, lab in zip(texts, labels, strict=True)
        ]
        self.stride = max(len(r["input_ids"]) for r in self.records)
        self.bos = len(tokenizer("", add_special_tokens=True)["input_ids"])  # leading special tokens
        self.variants = (None, *range(random_draws))  # None = Hidden_anchor, d = Hidden_random draw d
        self.seed = seed
        # (j, slot) -> {variant: per layer (K, V) [1, Hkv, n_kept, dh]}
        self._memo: dict[tuple[int, int], dict[int | None, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.build_seconds = 0.0

    def kept(self, j: int, slot: int, draw: int | None = None) -> list[int]:
        """Kept token positions of demonstration j: BOS (slot 0 only), template and separator tokens
        (`keep` "anchors"; not with "label"), and its label token (draw None) or, for Hidden_random
        draw d, `random_position(j, d)` instead."""
        rec = self.records[j]
        chosen = rec["label_pos"] if draw is None else [self.random_position(j, draw)]
        keep = sorted((set(rec["format_pos"]) if self.keep == "anchors" else set()) | set(chosen))
        return ([0] if self.bos and slot == 0 else []) + [p for p in keep if p >= self.bos]

    def random_position(self, j: int, draw: int) -> int:
        """One token of demonstration j's input text that is not an anchor, drawn with (seed, draw, j)."""
        rec = self.records[j]
        start, end = rec["demo_spans"][0]
        anchors = set(rec["format_pos"]) | set(rec["label_pos"])
        candidates = [p for p in range(start, end) if p not in anchors and p >= self.bos]
        if not candidates:
            raise ConfigError(
                f"Hidden_random: demonstration {j} ({rec['text']!r}) has no input-text token outside "
                "the template; drop empty texts from the dataset"
            )
        return int(np.random.default_rng([self.seed, draw, j]).choice(candidates))

    @torch.inference_mode()
    def layers(self, j: int, slot: int, draw: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (K, V) [1, Hkv, n_kept, dh] of demonstration j at prompt slot `slot` (variant `draw`)."""
        if (j, slot) not in self._memo:
            t0 = time.perf_counter()
            ids = torch.as_tensor(np.asarray(self.records[j]["input_ids"])[None], dtype=torch.long, device=self.device)
            positions = (slot * self.stride + torch.arange(ids.shape[1], device=self.device))[None]
            out = self.model(
                input_ids=ids, position_ids=positions, past_key_values=full_kv_cache(), use_cache=True, logits_to_keep=1
            )
            self._memo[(j, slot)] = {}
            for variant in self.variants:
                keep = torch.as_tensor(self.kept(j, slot, variant))  # to each layer's device (several devices)
                self._memo[(j, slot)][variant] = [
                    (
                        layer.keys[:, :, keep.to(layer.keys.device)].clone(),
                        layer.values[:, :, keep.to(layer.values.device)].clone(),
                    )
                    for layer in out.past_key_values.layers
                ]
            self.build_seconds += time.perf_counter() - t0
        return self._memo[(j, slot)][draw]

    def kept_length(self, demos, draw: int | None = None) -> int:
        """Cached positions a query continuing `demos` attends to (before its own tokens)."""
        return sum(len(self.kept(int(j), slot, draw)) for slot, j in enumerate(demos))

    def batch_cache(self, demos_list: list, draw: int | None = None) -> tuple[object, torch.Tensor]:
        """The kept KV of several demonstration lists as one left-padded cache [B, Hkv, n_max, dh] per
        layer, and its attention mask [B, n_max] (0 = padding); every row's query starts at k·stride."""
        rows = [self.cache_parts(demos, draw) for demos in demos_list]  # per row: per layer (K, V) [1, Hkv, n, dh]
        n_max = max(r[0][0].shape[2] for r in rows)
        mask = torch.zeros(len(rows), n_max, dtype=torch.long, device=self.device)
        for b, r in enumerate(rows):
            mask[b, n_max - r[0][0].shape[2] :] = 1
        cache = full_kv_cache()
        for layer in range(len(rows[0])):
            padded = [
                [torch.nn.functional.pad(kv[layer][i], (0, 0, n_max - kv[layer][i].shape[2], 0)) for kv in rows]
                for i in (0, 1)
            ]
            cache.update(torch.cat(padded[0]), torch.cat(padded[1]), layer)
        return cache, mask

    def cache_parts(self, demos, draw: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (K, V) [1, Hkv, n_kept, dh] of `demos` in prompt order (slot s = position s)."""
        if draw not in self.variants:
            raise ValueError(f"AnchorKV built with random_draws={len(self.variants) - 1}; no draw {draw}")
        parts = [self.layers(int(j), slot, draw) for slot, j in enumerate(demos)]
        return [
            (torch.cat([p[layer][0] for p in parts], dim=2), torch.cat([p[layer][1] for p in parts], dim=2))
            for layer in range(len(parts[0]))
        ]

    def cache_for(self, demos, draw: int | None = None) -> tuple[object, int]:
        """A DynamicCache holding the kept KV of `demos` in prompt order, and the query's first position."""
        cache = full_kv_cache()
        for layer, (k, v) in enumerate(self.cache_parts(demos, draw)):
            cache.update(k, v, layer)
        return cache, len(demos) * self.stride


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
        plain = self.scorer.states(zero_shot, [self.embed_layer, *self.layers], "pool states")
        label = self.scorer.states(labelled, self.layers, "pool label states")
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
        emb = self.scorer.states(prompts, [self.embed_layer], "retrieval embeddings")["mean"][:, 0]
        seconds = (time.perf_counter() - t0) / len(rows)
        s = self.settings
        demos = retrieve(emb, self.pool_embedding, s.k, s.retrieval, s.seed)
        gold = np.array([self.classes.index(str(v)) for v in rows["label"]])
        return Inputs(rows, prompts, demos, gold, seconds)

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


def arm_settings(settings: ICICLSettings, inject_layer: int, tv_layer: int, n_layers: int) -> dict[str, dict]:
    """Every arm's settings as it ran (the table's metadata, docs/methods.md §1.4): the arms with
    settings (icicl_soft, icicl_identity, task_vector, anchor_kv, and hidden_random, anchor_kv's
    cache with its label KV swapped) and the shared retrieval of every arm."""
    shared = {"k": settings.k, "retrieval": settings.retrieval, "pool_size": settings.pool_size}
    soft = {
        "inject_layer": inject_layer,
        "depth": round(inject_layer / n_layers, 3),
        "state": settings.state,
        "label_line": settings.label_line,
    }
    return {
        "zero_shot": {},
        "full_icl": shared,
        "icicl_soft": {**shared, **soft, "task_space": settings.task_space},
        "icicl_identity": {**shared, **soft, "task_space": "identity"},
        "task_vector": {
            **shared,
            "layer": tv_layer,
            "depth": round(tv_layer / n_layers, 3),
            "state": settings.task_vector_state or settings.state,
        },
        "anchor_kv": {**shared, "keep": settings.anchor_keep},
        "text_anchor": shared,
        "hidden_random": {**shared, "keep": settings.anchor_keep, "draws": settings.random_draws},
    }


TUNED_ARMS = ("icicl_soft", "task_vector", "anchor_kv")  # the arms with settings, tuned alike by `sweep_icicl`


def task_vector_layers(n_layers: int, budget: int, n_states: int) -> list[int]:
    """The task vector's candidate layers: every residual index 1..L−1, or, when layers × states would
    exceed `budget` settings, budget // n_states of them evenly spaced (first and last kept)."""
    every = list(range(1, n_layers))
    n = max(1, min(len(every), budget // max(n_states, 1)))
    if n >= len(every):
        return every
    return sorted({every[round(i)] for i in np.linspace(0, len(every) - 1, n)})


def tuning_budget(grid: SweepGrid, n_layers: int) -> dict[str, dict]:
    """Per tuned arm, its candidate grid and how many settings the sweep scores, all on the same
    `grid.n_val` validation inputs (train rows outside the pool): the budget B is IC-ICL's grid
    (layers × states × task spaces × label line); the task vector gets B settings of its own grid
    (layer × state; every layer while that fits), anchor_kv its whole grid (its kept sets, fewer than B)."""
    soft = {
        "layer": grid.layers(n_layers),
        "state": list(grid.states),
        "task_space": list(grid.task_spaces),
        "label_line": list(grid.label_line),
    }
    budget = int(np.prod([len(v) for v in soft.values()]))
    tv = {"layer": task_vector_layers(n_layers, budget, len(grid.states)), "state": list(grid.states)}
    anchor = {"keep": list(ANCHOR_KEEP)}
    out = {}
    for arm, candidates in (("icicl_soft", soft), ("task_vector", tv), ("anchor_kv", anchor)):
        out[arm] = {
            "grid": candidates,
            "settings_scored": int(np.prod([len(v) for v in candidates.values()])),
            "budget": budget,
            "validation_inputs": grid.n_val,
            "split": "train rows outside the retrieval pool",
        }
    return out


def evaluate_icicl(
    df: pd.DataFrame,
    spec: DatasetSpec,
    model_dir,
    model: ModelSpec,
    spaces: Mapping[str, Mapping[int, TaskSpace]],
    settings: ICICLSettings,
    *,
    var_threshold: float = 0.9,
    max_k: int | None = None,
    grid: SweepGrid | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Run every arm on the same retrieved demonstrations of the test inputs.

    spaces: {variant: {layer: TaskSpace}} holding at least `settings.task_space` unless that is
    "pool" (fitted here). Returns (per-example rows, summary per arm, meta); `paired_table` turns
    the per-example rows into the paired comparisons. meta["arm_settings"] states every arm's
    settings, meta["tuning"] the sweep's budget per tuned arm (`tuning_budget` of `grid`).
    """
    run = ICICLRun(df, spec, model_dir, model, settings, var_threshold=var_threshold, max_k=max_k)
    scorer, layer = run.scorer, run.inject_layer
    tests = (
        run.test_rows
        if settings.n_test is None
        else balanced_sample(
            run.test_rows,
            run.classes,
            settings.n_test,
            settings.seed + 1,
            f"dataset '{spec.name}' test split (icicl.n_test)",
        )
    )
    inputs = run.inputs(tests)
    h = run.state_vectors(layer, settings.state)
    h_soft, space = run.compressed(layer, settings.state, settings.task_space, spaces)
    tv_state = settings.task_vector_state or settings.state
    prompts = {
        "zero_shot": run.zero_shot_prompts(inputs),
        "full_icl": run.full_prompts(inputs),
        "icicl_soft": run.soft_prompts(inputs, h_soft, settings.label_line),
        "icicl_identity": run.soft_prompts(inputs, h, settings.label_line),
        "task_vector": run.task_vector_prompts(inputs, run.state_vectors(run.tv_layer, tv_state)),
        "text_anchor": run.text_anchor_prompts(inputs),
    }
    at = {"task_vector": run.tv_layer}  # the layer each arm's states are written at (others: inject_layer)
    readouts = {(arm, -1): scorer.score_many(p, at.get(arm, layer), desc=arm) for arm, p in prompts.items()}

    anchor_kv = AnchorKV(
        run.net,
        run.tokenizer,
        spec,
        run.pool_texts,
        run.pool_labels,
        settings.random_draws,
        settings.seed,
        settings.anchor_keep,
    )
    queries = run.query_ids(inputs)
    for slot in range(settings.k):  # one-time compression of every demonstration used, outside any timing
        for j in np.unique(inputs.demos[:, slot]):
            anchor_kv.layers(int(j), slot)
    draws = [("anchor_kv", -1, None), *[("hidden_random", d, d) for d in range(settings.random_draws)]]
    for arm, key, draw in draws:
        readouts[(arm, key)] = scorer.score_many_on_anchor_kv(anchor_kv, inputs.demos, queries, draw, desc=arm)

    # the §3.8 protocol on a fixed sample: batch 1, no padding, warm-up, `repeats` interleaved rounds of
    # every arm per input (iclscope.core.timing). Hidden_random's draws all keep as many cache entries,
    # so draw 0 is timed for them all.
    n = len(tests)
    sample = np.sort(np.random.default_rng(settings.seed + 7).choice(n, min(settings.n_timed, n), replace=False))

    def runner(arm: str, draw: int, i: int):
        if arm in prompts:
            return partial(scorer.score, prompts[arm][i], at.get(arm, layer))
        return partial(scorer.score_anchor_kv, anchor_kv, inputs.demos[i], queries[i], None if draw < 0 else draw)

    for _ in range(settings.warmup):
        scorer.score(prompts["full_icl"][sample[0]])
    seconds = {}
    timed_arms = [(arm, draw) for arm, draw in readouts if arm != "hidden_random" or draw == 0]
    for i in tqdm(sample, desc="timing (batch 1)"):
        _, got = interleaved({key: partial(runner, *key, i) for key in timed_arms}, settings.repeats, scorer.device)
        for (arm, draw), values in got.items():
            seconds[(arm, draw, i)] = values

    rows = []
    for (arm, draw), outs in readouts.items():
        arm_prompts = prompts.get(arm)
        for i, (q, out) in enumerate(zip(tests.itertuples(), outs, strict=True)):
            pred = int(out.label_logits.argmax())
            tokens = len(arm_prompts[i].ids) if arm_prompts else len(queries[i])
            rows.append(
                {
                    "test_row": int(q.row_id),
                    "arm": arm,
                    "draw": draw,
                    "gold": int(inputs.gold[i]),
                    "pred": pred,
                    "correct": pred == inputs.gold[i],
                    "tokens": tokens,
                    "timed": (arm, draw, i) in seconds,
                    "seconds": float(np.median(seconds[(arm, draw, i)])) if (arm, draw, i) in seconds else np.nan,
                    "seconds_repeats": seconds.get((arm, draw, i)),
                    "demo_rows": [int(run.pool["row_id"].iat[j]) for j in inputs.demos[i]],
                    "top_ids": out.top_ids.tolist(),
                    **{f"logit_{c}": float(v) for c, v in zip(run.classes, out.label_logits, strict=True)},
                }
            )
    per_example = add_loyalty(pd.DataFrame(rows))
    summary = summarise(per_example, run.classes, settings.n_boot, settings.seed)
    meta = {
        "settings": asdict(settings),
        "embed_layer": run.embed_layer,
        "inject_layer": layer,
        "task_space_variant": space.variant if space else "identity",
        "task_space_k": int(space.k) if space else int(h.shape[1]),
        "n_test": n,
        "n_timed": len(sample),
        "timing": {
            "protocol": "batch 1, warm-up, interleaved rounds (docs/methods.md §3.8)",
            "rounds": settings.repeats,
            "timed_arms": [f"{a}" if d < 0 else f"{a}[draw {d}]" for a, d in timed_arms],
        },
        "pool_states_seconds": round(run.pool_seconds, 3),
        "pool_states_seconds_per_demo": round(run.pool_seconds / len(run.pool), 4),
        "anchor_kv_build_seconds": round(anchor_kv.build_seconds, 3),
        "anchor_kv_entries": len(anchor_kv._memo),
        "anchor_kv_stride": anchor_kv.stride,
        "retrieval_embedding_seconds_per_example": round(inputs.embed_seconds, 4),
        "word_k": settings.word_k,
        "reconstruction": "P1-reconstruction (Yang et al. 2025, docs/methods.md §1.4)",
        "arm_settings": arm_settings(settings, layer, run.tv_layer, run.n_layers),
        "tuning": tuning_budget(grid, run.n_layers) if grid is not None else None,
    }
    return per_example, summary, meta


def sweep_icicl(
    df: pd.DataFrame,
    spec: DatasetSpec,
    model_dir,
    model: ModelSpec,
    spaces: Mapping[str, Mapping[int, TaskSpace]],
    settings: ICICLSettings,
    grid: SweepGrid,
    *,
    var_threshold: float = 0.9,
    max_k: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The validation accuracy of every tuned arm's candidate settings (`tuning_budget`): icicl_soft
    over `grid` (injection layer × state × task space × label line), the task vector over layer ×
    state, anchor_kv over its kept sets, all on the same `grid.n_val` train-split inputs outside
    the pool: no test input is read. Cost: one batched pass over the inputs per setting. Returns
    (table, meta); per tuned arm the row marked `chosen` is its best (ties: fewer tokens, then grid
    order); meta["chosen_by_arm"] holds the chosen settings (the icicl config keys), meta["tuning"]
    the budget."""

    def layers_of(L: int) -> list[int]:
        return sorted(set(grid.layers(L)) | set(tuning_budget(grid, L)["task_vector"]["grid"]["layer"]))

    run = ICICLRun(df, spec, model_dir, model, settings, layers_of, var_threshold=var_threshold, max_k=max_k)
    budget = tuning_budget(grid, run.n_layers)
    val = balanced_sample(
        run.train_rest,
        run.classes,
        grid.n_val,
        settings.seed + 2,
        f"dataset '{spec.name}' train split outside the pool (icicl.sweep.n_val)",
    )
    inputs = run.inputs(val)

    def scored(prompts: list[Prompt], at: int | None, **setting) -> dict:
        outs = run.scorer.score_many(prompts, at, desc=" ".join(map(str, setting.values())))
        correct = np.array([o.label_logits.argmax() for o in outs]) == inputs.gold
        lo, hi = bootstrap_mean(correct, settings.n_boot, settings.seed)
        return {
            **setting,
            "accuracy": correct.mean(),
            "ci_low": lo,
            "ci_high": hi,
            "tokens": float(np.mean([len(p.ids) for p in prompts])),
            "n_val": len(val),
        }

    rows = [
        scored(run.zero_shot_prompts(inputs), None, arm="zero_shot"),
        scored(run.full_prompts(inputs), None, arm="full_icl"),
    ]
    for layer in budget["icicl_soft"]["grid"]["layer"]:
        for state in grid.states:
            for variant in grid.task_spaces:
                vectors, space = run.compressed(layer, state, variant, spaces)
                for label_line in grid.label_line:
                    rows.append(
                        scored(
                            run.soft_prompts(inputs, vectors, label_line),
                            layer,
                            arm="icicl_soft",
                            layer=layer,
                            depth=round(layer / run.n_layers, 3),
                            state=state,
                            task_space=variant,
                            label_line=label_line,
                            space_k=int(space.k) if space else int(vectors.shape[1]),
                        )
                    )
    for layer in budget["task_vector"]["grid"]["layer"]:
        for state in grid.states:
            rows.append(
                scored(
                    run.task_vector_prompts(inputs, run.state_vectors(layer, state)),
                    layer,
                    arm="task_vector",
                    layer=layer,
                    depth=round(layer / run.n_layers, 3),
                    state=state,
                )
            )
    queries = run.query_ids(inputs)
    for keep in budget["anchor_kv"]["grid"]["keep"]:
        kv = AnchorKV(run.net, run.tokenizer, spec, run.pool_texts, run.pool_labels, 0, settings.seed, keep)
        outs = run.scorer.score_many_on_anchor_kv(kv, inputs.demos, queries, None, desc=f"anchor_kv {keep}")
        correct = np.array([o.label_logits.argmax() for o in outs]) == inputs.gold
        lo, hi = bootstrap_mean(correct, settings.n_boot, settings.seed)
        tokens = np.mean([len(q) + kv.kept_length(d) for q, d in zip(queries, inputs.demos, strict=True)])
        rows.append(
            {
                "arm": "anchor_kv",
                "keep": keep,
                "accuracy": correct.mean(),
                "ci_low": lo,
                "ci_high": hi,
                "tokens": float(tokens),
                "n_val": len(val),
            }
        )
    table = pd.DataFrame(rows)
    table["chosen"] = False
    keys = {
        "icicl_soft": ("layer", "state", "task_space", "label_line"),
        "task_vector": ("layer", "state"),
        "anchor_kv": ("keep",),
    }
    config_key = {
        ("task_vector", "layer"): "task_vector_layer",
        ("task_vector", "state"): "task_vector_state",
        ("anchor_kv", "keep"): "anchor_keep",
        ("icicl_soft", "layer"): "inject_layer",
    }
    chosen_by_arm = {}
    for arm in TUNED_ARMS:
        cands = table[table.arm == arm]
        best = cands.sort_values(["accuracy", "tokens"], ascending=[False, True], kind="stable").index[0]
        table.loc[best, "chosen"] = True
        # config values: a layer as its depth share (what config.yaml takes), the absolute layer beside it
        chosen_by_arm[arm] = {
            config_key.get((arm, k), k): (
                float(table.at[best, "depth"]) if k == "layer" else (v.item() if hasattr(v, "item") else v)
            )
            for k, v in ((k, table.at[best, k]) for k in keys[arm])
        }
        if "layer" in keys[arm]:
            chosen_by_arm[arm]["resid_index"] = int(table.at[best, "layer"])
        chosen_by_arm[arm]["validation_accuracy"] = float(table.at[best, "accuracy"])
    soft_best = table[(table.arm == "icicl_soft") & table.chosen].index[0]
    chosen = {k: table.at[soft_best, k] for k in ("layer", "state", "task_space", "label_line")}
    meta = {
        "grid": asdict(grid),
        "n_layers": run.n_layers,
        "validation_rows": len(val),
        "chosen": {k: (v.item() if hasattr(v, "item") else v) for k, v in chosen.items()},
        "chosen_by_arm": chosen_by_arm,
        "tuning": budget,
        "pool_states_seconds": round(run.pool_seconds, 3),
    }
    return table, meta


def add_loyalty(per_example: pd.DataFrame) -> pd.DataFrame:
    """Per row, against full_icl on the same test input (docs/methods.md §3.3/§3.7): `label_loyal` (the
    same predicted label) and `word_loyalty` (Jaccard of the top-k vocabulary ids)."""
    ref = per_example[per_example.arm == "full_icl"].set_index("test_row").loc[per_example["test_row"]]
    out = per_example.copy()
    out["label_loyal"] = out["pred"].to_numpy() == ref["pred"].to_numpy()
    out["word_loyalty"] = jaccard_topk(out["top_ids"].tolist(), ref["top_ids"].tolist())
    return out


def best_random_draw(per_example: pd.DataFrame) -> int:
    """The Hidden_random draw with the best label loyalty (first draw on ties): hidden_random_top."""
    loyal = per_example[per_example.arm == "hidden_random"].groupby("draw")["label_loyal"].mean()
    return int(loyal.index[np.argmax(loyal.to_numpy())])


def timed_seconds(g: pd.DataFrame) -> pd.DataFrame:
    """The timed rows of `g` by test_row: per round seconds [n_timed, repeats] as columns 0..R-1
    (`seconds_repeats`; one column of `seconds` for rows without it), and tokens."""
    t = g[g["timed"]].drop_duplicates("test_row").set_index("test_row").sort_index()
    reps = (
        np.stack(t["seconds_repeats"].map(np.asarray).to_list())
        if "seconds_repeats" in t and len(t)
        else t[["seconds"]].to_numpy(float)
    )
    return pd.DataFrame(reps, index=t.index).assign(tokens=t["tokens"])


def timing_row(g: pd.DataFrame, full: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Seconds per example (median over the timed inputs of each input's median round), the speed-up
    vs full_icl with its bootstrap interval over inputs (iclscope.core.timing.speedup, rounds paired),
    the time reduction 1 − 1/speed-up, and tokens per second."""
    arm = timed_seconds(g)
    ref = full.loc[full.index.intersection(arm.index)]
    arm = arm.loc[ref.index]
    rounds = [c for c in arm.columns if c != "tokens"]
    if not len(arm):
        return {
            k: np.nan
            for k in (
                "seconds_per_example",
                "speedup_vs_full_icl",
                "speedup_lo",
                "speedup_hi",
                "time_reduction_vs_full_icl",
                "tokens_per_second",
            )
        }
    est, lo, hi = speedup(ref[rounds].to_numpy(), arm[rounds].to_numpy(), n_boot, seed)
    return {
        "seconds_per_example": float(np.median(np.median(arm[rounds].to_numpy(), axis=1))),
        "speedup_vs_full_icl": est,
        "speedup_lo": lo,
        "speedup_hi": hi,
        "time_reduction_vs_full_icl": 1 - 1 / est,
        "tokens_per_second": tokens_per_second(arm["tokens"].to_numpy(), arm[rounds].to_numpy()),
    }


def summarise(per_example: pd.DataFrame, classes: list[str], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per arm: accuracy with its bootstrap interval, macro-F1, label / word loyalty vs full_icl, mean
    tokens, and on the timed sample (`timing_row`): seconds per example, the median speed-up vs
    full_icl over inputs with its interval, tokens per second. hidden_random: the mean over its
    draws; hidden_random_top: the draw with the best label loyalty, named in `draw` (both timed by
    the draws' common timing, draw 0)."""
    full = timed_seconds(per_example[per_example.arm == "full_icl"])
    hr = per_example[per_example.arm == "hidden_random"]

    def row(arm: str, g: pd.DataFrame, draw: float = np.nan) -> dict:
        lo, hi = bootstrap_mean(g["correct"].to_numpy(), n_boot, seed)
        timing = timing_row(hr if arm.startswith("hidden_random") else g, full, n_boot, seed)
        return {
            "arm": arm,
            "accuracy": g["correct"].mean(),
            "accuracy_lo": lo,
            "accuracy_hi": hi,
            "macro_f1": macro_f1(g["gold"].to_numpy(), g["pred"].to_numpy(), range(len(classes))),
            "label_loyalty": g["label_loyal"].mean(),
            "word_loyalty": g["word_loyalty"].mean(),
            "tokens": g["tokens"].mean(),
            **timing,
            "draw": draw,
            "n": len(g),
        }

    out = []
    for arm, g in per_example.groupby("arm", sort=False):
        if arm != "hidden_random":
            out.append(row(arm, g))
            continue
        draws = [row(arm, gd, d) for d, gd in g.groupby("draw")]
        mean = pd.DataFrame(draws).drop(columns="arm").mean().to_dict()
        out.append({**mean, "arm": "hidden_random", "draw": np.nan, "n": len(g) // len(draws)})
        top = best_random_draw(per_example)
        out.append({**next(r for r in draws if r["draw"] == top), "arm": "hidden_random_top"})
    return pd.DataFrame(out)


def correctness(per_example: pd.DataFrame, arm: str) -> np.ndarray:
    """[n_draws, n_inputs] 0/1 correctness of `arm` (one row unless hidden_random), inputs by test_row."""
    if arm == "hidden_random_top":
        g = per_example[(per_example.arm == "hidden_random") & (per_example.draw == best_random_draw(per_example))]
    else:
        g = per_example[per_example.arm == arm]
    return g.pivot_table(index="draw", columns="test_row", values="correct", aggfunc="first").to_numpy(float)


def paired_table(per_example: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy differences on the same inputs, with a paired bootstrap interval and a p-value
    (McNemar exact; over Hidden_random draws, the sign-flip test): every arm against full_icl,
    and icicl_soft against `PAIRS`' references. One row per (arm, reference); `p_holm` is the
    Holm-adjusted p-value, the family being every paired test of this table (iclscope.core.stats.holm)."""
    arms = [a for a in dict.fromkeys(per_example["arm"]) if a != "full_icl"]
    if "hidden_random" in arms:
        arms.insert(arms.index("hidden_random") + 1, "hidden_random_top")
    pairs = [(a, "full_icl") for a in arms] + [p for p in PAIRS if p[1] in arms and p[0] in arms]
    rows = []
    for arm, ref in pairs:
        a, b = correctness(per_example, arm), correctness(per_example, ref)
        b = np.repeat(b, len(a), axis=0) if len(b) == 1 and len(a) > 1 else b
        rows.append({"arm": arm, "reference": ref, **paired_difference(a, b, n_boot=n_boot, seed=seed).as_dict()})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p_value"].to_numpy()) if len(out) else []
    return out


SUMMARY_METRICS = (
    "accuracy",
    "macro_f1",
    "label_loyalty",
    "word_loyalty",
    "tokens",
    "seconds_per_example",
    "speedup_vs_full_icl",
    "time_reduction_vs_full_icl",
    "tokens_per_second",
    "draw",
    "n",
)
INTERVALS = {"accuracy": ("accuracy_lo", "accuracy_hi"), "speedup_vs_full_icl": ("speedup_lo", "speedup_hi")}


def metric_table(
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    *,
    model: str,
    dataset: str,
    layer: int,
    arm_layers: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """The long-format IC-ICL table: per arm (`task`) the summary metrics (accuracy with its interval in
    ci_low / ci_high; `speedup_vs_full_icl` with its interval over the timed inputs in ci_low / ci_high;
    `tokens_per_second`; `draw` = which Hidden_random draw hidden_random_top is), and per paired comparison
    `accuracy_diff_vs_<reference>` (interval in ci_low / ci_high), `p_value_vs_<reference>` (raw) and
    `p_holm_vs_<reference>` (Holm-adjusted over the table's paired tests). `layer` is the injection
    layer, or an arm's own from `arm_layers` (the task vector's)."""
    from iclscope.core.metrics import metric_frame

    rows = [
        {
            "metric": m,
            "task": r["arm"],
            "value": r[m],
            **({"ci_low": r[INTERVALS[m][0]], "ci_high": r[INTERVALS[m][1]]} if m in INTERVALS else {}),
        }
        for r in summary.to_dict("records")
        for m in SUMMARY_METRICS
        if not pd.isna(r[m])
    ]
    for r in paired.to_dict("records"):
        rows += [
            {
                "metric": f"accuracy_diff_vs_{r['reference']}",
                "task": r["arm"],
                "value": r["diff"],
                "ci_low": r["diff_lo"],
                "ci_high": r["diff_hi"],
            },
            {"metric": f"p_value_vs_{r['reference']}", "task": r["arm"], "value": r["p_value"]},
            {"metric": f"p_holm_vs_{r['reference']}", "task": r["arm"], "value": r["p_holm"]},
        ]
    rows = [{**r, "layer": (arm_layers or {}).get(r["task"], layer)} for r in rows]
    return metric_frame(rows, model=model, dataset=dataset, family="icicl", position="query")
