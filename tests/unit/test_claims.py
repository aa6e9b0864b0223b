"""The claims table over datasets (iclscope.report.claims): per dataset and pooled with the stratified
paired bootstrap, Holm over the whole table, from constructed per-example results (no model)."""

import numpy as np
import pandas as pd
import pytest
from comparisons import assert_adjusted

from iclscope.core.stats import paired_difference, stratified_paired_difference
from iclscope.report.claims import claims_table, icicl_pairs, icicl_timing, reweighting_pairs


def fake_predictions(rng, n):
    rows = []
    for arm, p in (("full_icl", 0.7), ("icicl_soft", 0.8), ("task_vector", 0.6), ("anchor_kv", 0.7),
                   ("hidden_random", 0.5)):
        for t in rng.permutation(n):  # the order of rows does not matter: pairs go by test_row
            rows.append({"arm": arm, "draw": 0 if arm == "hidden_random" else -1, "test_row": int(t) + 1000,
                         "correct": bool(rng.random() < p)})
    return pd.DataFrame(rows)


def test_claims_per_dataset_and_pooled():
    rng = np.random.default_rng(0)
    preds = {"tweets": fake_predictions(rng, 50), "words_cat": fake_predictions(rng, 30)}
    pairs = {d: icicl_pairs(p) for d, p in preds.items()}
    pairs["tweets"] |= reweighting_pairs({"correct": {"43": {"vanilla": [1, 0, 1], "reweighted": [1, 1, 1]},
                                                      "42": {"vanilla": [0, 0, 1], "reweighted": [1, 0, 1]}}})
    table = claims_table(pairs, model="m", n_boot=200,
                         timing={"tweets": {"icicl_soft-full_icl": (2.2, 1.9, 2.5)}})
    assert_adjusted(table, ["task", "dataset"])
    gain = table[table.metric == "gain"].set_index(["task", "dataset"])["value"]
    assert set(gain.index) == {(c, d) for c in ("icicl_soft-full_icl", "icicl_soft-task_vector",
                                                 "icicl_soft-anchor_kv") for d in ("tweets", "words_cat", "pooled")} | {
        ("reweighted-vanilla", "tweets"), ("reweighted-vanilla", "pooled")}
    # per dataset: the plain paired difference on the inputs aligned by test_row
    p = preds["words_cat"]
    col = lambda arm: p[p.arm == arm].sort_values("test_row")["correct"].to_numpy(float)  # noqa: E731
    assert gain[("icicl_soft-full_icl", "words_cat")] == pytest.approx(
        paired_difference(col("icicl_soft"), col("full_icl"), n_boot=0).diff)
    # pooled: the stratified difference, weighted by inputs
    pooled = stratified_paired_difference({d: pairs[d]["icicl_soft-full_icl"] for d in preds}, n_boot=0)
    assert gain[("icicl_soft-full_icl", "pooled")] == pytest.approx(pooled.diff)
    assert gain[("icicl_soft-full_icl", "pooled")] == pytest.approx(
        (50 * gain[("icicl_soft-full_icl", "tweets")] + 30 * gain[("icicl_soft-full_icl", "words_cat")]) / 80)
    # re-weighting: seeds in order, [seed, prompt]: +2 of 6 prompts
    assert gain[("reweighted-vanilla", "tweets")] == pytest.approx(2 / 6)
    speed = table[table.metric == "speedup_vs_reference"].iloc[0]
    assert (speed["value"], speed["ci_low"], speed["ci_high"], speed["dataset"]) == (2.2, 1.9, 2.5, "tweets")


def test_icicl_timing_reads_the_speedup_rows():
    table = pd.DataFrame([{"metric": "speedup_vs_full_icl", "task": "icicl_soft", "value": 2.0, "ci_low": 1.5,
                           "ci_high": 2.4},
                          {"metric": "accuracy", "task": "icicl_soft", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9}])
    assert icicl_timing(table) == {"icicl_soft-full_icl": (2.0, 1.5, 2.4)}


def test_tsft_pairs_are_seed_by_prompt_arrays(tmp_path):
    from test_icicl_tsft import _fake_run

    from iclscope.report.claims import tsft_pairs

    rows = np.arange(5)
    dirs = [_fake_run(tmp_path / f"{arm}{seed}", arm, seed, c, rows[::-1] if arm == "space" else rows)
            for arm, seed, c in (("space", 0, [1, 1, 0, 0, 1]), ("baseline", 0, [1, 0, 0, 1, 1]),
                                 ("space", 1, [1, 1, 1, 1, 1]), ("baseline", 1, [0, 0, 0, 0, 0]))]
    space, base = tsft_pairs(dirs)["space-baseline"]
    assert space.shape == base.shape == (2, 5)
    np.testing.assert_array_equal(space[0], [1, 0, 0, 1, 1])  # reordered by test row: [1,1,0,0,1] reversed
    assert tsft_pairs(dirs[:1]) == {}
