"""IC-ICL: retrieved demonstrations compressed into the task space, against full-text ICL.

A reconstruction of Yang et al. 2025 (METHODS.md §1.4; the paper's details are unknown, every
choice is a setting recorded with the results). For each test input the same k demonstrations
are retrieved from a fixed pool (top-k cosine of mean-pooled states, or random), then fed to
the model in five ways ("arms"), each predicting by argmax over the label words:

  zero_shot     the test input alone                        (cost: |x| tokens)
  full_icl      the k demonstrations as text, then the input (cost: k·|demo| + |x|)
  icicl_soft    per demonstration one *soft token* ĥ_j = μ + Bᵀ B (h_j − μ): its state at the
                injection layer l projected onto the task space and back, written into the
                residual stream at layer l, followed by its label line as text
                (cost: k·(1 + |label line|) + |x|)
  task_vector   zero-shot prompt with the query state at layer l replaced by the mean state of
                the k demonstrations (task/function vectors; cost: |x|)
  icicl_identity  icicl_soft without compression (ĥ_j = h_j), to separate the effect of the
                task-space projection from that of the soft-token format
  anchor_kv     the second implementation: each demonstration kept only as the keys/values of
                its template and label tokens (AnchorKV), the query continuing that cache

Pool demonstrations are run once and their states cached (the pool is fixed; retrieval only
picks), so their one-time cost is reported apart, as METHODS.md §3.8 does for anchor caches.
Timing follows §3.8: batch 1, no padding, warm-up, median over repeats, same dtype and kernel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .capture import ATTN_IMPLEMENTATION, Positions, Recorder, ResidualPatch, left_pad, no_positions, recording
from .config import ConfigError, DatasetSpec, ModelSpec
from .icl import macro_f1
from .models import load_model
from .prompts import (
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
from .taskspace import TaskSpace, project, reconstruct

log = logging.getLogger(__name__)

ARMS = ("zero_shot", "full_icl", "icicl_soft", "icicl_identity", "task_vector", "anchor_kv")


@dataclass(frozen=True)
class ICICLSettings:
    k: int = 4
    pool_size: int = 200
    n_test: int = 100
    retrieval: str = "similar"  # similar | random
    embed_layer: int | None = None  # None = middle layer
    inject_layer: int | None = None  # None = middle layer
    task_space: str = "anchor"  # which task-space variant compresses
    warmup: int = 3
    repeats: int = 3
    seed: int = 42

    def __post_init__(self):
        if self.retrieval not in ("similar", "random"):
            raise ConfigError(f"icicl.retrieval: {self.retrieval!r}; use 'similar' or 'random'")
        if self.k < 1 or self.pool_size < self.k:
            raise ConfigError(f"icicl: need 1 <= k ({self.k}) <= pool_size ({self.pool_size})")


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


class PromptScorer:
    """Runs one prompt at a time (batch 1, as the timing protocol asks) and reads label logits."""

    def __init__(self, model, tokenizer, label_ids: list[int], n_layers: int):
        self.model, self.tokenizer, self.label_ids, self.n_layers = model, tokenizer, label_ids, n_layers
        self.device = next(model.parameters()).device

    def states(self, token_lists: list, layers: tuple[int, ...], batch_size: int = 16) -> dict[str, np.ndarray]:
        """Batched: query state [n, len(layers), d] and content mean [n, len(layers), d] of each prompt."""
        query, content = [], []
        for lo in tqdm(range(0, len(token_lists), batch_size), desc="pool/test states", leave=False):
            batch = token_lists[lo:lo + batch_size]
            ids, mask, pos = left_pad([b["input_ids"] for b in batch], self.tokenizer.pad_token_id, self.device)
            offset = ids.shape[1] - torch.as_tensor([len(b["input_ids"]) for b in batch], device=self.device)
            span = torch.as_tensor([b["query_span"] for b in batch], device=self.device) + offset[:, None]
            rec = Recorder(self.n_layers, Positions(no_positions(len(batch), self.device).label, span),
                           ("query", "content_mean"))
            with torch.inference_mode(), recording(self.model, rec):
                self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
            query.append(rec.resid["query"][:, list(layers)].cpu().numpy())
            content.append(rec.resid["content_mean"][:, list(layers)].cpu().numpy())
        return {"query": np.concatenate(query), "content_mean": np.concatenate(content)}

    @torch.inference_mode()
    def label_logits(self, input_ids: list[int], patches: tuple[ResidualPatch, ...] = ()) -> np.ndarray:
        ids = torch.as_tensor([input_ids], dtype=torch.long, device=self.device)
        rec = Recorder(self.n_layers, no_positions(1, self.device), (), patches=patches)
        with recording(self.model, rec):
            out = self.model(input_ids=ids, logits_to_keep=1)
        return out.logits[0, -1, self.label_ids].float().cpu().numpy()

    @torch.inference_mode()
    def label_logits_on_cache(self, input_ids: list[int], cache, start: int) -> np.ndarray:
        """Label logits of `input_ids` continuing a prepared KV cache whose next position is `start`."""
        ids = torch.as_tensor([input_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(input_ids), device=self.device)[None]
        mask = torch.ones(1, cache.get_seq_length() + len(input_ids), dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[0, -1, self.label_ids].float().cpu().numpy()

    def label_logits_anchor_kv(self, anchor_kv: AnchorKV, demos, input_ids: list[int]) -> np.ndarray:
        """Assemble the demonstrations' anchor cache (per call: the forward pass extends it) and score."""
        cache, start = anchor_kv.cache_for(demos)
        return self.label_logits_on_cache(input_ids, cache, start)

    def timed(self, run, repeats: int = 1) -> tuple[np.ndarray, float]:
        """`run()` -> label logits; returns them and the median wall-clock seconds over `repeats` calls."""
        times = []
        for _ in range(repeats):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = run()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return logits, float(np.median(times))


class AnchorKV:
    """Anchor-only KV compression of pool demonstrations (the Hidden_anchor idea of METHODS.md §3.7).

    A demonstration 'Tweet: …\nSentiment: negative\n' is run once, alone, and only the keys and
    values of its anchor tokens (template text, label token, separator; the input text dropped)
    are kept, per layer. Demonstrations computed alone would all start at position 0; to keep
    positions increasing, the demonstration for prompt slot s is run at positions
    s·stride + t, so a cache is computed per (demonstration, slot) on first use (memoised;
    its cost is reported as one-time compression). The query then continues at k·stride.
    """

    def __init__(self, model, tokenizer, spec: DatasetSpec, texts: list[str], labels: list[str]):
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.device = next(model.parameters()).device
        label_word = dict(zip(spec.class_names, spec.label_words, strict=True))
        self.records = [tokenize_pieces(tokenizer, demo_pieces(spec, t, label_word[lab]))
                        for t, lab in zip(texts, labels, strict=True)]
        self.stride = max(len(r["input_ids"]) for r in self.records)
        self.bos = len(tokenizer("", add_special_tokens=True)["input_ids"])  # leading special tokens
        self._memo: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.build_seconds = 0.0

    def kept(self, j: int, slot: int) -> list[int]:
        rec = self.records[j]
        keep = sorted(set(rec["format_pos"]) | set(rec["label_pos"]))
        return ([0] if self.bos and slot == 0 else []) + [p for p in keep if p >= self.bos]

    @torch.inference_mode()
    def layers(self, j: int, slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (K, V) [1, Hkv, n_kept, dh] of demonstration j at prompt slot `slot`."""
        if (j, slot) not in self._memo:
            t0 = time.perf_counter()
            ids = torch.as_tensor(np.asarray(self.records[j]["input_ids"])[None], dtype=torch.long, device=self.device)
            positions = (slot * self.stride + torch.arange(ids.shape[1], device=self.device))[None]
            out = self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1)
            keep = torch.as_tensor(self.kept(j, slot), device=self.device)
            self._memo[(j, slot)] = [(layer.keys[:, :, keep].clone(), layer.values[:, :, keep].clone())
                                     for layer in out.past_key_values.layers]
            self.build_seconds += time.perf_counter() - t0
        return self._memo[(j, slot)]

    def cache_for(self, demos) -> tuple[object, int]:
        """A DynamicCache holding the kept KV of `demos` in prompt order, and the query's first position."""
        from transformers import DynamicCache

        parts = [self.layers(int(j), slot) for slot, j in enumerate(demos)]
        cache = DynamicCache(config=self.model.config)
        for layer in range(len(parts[0])):
            cache.update(torch.cat([p[layer][0] for p in parts], dim=2), torch.cat([p[layer][1] for p in parts], dim=2),
                         layer)
        return cache, len(demos) * self.stride


def demo_pieces(spec: DatasetSpec, text: str, label_word: str) -> list[Piece]:
    """The pieces of one demonstration, separator included, without a query."""
    before, between, after = split_template(spec.prompts.template)
    pieces = [Piece(before, LITERAL, 0), Piece(text, TEXT, 0), Piece(between, LITERAL, 0),
              Piece(label_word, LABEL, 0), Piece(after, LITERAL, 0), Piece(spec.prompts.separator, SEPARATOR, 0)]
    return [p for p in pieces if p.text]


def soft_prompt(tokenizer, spec: DatasetSpec, labels: list[str], query_text: str) -> tuple[list[int], list[int]]:
    """Token ids of '[soft]<label line>' per demonstration, then the zero-shot query; soft-slot positions.

    Built from separately tokenized segments so every soft slot is exactly one token: a stand-in
    token (the separator's first) whose residual state is overwritten at the injection layer.
    A demonstration 'Tweet: …\nSentiment: negative\n' becomes '[ĥ]Sentiment: negative\n'.
    """
    before, between, after = split_template(spec.prompts.template)
    label_word = dict(zip(spec.class_names, spec.label_words, strict=True))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    slot_token = encode(spec.prompts.separator or "\n")[0]
    ids = list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS when the model uses one
    slots = []
    for lab in labels:
        slots.append(len(ids))
        ids += [slot_token] + encode(between.lstrip("\n") + label_word[lab] + after + spec.prompts.separator)
    ids += encode(before + query_text + between.rstrip(" "))
    return [int(t) for t in ids], slots


def evaluate_icicl(df: pd.DataFrame, spec: DatasetSpec, model_dir, model: ModelSpec, spaces: dict[int, TaskSpace],
                   settings: ICICLSettings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Run every arm on the same retrieved demonstrations. Returns (per-example rows, summary, meta).

    df: the normalised dataset table; spaces: {layer: TaskSpace} of the chosen variant.
    """
    if spec.kind != "classification":
        raise ConfigError(f"IC-ICL needs a classification dataset; '{spec.name}' is {spec.kind}")
    net, tokenizer, manifest = load_model(model_dir, device=model.device, dtype=model.dtype,
                                          device_map=model.device_map, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    embed_layer = settings.embed_layer if settings.embed_layer is not None else L // 2
    layer = settings.inject_layer if settings.inject_layer is not None else L // 2
    if layer not in spaces:
        raise ConfigError(f"icicl.inject_layer {layer}: no task space at that layer (have {sorted(spaces)[:5]}…)")
    space = spaces[layer]
    classes = spec.class_names
    label_ids = label_token_ids(tokenizer, spec.label_words, spec.prompts.template)
    scorer = PromptScorer(net, tokenizer, label_ids, L)

    rng_seed = settings.seed
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    pool = balanced_sample(train, classes, settings.pool_size, rng_seed, f"dataset '{spec.name}' train split")
    tests = balanced_sample(test, classes, settings.n_test, rng_seed + 1, f"dataset '{spec.name}' test split")

    def zero_shot(text: str) -> dict:
        return tokenize_pieces(tokenizer, assemble(spec.prompts.template, spec.prompts.separator, [], text))

    # one-time cost: every pool demonstration run once, its states cached
    t0 = time.perf_counter()
    pool_prompts = [zero_shot(t) for t in pool["text"]]
    pool_states = scorer.states(pool_prompts, (embed_layer, layer), model.batch_size)
    pool_seconds = time.perf_counter() - t0
    test_prompts = [zero_shot(t) for t in tests["text"]]
    t0 = time.perf_counter()
    test_states = scorer.states(test_prompts, (embed_layer,), model.batch_size)
    embed_seconds = (time.perf_counter() - t0) / len(tests)

    picked = retrieve(test_states["content_mean"][:, 0], pool_states["content_mean"][:, 0], settings.k,
                      settings.retrieval, settings.seed)
    h_pool = pool_states["query"][:, 1]  # [P, d] state at the demo's final position, layer l
    h_soft = reconstruct(project(h_pool, space), space)  # task-space compression
    pool_labels = pool["label"].tolist()
    pool_texts = pool["text"].tolist()

    def patches_for(slots, vectors):
        return (ResidualPatch(layer, torch.as_tensor([slots], device=scorer.device),
                              torch.as_tensor(vectors[None], dtype=torch.float32, device=scorer.device)),)

    anchor_kv = AnchorKV(net, tokenizer, spec, pool_texts, pool_labels)
    before, between, _ = split_template(spec.prompts.template)
    rows = []
    warm = test_prompts[0]["input_ids"].tolist()
    for _ in range(settings.warmup):
        scorer.label_logits(warm)
    for i, (q, prompt) in enumerate(tqdm(list(zip(tests.itertuples(), test_prompts, strict=True)), desc="ic-icl")):
        demos = picked[i]
        labels = [pool_labels[j] for j in demos]
        full = tokenize_pieces(tokenizer, assemble(
            spec.prompts.template, spec.prompts.separator,
            [(pool_texts[j], spec.label_words[classes.index(pool_labels[j])]) for j in demos], q.text))
        soft_ids, slots = soft_prompt(tokenizer, spec, labels, q.text)
        zs_ids = prompt["input_ids"].tolist()
        task_vec = h_pool[demos].mean(0)[None]  # [1, d]
        query_ids = tokenizer(before + q.text + between.rstrip(" "), add_special_tokens=False)["input_ids"]
        for slot, j in enumerate(demos):
            anchor_kv.layers(int(j), slot)  # one-time compression of the pool, outside the timing

        full_ids = full["input_ids"].tolist()
        arms = {
            "zero_shot": (zs_ids, partial(scorer.label_logits, zs_ids)),
            "full_icl": (full_ids, partial(scorer.label_logits, full_ids)),
            "icicl_soft": (soft_ids, partial(scorer.label_logits, soft_ids, patches_for(slots, h_soft[demos]))),
            "icicl_identity": (soft_ids, partial(scorer.label_logits, soft_ids, patches_for(slots, h_pool[demos]))),
            "task_vector": (zs_ids, partial(scorer.label_logits, zs_ids, patches_for([len(zs_ids) - 1], task_vec))),
            "anchor_kv": (query_ids, partial(scorer.label_logits_anchor_kv, anchor_kv, demos, query_ids)),
        }
        for arm, (ids, run) in arms.items():
            logits, seconds = scorer.timed(run, settings.repeats)
            pred = int(logits.argmax())
            rows.append({"test_row": int(q.row_id), "arm": arm, "gold": classes.index(q.label), "pred": pred,
                         "correct": pred == classes.index(q.label), "tokens": len(ids), "seconds": seconds,
                         "demo_rows": [int(pool["row_id"].iat[j]) for j in demos],
                         **{f"logit_{c}": float(v) for c, v in zip(classes, logits, strict=True)}})
    per_example = pd.DataFrame(rows)
    summary = summarise(per_example, classes)
    meta = {"settings": asdict(settings), "embed_layer": embed_layer, "inject_layer": layer,
            "task_space_variant": space.variant, "task_space_k": int(space.basis.shape[0]),
            "pool_states_seconds": round(pool_seconds, 3),
            "pool_states_seconds_per_demo": round(pool_seconds / len(pool), 4),
            "anchor_kv_build_seconds": round(anchor_kv.build_seconds, 3),
            "anchor_kv_entries": len(anchor_kv._memo), "anchor_kv_stride": anchor_kv.stride,
            "retrieval_embedding_seconds_per_example": round(embed_seconds, 4),
            "reconstruction": "P1-reconstruction (Yang et al. 2025, METHODS.md §1.4)"}
    return per_example, summary, meta


def summarise(per_example: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per arm: accuracy, macro-F1, mean tokens, median seconds per example, speed-up vs full_icl."""
    out = []
    full_time = per_example[per_example.arm == "full_icl"]["seconds"].median()
    for arm, g in per_example.groupby("arm", sort=False):
        out.append({"arm": arm, "accuracy": g["correct"].mean(),
                    "macro_f1": macro_f1(g["gold"].to_numpy(), g["pred"].to_numpy(), range(len(classes))),
                    "tokens": g["tokens"].mean(), "seconds_per_example": g["seconds"].median(),
                    "speedup_vs_full_icl": full_time / g["seconds"].median(),
                    "time_reduction_vs_full_icl": 1 - g["seconds"].median() / full_time})
    return pd.DataFrame(out)
