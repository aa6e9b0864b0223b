"""Resumable training from scratch: one atomic, settings-checked state file per run.

A state is written to `<path>.partial` and renamed, so a kill mid-write leaves the previous
state; it carries a digest of everything that shapes training (sizes, settings, data), and a
state written with other settings is ignored rather than resumed. Used by the toy trainers
(methods.entropy.toy_lm, methods.decodability.toy_regression); TS-FT keeps PEFT's adapter format instead.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from iclscope.core.atomic import written

log = logging.getLogger(__name__)


def save_state(path: Path, digest: str, **state) -> None:
    """Write {digest, **state} (tensors, state dicts, numpy RNG states, lists) atomically to `path`."""
    with written(path) as tmp:
        torch.save({"digest": digest, **state}, tmp)


def load_state(path: Path | None, digest: str, device="cpu") -> dict | None:
    """The state at `path` if it exists and was written with the same digest, else None."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("digest") != digest:
        log.info("ignoring %s: written with other settings", path)
        return None
    return state


def log_spaced_steps(steps: int, n: int) -> list[int]:
    """Step 0 (the random initialisation) and up to n - 1 log-spaced steps from 1 to `steps`:
    when the toy trainers measure (dense early, where representations change fastest)."""
    spaced = np.unique(np.round(np.logspace(0, math.log10(steps), n - 1)).astype(int))
    return [0, *spaced.tolist()]
