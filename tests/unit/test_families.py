"""The family registry (iclscope.core.families) against everything that names a family: the schema's
`methods` enum and sections, the rules files, the figure captions and plots, the layer atlas, the
plan's targets, and the code digests (adding a family reruns nothing)."""

import re
from pathlib import Path

import yaml
from test_jobs import SCRIPTS, _package_copy

from iclscope.core import families
from iclscope.core.families import FAMILIES, METHODS_BY_KIND
from iclscope.core.plan import Plan
from iclscope.core.validate import SCHEMA_PATH, load_config

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "workflow" / "rules"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEFAULT = load_config(REPO / "config.yaml")
# the rules of the pipeline itself, not of a family: data, models, prompts, extraction, the lab
# store's link rules, the layer atlas and the summary, and the named targets of all of them
PIPELINE_RULES = {
    "prepare_model",
    "model_manifest",
    "prepare_dataset",
    "build_prompts",
    "extract",
    "gather_activations",
    "activations",
    "link_prepare_model",
    "link_prepare_dataset",
    "link_extract",
    "link_token_states",
    "link_extract_anchors",
    "link_gather_activations",
    "layer_atlas",
    "summary",
    "metrics",
    "figures",
}


def _rules_in(path: Path) -> set[str]:
    return set(re.findall(r"^\s*rule (\w+):", path.read_text(), flags=re.M))


def test_the_schema_enum_is_the_registry():
    """`datasets.<name>.methods` may name exactly the selectable families, and each kind's among them."""
    enum = SCHEMA["$defs"]["dataset"]["properties"]["methods"]["items"]["enum"]
    assert sorted(enum) == sorted(f.name for f in FAMILIES if f.selectable)  # the schema lists them by paper
    assert set().union(*METHODS_BY_KIND.values()) == set(enum)
    kinds = SCHEMA["$defs"]["dataset"]["properties"]["kind"]["enum"]
    assert set(METHODS_BY_KIND) == set(kinds) == set(families.KINDS)


def test_every_family_section_is_a_config_section():
    assert {f.section for f in FAMILIES} <= set(SCHEMA["properties"])
    assert all(f.section in DEFAULT for f in FAMILIES)


def test_every_rule_is_a_familys_or_the_pipelines_and_lives_in_its_rules_file():
    defined = {path.name: _rules_in(path) for path in RULES.glob("*.smk")}
    figure_rules = {o.rule for o in families.figures()}
    for family in FAMILIES:
        own = set(family.rules) - figure_rules
        assert own <= defined[family.rules_file], (family.name, own - defined[family.rules_file])
        assert set(family.targets) <= defined[family.rules_file], family.name
    everything = set().union(*defined.values())  # figures.smk generates fig_<name> in a loop: not in it
    named = {r for f in FAMILIES for r in (*f.rules, *f.targets)} - figure_rules
    assert everything - named - PIPELINE_RULES == set(), "a rule no family names"
    assert named - everything == set(), "a family names a rule that does not exist"
    rules = [r for f in FAMILIES for r in f.rules]
    assert len(rules) == len(set(rules)), "a rule belongs to one family"
    snakefile = (REPO / "Snakefile").read_text()
    assert "for _rules_file in RULES_FILES" in snakefile and "metrics.smk" not in snakefile


def test_every_figure_has_a_plot_a_caption_and_a_unique_name():
    from iclscope.report import plots

    names = [o.name for o in families.figures()]
    assert len(names) == len(set(names))
    for output in families.figures():
        assert callable(getattr(plots, f"plot_{output.plot or output.name}", None)), output.name
    for name in names:
        assert (REPO / "workflow" / "report" / f"{name}.rst").is_file(), name
        assert families.category(name)


def test_the_atlas_draws_the_tables_the_registry_gives_it():
    from iclscope.report import atlas, plots

    assert {t for f in FAMILIES for t in f.atlas} == set(atlas.TABLES)
    drawn = {name for _, names in plots.ATLAS_PANELS for name in names}
    assert set(atlas.CURVES) <= drawn and drawn - set(atlas.CURVES) == {
        "isolation loyalty (first k)",
        "isolation loyalty (last k)",
    }


def test_plan_targets_are_every_family_product():
    plan = Plan(DEFAULT)
    tables, figures = plan.targets("tables"), plan.targets("figures")
    assert sorted(plan.targets()) == sorted(tables + figures) and len(set(tables + figures)) == len(tables + figures)
    assert all(p.endswith(".parquet") for p in tables) and all(p.endswith(".png") for p in figures)
    # every family with a dataset in the default config makes its tables and figures
    for family in FAMILIES:
        for output in (*family.tables, *family.figures):
            if plan.datasets_for(output.datasets):
                assert set(plan.paths(output)) <= set(tables + figures), output.name
    assert "results/metrics/toy/regression/toy_regression.parquet" in tables
    assert "results/figures/toy/tweets/entropy_training.png" in figures
    assert plan.summary_tables("tweets") == plan.atlas_tables("tweets") + [
        "icl_accuracy",
        "icicl",
        "tsft",
        "reweighting",
    ]


def _digests_in(pkg: Path, scripts) -> list[str]:
    """The code digest of each of `scripts` as a copy of the package at `pkg` computes it (one import)."""
    import importlib
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "iclscope_copy", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["iclscope_copy"] = module
    try:
        spec.loader.exec_module(module)
        copy_jobs = importlib.import_module("iclscope_copy.core.jobs")
        return [copy_jobs.code_digest(script) for script in scripts]
    finally:
        for name in [n for n in sys.modules if n.startswith("iclscope_copy")]:
            del sys.modules[name]


def test_adding_a_family_reruns_nothing(tmp_path):
    """The registry is planning data (core.jobs.NOT_PRODUCT_CODE): a new family changes no script's
    code digest, though config validation imports it; an edit of config.py itself changes them."""
    pkg = _package_copy(tmp_path)
    scripts = sorted(SCRIPTS.glob("*.py"))
    before = _digests_in(pkg, scripts)
    registry = pkg / "core" / "families.py"
    registry.write_text(
        registry.read_text()
        + "\nFAMILIES = (*FAMILIES, Family('probe', 'a paper', ('classification',), 'probe', 'probe.smk',"
        + " ('probe',), tables=(table('probe', 'probe'),)))\n"
    )
    assert _digests_in(pkg, scripts) == before
    config = pkg / "core" / "config.py"
    config.write_text(config.read_text() + "\nEXTRA_CONSTANT = 1\n")
    assert _digests_in(pkg, [SCRIPTS / "extract.py"]) != [before[scripts.index(SCRIPTS / "extract.py")]]


def test_a_family_rule_without_settings_of_its_own_reads_its_section():
    """A new family's rule needs no entry in core.jobs.RULE_SETTINGS: its settings are its section."""
    from iclscope.core import jobs

    assert "compression" not in jobs.RULE_SETTINGS
    section = {k: v for k, v in DEFAULT["taskspace"].items() if k != "enabled"}
    assert jobs.settings(DEFAULT, "compression", {"model": "m", "dataset": "d"}) == {"taskspace": section}
    assert jobs.settings(DEFAULT, "layer_atlas", {}) == {}  # the pipeline's, no family's


def test_the_generic_layer_curves_figure(tmp_path):
    """plot="layer_curves" draws any table of rows layer, metric, value (a new family needs no plot)."""
    import pandas as pd

    from iclscope.report.plots import draw

    rows = [
        {"model": "m", "dataset": "d", "seed": s, "layer": layer, "metric": metric, "value": layer * (s + 1.0)}
        for s in (0, 1)
        for layer in range(4)
        for metric in ("norm", "cosine")
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    draw("layer_curves", {"table": str(tmp_path / "t.parquet")}, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
