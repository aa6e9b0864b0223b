"""Anchor-only context compression in the paper's setting (Wang et al. 2023 §3.2, Table 2; docs/methods.md §3.7).

On the fixed one-demonstration-per-class prompts that saliency and isolation use, per seed:

* the demonstration part of the prompt (every token before the query's template text) is run
  once with full attention, and its per-layer keys and values are kept;
* the **kept set** is every demonstration-part token that is not input text: leading special
  tokens (BOS), the template literals, every sub-token of each label word and the separators.
  The label tokens' keys and values thus carry what they gathered from their demonstrations;
* the query part (the test prompt's template text, test input and label prefix) continues on the
  pruned cache with its **real position ids**, attending to the kept entries and to itself.

Arms (one readout each at the last position: label-word logits and the top-`word_k` vocabulary):

  full_icl           the whole prompt as text (the reference every loyalty is measured against)
  hidden_anchor      the query on the kept KV (the paper's Hidden_anchor)
  text_anchor        the kept tokens run as text (input text removed: template, label and
                     separator tokens only), then the query part, positions 0.. (Text_anchor)
  hidden_random      the kept KV with each label token's entry replaced by that of one random
                     input-text token of its demonstration, drawn between the previous label token
                     and this one (as the reference code draws it); `n_random_draws` draws per seed,
                     reported as their mean (Hidden_random) and as the draw with the best label
                     loyalty (`hidden_random_top`, Hidden_random-top)
  zero_shot          the query part alone (after BOS when the tokenizer adds one)

Speed-up (docs/methods.md §3.8): batch 1, no padding, no gradient; full_icl feeds the whole prompt,
hidden_anchor only the query part on the precomputed pruned cache (building it is excluded and
reported apart); warm-up passes, the median over `timing_repeats` repeats per prompt, CUDA
synchronised. speedup = median seconds of full_icl / median seconds of the arm.

Exactness: hidden_anchor equals a forward pass of the whole prompt in which every query-part
token's attention to non-kept demonstration tokens is masked out (tests/unit/test_anchor_compression.py
checks it against a hand-built 4-D mask to ~1e-5). Caches are rebuilt per call, since a forward
pass extends the cache it is given. Models with sliding-window layers are not exact (the window
would count cache entries, not positions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.core.timing import interleaved
from iclscope.methods.anchors.compression_tables import paired_summary, summarise
from iclscope.methods.anchors.prompts import anchor_prompts
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model
from iclscope.model.scoring import (
    KV,
    as_cache,
    cached_passes,
    continue_on_cache,
    last_logits,
    padded_passes,
    prefix_kv,
    select_kv,
)

ARMS = ("full_icl", "hidden_anchor", "text_anchor", "hidden_random", "zero_shot")


@dataclass(frozen=True)
class AnchorCompressionSettings:
    """`anchors.compression` of the config (defaults are the schema's) plus `anchors.word_k`."""

    prompts_per_seed: int | None = None
    n_random_draws: int = 20
    timing_repeats: int = 5
    timing_warmup: int = 2
    timed_per_seed: int | None = None  # prompts per seed timed (the first ones); None = every prompt
    word_k: int = 5

    def __post_init__(self):
        if self.prompts_per_seed is not None and self.prompts_per_seed < 1:
            raise ValueError(f"anchors.compression.prompts_per_seed is {self.prompts_per_seed}: use >= 1 or null")
        if self.n_random_draws < 1:
            raise ValueError(f"anchors.compression.n_random_draws is {self.n_random_draws}: need at least one draw")
        if self.timed_per_seed is not None and self.timed_per_seed < 1:
            raise ValueError(f"anchors.compression.timed_per_seed is {self.timed_per_seed}: use >= 1 or null")
        if self.timing_repeats < 1 or self.timing_warmup < 0:
            raise ValueError("anchors.compression: timing_repeats must be >= 1 and timing_warmup >= 0")
        if self.word_k < 1:
            raise ValueError(f"anchors.word_k is {self.word_k}: use at least 1")


# --------------------------------------------------------------------------- positions (pure)
def text_positions(rec) -> set[int]:
    """Tokens of the demonstrations' input texts (a token that overlaps a text counts as text)."""
    out: set[int] = set()
    for start, end in rec["demo_spans"]:
        if start >= 0:
            out.update(range(int(start), int(end)))
    return out


def demo_end(rec) -> int:
    """First token of the query part: one past the last template / label / separator token of the
    demonstrations (the query part is the test prompt's own template text, test input and label prefix)."""
    last = [int(p) for p in rec["format_pos"]] + [int(p) for p in rec["label_pos"]]
    last += [int(e) - 1 for s, e in rec["demo_spans"] if s >= 0]
    if not last:
        raise ValueError(f"prompt {rec.get('prompt_id')}: no demonstrations; anchor compression needs some")
    return max(last) + 1


def kept_positions(rec) -> list[int]:
    """The anchor set (docs/methods.md §3.7): every demonstration-part token that is not input text —
    leading special tokens, template literals, all label sub-tokens and separators — in order."""
    text = text_positions(rec)
    return [p for p in range(demo_end(rec)) if p not in text]


def leading_specials(rec) -> list[int]:
    """Positions before the first demonstration token (BOS and other special tokens the tokenizer adds)."""
    first = [int(p) for p in rec["format_pos"]] + [int(p) for p in rec["label_pos"]]
    first += [int(s) for s, _ in rec["demo_spans"] if s >= 0]
    return list(range(min(first)))


def random_kept_positions(rec, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Hidden_random: the kept set with each label token (first sub-token, as in the paper) swapped for
    one non-kept token drawn between the previous label token and this one. Returns (kept, drawn)."""
    keep = set(kept_positions(rec))
    labels = sorted(int(p) for p in rec["label_pos"])
    drawn = []
    for i, p in enumerate(labels):
        lo = labels[i - 1] if i else -1
        candidates = [j for j in range(lo + 1, p) if j not in keep]
        if not candidates:
            raise ValueError(
                f"prompt {rec.get('prompt_id')}: demonstration {i} has no input-text token to draw "
                "for Hidden_random; drop empty texts from the dataset"
            )
        drawn.append(int(rng.choice(candidates)))
    return sorted((keep - set(labels)) | set(drawn)), drawn


def text_anchor_ids(rec) -> list[int]:
    """Text_anchor: the kept tokens as text (the demonstrations without their input text), then the query part."""
    ids = np.asarray(rec["input_ids"])
    return [int(t) for t in ids[kept_positions(rec)]] + [int(t) for t in ids[demo_end(rec) :]]


def zero_shot_ids(rec) -> list[int]:
    """The query part alone, after the leading special tokens."""
    ids = np.asarray(rec["input_ids"])
    return [int(t) for t in ids[leading_specials(rec)]] + [int(t) for t in ids[demo_end(rec) :]]


# --------------------------------------------------------------------------- model passes
def continue_on_pruned(
    net, kv: KV, kept_sets: list[list[int]], query_ids, start: int, batch_size: int, max_batch_tokens: int
) -> list[torch.Tensor]:
    """Last-position logits [V] of `query_ids` continued on each pruned cache `kv`[kept] of `kept_sets`, in
    batches (untimed arms: Hidden_random's draws; iclscope.model.scoring.cached_passes). The draws of a
    prompt all keep as many entries (each label token is swapped for one drawn token), so nothing is
    padded: each row equals `continue_on_cache` on its own pruned cache."""
    out: list[torch.Tensor | None] = [None] * len(kept_sets)
    passes = cached_passes(
        net,
        lambda i: select_kv(kv, kept_sets[i]),
        [len(k) for k in kept_sets],
        [query_ids] * len(kept_sets),
        start,
        0,  # queries of one length: no padding
        batch_size,
        max_batch_tokens,
    )
    for idx, logits in passes:
        for b, i in enumerate(idx):
            out[int(i)] = logits[b]
    return out


# --------------------------------------------------------------------------- the stage
def score_prompt(
    net,
    rec: dict,
    kv: list[tuple],
    random_sets: list[list[int]],
    label_ids: list[int],
    s: AnchorCompressionSettings,
    timed: bool = True,
    batch_size: int = 1,
    max_batch_tokens: int = 1 << 30,
    untimed: dict | None = None,
) -> list[dict]:
    """Every arm on one prompt; `kv` = its demonstration part's per-layer KV, `random_sets` = the
    Hidden_random kept sets of its seed. One row per arm (per draw for hidden_random). `timed`: the
    timed arms run `timing_repeats` interleaved rounds at batch 1 and keep their seconds; else one untimed
    round. Hidden_random (never timed) runs its draws in batches of `batch_size` / `max_batch_tokens`.
    `untimed`: {arm: last-position logits [V]} of the four other arms computed elsewhere (batched across
    prompts, `untimed_arms`); only for prompts that are not timed."""
    device = input_device(net)
    ids = [int(t) for t in rec["input_ids"]]
    split, keep = demo_end(rec), kept_positions(rec)
    query = ids[split:]
    rows = []

    def add(arm, logits, tokens, context, seconds=None, draw=-1):
        last = logits[-1].float()
        rows.append(
            {
                "prompt_id": int(rec["prompt_id"]),
                "seed": int(rec["seed"]),
                "gold": int(rec["gold"]),
                "arm": arm,
                "draw": draw,
                "pred": int(last[label_ids].argmax()),
                "top_ids": last.topk(s.word_k).indices.tolist(),
                "tokens": tokens,
                "context_tokens": context,
                "seconds": float(np.median(seconds)) if seconds else float("nan"),
                "seconds_repeats": seconds,
            }
        )

    text_ids, zs = text_anchor_ids(rec), zero_shot_ids(rec)
    # the timed arms in interleaved rounds (iclscope.core.timing); a forward pass extends its cache, so
    # hidden_anchor gets a fresh pruned cache per round, built before the clock starts
    prepare = {
        "full_icl": lambda: partial(last_logits, net, ids),
        "hidden_anchor": lambda: partial(continue_on_cache, net, as_cache(select_kv(kv, keep)), query, split),
        "text_anchor": lambda: partial(last_logits, net, text_ids),
        "zero_shot": lambda: partial(last_logits, net, zs),
    }
    if untimed is not None:
        if timed:
            raise ValueError("score_prompt: precomputed logits are for untimed prompts only")
        out, seconds = {arm: logits[None] for arm, logits in untimed.items()}, dict.fromkeys(prepare)
    else:
        out, seconds = interleaved(prepare, s.timing_repeats if timed else 1, device)
        seconds = seconds if timed else dict.fromkeys(seconds)
    add("full_icl", out["full_icl"], len(ids), split, seconds["full_icl"])
    add("hidden_anchor", out["hidden_anchor"], len(keep) + len(query), len(keep), seconds["hidden_anchor"])
    add("text_anchor", out["text_anchor"], len(text_ids), len(text_ids) - len(query), seconds["text_anchor"])
    drawn = continue_on_pruned(net, kv, random_sets, query, split, batch_size, max_batch_tokens)  # untimed: batched
    for d, (kept, logits) in enumerate(zip(random_sets, drawn, strict=True)):
        add("hidden_random", logits[None], len(kept) + len(query), len(kept), draw=d)
    add("zero_shot", out["zero_shot"], len(zs), len(zs) - len(query), seconds["zero_shot"])
    return rows


def untimed_arms(net, recs: list[dict], kv_of: dict, pad_id: int, batch_size: int, max_batch_tokens: int) -> list[dict]:
    """{arm: last-position logits [V]} of full_icl, hidden_anchor, text_anchor and zero_shot for each of
    `recs` (prompts that are not timed), batched across prompts; `kv_of[demonstration part]` = its per-layer
    KV. Equal to `score_prompt`'s batch-1 passes (tests/unit/test_anchor_batching.py)."""
    out = [{} for _ in recs]
    texts = {
        "full_icl": [[int(t) for t in r["input_ids"]] for r in recs],
        "text_anchor": [text_anchor_ids(r) for r in recs],
        "zero_shot": [zero_shot_ids(r) for r in recs],
    }
    for arm, seqs in texts.items():
        for idx, logits in padded_passes(net, seqs, pad_id, batch_size, max_batch_tokens):
            for b, i in enumerate(idx):
                out[int(i)][arm] = logits[b]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(recs):
        groups.setdefault(tuple(int(t) for t in r["input_ids"][: demo_end(r)]), []).append(i)
    for key, members in groups.items():  # one demonstration part: the same pruned cache, the same start
        pruned = select_kv(kv_of[key], kept_positions(recs[members[0]]))
        queries = [[int(t) for t in recs[i]["input_ids"][len(key) :]] for i in members]
        n_kept = [pruned[0][0].shape[2]] * len(members)
        passes = cached_passes(
            net, lambda _, kv=pruned: kv, n_kept, queries, len(key), pad_id, batch_size, max_batch_tokens
        )
        for idx, logits in passes:
            for b, i in enumerate(idx):
                out[members[int(i)]]["hidden_anchor"] = logits[b]
    return out


def run_anchor_compression(
    prompts_path, model_dir, model, *, settings: AnchorCompressionSettings | None = None, dataset: str
):
    """Every arm on the first `prompts_per_seed` test prompts of each seed (docs/methods.md §3.7, §3.8).

    Returns (long-format metric table: one row per seed × arm (`arm`) × metric; meta; per-example
    rows). Metrics: accuracy, macro_f1, label_loyalty, word_loyalty (vs full_icl), tokens (fed per
    example, cache entries included), context_tokens (what precedes the query part), and for the timed
    arms seconds_per_example and speedup_vs_full_icl; hidden_random_top also carries its `draw`.
    """
    s = settings or AnchorCompressionSettings()
    test, meta = anchor_prompts(prompts_path)
    label_ids = [int(t) for t in meta["label_token_ids"]]
    picked = test.groupby("seed", sort=True).head(s.prompts_per_seed) if s.prompts_per_seed is not None else test
    records = [r._asdict() for r in picked.sort_values(["seed", "prompt_id"]).itertuples(index=False)]
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    device = input_device(net)
    prefixes: dict[tuple, list] = {}  # demonstration part -> per-layer KV (one pass per seed)
    draws: dict[tuple, list[list[int]]] = {}  # demonstration part -> Hidden_random kept set per draw
    build_seconds = 0.0
    for _ in range(s.timing_warmup if records else 0):
        last_logits(net, [int(t) for t in records[0]["input_ids"]])
    rows = []
    rank = picked.sort_values(["seed", "prompt_id"]).groupby("seed").cumcount().to_numpy()  # index within its seed
    keys = [tuple(int(t) for t in rec["input_ids"][: demo_end(rec)]) for rec in records]
    for rec, key in zip(records, keys, strict=True):
        if key not in prefixes:
            t0 = time.perf_counter()
            prefixes[key] = prefix_kv(net, key)
            build_seconds += time.perf_counter() - t0
            rng = np.random.default_rng(int(rec["seed"]))  # drawn once per demonstration set, as the reference
            draws[key] = [random_kept_positions(rec, rng)[0] for _ in range(s.n_random_draws)]
    timed = [s.timed_per_seed is None or i < s.timed_per_seed for i in rank]
    # the prompts outside the timing sample: their four single-pass arms batched across prompts
    later = [j for j, t in enumerate(timed) if not t]
    precomputed = dict(
        zip(
            later,
            untimed_arms(
                net, [records[j] for j in later], prefixes, tok.pad_token_id, model.batch_size, model.max_batch_tokens
            ),
            strict=True,
        )
    )
    for j, (rec, key) in enumerate(zip(tqdm(records, desc="anchor compression"), keys, strict=True)):
        rows += score_prompt(
            net,
            rec,
            prefixes[key],
            draws[key],
            label_ids,
            s,
            timed=timed[j],
            batch_size=model.batch_size,
            max_batch_tokens=model.max_batch_tokens,
            untimed=precomputed.get(j),
        )
    per_example = pd.DataFrame(rows)
    metric_rows = summarise(per_example, len(label_ids)) + paired_summary(per_example) if rows else []
    info = {
        "prompts": len(records),
        "seeds": sorted({int(r["seed"]) for r in records}),
        "word_k": s.word_k,
        "n_random_draws": s.n_random_draws,
        "timing_repeats": s.timing_repeats,
        "timed_per_seed": s.timed_per_seed,
        "timing": "interleaved rounds (iclscope.core.timing)",
        "timing_warmup": s.timing_warmup,
        "demonstration_passes": len(prefixes),
        "demonstration_pass_seconds": round(build_seconds, 4),
        "device": str(device),
        "dtype": str(next(net.parameters()).dtype),
        "n_layers": manifest["n_layers"],
        "torch_threads": torch.get_num_threads(),
    }
    table = metric_frame(metric_rows, model=model.name, dataset=dataset, family="anchors", position="query")
    return table, info, per_example
