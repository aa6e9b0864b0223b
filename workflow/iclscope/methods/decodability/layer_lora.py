"""LoRA on the first n vs the last n transformer blocks (Han et al., docs/methods.md §4.5).

One adapter per arm ("first": blocks 0..n-1, "last": blocks L-n..L-1, the same parameter
budget) is fine-tuned on k-shot prompts of a generation task family, then merged into the
weights and saved as a model directory with a manifest like `prepare_model` writes; the
existing `extract()` then runs the dataset's prompts through it, and the existing decodability
(iclscope.methods.decodability.knn) and accuracy (iclscope.methods.icl) code measure it against the base model.

Training data: `n_train` prompts built from the *train* split with the dataset's template,
k = `shots` (default: the smallest shot count >= 1 of its prompt sets), tasks taken in turn, the demonstrations
being other train rows of the query's task. The Null task is left out: its answers are random
(random bits / a random other word), so there is nothing in them to learn and their loss would
only add noise; it stays in the evaluation. The loss is the next-token cross-entropy on the
answer tokens of the query only (the answer and the separator that ends it: exact-match scoring
reads the greedy continuation up to that separator), never on the prompt. Only those positions
reach the vocabulary head (`logits_to_keep`), so a step costs about one forward/backward pass of
the body over `batch_size` short prompts (1-shot words: ~12 tokens each). Gradients flow back
only to the first adapted block, so the "last" arm's backward pass is shorter than the "first".
Evaluation is one extraction of the dataset's prompts per arm (as for the base model).

Training is deterministic for a seed and resumes from `checkpoint_dir` (iclscope.model.lora).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from iclscope.core.config import ConfigError, DatasetSpec, ModelSpec
from iclscope.model.blocks import input_device
from iclscope.model.capture import left_pad
from iclscope.model.loading import load_model
from iclscope.model.lora import attach_lora, train_loop, trainable_parameters
from iclscope.model.models import MANIFEST, describe, file_digest, weight_files
from iclscope.model.prompts import LABEL, SEPARATOR, Piece, assemble, tokenize_pieces

log = logging.getLogger(__name__)

ARMS = ("first", "last")
NULL_TASK = "Null"


@dataclass(frozen=True)
class LayerLoRASettings:
    n_layers: int | None = None  # adapted blocks per arm; None = a third of the depth (paper: 10 of 32)
    shots: int | None = None  # demonstrations per training prompt; None = the dataset's smallest shot count >= 1
    steps: int = 24
    batch_size: int = 8
    lr: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    n_train: int = 192
    n_monitor: int = 48  # fresh train-split prompts whose answer loss is measured before and after
    checkpoint_every: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.n_layers is not None and self.n_layers < 1:
            raise ConfigError(f"layer_lora.n_layers must be >= 1 or null (got {self.n_layers})")
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"layer_lora.shots must be >= 1 or null (got {self.shots})")
        if self.n_train < self.batch_size:
            raise ConfigError(
                f"layer_lora.n_train ({self.n_train}) must be at least layer_lora.batch_size ({self.batch_size})"
            )


def n_adapted(settings: LayerLoRASettings, n_layers: int) -> int:
    """Blocks per arm: settings.n_layers, or a third of the depth (at least 1)."""
    n = settings.n_layers if settings.n_layers is not None else max(1, n_layers // 3)
    if n > n_layers:
        raise ConfigError(f"layer_lora.n_layers is {n} but the model has {n_layers} layers")
    return n


def adapter_layers(arm: str, n: int, n_layers: int) -> list[int]:
    """0-based block indices of an arm: first -> 0..n-1, last -> L-n..L-1."""
    if arm == "first":
        return list(range(n))
    if arm == "last":
        return list(range(n_layers - n, n_layers))
    raise ValueError(f"unknown layer_lora arm {arm!r}; use one of {ARMS}")


def train_shots(spec: DatasetSpec, shots: int | None = None) -> int:
    """Demonstrations per training prompt: `shots`, or the dataset's smallest shot count >= 1."""
    if shots is not None:
        return shots
    shots = [s for s in spec.prompts.shots if s >= 1]
    if not shots:
        raise ConfigError(
            f"config key 'datasets.{spec.name}.prompts.shots': layer_lora trains on k-shot prompts "
            "and needs a shot count >= 1"
        )
    return min(shots)


def prompts_at_shots(prompts_path: str | Path, out_path: str | Path, shots: int) -> int:
    """Copy the prompt sets of `shots` demonstrations (the count LoRA trains at) to `out_path`.

    The merged models are extracted on these alone: the other shot counts would cost a forward
    pass per prompt and arm for numbers no arm was trained for. Returns the number of prompts.
    """
    from iclscope.core.tables import read_meta, read_table, write_table

    table = read_table(prompts_path)
    kept = table[table["shots"] == shots]
    if kept.empty:
        raise ConfigError(
            f"{prompts_path} has no {shots}-shot prompts (it has {sorted(set(table['shots']))}); "
            "set layer_lora.shots to one of the dataset's prompts.shots"
        )
    write_table(kept.reset_index(drop=True), out_path, read_meta(prompts_path))
    return len(kept)


def training_examples(df: pd.DataFrame, spec: DatasetSpec, tokenizer, n: int, shots: int, seed: int) -> list[dict]:
    """`n` k-shot prompts + answer from the train split, non-Null tasks in turn, seeded.

    Each: input_ids (prompt, answer, closing separator), answer_start (first answer token),
    n_answer (tokens from answer_start to the end: what the loss scores), task, row_id.
    """
    train = df[df["split"] == "train"]
    tasks = sorted(t for t in train["task"].unique() if t != NULL_TASK)
    if not tasks:
        raise ConfigError(f"dataset '{spec.name}' has no non-Null task in its train split for layer_lora")
    by_task = {t: train[train["task"] == t] for t in tasks}
    for t, rows in by_task.items():
        if len(rows) < shots + 1:
            raise ConfigError(
                f"dataset '{spec.name}': task '{t}' has {len(rows)} train rows; layer_lora needs "
                f"{shots} demonstrations + a query"
            )
    rng = np.random.default_rng(seed)
    p = spec.prompts
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        rows = by_task[task]
        picked = rows.iloc[rng.choice(len(rows), shots + 1, replace=False)]
        query, demos = picked.iloc[0], picked.iloc[1:]
        pieces = assemble(
            p.template, p.separator, [(r.text, spec.answer_prefix + r.label) for r in demos.itertuples()], query.text
        )
        pieces += [Piece(spec.answer_prefix + query.label, LABEL)] + (
            [Piece(p.separator, SEPARATOR)] if p.separator else []
        )
        rec = tokenize_pieces(tokenizer, pieces)
        start = rec["label_pos"][-1]
        out.append(
            {
                "input_ids": rec["input_ids"].tolist(),
                "answer_start": int(start),
                "n_answer": len(rec["input_ids"]) - int(start),
                "task": task,
                "row_id": int(query.row_id),
            }
        )
    return out


def answer_loss(net, batch: list[dict], pad_id: int) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the answer tokens of a batch (and their count).

    Rows are left-padded, so every answer ends in the last column: only the last m + 1 positions
    (m = the longest answer) reach the vocabulary head. logits [B, m, V] at positions T-m-1..T-2
    predict tokens T-m..T-1; in row b only its last n_answer[b] targets count.
    """
    device = input_device(net)
    ids, mask, pos = left_pad([b["input_ids"] for b in batch], pad_id, device)  # [B, T]
    m = max(b["n_answer"] for b in batch)
    logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=m + 1).logits[:, :-1]
    targets = ids[:, -m:].clone()  # [B, m]
    n_answer = torch.as_tensor([b["n_answer"] for b in batch], device=device)
    targets[torch.arange(m, device=device)[None, :] < (m - n_answer)[:, None]] = -100
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return loss, int(n_answer.sum())


@torch.inference_mode()
def mean_answer_loss(net, examples: list[dict], pad_id: int, batch_size: int) -> float:
    """Token-weighted mean answer loss over `examples` (eval mode: no dropout)."""
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    for lo in range(0, len(examples), batch_size):
        loss, n = answer_loss(net, examples[lo : lo + batch_size], pad_id)
        total, count = total + loss.item() * n, count + n
    net.train(was_training)
    return total / max(count, 1)


def save_merged(net, tokenizer, base_manifest: dict, out_dir: str | Path, name: str, lineage: dict) -> dict:
    """Merge the LoRA weights into the base weights (in place) and save a prepared model directory:
    `<out_dir>/weights/` (safetensors + tokenizer) and `<out_dir>/manifest.json` (written last).
    Loads with `loading.load_model(out_dir)`; about 2 × the parameters' bytes of disk (float32)."""
    out_dir = Path(out_dir)
    weights = out_dir / "weights"
    merged = net.merge_and_unload()
    merged.save_pretrained(weights, safe_serialization=True)
    tokenizer.save_pretrained(weights)
    manifest = {
        **{k: v for k, v in base_manifest.items() if k != "weights_path"},
        "name": name,
        "source": {"base": base_manifest["source"], **lineage},
        "weights_dir": "weights",
        "weights_sha256": file_digest(weight_files(weights)),
        **describe(merged.config),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def train_layer_lora(
    df: pd.DataFrame,
    spec: DatasetSpec,
    model_dir,
    model: ModelSpec,
    settings: LayerLoRASettings,
    arm: str,
    out_dir: str | Path,
    merged_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
) -> dict:
    """Fine-tune one arm; writes adapter/, train_log.parquet, summary.json to `out_dir` and, with
    `merged_dir`, the merged model directory. Checkpoints go to `checkpoint_dir` (default
    `<out_dir>/checkpoint`, removed when done); `stop_after` ends early (tests: a kill)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoint"
    if spec.kind != "generation":
        raise ConfigError(f"layer_lora needs a generation task family; '{spec.name}' is {spec.kind}")
    torch.manual_seed(settings.seed)
    base, tokenizer, manifest = load_model(model_dir, model)
    L = manifest["n_layers"]
    n = n_adapted(settings, L)
    layers = adapter_layers(arm, n, L)
    shots = train_shots(spec, settings.shots)
    train = training_examples(df, spec, tokenizer, settings.n_train, shots, settings.seed)
    monitor = training_examples(df, spec, tokenizer, settings.n_monitor, shots, settings.seed + 1)
    pad = tokenizer.pad_token_id

    net = attach_lora(base, r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout, layers=layers)
    before = mean_answer_loss(net, monitor, pad, model.batch_size)  # LoRA B = 0: the base model

    def loss_fn(batch):
        loss, n_tokens = answer_loss(net, batch, pad)
        return loss, {"answer_tokens": n_tokens}

    log_rows, seconds, end, _ = train_loop(
        net,
        train,
        loss_fn,
        settings,
        checkpoint=checkpoint,
        stop_after=stop_after,
        desc=f"lora {arm} {n} of {L} layers",
    )
    if end < settings.steps:
        return {"stopped_at": end}
    after = mean_answer_loss(net, monitor, pad, model.batch_size)
    net.save_pretrained(out_dir / "adapter")
    pd.DataFrame(log_rows).to_parquet(out_dir / "train_log.parquet")
    summary = {
        "arm": arm,
        "layers": layers,
        "n_layers": L,
        "shots": shots,
        "seed": settings.seed,
        "trainable_parameters": trainable_parameters(net),
        "answer_loss_before": before,
        "answer_loss_after": after,
        "train_seconds": round(seconds, 1),
        "steps": settings.steps,
        "tasks": sorted({x["task"] for x in train}),
        "settings": asdict(settings),
    }
    if merged_dir is not None:
        lineage = {"layer_lora": {"arm": arm, "layers": layers, "dataset": spec.name, "settings": asdict(settings)}}
        save_merged(net, tokenizer, manifest, merged_dir, f"{manifest['name']}-lora-{arm}", lineage)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(checkpoint, ignore_errors=True)
    log.info(
        "layer LoRA %s (blocks %d..%d): answer loss %.3f -> %.3f in %.1f s",
        arm,
        layers[0],
        layers[-1],
        before,
        after,
        seconds,
    )
    return summary


def summary_table(
    base_activations,
    runs: dict[str, tuple[str | Path, str | Path]],
    *,
    model: str,
    dataset: str,
    decodability: dict,
    n_boot: int = 0,
) -> pd.DataFrame:
    """Long-format table, condition (base / first / last) in `arm`: accuracy per task
    (seed × shots, + 'all') and its change against base, decodability per layer (overall and per
    task), the peak decodability and its layer, and the training facts of each arm (task empty;
    `adapted_block` rows list the blocks an arm adapted by the residual index they write, `layer`
    i + 1 for 0-based block i: the index the decodability rows use).

    `runs` maps arm -> (run directory, activation file of its merged model).
    """
    from iclscope.core.metrics import metric_frame
    from iclscope.methods.decodability.knn import decodability_table
    from iclscope.methods.icl import accuracy_table, predictions

    frames, acc_of, peak_of = [], {}, {}
    sources = {"base": base_activations, **{arm: act for arm, (_, act) in runs.items()}}
    for condition, path in sources.items():
        dec, _ = decodability_table(path, model=model, dataset=dataset, **decodability)
        preds, _ = predictions(path)
        acc = accuracy_table(preds, "generation", n_boot, model, dataset)
        acc = acc[acc.metric == "accuracy"]
        overall = dec[dec.task == "all"]
        peaks = overall.loc[overall.groupby(["metric", "seed", "shots"])["value"].idxmax()]
        peaks = peaks.assign(metric=peaks["metric"] + "_peak", ci_low=np.nan, ci_high=np.nan)
        acc_of[condition] = acc.set_index(["seed", "shots", "task"])["value"]
        peak_of[condition] = peaks.set_index(["metric", "seed", "shots"])["value"]
        frames += [df.assign(arm=condition) for df in (dec, acc, peaks)]
    rows = []
    for arm, (run_dir, _) in runs.items():
        # the arms are extracted at the training shot count only: base's other counts have no pair
        delta = (acc_of[arm] - acc_of["base"]).dropna()
        rows += [
            {"seed": s, "shots": k, "task": t, "arm": arm, "metric": "delta_accuracy", "value": v}
            for (s, k, t), v in delta.items()
        ]
        delta = (peak_of[arm] - peak_of["base"]).dropna()
        rows += [
            {"seed": s, "shots": k, "task": "all", "arm": arm, "metric": f"delta_{m}", "value": v}
            for (m, s, k), v in delta.items()
        ]
        s = json.loads((Path(run_dir) / "summary.json").read_text())
        common = {"arm": arm, "seed": s["seed"], "shots": s["shots"]}
        rows += [
            {**common, "metric": name, "value": float(s[key])}
            for name, key in (
                ("answer_loss_before", "answer_loss_before"),
                ("answer_loss_after", "answer_loss_after"),
                ("train_seconds", "train_seconds"),
                ("trainable_parameters", "trainable_parameters"),
            )
        ]
        rows += [{**common, "metric": "adapted_block", "layer": block + 1, "value": 1.0} for block in s["layers"]]
    frames.append(metric_frame(rows, model=model, dataset=dataset, position="query"))
    table = pd.concat(frames, ignore_index=True)
    return table.assign(family="layer_lora")
