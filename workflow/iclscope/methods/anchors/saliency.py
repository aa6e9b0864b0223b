"""Saliency flows (Wang et al. 2023 §2.1, docs/methods.md §3.2): I_l = |Σ_h A ⊙ ∂L/∂A| per prompt.

One forward and one backward pass per prompt (batch 1) with eager attention, memory O(L·H·T²).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from iclscope.core.tables import metric_frame
from iclscope.methods.anchors.measures import relative_flows, saliency_flows
from iclscope.methods.anchors.prompts import anchor_prompts
from iclscope.model.capture import ATTN_IMPLEMENTATION, Recorder, input_device, no_positions, recording
from iclscope.model.loading import load_model


def saliency_matrices(model, input_ids, gold: int, label_ids, n_layers: int) -> np.ndarray:
    """I_l = |Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l}| for one prompt -> [L, T, T] (float32, on the CPU).

    L is the cross-entropy of the label-restricted logits at the last position against `gold`.
    A ⊙ ∂L/∂A is obtained as the gradient of a ones-multiplier on the post-softmax attention
    (the authors' method), through the attention edit of iclscope.model.capture: one forward and one
    backward pass with eager attention, memory O(L·H·T²).
    """
    device = input_device(model)
    multipliers: dict[int, torch.Tensor] = {}

    def ones_multiplier(layer: int, weights: torch.Tensor) -> torch.Tensor:
        m = torch.ones_like(weights, requires_grad=True)
        multipliers[layer] = m
        return weights * m

    ids = torch.as_tensor([list(input_ids)], dtype=torch.long, device=device)
    rec = Recorder(n_layers, no_positions(1, device), (), edit=ones_multiplier)
    with torch.enable_grad(), recording(model, rec):
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1, list(label_ids)].float()
        loss = F.cross_entropy(logits[None], torch.as_tensor([gold], device=device))
        grads = torch.autograd.grad(loss, [multipliers[layer] for layer in range(n_layers)])
    return torch.stack([g[0].sum(0).abs().float().cpu() for g in grads]).numpy()  # layers on their devices


def run_saliency(prompts_path, model_dir, model, n_per_seed: int, *, dataset: str):
    """S_wp / S_pq / S_ww for the first `n_per_seed` test prompts of every seed (batch 1).

    Returns (per-example rows: prompt_id, seed, layer, s_wp, s_pq, s_ww; long-format metric table
    with the per-layer means over examples and their relative sizes, per seed).
    """
    test, meta = anchor_prompts(prompts_path)
    picked = test.groupby("seed", sort=True).head(n_per_seed)
    net, _, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    rows = []
    for rec in tqdm(list(picked.itertuples()), desc="saliency"):
        sal = saliency_matrices(net, rec.input_ids, int(rec.gold), meta["label_token_ids"], manifest["n_layers"])
        flows = saliency_flows(sal, list(rec.label_pos), int(rec.query_pos))
        for layer in range(manifest["n_layers"]):
            rows.append({"prompt_id": int(rec.prompt_id), "seed": int(rec.seed), "layer": layer + 1,
                         **{k: float(v[layer]) for k, v in flows.items()}})
    per_example = pd.DataFrame(rows)
    metric_rows = []
    for seed, g in per_example.groupby("seed"):
        means = g.groupby("layer")[["s_wp", "s_pq", "s_ww"]].mean()
        rel = relative_flows({k: means[k].to_numpy() for k in means})
        for i, layer in enumerate(means.index):
            for k in ("s_wp", "s_pq", "s_ww"):
                metric_rows += [{"layer": int(layer), "seed": int(seed), "metric": k, "value": means[k].iat[i]},
                                {"layer": int(layer), "seed": int(seed), "metric": f"{k}_relative",
                                 "value": rel[k][i]}]
    return per_example, metric_frame(metric_rows, model=model.name, dataset=dataset, family="anchors",
                                     position="query", label_type="saliency")
