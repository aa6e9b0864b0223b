"""The test prompts every anchor stage reads, and their label-token columns once left-padded."""

from __future__ import annotations

import torch

from iclscope.core.tables import read_meta, read_table


def padded_label_columns(batch, T: int):
    """Label-token columns of a left-padded batch: label [B, K] (−1 where a prompt has fewer), offsets [B].

    `batch` rows carry label_pos (unpadded positions) and n_tokens; T is the padded length.
    """
    offsets = torch.as_tensor(T - batch["n_tokens"].to_numpy())
    K = int(batch["label_pos"].map(len).max())
    label = torch.full((len(batch), K), -1, dtype=torch.long)
    for b, lp in enumerate(batch["label_pos"]):
        label[b, : len(lp)] = torch.as_tensor(list(lp)) + offsets[b]
    return label, offsets


def anchor_prompts(prompts_path, split: str = "test"):
    """(prompt rows of `split` that have label positions, prompts metadata)."""
    table = read_table(prompts_path)
    rows = table[(table.split == split) & (table["label_pos"].map(len) > 0)]
    return rows, read_meta(prompts_path)
