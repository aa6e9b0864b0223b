"""Every comparison table carries Holm-adjusted p-values beside the raw ones (issue 32), from
constructed per-example results (no model): IC-ICL, anchor compression, re-weighting, TS-FT."""

import numpy as np
import pandas as pd
import pytest

from iclscope.core.stats import holm


def assert_adjusted(table: pd.DataFrame, keys: list[str]) -> None:
    """Every raw p-value row (metric p_value…) has a p_holm… row with the same keys, the Holm value of
    the table's raw p-values (one family per table), never below the raw one."""
    raw = table[table.metric.str.startswith("p_value")]
    assert len(raw), "the table has no paired test"
    adj = table[table.metric.str.startswith("p_holm")].assign(
        metric=lambda t: t.metric.str.replace("p_holm", "p_value", n=1))
    merged = raw.merge(adj, on=keys + ["metric"], how="left", suffixes=("", "_holm"))
    assert merged["value_holm"].notna().all(), f"no adjusted p for {merged[merged.value_holm.isna()][keys]}"
    np.testing.assert_allclose(merged["value_holm"], holm(merged["value"].to_numpy()), atol=1e-12)
    assert (merged["value_holm"] >= merged["value"] - 1e-12).all()


def fake_icicl(rng, arms=("full_icl", "zero_shot", "icicl_soft", "icicl_identity", "task_vector", "anchor_kv")):
    rows = []
    for arm in arms:
        for t in range(40):
            gold = t % 2
            pred = gold if rng.random() < 0.75 else 1 - gold
            rows.append({"test_row": t, "arm": arm, "draw": -1, "gold": gold, "pred": pred, "correct": pred == gold,
                         "tokens": 10, "timed": t < 5, "seconds": 0.01 if t < 5 else np.nan, "top_ids": [1, 2]})
    return pd.DataFrame(rows)


def test_icicl_table_has_adjusted_p_values():
    from iclscope.methods.taskspace.icicl import add_loyalty, metric_table, paired_table, summarise

    per_example = add_loyalty(fake_icicl(np.random.default_rng(0)))
    paired = paired_table(per_example, 50)
    assert len(paired) == 5 + 4 and (paired["p_holm"] >= paired["p_value"]).all()
    table = metric_table(summarise(per_example, ["a", "b"], 50), paired, model="m", dataset="d", layer=2)
    assert_adjusted(table, ["task"])
    # a table without the adjusted rows fails the check
    with pytest.raises(AssertionError):
        assert_adjusted(table[~table.metric.str.startswith("p_holm")], ["task"])


def test_anchor_compression_table_has_adjusted_p_values():
    from iclscope.core.tables import metric_frame
    from iclscope.methods.anchors.compression import paired_summary

    rng = np.random.default_rng(1)
    rows = []
    for seed in (1, 2):
        for pid in range(20):
            gold = pid % 2
            for arm, draws in (("full_icl", [-1]), ("hidden_anchor", [-1]), ("text_anchor", [-1]),
                               ("zero_shot", [-1]), ("hidden_random", [0, 1, 2])):
                for d in draws:
                    rows.append({"seed": seed, "prompt_id": pid, "arm": arm, "draw": d, "gold": gold,
                                 "pred": gold if rng.random() < 0.7 else 1 - gold})
    per_example = pd.DataFrame(rows)
    out = metric_frame(paired_summary(per_example, 50), model="m", dataset="d", family="anchors")
    assert_adjusted(out, ["label_type"])
    assert set(out.label_type) == {"hidden_anchor-full_icl", "text_anchor-full_icl", "hidden_random-full_icl",
                                   "zero_shot-full_icl", "hidden_anchor-text_anchor", "hidden_anchor-hidden_random"}
    n = out[(out.label_type == "hidden_random-full_icl") & (out.metric == "n_paired")]["value"].item()
    assert n == 3 * 40  # draws × (seeds × prompts)


def test_reweighting_rows_have_adjusted_p_values():
    from iclscope.core.tables import metric_frame
    from iclscope.methods.anchors.reweighting import reweighting_gain_rows

    rng = np.random.default_rng(2)
    correct = {s: (rng.random(30) < 0.6, rng.random(30) < 0.7) for s in (1, 2, 3)}
    out = metric_frame(reweighting_gain_rows(correct, 50), model="m", dataset="d", family="anchors")
    out["seed"] = out["seed"].astype(float)  # merge on an empty seed (pooled)
    assert_adjusted(out, ["label_type", "seed"])
    assert (out.metric == "p_holm").sum() == 4  # three seeds and the pooled test
