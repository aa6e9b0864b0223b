"""Residual states of label words in neutral carrier prompts (task-space variant A, the
`extract_anchors` stage), the carriers' shared text run once (iclscope.model.shared_prefix)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from iclscope.core.atomic import written
from iclscope.core.config import ModelSpec
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Positions, Recorder, left_pad, recording
from iclscope.model.loading import load_model
from iclscope.model.prompts import carrier_prompts
from iclscope.model.shared_prefix import carrier_groups, continuation_inputs, prefix_pass


def extract_anchor_states(
    model_dir: str | Path,
    model: ModelSpec,
    label_words: list[str],
    carriers: list[str],
    out_path: str | Path,
    share_prefixes: bool = True,
) -> dict:
    """Residual states of each label word in neutral carrier prompts (task-space variant A).

    Writes `/anchors/resid [C, m, L+1, d]` float32 (C label words x m carriers, state at the label
    word's last sub-token) and `/anchors/text [C, m]`. A handful of short prompts: seconds. The label
    words of one carrier share its text before them: that prefix runs once and its KV cache serves
    them (`carrier_groups`, the prefix path of `extract`; `share_prefixes=False`: every prompt whole).
    """
    net, tokenizer, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    records = carrier_prompts(tokenizer, carriers, label_words)
    device = input_device(net)
    n_layers = manifest["n_layers"]
    states = np.empty((len(records), n_layers + 1, manifest["d_model"]), dtype=np.float32)
    for members, prefix_tokens in carrier_groups(records, share_prefixes):
        prefix = prefix_pass(net, prefix_tokens)[1] if len(prefix_tokens) else None
        for lo in range(0, len(members), model.batch_size):
            rows = members[lo : lo + model.batch_size]
            batch = [records[i] for i in rows]
            ids, mask, pos_ids = left_pad([r["input_ids"] for r in batch], tokenizer.pad_token_id, device)
            offset = ids.shape[1] - torch.as_tensor([len(r["input_ids"]) for r in batch], device=device)
            label = (torch.as_tensor([r["position"] for r in batch], device=device) + offset)[:, None]
            inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos_ids}
            if prefix is not None:  # the model computes columns P.. only: label columns shift by P
                inputs.update(continuation_inputs(prefix, ids, mask, pos_ids))
                label = label - prefix.length
            rec = Recorder(
                n_layers, Positions(label, torch.zeros(len(batch), 2, dtype=torch.long, device=device)), ("label",)
            )
            with torch.inference_mode(), recording(net, rec):
                net(**inputs, logits_to_keep=1)
            states[rows] = rec.resid["label"][:, 0].cpu().numpy()  # [b, L+1, d]
    C, m = len(label_words), len(carriers)
    resid = states.reshape(C, m, n_layers + 1, manifest["d_model"])
    with written(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("anchors/resid", data=resid.astype(np.float32))
            f.create_dataset(
                "anchors/text",
                data=np.array([r["text"] for r in records], dtype=object).reshape(C, m),
                dtype=h5py.string_dtype("utf-8"),
            )
            f.attrs.update(
                model_id=model.name,
                model_sha=manifest["weights_sha256"],
                label_words=list(label_words),
                carriers=list(carriers),
                n_layers=manifest["n_layers"],
                d_model=manifest["d_model"],
                complete=True,
            )
    return {"classes": C, "carriers": m}
