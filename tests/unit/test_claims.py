"""The claims table over datasets (iclscope.report.claims): per dataset and pooled with the stratified
paired bootstrap, Holm over the whole table, from constructed per-example results (no model)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from comparisons import assert_adjusted

from iclscope.core.stats import paired_difference, stratified_paired_difference
from iclscope.report.claims import claims_table, icicl_pairs, icicl_timing, reweighting_pairs

REPO = Path(__file__).resolve().parents[2]


def fake_predictions(rng, n):
    rows = []
    for arm, p in (
        ("full_icl", 0.7),
        ("icicl_soft", 0.8),
        ("task_vector", 0.6),
        ("anchor_kv", 0.7),
        ("hidden_random", 0.5),
    ):
        for t in rng.permutation(n):  # the order of rows does not matter: pairs go by test_row
            rows.append(
                {
                    "arm": arm,
                    "draw": 0 if arm == "hidden_random" else -1,
                    "test_row": int(t) + 1000,
                    "correct": bool(rng.random() < p),
                }
            )
    return pd.DataFrame(rows)


def test_claims_per_dataset_and_pooled():
    rng = np.random.default_rng(0)
    preds = {"tweets": fake_predictions(rng, 50), "words_cat": fake_predictions(rng, 30)}
    pairs = {d: icicl_pairs(p) for d, p in preds.items()}
    pairs["tweets"] |= reweighting_pairs(
        {
            "correct": {
                "43": {"vanilla": [1, 0, 1], "reweighted": [1, 1, 1]},
                "42": {"vanilla": [0, 0, 1], "reweighted": [1, 0, 1]},
            }
        }
    )
    table = claims_table(pairs, model="m", n_boot=200, timing={"tweets": {"icicl_soft-full_icl": (2.2, 1.9, 2.5)}})
    assert_adjusted(table, ["arm", "dataset"])
    gain = table[table.metric == "gain"].set_index(["arm", "dataset"])["value"]
    assert set(gain.index) == {
        (c, d)
        for c in ("icicl_soft-full_icl", "icicl_soft-task_vector", "icicl_soft-anchor_kv")
        for d in ("tweets", "words_cat", "pooled")
    } | {("reweighted-vanilla", "tweets"), ("reweighted-vanilla", "pooled")}
    # per dataset: the plain paired difference on the inputs aligned by test_row
    p = preds["words_cat"]
    col = lambda arm: p[p.arm == arm].sort_values("test_row")["correct"].to_numpy(float)  # noqa: E731
    assert gain[("icicl_soft-full_icl", "words_cat")] == pytest.approx(
        paired_difference(col("icicl_soft"), col("full_icl"), n_boot=0).diff
    )
    # pooled: the stratified difference, weighted by inputs
    pooled = stratified_paired_difference({d: pairs[d]["icicl_soft-full_icl"] for d in preds}, n_boot=0)
    assert gain[("icicl_soft-full_icl", "pooled")] == pytest.approx(pooled.diff)
    assert gain[("icicl_soft-full_icl", "pooled")] == pytest.approx(
        (50 * gain[("icicl_soft-full_icl", "tweets")] + 30 * gain[("icicl_soft-full_icl", "words_cat")]) / 80
    )
    # re-weighting: seeds in order, [seed, prompt]: +2 of 6 prompts
    assert gain[("reweighted-vanilla", "tweets")] == pytest.approx(2 / 6)
    speed = table[table.metric == "speedup_vs_reference"].iloc[0]
    assert (speed["value"], speed["ci_low"], speed["ci_high"], speed["dataset"]) == (2.2, 1.9, 2.5, "tweets")


def seeded_reweighting(gains: tuple[int, ...], n: int = 60) -> dict:
    """Re-weighting metadata with one seed per entry of `gains`: on seed s the re-weighted arm is right
    on gains[s] more of its n prompts than vanilla (each seed its own prompts, as the method draws them)."""
    correct = {}
    for k, g in enumerate(gains):
        vanilla = [0] * (n // 2) + [1] * (n - n // 2)
        correct[str(42 + k)] = {"vanilla": vanilla, "reweighted": [1] * g + vanilla[g:]}
    return {"correct": correct}


def test_seeded_claims_have_an_interval_and_a_p_value_that_agree():
    """Re-weighting's seeds resampled: on `one_seed` only the first seed gains (+30 of 60 prompts, the
    others 0), on `every_seed` all three do. Per dataset and pooled, each row's interval excludes 0
    exactly when its p < 0.05 (the p-value is the interval's own two-level bootstrap), and the raw p
    of `one_seed` is not small, as a test holding the seeds fixed would make it (all 30 pairs one way)."""
    pairs = {
        "one_seed": reweighting_pairs(seeded_reweighting((30, 0, 0))),
        "every_seed": reweighting_pairs(seeded_reweighting((30, 24, 27))),
    }
    table = claims_table(pairs, model="m", n_boot=1000)
    assert_adjusted(table, ["arm", "dataset"])
    wide = table.pivot_table(index="dataset", columns="metric", values="value")
    assert set(wide.index) == {"one_seed", "every_seed", "pooled"}
    excludes = (wide["gain_lo"] > 0) | (wide["gain_hi"] < 0)
    assert (excludes == (wide["p_value"] < 0.05)).all(), wide
    assert wide.at["one_seed", "p_value"] > 0.3 and wide.at["one_seed", "gain_lo"] <= 0
    assert wide.at["every_seed", "p_value"] < 0.05 and wide.at["every_seed", "gain_lo"] > 0


def test_icicl_timing_reads_the_speedup_rows():
    table = pd.DataFrame(
        [
            {"metric": "speedup_vs_full_icl", "arm": "icicl_soft", "value": 2.0, "ci_low": 1.5, "ci_high": 2.4},
            {"metric": "accuracy", "arm": "icicl_soft", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9},
        ]
    )
    assert icicl_timing(table) == {"icicl_soft-full_icl": (2.0, 1.5, 2.4)}


def test_tsft_pairs_are_seed_by_prompt_arrays(tmp_path):
    from test_icicl_tsft import _fake_run

    from iclscope.report.claims import tsft_pairs

    rows = np.arange(5)
    dirs = [
        _fake_run(tmp_path / f"{arm}{seed}", arm, seed, c, rows[::-1] if arm == "space" else rows)
        for arm, seed, c in (
            ("space", 0, [1, 1, 0, 0, 1]),
            ("baseline", 0, [1, 0, 0, 1, 1]),
            ("space", 1, [1, 1, 1, 1, 1]),
            ("baseline", 1, [0, 0, 0, 0, 0]),
        )
    ]
    space, base = tsft_pairs(dirs)["space-baseline"]
    assert space.shape == base.shape == (2, 5)
    np.testing.assert_array_equal(space[0], [1, 0, 0, 1, 1])  # reordered by test row: [1,1,0,0,1] reversed
    assert tsft_pairs(dirs[:1]) == {}


def test_summary_script_writes_the_claims_table(tmp_path):
    """workflow/scripts/summary.py on constructed outputs of two datasets (run in a subprocess: it sends
    stderr to its log): the claims CSV has each dataset and the pooled rows, with raw and Holm p."""
    import json
    import subprocess
    import sys

    from test_icicl_tsft import _fake_run

    from iclscope.core.metrics import metric_frame
    from iclscope.core.tables import write_table
    from iclscope.methods.taskspace.icicl.settings import ICICLSettings, arm_settings

    repo = Path(__file__).resolve().parents[2]
    rng = np.random.default_rng(4)
    tables, predictions, runs = [], [], []
    for dataset, n in (("tweets", 40), ("words_cat", 30)):
        metrics = tmp_path / "results/metrics/m" / dataset
        metrics.mkdir(parents=True)
        pred = tmp_path / "results/icicl/m" / dataset / "predictions.parquet"
        pred.parent.mkdir(parents=True)
        fake_predictions(rng, n).to_parquet(pred)
        predictions.append(str(pred))
        icicl = metric_frame(
            [{"metric": "speedup_vs_full_icl", "arm": "icicl_soft", "value": 2.0, "ci_low": 1.8, "ci_high": 2.2}],
            model="m",
            dataset=dataset,
            family="icicl",
        )
        # each dataset's own chosen settings (here: the soft tokens' state and anchor KV's kept set differ)
        chosen = {"tweets": ("last", "anchors"), "words_cat": ("mean", "label")}[dataset]
        own = ICICLSettings(state=chosen[0], anchor_keep=chosen[1], task_vector_state="label")
        write_table(icicl, metrics / "icicl.parquet", {"arm_settings": arm_settings(own, 10, 7, 30, "validation")})
        write_table(
            metric_frame(
                [{"metric": "accuracy", "arm": "vanilla", "value": 0.5}],
                model="m",
                dataset=dataset,
                family="anchors",
            ),
            metrics / "reweighting.parquet",
            {"correct": {"42": {"vanilla": [0, 1, 0, 1], "reweighted": [1, 1, 0, 1]}}},
        )
        tables += [str(metrics / "icicl.parquet"), str(metrics / "reweighting.parquet")]
        for arm in ("space", "baseline"):
            runs.append(
                str(
                    _fake_run(
                        tmp_path / "results/tsft/m" / dataset / f"{arm}-seed0",
                        arm,
                        0,
                        rng.random(10) < 0.6,
                        np.arange(10),
                    )
                )
            )
    peaks = tmp_path / "peaks.parquet"
    pd.DataFrame({"model": ["m"], "dataset": ["tweets"], "curve": ["information"], "layer": [3]}).to_parquet(peaks)
    out = {k: str(tmp_path / f"{k}.csv") for k in ("headline", "peaks", "claims")}
    driver = f"""
import runpy, types
class N(dict):
    __getattr__ = dict.__getitem__
smk = types.SimpleNamespace(input=N(tables={tables!r}, peaks=[{str(peaks)!r}], predictions={predictions!r},
                                    tsft_runs={runs!r}),
                            output=N({out!r}), log=[{str(tmp_path / "summary.log")!r}], threads=1,
                            params=N(settings={json.dumps(json.dumps({"n_boot": 200}))}), wildcards=N(), resources=N())
runpy.run_path({str(repo / "workflow/scripts/summary.py")!r}, init_globals={{"snakemake": smk}})
"""
    done = subprocess.run(
        [sys.executable, "-c", driver],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(repo / "workflow"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr + (tmp_path / "summary.log").read_text()
    claims = pd.read_csv(out["claims"], keep_default_na=False)
    p = claims[claims.metric.isin(["p_value", "p_holm"])]
    assert set(p["dataset"]) == {"tweets", "words_cat", "pooled"}
    assert set(claims.arm) == {
        "icicl_soft-full_icl",
        "icicl_soft-task_vector",
        "icicl_soft-anchor_kv",
        "space-baseline",
        "reweighted-vanilla",
    }
    pooled_rw = claims[(claims.arm == "reweighted-vanilla") & (claims.dataset == "pooled")].set_index("metric")
    assert float(pooled_rw.at["gain", "value"]) == pytest.approx(0.25) and int(pooled_rw.at["n_paired", "value"]) == 8
    speed = claims[claims.metric == "speedup_vs_reference"]
    assert len(speed) == 2 and (speed["value"].astype(float) == 2.0).all()
    head = pd.read_csv(out["headline"])
    assert {"icicl_speedup_lo", "reweighting_gain_p_raw"} <= set(head.columns)
    # each dataset's chosen settings per tuned arm, on that dataset's IC-ICL claim rows only
    settings = claims.groupby(["arm", "dataset"])["settings"].agg(set).to_dict()
    assert settings[("icicl_soft-anchor_kv", "tweets")] == {
        "icicl_soft(inject_layer=10, depth=0.333, state=last, task_space=pool, label_line=True; tuned_on=validation)"
        " vs anchor_kv(keep=anchors; tuned_on=validation)"
    }
    assert settings[("icicl_soft-task_vector", "words_cat")] == {
        "icicl_soft(inject_layer=10, depth=0.333, state=mean, task_space=pool, label_line=True; tuned_on=validation)"
        " vs task_vector(layer=7, depth=0.233, state=label; tuned_on=validation)"
    }
    assert settings[("icicl_soft-full_icl", "words_cat")] == {
        "icicl_soft(inject_layer=10, depth=0.333, state=mean, task_space=pool, label_line=True; tuned_on=validation)"
    }
    assert all(v == {""} for (arm, d), v in settings.items() if d == "pooled" or not arm.startswith("icicl"))


def test_the_default_resamples_let_a_seed_level_claim_survive_holm(caplog):
    """A bootstrap p is floored at 1/n_boot and Holm multiplies the smallest by the number of tests:
    with too few resamples no claim over seeds can be significant after adjustment (200 resamples,
    20 tests: 0.1). The schema's claims.n_boot must leave room, and a low setting is logged."""
    import logging

    from iclscope.core.validate import validate_config
    from iclscope.report.claims import ALPHA, holm_resolution

    claims_yaml = yaml.safe_load((REPO / "config/examples/claims.yaml").read_text())
    n_boot = validate_config(claims_yaml)["claims"]["n_boot"]
    assert holm_resolution(20, n_boot) < ALPHA / 10
    assert holm_resolution(20, 200) >= ALPHA  # the old setting (icl_accuracy.n_boot)

    rng = np.random.default_rng(0)
    gain = rng.random((3, 60)) < 0.9  # the arm right on 90 % of each seed's inputs, the reference never
    pairs = {d: {"reweighted-vanilla": (gain, np.zeros_like(gain))} for d in ("a", "b", "c", "d")}
    with caplog.at_level(logging.WARNING, logger="iclscope.report.claims"):
        low = claims_table(pairs, model="m", n_boot=50)
    assert "raise claims.n_boot" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iclscope.report.claims"):
        high = claims_table(pairs, model="m", n_boot=n_boot)
    assert caplog.text == ""
    pooled = {
        name: t[(t.metric == "p_holm") & (t.dataset == "pooled")].value.item()
        for name, t in (("low", low), ("high", high))
    }
    assert pooled["low"] >= ALPHA > pooled["high"]  # same data: only the resolution differs
