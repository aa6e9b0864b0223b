"""Scoring prompts at their last position: label-word logits and the top-k vocabulary ids, from a
plain prompt, a prompt with residual states written into it, or a query continuing a KV cache.

The model mechanics that IC-ICL (iclscope.methods.taskspace.icicl) and anchor compression
(iclscope.methods.anchors.compression) share; what a method keeps of a cache (which positions, which
random draws) stays in the method.

KV caches are handled as plain per-layer lists `KV = [(K, V), …]`, K and V [B, Hkv, T, dh] on each
layer's device (a model over several devices keeps each layer's entries where that layer runs):

  prefix_kv        one full-attention pass over a prefix at positions start.. -> its KV
  prefix_kvs       the same for many prefixes, in right-padded batches
  select_kv        the entries at some positions (a pruned cache)
  concat_kv        several KVs one after the other (several demonstrations' kept entries)
  stack_kv         several one-row KVs as one left-padded batch, with its attention mask
  as_cache         a fresh DynamicCache holding a KV (a forward pass extends the cache it is given)

Passes (all under inference mode, only the last position through the vocabulary head):

  last_logits          one unpadded prompt from position 0 (batch 1, the timing protocol)
  continue_on_cache    one query continuing a cache at positions start.. (batch 1)
  padded_passes        many prompts from position 0, left-padded batches
  cached_passes        many queries, each continuing its own KV, left-padded batches
  PromptScorer         batched or batch-1 readouts of prompts, soft-token slots written at a layer
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from iclscope.model.batching import make_batches
from iclscope.model.blocks import input_device
from iclscope.model.capture import Positions, Recorder, ResidualPatch, full_kv_cache, left_pad, no_positions, recording

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V) [B, Hkv, T, dh]

STATE_NAMES = ("last", "label", "mean")  # PromptScorer.states: which state of a prompt


class Readout(NamedTuple):
    """What one scored prompt yields at its last position."""

    label_logits: np.ndarray  # [C] logits of the label words' first tokens
    top_ids: np.ndarray  # [word_k] the highest-logit vocabulary ids, best first (word loyalty)


def readouts(logits: torch.Tensor, label_ids: Sequence[int], word_k: int) -> list[Readout]:
    """logits [B, V] of the last positions -> one Readout per row."""
    labels = logits[:, list(label_ids)].float().cpu().numpy()
    top = logits.topk(word_k, dim=-1).indices.cpu().numpy()
    return [Readout(a, b) for a, b in zip(labels, top, strict=True)]


# --------------------------------------------------------------------------- KV caches
@torch.inference_mode()
def prefix_kv(net, ids: Sequence[int], start: int = 0) -> KV:
    """Per layer (K, V) [1, Hkv, T, dh] of `ids` run alone at positions start..start+T−1, one
    full-attention pass (only the last position goes through the head)."""
    device = input_device(net)
    ids = torch.as_tensor([[int(t) for t in ids]], dtype=torch.long, device=device)
    positions = torch.arange(start, start + ids.shape[1], device=device)[None]
    out = net(input_ids=ids, position_ids=positions, past_key_values=full_kv_cache(), use_cache=True, logits_to_keep=1)
    return [(layer.keys.clone(), layer.values.clone()) for layer in out.past_key_values.layers]


@torch.inference_mode()
def prefix_kvs(
    net,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    pad_id: int,
    batch_size: int,
    max_batch_tokens: int,
    desc: str | None = None,
) -> list[KV]:
    """Per sequence i the KV of `prefix_kv(net, sequences[i], starts[i])`, computed in length-sorted,
    right-padded batches (at most `batch_size` rows and `max_batch_tokens` padded tokens): attention is
    causal, so no real token sees the padding after it, and each row's entries, cut to its own length,
    equal its pass alone (fp32 tolerance). Many short sequences in a few passes instead of one each."""
    device = input_device(net)
    out: list[KV | None] = [None] * len(sequences)
    lengths = np.array([len(x) for x in sequences])
    batches = make_batches(lengths, batch_size, max_batch_tokens)
    for idx in tqdm(batches, desc=desc, leave=False) if desc else batches:
        T = int(lengths[idx].max())
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, : lengths[i]] = torch.as_tensor([int(t) for t in sequences[i]], dtype=torch.long)
            mask[b, : lengths[i]] = 1
        positions = torch.as_tensor([int(starts[i]) for i in idx])[:, None] + torch.arange(T)[None]
        cache = net(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=full_kv_cache(),
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
        for b, i in enumerate(idx):
            n = int(lengths[i])
            out[int(i)] = [
                (layer.keys[b : b + 1, :, :n].clone(), layer.values[b : b + 1, :, :n].clone()) for layer in cache.layers
            ]
    return out


def select_kv(kv: KV, keep: Sequence[int]) -> KV:
    """The entries at positions `keep` (indices into T, in that order) of every layer."""
    idx = torch.as_tensor([int(p) for p in keep], dtype=torch.long)
    return [(k.index_select(2, idx.to(k.device)), v.index_select(2, idx.to(v.device))) for k, v in kv]


def concat_kv(parts: Sequence[KV]) -> KV:
    """KVs one after the other along T (each part's entries keep the positions they were computed at)."""
    return [
        (torch.cat([p[layer][0] for p in parts], dim=2), torch.cat([p[layer][1] for p in parts], dim=2))
        for layer in range(len(parts[0]))
    ]


def stack_kv(rows: Sequence[KV], device) -> tuple[KV, torch.Tensor]:
    """One-row KVs [1, Hkv, n_b, dh] as one batch [B, Hkv, n_max, dh] per layer, each row left-padded
    with zeros, and its attention mask [B, n_max] on `device` (0 = padding)."""
    lengths = [r[0][0].shape[2] for r in rows]
    n_max = max(lengths)
    mask = torch.zeros(len(rows), n_max, dtype=torch.long, device=device)
    for b, n in enumerate(lengths):
        mask[b, n_max - n :] = 1
    pad = torch.nn.functional.pad

    def stacked(layer: int, i: int) -> torch.Tensor:  # i = 0: keys, 1: values
        return torch.cat([pad(r[layer][i], (0, 0, n_max - n, 0)) for r, n in zip(rows, lengths, strict=True)])

    return [(stacked(layer, 0), stacked(layer, 1)) for layer in range(len(rows[0]))], mask


def as_cache(kv: KV):
    """A fresh DynamicCache holding `kv` (iclscope.model.capture.full_kv_cache: no sliding window)."""
    cache = full_kv_cache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k, v, layer)
    return cache


# --------------------------------------------------------------------------- passes
@torch.inference_mode()
def last_logits(net, ids: Sequence[int], logits_to_keep: int = 1) -> torch.Tensor:
    """Logits [T', V] of one unpadded prompt from position 0."""
    ids = torch.as_tensor([[int(t) for t in ids]], dtype=torch.long, device=input_device(net))
    return net(input_ids=ids, logits_to_keep=logits_to_keep).logits[0]


@torch.inference_mode()
def continue_on_cache(net, cache, query_ids: Sequence[int], start: int, logits_to_keep: int = 1) -> torch.Tensor:
    """Logits [Tq', V] of `query_ids` at positions start.. continuing `cache` (it is extended in place)."""
    device = input_device(net)
    ids = torch.as_tensor([[int(t) for t in query_ids]], dtype=torch.long, device=device)
    positions = torch.arange(start, start + ids.shape[1], device=device)[None]
    mask = torch.ones(1, cache.get_seq_length() + ids.shape[1], dtype=torch.long, device=device)
    out = net(
        input_ids=ids,
        position_ids=positions,
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out.logits[0]


@torch.inference_mode()
def cached_passes(
    net,
    kv_of: Callable[[int], KV],
    n_cached: Sequence[int],
    queries: Sequence[Sequence[int]],
    start: int,
    pad_id: int,
    batch_size: int,
    max_batch_tokens: int,
    desc: str | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Query i continuing its own cache `kv_of(i)` ([1, Hkv, n_cached[i], dh] per layer, built when its
    batch runs) at positions start..: yields (indices, last-position logits [B, V]) per batch of
    length-sorted rows (at most `batch_size` rows and `max_batch_tokens` cache entries + query tokens
    per row times rows). Caches are left-padded to the batch's longest and the queries left-padded
    behind them, both masked, so each row equals `continue_on_cache` of its query alone."""
    device = input_device(net)
    lengths = np.array([n + len(q) for n, q in zip(n_cached, queries, strict=True)])
    batches = make_batches(lengths, batch_size, max_batch_tokens)
    for idx in tqdm(batches, desc=desc, leave=False) if desc else batches:
        kv, kv_mask = stack_kv([kv_of(int(i)) for i in idx], device)
        ids, q_mask, q_pos = left_pad([list(queries[i]) for i in idx], pad_id, device)
        logits = net(
            input_ids=ids,
            position_ids=q_pos + start,
            attention_mask=torch.cat([kv_mask, q_mask], dim=1),
            past_key_values=as_cache(kv),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        yield idx, logits


@torch.inference_mode()
def padded_passes(
    net,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    max_batch_tokens: int,
    desc: str | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Unpadded prompts from position 0, left-padded into length-sorted batches of `batch_size` prompts
    and `max_batch_tokens` padded tokens: yields (indices, last-position logits [B, V]) per batch; each
    row equals `last_logits` of its prompt."""
    device = input_device(net)
    batches = make_batches(np.array([len(x) for x in sequences]), batch_size, max_batch_tokens)
    for idx in tqdm(batches, desc=desc, leave=False) if desc else batches:
        ids, mask, pos = left_pad([list(sequences[i]) for i in idx], pad_id, device)
        yield idx, net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]


class States(NamedTuple):
    """`PromptScorer.states` of n prompts."""

    values: dict[str, np.ndarray]  # {"last" | "mean" | "label": [n, len(layers), d] float32}
    readouts: list[Readout]  # each prompt's last-position Readout


@dataclass(frozen=True)
class Prompt:
    """One prompt: token ids, and the soft-token slots whose residual state is written at a layer."""

    ids: list[int]
    slots: list[int] = field(default_factory=list)  # positions in `ids`
    vectors: np.ndarray | None = None  # [len(slots), d] the states written there


class PromptScorer:
    """Reads label logits and the top-`word_k` vocabulary ids at the last position of prompts:
    batched (left padding, `batch_size` prompts and at most `max_batch_tokens` padded tokens per
    pass) for accuracy, or one prompt at a time for the batch-1 timing protocol. Only the last
    position goes through the vocabulary head (logits_to_keep=1): one [d, V] product per prompt."""

    def __init__(
        self,
        model,
        tokenizer,
        label_ids: list[int],
        n_layers: int,
        word_k: int = 5,
        batch_size: int = 16,
        max_batch_tokens: int = 4096,
    ):
        self.model, self.tokenizer, self.label_ids, self.n_layers = model, tokenizer, label_ids, n_layers
        self.word_k, self.batch_size, self.max_batch_tokens = word_k, batch_size, max_batch_tokens
        self.device = input_device(model)

    def readouts(self, logits: torch.Tensor) -> list[Readout]:
        """logits [B, V] of the last positions -> one Readout per row."""
        return readouts(logits, self.label_ids, self.word_k)

    def batches(self, lengths: list[int], desc: str):
        """Index arrays of length-sorted batches, with a progress bar."""
        batches = make_batches(np.asarray(lengths), self.batch_size, self.max_batch_tokens)
        return tqdm(batches, desc=desc, leave=False)

    def states(self, token_lists: list, layers, desc: str = "states") -> States:
        """Batched states of each prompt at `layers` [n, len(layers), d]: "last" (the final position),
        "mean" (mean over the input text: `query_span`, or a demonstration's own span) and, for records
        with a label, "label" (its first token); and each prompt's Readout, which the same pass yields
        (its last position goes through the head anyway): a zero-shot prompt's states and its score."""
        layers = list(layers)
        out = {name: [None] * len(token_lists) for name in STATE_NAMES}
        scored: list[Readout | None] = [None] * len(token_lists)
        with_label = all(len(r["label_pos"]) for r in token_lists)
        for idx in self.batches([len(r["input_ids"]) for r in token_lists], desc):
            batch = [token_lists[i] for i in idx]
            ids, mask, pos = left_pad([b["input_ids"] for b in batch], self.tokenizer.pad_token_id, self.device)
            offset = ids.shape[1] - torch.as_tensor([len(b["input_ids"]) for b in batch], device=self.device)
            spans = [b["query_span"] if b["query_span"] is not None else b["demo_spans"][0] for b in batch]
            span = torch.as_tensor(spans, device=self.device) + offset[:, None]
            label = (
                torch.as_tensor([b["label_pos"][:1] for b in batch], device=self.device) + offset[:, None]
                if with_label
                else no_positions(len(batch), self.device).label
            )
            names = ("query", "content_mean") + (("label",) if with_label else ())
            rec = Recorder(self.n_layers, Positions(label, span), names)
            with torch.inference_mode(), recording(self.model, rec):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            for i, r in zip(idx, self.readouts(logits[:, -1]), strict=True):
                scored[i] = r
            got = {"last": rec.resid["query"], "mean": rec.resid["content_mean"]}
            if with_label:
                got["label"] = rec.resid["label"][:, 0]
            for name, value in got.items():
                value = value[:, layers].cpu().numpy()
                for row, i in enumerate(idx):
                    out[name][i] = value[row]
        return States({name: np.stack(v) for name, v in out.items() if v[0] is not None}, scored)

    @torch.inference_mode()
    def score_many(self, prompts: list[Prompt], layer: int | None = None, desc: str = "score") -> list[Readout]:
        """Batched readouts of `prompts` (soft-token slots written at resid index `layer`), in order."""
        out: list[Readout | None] = [None] * len(prompts)
        if not any(p.slots for p in prompts):  # nothing to write: plain padded passes
            passes = padded_passes(
                self.model,
                [p.ids for p in prompts],
                self.tokenizer.pad_token_id,
                self.batch_size,
                self.max_batch_tokens,
                desc,
            )
            return self._in_order(passes, len(prompts))
        for idx in self.batches([len(p.ids) for p in prompts], desc):
            batch = [prompts[i] for i in idx]
            ids, mask, pos = left_pad([p.ids for p in batch], self.tokenizer.pad_token_id, self.device)
            patches = ()
            n_slots = max(len(p.slots) for p in batch)
            if n_slots:
                offset = ids.shape[1] - np.array([len(p.ids) for p in batch])
                slots = np.full((len(batch), n_slots), -1)
                values = np.zeros((len(batch), n_slots, batch[0].vectors.shape[-1]), dtype=np.float32)
                for row, p in enumerate(batch):
                    slots[row, : len(p.slots)] = np.asarray(p.slots) + offset[row]
                    values[row, : len(p.slots)] = p.vectors
                patches = (
                    ResidualPatch(
                        layer, torch.as_tensor(slots, device=self.device), torch.as_tensor(values, device=self.device)
                    ),
                )
            rec = Recorder(self.n_layers, no_positions(len(batch), self.device), (), patches=patches)
            with recording(self.model, rec):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            for i, r in zip(idx, self.readouts(logits[:, -1]), strict=True):
                out[i] = r
        return out

    @torch.inference_mode()
    def score(self, prompt: Prompt, layer: int | None = None) -> Readout:
        """One prompt, batch 1, no padding (the timing protocol)."""
        if not prompt.slots:
            return self.readouts(last_logits(self.model, prompt.ids)[-1:])[0]
        patch = ResidualPatch(
            layer,
            torch.as_tensor([prompt.slots], device=self.device),
            torch.as_tensor(prompt.vectors[None], dtype=torch.float32, device=self.device),
        )
        ids = torch.as_tensor([prompt.ids], dtype=torch.long, device=self.device)
        with recording(self.model, Recorder(self.n_layers, no_positions(1, self.device), (), patches=(patch,))):
            out = self.model(input_ids=ids, logits_to_keep=1)
        return self.readouts(out.logits[:, -1])[0]

    def score_on_cache(self, query_ids: list[int], cache, start: int) -> Readout:
        """Readout of `query_ids` continuing a prepared KV cache whose next position is `start` (batch 1)."""
        return self.readouts(continue_on_cache(self.model, cache, query_ids, start)[-1:])[0]

    def score_many_on_kv(
        self,
        kv_of: Callable[[int], KV],
        n_cached: Sequence[int],
        queries: Sequence[Sequence[int]],
        start: int,
        desc: str = "cached",
    ) -> list[Readout]:
        """Batched `score_on_cache`: query i continuing its own KV `kv_of(i)` (`cached_passes`), in order."""
        passes = cached_passes(
            self.model,
            kv_of,
            n_cached,
            queries,
            start,
            self.tokenizer.pad_token_id,
            self.batch_size,
            self.max_batch_tokens,
            desc,
        )
        return self._in_order(passes, len(queries))

    def _in_order(self, passes, n: int) -> list[Readout]:
        """Readouts of batched `passes` ((indices, last logits [batch, vocab]) pairs) in input order."""
        out: list[Readout | None] = [None] * n
        for idx, logits in passes:
            for i, r in zip(idx, self.readouts(logits), strict=True):
                out[int(i)] = r
        return out
