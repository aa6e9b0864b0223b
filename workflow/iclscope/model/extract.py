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
the last T - P columns run through the model (iclscope.model.shared_prefix). The query's attention
to the label columns is read by the one hook layer from the continuation's query and the cached
keys. Cost per prompt: the continuation's tokens (plus padding) instead of all T tokens.

Batching: iclscope.model.batching. The anchors' carrier prompts: iclscope.model.anchor_states.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from iclscope.core.atomic import partial_path, removed_when_disk_full
from iclscope.core.config import ModelSpec, stable_hash
from iclscope.core.store import SCHEMA_VERSION, ActivationWriter, shard_rows
from iclscope.core.tables import iter_list_column, read_meta, read_table
from iclscope.core.version import __version__
from iclscope.model.batching import make_batches, pad_lists
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Positions, Recorder, left_pad, recording
from iclscope.model.loading import load_model
from iclscope.model.shared_prefix import PrefixState, continuation_inputs, prefix_pass, shared_prefixes

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
    t0, cpu0 = time.perf_counter(), time.process_time()  # the work, prefix detection included (loading is not)
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
                            label, states[g] = prefix_pass(net, prefixes.tokens[g], positions=prefixes.label_pos[g])
                            label = label.cpu().numpy()  # [K, L+1, d]
                            check_finite({"prefix/resid/label": label}, dtype_name)
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
        "cpu_seconds": round(time.process_time() - cpu0, 2),  # this process's CPU time (every thread)
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "prefixes": 0 if prefixes is None else len(prefixes.tokens),
        "prefix_tokens": 0 if prefixes is None else int(sum(prefixes.lengths)),
    }
    log.info("extracted %s", summary)
    return summary
