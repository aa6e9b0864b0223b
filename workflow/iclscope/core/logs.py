"""Logging for workflow scripts: everything (logging, warnings, tqdm bars) goes to the rule's log."""

from __future__ import annotations

import atexit
import logging
import os
import resource
import sys
import time
from pathlib import Path


def log_to(path: str | Path, threads: int | None = None) -> logging.Logger:
    """Send logging and stderr (tqdm, warnings) of this process to `path`; return the iclscope logger.

    `threads` (the rule's `threads:`) caps torch's intra-op threads: Snakemake sets OMP_NUM_THREADS
    only for shell rules, and two jobs each spinning threads on every core slow each other down
    many times over (seen here: 20x for the toy regression next to another job).
    """
    if threads is not None:
        limit_threads(threads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    sys.stderr = stream
    logging.basicConfig(
        stream=stream, level=logging.INFO, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.captureWarnings(True)
    logger = logging.getLogger("iclscope")
    logger.info("started at %s", time.strftime("%Y-%m-%d %H:%M:%S"))
    atexit.register(log_cost, logger, time.perf_counter())
    return logger


def log_cost(logger: logging.Logger, started: float) -> None:
    """The job's cost, as the last line of its log (`iclscope costs logs/` sums these per rule)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    logger.info(
        "cost: wall %.1f s, cpu %.1f s, peak rss %.0f MB",
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
    )


def limit_threads(threads: int) -> None:
    """At most `threads` compute threads: torch if it is loaded, and BLAS/OpenMP libraries loaded later."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
