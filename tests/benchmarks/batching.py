"""Issue 30's batched paths and TS-FT's memory, each against the old path in the same run (default model
and prompts, SmolLM2-135M on the CPU):

* saliency: `saliency_batch` over the model's batches vs `saliency_matrices` one prompt at a time;
* anchor compression, prompts outside the timing sample: the four single-pass arms batched across prompts
  (`untimed_arms`) and Hidden_random's draws batched (`continue_on_pruned`) vs one pass per arm and draw;
* TS-FT: one training step on the longest batch of the default's training prompts (8 prompts), peak
  resident memory during the step (VmHWM reset after loading: loading's own peak would mask it) and
  seconds, gradient checkpointing on the blocks vs the plain step, each in a fresh process.
Ratios: old / new for seconds, new / old for memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from .common import MODEL, REPO, row

PROMPTS = REPO / f"results/prompts/{MODEL}/tweets.parquet"
MODEL_DIR = REPO / f"results/models/{MODEL}"
N_PROMPTS = 8
N_DRAWS = 20  # the schema's anchors.compression.n_random_draws


def _model():
    from iclscope.core.config import ModelSpec
    from iclscope.core.validate import load_config
    from iclscope.model.capture import ATTN_IMPLEMENTATION
    from iclscope.model.loading import load_model

    spec = ModelSpec.from_config(MODEL, load_config(REPO / "config.yaml")["models"][MODEL])
    return (spec, *load_model(MODEL_DIR, spec, attn_implementation=ATTN_IMPLEMENTATION))


def _seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def saliency_rows(spec, net, tok, manifest) -> list[dict]:
    from iclscope.methods.anchors.prompts import anchor_prompts
    from iclscope.methods.anchors.saliency import saliency_batch, saliency_matrices
    from iclscope.model.batching import make_batches

    test, meta = anchor_prompts(PROMPTS)
    recs = list(test.head(N_PROMPTS).itertuples())
    L, labels = manifest["n_layers"], meta["label_token_ids"]
    old_s, old = _seconds(lambda: [saliency_matrices(net, r.input_ids, int(r.gold), labels, L) for r in recs])
    batches = make_batches(np.array([len(r.input_ids) for r in recs]), spec.batch_size, spec.max_batch_tokens)

    def batched():
        out = {}
        for b in batches:
            got = saliency_batch(
                net, [list(recs[i].input_ids) for i in b], [int(recs[i].gold) for i in b], labels, L, tok.pad_token_id
            )
            out.update(zip(map(int, b), got, strict=True))
        return [out[i] for i in range(len(recs))]

    new_s, new = _seconds(batched)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(new, old, strict=True))
    return [
        row(
            "batching",
            f"saliency, {len(recs)} prompts (forward + backward)",
            new_s,
            "s",
            "batch 1 (saliency_matrices)",
            old_s / new_s,
            note=f"max abs diff {diff:.1e}",
        )
    ]


def compression_rows(spec, net, tok) -> list[dict]:
    from iclscope.methods.anchors.compression import (
        continue_on_pruned,
        demo_end,
        kept_positions,
        random_kept_positions,
        text_anchor_ids,
        untimed_arms,
        zero_shot_ids,
    )
    from iclscope.methods.anchors.prompts import anchor_prompts
    from iclscope.model.scoring import as_cache, continue_on_cache, last_logits, prefix_kv, select_kv

    test, _ = anchor_prompts(PROMPTS)
    recs = [r._asdict() for r in test.head(N_PROMPTS).itertuples(index=False)]
    kv_of, sets = {}, {}
    for r in recs:
        key = tuple(int(t) for t in r["input_ids"][: demo_end(r)])
        if key not in kv_of:
            kv_of[key] = prefix_kv(net, key)
            rng = np.random.default_rng(int(r["seed"]))
            sets[key] = [random_kept_positions(r, rng)[0] for _ in range(N_DRAWS)]

    def old():
        out = []
        for r in recs:
            ids, split = [int(t) for t in r["input_ids"]], demo_end(r)
            kv = kv_of[tuple(ids[:split])]
            out.append(
                [
                    last_logits(net, ids)[-1],
                    last_logits(net, text_anchor_ids(r))[-1],
                    last_logits(net, zero_shot_ids(r))[-1],
                    continue_on_cache(net, as_cache(select_kv(kv, kept_positions(r))), ids[split:], split)[-1],
                    *[
                        continue_on_cache(net, as_cache(select_kv(kv, k)), ids[split:], split)[-1]
                        for k in sets[tuple(ids[:split])]
                    ],
                ]
            )
        return out

    def new():
        arms = untimed_arms(net, recs, kv_of, tok.pad_token_id, spec.batch_size, spec.max_batch_tokens)
        out = []
        for r, a in zip(recs, arms, strict=True):
            ids, split = [int(t) for t in r["input_ids"]], demo_end(r)
            draws = continue_on_pruned(
                net,
                kv_of[tuple(ids[:split])],
                sets[tuple(ids[:split])],
                ids[split:],
                split,
                spec.batch_size,
                spec.max_batch_tokens,
            )
            out.append([a["full_icl"], a["text_anchor"], a["zero_shot"], a["hidden_anchor"], *draws])
        return out

    old_s, o = _seconds(old)
    new_s, n = _seconds(new)
    diff = max(float((x - y).abs().max()) for a, b in zip(n, o, strict=True) for x, y in zip(a, b, strict=True))
    return [
        row(
            "batching",
            f"anchor compression untimed arms, {len(recs)} prompts x {4 + N_DRAWS} passes",
            new_s,
            "s",
            "batch 1 (score_prompt's passes)",
            old_s / new_s,
            note=f"max abs diff of the logits {diff:.1e}",
        )
    ]


TSFT_STEP = """
import json, sys, time
sys.path.insert(0, {workflow!r})
import torch, torch.nn.functional as F
from iclscope.core.config import DatasetSpec, ModelSpec
from iclscope.core.validate import load_config
from iclscope.core.tables import read_table
from iclscope.methods.taskspace.tsft import TSFTSettings, forward_batch, tsft_rows, zero_shot_examples
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model
from iclscope.model.lora import attach_lora
from iclscope.model.prompts import label_token_ids
cfg = load_config({config!r})
model = ModelSpec.from_config({model!r}, cfg["models"][{model!r}])
spec = DatasetSpec.from_config("tweets", cfg["datasets"]["tweets"])
t = cfg["tsft"]
settings = TSFTSettings(n_train=t["n_train"], n_val=t["n_val"], n_test=t["n_test"], batch_size=t["batch_size"])
base, tok, manifest = load_model({model_dir!r}, model, attn_implementation=ATTN_IMPLEMENTATION)
train = zero_shot_examples(tok, spec, tsft_rows(read_table({dataset!r}), spec, settings)[0])
batch = sorted(train, key=lambda x: -len(x["input_ids"]))[:settings.batch_size]
labels = torch.as_tensor(label_token_ids(tok, spec.label_words, spec.prompts.template))
net = attach_lora(base, r=t["lora_r"], alpha=t["lora_alpha"], dropout=t["lora_dropout"], checkpoint_blocks={ckpt})
net.train()
L = manifest["n_layers"]
def hwm():  # peak resident GB since the last reset (VmHWM)
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) / 2**20
before = hwm()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak: the step's own, not loading's
t0 = time.perf_counter()
torch.manual_seed(0)
logits, h = forward_batch(net, tok, batch, labels, L // 2, L)
loss = F.cross_entropy(logits, torch.as_tensor([x["gold"] for x in batch])) + h.pow(2).mean()
loss.backward()
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_gb": hwm(),
                  "loaded_gb": before, "tokens": [len(x["input_ids"]) for x in batch], "loss": loss.item()}}))
"""


def tsft_rows_() -> list[dict]:
    got = {}
    for ckpt in (False, True):
        code = TSFT_STEP.format(
            workflow=str(REPO / "workflow"),
            config=str(REPO / "config.yaml"),
            model=MODEL,
            model_dir=str(MODEL_DIR),
            dataset=str(REPO / "results/datasets/tweets.parquet"),
            ckpt=ckpt,
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
        got[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, ckpt = got[False], got[True]
    shape = f"{len(plain['tokens'])} x {max(plain['tokens'])} tokens"
    return [
        row(
            "tsft",
            f"peak RSS of one training step ({shape})",
            ckpt["peak_gb"],
            "GB",
            "the same step without checkpointing",
            ckpt["peak_gb"] / plain["peak_gb"],
            note=f"plain {plain['peak_gb']:.2f} GB, peak while loading {plain['loaded_gb']:.2f} GB; loss "
            f"{ckpt['loss']:.6f} vs {plain['loss']:.6f}",
        ),
        row(
            "tsft",
            f"seconds of that step ({shape})",
            ckpt["seconds"],
            "s",
            "without checkpointing",
            plain["seconds"] / ckpt["seconds"],
            note="ratio < 1: the recomputation's cost",
        ),
    ]


def run() -> list[dict]:
    spec, net, tok, manifest = _model()
    return saliency_rows(spec, net, tok, manifest) + compression_rows(spec, net, tok) + tsft_rows_()
