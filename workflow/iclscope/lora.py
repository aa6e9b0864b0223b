"""LoRA fine-tuning machinery shared by TS-FT (iclscope.tsft) and the first-vs-last-layer LoRA
comparison (iclscope.layer_lora): adapter set-up, atomic checkpoints and a deterministic,
resumable training loop.

Determinism: batch order depends on (seed, epoch) and dropout masks on (seed, step) only, so a
run killed after a checkpoint and rerun reproduces the loss curve of an uninterrupted run.
Every `checkpoint_every` steps the adapter, optimizer state, step and log are written atomically
to `<checkpoint>/` (a sibling `.partial` directory renamed into place).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def transformer_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """(name, modules) of the model's transformer blocks: the one ModuleList holding
    num_hidden_layers modules (model.layers in Llama, transformer.h in GPT-2, …)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        raise ValueError(f"cannot tell the transformer blocks of {type(model).__name__}: {len(found)} module lists "
                         f"of {n} modules ({[name for name, _ in found]})")
    return found[0]


def block_linear_modules(model, layers: Sequence[int]) -> list[str]:
    """Full names of the linear projections (nn.Linear, GPT-2's Conv1D) inside the given blocks."""
    from transformers.pytorch_utils import Conv1D

    prefix, blocks = transformer_blocks(model)
    return [f"{prefix}.{i}.{name}" for i in layers for name, m in blocks[i].named_modules()
            if isinstance(m, torch.nn.Linear | Conv1D)]


def attach_lora(model, *, r: int, alpha: int, dropout: float, layers: Sequence[int] | None = None):
    """Wrap `model` in a PEFT LoRA model on every linear projection (attention and MLP) of the
    transformer blocks ("all-linear"), or only on those of the blocks in `layers` (0-based)."""
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if layers is None else block_linear_modules(model, layers)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def trainable_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def save_checkpoint(model, optimizer, step: int, log_rows: list, directory: Path) -> None:
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / "trainer_state.pt")
    (tmp / "train_log.json").write_text(json.dumps(log_rows))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def load_checkpoint(model, optimizer, directory: Path, device) -> tuple[int, list]:
    """Restore adapter and optimizer from `directory` when it holds a checkpoint: (next step, log rows)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (directory / "trainer_state.pt").exists():
        return 0, []
    set_peft_model_state_dict(model, load_peft_weights(str(directory), device=str(device)))
    state = torch.load(directory / "trainer_state.pt", map_location=device)
    optimizer.load_state_dict(state["optimizer"])
    log.info("resuming at step %d from %s", int(state["step"]), directory)
    return int(state["step"]), json.loads((directory / "train_log.json").read_text())


def train_loop(net, optimizer, examples: list, loss_fn: Callable[[list], tuple[torch.Tensor, dict]], *,
               steps: int, batch_size: int, seed: int, checkpoint_every: int, checkpoint: Path,
               stop_after: int | None = None, desc: str = "lora") -> tuple[list[dict], float, int]:
    """Run steps [resumed step, steps) of `loss_fn(batch) -> (loss, {name: float})`; returns
    (log rows {step, loss, **extra}, seconds, last step run). `stop_after` ends early (tests: a kill)."""
    device = next(p for p in net.parameters() if p.requires_grad).device
    start, log_rows = load_checkpoint(net, optimizer, checkpoint, device)
    n_batches = max(1, len(examples) // batch_size)
    t0 = time.perf_counter()
    net.train()
    end = steps if stop_after is None else min(steps, stop_after)
    for step in tqdm(range(start, end), desc=desc, initial=start, total=steps):
        epoch, b = divmod(step, n_batches)
        order = np.random.default_rng((seed, epoch)).permutation(len(examples))
        batch = [examples[i] for i in order[b * batch_size:(b + 1) * batch_size]]
        torch.manual_seed(seed * 100_003 + step)  # dropout masks depend on (seed, step) only
        loss, extra = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log_rows.append({"step": step + 1, "loss": loss.item(), **extra})
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(net, optimizer, step + 1, log_rows, checkpoint)
    return log_rows, time.perf_counter() - t0, end
