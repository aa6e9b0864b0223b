"""Shared prefixes: prompts that begin with the same tokens run those tokens once and continue
from their KV cache.

Classification prompts of one seed and shot count carry the same demonstrations, so their first
tokens (up to the test input) are the same (`shared_prefixes`); carrier prompts of one carrier share
its text before the label word (`carrier_groups`); a corpus's sentences may begin alike
(iclscope.model.token_states). A prefix runs once (`prefix_pass`, batch 1, its cache at every
layer) and its cache serves every prompt that continues it: a batch is laid out exactly as the full
prompts' left-padded batch, but its first P columns come from the cache (each row's copy shifted
right by that row's padding, `continuation_cache`), so only the last T - P columns run through the
model (`continuation_inputs`). Every position the model computes equals the full batch's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from iclscope.model.blocks import decoder_layers, input_device
from iclscope.model.capture import Positions, Recorder, full_kv_cache, recording, residual_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedPrefixes:
    """Prompts that continue a shared prefix: index [N] (the prefix of each prompt), tokens [P]
    (each prefix's token ids, all its label positions inside it) and label_pos [P, K]."""

    index: np.ndarray
    tokens: list[np.ndarray]
    label_pos: np.ndarray

    def __post_init__(self):
        if len(self.tokens) != len(self.label_pos) or (len(self.index) and self.index.max() >= len(self.tokens)):
            raise ValueError("SharedPrefixes: index, tokens and label_pos disagree")

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def shared_prefixes(prompts: dict[str, np.ndarray], token_ids) -> SharedPrefixes | None:
    """The shared prefixes of prompts (None: every prompt takes the full-prompt path).

    Prompts are grouped by (seed, shots, label positions); a group's prefix is the longest common
    token prefix of its prompts, cut before the first test-input token and before the last token
    (the query runs in the continuation). It is used when every group's prefix holds all its
    label positions (the label states come from the prefix). `token_ids` yields the prompts' token
    ids in order (one pass, memory: one running prefix per group). Classification prompts only
    (`extract`): generation prompts carry demonstrations of their own.
    """
    label_pos = prompts["label_pos"]
    n = len(label_pos)
    if n == 0 or label_pos.shape[1] == 0 or not (label_pos >= 0).any():
        return None
    keys = {}
    index = np.empty(n, dtype=np.int64)
    common: list[np.ndarray] = []
    for i, ids in enumerate(token_ids):
        key = (int(prompts["seed"][i]), int(prompts["shots"][i]), tuple(label_pos[i].tolist()))
        ids = np.asarray(ids, dtype=np.int64)
        g = index[i] = keys.setdefault(key, len(keys))
        if g == len(common):
            common.append(ids)
            continue
        m = min(len(common[g]), len(ids))
        differ = np.flatnonzero(common[g][:m] != ids[:m])
        common[g] = common[g][: differ[0] if len(differ) else m]
    tokens, labels = [], np.empty((len(common), label_pos.shape[1]), dtype=np.int64)
    for g, prefix in enumerate(common):
        rows = index == g
        starts = prompts["query_span"][rows, 0]
        length = min(
            len(prefix),
            int(prompts["n_tokens"][rows].min()) - 1,
            int(starts[starts >= 0].min()) if (starts >= 0).any() else len(prefix),
        )
        labels[g] = label_pos[np.flatnonzero(rows)[0]]
        if length < 1 or labels[g].max() >= length:
            log.warning(
                "prompts of group %d share %d tokens, not all their label tokens: full-prompt extraction", g, length
            )
            return None
        tokens.append(prefix[:length])
    return SharedPrefixes(index, tokens, labels)


@dataclass
class PrefixState:
    """One shared prefix run through the model: its length and KV cache (batch 1, every layer)."""

    length: int
    cache: object
    padded: list = field(default_factory=list, repr=False)  # per layer (keys, values) [Hkv, 2P, dh]


def common_prefix(sequences) -> np.ndarray:
    """The longest common prefix [P] of token id sequences (int64; empty when they differ at once)."""
    sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
    common = sequences[0] if sequences else np.zeros(0, dtype=np.int64)
    for s in sequences[1:]:
        m = min(len(common), len(s))
        differ = np.flatnonzero(common[:m] != s[:m])
        common = common[: differ[0] if len(differ) else m]
    return common


@torch.inference_mode()
def prefix_pass(
    model, tokens: np.ndarray, all_states: bool = False, positions: np.ndarray | None = None
) -> tuple[torch.Tensor | None, PrefixState]:
    """Run a shared prefix once (batch 1, its KV cache at every layer): (its residual states, float32
    on the input device: [P, L+1, d] at every position when `all_states`, [K, L+1, d] at the token
    `positions` [K] (the label tokens; read by the hook layer's Recorder, as extraction reads them),
    else None; its PrefixState). The one prefix pass of extraction, token states and the anchors."""
    device = input_device(model)
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=device)[None]
    cache = full_kv_cache()
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(ids.shape[1], device=device)[None],
        "past_key_values": cache,
        "use_cache": True,
        "logits_to_keep": 1,
    }
    states = None
    if all_states:
        _, layers = residual_stream(model, **inputs)
        states = torch.stack([h[0].float().to(device) for h in layers], dim=1)  # [P, L+1, d]
    elif positions is not None:
        label = torch.as_tensor(np.asarray(positions), dtype=torch.long, device=device)[None]
        if label.shape[1] == 0:
            raise ValueError("prefix_pass: no positions to read")
        where = Positions(label, torch.zeros(1, 2, dtype=torch.long, device=device))
        rec = Recorder(len(decoder_layers(model)), where, ("label",))
        with recording(model, rec):
            model(**inputs)
        states = rec.resid["label"][0]  # [K, L+1, d]
    else:
        model(**inputs)
    return states, PrefixState(ids.shape[1], cache)


def _row_starts(P: int, offset: torch.Tensor) -> list[int]:
    """Where row b's P columns start in a [.., 2P, ..] copy with P zero columns in front: a row
    left-padded by offset[b] holds that many padding columns, then the prefix's first P - offset[b]
    (an offset >= P: every column is padding)."""
    return (P - offset.clamp(max=P)).tolist()


def prefix_columns(values: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """values [P, ...] at a prefix's positions -> [B, P, ...]: the first P columns of the left-padded
    batch whose rows are padded by offset [B] (zeros at the padding), as the full prompts have them."""
    P = values.shape[0]
    padded = torch.cat([values.new_zeros(values.shape), values])
    return torch.stack([padded[s : s + P] for s in _row_starts(P, offset.to("cpu"))])


def continuation_cache(prefix: PrefixState, offset: torch.Tensor):
    """The first P columns of a left-padded batch, from the prefix's cache: row b holds `offset[b]`
    padding columns (zeros; masked) then the prefix's first P - offset[b] columns, as the full
    prompts' left-padded batch has them. offset [B] -> a DynamicCache [B, Hkv, P, dh] per layer."""
    P = prefix.length
    if not prefix.padded:  # once per prefix: P zero columns in front, so each row's copy is one slice
        prefix.padded = [
            tuple(
                torch.cat([x[0].new_zeros(x.shape[1], P, x.shape[3]), x[0]], dim=1) for x in (layer.keys, layer.values)
            )
            for layer in prefix.cache.layers
        ]
    starts = _row_starts(P, offset)
    cache = full_kv_cache()
    for i, (keys, values) in enumerate(prefix.padded):  # [Hkv, 2P, dh] on that layer's device
        cache.update(
            torch.stack([keys[:, s : s + P] for s in starts]), torch.stack([values[:, s : s + P] for s in starts]), i
        )
    return cache


def continuation_inputs(prefix: PrefixState, ids: torch.Tensor, mask: torch.Tensor, pos_ids: torch.Tensor) -> dict:
    """Model inputs that run only the last T - P columns of a left-padded batch ids / mask / pos_ids
    [B, T] whose rows all begin with the prefix: the first P columns come from its cache
    (`continuation_cache`), the attention mask stays the full batch's. Every position the model
    computes then equals the full batch's; the hidden states it returns are columns P..T-1."""
    P = prefix.length
    if ids.shape[1] <= P:
        raise ValueError(f"a batch of {ids.shape[1]} columns cannot continue a prefix of {P} tokens")
    offset = (mask == 0).sum(1)  # left padding per row
    return {
        "input_ids": ids[:, P:],
        "attention_mask": mask,
        "position_ids": pos_ids[:, P:],
        "past_key_values": continuation_cache(prefix, offset),
        "use_cache": True,
    }


def carrier_groups(records: list[dict], share_prefixes: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """(record indices, shared prefix tokens) of carrier prompts: one group per carrier, whose label
    words follow the same carrier text, its prefix their common tokens before the earliest label
    token (empty: nothing shared, e.g. the carrier "{label}" without a BOS token); with
    `share_prefixes` False one group of every record with an empty prefix."""
    if not share_prefixes:
        return [(np.arange(len(records)), np.zeros(0, dtype=np.int64))]
    groups = []
    for carrier in sorted({r["carrier"] for r in records}):
        members = np.array([i for i, r in enumerate(records) if r["carrier"] == carrier])
        prefix = common_prefix([records[i]["input_ids"] for i in members])
        stop = min(min(records[i]["position"] for i in members), min(len(records[i]["input_ids"]) for i in members) - 1)
        groups.append((members, prefix[: max(stop, 0)] if len(members) > 1 else prefix[:0]))
    return groups
