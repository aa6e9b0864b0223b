"""Isolating label words in the first or last k layers (Wang et al. 2023 §2.2, docs/methods.md §3.3).

The edits are attention edits for iclscope.model.capture (post-softmax); `run_isolation` measures label
and word loyalty against the unmodified model, batched with left padding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.methods.anchors.measures import jaccard_topk
from iclscope.methods.anchors.prompts import anchor_prompts, padded_label_columns
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


def random_rows_edit(layers: set[int], label: torch.Tensor, offsets: torch.Tensor, T: int, seeds: list[int]):
    """Control: in `layers`, isolate as many random non-label rows as each prompt has label tokens,
    drawn from its real positions before q − 1, re-drawn at every layer (as the authors' code does).

    Each prompt draws from its own generator (`seeds[b]`, e.g. from its prompt id) in its own
    unpadded coordinates, so a prompt isolates the same rows whatever batch it is in."""

    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    B, K = label.shape

    def edit(layer: int, weights: torch.Tensor) -> torch.Tensor:
        if layer not in layers:
            return weights
        rows = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            start = int(offsets[b])
            candidates = torch.arange(T - 2 - start) + start  # real positions before q - 1
            candidates = candidates[~torch.isin(candidates, label[b][label[b] >= 0].cpu())]
            n = int((label[b] >= 0).sum())
            rows[b, candidates[torch.randperm(len(candidates), generator=gens[b])[:n]]] = True
        return isolation_edit({layer}, rows.to(weights.device))(layer, weights)

    return edit


def run_isolation(
    prompts_path, model_dir, model, *, n_per_seed: int, ks=(1, 3, 5, 7), word_k: int = 5, seed: int = 0, dataset: str
):
    """Label and word loyalty when label words (or random tokens) are isolated in the first or last
    k layers, against the unmodified model (docs/methods.md §3.3).

    Metric table: metric label_loyalty / word_loyalty; `variant` = window side (first | last);
    `arm` = isolated rows (label | random); `n_layers` = k, the number of layers isolated.
    Batched with left padding; eager attention in every condition, the baseline included.
    """
    test, meta = anchor_prompts(prompts_path)
    label_ids = meta["label_token_ids"]
    picked = test.groupby("seed", sort=True).head(n_per_seed).reset_index(drop=True)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    device = input_device(net)
    conditions = [("none", 0, "label")] + [
        (side, k, kind) for side in ("first", "last") for k in ks for kind in ("label", "random")
    ]
    outputs: dict[tuple, tuple[list, list]] = {c: ([], []) for c in conditions}
    for lo in tqdm(range(0, len(picked), model.batch_size), desc="isolation"):
        batch = picked.iloc[lo : lo + model.batch_size]
        ids, mask, pos = left_pad(list(batch["input_ids"]), tok.pad_token_id, device)
        T = ids.shape[1]
        label, offsets = padded_label_columns(batch, T)
        label_rows = torch.zeros(len(batch), T, dtype=torch.bool)
        for b in range(len(batch)):
            label_rows[b, label[b][label[b] >= 0]] = True
        for cond in conditions:
            side, k, kind = cond
            layers = set(range(k)) if side == "first" else set(range(L - k, L)) if side == "last" else set()
            edit = (
                isolation_edit(layers, label_rows.to(device))
                if kind == "label"
                else random_rows_edit(
                    layers, label, offsets, T, [seed * 1_000_003 + int(p) for p in batch["prompt_id"]]
                )
            )
            with torch.inference_mode(), recording(net, Recorder(L, no_positions(len(batch), device), (), edit=edit)):
                logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            outputs[cond][0].extend(logits[:, label_ids].argmax(-1).tolist())
            outputs[cond][1].extend(logits.topk(word_k).indices.tolist())
    base_pred, base_top = map(np.array, outputs[("none", 0, "label")])
    rows = []
    for (side, k, kind), (pred, top) in outputs.items():
        if side == "none":
            continue
        common = {"variant": side, "arm": kind, "n_layers": k}
        rows += [
            {**common, "metric": "label_loyalty", "value": float((np.array(pred) == base_pred).mean())},
            {**common, "metric": "word_loyalty", "value": float(jaccard_topk(np.array(top), base_top).mean())},
        ]
    meta = {"prompts": len(picked), "word_k": word_k, "ks": list(ks)}
    return (
        metric_frame(rows, model=model.name, dataset=dataset, family="anchors", position="query"),
        meta,
        pd.DataFrame({"prompt_id": picked["prompt_id"], "seed": picked["seed"], "base_pred": base_pred}),
    )
