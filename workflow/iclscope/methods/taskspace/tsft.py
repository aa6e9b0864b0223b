"""TS-FT: LoRA fine-tuning with a task-space-guided loss, against the same run with λ = 0.

A reconstruction of Yang et al. 2025 (docs/methods.md §1.5). Per example:

    L = CE(label-restricted logits at the answer position, gold)
        + λ · [ −log softmax_c( cos(B (h_l*[q] − μ), â_c) / τ )[gold] ]

(or a scale-free squared distance instead of the cosine, see `space_loss`), with B, μ, â the
frozen task space of layer l* (iclscope.methods.taskspace.space) and h_l*[q] the residual
state at the query position entering block l* (resid index l*). Only the answer position is
scored (`logits_to_keep=1`): the 49k-vocabulary head is never applied elsewhere, which is what
makes tens of steps affordable on a CPU (docs/methods.md §8).

Rows (docs/methods.md §1.5): the `n_test` test prompts and the `n_val` validation prompts are
drawn with the dataset's seed, so they are the same for every run seed and arm (the arms pair over
prompts and seeds); the `n_train` training prompts are drawn with the run seed from the train
split without the validation rows. The held-out label cross-entropy and space loss of the
validation prompts are evaluated at step 0, every `eval_every` steps and at the end
(`eval_log.parquet`): the loss curve, where the per-step training losses are single batches.

Training is deterministic for a seed and resumable: every `checkpoint_every` steps the adapter,
optimizer state, step and both logs are written atomically to `checkpoint_dir` (Snakemake jobs:
outside the output directory, keyed by the job's settings, iclscope.core.resume.checkpoint_dir;
default `<out>/checkpoint/`); a rerun continues from there and, because batch order and dropout are
derived from (seed, step), reproduces the training and evaluation logs of an uninterrupted run.
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
from iclscope.methods.icl import macro_f1
from iclscope.methods.taskspace.space import TaskSpace, fit_task_space
from iclscope.model.batching import token_batches
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION, Recorder, left_pad, no_positions, recording
from iclscope.model.loading import load_model
from iclscope.model.lora import attach_lora, train_loop, trainable_parameters
from iclscope.model.prompts import assemble, balanced_sample, label_token_ids, tokenize_pieces

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TSFTSettings:
    lam: float = 0.5  # λ of the space loss (the baseline arm uses 0)
    tau: float = 0.1
    similarity: str = "distance"  # distance | cosine (see space_loss)
    layer: int | None = None  # l*; None = middle layer
    steps: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    n_train: int = 240
    n_val: int = 64  # held-out train-split prompts (disjoint from the training rows) of the loss curve
    n_test: int = 200
    eval_every: int = 10  # held-out evaluation every this many steps (and at step 0 and at the end)
    checkpoint_every: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.lam < 0 or self.tau <= 0:
            raise ConfigError(f"tsft: lam must be >= 0 and tau > 0 (got {self.lam}, {self.tau})")
        if self.eval_every < 1:
            raise ConfigError(f"tsft.eval_every must be >= 1 (got {self.eval_every})")


def zero_shot_examples(tokenizer, spec: DatasetSpec, rows: pd.DataFrame) -> list[dict]:
    classes = spec.class_names
    out = []
    for r in rows.itertuples():
        rec = tokenize_pieces(tokenizer, assemble(spec.prompts.template, spec.prompts.separator, [], r.text))
        out.append({"input_ids": rec["input_ids"].tolist(), "gold": classes.index(r.label)})
    return out


def space_tensors(space: TaskSpace, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return f(space.basis), f(space.mean), f(space.prototypes)


def space_loss(
    h: torch.Tensor,
    basis,
    mean,
    prototypes,
    gold: torch.Tensor,
    tau: float,
    similarity: str = "distance",
    reduction: str = "mean",
) -> torch.Tensor:
    """h [B, d] -> mean (or sum) over the batch of −log softmax_c(sim(B(h−μ), â_c)/τ)[gold].

    similarity "cosine" is docs/methods.md §1.5 as written; it is constant (±1) and has no gradient
    when the space is one-dimensional, which every binary task gives (k ≤ C−1). "distance"
    (the default) uses −||z − â_c||² / mean_c ||â_c||², scale-free and smooth in any k.
    """
    z = (h.float() - mean) @ basis.T  # [B, k]
    if similarity == "cosine":
        sim = F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).T  # [B, C]
    elif similarity == "distance":
        scale = (prototypes**2).sum(-1).mean().clamp(min=1e-12)
        sim = -(torch.cdist(z, prototypes) ** 2) / scale
    else:
        raise ValueError(f"unknown similarity {similarity!r}")
    return F.cross_entropy(sim / tau, gold, reduction=reduction)


def forward_batch(model, tokenizer, batch: list[dict], label_ids: torch.Tensor, layer: int, n_layers: int):
    """Label-restricted logits [B, C] at the answer position and the layer-l* query state [B, d]."""
    device = label_ids.device
    ids, mask, pos = left_pad([b["input_ids"] for b in batch], tokenizer.pad_token_id, device)
    rec = Recorder(n_layers, no_positions(len(batch), device), ("query",), keep_grad=True)
    with recording(model, rec):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
    return out.logits[:, -1][:, label_ids].float(), rec.resid["query"][:, layer]


# What TS-FT keeps for backward per token without gradient checkpointing, fp32, adapters on every linear
# projection: about 4 bytes x n_layers x (20 d_model + 5 d_ff) (the block's inputs, norms, projections,
# each adapter's dropped-out input, the MLP's intermediates); SmolLM2-135M: 2.4 MB estimated, 2.7 MB measured.
# A training batch runs in length-sorted parts of at most TRAIN_ACTIVATION_BYTES of them, the gradients
# accumulated (the same gradients as one pass, up to float order); only where one prompt alone would exceed
# it are the blocks checkpointed instead (one more forward pass per step, iclscope.model.lora.attach_lora).
TRAIN_ACTIVATION_BYTES = 512 << 20


def activation_bytes_per_token(config) -> int:
    """The estimate above from a model config (`intermediate_size`, or GPT-2's `n_inner`, default 4 d)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d = config.hidden_size
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    return 4 * config.num_hidden_layers * (20 * d + 5 * d_ff)


def fit_on_states(
    model,
    tokenizer,
    examples: list[dict],
    label_ids: torch.Tensor,
    layer: int,
    n_layers: int,
    classes: list[str],
    batch_size: int,
    var_threshold: float,
    max_k: int | None,
    max_batch_tokens: int = 1 << 30,
) -> TaskSpace:
    """The class-mean task space fitted on `examples`' own layer-l* query states under `model` (the
    distribution the space loss is applied to): one inference pass over the examples (`token_batches`)."""
    states = np.zeros((len(examples), 0), dtype=np.float32)
    with torch.inference_mode():
        for batch in token_batches(examples, batch_size, max_batch_tokens):
            _, h = forward_batch(model, tokenizer, [examples[i] for i in batch], label_ids, layer, n_layers)
            if states.shape[1] == 0:
                states = np.zeros((len(examples), h.shape[-1]), dtype=np.float32)
            states[batch] = h.float().cpu().numpy()  # [B, d], in the examples' order
    labels = [classes[x["gold"]] for x in examples]
    return fit_task_space(
        states, labels, classes, variant="train_zero_shot", layer=layer, var_threshold=var_threshold, max_k=max_k
    )


def evaluate_examples(
    model,
    tokenizer,
    examples: list[dict],
    label_ids: torch.Tensor,
    layer: int,
    n_layers: int,
    space: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tau: float,
    similarity: str,
    batch_size: int,
    max_batch_tokens: int = 1 << 30,
) -> dict:
    """`examples` under `model` as it is (call in inference mode, eval mode), batched by length
    (`token_batches`): {"ce", "space", "accuracy"} averaged over the examples and "pred" [n] (argmax over
    the labels, in the examples' order). The held-out curve and the test evaluation both read it."""
    basis, mean, protos = space
    ce = sp = 0.0
    pred = np.zeros(len(examples), dtype=np.int64)
    for idx in token_batches(examples, batch_size, max_batch_tokens):
        batch = [examples[i] for i in idx]
        gold = torch.as_tensor([x["gold"] for x in batch], device=label_ids.device)
        logits, h = forward_batch(model, tokenizer, batch, label_ids, layer, n_layers)
        ce += F.cross_entropy(logits, gold, reduction="sum").item()
        sp += space_loss(h, basis, mean, protos, gold, tau, similarity).item() * len(batch)
        pred[idx] = logits.argmax(-1).cpu().numpy()
    n = len(examples)
    return {
        "ce": ce / n,
        "space": sp / n,
        "accuracy": float((pred == [x["gold"] for x in examples]).mean()),
        "pred": pred,
    }


def accumulate_gradients(
    net,
    tokenizer,
    batch: list[dict],
    label_ids: torch.Tensor,
    layer: int,
    n_layers: int,
    space: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    settings: TSFTSettings,
    part_tokens: int,
) -> tuple[float, float]:
    """Backward of the batch's loss (CE + λ space, each a mean over the batch) run in length-sorted parts of
    at most `part_tokens` padded tokens (`token_batches`), the gradients accumulated in the adapters: what
    one pass over the batch gives, up to float order, with at most one part's activations kept and less
    padding. Returns the batch's (ce, space) means."""
    basis, mean, protos = space
    n, ce_sum, sp_sum = len(batch), 0.0, 0.0
    for idx in token_batches(batch, n, part_tokens):
        part = [batch[i] for i in idx]
        gold = torch.as_tensor([x["gold"] for x in part], device=label_ids.device)
        logits, h = forward_batch(net, tokenizer, part, label_ids, layer, n_layers)
        ce = F.cross_entropy(logits, gold, reduction="sum") / n
        sp = space_loss(h, basis, mean, protos, gold, settings.tau, settings.similarity, reduction="sum") / n
        (ce + settings.lam * sp).backward()
        ce_sum, sp_sum = ce_sum + ce.item(), sp_sum + sp.item()
    return ce_sum, sp_sum


def tsft_rows(df: pd.DataFrame, spec: DatasetSpec, settings: TSFTSettings):
    """(train, validation, test) rows. Test and validation rows are drawn with the dataset's seed
    (`spec.seed`): the same for every run seed and arm. Training rows are drawn with the run seed
    from the train split without the validation rows."""
    classes = spec.class_names
    if min(settings.n_val, settings.n_train, settings.n_test) < len(classes):
        raise ConfigError(
            f"tsft: n_train, n_val and n_test must each be >= the {len(classes)} classes of dataset "
            f"'{spec.name}' (got {settings.n_train}, {settings.n_val}, {settings.n_test})"
        )
    train_split = df[df.split == "train"]
    val_rows = balanced_sample(train_split, classes, settings.n_val, spec.seed, "tsft validation (tsft.n_val)")
    rest = train_split[~train_split["row_id"].isin(val_rows["row_id"])]
    train_rows = balanced_sample(rest, classes, settings.n_train, settings.seed, "tsft train (tsft.n_train)")
    test_rows = balanced_sample(df[df.split == "test"], classes, settings.n_test, spec.seed, "tsft test (tsft.n_test)")
    return train_rows, val_rows, test_rows


def train_tsft(
    df: pd.DataFrame,
    spec: DatasetSpec,
    model_dir,
    model: ModelSpec,
    space: TaskSpace | None,
    settings: TSFTSettings,
    out_dir: str | Path,
    stop_after: int | None = None,
    *,
    var_threshold: float = 0.9,
    max_k: int | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict:
    """Fine-tune one arm (settings.lam) and evaluate it; writes adapter/, train_log.parquet,
    eval_log.parquet (held-out losses by step), eval.parquet (test predictions), summary.json.

    `space` None: the space is fitted on the base model's zero-shot states of the training rows
    (`fit_on_states`), the states the loss is applied to, rather than on another distribution.

    The adapter loads back with `peft.PeftModel.from_pretrained(base_model, out_dir / "adapter")`.

    `stop_after` ends training early after that many steps (tests use it to simulate a kill).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind != "classification":
        raise ConfigError(f"TS-FT needs a classification dataset; '{spec.name}' is {spec.kind}")
    torch.manual_seed(settings.seed)
    base, tokenizer, manifest = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    L = manifest["n_layers"]
    layer = settings.layer if settings.layer is not None else L // 2
    device = input_device(base)
    classes = spec.class_names
    label_ids = torch.as_tensor(label_token_ids(tokenizer, spec.label_words, spec.prompts.template), device=device)
    train_rows, val_rows, test_rows = tsft_rows(df, spec, settings)
    train = zero_shot_examples(tokenizer, spec, train_rows)
    val = zero_shot_examples(tokenizer, spec, val_rows)
    test = zero_shot_examples(tokenizer, spec, test_rows)
    if space is None:
        space = fit_on_states(
            base,
            tokenizer,
            train,
            label_ids,
            layer,
            L,
            classes,
            model.batch_size,
            var_threshold,
            max_k,
            model.max_batch_tokens,
        )
    basis, mean, protos = space_tensors(space, device)

    # a training batch in parts of at most TRAIN_ACTIVATION_BYTES for backward; checkpointed blocks only where
    # the longest prompt alone would exceed that
    per_token = activation_bytes_per_token(base.config)
    part_tokens = TRAIN_ACTIVATION_BYTES // per_token
    checkpoint_blocks = max(len(x["input_ids"]) for x in train) > part_tokens
    net = attach_lora(
        base,
        r=settings.lora_r,
        alpha=settings.lora_alpha,
        dropout=settings.lora_dropout,
        checkpoint_blocks=checkpoint_blocks,
    )
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoint"

    def loss_fn(batch):
        if checkpoint_blocks:  # the whole batch in one pass, the blocks recomputed in backward
            gold = torch.as_tensor([x["gold"] for x in batch], device=device)
            logits, h = forward_batch(net, tokenizer, batch, label_ids, layer, L)
            ce = F.cross_entropy(logits, gold)
            sp = space_loss(h, basis, mean, protos, gold, settings.tau, settings.similarity)
            return ce + settings.lam * sp, {"ce": ce.item(), "space": sp.item()}
        ce, sp = accumulate_gradients(
            net, tokenizer, batch, label_ids, layer, L, (basis, mean, protos), settings, part_tokens
        )
        return torch.tensor(ce + settings.lam * sp), {"ce": ce, "space": sp}

    def evaluate(examples):
        return evaluate_examples(
            net,
            tokenizer,
            examples,
            label_ids,
            layer,
            L,
            (basis, mean, protos),
            settings.tau,
            settings.similarity,
            model.batch_size,
            model.max_batch_tokens,
        )

    log_rows, loop_seconds, end, eval_rows = train_loop(
        net,
        train,
        loss_fn,
        settings,
        checkpoint=checkpoint,
        stop_after=stop_after,
        desc=f"ts-ft λ={settings.lam}",
        evaluate=lambda: {k: v for k, v in evaluate(val).items() if k != "pred"},
        eval_every=settings.eval_every,
    )
    if end < settings.steps:
        return {"stopped_at": end}

    net.eval()
    with torch.inference_mode():
        tested = evaluate(test)
    gold, preds = np.array([x["gold"] for x in test]), tested["pred"]
    net.save_pretrained(out_dir / "adapter")
    pd.DataFrame(log_rows).to_parquet(out_dir / "train_log.parquet")
    pd.DataFrame(eval_rows).to_parquet(out_dir / "eval_log.parquet")
    evaluation = pd.DataFrame(
        {"test_row": test_rows["row_id"].to_numpy(), "gold": gold, "pred": preds, "correct": gold == preds}
    )
    evaluation.to_parquet(out_dir / "eval.parquet")
    eval_seconds = float(sum(r["seconds"] for r in eval_rows))
    summary = {
        "lam": settings.lam,
        "seed": settings.seed,
        "layer": layer,
        "accuracy": float((gold == preds).mean()),
        "macro_f1": macro_f1(gold, preds, range(len(classes))),
        "test_ce": tested["ce"],
        "heldout_ce_start": eval_rows[0]["ce"],
        "heldout_ce_end": eval_rows[-1]["ce"],
        "train_seconds": round(loop_seconds - eval_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "steps": settings.steps,
        "settings": asdict(settings),
        "task_space_variant": space.variant,
        "task_space_k": int(space.k),
        "trainable_parameters": trainable_parameters(net),
        "val_rows": [int(i) for i in val_rows["row_id"]],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(checkpoint, ignore_errors=True)
    return summary
