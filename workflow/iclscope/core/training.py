"""The one training loop of the package: the toy models trained from scratch
(iclscope.methods.entropy.toy_lm, iclscope.methods.decodability.toy_regression) and the LoRA fine-tunes
(iclscope.model.lora.train_loop: TS-FT and layer LoRA) all step through `train_steps`.

A run is a sequence of boundaries 0..steps; boundary s is the state after s updates. At every boundary
from the resumed `start` on, `at_step(s)` runs first (whatever is due there: a measurement, a held-out
evaluation, a checkpoint), then the update of step s, unless s is the last boundary (`steps`, or
`stop_after`, where tests simulate a kill). What an update draws (its batch, its dropout masks) is the
caller's `loss_fn(s)`, so a trainer that derives it from (seed, s) or restores its sampler's state
resumes to the numbers of an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from iclscope.core.resume import load_state, save_state

log = logging.getLogger(__name__)


def scratch_gpt2_config(*, vocab_size: int, n_positions: int, d_model: int, n_layers: int, n_heads: int):
    """The GPT-2 config of a toy trained from scratch: no dropout (a run is a function of its seed and
    settings), token id 0 as BOS / EOS."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def train_steps(
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
    *,
    steps: int,
    start: int = 0,
    at_step: Callable[[int], None] | None = None,
    stop_after: int | None = None,
    log_rows: list[dict] | None = None,
    desc: str = "training",
) -> int:
    """Boundaries start..end (end = steps, or stop_after when sooner): `at_step(s)`, then, before the
    last, the update of step s: zero_grad, `loss, extra = loss_fn(s)`, backward, optimizer.step(). A
    `loss_fn` that runs its batch in parts calls backward on each part itself and returns the detached
    total (no backward then).

    With `log_rows`, each update appends {step: s + 1, loss, **extra} to it in place (so a checkpoint
    written by `at_step` holds the log up to its boundary). Returns the boundary it stopped at."""
    end = steps if stop_after is None else min(steps, stop_after)
    for step in tqdm(range(start, end + 1), desc=desc, unit="step", mininterval=5, initial=start, total=steps + 1):
        if at_step is not None:
            at_step(step)
        if step == end:
            break
        optimizer.zero_grad(set_to_none=True)
        loss, extra = loss_fn(step)
        if loss.requires_grad:  # else loss_fn accumulated the gradients itself (micro-batches)
            loss.backward()
        optimizer.step()
        if log_rows is not None:
            log_rows.append({"step": step + 1, "loss": loss.item(), **extra})
    return end


def train_from_scratch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
    measure: Callable[[int], list[dict]],
    run,
    *,
    state_path: Path | None,
    digest: str,
    device="cpu",
    stop_after: int | None = None,
    desc: str = "training",
) -> list[dict] | None:
    """`train_steps` for a model trained from scratch with a numpy sampler `rng` (what `loss_fn` draws its
    batches from), `run.steps` updates: `measure(s)` rows at the boundaries `run.checkpoint_steps()`; with
    `state_path`, the training state (weights, optimizer, sampler, rows so far) saved every `run.save_every`
    steps (iclscope.core.resume: atomic, keyed by `digest`), resumed when present and removed when the run
    is done.

    Returns the measured rows, or None when `stop_after` (<= steps) ended the run (tests: a kill)."""
    steps, save_every, t0 = run.steps, run.save_every, time.perf_counter()
    rows, start = [], 0
    state = load_state(state_path, digest, device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimiser"])
        rng.bit_generator.state = state["rng"]
        rows, start = state["rows"], state["step"]
        log.info("%s: resuming at step %d from %s", desc, start, state_path)
    due = set(run.checkpoint_steps())

    def at_step(step: int) -> None:
        if state_path is not None and step > start and step % save_every == 0:
            save_state(
                state_path,
                digest,
                model=model.state_dict(),
                optimiser=optimizer.state_dict(),
                rng=rng.bit_generator.state,
                rows=rows,
                step=step,
            )
        if step in due and step != stop_after:
            rows.extend(measure(step))

    train_steps(optimizer, loss_fn, steps=steps, start=start, at_step=at_step, stop_after=stop_after, desc=desc)
    if stop_after is not None and stop_after <= steps:
        return None
    if state_path is not None:
        state_path.unlink(missing_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d parameters, %d steps in %.1f s", desc, n_params, steps, time.perf_counter() - t0)
    return rows
