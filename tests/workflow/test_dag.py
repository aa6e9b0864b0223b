"""The DAG of the default config and of each example config, planned without running anything."""

import shutil
import subprocess

import yaml

from iclscope.core.families import FAMILIES
from iclscope.core.plan import Plan
from iclscope.core.validate import load_config, validate_config
from snakemake_runner import REPO, planned_jobs, snakemake, write_config


def test_default_dag(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    jobs = planned_jobs(tmp_path)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    n_models, n_data = len(cfg["models"]), len(cfg["datasets"])
    runs = lambda d, method: d.get("methods") is None or method in d["methods"]  # noqa: E731
    families = sum(1 for d in cfg["datasets"].values() if d.get("kind") == "generation" and runs(d, "decodability"))
    assert jobs["prepare_model"] == n_models and jobs["prepare_dataset"] == n_data
    assert jobs["build_prompts"] == jobs["extract"] == jobs["icl_accuracy"] == n_models * n_data
    assert jobs["decodability"] == jobs["decodability_fit"] == n_models * families
    assert jobs["token_states"] == jobs["entropy"] == jobs["fig_entropy"] == n_models * len(cfg["entropy"]["datasets"])
    assert jobs["toy_lm_entropy"] == len(cfg["entropy"]["training"]["sizes"])  # one single-thread job per size
    assert jobs["toy_lm_entropy_table"] == jobs["fig_entropy_training"] == jobs["summary"] == 1
    assert jobs["toy_regression"] == jobs["fig_toy_regression"] == 1
    assert any(d.get("methods") != ["error_diagnosis"] for d in cfg["datasets"].values())
    assert jobs["layer_atlas"] == n_models  # one atlas per model, every dataset's curves in it
    classification = [d for d in cfg["datasets"].values() if d.get("kind", "classification") == "classification"]
    reweighting = sum(runs(d, "reweighting") for d in classification)
    assert jobs["reweighting"] == jobs["fig_reweighting"] == n_models * reweighting
    assert jobs["saliency"] == n_models * sum(runs(d, "saliency") for d in classification)


def test_dataset_methods_pick_what_runs(tmp_path):
    """`datasets.<name>.methods` restricts the method families of one dataset and leaves the others alone."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["tweets"]["methods"] = ["aucroc"]
    cfg["datasets"]["words"]["methods"] = ["patching"]
    write_config(tmp_path, cfg)
    jobs = planned_jobs(tmp_path)
    assert jobs["aucroc"] == jobs["fig_aucroc"] == 1
    for rule in ("saliency", "isolation", "reweighting", "icicl", "tsft", "taskspace", "compression"):
        assert rule not in jobs, rule
    assert jobs["patching"] == 1  # words only: bitwise's methods are [decodability]
    assert jobs["decodability"] == 2  # words' patching needs its decodability; bitwise keeps its own
    assert jobs["decodability_fit"] == 1  # bitwise's
    cfg["datasets"]["words"]["methods"] = ["icicl"]
    write_config(tmp_path, cfg)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "datasets.words.methods" in result.stdout and "generation dataset" in result.stdout


def test_named_target_rules(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    assert "icl_accuracy" not in planned_jobs(tmp_path, "activations")
    assert planned_jobs(tmp_path, "--until", "extract").keys() == {
        "prepare_model",
        "model_manifest",
        "prepare_dataset",
        "build_prompts",
        "extract",
    }


def test_figures_and_metrics_targets_plan_every_familys_jobs(tmp_path):
    """`figures` plans every figure of every family (and each model's atlas), `metrics` every table, each
    as many times as the plan has files for it (iclscope.core.families; before the registry `figures`
    planned 8 of the default's 18 figure jobs and `metrics` 3 families' tables)."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    plan = Plan(validate_config(load_config(tmp_path / "config.yaml")))
    for target, kind in (("figures", "figures"), ("metrics", "tables")):
        jobs = planned_jobs(tmp_path, target)
        expected = {}
        for family in FAMILIES:
            for output in getattr(family, kind):
                expected[output.rule] = expected.get(output.rule, 0) + len(plan.paths(output))
        assert {rule: jobs.get(rule, 0) for rule in expected} == expected, target
        off = {"icicl_sweep", "fig_icicl_sweep"}  # icicl.sweep.enabled is false in the default
        assert all(n > 0 for rule, n in expected.items() if rule not in off) and len(expected) > 10, target
    figures = planned_jobs(tmp_path, "figures")
    assert sum(n for rule, n in figures.items() if rule.startswith("fig_")) == len(plan.targets("figures"))
    assert figures["layer_atlas"] == len(plan.models)


def test_all_plans_every_activation_table_figure_and_the_summary(tmp_path):
    """`rule all` names only the products no other of them reads (common.smk, all_targets), yet plans the
    same jobs as naming every activation file, table, figure and summary file."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    summary = [f"results/summary/{name}.csv" for name in ("headline", "peak_layers", "claims")]
    named = {"all", "activations", "metrics", "figures"}
    everything = planned_jobs(tmp_path, "activations", "metrics", "figures", *summary)
    default = planned_jobs(tmp_path)
    jobs = lambda planned: {rule: n for rule, n in planned.items() if rule not in named}  # noqa: E731
    assert jobs(default) == jobs(everything)
    assert len(default) > 30


def test_entropy_corpus_must_be_a_configured_dataset(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["entropy"]["datasets"] = ["tweetz"]
    write_config(tmp_path, cfg)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0 and "entropy.datasets" in result.stdout and "tweetz" in result.stdout


def test_invalid_config_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["tweets"]["kind"] = "classify"
    write_config(tmp_path, cfg)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "datasets.tweets.kind" in result.stdout and "'classification'" in result.stdout
    assert not (tmp_path / "results").exists()
    text = (REPO / "config.yaml").read_text()  # a dataset name given twice: YAML would keep the last
    (tmp_path / "config.yaml").write_text(text.replace("\n  bitwise:\n", "\n  words:\n", 1))
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0 and "the key 'words' appears twice" in result.stdout
    assert not (tmp_path / "results").exists()


def test_read_only_working_directory_is_a_clear_error(tmp_path):
    """Root ignores permission bits, so a read-only mount stands in for a directory without write access."""
    work = tmp_path / "readonly"
    work.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(work)], check=True)
    try:
        shutil.copy(REPO / "config.yaml", work / "config.yaml")
        subprocess.run(["mount", "-o", "remount,ro", str(work)], check=True)
        out = snakemake(work, "-n", check=False)
    finally:
        subprocess.run(["umount", "-l", str(work)], check=True)
    assert out.returncode != 0
    assert f"{work} is not writable (Read-only file system)" in out.stdout and "Traceback" not in out.stdout


def test_a_local_dataset_file_is_an_input_of_prepare_dataset(tmp_path):
    """Editing the file reruns prepare_dataset (and changes its lab-cache key), like any input."""
    csv = tmp_path / "reviews.csv"
    csv.write_text("stars,review\n" + "".join(f"{1 + 4 * (i % 2)},review {i}\n" for i in range(40)))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"] = {
        "reviews": {
            "source": "local",
            "path": str(csv),
            "text_column": "review",
            "label_column": "stars",
            "label_map": {1: "negative", 5: "positive"},
            "classes": {"negative": " negative", "positive": " positive"},
            "prompts": {"template": "Review: {text}\nSentiment:{label}", "n_train": 8},
        }
    }
    cfg["entropy"]["enabled"] = False
    write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "-n", "results/datasets/reviews.parquet").stdout
    assert f"input: {csv}" in out and "rule prepare_dataset" in out
