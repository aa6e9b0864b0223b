"""The timing protocol of docs/methods.md §3.8, shared by the IC-ICL and anchor-compression stages:
one call at a time, CUDA synchronised around it, the median over `repeats` calls."""

from __future__ import annotations

import time

import numpy as np


def timed(run, repeats: int, device) -> tuple[object, float]:
    """(result of the last `run()`, median wall-clock seconds over `repeats` calls); CUDA synchronised."""
    import torch

    times, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return result, float(np.median(times))
