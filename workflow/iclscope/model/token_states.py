"""Per-token residual states over a fixed text corpus, for the entropy measures (docs/methods.md §2).

File layout (N tokens of the corpus, L layers, d = d_model):

    attrs          model_id, model_sha, dtype, n_layers, d_model, dataset, corpus_sha256, complete,
                   store_dtype (float16; float32 when a state exceeds float16's range: overflow_float16
                   then says where), rows_done / batches_done (resume)
    /resid/tokens  [N, L+1, d] float16   residual stream at every token (index 0 = embeddings; the
                                         last is the final block's output before the final norm)
    /tokens/id     [N] int64             token id
    /tokens/prev   [N] int64             id of the token to the left (-1 at a sentence start)
    /tokens/sentence, /tokens/position [N] int64

Rows are in batch order (sentences batched by length), with their sentence index. Chunks are
(`CHUNK_TOKENS`, 1, d): reading one layer across all tokens touches only that layer's chunks,
so the measures read [N, d] per layer and never the whole file.

Cost: one forward pass over the corpus (`logits_to_keep=1`: the vocabulary head runs at one
position only; the tokens every sentence begins with run once, `extract_token_states`) and
N·(L+1)·d·2 bytes on disk (10,000 tokens of SmolLM2-135M: 357 MB before
compression). Memory: one batch of states.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from iclscope.core.atomic import commit, partial_path, removed_when_disk_full
from iclscope.core.config import ModelSpec, stable_hash
from iclscope.core.version import __version__
from iclscope.model.batching import make_batches
from iclscope.model.blocks import input_device
from iclscope.model.capture import left_pad, residual_stream
from iclscope.model.loading import load_model
from iclscope.model.shared_prefix import PrefixState, common_prefix, continuation_inputs, prefix_columns, prefix_pass

log = logging.getLogger(__name__)

CHUNK_TOKENS = 1024


def build_corpus(
    texts: list[str], tokenizer, max_tokens: int, max_sentence_tokens: int, seed: int = 0
) -> list[list[int]]:
    """Token id lists of seeded-shuffled texts, each cut at `max_sentence_tokens`, until `max_tokens`."""
    if not texts:
        raise ValueError("entropy corpus: the dataset has no text rows")
    order = np.random.default_rng(seed).permutation(len(texts))
    corpus, total = [], 0
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=True)["input_ids"][:max_sentence_tokens]
        if len(ids) < 2:
            continue
        ids = ids[: max_tokens - total]
        corpus.append(ids)
        total += len(ids)
        if total >= max_tokens:
            break
    return corpus


def extract_token_states(
    dataset_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    model: ModelSpec,
    *,
    max_tokens: int,
    max_sentence_tokens: int,
    split: str | None = "train",
    seed: int = 0,
    stop_after: int | None = None,
    share_prefixes: bool = True,
) -> dict:
    """Write the residual stream at every token of the corpus (see the module docstring).

    Resumable like extraction (iclscope.model.extract): rows are written batch by batch into
    `<out_path>.partial`, whose `rows_done` attribute a killed job's next attempt resumes from when
    the partial file was written with the same model, dtype, corpus and code version.
    States beyond float16's range (|x| > 65504, e.g. the massive activations of some large models)
    are never stored as a silent inf: the file is written in float32 instead and says so
    (attrs store_dtype, overflow_float16). A non-finite state from the model's own forward pass (an
    fp16 overflow inside the model) is an error naming the layer. `stop_after` (tests: a kill) ends
    after that many batches, leaving the partial file.

    Tokens every sentence of the corpus begins with (`corpus_prefix`: a BOS token, a shared opening)
    run once; their KV cache serves every batch, which computes only its columns after them (the
    prefix path of iclscope.model.shared_prefix), and their states are copied into each sentence's rows.
    `share_prefixes=False` runs every sentence whole (the reference of the equality tests).
    """
    table = pd.read_parquet(dataset_path)
    if split is not None and split in set(table["split"]):
        table = table[table["split"] == split]
    net, tokenizer, manifest = load_model(model_dir, model)
    corpus = build_corpus(table["text"].astype(str).tolist(), tokenizer, max_tokens, max_sentence_tokens, seed)
    lengths = np.array([len(c) for c in corpus])
    n = int(lengths.sum())
    if n < 100:
        raise ValueError(
            f"entropy corpus from {dataset_path}: only {n} tokens; the measures need thousands "
            "(raise entropy.max_tokens or use a dataset with more text)"
        )
    dtype_name = str(next(net.parameters()).dtype).removeprefix("torch.")
    attrs = {
        "model_id": model.name,
        "model_sha": manifest["weights_sha256"],
        "dtype": dtype_name,
        "n_layers": manifest["n_layers"],
        "d_model": manifest["d_model"],
        "dataset": str(dataset_path),
        "corpus_sha256": stable_hash(corpus, length=64),
        "iclscope_version": __version__,
    }
    batches = make_batches(lengths, model.batch_size, model.max_batch_tokens)
    t0 = time.perf_counter()
    prefix = run_corpus_prefix(net, corpus) if share_prefixes else None
    tmp = partial_path(out_path)
    with removed_when_disk_full(tmp, out_path):
        try:
            done = _write_states(
                net, tokenizer, corpus, batches, tmp, attrs, np.float16, model.name, stop_after, prefix
            )
        except Float16Overflow as exc:
            log.warning("token states: %s; the file is written in float32 (twice the disk)", exc)
            tmp.unlink(missing_ok=True)
            done = _write_states(
                net,
                tokenizer,
                corpus,
                batches,
                tmp,
                {**attrs, "overflow_float16": str(exc)},
                np.float32,
                model.name,
                stop_after,
                prefix,
            )
        if done < len(batches):
            return {"stopped_after_batches": done}
        commit(tmp, out_path)
    seconds = time.perf_counter() - t0
    summary = {
        "sentences": len(corpus),
        "tokens": n,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(n / seconds, 1),
        "prefix_tokens": 0 if prefix is None else prefix[1].length,
    }
    log.info("token states %s", summary)
    return summary


def corpus_prefix(corpus: list[list[int]]) -> np.ndarray:
    """The tokens every sentence begins with, cut before each sentence's last token (every batch has
    a column to compute after them); empty when the sentences share none."""
    common = common_prefix(corpus)
    return common[: max(0, min(min(len(c) for c in corpus) - 1, len(common)))]


def run_corpus_prefix(net, corpus: list[list[int]]) -> tuple[torch.Tensor, PrefixState] | None:
    """The corpus prefix run once: (its states [P, L+1, d] float32, its PrefixState); None: none shared."""
    tokens = corpus_prefix(corpus)
    return prefix_pass(net, tokens, all_states=True) if len(tokens) else None


def batch_states(net, ids, mask, pos_ids, prefix: tuple[torch.Tensor, PrefixState] | None = None) -> np.ndarray:
    """Residual states of a left-padded batch [B, T] at its real tokens -> [tokens, L+1, d] float32
    (row-major: sentence by sentence). With `prefix` the model computes only the columns after it
    (every row begins with it) and the prefix's own columns are its stored states, shifted into
    each row's padded coordinates."""
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos_ids, "logits_to_keep": 1}
    if prefix is not None:
        inputs.update(continuation_inputs(prefix[1], ids, mask, pos_ids))
    with torch.inference_mode():
        _, layers = residual_stream(net, **inputs)
    states = torch.stack([h.float().cpu() for h in layers], dim=2)  # [B, T (or T - P), L+1, d]
    if prefix is not None:
        states = torch.cat([prefix_columns(prefix[0].cpu(), (mask == 0).sum(1).cpu()), states], dim=1)
    return states[mask.bool().cpu()].numpy()


FLOAT16_MAX = float(np.finfo(np.float16).max)


class Float16Overflow(ValueError):
    """A residual state beyond float16's range: the file is stored in float32 instead."""


def _write_states(
    net,
    tokenizer,
    corpus: list[list[int]],
    batches: list[np.ndarray],
    tmp: Path,
    attrs: dict,
    store_dtype,
    name: str,
    stop_after: int | None,
    prefix: tuple[torch.Tensor, PrefixState] | None = None,
) -> int:
    """Write (or resume) `tmp` batch by batch; returns the number of batches written."""
    lengths = np.array([len(c) for c in corpus])
    n, L1, d = int(lengths.sum()), attrs["n_layers"] + 1, attrs["d_model"]
    attrs = {**attrs, "store_dtype": np.dtype(store_dtype).name}
    f = _open_or_resume(tmp, attrs)
    if f is None:
        f = _create(tmp, attrs, corpus, batches, (n, L1, d), store_dtype)
    try:
        done = int(f.attrs["batches_done"])
        if done:
            log.info(
                "resuming %s after batch %d of %d (rows 0..%d are not recomputed)",
                tmp,
                done,
                len(batches),
                int(f.attrs["rows_done"]),
            )
        resid = f["resid/tokens"]
        device = input_device(net)
        row = int(f.attrs["rows_done"])
        end = len(batches) if stop_after is None else min(len(batches), stop_after)
        for b in tqdm(range(done, end), desc=f"token states {name}", unit="batch", initial=done, total=len(batches)):
            batch = batches[b]
            ids, mask, pos_ids = left_pad([corpus[i] for i in batch], tokenizer.pad_token_id, device)
            states = batch_states(net, ids, mask, pos_ids, prefix)  # [tokens in batch, L+1, d] float32
            check_states(states, store_dtype, attrs["dtype"], name)
            resid[row : row + len(states)] = states.astype(store_dtype)
            row += len(states)
            f.attrs.update({"rows_done": row, "batches_done": b + 1})
            f.flush()
        if end == len(batches):
            f.attrs["complete"] = True
        return end
    finally:
        f.close()


def check_states(states: np.ndarray, store_dtype, model_dtype: str, name: str) -> None:
    """states [tokens, L+1, d] float32: a non-finite value (the model's own overflow) is an error; values
    float16 cannot hold raise Float16Overflow when storing in float16."""
    finite = np.isfinite(states)
    if not finite.all():
        layer = int(np.argwhere(~finite)[0][1])
        raise ValueError(
            f"token states of model '{name}': the {model_dtype} forward pass produced non-finite "
            f"residual states (first at layer index {layer}); float16 overflows above 65504: run "
            f"this model with dtype: bfloat16 or float32 (models.{name}.dtype)"
        )
    if np.dtype(store_dtype) == np.float16:
        peak = float(np.abs(states).max(initial=0))
        if peak > FLOAT16_MAX:
            layer = int(np.abs(states).max(axis=(0, 2)).argmax())
            raise Float16Overflow(
                f"a residual state of {peak:.4g} at layer index {layer} exceeds float16's {FLOAT16_MAX:.0f}"
            )


def _open_or_resume(tmp: Path, attrs: dict):
    """The partial file opened for appending when it was written with the same attrs, else None (removed)."""
    if not tmp.exists():
        return None
    try:
        f = h5py.File(tmp, "a")
    except OSError:  # torn by a kill mid-write
        log.info("discarding %s: unreadable", tmp)
        tmp.unlink()
        return None
    if all(f.attrs.get(k) == v for k, v in attrs.items()) and "batches_done" in f.attrs:
        return f
    f.close()
    log.info("discarding %s: written with another model, corpus or dtype", tmp)
    tmp.unlink()
    return None


def _create(tmp: Path, attrs: dict, corpus: list[list[int]], batches: list[np.ndarray], shape: tuple, store_dtype):
    """A new partial file: attrs, the token columns (known from the corpus), an empty state array."""
    n = shape[0]
    columns = {name: np.empty(n, dtype=np.int64) for name in ("id", "prev", "sentence", "position")}
    row = 0
    for batch in batches:
        for i in batch:
            ids_i = np.asarray(corpus[i])
            span = slice(row, row + len(ids_i))
            columns["id"][span] = ids_i
            columns["prev"][span] = np.concatenate([[-1], ids_i[:-1]])
            columns["sentence"][span] = i
            columns["position"][span] = np.arange(len(ids_i))
            row += len(ids_i)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(tmp, "w")
    f.attrs.update({**attrs, "complete": False, "rows_done": 0, "batches_done": 0})
    f.create_dataset(
        "resid/tokens", shape, dtype=store_dtype, chunks=(min(CHUNK_TOKENS, n), 1, shape[2]), compression="lzf"
    )
    for name, values in columns.items():
        f.create_dataset(f"tokens/{name}", data=values)
    f.flush()
    return f
