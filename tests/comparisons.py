"""Checks every comparison table must pass (issue 32), shared by the unit tests: Holm-adjusted p-values
beside the raw ones, and every arm's settings with the tuning budget in the table's metadata."""

import numpy as np
import pandas as pd

from iclscope.core.stats import holm


def assert_adjusted(table: pd.DataFrame, keys: list[str]) -> None:
    """Every raw p-value row (metric p_value…) has a p_holm… row with the same keys, the Holm value of
    the table's raw p-values (one family per table), never below the raw one."""
    raw = table[table.metric.str.startswith("p_value")]
    assert len(raw), "the table has no paired test"
    adj = table[table.metric.str.startswith("p_holm")].assign(
        metric=lambda t: t.metric.str.replace("p_holm", "p_value", n=1)
    )
    merged = raw.merge(adj, on=keys + ["metric"], how="left", suffixes=("", "_holm"))
    assert merged["value_holm"].notna().all(), f"no adjusted p for {merged[merged.value_holm.isna()][keys]}"
    np.testing.assert_allclose(merged["value_holm"], holm(merged["value"].to_numpy()), atol=1e-12)
    assert (merged["value_holm"] >= merged["value"] - 1e-12).all()


def assert_arm_settings(meta: dict, arms) -> None:
    """Every arm of the table has its settings in the metadata, and each tuned arm its chosen values, where
    they were chosen (`tuned_on`) and the tuning budget (settings scored, the shared budget, the validation
    inputs)."""
    from iclscope.methods.taskspace.icicl.settings import TUNED_ARMS

    missing = [a for a in arms if a not in meta.get("arm_settings", {})]
    assert not missing, f"arms without their settings: {missing}"
    needed = {  # tuned_on: where the settings were chosen (validation = the dataset's own sweep, or config)
        "icicl_soft": {"inject_layer", "state", "task_space", "label_line", "tuned_on"},
        "task_vector": {"layer", "state", "tuned_on"},
        "anchor_kv": {"keep", "tuned_on"},
    }
    for arm in TUNED_ARMS:
        assert needed[arm] <= set(meta["arm_settings"][arm]), arm
        assert meta["arm_settings"][arm]["tuned_on"] in ("validation", "config"), arm
        budget = (meta.get("tuning") or {}).get(arm)
        assert budget and budget["settings_scored"] <= budget["budget"] and budget["validation_inputs"] > 0, arm
