"""IC-ICL's tables from the per-example rows: loyalty against full_icl, the summary per arm with its
timing, the paired comparisons with Holm-adjusted p-values, and the long-format metric table."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.stats import bootstrap_mean, holm, paired_difference
from iclscope.core.timing import speedup, tokens_per_second
from iclscope.methods.anchors.measures import jaccard_topk
from iclscope.methods.icl import macro_f1

PAIRS = (
    ("icicl_soft", "icicl_identity"),
    ("icicl_soft", "task_vector"),
    ("icicl_soft", "anchor_kv"),
    ("icicl_soft", "zero_shot"),
)


def add_loyalty(per_example: pd.DataFrame) -> pd.DataFrame:
    """Per row, against full_icl on the same test input (docs/methods.md §3.3/§3.7): `label_loyal` (the
    same predicted label) and `word_loyalty` (Jaccard of the top-k vocabulary ids)."""
    ref = per_example[per_example.arm == "full_icl"].set_index("test_row").loc[per_example["test_row"]]
    out = per_example.copy()
    out["label_loyal"] = out["pred"].to_numpy() == ref["pred"].to_numpy()
    out["word_loyalty"] = jaccard_topk(out["top_ids"].tolist(), ref["top_ids"].tolist())
    return out


def best_random_draw(per_example: pd.DataFrame) -> int:
    """The Hidden_random draw with the best label loyalty (first draw on ties): hidden_random_top."""
    loyal = per_example[per_example.arm == "hidden_random"].groupby("draw")["label_loyal"].mean()
    return int(loyal.index[np.argmax(loyal.to_numpy())])


def timed_seconds(g: pd.DataFrame) -> pd.DataFrame:
    """The timed rows of `g` by test_row: per round seconds [n_timed, repeats] as columns 0..R-1
    (`seconds_repeats`; one column of `seconds` for rows without it), and tokens."""
    t = g[g["timed"]].drop_duplicates("test_row").set_index("test_row").sort_index()
    reps = (
        np.stack(t["seconds_repeats"].map(np.asarray).to_list())
        if "seconds_repeats" in t and len(t)
        else t[["seconds"]].to_numpy(float)
    )
    return pd.DataFrame(reps, index=t.index).assign(tokens=t["tokens"])


def timing_row(g: pd.DataFrame, full: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Seconds per example (median over the timed inputs of each input's median round), the speed-up
    vs full_icl with its bootstrap interval over inputs (iclscope.core.timing.speedup, rounds paired),
    the time reduction 1 − 1/speed-up, and tokens per second."""
    arm = timed_seconds(g)
    ref = full.loc[full.index.intersection(arm.index)]
    arm = arm.loc[ref.index]
    rounds = [c for c in arm.columns if c != "tokens"]
    if not len(arm):
        return {
            k: np.nan
            for k in (
                "seconds_per_example",
                "speedup_vs_full_icl",
                "speedup_lo",
                "speedup_hi",
                "time_reduction_vs_full_icl",
                "tokens_per_second",
            )
        }
    est, lo, hi = speedup(ref[rounds].to_numpy(), arm[rounds].to_numpy(), n_boot, seed)
    return {
        "seconds_per_example": float(np.median(np.median(arm[rounds].to_numpy(), axis=1))),
        "speedup_vs_full_icl": est,
        "speedup_lo": lo,
        "speedup_hi": hi,
        "time_reduction_vs_full_icl": 1 - 1 / est,
        "tokens_per_second": tokens_per_second(arm["tokens"].to_numpy(), arm[rounds].to_numpy()),
    }


def summarise(per_example: pd.DataFrame, classes: list[str], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per arm: accuracy with its bootstrap interval, macro-F1, label / word loyalty vs full_icl, mean
    tokens, and on the timed sample (`timing_row`): seconds per example, the median speed-up vs
    full_icl over inputs with its interval, tokens per second. hidden_random: the mean over its
    draws; hidden_random_top: the draw with the best label loyalty, named in `draw` (both timed by
    the draws' common timing, draw 0)."""
    full = timed_seconds(per_example[per_example.arm == "full_icl"])
    hr = per_example[per_example.arm == "hidden_random"]

    def row(arm: str, g: pd.DataFrame, draw: float = np.nan) -> dict:
        lo, hi = bootstrap_mean(g["correct"].to_numpy(), n_boot, seed)
        timing = timing_row(hr if arm.startswith("hidden_random") else g, full, n_boot, seed)
        return {
            "arm": arm,
            "accuracy": g["correct"].mean(),
            "accuracy_lo": lo,
            "accuracy_hi": hi,
            "macro_f1": macro_f1(g["gold"].to_numpy(), g["pred"].to_numpy(), range(len(classes))),
            "label_loyalty": g["label_loyal"].mean(),
            "word_loyalty": g["word_loyalty"].mean(),
            "tokens": g["tokens"].mean(),
            **timing,
            "draw": draw,
            "n": len(g),
        }

    out = []
    for arm, g in per_example.groupby("arm", sort=False):
        if arm != "hidden_random":
            out.append(row(arm, g))
            continue
        draws = [row(arm, gd, d) for d, gd in g.groupby("draw")]
        mean = pd.DataFrame(draws).drop(columns="arm").mean().to_dict()
        out.append({**mean, "arm": "hidden_random", "draw": np.nan, "n": len(g) // len(draws)})
        top = best_random_draw(per_example)
        out.append({**next(r for r in draws if r["draw"] == top), "arm": "hidden_random_top"})
    return pd.DataFrame(out)


def correctness(per_example: pd.DataFrame, arm: str) -> np.ndarray:
    """[n_draws, n_inputs] 0/1 correctness of `arm` (one row unless hidden_random), inputs by test_row."""
    if arm == "hidden_random_top":
        g = per_example[(per_example.arm == "hidden_random") & (per_example.draw == best_random_draw(per_example))]
    else:
        g = per_example[per_example.arm == arm]
    return g.pivot_table(index="draw", columns="test_row", values="correct", aggfunc="first").to_numpy(float)


def paired_table(per_example: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy differences on the same inputs, with a paired bootstrap interval and a p-value
    (McNemar exact; over Hidden_random draws, the two-level bootstrap's own p-value, docs/methods.md
    §0.4): every arm against full_icl,
    and icicl_soft against `PAIRS`' references. One row per (arm, reference); `p_holm` is the
    Holm-adjusted p-value, the family being every paired test of this table (iclscope.core.stats.holm)."""
    arms = [a for a in dict.fromkeys(per_example["arm"]) if a != "full_icl"]
    if "hidden_random" in arms:
        arms.insert(arms.index("hidden_random") + 1, "hidden_random_top")
    pairs = [(a, "full_icl") for a in arms] + [p for p in PAIRS if p[1] in arms and p[0] in arms]
    rows = []
    for arm, ref in pairs:
        a, b = correctness(per_example, arm), correctness(per_example, ref)
        b = np.repeat(b, len(a), axis=0) if len(b) == 1 and len(a) > 1 else b
        rows.append({"arm": arm, "reference": ref, **paired_difference(a, b, n_boot=n_boot, seed=seed).as_dict()})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p_value"].to_numpy()) if len(out) else []
    return out


SUMMARY_METRICS = (
    "accuracy",
    "macro_f1",
    "label_loyalty",
    "word_loyalty",
    "tokens",
    "seconds_per_example",
    "speedup_vs_full_icl",
    "time_reduction_vs_full_icl",
    "tokens_per_second",
    "draw",
    "n",
)
INTERVALS = {"accuracy": ("accuracy_lo", "accuracy_hi"), "speedup_vs_full_icl": ("speedup_lo", "speedup_hi")}


PAIRED_METRICS = ("accuracy_diff", "p_value", "p_holm")  # a paired comparison's rows (arm "<arm>-<reference>")


def arm_columns(arm_settings: Mapping[str, Mapping]) -> dict[str, dict]:
    """Per arm, the columns that say what it ran with (`settings.arm_settings`: meta["arm_settings"]):
    `layer` = the residual index its states are written at (icicl_soft / icicl_identity: the injection layer;
    task_vector: its own; the arms that write nothing: none) and `variant` = the task space its soft
    tokens went through (icicl_soft; "identity" for icicl_identity; none elsewhere)."""
    out = {}
    for arm, s in arm_settings.items():
        layer = s.get("inject_layer", s.get("layer"))
        out[arm] = {"layer": None if layer is None else int(layer), "variant": s.get("task_space")}
    out["hidden_random_top"] = out.get("hidden_random", {"layer": None, "variant": None})
    return out


def metric_table(
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    *,
    model: str,
    dataset: str,
    arm_settings: Mapping[str, Mapping],
) -> pd.DataFrame:
    """The long-format IC-ICL table (iclscope.core.metrics), one meaning per column:

    * per arm (`arm`) the summary metrics: accuracy with its interval in ci_low / ci_high;
      `speedup_vs_full_icl` with its interval over the timed inputs in ci_low / ci_high;
      `tokens_per_second`; `draw` = which Hidden_random draw hidden_random_top is. `layer` and
      `variant` are the arm's own (`arm_columns` of `arm_settings`), empty for arms without them;
    * per paired comparison (`arm` = "<arm>-<reference>", no layer or variant) `accuracy_diff`
      (interval in ci_low / ci_high), `p_value` (raw) and `p_holm` (Holm-adjusted over the table's
      paired tests).

    `position` is "query" throughout (every arm is read at the last position); `task` is empty."""
    columns = arm_columns(arm_settings)
    rows = [
        {
            "metric": m,
            "arm": r["arm"],
            **columns.get(r["arm"], {}),
            "value": r[m],
            **({"ci_low": r[INTERVALS[m][0]], "ci_high": r[INTERVALS[m][1]]} if m in INTERVALS else {}),
        }
        for r in summary.to_dict("records")
        for m in SUMMARY_METRICS
        if not pd.isna(r[m])
    ]
    for r in paired.to_dict("records"):
        pair = f"{r['arm']}-{r['reference']}"
        rows += [
            {
                "metric": "accuracy_diff",
                "arm": pair,
                "value": r["diff"],
                "ci_low": r["diff_lo"],
                "ci_high": r["diff_hi"],
            },
            {"metric": "p_value", "arm": pair, "value": r["p_value"]},
            {"metric": "p_holm", "arm": pair, "value": r["p_holm"]},
        ]
    return metric_frame(rows, model=model, dataset=dataset, family="icicl", position="query")
