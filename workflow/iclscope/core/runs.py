"""Reading finished TS-FT run directories (docs/outputs.md#training-runs): files only, no method code,
so the figures, the summary and the TS-FT table read runs the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def read_runs(run_dirs: list[str | Path]) -> dict[tuple[str, int], dict]:
    """{(arm, seed): {"summary", "train_log", "eval_log", "eval"}} of finished TS-FT run directories
    (arm "space" when λ > 0, else "baseline")."""
    runs = {}
    for d in map(Path, run_dirs):
        s = json.loads((d / "summary.json").read_text())
        arm = "space" if s["lam"] > 0 else "baseline"
        runs[(arm, int(s["seed"]))] = {
            "summary": s,
            "train_log": pd.read_parquet(d / "train_log.parquet"),
            "eval_log": pd.read_parquet(d / "eval_log.parquet"),
            "eval": pd.read_parquet(d / "eval.parquet"),
        }
    return runs
