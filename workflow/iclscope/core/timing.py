"""The timing protocol of docs/methods.md §3.8, shared by the IC-ICL and anchor-compression stages:
batch 1, one call at a time, CUDA synchronised around each call, and the arms of one prompt
*interleaved* (A B C … A B C …, `repeats` rounds), so a slow spell of the machine falls on every arm
alike rather than on whichever arm ran during it.

- `timed`: the median over `repeats` calls of one function.
- `interleaved`: every arm of one prompt, round by round; per arm the seconds of each repeat.
- `speedup`: the median over prompts of each prompt's speed-up (the median over repeats of the
  reference's seconds / the arm's seconds in the same round), with a percentile bootstrap interval
  over prompts.
- `tokens_per_second`: tokens fed / seconds, summed over the timed prompts (per-prompt medians).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

MIN_REPEATS = 5  # the protocol's interleaved rounds (docs/methods.md §3.8); fewer only for smoke tests


def _sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(run, repeats: int, device) -> tuple[object, float]:
    """(result of the last `run()`, median wall-clock seconds over `repeats` calls); CUDA synchronised."""
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return result, float(np.median(times))


def interleaved(
    prepare: Mapping[str, Callable[[], Callable[[], object]]], repeats: int, device
) -> tuple[dict[str, object], dict[str, list[float]]]:
    """Time every arm of one prompt in `repeats` interleaved rounds (arm order fixed within a round).

    prepare[arm]() returns the zero-argument call to time; it runs before the clock starts, so what a
    call consumes (a KV cache that a forward pass extends) is rebuilt outside the timing. Returns
    ({arm: result of its last call}, {arm: [seconds of round 1, …, round `repeats`]}).
    """
    if repeats < 1:
        raise ValueError(f"interleaved timing needs at least one round, got {repeats}")
    results: dict[str, object] = {}
    seconds: dict[str, list[float]] = {arm: [] for arm in prepare}
    for _ in range(repeats):
        for arm, make in prepare.items():
            call = make()
            _sync(device)
            t0 = time.perf_counter()
            results[arm] = call()
            _sync(device)
            seconds[arm].append(time.perf_counter() - t0)
    return results, seconds


def speedup(reference, arm, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(median, lo, hi) of the speed-up of `arm` over `reference`.

    reference, arm: seconds [n_prompts, repeats] from the same interleaved rounds. Per prompt the
    speed-up is the median over rounds of reference / arm (paired within a round); the estimate is
    the median over prompts, its interval the percentile bootstrap over prompts (nan, nan when
    n_boot == 0 or there is one prompt).
    """
    ref, a = np.atleast_2d(np.asarray(reference, dtype=float)), np.atleast_2d(np.asarray(arm, dtype=float))
    if ref.shape != a.shape:
        raise ValueError(f"speedup: seconds of different shapes {ref.shape} and {a.shape}")
    if ref.size == 0:
        return float("nan"), float("nan"), float("nan")
    per_prompt = np.median(ref / a, axis=1)  # [n_prompts]
    est = float(np.median(per_prompt))
    if n_boot <= 0 or len(per_prompt) < 2:
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.median(per_prompt[rng.integers(0, len(per_prompt), (n_boot, len(per_prompt)))], axis=1)
    return est, float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def tokens_per_second(tokens, seconds) -> float:
    """Σ tokens / Σ seconds over the timed prompts: tokens [n], seconds [n] (or [n, repeats]: the
    median over repeats per prompt)."""
    s = np.asarray(seconds, dtype=float)
    s = np.median(s, axis=1) if s.ndim == 2 else s
    total = s.sum()
    return float(np.sum(tokens) / total) if total > 0 else float("nan")
