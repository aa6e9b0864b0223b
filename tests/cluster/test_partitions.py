"""A rehearsal of a lab's run on a cluster with a CPU and a GPU partition (tests/cluster/conftest.py:
'debug' and 'gpu' on the one node), through profiles/slurm as a lab edits it (the CPU partition on
the command line, the profile's GPU partition), with a reduced label-anchors example on a tiny
stand-in model. From the accounting (sacct): no CPU job on the GPU partition, every model stage on
the GPU partition with the GPUs its rule derived; a model stage killed for memory comes back with
more (its memory x attempt).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from iclscope.core.resources import MODEL_STAGES
from snakemake_runner import REPO, snakemake, write_config
from tiny_models import make_tiny_model

pytestmark = pytest.mark.cluster
FAST = ["--seconds-between-status-checks", "2", "--slurm-init-seconds-before-status-checks", "2"]
FAST_STATUS = [sys.executable, str(Path(__file__).with_name("snakemake_fast_status.py"))]
CPU_SITE = ["--default-resources", "slurm_partition=debug", "runtime=10", "mem_mb=1000", "cpus_per_task=1"]
EXAMPLE = REPO / "config" / "examples" / "label-anchors-gpt2xl.yaml"


@pytest.fixture(scope="module")
def site(tmp_path_factory, slurm_cluster):
    root = tmp_path_factory.mktemp("partitions")
    make_tiny_model("llama", root / "tiny")
    rows = ["sentiment,text"] + [
        f"{['negative', 'positive'][i % 2]},tweet {i} was {['bad', 'good'][i % 2]} today" for i in range(90)
    ]
    (root / "tweets.csv").write_text("\n".join(rows) + "\n")
    env = {k: v for k, v in slurm_cluster.env.items() if not k.startswith(("ICLSCOPE_STORE", "SNAKEMAKE_OUTPUT"))}
    return {"root": root, "cluster": slurm_cluster, "env": env}


def reduced_example(site, **model) -> dict:
    """The label-anchors example with the tiny model for GPT2-XL and one small local dataset with the
    example's prompt settings; IC-ICL and TS-FT off to keep the rehearsal short."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["models"] = {"tiny": {"source": "local", "path": str(site["root"] / "tiny"), "batch_size": 4, **model}}
    prompts = {**next(iter(cfg["datasets"].values()))["prompts"], "seeds": [42], "n_test": 10, "n_train": 8}
    cfg["datasets"] = {
        "toy": {
            "source": "local",
            "path": str(site["root"] / "tweets.csv"),
            "label_column": "sentiment",
            "classes": {"negative": " negative", "positive": " positive"},
            "prompts": {**prompts, "template": "Tweet: {text}\nSentiment:{label}"},
        }
    }
    cfg.update(
        {
            "icicl": {"enabled": False},
            "tsft": {"enabled": False},
            "toy_regression": {"enabled": False},
            "anchors": {"compression": {"prompts_per_seed": 2, "n_random_draws": 1, "timing_repeats": 1}},
        }
    )
    return cfg


def on_slurm(site, work: Path, *args: str, timeout: int = 900):
    return snakemake(
        work,
        "--profile",
        str(REPO / "profiles" / "slurm"),
        *CPU_SITE,
        *FAST,
        *args,
        env=site["env"],
        timeout=timeout,
        launcher=FAST_STATUS,
    )


def test_cpu_jobs_never_run_on_the_gpu_partition(site):
    work = site["root"] / "lab"
    work.mkdir()
    write_config(work, reduced_example(site))
    t0 = time.time()
    on_slurm(site, work)
    jobs = site["cluster"].jobs_by_rule(t0)
    model_stages = {rule for rule in jobs if rule in MODEL_STAGES}
    assert model_stages >= {"extract", "saliency", "isolation", "reweighting", "anchor_compression"}
    per_partition: dict[str, int] = {}
    for rule, rows in jobs.items():
        for row in rows:
            per_partition[row["Partition"]] = per_partition.get(row["Partition"], 0) + 1
            assert row["State"] == "COMPLETED", (rule, row)
            if rule in MODEL_STAGES:
                assert row["Partition"] == "gpu" and "gres/gpu=1" in row["AllocTRES"], (rule, row)
            else:
                assert row["Partition"] == "debug" and "gres/gpu" not in row["AllocTRES"], (rule, row)
    print(f"jobs per partition: {per_partition}; model stages: {sorted(model_stages)}")
    assert per_partition.get("gpu", 0) == sum(len(jobs[r]) for r in model_stages)


def test_a_model_stage_killed_for_memory_comes_back_with_more(site):
    """extract with models.tiny.mem_mb 400 (an explicit override, x attempt like the derived value):
    its first attempt (about 500 MB peak + the job's snakemake process) is killed by SLURM; a later
    attempt with more memory completes."""
    work = site["root"] / "short-of-memory"
    work.mkdir()
    write_config(work, reduced_example(site, mem_mb=400))
    t0 = time.time()
    on_slurm(site, work, "results/activations/tiny/toy.h5")
    attempts = site["cluster"].jobs_by_rule(t0)["extract"]
    assert [r["ReqMem"] for r in attempts][:2] == ["400M", "800M"]
    assert attempts[0]["State"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED") and attempts[-1]["State"] == "COMPLETED"
    assert all(r["Partition"] == "gpu" for r in attempts)
    assert os.path.getsize(work / "results/activations/tiny/toy.h5") > 0
