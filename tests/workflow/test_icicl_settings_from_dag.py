"""icicl.settings_from in the planned DAG (issue 32): with `sweep` each dataset's icicl job takes that
dataset's own sweep table as an input (so the sweep runs first) and its params hold no tuned key; with
the default `config` neither. The jobs are read from Snakemake's own DAG (its API, in a subprocess),
nothing runs."""

import json
import os
import subprocess
import sys

import yaml

from iclscope.core.jobs import ICICL_TUNED_KEYS
from snakemake_runner import REPO, write_config

PROBE = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

repo, workdir, target = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[workdir / "config.yaml"]),
        snakefile=repo / "Snakefile",
        workdir=workdir,
    )
    dag_api = workflow_api.dag(dag_settings=DAGSettings(targets={target}, forceall=True))
    workflow = dag_api.workflow_api._workflow
    workflow.dag_settings = dag_api.dag_settings
    workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    jobs = [
        {
            "rule": job.rule.name,
            "wildcards": dict(job.wildcards.items()),
            "input": {k: str(v) for k, v in job.input.items()},
            "output": [str(f) for f in job.output],
            "settings": json.loads(job.params.settings) if "settings" in job.params.keys() else None,
            "deps": sorted({str(f) for dep, files in workflow.dag.dependencies[job].items() for f in files}),
        }
        for job in workflow.dag.jobs
    ]
print("JOBS " + json.dumps(jobs))
"""


def dag_jobs(workdir, target: str) -> list[dict]:
    """Every job Snakemake plans for `target` in `workdir` (its config.yaml): rule, wildcards, named
    inputs, outputs, params.settings and the files it takes from other jobs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "workflow")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO), str(workdir), target],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("JOBS ")), None)
    assert out.returncode == 0 and line, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(line.removeprefix("JOBS "))


def config(settings_from: str) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if settings_from == "sweep":
        for key in ICICL_TUNED_KEYS:
            cfg["icicl"].pop(key, None)
        cfg["icicl"]["settings_from"] = "sweep"
        cfg["icicl"].setdefault("sweep", {})["task_spaces"] = ["pool", "anchor"]
    return cfg


def test_with_settings_from_sweep_icicl_reads_its_own_datasets_sweep(tmp_path):
    write_config(tmp_path, config("sweep"))
    planned = dag_jobs(tmp_path, "icicl_all")
    icicl = [j for j in planned if j["rule"] == "icicl"]
    sweeps = {tuple(sorted(j["wildcards"].items())): j for j in planned if j["rule"] == "icicl_sweep"}
    assert icicl and len(sweeps) == len(icicl)  # one sweep per dataset, though icicl.sweep.enabled is false
    for job in icicl:
        model, dataset = job["wildcards"]["model"], job["wildcards"]["dataset"]
        own = f"results/icicl/{model}/{dataset}/sweep.parquet"
        assert job["input"]["sweep"] == own and own in job["deps"], job["wildcards"]
        assert sweeps[tuple(sorted(job["wildcards"].items()))]["output"] == [own]
        section = job["settings"]["icicl"]
        assert not set(ICICL_TUNED_KEYS) & set(section), section
        assert section["settings_from"] == "sweep" and {"k", "pool_size", "n_test", "seed"} <= set(section)
        assert job["settings"]["sweep"]["task_spaces"] == ["pool", "anchor"]  # the budget stays stated


def test_by_default_icicl_reads_the_config_and_no_sweep(tmp_path):
    write_config(tmp_path, config("config"))
    planned = dag_jobs(tmp_path, "icicl_all")
    icicl = [j for j in planned if j["rule"] == "icicl"]
    assert icicl and not any(j["rule"] == "icicl_sweep" for j in planned)
    for job in icicl:
        assert "sweep" not in job["input"] and not any(d.endswith("sweep.parquet") for d in job["deps"])
        assert set(ICICL_TUNED_KEYS) <= set(job["settings"]["icicl"])
