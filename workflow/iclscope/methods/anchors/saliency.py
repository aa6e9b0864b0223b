"""Saliency flows (Wang et al. 2023 §2.1, docs/methods.md §3.2): I_l = |Σ_h A ⊙ ∂L/∂A| per prompt.

One forward and one backward pass per batch of prompts (left padding, `batch_size` prompts and at most
`max_batch_tokens` padded tokens) with eager attention, memory O(B·L·H·T²). The loss of a batch is the sum
of its prompts' losses: prompts do not interact (padding is masked), so the gradient w.r.t. one prompt's
attention multipliers is that prompt's own gradient, as at batch 1 (`saliency_matrices`;
tests/unit/test_anchor_batching.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.methods.anchors.measures import relative_flows, saliency_flows
from iclscope.methods.anchors.prompts import anchor_prompts
from iclscope.model.batching import make_batches
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Recorder, left_pad, no_positions, recording
from iclscope.model.loading import load_model


def _ones_multipliers():
    """({layer: multiplier}, edit): the attention edit that multiplies each layer's post-softmax weights
    by ones that require grad, so ∂L/∂multiplier = A ⊙ ∂L/∂A (the authors' method)."""
    multipliers: dict[int, torch.Tensor] = {}

    def ones_multiplier(layer: int, weights: torch.Tensor) -> torch.Tensor:
        m = torch.ones_like(weights, requires_grad=True)
        multipliers[layer] = m
        return weights * m

    return multipliers, ones_multiplier


def saliency_matrices(model, input_ids, gold: int, label_ids, n_layers: int) -> np.ndarray:
    """I_l = |Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l}| for one prompt -> [L, T, T] (float32, on the CPU).

    L is the cross-entropy of the label-restricted logits at the last position against `gold`.
    A ⊙ ∂L/∂A is obtained as the gradient of a ones-multiplier on the post-softmax attention
    (the authors' method), through the attention edit of iclscope.model.capture: one forward and one
    backward pass with eager attention, memory O(L·H·T²).
    """
    device = input_device(model)
    multipliers, ones_multiplier = _ones_multipliers()

    ids = torch.as_tensor([list(input_ids)], dtype=torch.long, device=device)
    rec = Recorder(n_layers, no_positions(1, device), (), edit=ones_multiplier)
    with torch.enable_grad(), recording(model, rec):
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1, list(label_ids)].float()
        loss = F.cross_entropy(logits[None], torch.as_tensor([gold], device=device))
        grads = torch.autograd.grad(loss, [multipliers[layer] for layer in range(n_layers)])
    return torch.stack([g[0].sum(0).abs().float().cpu() for g in grads]).numpy()  # layers on their devices


def saliency_batch(model, sequences: list, golds: list[int], label_ids, n_layers: int, pad_id: int) -> list[np.ndarray]:
    """`saliency_matrices` of several prompts in one forward and one backward pass: [L, T_b, T_b] per prompt.

    The prompts are left-padded into [B, T]; the loss is the sum over prompts of each one's cross-entropy
    (as `saliency_matrices`), so each prompt's multiplier gradient is its own; prompt b's matrices are the
    block of its real positions (the last T_b rows and columns)."""
    device = input_device(model)
    multipliers, ones_multiplier = _ones_multipliers()

    ids, mask, pos = left_pad(sequences, pad_id, device)
    rec = Recorder(n_layers, no_positions(len(sequences), device), (), edit=ones_multiplier)
    with torch.enable_grad(), recording(model, rec):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        logits = out.logits[:, -1][:, list(label_ids)].float()  # [B, C]
        gold = torch.as_tensor(list(golds), device=logits.device)
        loss = F.cross_entropy(logits, gold, reduction="sum")
        grads = torch.autograd.grad(loss, [multipliers[layer] for layer in range(n_layers)])
    per_layer = torch.stack([g.sum(1).abs().float().cpu() for g in grads], 1)  # [B, L, T, T]
    T = ids.shape[1]
    return [per_layer[b, :, T - len(s) :, T - len(s) :].numpy() for b, s in enumerate(sequences)]


def run_saliency(prompts_path, model_dir, model, n_per_seed: int, *, dataset: str):
    """S_wp / S_pq / S_ww for the first `n_per_seed` test prompts of every seed (batched, `saliency_batch`).

    Returns (per-example rows: prompt_id, seed, layer, s_wp, s_pq, s_ww; long-format metric table
    with the per-layer means over examples and their relative sizes, per seed).
    """
    test, meta = anchor_prompts(prompts_path)
    picked = test.groupby("seed", sort=True).head(n_per_seed)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    records = list(picked.itertuples())
    L = manifest["n_layers"]
    flows_of: dict[int, dict] = {}
    batches = make_batches(np.array([len(r.input_ids) for r in records]), model.batch_size, model.max_batch_tokens)
    for batch in tqdm(batches, desc="saliency"):
        recs = [records[i] for i in batch]
        sals = saliency_batch(
            net,
            [list(r.input_ids) for r in recs],
            [int(r.gold) for r in recs],
            meta["label_token_ids"],
            L,
            tok.pad_token_id,
        )
        for i, r, sal in zip(batch, recs, sals, strict=True):
            flows_of[int(i)] = saliency_flows(sal, list(r.label_pos), int(r.query_pos))
    rows = []
    for i, rec in enumerate(records):  # in the prompts' order, as at batch 1
        for layer in range(L):
            rows.append(
                {
                    "prompt_id": int(rec.prompt_id),
                    "seed": int(rec.seed),
                    "layer": layer + 1,
                    **{k: float(v[layer]) for k, v in flows_of[i].items()},
                }
            )
    per_example = pd.DataFrame(rows)
    metric_rows = []
    for seed, g in per_example.groupby("seed"):
        means = g.groupby("layer")[["s_wp", "s_pq", "s_ww"]].mean()
        rel = relative_flows({k: means[k].to_numpy() for k in means})
        for i, layer in enumerate(means.index):
            for k in ("s_wp", "s_pq", "s_ww"):
                metric_rows += [
                    {"layer": int(layer), "seed": int(seed), "metric": k, "value": means[k].iat[i]},
                    {"layer": int(layer), "seed": int(seed), "metric": f"{k}_relative", "value": rel[k][i]},
                ]
    return per_example, metric_frame(metric_rows, model=model.name, dataset=dataset, family="anchors", position="query")
