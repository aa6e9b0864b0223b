"""The claims table (issue 32, docs/methods.md §0.4): each comparison a paper built on these results
would claim, per dataset and pooled over datasets, with difference, interval, raw and Holm-adjusted p
and, for IC-ICL, the timing ratio with its interval.

Claims (arm − reference on the same inputs):

  icicl_soft − full_icl, icicl_soft − task_vector, icicl_soft − anchor_kv   (IC-ICL predictions)
  space − baseline                                                         (TS-FT, [seed, prompt])
  reweighted − vanilla                                                     (re-weighting, per seed)

Per dataset the interval and test are `paired_difference`'s; pooled, `stratified_paired_difference`'s
(each dataset keeps its size in every replicate). Either way interval and p-value come from one
design (docs/methods.md §0.4): over inputs alone McNemar's exact test beside the input bootstrap;
over seeds and inputs (TS-FT, re-weighting) the p-value is the two-level bootstrap's own tail at 0,
so the interval excludes 0 exactly when p < 0.05. One Holm family: every test of the table. Pure
pandas / numpy: the summary job imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.stats import pooled_rows, with_holm

log = logging.getLogger(__name__)

ALPHA = 0.05


def holm_resolution(n_tests: int, n_boot: int) -> float:
    """The smallest Holm-adjusted p a bootstrap p-value can reach in a family of `n_tests`: a
    bootstrap p is floored at 1/n_boot (the resolution of n_boot replicates), and Holm multiplies the
    smallest p by the number of tests. At or above 0.05 no bootstrap-tested claim can be significant
    after adjustment, whatever the data (200 resamples and 20 tests: 0.1)."""
    return n_tests / n_boot if n_boot else 1.0


ICICL_CLAIMS = (("icicl_soft", "full_icl"), ("icicl_soft", "task_vector"), ("icicl_soft", "anchor_kv"))


def icicl_pairs(predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"<arm>-<reference>": (arm correct [n], reference correct [n])} of `ICICL_CLAIMS` from IC-ICL's
    per-example predictions (columns arm, draw, test_row, correct), aligned by test_row."""
    plain = predictions[predictions["draw"] < 0]
    wide = plain.pivot_table(index="test_row", columns="arm", values="correct", aggfunc="first")
    return {
        f"{a}-{b}": (wide[a].to_numpy(float), wide[b].to_numpy(float))
        for a, b in ICICL_CLAIMS
        if a in wide and b in wide
    }


def tsft_pairs(run_dirs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"space-baseline": (space [seeds, prompts], baseline [seeds, prompts])} over the seeds that have
    both arms (iclscope.methods.taskspace.tsft_report), or {} without such a seed."""
    from iclscope.core.runs import read_runs
    from iclscope.methods.taskspace.tsft_report import aligned_correct

    runs = read_runs(run_dirs)
    seeds = sorted(seed for arm, seed in runs if arm == "space" and ("baseline", seed) in runs)
    if not seeds:
        return {}
    rows = runs[("baseline", seeds[0])]["eval"]["test_row"].to_numpy()
    return {
        "space-baseline": (
            np.stack([aligned_correct(runs, "space", s, rows) for s in seeds]),
            np.stack([aligned_correct(runs, "baseline", s, rows) for s in seeds]),
        )
    }


def reweighting_pairs(meta: Mapping) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"reweighted-vanilla": (re-weighted, vanilla)} from the re-weighting table's metadata (`correct`
    per seed): [seeds, prompts] when every seed has as many prompts, else one flat set of pairs."""
    per_seed = [meta["correct"][k] for k in sorted(meta.get("correct", {}), key=int)]
    if not per_seed:
        return {}
    r = [np.asarray(c["reweighted"], float) for c in per_seed]
    v = [np.asarray(c["vanilla"], float) for c in per_seed]
    if len({len(x) for x in r}) == 1:
        return {"reweighted-vanilla": (np.stack(r), np.stack(v))}
    return {"reweighted-vanilla": (np.concatenate(r), np.concatenate(v))}


def claims_table(
    pairs: Mapping[str, Mapping[str, tuple]],
    *,
    model: str,
    n_boot: int = 1000,
    timing: Mapping[str, Mapping[str, tuple[float, float, float]]] | None = None,
) -> pd.DataFrame:
    """Long-format claims table (docs/outputs.md): pairs {dataset: {claim: (arm, reference)}} (from
    `icicl_pairs`, `tsft_pairs`, `reweighting_pairs`); per claim (`arm`) and dataset (pooled: dataset
    "pooled") the rows of `paired_rows` — gain with its interval, p_value — and p_holm over every test
    of the table; timing {dataset: {claim: (speed-up, lo, hi)}} adds `speedup_vs_reference` rows."""
    claims = list(dict.fromkeys(c for by_claim in pairs.values() for c in by_claim))
    rows = []
    for claim in claims:
        strata = {d: by_claim[claim] for d, by_claim in pairs.items() if claim in by_claim}
        rows += pooled_rows(strata, n_boot=n_boot, adjust=False, arm=claim)
    rows = with_holm(rows)
    n_tests = sum(r["metric"] == "p_value" for r in rows)
    if n_tests and holm_resolution(n_tests, n_boot) >= ALPHA:
        log.warning(
            "claims: %d resamples floor a bootstrap p-value at 1/%d, so after Holm over %d tests no "
            "seed-level claim can reach p < %.2f; raise claims.n_boot above %d",
            n_boot,
            n_boot,
            n_tests,
            ALPHA,
            int(n_tests / ALPHA),
        )
    for dataset, by_claim in (timing or {}).items():
        for claim, (est, lo, hi) in by_claim.items():
            rows.append(
                {
                    "arm": claim,
                    "dataset": dataset,
                    "metric": "speedup_vs_reference",
                    "value": est,
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return metric_frame(rows, model=model, family="claims", position="query")


def icicl_timing(table: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """{"<arm>-full_icl": (speed-up, lo, hi)} of the IC-ICL metric table's timed arms in `ICICL_CLAIMS`."""
    speed = table[table.metric == "speedup_vs_full_icl"].set_index("arm")
    return {
        f"{a}-{b}": tuple(float(speed.at[a, c]) for c in ("value", "ci_low", "ci_high"))
        for a, b in ICICL_CLAIMS
        if b == "full_icl" and a in speed.index
    }


# the settings of each tuned arm a claim names (the IC-ICL table's meta["arm_settings"], docs/outputs.md)
CLAIM_SETTINGS = {
    "icicl_soft": ("inject_layer", "depth", "state", "task_space", "label_line"),
    "task_vector": ("layer", "depth", "state"),
    "anchor_kv": ("keep",),
}


def icicl_settings(meta: Mapping) -> dict[str, str]:
    """{"<arm>-<reference>": text} of `ICICL_CLAIMS` from an IC-ICL table's meta: each tuned arm of the
    claim with its settings as it ran and where they were chosen, e.g. "icicl_soft(inject_layer=10,
    depth=0.333, state=last, task_space=anchor, label_line=True; tuned_on=validation) vs
    task_vector(layer=7, depth=0.233, state=mean; tuned_on=validation)"; "" for a claim without one."""
    arms = meta.get("arm_settings") or {}

    def text(arm: str) -> str:
        s = arms.get(arm)
        if arm not in CLAIM_SETTINGS or s is None:
            return ""
        kv = ", ".join(f"{k}={s[k]}" for k in CLAIM_SETTINGS[arm] if k in s)
        return f"{arm}({kv}; tuned_on={s.get('tuned_on', 'config')})"

    return {f"{a}-{b}": " vs ".join(t for t in (text(a), text(b)) if t) for a, b in ICICL_CLAIMS}


def with_settings(claims: pd.DataFrame, settings: Mapping[str, Mapping[str, Mapping[str, str]]]) -> pd.DataFrame:
    """`claims` with a `settings` column: on each per-dataset row of an IC-ICL claim, the tuned arms'
    settings on that dataset (settings {model: {dataset: `icicl_settings`}}); pooled rows (each
    dataset has its own) and the other claims hold ""."""
    out = claims.copy()
    out["settings"] = [
        settings.get(m, {}).get(d, {}).get(a, "")
        for m, d, a in zip(out["model"], out["dataset"], out["arm"], strict=True)
    ]
    return out
