"""Shared helpers of the benchmarks: timing, peak memory, result rows, the pipeline's own inputs."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))
OUT = REPO / "results" / "benchmarks"
MODEL = "smollm2-135m"


def timed(fn, repeats: int = 3) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(
    benchmark: str,
    measure: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    ratio: float | None = None,
    target: str | None = None,
    met: bool | None = None,
    note: str = "",
) -> dict:
    return {
        "benchmark": benchmark,
        "measure": measure,
        "value": round(value, 4),
        "unit": unit,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target,
        "met": met,
        "note": note,
    }


def pipeline_inputs(*targets: str) -> None:
    """Build (or find up to date) pipeline outputs the benchmarks start from."""
    subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "--profile", "profiles/local", "--cores", "2", "--quiet", "all"],
        cwd=REPO,
        check=True,
    )
