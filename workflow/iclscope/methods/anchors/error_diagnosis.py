"""Error diagnosis with anchor keys (Wang et al. 2023, Sec. 3.3, App. J/K; docs/methods.md §3.9).

If the query's attention to label words decides the answer, two classes whose label-word keys
look alike to the queries should be confused by the model. At one layer:

* queries q_t [N, H·dh]: the attention query at the last prompt position of each test prompt,
  every head concatenated; centred, PCA -> the top M directions v_i [M, H·dh] with their
  spread σ_i (scikit-learn's `singular_values_`, as the authors' notebook);
* keys k_p [C, H·dh]: the attention key at each demonstration's label word (KV heads repeated
  to the query heads, as GQA attention uses them), averaged over the demonstrations of a class;
* key features k̂_i = σ_i · v_iᵀ k_p [C, M];
* predicted confusion_ij = ||k̂_i − k̂_j|| / max_{s≠t} ||k̂_s − k̂_t|| (0 = most confusable,
  diagonal 1);
* true confusion_ij = AUC-ROC of p_i / (p_i + p_j) separating gold i from gold j on the test
  prompts whose gold is i or j, with p the softmax over the label words' logits (the model's
  own answers, read from the activation file).

The two are compared over the class pairs i < j (Pearson and Spearman), per seed and pooled.
q and k are the states attention receives, i.e. after RoPE for rotary models (GPT-2 has none).

Cost: the test prompts of one seed (and shot count) carry the same demonstrations, so their label
words all sit in a shared prefix whose keys are the same for every prompt: that prefix runs once
(batch 1, its KV cache kept; keys at its label words) and each test prompt runs only its own
columns after it, in left-padded batches that continue the cache (iclscope.model.shared_prefix),
keeping its last position's query. Per prompt: the continuation's tokens (plus padding) instead
of all T; per seed one prefix pass. Prompts without a shared prefix (`shared_prefixes` finds none)
run whole, one pass per prompt (batched). Then PCA of an [N, H·dh] matrix per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.decomposition import PCA
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.core.store import open_activations
from iclscope.methods.anchors.measures import aucroc
from iclscope.methods.anchors.prompts import anchor_prompts, demonstration_prefixes, padded_label_columns
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Positions, Recorder, left_pad, recording
from iclscope.model.loading import load_model
from iclscope.model.shared_prefix import PrefixState, continuation_inputs, prefix_pass


@dataclass(frozen=True)
class ErrorDiagnosisSettings:
    """`anchors.error_diagnosis` of the config.

    layer: attention layer, 1-based as the `layer` column of every anchors table (None = block
    ⌊2L/3⌋, i.e. layer ⌊2L/3⌋ + 1; the paper's notebook uses block 32 of GPT2-XL's 48).
    n_components: M, the query principal directions kept (paper 10).
    qk: "pre_rope" reads queries and keys as the q/k projections output them, before a rotary
    embedding mixes position into them (the paper's GPT2-XL has none, so its PCA sees content
    only); "post_rope" as attention multiplies them. Models without separate q/k projections (or
    without rotary embeddings, where the two are the same) are read post-RoPE; the table says which.
    """

    layer: int | None = None
    n_components: int = 10
    qk: str = "pre_rope"

    def __post_init__(self):
        if self.layer is not None and self.layer < 1:
            raise ValueError(f"anchors.error_diagnosis.layer is {self.layer}: use a layer in 1..L, or null")
        if self.n_components < 1:
            raise ValueError(f"anchors.error_diagnosis.n_components is {self.n_components}: use at least 1")
        if self.qk not in ("pre_rope", "post_rope"):
            raise ValueError(f"anchors.error_diagnosis.qk is {self.qk!r}: use pre_rope or post_rope")

    def resolve_layer(self, n_layers: int) -> int:
        """The 1-based layer for a model with `n_layers` blocks."""
        layer = self.layer if self.layer is not None else 2 * n_layers // 3 + 1
        if not 1 <= layer <= n_layers:
            raise ValueError(
                f"anchors.error_diagnosis.layer is {layer}, but the model has {n_layers} layers "
                f"(use 1..{n_layers}, or null for 2/3 of the depth)"
            )
        return layer


def check_classes(n_classes: int, dataset: str = "") -> None:
    """Error diagnosis compares class pairs with each other: it needs at least three classes."""
    if n_classes < 3:
        where = f"dataset '{dataset}'" if dataset else "this dataset"
        raise ValueError(
            f"error diagnosis needs at least 3 classes, but {where} has {n_classes}: with two there "
            "is a single class pair and nothing to correlate. Give the dataset >= 3 classes "
            f"(datasets.{dataset or '<name>'}.classes) or leave error_diagnosis out of its methods"
        )


# --------------------------------------------------------------------------- pure measures
def query_directions(queries: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """queries [N, D] -> (directions v [M, D] (orthonormal rows), spread σ [M]) of the centred queries
    (scikit-learn PCA; σ = its singular_values_).

    The exact SVD (`svd_solver="full"`, O(N·D·min(N, D))): scikit-learn's default picks a randomized
    solver without a seed for N or D > 500, so the same queries gave different directions."""
    n, d = queries.shape
    if n_components > min(n, d):
        raise ValueError(
            f"anchors.error_diagnosis.n_components is {n_components}, but PCA of {n} query vectors "
            f"of dimension {d} has at most {min(n, d)} components: lower it or use more test prompts"
        )
    pca = PCA(n_components=n_components, svd_solver="full").fit(np.asarray(queries, dtype=np.float64))
    return pca.components_, pca.singular_values_


def key_features(keys: np.ndarray, directions: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """k̂ [C, M] = σ_i · v_iᵀ k_p for keys [C, D], directions [M, D], spread [M]."""
    return (np.asarray(keys, dtype=np.float64) @ directions.T) * spread[None, :]


def predicted_confusion(features: np.ndarray) -> np.ndarray:
    """[C, C]: ||k̂_i − k̂_j|| / max_{s≠t} ||k̂_s − k̂_t||, diagonal 1 (NaN off the diagonal when all
    keys coincide)."""
    diff = features[:, None, :] - features[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))  # [C, C]
    top = dist.max()
    out = dist / top if top > 0 else np.full_like(dist, np.nan)
    np.fill_diagonal(out, 1.0)
    return out


def label_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the label words' logits [N, C] (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def true_confusion(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """[C, C]: AUC-ROC of p_i / (p_i + p_j) separating gold i from gold j on the prompts with gold in
    {i, j} (symmetric), diagonal 1; NaN for a pair with a class missing among the gold labels."""
    C = probs.shape[1]
    out = np.ones((C, C))
    for i in range(C):
        for j in range(i + 1, C):
            sel = (gold == i) | (gold == j)
            pair = probs[sel][:, [j, i]]
            ratio = pair / np.clip(pair.sum(1, keepdims=True), 1e-300, None)  # column 1 = p_i / (p_i + p_j)
            out[i, j] = out[j, i] = aucroc(ratio, (gold[sel] == i).astype(int))
    return out


def pair_correlations(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of the two matrices over the pairs i < j (NaN pairs dropped;
    NaN with fewer than 3 pairs or a constant side)."""
    iu = np.triu_indices(len(predicted), k=1)
    x, y = predicted[iu], true[iu]
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "pairs": float(len(x))}
    return {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0]), "pairs": float(len(x))}


def class_keys(keys: np.ndarray, label_class: np.ndarray, n_classes: int) -> np.ndarray:
    """keys [n, D] of n label-word tokens with their classes label_class [n] -> [C, D], the mean key
    of each class. (Every test prompt of one seed shares its demonstrations, so over prompts the
    mean is over copies; with several demonstrations per class it averages them.)"""
    out = np.zeros((n_classes, keys.shape[-1]))
    for c in range(n_classes):
        sel = label_class == c
        if not sel.any():
            raise ValueError(
                f"no demonstration of class {c} in these prompts: error diagnosis needs a label word "
                "key of every class (prompts.shots_per_class >= 1)"
            )
        out[c] = keys[sel].mean(0)
    return out


def diagnose(queries: np.ndarray, keys: np.ndarray, probs: np.ndarray, gold: np.ndarray, n_components: int) -> dict:
    """The whole comparison for one prompt set: queries [N, D], class keys [C, D], label probabilities
    [N, C], gold [N] -> {predicted [C, C], true [C, C], pearson, spearman, pairs, explained_variance}."""
    check_classes(keys.shape[0])
    directions, spread = query_directions(queries, n_components)
    predicted = predicted_confusion(key_features(keys, directions, spread))
    true = true_confusion(probs, gold)
    total = ((queries - queries.mean(0)) ** 2).sum()
    return {
        "predicted": predicted,
        "true": true,
        **pair_correlations(predicted, true),
        "explained_variance": float((spread**2).sum() / total) if total > 0 else float("nan"),
    }


# --------------------------------------------------------------------------- model pass
@dataclass(frozen=True)
class PrefixKeys:
    """A shared demonstration prefix run once: its KV cache (`state`), the keys at its label columns
    keys [K, H·dh] (NaN where label_pos is −1) of block `layer`, and which q/k they are (`qk_used`)."""

    state: PrefixState
    keys: np.ndarray
    qk_used: str


def prefix_label_keys(net, tokens: np.ndarray, label_pos: np.ndarray, layer: int, n_layers: int, qk: str) -> PrefixKeys:
    """Run a shared prefix tokens [P] once (iclscope.model.shared_prefix.prefix_pass, batch 1) keeping,
    at 0-based block `layer`, the keys at its label positions label_pos [K] (−1 = none), via the
    iclscope attention function. Every prompt that continues the prefix has these keys (the same
    tokens at the same positions)."""
    device = input_device(net)
    label = torch.as_tensor(np.asarray(label_pos), dtype=torch.long, device=device)[None]
    rec = Recorder(
        n_layers,
        Positions(label, torch.zeros(1, 2, dtype=torch.long, device=device)),
        (),
        qk_layer=layer,
        qk_source=qk,
    )
    with recording(net, rec):
        _, state = prefix_pass(net, tokens)
    if rec.qk is None:
        raise RuntimeError(
            "the iclscope attention function did not run: load the model with attn_implementation='iclscope'"
        )
    return PrefixKeys(state, rec.qk[1][0].flatten(1).cpu().numpy(), rec.qk_used)


def query_and_label_keys(
    net, batch, layer: int, n_layers: int, pad_id: int, qk: str = "pre_rope", prefix: PrefixKeys | None = None
):
    """One left-padded forward pass over `batch` (prompt rows) keeping, at 0-based block `layer`, the
    query at the last position q [B, H·dh] and the keys at the label columns k [B, K, H·dh] (NaN
    where a prompt has fewer demonstrations), via the iclscope attention function; and which q/k were
    read ("pre_rope" | "post_rope", see ErrorDiagnosisSettings.qk).

    With `prefix` (every row continues it, its label positions those of every row) only the columns
    after the prefix run, continuing its KV cache (iclscope.model.shared_prefix.continuation_inputs:
    left padding and positions as the full batch has them), and the keys are the prefix's."""
    device = input_device(net)
    ids, mask, pos = left_pad(list(batch["input_ids"]), pad_id, device)
    label, _ = padded_label_columns(batch, ids.shape[1])
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    if prefix is not None:  # the label columns are cached: record the continuation's query only
        inputs.update(continuation_inputs(prefix.state, ids, mask, pos))
        label = label[:, :0]
    positions = Positions(label.to(device), torch.zeros(len(batch), 2, dtype=torch.long, device=device))
    rec = Recorder(n_layers, positions, (), qk_layer=layer, qk_source=qk)
    with torch.inference_mode(), recording(net, rec):
        net(**inputs, logits_to_keep=1)
    if rec.qk is None:
        raise RuntimeError(
            "the iclscope attention function did not run: load the model with attn_implementation='iclscope'"
        )
    q, k = rec.qk  # [B, H, dh], [B, K, H, dh]
    q = q.flatten(1).cpu().numpy()
    if prefix is None:
        return q, k.flatten(2).cpu().numpy(), rec.qk_used
    if rec.qk_used != prefix.qk_used:
        raise RuntimeError(f"the prefix's keys are {prefix.qk_used} but the continuation's query is {rec.qk_used}")
    K = int(batch["label_pos"].map(len).max())
    return q, np.broadcast_to(prefix.keys[:K], (len(batch), K, prefix.keys.shape[-1])), rec.qk_used


def read_label_logits(activations_path, prompt_ids: np.ndarray) -> np.ndarray:
    """/logits/label [n, C] of the given prompt ids, in their order."""
    with open_activations(activations_path) as f:
        if "logits/label" not in f:
            raise ValueError(f"{activations_path} has no label logits: error diagnosis needs a classification dataset")
        stored = f["prompts/prompt_id"][()]
        row = {int(p): i for i, p in enumerate(stored)}
        missing = [int(p) for p in prompt_ids if int(p) not in row]
        if missing:
            raise ValueError(
                f"{activations_path} lacks prompts {missing[:5]} of the prompt table: the two were "
                "made from different prompts; rerun extract"
            )
        logits = f["logits/label"][()]
    return logits[[row[int(p)] for p in prompt_ids]]


def run_error_diagnosis(
    prompts_path,
    activations_path,
    model_dir,
    model,
    settings: ErrorDiagnosisSettings,
    *,
    dataset: str = "",
    share_prefixes: bool = True,
):
    """Predicted vs true confusion per seed and pooled (docs/methods.md §3.9) on the test prompts.

    Prompts that share their demonstration prefix run it once (module docstring);
    `share_prefixes=False` runs every prompt whole (the reference of the equality tests).

    Per seed: PCA of that seed's queries, keys of its demonstrations' label words. Pooled: the mean
    of the seeds' predicted matrices against the true confusion of all test prompts together (with
    one seed, the seed's own values). Returns (long-format table, meta). Table rows:
    metric predicted_confusion / true_confusion per ordered class pair, `variant` "class_i|class_j"
    (diagonal included, 1); metric confusion_pearson / confusion_spearman / confusion_pairs /
    query_explained_variance; `seed` null = pooled; `layer` 1-based.
    """
    test, meta = anchor_prompts(prompts_path)
    classes = list(meta["classes"])
    check_classes(len(classes), dataset or meta.get("dataset", ""))
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    layer = settings.resolve_layer(L)
    probs = label_probabilities(read_label_logits(activations_path, test["prompt_id"].to_numpy()))
    gold = test["gold"].to_numpy()
    results, seed_of, used = {}, test["seed"].to_numpy(), set()
    prefixes = demonstration_prefixes(test) if share_prefixes else None
    groups = np.zeros(len(test), dtype=np.int64) if prefixes is None else prefixes.index
    for seed in sorted(np.unique(seed_of)):
        sel = seed_of == seed
        rows = test[sel]
        qs = [None] * len(rows)  # per row in the seed's order: query [D]; label-word keys [n, D]
        ks = [None] * len(rows)
        for g in np.unique(groups[sel]):
            members = np.flatnonzero(groups[sel] == g)
            prefix = None
            if prefixes is not None:
                prefix = prefix_label_keys(net, prefixes.tokens[g], prefixes.label_pos[g], layer - 1, L, settings.qk)
            for lo in tqdm(range(0, len(members), model.batch_size), desc=f"error diagnosis seed {seed}"):
                at = members[lo : lo + model.batch_size]
                batch = rows.iloc[at]
                q, k, qk_used = query_and_label_keys(
                    net, batch, layer - 1, L, tok.pad_token_id, settings.qk, prefix=prefix
                )
                used.add(qk_used)
                for b, lc in enumerate(batch["label_class"]):
                    qs[at[b]], ks[at[b]] = q[b], k[b, : len(lc)]
            del prefix  # one prefix's KV cache at a time
        kc = [np.asarray(lc) for lc in rows["label_class"]]
        keys = class_keys(np.concatenate(ks), np.concatenate(kc), len(classes))
        results[int(seed)] = diagnose(np.stack(qs), keys, probs[sel], gold[sel], settings.n_components)
    predicted = np.mean([r["predicted"] for r in results.values()], axis=0)
    true = true_confusion(probs, gold)
    results[None] = {
        "predicted": predicted,
        "true": true,
        **pair_correlations(predicted, true),
        "explained_variance": float(np.mean([r["explained_variance"] for r in results.values()])),
    }
    out = []
    for seed, r in results.items():
        for i, ci in enumerate(classes):
            for j, cj in enumerate(classes):
                out += [
                    {"seed": seed, "metric": f"{kind}_confusion", "variant": f"{ci}|{cj}", "value": r[kind][i, j]}
                    for kind in ("predicted", "true")
                ]
        out += [
            {"seed": seed, "metric": f"confusion_{name}", "value": r[name]} for name in ("pearson", "spearman", "pairs")
        ]
        out.append({"seed": seed, "metric": "query_explained_variance", "value": r["explained_variance"]})
    table = metric_frame(out, model=model.name, dataset=dataset, family="anchors", position="query", layer=layer)
    info = {
        "layer": layer,
        "n_layers": L,
        "n_components": settings.n_components,
        "classes": classes,
        "qk": "/".join(sorted(used)),
        "qk_requested": settings.qk,
        "test_prompts": {str(s): int((seed_of == s).sum()) for s in np.unique(seed_of)},
    }
    return table, info
