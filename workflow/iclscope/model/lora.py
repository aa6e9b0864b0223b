"""LoRA fine-tuning machinery shared by TS-FT (iclscope.methods.taskspace.tsft) and the first-vs-last-layer LoRA
comparison (iclscope.methods.decodability.layer_lora): adapter set-up, atomic checkpoints and a deterministic,
resumable training loop.

Determinism: batch order depends on (seed, epoch) and dropout masks on (seed, step) only, so a
run killed after a checkpoint and rerun reproduces the loss curve of an uninterrupted run.
Every `checkpoint_every` steps the adapter, optimizer state, step and logs are written atomically
to `<checkpoint>/` (a sibling `.partial` directory renamed into place).

An optional held-out evaluation (`evaluate`) runs at step 0 and every `eval_every` steps and after
the last step, with the adapter in eval mode (no dropout) and no effect on the training RNG; its
rows are checkpointed with the training log, so a resumed run reproduces them too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from iclscope.core.atomic import written
from iclscope.core.training import train_steps
from iclscope.model.blocks import transformer_blocks

log = logging.getLogger(__name__)


def block_linear_modules(model, layers: Sequence[int]) -> list[str]:
    """Full names of the linear projections (nn.Linear, GPT-2's Conv1D) inside the given blocks."""
    from transformers.pytorch_utils import Conv1D

    prefix, blocks = transformer_blocks(model)
    return [
        f"{prefix}.{i}.{name}"
        for i in layers
        for name, m in blocks[i].named_modules()
        if isinstance(m, torch.nn.Linear | Conv1D)
    ]


def attach_lora(
    model, *, r: int, alpha: int, dropout: float, layers: Sequence[int] | None = None, checkpoint_blocks: bool = False
):
    """Wrap `model` in a PEFT LoRA model on every linear projection (attention and MLP) of the
    transformer blocks ("all-linear"), or only on those of the blocks in `layers` (0-based).

    `checkpoint_blocks`: gradient checkpointing on the blocks in training mode (non-reentrant, the RNG
    state restored for the recomputation, so dropout masks and gradients are those of the plain pass up
    to floating-point order): a block keeps only its input for backward and recomputes the rest, at the
    cost of one more forward pass per step. With all-linear adapters in fp32 the plain pass keeps ~2.7 MB
    per token (SmolLM2-135M: 2.3 GB for 8 x 105 tokens), checkpointed ~0.2 MB."""
    from peft import LoraConfig, get_peft_model

    check_trainable_placement(model)
    if checkpoint_blocks:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = "all-linear" if layers is None else block_linear_modules(model, layers)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def check_trainable_placement(model) -> None:
    """Refuse to train adapters on a model whose weights are offloaded (device_map put blocks on "cpu" or
    "disk" beside accelerators: their weights sit on the meta device and are loaded only for each forward
    pass, where neither an adapter nor its optimizer state can live). A model over several GPUs, every
    block resident on one of them, trains through the same dispatch hooks."""
    from iclscope.core.config import ConfigError

    placed = getattr(model, "hf_device_map", None) or {}
    offloaded = sorted(name for name, p in model.named_parameters() if p.device.type == "meta")
    if offloaded or "disk" in placed.values():
        where = sorted({str(d) for d in placed.values()})
        raise ConfigError(
            f"LoRA training needs every weight resident on a device, but device_map placed the model on {where} "
            f"and {len(offloaded)} weights are offloaded (e.g. {offloaded[:2]}): give the job enough GPU memory "
            "for the whole model (more GPUs: models.<name>.gpus) so that nothing is offloaded to cpu or disk"
        )


def trainable_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def save_checkpoint(model, optimizer, step: int, log_rows: list, directory: Path, eval_rows: list = ()) -> None:
    with written(directory) as tmp:
        model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / "trainer_state.pt")
        (tmp / "train_log.json").write_text(json.dumps(log_rows))
        (tmp / "eval_log.json").write_text(json.dumps(list(eval_rows)))


def load_checkpoint(model, optimizer, directory: Path, device) -> tuple[int, list, list]:
    """Restore adapter and optimizer from `directory` when it holds a checkpoint:
    (next step, training log rows, evaluation rows)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (directory / "trainer_state.pt").exists():
        return 0, [], []
    set_peft_model_state_dict(model, load_peft_weights(str(directory), device=str(device)))
    state = torch.load(directory / "trainer_state.pt", map_location=device)
    optimizer.load_state_dict(state["optimizer"])
    evals = directory / "eval_log.json"
    return (
        int(state["step"]),
        json.loads((directory / "train_log.json").read_text()),
        json.loads(evals.read_text()) if evals.exists() else [],
    )


def eval_steps(steps: int, eval_every: int) -> list[int]:
    """The steps after which the held-out evaluation runs: 0, every `eval_every`, and the last."""
    return sorted({0, steps, *range(eval_every, steps, eval_every)})


def train_loop(
    net,
    examples: list,
    loss_fn: Callable[[list], tuple[torch.Tensor, dict]],
    settings,
    *,
    checkpoint: Path,
    stop_after: int | None = None,
    desc: str = "lora",
    evaluate: Callable[[], dict] | None = None,
    eval_every: int = 1,
) -> tuple[list[dict], float, int, list[dict]]:
    """Run steps [resumed step, settings.steps) of `loss_fn(batch) -> (loss, {name: float})` with AdamW
    (settings.lr) on the adapters, batches of settings.batch_size, settings.seed, a checkpoint every
    settings.checkpoint_every steps; returns (log rows {step, loss, **extra}, seconds, last step run,
    evaluation rows {step, seconds, **evaluate()}). `evaluate()` (held-out losses of the current adapter)
    runs at the steps of `eval_steps`; `stop_after` ends early (tests: a kill)."""
    steps, batch_size, seed, checkpoint_every = (
        settings.steps,
        settings.batch_size,
        settings.seed,
        settings.checkpoint_every,
    )
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=settings.lr)
    device = next(p for p in net.parameters() if p.requires_grad).device
    start, log_rows, eval_rows = load_checkpoint(net, optimizer, checkpoint, device)
    if start:
        log.info(
            "resuming at step %d of %d from the checkpoint %s: steps 1..%d are not redone",
            start,
            steps,
            checkpoint,
            start,
        )
    due = set(eval_steps(steps, eval_every)) if evaluate is not None else set()
    n_batches = max(1, len(examples) // batch_size)

    def batch_loss(step: int) -> tuple[torch.Tensor, dict]:
        epoch, b = divmod(step, n_batches)
        order = np.random.default_rng((seed, epoch)).permutation(len(examples))
        torch.manual_seed(seed * 100_003 + step)  # dropout masks depend on (seed, step) only
        return loss_fn([examples[i] for i in order[b * batch_size : (b + 1) * batch_size]])

    def at_step(step: int) -> None:
        """After `step` updates: the held-out evaluation where due (at a resumed start it was done before the
        checkpoint), then the checkpoint every `checkpoint_every` steps and at the last."""
        if step in due and (step > start or start == 0):
            t = time.perf_counter()
            net.eval()
            with torch.inference_mode():
                values = evaluate()
            net.train()
            eval_rows.append({"step": step, **values, "seconds": time.perf_counter() - t})
        if step > start and (step % checkpoint_every == 0 or step == steps):
            save_checkpoint(net, optimizer, step, log_rows, checkpoint, eval_rows)

    t0 = time.perf_counter()
    net.train()
    end = train_steps(
        optimizer,
        batch_loss,
        steps=steps,
        start=start,
        at_step=at_step,
        stop_after=stop_after,
        log_rows=log_rows,
        desc=desc,
    )
    return log_rows, time.perf_counter() - t0, end, eval_rows
