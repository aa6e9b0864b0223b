"""anchor_kv's and hidden_random's caches: pool demonstrations kept as the keys and values of their
anchor tokens (iclscope.model.scoring runs and prunes the caches)."""

from __future__ import annotations

import time

import numpy as np

from iclscope.core.config import ConfigError, DatasetSpec
from iclscope.methods.taskspace.icicl.arms import demo_pieces
from iclscope.methods.taskspace.icicl.settings import ANCHOR_KEEP
from iclscope.model.prompts import tokenize_pieces
from iclscope.model.scoring import KV, PromptScorer, Readout, as_cache, concat_kv, prefix_kv, prefix_kvs, select_kv


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

    The caches are run, pruned and continued by iclscope.model.scoring (`prefix_kv`, `select_kv`,
    `cached_passes`), as anchor compression's are.
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
        self._memo: dict[tuple[int, int], dict[int | None, KV]] = {}
        self.build_seconds = 0.0

    @property
    def entries(self) -> int:
        """(demonstration, slot) caches computed so far (one forward pass each)."""
        return len(self._memo)

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

    def layers(self, j: int, slot: int, draw: int | None = None) -> KV:
        """Per layer (K, V) [1, Hkv, n_kept, dh] of demonstration j at prompt slot `slot` (variant `draw`)."""
        if (j, slot) not in self._memo:
            t0 = time.perf_counter()
            kv = prefix_kv(self.model, self.records[j]["input_ids"], slot * self.stride)
            self._memo[(j, slot)] = {variant: select_kv(kv, self.kept(j, slot, variant)) for variant in self.variants}
            self.build_seconds += time.perf_counter() - t0
        return self._memo[(j, slot)][draw]

    def build(self, pairs, batch_size: int, max_batch_tokens: int) -> None:
        """Compute the caches of every (demonstration, slot) of `pairs` not computed yet, in batches
        (iclscope.model.scoring.prefix_kvs: each equals its pass alone); `layers` then finds them."""
        todo = sorted({(int(j), int(slot)) for j, slot in pairs} - set(self._memo))
        if not todo:
            return
        t0 = time.perf_counter()
        kvs = prefix_kvs(
            self.model,
            [self.records[j]["input_ids"] for j, _ in todo],
            [slot * self.stride for _, slot in todo],
            self.tokenizer.pad_token_id,
            batch_size,
            max_batch_tokens,
        )
        for (j, slot), kv in zip(todo, kvs, strict=True):
            self._memo[(j, slot)] = {variant: select_kv(kv, self.kept(j, slot, variant)) for variant in self.variants}
        self.build_seconds += time.perf_counter() - t0

    def kept_length(self, demos, draw: int | None = None) -> int:
        """Cached positions a query continuing `demos` attends to (before its own tokens)."""
        return sum(len(self.kept(int(j), slot, draw)) for slot, j in enumerate(demos))

    def cache_parts(self, demos, draw: int | None = None) -> KV:
        """Per layer (K, V) [1, Hkv, n_kept, dh] of `demos` in prompt order (slot s = position s)."""
        if draw not in self.variants:
            raise ValueError(f"AnchorKV built with random_draws={len(self.variants) - 1}; no draw {draw}")
        return concat_kv([self.layers(int(j), slot, draw) for slot, j in enumerate(demos)])

    def cache_for(self, demos, draw: int | None = None) -> tuple[object, int]:
        """A DynamicCache holding the kept KV of `demos` in prompt order, and the query's first position."""
        return as_cache(self.cache_parts(demos, draw)), self.start(len(demos))

    def start(self, k: int) -> int:
        """The first position of a query continuing k demonstrations."""
        return k * self.stride

    def score(self, scorer: PromptScorer, demos, query_ids: list[int], draw: int | None = None) -> Readout:
        """Batch 1 (the timing protocol): the query continuing a fresh cache of `demos`' kept KV (built
        per call: a forward pass extends its cache). draw None = anchor_kv; d = hidden_random draw d."""
        return scorer.score_on_cache(query_ids, *self.cache_for(demos, draw))

    def score_many(
        self, scorer: PromptScorer, demos: np.ndarray, queries: list[list[int]], draw: int | None = None, desc: str = ""
    ) -> list[Readout]:
        """Batched `score`: demos [n, k] pool indices, queries n token lists; each row's kept KV left-padded
        to its batch's longest and masked (iclscope.model.scoring.cached_passes), the queries continuing
        at the same first position k·stride."""
        return scorer.score_many_on_kv(
            lambda i: self.cache_parts(demos[i], draw),
            [self.kept_length(d, draw) for d in demos],
            queries,
            self.start(demos.shape[1]),
            desc or ("anchor_kv" if draw is None else f"hidden_random {draw}"),
        )
