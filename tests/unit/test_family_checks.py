"""A family's config rules live next to its registry entry (iclscope.core.families, `checks`);
validate_config runs every family's rules and collects their problems with the schema's."""

import copy
from pathlib import Path

import pytest
import yaml

from iclscope.core import families
from iclscope.core.config import ConfigError
from iclscope.core.validate import validate_config

DEFAULT = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())


def test_the_family_rules_sit_in_their_families():
    with_rules = {f.name: [c.__name__ for c in f.checks] for f in families.FAMILIES if f.checks}
    assert with_rules == {
        "tsft": ["_tsft_rules"],
        "reweighting": ["_reweighting_rules"],
        "entropy": ["_entropy_rules"],
        "toy_regression": ["_toy_regression_rules"],
    }
    assert all(check(validate_config(DEFAULT)) == [] for f in families.FAMILIES for check in f.checks)


def test_every_familys_problems_are_reported_at_once():
    cfg = copy.deepcopy(DEFAULT)
    cfg["entropy"]["datasets"] = ["nowhere"]
    cfg["entropy"]["training"]["sizes"][0].update(d_model=10, n_heads=4)
    cfg["toy_regression"].update(d_model=30, n_heads=4)
    cfg["datasets"]["tweets"]["prompts"]["n_train"] = 5
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    for key in ("entropy.datasets", "entropy.training.sizes", "toy_regression.d_model", "prompts.n_train"):
        assert key in msg, key


def test_a_family_rule_is_skipped_where_the_family_does_not_run():
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["tweets"]["prompts"]["n_train"] = 5  # too few for re-weighting ...
    cfg["datasets"]["tweets"]["methods"] = ["tsft"]  # ... which does not run on tweets
    validate_config(cfg)
