"""TS-FT results (docs/methods.md §1.5): the summary table of finished run directories
(iclscope.core.runs.read_runs) with the paired gain space − baseline. No torch: the summary job
imports only this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iclscope.core.runs import read_runs
from iclscope.core.stats import paired_difference, paired_rows, with_holm


def aligned_correct(runs: dict, arm: str, seed: int, test_rows: np.ndarray | None) -> np.ndarray:
    """Correctness of (arm, seed) on `test_rows` in that order (the arm's own order when None)."""
    ev = runs[(arm, seed)]["eval"]
    if test_rows is None:
        return ev["correct"].to_numpy(dtype=float)
    by_row = ev.set_index("test_row")["correct"]
    if set(by_row.index) != set(test_rows) or len(by_row) != len(test_rows):
        raise ValueError(
            f"tsft: run {arm} seed {seed} scored other test prompts than the run it is paired with; "
            "the test prompts are drawn with the dataset's seed, so rerun the older of the runs"
        )
    return by_row.loc[test_rows].to_numpy(dtype=float)


def summary_table(run_dirs: list[str | Path], *, model: str, dataset: str, n_boot: int = 1000) -> pd.DataFrame:
    """Long-format table (docs/outputs.md): per arm and seed test accuracy, macro-F1 and label
    cross-entropy, the held-out label / space loss at step 0 and at the end, and the seconds of
    training and of evaluation; then the paired difference space − baseline in accuracy over the
    test prompts (arm `space-baseline`, `paired_rows`): per seed (McNemar's exact test) and, with
    seed empty, pooled over the seeds that have both arms ([seed, prompt] pairs; with several seeds
    the interval and the p-value both from the two-level bootstrap over seeds and prompts,
    iclscope.core.stats.paired_difference), each p-value
    beside its Holm-adjusted value `p_holm` (the family: the per-seed and pooled tests of this table)."""
    from iclscope.core.metrics import metric_frame

    runs = read_runs(run_dirs)
    rows = []
    for (arm, seed), run in sorted(runs.items()):
        s, ev = run["summary"], run["eval_log"].sort_values("step")
        common = {"arm": arm, "seed": seed, "layer": s["layer"]}
        values = {
            "accuracy": s["accuracy"],
            "macro_f1": s["macro_f1"],
            "test_ce": s["test_ce"],
            "heldout_ce_start": ev["ce"].iloc[0],
            "heldout_ce_end": ev["ce"].iloc[-1],
            "heldout_space_start": ev["space"].iloc[0],
            "heldout_space_end": ev["space"].iloc[-1],
            "heldout_accuracy_end": ev["accuracy"].iloc[-1],
            "train_seconds": s["train_seconds"],
            "eval_seconds": s["eval_seconds"],
        }
        rows += [{**common, "metric": k, "value": float(v)} for k, v in values.items()]
    seeds = sorted(seed for arm, seed in runs if arm == "space" and ("baseline", seed) in runs)
    if seeds:
        test_rows = runs[("baseline", seeds[0])]["eval"]["test_row"].to_numpy()
        space = np.stack([aligned_correct(runs, "space", s, test_rows) for s in seeds])
        baseline = np.stack([aligned_correct(runs, "baseline", s, test_rows) for s in seeds])
        common = {"arm": "space-baseline", "layer": runs[("space", seeds[0])]["summary"]["layer"]}
        for i, seed in enumerate(seeds):
            rows += paired_rows(paired_difference(space[i], baseline[i], n_boot=n_boot, seed=0), **common, seed=seed)
        rows += paired_rows(paired_difference(space, baseline, n_boot=n_boot, seed=0), **common, seed=None)
    return metric_frame(with_holm(rows), model=model, dataset=dataset, family="tsft", position="query")
