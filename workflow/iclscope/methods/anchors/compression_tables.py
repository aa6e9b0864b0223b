"""Anchor compression's tables (docs/methods.md §3.7, §3.8) from its per-example rows
(iclscope.methods.anchors.compression): per seed and arm the accuracy, loyalties and timing, and the
paired comparisons pooled over seeds with Holm-adjusted p-values. Pure: no model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.stats import paired_difference, paired_rows, with_holm
from iclscope.core.timing import speedup, tokens_per_second
from iclscope.methods.anchors.measures import jaccard_topk
from iclscope.methods.icl import macro_f1


def _rounds(d) -> np.ndarray:
    """Seconds [n_prompts, rounds] of rows `d` (`seconds_repeats`; the one column `seconds` without it)."""
    if "seconds_repeats" in d:
        return np.stack([np.asarray(v, dtype=float) for v in d["seconds_repeats"]])
    return d[["seconds"]].to_numpy(float)


def _measures(d, ref, n_classes: int, n_boot: int = 1000) -> dict:
    """Accuracy, macro-F1, loyalties against full_icl (rows `ref`, by prompt id), tokens, and for timed rows
    the seconds per example (median over prompts of each prompt's median round), the speed-up vs full_icl
    (median over prompts of the per-prompt median of the rounds' ratios) with its bootstrap interval over
    prompts (`speedup_lo`, `speedup_hi`; iclscope.core.timing) and tokens per second."""
    r = ref.loc[d["prompt_id"]]
    gold, pred = d["gold"].to_numpy(), d["pred"].to_numpy()
    out = {
        "accuracy": float((pred == gold).mean()),
        "macro_f1": macro_f1(gold, pred, range(n_classes)),
        "label_loyalty": float((pred == r["pred"].to_numpy()).mean()),
        "word_loyalty": float(jaccard_topk(list(d["top_ids"]), list(r["top_ids"])).mean()),
        "tokens": float(d["tokens"].mean()),
        "context_tokens": float(d["context_tokens"].mean()),
    }
    if d["seconds"].notna().any():
        t = d[d["seconds"].notna()]
        arm, full = _rounds(t), _rounds(ref.loc[t["prompt_id"]])
        est, lo, hi = speedup(full, arm, n_boot, seed=0)
        out |= {
            "seconds_per_example": float(np.median(np.median(arm, axis=1))),
            "speedup_vs_full_icl": est,
            "speedup_lo": lo,
            "speedup_hi": hi,
            "tokens_per_second": tokens_per_second(t["tokens"], arm),
        }
    return out


def summarise(per_example, n_classes: int) -> list[dict]:
    """Metric rows per seed and arm from the per-example rows (docs/methods.md §3.7 / §3.8).

    per_example: prompt_id, seed, arm, draw (-1 but for hidden_random), gold, pred, top_ids,
    tokens, context_tokens, seconds (NaN when not timed; its interleaved rounds in seconds_repeats).
    Loyalties are against full_icl on the same prompt; hidden_random is the mean over draws,
    hidden_random_top the draw with the best label loyalty (the lowest draw on ties), its index as
    metric `draw`. Timed arms: seconds_per_example, speedup_vs_full_icl (its interval over the seed's
    prompts in ci_low / ci_high) and tokens_per_second (`_measures`).
    """
    rows = []
    for seed, g in per_example.groupby("seed", sort=True):
        ref = g[g.arm == "full_icl"].set_index("prompt_id")
        for arm, d in g.groupby("arm", sort=False):
            if arm != "hidden_random":
                m = _measures(d, ref, n_classes)
                ci = {"ci_low": m.pop("speedup_lo"), "ci_high": m.pop("speedup_hi")} if "speedup_lo" in m else {}
                rows += [
                    {
                        "seed": int(seed),
                        "arm": arm,
                        "metric": k,
                        "value": v,
                        **(ci if k == "speedup_vs_full_icl" else {}),
                    }
                    for k, v in m.items()
                ]
                continue
            draws = {int(k): _measures(dd, ref, n_classes) for k, dd in d.groupby("draw", sort=True)}
            mean = pd.DataFrame(draws.values()).mean().to_dict()
            rows += [
                {"seed": int(seed), "arm": "hidden_random", "metric": k, "value": float(v)} for k, v in mean.items()
            ]
            best = max(draws, key=lambda k: (draws[k]["label_loyalty"], -k))
            rows += [
                {"seed": int(seed), "arm": "hidden_random_top", "metric": k, "value": v}
                for k, v in {**draws[best], "draw": float(best)}.items()
            ]
    return rows


# the paired comparisons of the table (arm, reference): every arm against full_icl, and the paper's
# question, whether the label tokens' KV (hidden_anchor) beats the same budget as text or random tokens
PAIRS = (
    ("hidden_anchor", "full_icl"),
    ("text_anchor", "full_icl"),
    ("hidden_random", "full_icl"),
    ("zero_shot", "full_icl"),
    ("hidden_anchor", "text_anchor"),
    ("hidden_anchor", "hidden_random"),
)


def correct_matrix(per_example: pd.DataFrame, arm: str) -> np.ndarray:
    """[n_draws, n_prompts] 0/1 correctness of `arm` over every seed's prompts (by seed, prompt_id);
    one row but for hidden_random (one per draw)."""
    g = per_example[per_example.arm == arm].assign(correct=lambda d: (d["pred"] == d["gold"]).astype(float))
    return g.pivot_table(index="draw", columns=["seed", "prompt_id"], values="correct", aggfunc="first").to_numpy()


def paired_summary(per_example: pd.DataFrame, n_boot: int = 1000) -> list[dict]:
    """Metric rows of the paired accuracy differences `PAIRS` pooled over seeds (arm
    '<arm>-<reference>', seed empty; iclscope.core.stats.paired_rows): the prompts of every seed are the
    pairs (McNemar's exact test; against hidden_random's draws, the two-level bootstrap over draws and
    prompts gives both interval and p-value, iclscope.core.stats.paired_difference), each p-value with its
    Holm-adjusted value `p_holm` beside it (the family: the paired tests of this table)."""
    rows = []
    arms = set(per_example["arm"])
    for arm, ref in PAIRS:
        if arm not in arms or ref not in arms:
            continue
        a, b = correct_matrix(per_example, arm), correct_matrix(per_example, ref)
        a, b = (
            np.repeat(a, len(b), axis=0) if len(a) == 1 < len(b) else a,
            np.repeat(b, len(a), axis=0) if len(b) == 1 < len(a) else b,
        )
        rows += paired_rows(paired_difference(a, b, n_boot=n_boot, seed=0), arm=f"{arm}-{ref}", seed=None)
    return with_holm(rows)
