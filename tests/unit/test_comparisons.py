"""Every comparison table carries Holm-adjusted p-values beside the raw ones (issue 32), from
constructed per-example results (no model): IC-ICL, anchor compression, re-weighting, TS-FT."""

import numpy as np
import pandas as pd
import pytest
from comparisons import assert_adjusted, assert_arm_settings


def fake_icicl(rng, arms=("full_icl", "zero_shot", "icicl_soft", "icicl_identity", "task_vector", "anchor_kv")):
    rows = []
    for arm in arms:
        for t in range(40):
            gold = t % 2
            pred = gold if rng.random() < 0.75 else 1 - gold
            rows.append(
                {
                    "test_row": t,
                    "arm": arm,
                    "draw": -1,
                    "gold": gold,
                    "pred": pred,
                    "correct": pred == gold,
                    "tokens": 10,
                    "timed": t < 5,
                    "seconds": 0.01 if t < 5 else np.nan,
                    "top_ids": [1, 2],
                }
            )
    return pd.DataFrame(rows)


def test_icicl_table_has_adjusted_p_values():
    from iclscope.methods.taskspace.icicl.tables import add_loyalty, metric_table, paired_table, summarise

    per_example = add_loyalty(fake_icicl(np.random.default_rng(0)))
    paired = paired_table(per_example, 50)
    assert len(paired) == 5 + 4 and (paired["p_holm"] >= paired["p_value"]).all()
    table = metric_table(summarise(per_example, ["a", "b"], 50), paired, model="m", dataset="d", arm_settings={})
    assert_adjusted(table, ["arm"])
    # a table without the adjusted rows fails the check
    with pytest.raises(AssertionError):
        assert_adjusted(table[~table.metric.str.startswith("p_holm")], ["arm"])


def test_anchor_compression_table_has_adjusted_p_values():
    from iclscope.core.metrics import metric_frame
    from iclscope.methods.anchors.compression_tables import paired_summary

    rng = np.random.default_rng(1)
    rows = []
    for seed in (1, 2):
        for pid in range(20):
            gold = pid % 2
            for arm, draws in (
                ("full_icl", [-1]),
                ("hidden_anchor", [-1]),
                ("text_anchor", [-1]),
                ("zero_shot", [-1]),
                ("hidden_random", [0, 1, 2]),
            ):
                for d in draws:
                    rows.append(
                        {
                            "seed": seed,
                            "prompt_id": pid,
                            "arm": arm,
                            "draw": d,
                            "gold": gold,
                            "pred": gold if rng.random() < 0.7 else 1 - gold,
                        }
                    )
    per_example = pd.DataFrame(rows)
    out = metric_frame(paired_summary(per_example, 50), model="m", dataset="d", family="anchors")
    assert_adjusted(out, ["arm"])
    assert set(out.arm) == {
        "hidden_anchor-full_icl",
        "text_anchor-full_icl",
        "hidden_random-full_icl",
        "zero_shot-full_icl",
        "hidden_anchor-text_anchor",
        "hidden_anchor-hidden_random",
    }
    n = out[(out.arm == "hidden_random-full_icl") & (out.metric == "n_paired")]["value"].item()
    assert n == 3 * 40  # draws × (seeds × prompts)


def test_reweighting_rows_have_adjusted_p_values():
    from iclscope.core.metrics import metric_frame
    from iclscope.methods.anchors.reweighting import reweighting_gain_rows

    rng = np.random.default_rng(2)
    correct = {s: (rng.random(30) < 0.6, rng.random(30) < 0.7) for s in (1, 2, 3)}
    out = metric_frame(reweighting_gain_rows(correct, 50), model="m", dataset="d", family="anchors")
    out["seed"] = out["seed"].astype(float)  # merge on an empty seed (pooled)
    assert_adjusted(out, ["arm", "seed"])
    assert (out.metric == "p_holm").sum() == 4  # three seeds and the pooled test


def test_icicl_meta_states_every_arms_settings_and_the_tuning_budget():
    from iclscope.methods.taskspace.icicl.settings import ICICLSettings, SweepGrid, arm_settings, tuning_budget

    settings = ICICLSettings(task_vector_layer=7, task_vector_state="mean", anchor_keep="label")
    grid = SweepGrid()
    meta = {"arm_settings": arm_settings(settings, 10, 7, 30), "tuning": tuning_budget(grid, 30)}
    arms = [
        "zero_shot",
        "full_icl",
        "icicl_soft",
        "icicl_identity",
        "task_vector",
        "anchor_kv",
        "text_anchor",
        "hidden_random",
    ]
    assert_arm_settings(meta, arms)
    assert meta["arm_settings"]["task_vector"] == {
        "k": 4,
        "retrieval": "similar",
        "pool_size": 200,
        "layer": 7,
        "depth": 0.233,
        "state": "mean",
        "tuned_on": "config",
    }
    assert meta["arm_settings"]["anchor_kv"]["keep"] == "label"
    # the default grid on a 30-layer model: IC-ICL 3 layers x 3 states x 4 spaces x 2 = 72 settings; the task
    # vector 24 evenly spaced layers x 3 states = 72 (29 layers would be 87); anchor_kv its 2 kept sets
    t = meta["tuning"]
    assert [t[a]["settings_scored"] for a in ("icicl_soft", "task_vector", "anchor_kv")] == [72, 72, 2]
    assert t["task_vector"]["grid"]["layer"][0] == 1 and t["task_vector"]["grid"]["layer"][-1] == 29
    assert {v["validation_inputs"] for v in t.values()} == {200}
    with pytest.raises(AssertionError, match="without their settings"):
        assert_arm_settings(
            {**meta, "arm_settings": {k: v for k, v in meta["arm_settings"].items() if k != "task_vector"}}, arms
        )
    with pytest.raises(AssertionError):
        assert_arm_settings({**meta, "tuning": None}, arms)
    untold = {
        **meta["arm_settings"],
        "anchor_kv": {k: v for k, v in meta["arm_settings"]["anchor_kv"].items() if k != "tuned_on"},
    }
    with pytest.raises(AssertionError, match="anchor_kv"):  # where its settings were chosen is part of them
        assert_arm_settings({**meta, "arm_settings": untold}, arms)


def test_task_vector_layers_fill_the_budget_evenly():
    from iclscope.methods.taskspace.icicl.settings import task_vector_layers

    assert task_vector_layers(10, 72, 3) == list(range(1, 10))  # every layer fits
    layers = task_vector_layers(30, 72, 3)
    assert len(layers) == 24 and layers == sorted(set(layers)) and layers[0] == 1 and layers[-1] == 29
    assert task_vector_layers(30, 2, 3) == [1]  # at least one layer
