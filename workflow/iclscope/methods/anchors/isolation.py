"""Isolating label words in the first or last k layers (Wang et al. 2023 §2.2, docs/methods.md §3.3).

The edits are attention edits for iclscope.model.capture (post-softmax); `run_isolation` measures label
and word loyalty against the unmodified model, every prompt under every condition batched together
with left padding (each row its own isolated rows and layers; equal to batch 1: tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.methods.anchors.measures import jaccard_topk
from iclscope.methods.anchors.prompts import anchor_prompts
from iclscope.model.batching import make_batches
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Recorder, left_pad, no_positions, recording
from iclscope.model.loading import load_model


def isolation_edit(layers: set[int], rows: torch.Tensor):
    """An attention edit: in `layers`, every row marked in rows [B, T] attends only to itself.

    Post-softmax equivalent of the authors' pre-softmax −10000 on columns < p (docs/methods.md §0.3).
    """

    def edit(layer: int, weights: torch.Tensor) -> torch.Tensor:
        if layer not in layers:
            return weights
        Tq, Tk = weights.shape[-2:]
        eye = torch.eye(Tk, dtype=weights.dtype, device=weights.device)[Tk - Tq :]  # [Tq, Tk]
        iso = rows[:, -Tq:].to(weights.device)[:, None, :, None]  # [B, 1, Tq, 1], on the layer's device
        return torch.where(iso, eye[None, None], weights)

    return edit


def isolated_rows(n_tokens: int, label_pos, layers, kind: str, seed: int) -> dict[int, np.ndarray]:
    """The rows one prompt isolates at each layer of `layers`, in its own unpadded coordinates: its
    label tokens ("label"), or ("random", the control) as many random non-label rows drawn from its
    positions before q - 1, re-drawn at every layer in increasing order (as the authors' code does)
    from the prompt's own generator seeded with `seed`: the same rows whatever batch it runs in."""
    label = np.asarray([p for p in label_pos if p >= 0], dtype=np.int64)
    if kind == "label":
        return {layer: label for layer in sorted(layers)}
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    candidates = torch.arange(n_tokens - 2)
    candidates = candidates[~torch.isin(candidates, torch.as_tensor(label))]
    return {
        layer: candidates[torch.randperm(len(candidates), generator=gen)[: len(label)]].numpy()
        for layer in sorted(layers)
    }


def rows_edit(rows: dict[int, torch.Tensor]):
    """An attention edit from per-layer row masks {layer: [B, T] bool}: `isolation_edit` at each
    layer with the rows marked there (rows of one batch may isolate different layers)."""

    def edit(layer: int, weights: torch.Tensor) -> torch.Tensor:
        marked = rows.get(layer)
        return weights if marked is None else isolation_edit({layer}, marked)(layer, weights)

    return edit


def condition_layers(side: str, k: int, n_layers: int) -> set[int]:
    """The 0-based blocks a condition isolates: the first or last k, none for the baseline."""
    return set(range(k)) if side == "first" else set(range(n_layers - k, n_layers)) if side == "last" else set()


def isolation_readouts(
    net, n_layers: int, pad_id: int, items: list[dict], batch_size: int, max_batch_tokens: int, word_k: int
):
    """Label logits [n, C] float32 and top-`word_k` ids [n, word_k] of work items (a prompt under one
    condition: input_ids, label_ids, and `rows` {layer: unpadded rows isolated there}), batched
    across prompts and conditions alike: length-sorted, left-padded batches of at most `batch_size`
    items and `max_batch_tokens` padded tokens, each row with its own isolated rows and layers."""
    device = input_device(net)
    label_ids = items[0]["label_ids"] if items else []
    logits_out = np.empty((len(items), len(label_ids)), dtype=np.float32)
    top_out = np.empty((len(items), word_k), dtype=np.int64)
    lengths = np.array([len(it["input_ids"]) for it in items])
    for batch in tqdm(make_batches(lengths, batch_size, max_batch_tokens), desc="isolation"):
        ids, mask, pos = left_pad([items[i]["input_ids"] for i in batch], pad_id, device)
        T = ids.shape[1]
        marks: dict[int, torch.Tensor] = {}
        for b, i in enumerate(batch):
            offset = T - lengths[i]
            for layer, rows in items[i]["rows"].items():
                if len(rows):
                    marks.setdefault(layer, torch.zeros(len(batch), T, dtype=torch.bool))[b, rows + offset] = True
        recorder = Recorder(n_layers, no_positions(len(batch), device), (), edit=rows_edit(marks))
        with torch.inference_mode(), recording(net, recorder):
            logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        logits_out[batch] = logits[:, label_ids].float().cpu().numpy()
        top_out[batch] = logits.topk(word_k).indices.cpu().numpy()
    return logits_out, top_out


def run_isolation(
    prompts_path, model_dir, model, *, n_per_seed: int, ks=(1, 3, 5, 7), word_k: int = 5, seed: int = 0, dataset: str
):
    """Label and word loyalty when label words (or random tokens) are isolated in the first or last
    k layers, against the unmodified model (docs/methods.md §3.3).

    Metric table: metric label_loyalty / word_loyalty; `variant` = window side (first | last);
    `arm` = isolated rows (label | random); `n_layers` = k, the number of layers isolated.
    Every prompt under every condition is one work item; the items run batched with left padding
    (`isolation_readouts`: each row its own isolated rows and layers), eager attention in every
    condition, the baseline included.
    """
    test, meta = anchor_prompts(prompts_path)
    label_ids = list(meta["label_token_ids"])
    picked = test.groupby("seed", sort=True).head(n_per_seed).reset_index(drop=True)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    conditions = [("none", 0, "label")] + [
        (side, k, kind) for side in ("first", "last") for k in ks for kind in ("label", "random")
    ]
    items = [
        {
            "input_ids": list(row.input_ids),
            "label_ids": label_ids,
            "rows": isolated_rows(
                int(row.n_tokens),
                row.label_pos,
                condition_layers(side, k, L),
                kind,
                seed * 1_000_003 + int(row.prompt_id),
            ),
        }
        for side, k, kind in conditions
        for row in picked.itertuples()
    ]
    logits, top = isolation_readouts(net, L, tok.pad_token_id, items, model.batch_size, model.max_batch_tokens, word_k)
    n = len(picked)
    pred = logits.argmax(-1).reshape(len(conditions), n)
    top = top.reshape(len(conditions), n, word_k)
    base_pred, base_top = pred[0], top[0]
    rows = []
    for c, (side, k, kind) in enumerate(conditions):
        if side == "none":
            continue
        common = {"variant": side, "arm": kind, "n_layers": k}
        rows += [
            {**common, "metric": "label_loyalty", "value": float((pred[c] == base_pred).mean())},
            {**common, "metric": "word_loyalty", "value": float(jaccard_topk(top[c], base_top).mean())},
        ]
    meta = {"prompts": len(picked), "word_k": word_k, "ks": list(ks)}
    return (
        metric_frame(rows, model=model.name, dataset=dataset, family="anchors", position="query"),
        meta,
        pd.DataFrame({"prompt_id": picked["prompt_id"], "seed": picked["seed"], "base_pred": base_pred}),
    )
