"""Small causal transformers trained from scratch, with the representation measures followed over
training (docs/methods.md §2.4-2.5: two phases; larger models end more compressed).

The corpus is a dataset's text column tokenised with the prepared model's tokenizer and mapped to
its `vocab_size - 1` most frequent tokens (+ one UNK id, 0), so a toy model of a few hundred
thousand parameters can learn it on CPU. Each size is a GPT-2 (`transformers.GPT2LMHeadModel`)
trained with AdamW on random windows of the token stream; at log-spaced steps the held-out loss
and the four measures of every layer are computed on a fixed evaluation set of token windows
(labels: token id and left bigram; UNK tokens are left out of the label groups).

Cost per size: `steps` × one forward + backward of `batch_size × seq_len` tokens, plus
`n_checkpoints` × one forward of `eval_windows × seq_len` tokens and the histograms.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from iclscope.core.config import stable_hash
from iclscope.core.resume import log_spaced_steps
from iclscope.core.training import scratch_gpt2_config, train_from_scratch
from iclscope.methods.entropy.measures import EntropySettings, layer_measures, pair_labels
from iclscope.model.capture import residual_stream

log = logging.getLogger(__name__)

# the table of one size (docs/outputs.md): `range` the binning (`minmax` / `clipped`), `variant` the label
# type (`token`, `bigram`; iclscope.core.metrics's meaning), both empty for `eval_loss`
TOY_LM_COLUMNS = ["size", "step", "layer", "range", "variant", "metric", "value", "n_params"]


@dataclass(frozen=True)
class ToySize:
    name: str
    d_model: int
    n_layers: int
    n_heads: int

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(
                f"entropy.training.sizes '{self.name}': d_model {self.d_model} is not divisible by "
                f"n_heads {self.n_heads}"
            )


@dataclass(frozen=True)
class ToyTraining:
    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 64
    vocab_size: int = 2000
    lr: float = 1e-3
    eval_windows: int = 64
    n_checkpoints: int = 16
    seed: int = 0
    save_every: int = 200  # steps between resumable training states (a killed run restarts from the last)

    def checkpoint_steps(self) -> list[int]:
        return log_spaced_steps(self.steps, self.n_checkpoints)


def token_stream(texts: list[str], tokenizer, vocab_size: int) -> np.ndarray:
    """One int64 stream [n_tokens] of remapped ids: 0 = UNK / separator, 1.. = frequent tokens by rank."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [-1] for t in texts]
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])
    values, counts = np.unique(flat[flat >= 0], return_counts=True)
    keep = values[np.argsort(-counts, kind="stable")[: vocab_size - 1]]
    remap = np.zeros(int(values.max()) + 2, dtype=np.int64)
    remap[keep] = np.arange(1, len(keep) + 1)
    return remap[np.where(flat >= 0, flat, len(remap) - 1)]


def windows(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    """[len(starts), seq_len] token windows of the stream."""
    return torch.as_tensor(np.stack([stream[s : s + seq_len] for s in starts]))


def build_model(size: ToySize, vocab_size: int, seq_len: int, seed: int):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = scratch_gpt2_config(  # id 0 = UNK / text separator
        vocab_size=vocab_size, n_positions=seq_len, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads
    )
    return GPT2LMHeadModel(cfg)


@torch.no_grad()
def measure(model, eval_ids: torch.Tensor, settings: EntropySettings) -> tuple[float, list[dict]]:
    """Held-out loss and the measures of every layer's states on eval_ids [B, T]."""
    model.eval()
    out, resid = residual_stream(model, input_ids=eval_ids, labels=eval_ids)
    ids = eval_ids.reshape(-1).numpy()
    prev = np.concatenate([np.full((eval_ids.shape[0], 1), -1), eval_ids[:, :-1].numpy()], axis=1).reshape(-1)
    labels = {
        "token": np.where(ids > 0, ids, -1),
        "bigram": np.where((ids > 0) & (prev > 0), pair_labels(prev, ids), -1),
    }
    rows = []
    for layer, hidden in enumerate(resid):  # [B, T, d] each, index 0 = embeddings
        states = hidden.reshape(-1, hidden.shape[-1]).float().numpy()
        rows += [{"layer": layer, **r} for r in layer_measures(states, labels, settings)]
    model.train()
    return float(out.loss), rows


def train_and_measure(
    stream: np.ndarray,
    size: ToySize,
    run: ToyTraining,
    settings: EntropySettings,
    device: str = "cpu",
    resume_dir: Path | None = None,
    weights_dir: Path | None = None,
    stop_after: int | None = None,
) -> pd.DataFrame | None:
    """Train one size and return its table: TOY_LM_COLUMNS, one row per (step, layer, range, label type
    (`variant`), metric) and one `eval_loss` row per step; `n_params` the size's parameter count.

    With `weights_dir`, the model at every measured step is kept as `<weights_dir>/<size>/step<N>/`
    (save_pretrained: config.json + model.safetensors, loadable with GPT2LMHeadModel.from_pretrained),
    so the states behind each point of the curves can be re-analysed later.

    With `resume_dir`, the training state (weights, optimiser, sampler, rows so far) is written
    atomically every `run.save_every` steps to `<resume_dir>/<size>.pt` and a rerun with the same
    corpus and settings continues from it, to the same numbers as an uninterrupted run; the file
    is removed when the size is done. `stop_after` (tests) returns None at that step, as a kill would.
    """
    rng = np.random.default_rng(run.seed)
    n_eval = run.eval_windows * run.seq_len
    train, held_out = stream[:-n_eval], stream[-n_eval:]
    if len(train) < 10 * run.seq_len:
        raise ValueError(
            f"entropy.training: the corpus has {len(stream)} tokens; it needs well over "
            f"{n_eval + 10 * run.seq_len} (eval_windows × seq_len + training windows)"
        )
    eval_ids = torch.as_tensor(held_out.reshape(run.eval_windows, run.seq_len)).to(device)
    model = build_model(size, run.vocab_size, run.seq_len, run.seed).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=run.lr)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
        starts = rng.integers(0, len(train) - run.seq_len, size=run.batch_size)
        batch = windows(train, starts, run.seq_len).to(device)
        return model(batch, labels=batch).loss, {}

    def measure_rows(step: int) -> list[dict]:
        if weights_dir is not None:
            model.save_pretrained(Path(weights_dir) / size.name / f"step{step:06d}")
        eval_loss, measures = measure(model, eval_ids, settings)
        rows = [
            {"step": step, "layer": None, "range": None, "variant": None, "metric": "eval_loss", "value": eval_loss}
        ]
        for m in measures:
            rows += [
                {
                    "step": step,
                    "layer": m["layer"],
                    "range": m["range"],
                    "variant": m["label_type"],
                    "metric": k,
                    "value": v,
                }
                for k, v in m.items()
                if k not in ("layer", "range", "label_type")
            ]
        return rows

    digest = stable_hash(
        {
            "size": asdict(size),
            "run": asdict(run),
            "settings": asdict(settings),
            "corpus": hashlib.sha256(stream.tobytes()).hexdigest(),
            "columns": TOY_LM_COLUMNS,  # a state saved with rows of another layout is not resumed
        }
    )
    rows = train_from_scratch(
        model,
        optimiser,
        rng,
        loss_fn,
        measure_rows,
        run,
        state_path=Path(resume_dir) / f"{size.name}.pt" if resume_dir is not None else None,
        digest=digest,
        device=device,
        stop_after=stop_after,
        desc=f"toy LM {size.name}",
    )
    if rows is None:
        return None
    eval_loss = next(r["value"] for r in reversed(rows) if r["metric"] == "eval_loss")
    log.info("toy LM %s: final eval loss %.3f", size.name, eval_loss)
    n_params = sum(p.numel() for p in model.parameters())
    df = pd.DataFrame(rows)
    df.insert(0, "size", size.name)
    df["n_params"] = n_params
    return df[TOY_LM_COLUMNS]
