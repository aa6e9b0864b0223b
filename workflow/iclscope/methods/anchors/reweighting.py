"""Anchor re-weighting (Wang et al. 2023 §3.1, docs/methods.md §3.6): one learnt scale per layer,
head and demonstration on the attention from the query to the label words, fitted on auxiliary
prompts and compared with vanilla ICL on the same test prompts (paired, per seed and pooled).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.core.stats import paired_difference, paired_rows, with_holm
from iclscope.methods.anchors.prompts import anchor_prompts, padded_label_columns
from iclscope.methods.icl import macro_f1
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Recorder, left_pad, no_positions, recording
from iclscope.model.loading import load_model


def reweighting_edit(beta: torch.Tensor, label: torch.Tensor):
    """An attention edit: Â(q, p_k) = exp(β[l, h, k]) · A(q, p_k) in every layer l and head h.

    Only the last query row q and the label-token columns p_k change, after the softmax and without
    renormalising the row (docs/methods.md §3.6). beta [L, H, K] (zeros = vanilla ICL; one scalar per
    layer × head × demonstration), label [B, K] label columns in padded coordinates (−1 = none).
    Differentiable in beta. Cost: one [B, H, Tk] row per layer on top of eager attention.
    `label` must be on the attention's device.
    """

    def edit(layer: int, weights: torch.Tensor) -> torch.Tensor:
        B, H, _, Tk = weights.shape
        here = label.to(weights.device)  # the layer's device (a model over several devices)
        factor = torch.exp(beta[layer]).to(weights.device, weights.dtype)[None].expand(B, H, -1)  # [B, H, K]
        factor = factor.masked_fill((here < 0)[:, None, :], 1.0)
        cols = here.clamp(min=0)[:, None, :].expand(B, H, -1)  # [B, H, K]
        scale = torch.ones(B, H, Tk, dtype=weights.dtype, device=weights.device).scatter(2, cols, factor)
        return torch.cat([weights[:, :, :-1], weights[:, :, -1:] * scale[:, :, None]], dim=2)  # only row q

    return edit


def reweighted_label_logits(net, batch, label_ids, beta, n_layers: int, pad_id: int):
    """Label-restricted logits [B, C] at the query of each prompt in `batch` with re-weighting `beta`
    [L, H, K] (left-padded, eager attention). Gradients flow to beta when grad mode is on."""

    device = beta.device
    ids, mask, pos = left_pad(list(batch["input_ids"]), pad_id, device)
    label, _ = padded_label_columns(batch, ids.shape[1])
    rec = Recorder(n_layers, no_positions(len(batch), device), (), edit=reweighting_edit(beta, label.to(device)))
    with recording(net, rec):
        logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    return logits[:, list(label_ids)].float()


def fit_reweighting(
    net, aux, label_ids, shape: tuple[int, int, int], *, epochs: int, lr: float, seed: int, pad_id: int
):
    """Train β [L, H, K] (init 0) on the auxiliary prompts `aux` (one seed's demonstrations): cross-entropy
    of the label-restricted logits against gold, Adam, batch 1, `epochs` passes in a seeded shuffled
    order; model weights frozen. Returns (β on the CPU, loss per epoch)."""

    device = input_device(net)
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
    """Paired rows re-weighted − vanilla (iclscope.core.stats.paired_rows, arm `reweighted-vanilla`) from
    {seed: (vanilla correct [n], re-weighted correct [n])} on each seed's test prompts: per seed (McNemar's
    exact test) and, with seed empty, pooled over the seeds. Pooled, the seeds' prompts are the columns of a
    [seed, prompt] array (each seed has its own demonstrations and test prompts, so the interval resamples
    seeds as well as prompts and the p-value is that same two-level bootstrap's, docs/methods.md §0.4);
    seeds with unequal numbers of prompts are pooled as one flat set of pairs instead (McNemar). Every
    p-value has its Holm-adjusted value beside it (metric `p_holm`; the family: these per-seed and pooled
    tests, the only paired tests of the table)."""

    rows, common = [], {"arm": "reweighted-vanilla"}
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
    return with_holm(rows)


def run_reweighting(
    prompts_path,
    model_dir,
    model,
    *,
    aux_per_class: int,
    epochs: int,
    lr: float,
    n_test_per_seed: int | None,
    dataset: str,
    n_boot: int = 1000,
):
    """Anchor re-weighting against vanilla ICL on the same test prompts, per seed (docs/methods.md §3.6).

    Per seed: β is fitted on `aux_per_class` train-split prompts per class (they share the seed's
    demonstrations and never reuse one), then both arms, β = 0 (vanilla) and the fitted β, predict
    the test prompts. Returns (metric table: accuracy / macro_f1 / label_loss per arm in `arm`,
    the paired gain re-weighted − vanilla per seed and pooled (`reweighting_gain_rows`, `n_boot`
    bootstrap resamples), and beta_abs_mean per layer; {seed: β [L, H, K]}; meta with the loss per epoch).
    """
    test, meta = anchor_prompts(prompts_path)
    train, _ = anchor_prompts(prompts_path, split="train")
    label_ids = meta["label_token_ids"]
    n_classes = len(label_ids)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    net.requires_grad_(False)
    L, H = manifest["n_layers"], manifest["n_heads"]
    device = input_device(net)
    rows, betas, losses, n_tested, correct = [], {}, {}, 0, {}
    for seed, seed_test in test.groupby("seed", sort=True):
        aux = train[train.seed == seed].groupby("gold", sort=True).head(aux_per_class)
        per_class = aux.groupby("gold").size().reindex(range(n_classes), fill_value=0)
        if per_class.min() < aux_per_class:
            raise ValueError(
                f"anchor re-weighting needs {aux_per_class} train-split prompts per class for seed "
                f"{seed} (anchors.reweighting.aux_per_class) but {prompts_path} has "
                f"{per_class.to_dict()}: raise datasets.{dataset}.prompts.n_train to at least "
                f"{aux_per_class * n_classes}"
            )
        K = int(seed_test["label_pos"].map(len).max())
        beta, losses[int(seed)] = fit_reweighting(
            net,
            aux.reset_index(drop=True),
            label_ids,
            (L, H, K),
            epochs=epochs,
            lr=lr,
            seed=int(seed),
            pad_id=tok.pad_token_id,
        )
        betas[int(seed)] = beta.numpy()
        picked = seed_test if n_test_per_seed is None else seed_test.head(n_test_per_seed)
        n_tested += len(picked)
        gold = torch.tensor(picked["gold"].tolist())
        arm_correct = []
        for arm, b in (("vanilla", torch.zeros_like(beta)), ("reweighted", beta)):
            logits = []
            for lo in tqdm(range(0, len(picked), model.batch_size), desc=f"re-weighting seed {seed} {arm}"):
                with torch.inference_mode():
                    logits.append(
                        reweighted_label_logits(
                            net, picked.iloc[lo : lo + model.batch_size], label_ids, b.to(device), L, tok.pad_token_id
                        ).cpu()
                    )
            logits = torch.cat(logits)
            pred = logits.argmax(-1).numpy()
            arm_correct.append(pred == gold.numpy())
            common = {"seed": int(seed), "arm": arm}
            rows += [
                {**common, "metric": "accuracy", "value": float((pred == gold.numpy()).mean())},
                {**common, "metric": "macro_f1", "value": macro_f1(gold.numpy(), pred, range(n_classes))},
                {**common, "metric": "label_loss", "value": float(F.cross_entropy(logits, gold))},
            ]
        correct[int(seed)] = tuple(arm_correct)
        rows += [
            {
                "seed": int(seed),
                "layer": layer + 1,
                "arm": "reweighted",
                "metric": "beta_abs_mean",
                "value": float(np.abs(betas[int(seed)][layer]).mean()),
            }
            for layer in range(L)
        ]
    rows += reweighting_gain_rows(correct, n_boot)
    info = {
        "aux_per_class": aux_per_class,
        "epochs": epochs,
        "lr": lr,
        "test_prompts": n_tested,
        "train_loss_per_epoch": losses,
        # per seed, each test prompt's 0/1 correctness in order (the pooled claims over datasets read it)
        "correct": {
            str(seed): {"vanilla": v.astype(int).tolist(), "reweighted": r.astype(int).tolist()}
            for seed, (v, r) in sorted(correct.items())
        },
    }
    return metric_frame(rows, model=model.name, dataset=dataset, family="anchors", position="query"), betas, info
