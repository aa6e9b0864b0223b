"""icicl.settings_from: sweep (issue 32): each dataset's IC-ICL evaluation runs every tuned arm with the
settings its own validation sweep chose, and its table says so; the config is refused up front where
the sweep could not choose or a tuned key would be silently replaced."""

import copy
from pathlib import Path

import pandas as pd
import pytest
from comparisons import assert_arm_settings

from iclscope.core import jobs
from iclscope.core.config import ConfigError
from iclscope.core.tables import read_meta, write_table
from iclscope.core.validate import load_config, validate_config
from iclscope.methods.taskspace.icicl.evaluate import evaluate_icicl
from iclscope.methods.taskspace.icicl.settings import (
    TUNED_ARMS,
    TUNED_KEYS,
    ICICLSettings,
    SweepGrid,
    chosen_settings,
    evaluation_settings,
    tuning_budget,
)
from iclscope.methods.taskspace.icicl.sweep import sweep_icicl
from iclscope.methods.taskspace.icicl.tables import metric_table, paired_table

REPO = Path(__file__).resolve().parents[2]
DEFAULT = load_config(REPO / "config.yaml")
MODEL = next(iter(DEFAULT["models"]))


def from_sweep(raw: dict) -> dict:
    """`raw` with settings_from: sweep, its tuned keys left to the sweep, the sweep without 'identity'."""
    raw = copy.deepcopy(raw)
    icicl = raw.setdefault("icicl", {})
    for key in jobs.ICICL_TUNED_KEYS:
        icicl.pop(key, None)
    icicl["settings_from"] = "sweep"
    icicl.setdefault("sweep", {})["task_spaces"] = ["pool", "class_mean"]
    for spec in raw["models"].values():
        for key in list(spec.get("layers") or {}):
            if key in ("icicl.inject_layer", "icicl.task_vector_layer"):
                del spec["layers"][key]
    return raw


def sweep_meta(n_layers: int = 30) -> dict:
    """A sweep table's meta as `sweep_icicl` writes it, with choices unlike every default."""
    grid = SweepGrid(depths=(0.33, 0.67), states=("last", "mean"), task_spaces=("pool", "class_mean"), n_val=40)
    return {
        "grid": {},
        "n_layers": n_layers,
        "validation_rows": 40,
        "chosen_by_arm": {
            "icicl_soft": {
                "inject_layer": 0.667,
                "state": "mean",
                "task_space": "class_mean",
                "label_line": False,
                "resid_index": 20,
                "validation_accuracy": 0.8,
            },
            "task_vector": {
                "task_vector_layer": 0.233,
                "task_vector_state": "label",
                "resid_index": 7,
                "validation_accuracy": 0.7,
            },
            "anchor_kv": {"anchor_keep": "label", "validation_accuracy": 0.6},
        },
        "tuning": tuning_budget(grid, n_layers),
    }


def test_the_tuned_keys_are_the_sweeps_choices_and_the_jobs_lists_agree():
    assert set(TUNED_KEYS) == set(TUNED_ARMS)
    assert sorted(k for keys in TUNED_KEYS.values() for k in keys) == sorted(jobs.ICICL_TUNED_KEYS)
    assert set(ICICLSettings.__dataclass_fields__) >= set(jobs.ICICL_TUNED_KEYS)


def test_settings_from_sweep_drops_the_tuned_keys_from_params_only():
    config = validate_config(from_sweep(DEFAULT))
    wc = {"model": MODEL, "dataset": "tweets"}
    mine, default = jobs.settings(config, "icicl", wc), jobs.settings(DEFAULT, "icicl", wc)
    assert not set(jobs.ICICL_TUNED_KEYS) & set(mine["icicl"])
    assert set(jobs.ICICL_TUNED_KEYS) <= set(default["icicl"]) and default["icicl"]["settings_from"] == "config"
    # everything else stays: the same keys and values but the tuned ones and the switch itself
    untuned = lambda s: {k: v for k, v in s.items() if k not in (*jobs.ICICL_TUNED_KEYS, "settings_from")}  # noqa: E731
    assert untuned(mine["icicl"]) == untuned(default["icicl"]) and mine["icicl"]["settings_from"] == "sweep"
    assert {k: v for k, v in mine.items() if k not in ("icicl", "sweep")} == {
        k: v for k, v in default.items() if k not in ("icicl", "sweep")
    }
    # the sweep's own job does not key on the switch: switching reruns no sweep
    assert (
        jobs.settings(config, "icicl_sweep", wc)["icicl"]
        == jobs.settings(
            validate_config({**copy.deepcopy(config), "icicl": {**config["icicl"], "settings_from": "config"}}),
            "icicl_sweep",
            wc,
        )["icicl"]
    )


def test_chosen_settings_are_applied_per_arm():
    config = validate_config(from_sweep(DEFAULT))
    section = jobs.settings(config, "icicl", {"model": MODEL, "dataset": "tweets"})["icicl"]
    settings, source = evaluation_settings(section, 3, sweep_meta())
    assert (settings.inject_layer, settings.state, settings.task_space, settings.label_line) == (
        20,
        "mean",
        "class_mean",
        False,
    )
    assert (settings.task_vector_layer, settings.task_vector_state, settings.anchor_keep) == (7, "label", "label")
    assert settings.k == section["k"] and settings.word_k == 3 and settings.n_test == section["n_test"]
    assert source["settings_from"] == "sweep" and source["tuned_on"] == "validation"
    assert source["chosen_by_arm"] == sweep_meta()["chosen_by_arm"] and source["validation_inputs"] == 40
    # the config's own keys with settings_from: config, untouched by any sweep
    default_section = jobs.settings(DEFAULT, "icicl", {"model": MODEL, "dataset": "tweets"})["icicl"]
    plain, plain_source = evaluation_settings(default_section, 3, None)
    assert plain_source["tuned_on"] == "config" and plain.state == default_section["state"]


def test_a_sweep_without_an_arms_choice_or_a_tuned_key_in_params_is_refused():
    config = validate_config(from_sweep(DEFAULT))
    section = jobs.settings(config, "icicl", {"model": MODEL, "dataset": "tweets"})["icicl"]
    meta = sweep_meta()
    del meta["chosen_by_arm"]["task_vector"]["resid_index"]
    with pytest.raises(ConfigError, match=r"task_vector setting \['resid_index'\]"):
        chosen_settings(meta)
    with pytest.raises(ConfigError, match="no sweep table"):
        evaluation_settings(section, 3, None)
    with pytest.raises(ConfigError, match="anchor_keep"):
        evaluation_settings({**section, "anchor_keep": "anchors"}, 3, sweep_meta())


def test_settings_from_sweep_is_refused_up_front_with_the_key_named():
    validate_config(from_sweep(DEFAULT))  # the fixed config passes
    raw = from_sweep(DEFAULT)
    raw["icicl"]["state"] = "label"  # would be silently replaced by the sweep's choice
    with pytest.raises(ConfigError, match=r"'icicl\.state'"):
        validate_config(raw)
    raw = from_sweep(DEFAULT)
    raw["icicl"]["sweep"]["task_spaces"] = ["identity", "pool"]  # identity is no IC-ICL setting
    with pytest.raises(ConfigError, match=r"'icicl\.sweep\.task_spaces'"):
        validate_config(raw)
    raw = from_sweep(DEFAULT)
    raw["models"][MODEL].setdefault("layers", {})["icicl.task_vector_layer"] = 5
    with pytest.raises(ConfigError, match=rf"'models\.{MODEL}\.layers\.icicl\.task_vector_layer'"):
        validate_config(raw)
    raw = from_sweep(DEFAULT)
    raw["icicl"]["sweep"].update(depths=[0.5], states=["last"], task_spaces=["pool"], label_line=[True])
    with pytest.raises(ConfigError, match=r"'icicl\.sweep': a budget of 1 setting"):  # anchor_kv scores 2
        validate_config(raw)
    raw = from_sweep(DEFAULT)
    raw["icicl"]["enabled"] = False  # nothing runs: nothing to refuse
    raw["icicl"]["state"] = "label"
    validate_config(raw)


def test_the_evaluation_runs_the_sweeps_choices_and_its_table_says_so(prepared_tiny, tmp_path):
    """A real sweep's table (its meta read back from parquet), then the evaluation with choices unlike the
    defaults: every tuned arm's settings in the table's meta are the sweep's, marked tuned on validation,
    with the sweep's budget; the metric table's layer / variant columns follow them."""
    from test_icicl_tsft import SPEC, frame, identity_space

    spec_model, model_dir = prepared_tiny
    spaces = {"class_mean": {1: identity_space(32, 1)}}
    base = ICICLSettings(k=2, pool_size=10, embed_layer=1, n_boot=20)
    grid = SweepGrid(depths=(0.5,), states=("last",), task_spaces=("pool",), label_line=(True, False), n_val=4)
    df = frame(120)
    _, real = sweep_icicl(df[df.split == "train"], SPEC, model_dir, spec_model, spaces, base, grid)
    write_table(pd.DataFrame({"x": [0]}), tmp_path / "sweep.parquet", real)
    meta_back = read_meta(tmp_path / "sweep.parquet")
    assert chosen_settings(meta_back)["inject_layer"] == 1  # the real meta's format is what is applied
    meta_back["chosen_by_arm"]["icicl_soft"].update(state="mean", task_space="class_mean", label_line=False)
    meta_back["chosen_by_arm"]["task_vector"].update(task_vector_state="label")
    meta_back["chosen_by_arm"]["anchor_kv"].update(anchor_keep="label")
    section = {
        "k": 2,
        "pool_size": 10,
        "embed_layer": 1,
        "n_boot": 20,
        "n_test": 4,
        "n_timed": 1,
        "warmup": 0,
        "repeats": 1,
        "random_draws": 1,
        "settings_from": "sweep",
    }
    settings, source = evaluation_settings(section, 3, meta_back)
    per_example, summary, meta = evaluate_icicl(
        frame(), SPEC, model_dir, spec_model, spaces, settings, grid=SweepGrid(n_val=999), source=source
    )
    arms = meta["arm_settings"]
    assert (arms["icicl_soft"]["state"], arms["icicl_soft"]["task_space"], arms["icicl_soft"]["label_line"]) == (
        "mean",
        "class_mean",
        False,
    )
    assert arms["icicl_soft"]["inject_layer"] == 1 and arms["icicl_identity"]["state"] == "mean"
    assert (arms["task_vector"]["layer"], arms["task_vector"]["state"]) == (1, "label")
    assert arms["anchor_kv"]["keep"] == "label" and arms["hidden_random"]["keep"] == "label"
    assert {arms[a]["tuned_on"] for a in TUNED_ARMS} == {"validation"}
    assert meta["tuning"] == real["tuning"]  # the sweep's budget, not one recomputed from the job's grid
    assert meta["settings_source"]["settings_from"] == "sweep" and "tuning" not in meta["settings_source"]
    assert_arm_settings(meta, set(per_example["arm"]))
    table = metric_table(
        summary, paired_table(per_example, 20, 0), model="m", dataset="d", arm_settings=meta["arm_settings"]
    )
    soft = table[(table.arm == "icicl_soft") & (table.metric == "accuracy")].iloc[0]
    assert soft["variant"] == "class_mean" and soft["layer"] == 1
    # a sweep of another model's depth is refused, not applied
    with pytest.raises(ValueError, match="layers"):
        evaluate_icicl(frame(), SPEC, model_dir, spec_model, spaces, settings, source={**source, "n_layers": 30})
