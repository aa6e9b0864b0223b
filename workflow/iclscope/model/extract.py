"""Batched forward passes that stream activations into the HDF5 layout of iclscope.core.store.

Cost per prompt of T tokens: one forward pass of the body, plus O(L·T·d) to read the query's
attention row per layer and O(V) for the full-vocabulary logits at the query position only
(`logits_to_keep=1`: the 49k-vocabulary head is never applied to other positions). Generation
datasets add `max_new_tokens - 1` single-token steps on the KV cache.

Prompts are processed in windows of `window` prompts: sorted by length inside the window
(less padding), batched by `batch_size` and `max_batch_tokens`, and written as one block, so
memory is bounded by one window whatever the number of prompts, and a killed job resumes at
the last written window.

Shared prefixes (`shared_prefixes`): classification prompts of one seed and shot count carry the
same demonstrations, so their first tokens (up to the test input) are the same. That prefix runs
once, its label states are stored once (/prefix/resid/label) and its KV cache serves every prompt
that continues it: a batch is laid out exactly as the full prompts' left-padded batch, but its
first P columns come from the cache (each row's copy shifted right by that row's padding), so only
the last T - P columns run through the model. The query's attention to the label columns is read
by the one hook layer from the continuation's query and the cached keys. Cost per prompt: the
continuation's tokens (plus padding) instead of all T tokens.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from iclscope.core.atomic import partial_path, removed_when_disk_full, written
from iclscope.core.config import ModelSpec, stable_hash
from iclscope.core.store import SCHEMA_VERSION, ActivationWriter, shard_rows
from iclscope.core.tables import iter_list_column, read_meta, read_table
from iclscope.core.version import __version__
from iclscope.model.blocks import input_device
from iclscope.model.capture import (
    ATTN_IMPLEMENTATION,
    Positions,
    Recorder,
    full_kv_cache,
    left_pad,
    recording,
    residual_stream,
)
from iclscope.model.loading import load_model
from iclscope.model.prompts import carrier_prompts

log = logging.getLogger(__name__)

RESID_POSITIONS = ("query", "last_input", "content_mean", "label")
PROMPT_COLUMNS = [
    "prompt_id",
    "row_id",
    "split",
    "gold",
    "task",
    "answer",
    "seed",
    "shots",
    "n_tokens",
    "query_pos",
    "label_pos",
    "label_class",
    "demo_spans",
    "query_span",
]


@dataclass(frozen=True)
class ExtractSettings:
    """Everything besides model and prompts that changes an activation file."""

    store_dtype: str = "float16"
    topk: int = 10
    max_new_tokens: int = 8
    compression: str = "lzf"
    positions: tuple[str, ...] = RESID_POSITIONS
    window_batches: int = 8

    def __post_init__(self):
        unknown = set(self.positions) - set(RESID_POSITIONS)
        if unknown:
            raise ValueError(f"extract.positions: unknown {sorted(unknown)}; allowed {RESID_POSITIONS}")

    @classmethod
    def from_config(cls, extract_cfg: dict) -> ExtractSettings:
        keys = {"store_dtype", "topk", "max_new_tokens", "compression"}
        return cls(**{k: v for k, v in extract_cfg.items() if k in keys})


def params_digest(
    manifest: dict, model: ModelSpec, settings: ExtractSettings, dtype: str, label_storage: str = "prompt"
) -> str:
    """What a partial file must share to be resumed; `label_storage` ("prompt" | "prefix", with the
    store's schema) keeps a partial file of the other layout from being resumed into this one."""
    return stable_hash(
        {
            "weights": manifest["weights_sha256"],
            "dtype": dtype,
            "settings": asdict(settings),
            "iclscope": __version__,
            "device_map": model.device_map,
            "layout": [SCHEMA_VERSION, label_storage],
        },
        length=64,
    )


def pad_lists(values, width: int, fill: int = -1, inner: int | None = None) -> np.ndarray:
    """Ragged lists -> [N, width] (or [N, width, inner]) int32 padded with `fill`."""
    shape = (len(values), width) if inner is None else (len(values), width, inner)
    out = np.full(shape, fill, dtype=np.int32)
    for i, v in enumerate(values):
        v = np.asarray(list(v), dtype=np.int32)
        if len(v):
            out[i, : len(v)] = v
    return out


def make_batches(lengths: np.ndarray, batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Indices into `lengths`, sorted by length, cut into batches of bounded padded size."""
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (len(current) == batch_size or longest * (len(current) + 1) > max_batch_tokens):
            batches.append(np.array(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.array(current))
    return batches


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


@torch.inference_mode()
def run_prefix(model, tokens: np.ndarray, label_pos: np.ndarray, n_layers: int) -> tuple[np.ndarray, PrefixState]:
    """Run a prefix once: (label states [K, L+1, d] float32, its PrefixState)."""
    device = input_device(model)
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device)[None]
    label = torch.as_tensor(label_pos, dtype=torch.long, device=device)[None]
    rec = Recorder(n_layers, Positions(label, torch.zeros(1, 2, dtype=torch.long, device=device)), ("label",))
    cache = full_kv_cache()  # every position of every layer, sliding-window layers included
    with recording(model, rec):
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(ids.shape[1], device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    states = rec.resid["label"][0].cpu().numpy()
    check_finite({"prefix/resid/label": states}, str(out.logits.dtype).removeprefix("torch."))
    return states, PrefixState(ids.shape[1], cache)


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
def prefix_pass(model, tokens: np.ndarray, all_states: bool = False) -> tuple[torch.Tensor | None, PrefixState]:
    """Run a shared prefix once (batch 1, its KV cache at every layer): (its residual states
    [P, L+1, d] float32 at every position when `all_states`, else None; its PrefixState)."""
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


@torch.inference_mode()
def greedy_continue(
    model, past, first: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, steps: int
) -> torch.Tensor:
    """Greedy decoding on the KV cache of a prompt batch. first [B] -> tokens [B, steps]."""
    tokens = [first]
    last_pos = positions[:, -1]
    for step in range(1, steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=tokens[-1][:, None],
            attention_mask=mask,
            position_ids=(last_pos + step)[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def check_finite(arrays: dict[str, np.ndarray], model_dtype: str) -> None:
    """Residual states and logits must be finite: an inf/NaN there is the model's own overflow (float16
    above 65504), never stored silently. (Attention rows are NaN by design where a prompt has fewer
    demonstrations; a value float16 cannot *store* is the writer's OverflowError, core.store.)"""
    for name, values in arrays.items():
        if "resid/" not in name and not name.startswith("logits/"):
            continue
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            where = np.argwhere(~np.isfinite(values))[0]
            layer = f" at layer index {where[-2]}" if "resid/" in name and values.ndim >= 3 else ""
            raise FloatingPointError(
                f"{name}: the {model_dtype} forward pass produced non-finite values{layer}; float16 overflows above "
                "65504: run this model with dtype: bfloat16 or float32 (models.<name>.dtype)"
            )


def run_batch(
    model,
    tokenizer,
    rows: dict,
    settings: ExtractSettings,
    n_layers: int,
    label_token_ids: list[int],
    generate: bool,
    prefix: PrefixState | None = None,
) -> dict[str, np.ndarray]:
    """One forward pass over a batch of prompts; returns the stored arrays for those rows.

    With `prefix` (every row continues it) the first `prefix.length` columns come from its cache
    and the label states are not returned (they are the prefix's)."""
    device = input_device(model)
    ids, mask, pos_ids = left_pad(rows["input_ids"], tokenizer.pad_token_id, device)
    T = ids.shape[1]
    offset = torch.as_tensor(T - rows["n_tokens"], device=device)[:, None]  # left padding shift
    label = torch.as_tensor(rows["label_pos"], device=device)
    label = torch.where(label >= 0, label + offset, label)  # key columns: the full padded batch's
    span = torch.as_tensor(rows["query_span"], device=device) + offset
    K = label.shape[1]
    resid_names = tuple(p for p in settings.positions if p != "label" or (K > 0 and prefix is None))
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos_ids, "use_cache": generate}
    if prefix is not None:
        P = prefix.length
        span = span - P  # the test input's columns in the continuation (shared_prefixes ends P before it)
        inputs.update(continuation_inputs(prefix, ids, mask, pos_ids))
    rec = Recorder(n_layers, Positions(label, span), resid_names, read_attention=K > 0)
    with torch.inference_mode(), recording(model, rec):
        out = model(**inputs, logits_to_keep=1)
    logits = out.logits[:, -1].float()  # [B, V] at the query position
    top = logits.topk(settings.topk, dim=-1)
    result = {f"resid/{name}": value.cpu().numpy() for name, value in rec.resid.items()}
    if K > 0:
        result["attn/query_to_label"] = rec.attn.cpu().numpy()
    if label_token_ids:
        result["logits/label"] = logits[:, label_token_ids].cpu().numpy()
    result["logits/topk_ids"] = top.indices.int().cpu().numpy()
    result["logits/topk_values"] = top.values.cpu().numpy()
    check_finite(result, str(out.logits.dtype).removeprefix("torch."))
    if generate:
        tokens = (
            greedy_continue(model, out.past_key_values, logits.argmax(-1), mask, pos_ids, settings.max_new_tokens)
            .cpu()
            .numpy()
        )
        result["generation/tokens"] = tokens.astype(np.int32)
        # HDF5 variable-length strings cannot hold NUL, which a (fine-tuned, tiny) model can generate;
        # the token ids beside them keep the exact answer
        result["generation/text"] = np.array(
            [tokenizer.decode(t, skip_special_tokens=True).replace("\x00", "\ufffd") for t in tokens], dtype=object
        )
    return result


def extract(
    prompts_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    model: ModelSpec,
    settings: ExtractSettings,
    shard: tuple[int, int] = (1, 1),
    share_prefixes: bool = True,
) -> dict:
    """Extract activations for the prompts (shard (i, n): the i-th of n row ranges) into `out_path`.

    Prompts that share their demonstration prefix run it once (`shared_prefixes`; module
    docstring); `share_prefixes=False` runs every prompt whole (the reference the equality tests
    and benchmarks compare with). Resumes `<out_path>.partial` when it was written with the same
    prompts and parameters. Returns a small summary (prompts, tokens, seconds, tokens/s, prefixes).
    """
    # every column but the token ids (streamed window by window below) and text / format_pos /
    # demo_ids (not stored): memory stays flat in the number of prompts
    table = read_table(prompts_path, columns=PROMPT_COLUMNS)
    meta = read_meta(prompts_path)
    lo, hi = shard_rows(len(table), *shard)
    table = table.iloc[lo:hi].reset_index(drop=True)
    n = len(table)
    net, tokenizer, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    n_layers = manifest["n_layers"]
    generate = meta["kind"] == "generation"
    label_ids = meta["label_token_ids"]
    K = int(table["label_pos"].map(len).max()) if n else 0
    prompts = {
        "prompt_id": table["prompt_id"].to_numpy(np.int64),
        "row_id": table["row_id"].to_numpy(np.int64),
        "split": table["split"].astype(str).to_numpy(object),
        "gold": table["gold"].to_numpy(np.int32),
        "task": table["task"].astype(str).to_numpy(object),
        "answer": table["answer"].astype(str).to_numpy(object),
        "seed": table["seed"].to_numpy(np.int64),
        "shots": table["shots"].to_numpy(np.int32),
        "n_tokens": table["n_tokens"].to_numpy(np.int32),
        "query_pos": table["query_pos"].to_numpy(np.int32),
        "label_pos": pad_lists(table["label_pos"], K),
        "label_class": pad_lists(table["label_class"], K),
        "demo_spans": pad_lists([list(map(list, s)) for s in table["demo_spans"]], K, inner=2),
        "query_span": np.stack(table["query_span"].map(np.asarray)).astype(np.int32),
    }
    t0 = time.perf_counter()  # the work, prefix detection included (model loading is not)
    prefixes = (
        shared_prefixes(prompts, itertools.islice(iter_list_column(prompts_path, "input_ids", start=lo), n))
        if share_prefixes and meta["kind"] == "classification"
        else None
    )
    if prefixes is not None:
        prompts["prefix_index"] = prefixes.index.astype(np.int32)
    layout = {
        "n": n,
        "n_layers": n_layers,
        "d_model": manifest["d_model"],
        "n_heads": manifest["n_heads"],
        "max_demos": K,
        "n_classes": len(label_ids),
        "topk": settings.topk,
        "max_new_tokens": settings.max_new_tokens if generate else 0,
        "store_dtype": settings.store_dtype,
        "positions": settings.positions,
        "prefix_tokens": None if prefixes is None else prefixes.lengths,
    }
    dtype_name = str(next(net.parameters()).dtype).removeprefix("torch.")
    attrs = {
        "model_id": model.name,
        "model_source": str(manifest["source"]),
        "model_revision": str(manifest.get("revision") or ""),
        "model_sha": manifest["weights_sha256"],
        "dtype": dtype_name,
        "store_dtype": settings.store_dtype,
        "n_layers": n_layers,
        "d_model": manifest["d_model"],
        "n_heads": manifest["n_heads"],
        "dataset": meta["dataset"],
        "kind": meta["kind"],
        "classes": list(meta["classes"]),
        "label_words": list(meta["label_words"]),
        "label_token_ids": list(label_ids),
        "rows": [lo, hi],
        "prompts_sha256": meta["prompts_sha256"],
        "params_sha256": params_digest(
            manifest, model, settings, dtype_name, "prompt" if prefixes is None else "prefix"
        ),
        "iclscope_version": __version__,
    }
    with removed_when_disk_full(partial_path(out_path), out_path):
        writer = ActivationWriter(out_path, layout, attrs, prompts, settings.compression)
        window = model.batch_size * settings.window_batches
        lengths = prompts["n_tokens"]
        start_at = writer.n_done
        if start_at:
            log.info("resuming %s at prompt %d of %d", writer.tmp, start_at, n)
        tokens = 0
        token_ids = iter_list_column(prompts_path, "input_ids", start=lo + start_at)
        states: dict[int, PrefixState] = {}  # the prefixes of the current window, run once each
        try:
            with tqdm(total=n, initial=start_at, desc=f"extract {model.name}/{meta['dataset']}", unit="prompt") as bar:
                for w0 in range(start_at, n, window):
                    w1 = min(n, w0 + window)
                    window_ids = list(itertools.islice(token_ids, w1 - w0))
                    block: dict[str, np.ndarray] = {}
                    groups = np.zeros(w1 - w0, dtype=np.int64) if prefixes is None else prefixes.index[w0:w1]
                    states = {g: state for g, state in states.items() if g in groups}
                    work = []  # (batch of window rows, prefix state or None)
                    for g in np.unique(groups):
                        members = np.flatnonzero(groups == g)
                        if prefixes is not None and g not in states:
                            label, states[g] = run_prefix(net, prefixes.tokens[g], prefixes.label_pos[g], n_layers)
                            if "prefix/resid/label" in writer.file:
                                writer.write_prefix(int(g), label)
                        # a continuation's tokens are what runs: the token budget counts those (the cached
                        # prefix adds keys, [B, Hkv, P, dh] a layer, not activations)
                        run_lengths = lengths[w0:w1][members] - (0 if prefixes is None else len(prefixes.tokens[g]))
                        work += [
                            (members[b], states.get(g))
                            for b in make_batches(run_lengths, model.batch_size, model.max_batch_tokens)
                        ]
                    for batch, state in work:
                        idx = batch + w0
                        batch_rows = {
                            "input_ids": [window_ids[i] for i in batch],
                            "n_tokens": lengths[idx],
                            "label_pos": prompts["label_pos"][idx],
                            "query_span": prompts["query_span"][idx],
                        }
                        result = run_batch(
                            net, tokenizer, batch_rows, settings, n_layers, label_ids, generate, prefix=state
                        )
                        for name, values in result.items():
                            if name not in block:
                                block[name] = np.empty((w1 - w0, *values.shape[1:]), dtype=values.dtype)
                            block[name][batch] = values
                        tokens += int(lengths[idx].sum())
                        bar.update(len(idx))
                    writer.write(w0, block)
            writer.commit()
        finally:
            writer.close()
    seconds = time.perf_counter() - t0
    summary = {
        "prompts": n,
        "resumed_at": start_at,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "prefixes": 0 if prefixes is None else len(prefixes.tokens),
        "prefix_tokens": 0 if prefixes is None else int(sum(prefixes.lengths)),
    }
    log.info("extracted %s", summary)
    return summary


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
