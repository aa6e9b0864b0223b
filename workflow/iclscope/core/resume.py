"""Resumable training from scratch: one atomic, settings-checked state file per run.

A state is written to `<path>.partial` and renamed, so a kill mid-write leaves the previous
state; it carries a digest of everything that shapes training (sizes, settings, data), and a
state written with other settings is ignored rather than resumed. Used by the toy trainers
(methods.entropy.toy_lm, methods.decodability.toy_regression); TS-FT keeps PEFT's adapter format instead.

`checkpoint_dir` is where a Snakemake job keeps a checkpoint that must survive its own failure: outside
its output directory and keyed by its settings and code (TS-FT, layer LoRA).
"""

from __future__ import annotations

import logging
import math
import shutil
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


RESUME_ROOT = Path("results/.resume")


def job_key(settings, code: str) -> str:
    """A digest of everything that changes what a job trains: its settings (params.settings, the model
    and dataset specs included) and the digest of the code its script runs (params.code)."""
    from iclscope.core.config import stable_hash

    return stable_hash({"settings": settings, "code": code})


def checkpoint_dir(rule: str, wildcards: dict, settings, code: str, root: Path = RESUME_ROOT) -> Path:
    """Where a job keeps its training checkpoint: `<root>/<rule>/<wildcard values>/<job_key>`.

    Outside the job's output directory, which Snakemake deletes before it reruns a job (a retry after a
    kill, a timeout or an out-of-memory), so the next attempt resumes; keyed by the job's settings and
    code, so a job whose settings changed starts over instead of resuming another run's state.
    Checkpoints of the same job under other settings are removed (they can never be resumed)."""
    base = Path(root, rule, *(str(wildcards[k]) for k in sorted(wildcards)))
    key = job_key(settings, code)
    if base.is_dir():
        for stale in base.iterdir():
            if stale.name != key and stale.is_dir():
                log.info("removing the checkpoint %s: written with other settings", stale)
                shutil.rmtree(stale, ignore_errors=True)
    return base / key


def log_spaced_steps(steps: int, n: int) -> list[int]:
    """Step 0 (the random initialisation) and up to n - 1 log-spaced steps from 1 to `steps`:
    when the toy trainers measure (dense early, where representations change fastest)."""
    spaced = np.unique(np.round(np.logspace(0, math.log10(steps), n - 1)).astype(int))
    return [0, *spaced.tolist()]
