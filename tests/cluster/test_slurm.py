"""The workflow on a live single-node SLURM cluster: sbatch jobs per rule with GPUs for model
stages, sharded extraction, exact partial reruns, the lab store, and failures that retry.

Every snakemake call goes through snakemake_runner.snakemake (hard kill timeout). Status checks
are made every 2 s instead of the profile's production values to keep the suite short, through
snakemake_fast_status.py (the slurm plugin would otherwise back off by 10 s per check).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from iclscope.core import lab_store
from snakemake_runner import checkout_copy, planned_jobs, snakemake, write_config
from tiny_models import make_tiny_model

pytestmark = pytest.mark.cluster
FAST = ["--seconds-between-status-checks", "2", "--slurm-init-seconds-before-status-checks", "2"]
FAST_STATUS = [sys.executable, str(Path(__file__).with_name("snakemake_fast_status.py"))]  # no back-off
SITE = ["--default-resources", "slurm_partition=debug", "runtime=10", "mem_mb=1000", "cpus_per_task=1"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, slurm_cluster):
    """A tiny model, a small CSV dataset, a lab store: what two lab members share."""
    root = tmp_path_factory.mktemp("lab")
    make_tiny_model("llama", root / "tiny")
    rows = ["sentiment,text"] + [
        f"{['negative', 'positive'][i % 2]},tweet {i} was {['bad', 'good'][i % 2]} today" for i in range(90)
    ]
    (root / "tweets.csv").write_text("\n".join(rows) + "\n")
    store = root / "store"
    store.mkdir()
    os.chmod(store, 0o2775)  # group-shared, setgid: how a lab sets up its store (docs/cluster.md)
    hub = root / "hub" / "models--iclscope-test--tiny"  # an offline HF cache with two revisions
    for ref, commit in (("main", "a" * 40), ("step1", "b" * 40)):
        shutil.copytree(root / "tiny", hub / "snapshots" / commit)
        (hub / "refs").mkdir(parents=True, exist_ok=True)
        (hub / "refs" / ref).write_text(commit)
    env = {**slurm_cluster.env, lab_store.ENV: str(store), "HF_HUB_CACHE": str(root / "hub")}
    # one snapshot of the workflow for every run of this module: edits made to this checkout meanwhile
    # (the package's code is in every key) do not reach it
    repo = checkout_copy(root / "lab-repo")
    return {"root": root, "store": store, "env": env, "cluster": slurm_cluster, "repo": repo}


def copy_of(lab, dest: Path) -> Path:
    """Another checkout of the lab's workflow snapshot, at another path."""
    shutil.copytree(lab["repo"], dest)
    return dest


def config(lab, **extract) -> dict:
    return {
        "models": {"tiny": {"source": "local", "path": str(lab["root"] / "tiny"), "mem_mb": 1000, "batch_size": 4}},
        "datasets": {
            "toy": {
                "source": "local",
                "path": str(lab["root"] / "tweets.csv"),
                "label_column": "sentiment",
                "classes": {"negative": " negative", "positive": " positive"},
                "prompts": {"template": "Tweet: {text}\nSentiment:{label}", "seeds": [1], "n_test": 12, "n_train": 8},
            }
        },
        "extract": {"shards": 1, **extract},
        "icicl": {"enabled": False},
        "anchors": {"compression": {"prompts_per_seed": 4, "n_random_draws": 2, "timing_repeats": 1}},
        "tsft": {"enabled": False},
        "toy_regression": {"enabled": False},
    }


def checkout(lab, name: str, cfg: dict) -> Path:
    work = lab["root"] / name
    work.mkdir(exist_ok=True)
    write_config(work, cfg)
    return work


def on_slurm(lab, work: Path, *args: str, timeout: int = 600, check: bool = True, repo: Path | None = None):
    repo = repo or lab["repo"]
    return snakemake(
        work,
        "--profile",
        str(repo / "profiles" / "slurm"),
        *SITE,
        *FAST,
        *args,
        env=lab["env"],
        timeout=timeout,
        check=check,
        launcher=FAST_STATUS,
        repo=repo,
    )


def rules_run(lab, since: float) -> dict[str, int]:
    return {rule: len(rows) for rule, rows in lab["cluster"].jobs_by_rule(since).items()}


def test_pipeline_runs_as_one_sbatch_job_per_rule_instance(lab):
    work = checkout(lab, "alice", config(lab))
    t0 = time.time()
    on_slurm(lab, work)
    jobs = lab["cluster"].jobs_by_rule(t0)
    model_rules = {"extract", "extract_anchors", "saliency", "isolation", "reweighting", "anchor_compression"}
    expected = model_rules | {
        "prepare_model",
        "prepare_dataset",
        "build_prompts",
        "icl_accuracy",
        "taskspace",
        "compression",
        "aucroc",
        "layer_atlas",
        "summary",
        "small_cpu",
    }  # the seven figures, task_space's included (it reads the compression job's view): one group job
    group = {r: "small_cpu" for r in jobs if r.startswith("small_cpu_")}  # its comment lists its rules
    assert {group.get(r, r): len(v) for r, v in jobs.items()} == {rule: 1 for rule in expected}
    for rule, rows in jobs.items():
        assert all(r["State"] == "COMPLETED" for r in rows), rows
        has_gpu = all("gres/gpu=1" in r["AllocTRES"] for r in rows)
        assert has_gpu == (rule in model_rules), (rule, rows)
    assert (work / "results/metrics/tiny/toy/compression.parquet").exists()


def test_partial_reruns_run_exactly_the_expected_jobs(lab):
    work = lab["root"] / "alice"
    assert planned_jobs(work, "--until", "extract", "--forcerun", "build_prompts", repo=lab["repo"]) == {
        "build_prompts": 1,
        "extract": 1,
    }
    assert planned_jobs(work, "--forcerun", "icl_accuracy", repo=lab["repo"]) == {
        "icl_accuracy": 1,
        "summary": 1,
        "all": 1,
    }
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["icl_accuracy"] = {"n_boot": 7}
    write_config(work, cfg)
    assert planned_jobs(work, repo=lab["repo"]) == {"icl_accuracy": 1, "summary": 1, "all": 1}
    t0 = time.time()
    on_slurm(lab, work)  # and it really runs just that job on the cluster
    assert rules_run(lab, t0) == {"icl_accuracy": 1, "summary": 1}


def store_key(lab, work: Path, path: str = "results/activations/tiny/toy.h5", repo: Path | None = None) -> str:
    """`iclscope store key <path>` in a member's working directory, with that checkout's package."""
    repo = repo or lab["repo"]
    out = subprocess.run(
        [sys.executable, "-m", "iclscope.cli", "store", "key", path],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        env={**lab["env"], "PYTHONPATH": str(repo / "workflow")},
    )
    return out.stdout.strip()


def extracted(work: Path) -> bool:
    """Whether this checkout's activations came from its own forward pass."""
    log = work / "logs/extract/tiny/toy.log"
    return log.exists() and "extracted" in log.read_text()


def stored_in_job(work: Path) -> str:
    """The entry name the extract job (inside its SLURM allocation) published under."""
    line = next(x for x in (work / "logs/extract/tiny/toy.log").read_text().splitlines() if "stored as" in x)
    return Path(line.split("stored as ")[1].strip()).name


def gpu_jobs(lab, since: float) -> dict[str, int]:
    """{rule: jobs} of the allocations with a GPU since `since` (the cluster's accounting)."""
    jobs = {}
    for rule, rows in lab["cluster"].jobs_by_rule(since).items():
        n = sum("gres/gpu" in r["AllocTRES"] for r in rows)
        if n:
            jobs[rule] = n
    return jobs


def test_a_stored_plan_submits_no_job_and_keys_agree_everywhere(lab):
    """Written on the cluster (alice, the first test), read by a second checkout: its dry run lists
    only the link, its run submits zero sbatch jobs (the cluster's accounting) and extracts nothing;
    the entry's name is `iclscope store key` in both checkouts and the key the cluster job published under."""
    alice = lab["root"] / "alice"
    repo = copy_of(lab, lab["root"] / "bob-repo")  # another checkout, at another path
    work = checkout(lab, "bob", config(lab))
    assert planned_jobs(work, "activations", repo=repo, env=lab["env"]) == {"link_extract": 1, "activations": 1}
    t0 = time.time()
    on_slurm(lab, work, "activations", repo=repo)
    assert lab["cluster"].sacct(t0) == []  # zero sbatch submissions
    assert not extracted(work)
    key = store_key(lab, work, repo=repo)
    assert key == store_key(lab, alice) == stored_in_job(alice)
    act = work / "results/activations/tiny/toy.h5"
    assert os.path.samefile(act, lab["store"] / key / "toy.h5")  # a hard link: same filesystem
    with h5py.File(act) as f, h5py.File(alice / "results/activations/tiny/toy.h5") as g:
        np.testing.assert_array_equal(f["resid/query"][()], g["resid/query"][()])
    assert planned_jobs(work, "activations", repo=repo, env=lab["env"]) == {}


def test_written_locally_read_on_the_cluster(lab):
    """A workstation run (local executor) stores new activations; a cluster run of the same config
    submits nothing for them, and a dry run elsewhere lists only links."""
    cfg = config(lab, topk=9)  # a new key
    local = checkout(lab, "ivan-local", cfg)
    snakemake(local, "activations", env=lab["env"], repo=lab["repo"])
    assert extracted(local)
    work = checkout(lab, "ivan-cluster", cfg)
    t0 = time.time()
    on_slurm(lab, work, "activations")
    assert lab["cluster"].sacct(t0) == [] and not extracted(work)
    assert store_key(lab, work) == store_key(lab, local) == stored_in_job(local)


@pytest.mark.parametrize("change", ["dtype", "template", "revision", "code"])
def test_changed_extraction_inputs_miss_the_store(lab, change):
    """A miss costs exactly one GPU job per missing product (the extraction), whose entry is
    published under the key `iclscope store key` gives."""
    cfg, repo = config(lab), lab["repo"]
    if change == "dtype":
        cfg["models"]["tiny"]["dtype"] = "bfloat16"
    elif change == "template":
        cfg["datasets"]["toy"]["prompts"]["template"] = "Text: {text}\nSentiment:{label}"
    elif change == "code":  # the package code extraction runs changed: its activations may differ
        repo = edited_checkout(lab, "carol-code", lambda text: text + "\n_CHANGED_HOOK_LAYER = True\n")
    else:  # the same hub model at two revisions (Pythia-style checkpoints): each its own entry
        tiny = {k: v for k, v in cfg["models"]["tiny"].items() if k != "path"}
        cfg["models"]["tiny"] = {**tiny, "source": "hub", "id": "iclscope-test/tiny", "revision": "main"}
        on_slurm(lab, checkout(lab, "carol-main", cfg), "activations")
        cfg["models"]["tiny"]["revision"] = "step1"
    work = checkout(lab, f"carol-{change}", cfg)
    before = set(lab_store.entries(lab["store"]))
    t0 = time.time()
    on_slurm(lab, work, "activations", repo=repo)
    assert gpu_jobs(lab, t0) == {"extract": 1} and extracted(work)
    new = {e.name: lab_store.read_sidecar(e)["stage"] for e in set(lab_store.entries(lab["store"])) - before}
    assert new[stored_in_job(work)] == "extract" and stored_in_job(work) == store_key(lab, work, repo=repo)


def edited_checkout(lab, name: str, edit) -> Path:
    """A second checkout of the workflow whose hook layer (capture.py) is edited by `edit`."""
    repo = copy_of(lab, lab["root"] / f"{name}-repo")
    capture = repo / "workflow" / "iclscope" / "model" / "capture.py"
    capture.write_text(edit(capture.read_text()))
    return repo


def test_a_comment_only_change_costs_no_job(lab):
    """Comments and docstrings are not code: the key (a digest of the normalised source) is unchanged."""

    def reword(text):
        first_doc = text.index('"""') + 3
        return text[:first_doc] + "Reworded docstring. " + text[first_doc:] + "\n# a comment only\n"

    work = checkout(lab, "dave-comment", config(lab))
    t0 = time.time()
    on_slurm(lab, work, "activations", repo=edited_checkout(lab, "dave-comment", reword))
    assert lab["cluster"].sacct(t0) == [] and not extracted(work)
    assert os.path.samefile(
        work / "results/activations/tiny/toy.h5", lab["store"] / store_key(lab, lab["root"] / "alice") / "toy.h5"
    )


def test_two_checkouts_request_the_same_new_activations_at_once(lab):
    """Two lab members launch the same extraction (not stored yet) at the same moment: both runs
    finish at their first attempt, both end up linked to the one sealed entry, no temporary or
    nested copy is left, and the entry's arrays equal a fresh run's."""
    cfg = config(lab)
    cfg["datasets"]["toy"]["prompts"]["template"] = "Post: {text}\nSentiment:{label}"  # not in the store yet
    works = [checkout(lab, name, cfg) for name in ("dave", "erin")]
    results, threads = {}, []
    t0 = time.time()
    for work in works:

        def run(work=work):
            try:
                results[work.name] = on_slurm(lab, work, "activations", timeout=600)
            except AssertionError as exc:  # reported below, from the test's own thread
                results[work.name] = exc

        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(r, AssertionError) for r in results.values()), results
    assert all("Trying to restart" not in r.stdout for r in results.values())  # first attempts only
    rows = lab["cluster"].sacct(t0)
    assert rows and all(r["State"] == "COMPLETED" for r in rows), rows
    key = store_key(lab, works[0])
    entry = lab["store"] / key
    for w in works:
        assert os.path.samefile(w / "results/activations/tiny/toy.h5", entry / "toy.h5")
    assert lab_store.is_sealed(entry) and lab_store.verify(entry) == []
    assert sorted(p.name for p in entry.iterdir()) == sorted([lab_store.SIDECAR, "toy.h5"])  # nothing nested
    assert not [p for p in lab["store"].iterdir() if p.name.startswith(".tmp")]
    assert all(lab_store.is_sealed(e) for e in lab_store.entries(lab["store"]))
    with h5py.File(entry / "toy.h5") as f:
        assert f.attrs["complete"] and f.attrs["n_done"] == f["resid/query"].shape[0]
        stored = f["resid/query"][()]
    reference = checkout(lab, "frank", {**cfg, "extract": {"shards": 1}})
    snakemake(
        reference, "--profile", str(lab["repo"] / "profiles" / "local"), "activations", repo=lab["repo"]
    )  # no store: a fresh run
    with h5py.File(reference / "results/activations/tiny/toy.h5") as g:  # other thread count: fp16 tolerance
        np.testing.assert_allclose(
            stored.astype(np.float32), g["resid/query"][()].astype(np.float32), rtol=1e-2, atol=1e-3
        )


def test_three_shards_run_side_by_side_and_gather_to_the_unsharded_file(lab):
    work = checkout(lab, "sharded", config(lab, shards=3))
    t0 = time.time()
    on_slurm(lab, work, "activations", "--set-threads", "extract=1")
    jobs = lab["cluster"].jobs_by_rule(t0)
    shards = jobs["extract"]
    assert len(shards) == 3 and all(r["State"] == "COMPLETED" for r in shards)
    spans = sorted((r["Start"], r["End"]) for r in shards)
    assert spans[1][0] < spans[0][1], f"no two shards overlapped in time: {spans}"  # 2 cores: 2 at once
    with (
        h5py.File(work / "results/activations/tiny/toy.h5") as f,
        h5py.File(lab["root"] / "alice/results/activations/tiny/toy.h5") as g,
    ):
        assert f["resid/query"].is_virtual
        for name in ("resid/query", "attn/query_to_label", "logits/label"):
            np.testing.assert_allclose(f[name][()], g[name][()], rtol=1e-5, atol=1e-5)


def test_cancelled_job_is_reported_retried_and_the_rerun_finishes(lab):
    work = checkout(lab, "dave", config(lab, topk=7))  # topk: a new store key, so extract really runs
    env = lab["env"]
    cancelled = []

    def cancel_first_extract():
        deadline = time.time() + 240
        while time.time() < deadline and not cancelled:
            out = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], env=env, capture_output=True, text=True).stdout
            for line in out.splitlines():
                job, comment, state = line.split()
                if comment.startswith("rule_extract_") and state == "RUNNING":
                    subprocess.run(["scancel", job], env=env, check=True)
                    cancelled.append(job)
                    return
            time.sleep(0.5)

    watcher = threading.Thread(target=cancel_first_extract)
    watcher.start()
    result = on_slurm(lab, work, "activations")
    watcher.join()
    assert cancelled, "no running extract job was seen to cancel"
    assert f"SLURM-job '{cancelled[0]}' failed" in result.stdout and "CANCELLED" in result.stdout
    assert "Trying to restart job" in result.stdout  # retries: 2 in the profile
    assert (work / "results/activations/tiny/toy.h5").exists()
    # planned as the member runs it, with the store: a result a link rule made belongs to that rule
    assert planned_jobs(work, "activations", repo=lab["repo"], env=lab["env"]) == {}


def test_tsft_killed_mid_training_resumes_from_its_checkpoint_at_the_next_attempt(lab):
    """A TS-FT job is cancelled after its first checkpoint (kept under results/.resume, outside the
    directory() output that Snakemake deletes before the retry): attempt 2 resumes there, and its log
    names the steps it does not redo."""
    cfg = config(lab)
    cfg["tsft"] = {
        "enabled": True,
        "steps": 400,
        "checkpoint_every": 20,
        "eval_every": 400,
        "batch_size": 2,
        "n_train": 8,
        "n_val": 4,
        "n_test": 4,
        "seeds": [0],
        "lora_r": 2,
        "lora_alpha": 2,
    }
    work = checkout(lab, "tsft-kill", cfg)
    env, cancelled = lab["env"], []
    resume = work / "results" / ".resume" / "tsft"

    def cancel_after_first_checkpoint():
        deadline = time.time() + 400
        while time.time() < deadline and not cancelled:
            out = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], env=env, capture_output=True, text=True).stdout
            running = [
                line.split()[0]
                for line in out.splitlines()
                if line.split()[1].startswith("rule_tsft_") and line.split()[2] == "RUNNING"
            ]
            if running and resume.is_dir() and any(p.is_file() for p in resume.rglob("*")):
                subprocess.run(["scancel", running[0]], env=env, check=True)
                cancelled.append(running[0])
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=cancel_after_first_checkpoint)
    watcher.start()
    result = on_slurm(lab, work, "results/tsft/tiny/toy/space-seed0", timeout=900)
    watcher.join()
    assert cancelled, "no running TS-FT job with a checkpoint was seen to cancel"
    assert f"SLURM-job '{cancelled[0]}' failed" in result.stdout and "Trying to restart job" in result.stdout
    log = (work / "logs/tsft/tiny/toy/space-seed0.log").read_text()
    resumed = re.search(r"resuming at step (\d+) of 400 .*: steps 1\.\.(\d+) are not redone", log)
    assert resumed, log[-3000:]
    assert int(resumed.group(1)) >= 20 and int(resumed.group(1)) % 20 == 0
    assert (work / "results/tsft/tiny/toy/space-seed0").is_dir()


def test_job_over_its_memory_is_killed_and_retried_with_more(lab, tmp_path):
    """A rule using ~350 MB (+ its snakemake job process) with mem_mb = 300 x attempt: attempt 1 is
    killed by SLURM, attempt 2 passes."""
    shutil.copy(Path(__file__).with_name("memory_hog.smk"), tmp_path / "Snakefile")
    cmd = ["--snakefile", str(tmp_path / "Snakefile")]
    t0 = time.time()
    result = subprocess.run(
        [
            *FAST_STATUS,
            *cmd,
            "--directory",
            str(tmp_path),
            "--executor",
            "slurm",
            "--jobs",
            "2",
            "--retries",
            "2",
            *SITE,
            *FAST,
        ],
        env={k: v for k, v in lab["env"].items() if k != lab_store.ENV},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    attempts = lab["cluster"].jobs_by_rule(t0)["hog"]
    assert [r["ReqMem"] for r in attempts] == ["300M", "600M"]
    assert attempts[0]["State"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED") and attempts[-1]["State"] == "COMPLETED"
    assert (tmp_path / "done.txt").read_text().strip() == "600"


def test_slurmd_restart_while_jobs_are_queued(lab):
    """The node daemon restarts (an upgrade, a crash) while the workflow's jobs are queued: the run
    goes on or reports the failed jobs, and a rerun finishes without redoing finished outputs."""
    work = checkout(lab, "grace", config(lab, topk=5))  # topk: a new store key, so extract really runs
    cluster, first = lab["cluster"], {}
    t0 = time.time()
    run = threading.Thread(target=lambda: first.update(result=on_slurm(lab, work, "metrics", check=False)))
    run.start()
    deadline = time.time() + 240
    while time.time() < deadline and not any(c.startswith("rule_") for _, c, _ in cluster.queue()):
        time.sleep(0.3)
    queued = cluster.queue()
    assert queued, "no job of the workflow was seen in the queue"
    restart_log = cluster.restart_slurmd()
    assert "slurmd up" in restart_log
    run.join()
    done_first = {(r["Comment"]) for r in cluster.sacct(t0) if r["State"] == "COMPLETED"}
    if first["result"].returncode != 0:  # reported, with the job that failed
        assert "failed" in first["result"].stdout, first["result"].stdout[-3000:]
    t1 = time.time()
    on_slurm(lab, work, "metrics")
    rerun = {r["Comment"] for r in cluster.sacct(t1)}
    assert not rerun & done_first, f"finished jobs ran again: {rerun & done_first}"
    assert (work / "results/metrics/tiny/toy/icl_accuracy.parquet").exists()
    assert planned_jobs(work, "metrics", repo=lab["repo"], env=lab["env"]) == {}
