"""`make bench`: every benchmark, each against a baseline measured in the same run, written to
results/benchmarks/benchmarks.{md,json}. Needs the default run's model, prompts and (for the
HDF5 and IC-ICL rows) activations; builds what is missing through Snakemake first.

    python -m tests.benchmarks.run [--only extraction,shared_prefix,memory,dag,store,entropy,speedups,batching,tsft]
        [--dag 50x20] [--store 32x32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import UTC, datetime

import pandas as pd
import torch

from . import batching, dag, entropy_cost, extraction, memory, shared_prefix, store, tsft_step
from .common import MODEL, OUT, REPO, pipeline_inputs, row


def speedups() -> list[dict]:
    """IC-ICL and anchor-KV speed-ups over full-text ICL, from the icicl stage's own table."""
    path = REPO / f"results/metrics/{MODEL}/tweets/icicl.parquet"
    if not path.exists():
        return [row("icicl", "speed-ups", 0, "-", note=f"{path} missing: run `make run` first")]
    t = pd.read_parquet(path)
    t = t[t.seed.isna() | (t.seed == t.seed.min())] if "seed" in t else t
    rows = []
    secs = t[t.metric == "seconds_per_example"].groupby("arm")["value"].mean()
    acc = t[t.metric == "accuracy"].groupby("arm")["value"].mean()
    for arm in ("icicl_soft", "anchor_kv", "task_vector", "zero_shot"):
        if arm in secs and "full_icl" in secs:
            rows.append(
                row(
                    "icicl",
                    f"{arm} seconds per example",
                    secs[arm],
                    "s",
                    "full-text ICL",
                    secs["full_icl"] / secs[arm],
                    note=f"accuracy {acc.get(arm, float('nan')):.3f} vs "
                    f"{acc.get('full_icl', float('nan')):.3f} (ratio = speed-up)",
                )
            )
    return rows


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def to_markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"Measured on {info['cpu']} ({info['cores']} cores, torch {info['torch']}, "
        f"CUDA {'yes' if info['cuda'] else 'no'}), {info['date']}. Reproduce: `make bench`.",
        "",
        "| benchmark | measure | value | baseline (same run) | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['benchmark']} | {r['measure']} | {r['value']:g} {r['unit']} | {r['baseline'] or ''} | "
            f"{'' if r['ratio'] is None else r['ratio']} | {r['target'] or ''} | {met} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="extraction,shared_prefix,memory,dag,store,entropy,speedups,batching,tsft")
    parser.add_argument("--dag", default="50x20", help="models x datasets of the DAG benchmark")
    parser.add_argument("--store", default="32x32", help="models x datasets of the lab-store benchmark (>= 1,000)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    m, d = map(int, args.dag.split("x"))
    sm, sd = map(int, args.store.split("x"))
    benchmarks = {
        "extraction": extraction.run,
        "shared_prefix": shared_prefix.run,
        "memory": memory.run,
        # and a 4-model × 7-dataset configuration's no-op plan, in seconds
        "dag": lambda: dag.run(m, d) + dag.run(4, 7, target=False),
        "store": lambda: store.run(sm, sd),
        "entropy": entropy_cost.run,
        "speedups": speedups,
        "batching": batching.run,
        "tsft": tsft_step.run,
    }
    if unknown := only - benchmarks.keys():
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {','.join(benchmarks)}")
    pipeline_inputs(f"results/prompts/{MODEL}/tweets.parquet", f"results/models/{MODEL}.json")
    rows = []
    for name, benchmark in benchmarks.items():
        if name in only:
            rows += benchmark()
            table = write(rows)  # after every benchmark: one that fails keeps the rows before it
    print(table)


def write(rows: list[dict]) -> str:
    """Write results/benchmarks/benchmarks.{json,md} with the rows so far; the table."""
    info = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "benchmarks.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    table = to_markdown(rows, info)
    (OUT / "benchmarks.md").write_text(table)
    return table


if __name__ == "__main__":
    main()
