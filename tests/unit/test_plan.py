"""Which methods run on which dataset (iclscope.core.plan): kinds, `methods:`, switches, and what
each method needs (tasks, demonstrations, three or more classes)."""

import copy
from pathlib import Path

from iclscope.core.plan import Plan
from iclscope.core.validate import load_config, validate_config

DEFAULT = load_config(Path(__file__).resolve().parents[2] / "config.yaml")


def plan_with(**changes) -> Plan:
    raw = copy.deepcopy(DEFAULT)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    return Plan(validate_config(raw))


def test_default_plan():
    plan = Plan(DEFAULT)
    assert plan.classification() == ["tweets", "tweets3"]
    assert plan.decodability() == ["words", "bitwise"] and plan.patching() == ["words"]  # bitwise: decodability only
    assert plan.taskspace() == plan.icicl() == plan.tsft() == ["tweets"]  # tweets3 runs error diagnosis only
    assert plan.anchor_methods("tweets") == ["aucroc", "saliency", "isolation", "reweighting", "anchor_compression"]
    assert plan.anchor_methods("tweets3") == [] and plan.error_diagnosis() == ["tweets3"]
    assert plan.layer_lora() == ["words"]
    assert plan.atlas_tables("tweets") == ["compression", "saliency", "aucroc", "isolation", "entropy"]
    assert plan.atlas_tables("tweets3") == []
    assert plan.toy_corpus() == "tweets" and plan.toy_regression()


def test_switches_turn_families_off():
    plan = plan_with(
        icicl__enabled=False,
        tsft__enabled=False,
        patching__enabled=False,
        entropy__enabled=False,
        anchors__reweighting__enabled=False,
        layer_lora__enabled=False,
        anchors__compression__enabled=False,
    )
    assert plan.icicl() == plan.tsft() == plan.patching() == plan.entropy() == plan.layer_lora() == []
    assert plan.toy_corpus() is None and plan.reweighting() == []
    assert "reweighting" not in plan.anchor_methods("tweets") and "entropy" not in plan.atlas_tables("tweets")
    assert "anchor_compression" not in plan.anchor_methods("tweets")


def test_methods_key_and_what_a_method_needs():
    plan = plan_with(datasets__tweets3__methods=None, anchors__reweighting__enabled=False)
    assert plan.error_diagnosis() == ["tweets3"] and "saliency" in plan.anchor_methods("tweets3")
    zero_shot = plan_with(datasets__tweets__prompts={**DEFAULT["datasets"]["tweets"]["prompts"], "shots_per_class": 0})
    assert zero_shot.anchor_methods("tweets") == []  # no demonstrations: no label positions to study
    assert "tweets" in zero_shot.taskspace()
    binary = plan_with(datasets__tweets3__classes={"negative": " negative", "positive": " positive"})
    assert binary.error_diagnosis() == []  # one class pair cannot be correlated


def test_toy_training_threads_follow_the_width():
    """The default toys (d_model 32-128) train on one thread; a paper-size toy gets threads by width."""
    plan = Plan(DEFAULT)
    assert [plan.toy_threads(s) for s in plan.toy_lm_sizes()] == [1, 1, 1] and plan.toy_threads() == 1
    wide = plan_with(
        entropy__training__sizes=[
            {"name": "paper", "d_model": 512, "n_layers": 4, "n_heads": 8},
            {"name": "huge", "d_model": 4096, "n_layers": 2, "n_heads": 8},
        ],
        toy_regression__d_model=256,
    )
    assert wide.toy_threads("paper") == 4 and wide.toy_threads("huge") == 8 and wide.toy_threads() == 2


def test_figure_inputs_are_the_planned_figures_tables():
    """What `rule all` leaves out (workflow/rules/common.smk, all_targets): the tables the planned figures
    read, each a planned table, and nothing of a figure that is not planned."""
    plan = Plan(DEFAULT)
    read = plan.figure_inputs()
    tables = set(plan.targets("tables"))
    assert {f"results/metrics/{m}/tweets/aucroc.parquet" for m in plan.models} <= read
    assert {f"results/taskspace/{m}/tweets.view.parquet" for m in plan.models} <= read  # the task_space figure's points
    assert {p for p in read if p.startswith("results/metrics/")} <= tables
    assert not any("{" in p or "seed" in p for p in read)  # TS-FT's runs: no target names them
    assert not any("sweep" in p for p in read)  # icicl.sweep.enabled is false: its figure is not planned
    assert plan_with(icicl__enabled=False).figure_inputs() == {p for p in read if "/icicl" not in p}
