"""The test prompts every anchor stage reads, their label-token columns once left-padded, and their
shared demonstration prefixes."""

from __future__ import annotations

import numpy as np
import torch

from iclscope.core.tables import read_meta, read_table
from iclscope.model.batching import pad_lists
from iclscope.model.shared_prefix import SharedPrefixes, shared_prefixes


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


def demonstration_prefixes(rows) -> SharedPrefixes | None:
    """The shared demonstration prefixes of prompt rows (iclscope.model.shared_prefix.shared_prefixes:
    per seed and shot count, every label token inside; None: every prompt runs whole). index [N]
    follows the rows' order."""
    K = int(rows["label_pos"].map(len).max()) if len(rows) else 0
    prompts = {
        "seed": rows["seed"].to_numpy(np.int64),
        "shots": rows["shots"].to_numpy(np.int64),
        "n_tokens": rows["n_tokens"].to_numpy(np.int64),
        "label_pos": pad_lists(rows["label_pos"], K),
        "query_span": np.stack(rows["query_span"].map(np.asarray)).astype(np.int64).reshape(len(rows), 2),
    }
    return shared_prefixes(prompts, rows["input_ids"])
