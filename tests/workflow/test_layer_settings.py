"""The default config planned on models of 2, 6, 12 and 32 layers: one config, every family, every depth.

Layer settings are depth shares resolved per model before any job (iclscope.core.layers); an absolute
override out of a model's range is refused before the first job starts."""

from __future__ import annotations

import json

import yaml

from snakemake_runner import REPO, planned_jobs, snakemake, write_config

DEPTHS = {"tiny2": 2, "tiny6": 6, "tiny12": 12, "tiny32": 32}


def config_with_depths(tmp_path) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["models"] = {}
    for name, depth in DEPTHS.items():
        path = tmp_path / "models" / name
        path.mkdir(parents=True)
        (path / "config.json").write_text(
            json.dumps(
                {
                    "architectures": ["LlamaForCausalLM"],
                    "model_type": "llama",
                    "num_hidden_layers": depth,
                    "hidden_size": 64,
                    "intermediate_size": 128,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 4,
                    "vocab_size": 400,
                }
            )
        )
        cfg["models"][name] = {"source": "local", "path": str(path)}
    return cfg


def test_default_config_plans_every_family_on_every_depth(tmp_path):
    write_config(tmp_path, config_with_depths(tmp_path))
    jobs = planned_jobs(tmp_path)
    default = planned_jobs_of_default(tmp_path / "default")
    n = len(DEPTHS)
    for rule, count in default.items():
        if rule in (
            "all",
            "summary",
            "toy_regression",
            "fig_toy_regression",
            "toy_lm_entropy",
            "toy_lm_entropy_table",
            "fig_entropy_training",
        ) or rule.startswith("prepare_dataset"):
            assert jobs.get(rule) == count, rule  # not per model
        else:
            assert jobs.get(rule) == n * count, (rule, jobs.get(rule), count)


def planned_jobs_of_default(workdir):
    workdir.mkdir()
    write_config(workdir, yaml.safe_load((REPO / "config.yaml").read_text()))
    return planned_jobs(workdir)


def test_out_of_range_override_is_refused_before_any_job(tmp_path):
    cfg = config_with_depths(tmp_path)
    cfg["models"]["tiny6"]["layers"] = {"anchors.error_diagnosis.layer": 32}
    write_config(tmp_path, cfg)
    result = snakemake(tmp_path, check=False, timeout=300)
    assert result.returncode != 0
    out = result.stdout
    assert "models.tiny6.layers.anchors.error_diagnosis.layer" in out and "'tiny6', which has 6 layers" in out
    assert "rule prepare_model" not in out and "localrule" not in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
