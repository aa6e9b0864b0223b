"""Isolating label words in the first or last k layers (Wang et al. 2023 §2.2, docs/methods.md §3.3).

The edits are attention edits for iclscope.model.capture (post-softmax); `run_isolation` measures label
and word loyalty against the unmodified model, every prompt under every condition batched together
with left padding (each row its own isolated rows and layers; equal to batch 1: tests).

Shared prefixes: the test prompts of a seed carry the same demonstrations, so under a condition
whose isolated rows lie in that shared prefix and are the same for every prompt (the label arm and
the baseline; not the random control, whose rows each prompt draws for itself) the prefix runs once
under the condition's edit (batch 1, its KV cache kept) and each prompt runs only its own columns
after it (iclscope.model.shared_prefix). Cost: per such condition and seed one prefix pass plus the
continuations' tokens, instead of every prompt's T tokens; the random control runs whole.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from iclscope.core.metrics import metric_frame
from iclscope.methods.anchors.measures import jaccard_topk
from iclscope.methods.anchors.prompts import anchor_prompts, demonstration_prefixes
from iclscope.model.batching import make_batches
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Recorder, left_pad, no_positions, recording
from iclscope.model.loading import load_model
from iclscope.model.shared_prefix import continuation_inputs, prefix_pass


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


def row_marks(items: list[dict], lengths: np.ndarray, T: int) -> dict[int, torch.Tensor]:
    """{layer: [B, T] bool}: the rows each item (in left-padded columns of width T) isolates there."""
    marks: dict[int, torch.Tensor] = {}
    for b, item in enumerate(items):
        offset = T - lengths[b]
        for layer, rows in item["rows"].items():
            if len(rows):
                marks.setdefault(layer, torch.zeros(len(items), T, dtype=torch.bool))[b, rows + offset] = True
    return marks


def shared_runs(items: list[dict], prefixes) -> tuple[dict[tuple, list[int]], list[int]]:
    """({(prefix, isolated rows): item indices}, the other items): items of one shared prefix whose
    isolated rows all lie inside it and are the same (at least two of them) run that prefix once."""
    runs: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        g = item.get("prefix")
        if prefixes is None or g is None:
            continue
        rows = tuple(sorted((layer, tuple(np.asarray(r).tolist())) for layer, r in item["rows"].items()))
        if all(max(r, default=-1) < len(prefixes[g]) for _, r in rows):
            runs.setdefault((int(g), rows), []).append(i)
    runs = {key: members for key, members in runs.items() if len(members) > 1}
    shared = {i for members in runs.values() for i in members}
    return runs, [i for i in range(len(items)) if i not in shared]


def isolation_readouts(
    net,
    n_layers: int,
    pad_id: int,
    items: list[dict],
    batch_size: int,
    max_batch_tokens: int,
    word_k: int,
    prefixes: list[np.ndarray] | None = None,
):
    """Label logits [n, C] float32 and top-`word_k` ids [n, word_k] of work items (a prompt under one
    condition: input_ids, label_ids, and `rows` {layer: unpadded rows isolated there}), batched
    across prompts and conditions alike: length-sorted, left-padded batches of at most `batch_size`
    items and `max_batch_tokens` padded tokens, each row with its own isolated rows and layers.

    An item with "prefix" g (its input_ids begin with prefixes[g]) whose isolated rows lie in that
    prefix, the same as those of other items of g (`shared_runs`), continues the prefix run once
    under that edit: only its columns after the prefix run (module docstring)."""
    device = input_device(net)
    label_ids = items[0]["label_ids"] if items else []
    logits_out = np.empty((len(items), len(label_ids)), dtype=np.float32)
    top_out = np.empty((len(items), word_k), dtype=np.int64)
    lengths = np.array([len(it["input_ids"]) for it in items])
    runs, whole = shared_runs(items, prefixes)
    work = [(None, np.asarray(whole, dtype=np.int64))] + [(key, np.asarray(m)) for key, m in runs.items()]
    for key, members in work:
        state = None
        if key is not None:  # the prefix, once, under this condition's edit (its rows are all in it)
            tokens = prefixes[key[0]]
            edit = rows_edit(row_marks([items[members[0]]], np.array([len(tokens)]), len(tokens)))
            with recording(net, Recorder(n_layers, no_positions(1, device), (), edit=edit)):
                state = prefix_pass(net, tokens)[1]
        run_lengths = lengths[members] - (0 if state is None else state.length)
        for at in tqdm(make_batches(run_lengths, batch_size, max_batch_tokens), desc="isolation"):
            batch = members[at]
            ids, mask, pos = left_pad([items[i]["input_ids"] for i in batch], pad_id, device)
            marks = row_marks([items[i] for i in batch], lengths[batch], ids.shape[1])
            inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
            if state is not None:  # the marked rows are cached: the edit finds none in the continuation
                inputs.update(continuation_inputs(state, ids, mask, pos))
            recorder = Recorder(n_layers, no_positions(len(batch), device), (), edit=rows_edit(marks))
            with torch.inference_mode(), recording(net, recorder):
                logits = net(**inputs, logits_to_keep=1).logits[:, -1]
            logits_out[batch] = logits[:, label_ids].float().cpu().numpy()
            top_out[batch] = logits.topk(word_k).indices.cpu().numpy()
    return logits_out, top_out


def run_isolation(
    prompts_path,
    model_dir,
    model,
    *,
    n_per_seed: int,
    ks=(1, 3, 5, 7),
    word_k: int = 5,
    seed: int = 0,
    dataset: str,
    share_prefixes: bool = True,
):
    """Label and word loyalty when label words (or random tokens) are isolated in the first or last
    k layers, against the unmodified model (docs/methods.md §3.3).

    Metric table: metric label_loyalty / word_loyalty; `variant` = window side (first | last);
    `arm` = isolated rows (label | random); `n_layers` = k, the number of layers isolated.
    Every prompt under every condition is one work item; the items run batched with left padding
    (`isolation_readouts`: each row its own isolated rows and layers), eager attention in every
    condition, the baseline included. Shared demonstration prefixes run once per condition that
    isolates the same rows in them (module docstring); `share_prefixes=False` runs every item whole.
    """
    test, meta = anchor_prompts(prompts_path)
    label_ids = list(meta["label_token_ids"])
    picked = test.groupby("seed", sort=True).head(n_per_seed).reset_index(drop=True)
    net, tok, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    prefixes = demonstration_prefixes(picked) if share_prefixes else None
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
            "prefix": None if prefixes is None else int(prefixes.index[i]),
        }
        for side, k, kind in conditions
        for i, row in enumerate(picked.itertuples())
    ]
    logits, top = isolation_readouts(
        net,
        L,
        tok.pad_token_id,
        items,
        model.batch_size,
        model.max_batch_tokens,
        word_k,
        None if prefixes is None else prefixes.tokens,
    )
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
