"""Label words as anchors (Wang et al. 2023, docs/methods.md §3): measures over attention to label tokens.

This module holds the pure computations; the attention itself is read (and, for the
interventions, edited) by iclscope.capture, the one hook layer.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def class_attention(attn: np.ndarray, label_class: np.ndarray, n_classes: int) -> np.ndarray:
    """attn [N, L, H, K] (query -> each label token), label_class [N, K] -> [N, L, C].

    Heads are summed (docs/methods.md §3.4); several demonstrations of one class are summed too.
    Missing demonstrations (class -1, attention NaN) contribute nothing.
    """
    summed = np.nan_to_num(attn, nan=0.0).sum(axis=2)  # [N, L, K]
    out = np.zeros((attn.shape[0], attn.shape[1], n_classes))
    for c in range(n_classes):
        mask = (label_class == c)[:, None, :]  # [N, 1, K]
        out[:, :, c] = (summed * mask).sum(-1)
    return out


def aucroc(features: np.ndarray, target: np.ndarray) -> float:
    """AUC of predicting `target` (the model's own predicted class) from per-class attention.

    features [N, C]; classes never predicted are dropped (docs/methods.md §3.4). With two classes
    predicted (a binary task, or a multi-class task where only two occur) the score is the raw
    attention of the higher of the two, not renormalised over the pair, as in the reference
    analysis; with three or more, features are normalised to sum 1 over the predicted classes and
    scored with the one-vs-one macro AUC. NaN when fewer than two classes are predicted.
    """
    present = np.unique(target)
    if len(present) < 2:
        return float("nan")
    if len(present) == 2:
        return float(roc_auc_score(target == present[1], features[:, present[1]]))
    f = features[:, present]
    f = f / np.clip(f.sum(1, keepdims=True), 1e-12, None)
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[t] for t in target])
    return float(roc_auc_score(y, f, multi_class="ovo", average="macro"))


def cumulative_share(auc: np.ndarray) -> np.ndarray:
    """R_l = Σ_{i≤l}(AUC_i − 0.5) / Σ_i(AUC_i − 0.5) (docs/methods.md §3.4), from AUC [L] or [S, L].

    Per-seed AUCs [S, L] are averaged over seeds first (seeds with no AUC, NaN, left out), then
    the share is taken, as the reference analysis does; a mean of per-seed shares would divide by
    each seed's own total, which can be near zero. NaN everywhere when the total gain is zero.
    """
    auc = np.asarray(auc, dtype=float)
    if auc.ndim == 2:
        seen = ~np.isnan(auc)
        auc = np.where(seen.any(0), np.where(seen, auc, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)
    gain = np.nan_to_num(auc - 0.5)
    total = gain.sum()
    return np.cumsum(gain) / total if total != 0 else np.full(len(gain), np.nan)


# --------------------------------------------------------------------------- shared helpers
def padded_label_columns(batch, T: int):
    """Label-token columns of a left-padded batch: label [B, K] (−1 where a prompt has fewer), offsets [B].

    `batch` rows carry label_pos (unpadded positions) and n_tokens; T is the padded length.
    """
    import torch

    offsets = torch.as_tensor(T - batch["n_tokens"].to_numpy())
    K = int(batch["label_pos"].map(len).max())
    label = torch.full((len(batch), K), -1, dtype=torch.long)
    for b, lp in enumerate(batch["label_pos"]):
        label[b, :len(lp)] = torch.as_tensor(list(lp)) + offsets[b]
    return label, offsets


def anchor_prompts(prompts_path, split: str = "test"):
    """(prompt rows of `split` that have label positions, prompts metadata)."""
    from .tables import read_meta, read_table

    table = read_table(prompts_path)
    rows = table[(table.split == split) & (table["label_pos"].map(len) > 0)]
    return rows, read_meta(prompts_path)


# --------------------------------------------------------------------------- saliency (§3.2)
def saliency_matrices(model, input_ids, gold: int, label_ids, n_layers: int) -> np.ndarray:
    """I_l = |Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l}| for one prompt -> [L, T, T] (float32, on the CPU).

    L is the cross-entropy of the label-restricted logits at the last position against `gold`.
    A ⊙ ∂L/∂A is obtained as the gradient of a ones-multiplier on the post-softmax attention
    (the authors' method), through the attention edit of iclscope.capture: one forward and one
    backward pass with eager attention, memory O(L·H·T²).
    """
    import torch
    import torch.nn.functional as F

    from .capture import Recorder, no_positions, recording

    device = next(model.parameters()).device
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
    return torch.stack([g[0].sum(0).abs() for g in grads]).float().cpu().numpy()


def saliency_flows(saliency: np.ndarray, label_pos, query_pos: int) -> dict[str, np.ndarray]:
    """S_wp, S_pq, S_ww per layer from saliency I [L, T, T] (docs/methods.md §3.2; diagonal excluded).

    C_wp = {(p_k, j): j < p_k}; C_pq = {(q, p_k)}; C_ww = {(i, j): j < i} − C_wp − C_pq.
    """
    L, T, _ = saliency.shape
    lower = np.tril(np.ones((T, T), dtype=bool), k=-1)
    wp = np.zeros((T, T), dtype=bool)
    pq = np.zeros((T, T), dtype=bool)
    for p in label_pos:
        wp[p, :p] = True
        pq[query_pos, p] = True
    ww = lower & ~wp & ~pq
    return {name: saliency[:, mask].mean(axis=1) if mask.any() else np.full(L, np.nan)
            for name, mask in (("s_wp", wp), ("s_pq", pq), ("s_ww", ww))}


def relative_flows(flows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's three flows divided by their sum (the paper's 'relative size')."""
    total = sum(flows.values())
    return {k: np.divide(v, total, out=np.full_like(v, np.nan), where=total > 0) for k, v in flows.items()}


def run_saliency(prompts_path, model_dir, model, n_per_seed: int, *, dataset: str):
    """S_wp / S_pq / S_ww for the first `n_per_seed` test prompts of every seed (batch 1).

    Returns (per-example rows: prompt_id, seed, layer, s_wp, s_pq, s_ww; long-format metric table
    with the per-layer means over examples and their relative sizes, per seed).
    """
    import pandas as pd
    from tqdm import tqdm

    from .capture import ATTN_IMPLEMENTATION
    from .loading import load_model
    from .tables import metric_frame

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


# --------------------------------------------------------------------------- isolation (§3.3)
def isolation_edit(layers: set[int], rows: torch.Tensor):  # noqa: F821 - torch imported lazily
    """An attention edit: in `layers`, every row marked in rows [B, T] attends only to itself.

    Post-softmax equivalent of the authors' pre-softmax −10000 on columns < p (docs/methods.md §0.3).
    """
    import torch

    def edit(layer: int, weights: torch.Tensor) -> torch.Tensor:
        if layer not in layers:
            return weights
        Tq, Tk = weights.shape[-2:]
        eye = torch.eye(Tk, dtype=weights.dtype, device=weights.device)[Tk - Tq:]  # [Tq, Tk]
        iso = rows[:, -Tq:][:, None, :, None]  # [B, 1, Tq, 1]
        return torch.where(iso, eye[None, None], weights)

    return edit


def random_rows_edit(layers: set[int], label: torch.Tensor, offsets: torch.Tensor, T: int,  # noqa: F821
                     seeds: list[int]):
    """Control: in `layers`, isolate as many random non-label rows as each prompt has label tokens,
    drawn from its real positions before q − 1, re-drawn at every layer (as the authors' code does).

    Each prompt draws from its own generator (`seeds[b]`, e.g. from its prompt id) in its own
    unpadded coordinates, so a prompt isolates the same rows whatever batch it is in."""
    import torch

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


def jaccard_topk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise |A ∩ B| / |A ∪ B| of top-k id sets a, b [N, k] (word loyalty, docs/methods.md §3.3)."""
    return np.array([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a, b, strict=True)])


def run_isolation(prompts_path, model_dir, model, *, n_per_seed: int, ks=(1, 3, 5, 7), word_k: int = 5,
                  seed: int = 0, dataset: str):
    """Label and word loyalty when label words (or random tokens) are isolated in the first or last
    k layers, against the unmodified model (docs/methods.md §3.3).

    Metric table: metric label_loyalty / word_loyalty; `position` = window side (first | last);
    `label_type` = isolated rows (label | random); `layer` = k, the number of layers isolated.
    Batched with left padding; eager attention in every condition, the baseline included.
    """
    import pandas as pd
    import torch
    from tqdm import tqdm

    from .capture import ATTN_IMPLEMENTATION, Recorder, left_pad, no_positions, recording
    from .loading import load_model
    from .tables import metric_frame

    test, meta = anchor_prompts(prompts_path)
    label_ids = meta["label_token_ids"]
    picked = test.groupby("seed", sort=True).head(n_per_seed).reset_index(drop=True)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    device = next(net.parameters()).device
    conditions = [("none", 0, "label")] + [(side, k, kind) for side in ("first", "last") for k in ks
                                           for kind in ("label", "random")]
    outputs: dict[tuple, tuple[list, list]] = {c: ([], []) for c in conditions}
    for lo in tqdm(range(0, len(picked), model.batch_size), desc="isolation"):
        batch = picked.iloc[lo:lo + model.batch_size]
        ids, mask, pos = left_pad(list(batch["input_ids"]), tok.pad_token_id, device)
        T = ids.shape[1]
        label, offsets = padded_label_columns(batch, T)
        label_rows = torch.zeros(len(batch), T, dtype=torch.bool)
        for b in range(len(batch)):
            label_rows[b, label[b][label[b] >= 0]] = True
        for cond in conditions:
            side, k, kind = cond
            layers = set(range(k)) if side == "first" else set(range(L - k, L)) if side == "last" else set()
            edit = (isolation_edit(layers, label_rows.to(device)) if kind == "label"
                    else random_rows_edit(layers, label, offsets, T,
                                          [seed * 1_000_003 + int(p) for p in batch["prompt_id"]]))
            with torch.inference_mode(), recording(net, Recorder(L, no_positions(len(batch), device), (), edit=edit)):
                logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            outputs[cond][0].extend(logits[:, label_ids].argmax(-1).tolist())
            outputs[cond][1].extend(logits.topk(word_k).indices.tolist())
    base_pred, base_top = map(np.array, outputs[("none", 0, "label")])
    rows = []
    for (side, k, kind), (pred, top) in outputs.items():
        if side == "none":
            continue
        common = {"position": side, "label_type": kind, "layer": k}
        rows += [{**common, "metric": "label_loyalty", "value": float((np.array(pred) == base_pred).mean())},
                 {**common, "metric": "word_loyalty", "value": float(jaccard_topk(np.array(top), base_top).mean())}]
    meta = {"prompts": len(picked), "word_k": word_k, "ks": list(ks)}
    return metric_frame(rows, model=model.name, dataset=dataset, family="anchors"), meta, pd.DataFrame(
        {"prompt_id": picked["prompt_id"], "seed": picked["seed"], "base_pred": base_pred})


# --------------------------------------------------------------------------- re-weighting (§3.6)
def reweighting_edit(beta: torch.Tensor, label: torch.Tensor):  # noqa: F821 - torch imported lazily
    """An attention edit: Â(q, p_k) = exp(β[l, h, k]) · A(q, p_k) in every layer l and head h.

    Only the last query row q and the label-token columns p_k change, after the softmax and without
    renormalising the row (docs/methods.md §3.6). beta [L, H, K] (zeros = vanilla ICL; one scalar per
    layer × head × demonstration), label [B, K] label columns in padded coordinates (−1 = none).
    Differentiable in beta. Cost: one [B, H, Tk] row per layer on top of eager attention.
    `label` must be on the attention's device.
    """
    import torch

    def edit(layer: int, weights: torch.Tensor) -> torch.Tensor:
        B, H, _, Tk = weights.shape
        factor = torch.exp(beta[layer]).to(weights.dtype)[None].expand(B, H, -1)  # [B, H, K]
        factor = factor.masked_fill((label < 0)[:, None, :], 1.0)
        cols = label.clamp(min=0)[:, None, :].expand(B, H, -1)  # [B, H, K]
        scale = torch.ones(B, H, Tk, dtype=weights.dtype, device=weights.device).scatter(2, cols, factor)
        return torch.cat([weights[:, :, :-1], weights[:, :, -1:] * scale[:, :, None]], dim=2)  # only row q

    return edit


def reweighted_label_logits(net, batch, label_ids, beta, n_layers: int, pad_id: int):
    """Label-restricted logits [B, C] at the query of each prompt in `batch` with re-weighting `beta`
    [L, H, K] (left-padded, eager attention). Gradients flow to beta when grad mode is on."""
    from .capture import Recorder, left_pad, no_positions, recording

    device = beta.device
    ids, mask, pos = left_pad(list(batch["input_ids"]), pad_id, device)
    label, _ = padded_label_columns(batch, ids.shape[1])
    rec = Recorder(n_layers, no_positions(len(batch), device), (), edit=reweighting_edit(beta, label.to(device)))
    with recording(net, rec):
        logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    return logits[:, list(label_ids)].float()


def fit_reweighting(net, aux, label_ids, shape: tuple[int, int, int], *, epochs: int, lr: float, seed: int,
                    pad_id: int):
    """Train β [L, H, K] (init 0) on the auxiliary prompts `aux` (one seed's demonstrations): cross-entropy
    of the label-restricted logits against gold, Adam, batch 1, `epochs` passes in a seeded shuffled
    order; model weights frozen. Returns (β on the CPU, loss per epoch)."""
    import torch
    import torch.nn.functional as F

    device = next(net.parameters()).device
    beta = torch.zeros(shape, device=device, requires_grad=True)
    opt = torch.optim.Adam([beta], lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)
    epoch_loss = []
    for _ in range(epochs):
        total = 0.0
        for i in torch.randperm(len(aux), generator=gen).tolist():
            row = aux.iloc[[i]]
            with torch.enable_grad():
                logits = reweighted_label_logits(net, row, label_ids, beta, shape[0], pad_id)
                loss = F.cross_entropy(logits, torch.tensor(row["gold"].tolist(), device=device))
                opt.zero_grad()
                loss.backward()
            opt.step()
            total += float(loss.detach())
        epoch_loss.append(total / len(aux))
    return beta.detach().cpu(), epoch_loss


def reweighting_gain_rows(correct: dict[int, tuple[np.ndarray, np.ndarray]], n_boot: int) -> list[dict]:
    """Paired rows re-weighted − vanilla (iclscope.stats.paired_rows, label_type `reweighted-vanilla`) from
    {seed: (vanilla correct [n], re-weighted correct [n])} on each seed's test prompts: per seed (McNemar's
    exact test) and, with seed empty, pooled over the seeds. Pooled, the seeds' prompts are the columns of a
    [seed, prompt] array (each seed has its own demonstrations and test prompts, so the interval resamples
    seeds as well as prompts and the sign-flip test flips per column); seeds with unequal numbers of
    prompts are pooled as one flat set of pairs instead."""
    from .stats import paired_difference, paired_rows

    rows, common = [], {"label_type": "reweighted-vanilla"}
    for seed, (vanilla, reweighted) in sorted(correct.items()):
        rows += paired_rows(paired_difference(reweighted, vanilla, n_boot=n_boot, seed=0), **common, seed=seed)
    if correct:
        vanilla = [v for _, (v, _) in sorted(correct.items())]
        reweighted = [r for _, (_, r) in sorted(correct.items())]
        if len({len(v) for v in vanilla}) == 1:
            pooled = paired_difference(np.stack(reweighted), np.stack(vanilla), n_boot=n_boot, seed=0)
        else:
            pooled = paired_difference(np.concatenate(reweighted), np.concatenate(vanilla), n_boot=n_boot, seed=0)
        rows += paired_rows(pooled, **common, seed=None)
    return rows


def run_reweighting(prompts_path, model_dir, model, *, aux_per_class: int, epochs: int, lr: float,
                    n_test_per_seed: int | None, dataset: str, n_boot: int = 1000):
    """Anchor re-weighting against vanilla ICL on the same test prompts, per seed (docs/methods.md §3.6).

    Per seed: β is fitted on `aux_per_class` train-split prompts per class (they share the seed's
    demonstrations and never reuse one), then both arms, β = 0 (vanilla) and the fitted β, predict
    the test prompts. Returns (metric table: accuracy / macro_f1 / label_loss per arm in `label_type`,
    the paired gain re-weighted − vanilla per seed and pooled (`reweighting_gain_rows`, `n_boot`
    bootstrap resamples), and beta_abs_mean per layer; {seed: β [L, H, K]}; meta with the loss per epoch).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from .capture import ATTN_IMPLEMENTATION
    from .icl import macro_f1
    from .loading import load_model
    from .tables import metric_frame

    test, meta = anchor_prompts(prompts_path)
    train, _ = anchor_prompts(prompts_path, split="train")
    label_ids = meta["label_token_ids"]
    n_classes = len(label_ids)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    net.requires_grad_(False)
    L, H = manifest["n_layers"], manifest["n_heads"]
    device = next(net.parameters()).device
    rows, betas, losses, n_tested, correct = [], {}, {}, 0, {}
    for seed, seed_test in test.groupby("seed", sort=True):
        aux = train[train.seed == seed].groupby("gold", sort=True).head(aux_per_class)
        per_class = aux.groupby("gold").size().reindex(range(n_classes), fill_value=0)
        if per_class.min() < aux_per_class:
            raise ValueError(f"anchor re-weighting needs {aux_per_class} train-split prompts per class for seed "
                             f"{seed} (anchors.reweighting.aux_per_class) but {prompts_path} has "
                             f"{per_class.to_dict()}: raise datasets.{dataset}.prompts.n_train to at least "
                             f"{aux_per_class * n_classes}")
        K = int(seed_test["label_pos"].map(len).max())
        beta, losses[int(seed)] = fit_reweighting(net, aux.reset_index(drop=True), label_ids, (L, H, K),
                                                  epochs=epochs, lr=lr, seed=int(seed), pad_id=tok.pad_token_id)
        betas[int(seed)] = beta.numpy()
        picked = seed_test if n_test_per_seed is None else seed_test.head(n_test_per_seed)
        n_tested += len(picked)
        gold = torch.tensor(picked["gold"].tolist())
        arm_correct = []
        for arm, b in (("vanilla", torch.zeros_like(beta)), ("reweighted", beta)):
            logits = []
            for lo in tqdm(range(0, len(picked), model.batch_size), desc=f"re-weighting seed {seed} {arm}"):
                with torch.inference_mode():
                    logits.append(reweighted_label_logits(net, picked.iloc[lo:lo + model.batch_size], label_ids,
                                                          b.to(device), L, tok.pad_token_id).cpu())
            logits = torch.cat(logits)
            pred = logits.argmax(-1).numpy()
            arm_correct.append(pred == gold.numpy())
            common = {"seed": int(seed), "label_type": arm}
            rows += [{**common, "metric": "accuracy", "value": float((pred == gold.numpy()).mean())},
                     {**common, "metric": "macro_f1", "value": macro_f1(gold.numpy(), pred, range(n_classes))},
                     {**common, "metric": "label_loss", "value": float(F.cross_entropy(logits, gold))}]
        correct[int(seed)] = tuple(arm_correct)
        rows += [{"seed": int(seed), "layer": layer + 1, "label_type": "reweighted", "metric": "beta_abs_mean",
                  "value": float(np.abs(betas[int(seed)][layer]).mean())} for layer in range(L)]
    rows += reweighting_gain_rows(correct, n_boot)
    info = {"aux_per_class": aux_per_class, "epochs": epochs, "lr": lr, "test_prompts": n_tested,
            "train_loss_per_epoch": losses}
    return metric_frame(rows, model=model.name, dataset=dataset, family="anchors", position="query"), betas, info
