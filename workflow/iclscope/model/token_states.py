"""Per-token residual states over a fixed text corpus, for the entropy measures (docs/methods.md §2).

File layout (N tokens of the corpus, L layers, d = d_model):

    attrs          model_id, model_sha, dtype, n_layers, d_model, dataset, corpus_sha256, complete
    /resid/tokens  [N, L+1, d] float16   residual stream at every token (index 0 = embeddings; the
                                         last is the final block's output before the final norm)
    /tokens/id     [N] int64             token id
    /tokens/prev   [N] int64             id of the token to the left (-1 at a sentence start)
    /tokens/sentence, /tokens/position [N] int64

Rows are in batch order (sentences batched by length), with their sentence index. Chunks are
(`CHUNK_TOKENS`, 1, d): reading one layer across all tokens touches only that layer's chunks,
so the measures read [N, d] per layer and never the whole file.

Cost: one forward pass over the corpus (`logits_to_keep=1`: the vocabulary head runs at one
position only) and N·(L+1)·d·2 bytes on disk (10,000 tokens of SmolLM2-135M: 357 MB before
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

from iclscope import __version__
from iclscope.core.atomic import written
from iclscope.core.config import ModelSpec, stable_hash
from iclscope.model.capture import input_device, left_pad, residual_stream
from iclscope.model.extract import make_batches
from iclscope.model.loading import load_model

log = logging.getLogger(__name__)

CHUNK_TOKENS = 1024


def build_corpus(texts: list[str], tokenizer, max_tokens: int, max_sentence_tokens: int,
                 seed: int = 0) -> list[list[int]]:
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


def extract_token_states(dataset_path: str | Path, model_dir: str | Path, out_path: str | Path, model: ModelSpec,
                         *, max_tokens: int, max_sentence_tokens: int, split: str | None = "train",
                         seed: int = 0) -> dict:
    """Write the residual stream at every token of the corpus (see the module docstring)."""
    table = pd.read_parquet(dataset_path)
    if split is not None and split in set(table["split"]):
        table = table[table["split"] == split]
    net, tokenizer, manifest = load_model(model_dir, model)
    corpus = build_corpus(table["text"].astype(str).tolist(), tokenizer, max_tokens, max_sentence_tokens, seed)
    lengths = np.array([len(c) for c in corpus])
    n, L1, d = int(lengths.sum()), manifest["n_layers"] + 1, manifest["d_model"]
    if n < 100:
        raise ValueError(f"entropy corpus from {dataset_path}: only {n} tokens; the measures need thousands "
                         "(raise entropy.max_tokens or use a dataset with more text)")
    dtype_name = str(next(net.parameters()).dtype).removeprefix("torch.")
    device = input_device(net)
    t0 = time.perf_counter()
    with written(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"model_id": model.name, "model_sha": manifest["weights_sha256"], "dtype": dtype_name,
                            "n_layers": L1 - 1, "d_model": d, "dataset": str(dataset_path),
                            "corpus_sha256": stable_hash(corpus, length=64), "iclscope_version": __version__,
                            "complete": False})
            resid = f.create_dataset("resid/tokens", (n, L1, d), dtype=np.float16,
                                     chunks=(min(CHUNK_TOKENS, n), 1, d), compression="lzf")
            columns = {name: np.empty(n, dtype=np.int64) for name in ("id", "prev", "sentence", "position")}
            row = 0
            batches = make_batches(lengths, model.batch_size, model.max_batch_tokens)
            for batch in tqdm(batches, desc=f"token states {model.name}", unit="batch"):
                ids, mask, pos_ids = left_pad([corpus[i] for i in batch], tokenizer.pad_token_id, device)
                with torch.inference_mode():
                    _, layers = residual_stream(net, input_ids=ids, attention_mask=mask, position_ids=pos_ids,
                                                logits_to_keep=1)
                hidden = torch.stack(layers, dim=2)  # [B, T, L+1, d]
                # [tokens in batch, L+1, d], row-major = sentence order
                states = hidden[mask.bool()].float().cpu().numpy()
                resid[row:row + len(states)] = states.astype(np.float16)
                for i in batch:
                    ids_i = np.asarray(corpus[i])
                    span = slice(row, row + len(ids_i))
                    columns["id"][span] = ids_i
                    columns["prev"][span] = np.concatenate([[-1], ids_i[:-1]])
                    columns["sentence"][span] = i
                    columns["position"][span] = np.arange(len(ids_i))
                    row += len(ids_i)
            for name, values in columns.items():
                f.create_dataset(f"tokens/{name}", data=values)
            f.attrs["complete"] = True
    seconds = time.perf_counter() - t0
    summary = {"sentences": len(corpus), "tokens": n, "seconds": round(seconds, 1),
               "tokens_per_second": round(n / seconds, 1)}
    log.info("token states %s", summary)
    return summary

