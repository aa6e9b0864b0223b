"""A test session killed with jobs on the cluster must not break the next one.

Found in CI: a session killed mid-test left the cluster's saved state behind; the next `make test`
started the daemons cold, slurmctld recovered 19 jobs as running on the one node, and the node
stayed 'mix' until the start gave up ("node vm not idle after 90 s"). A cold start now cancels the
recovered jobs, so that accounting records their end and the node comes back idle.
"""

from __future__ import annotations

import subprocess
import time


def _sbatch(cluster, *args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", *args], env=cluster.env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split(";")[0]


def _node_state(cluster) -> str:
    return subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%t"], env=cluster.env, capture_output=True, text=True, check=True
    ).stdout.split()[0]


def test_a_cold_start_cancels_the_jobs_a_killed_session_left(slurm_cluster):
    since = time.time()
    # a CPU job with a step (as snakemake's jobs run), a GPU job, and one waiting for the CPUs they hold
    running = [
        _sbatch(slurm_cluster, "-p", "debug", "-c", "1", "--wrap", "srun sleep 600"),
        _sbatch(slurm_cluster, "-p", "gpu", "-c", "1", "--gres=gpu:1", "--wrap", "srun sleep 600"),
    ]
    pending = _sbatch(slurm_cluster, "-p", "debug", "-c", "2", "--wrap", "sleep 600")
    deadline = time.time() + 60
    while sum(state == "RUNNING" for _, _, state in slurm_cluster.queue()) < 2:
        assert time.time() < deadline, slurm_cluster.queue()
        time.sleep(0.5)
    time.sleep(2)  # the steps start

    slurm_cluster.crash()
    log = slurm_cluster.start()

    assert "cold start: cancelling" in log, log
    assert slurm_cluster.queue() == []
    assert _node_state(slurm_cluster) == "idle"
    for row in _accounted(slurm_cluster, since, [*running, pending], "CANCELLED"):
        assert row["End"] not in ("", "Unknown"), row
    # the restarted cluster runs jobs again
    job = _sbatch(slurm_cluster, "-p", "debug", "-c", "1", "--wait", "--wrap", "true")
    _accounted(slurm_cluster, since, [job], "COMPLETED")


def _accounted(cluster, since: float, jobs: list[str], state: str) -> list[dict]:
    """The sacct rows of `jobs` once all are in `state` (slurmctld sends records to slurmdbd asynchronously)."""
    deadline = time.time() + 60
    while True:
        rows = {row["JobID"]: row for row in cluster.sacct(since)}
        found = [rows.get(job, {"JobID": job, "State": "not accounted"}) for job in jobs]
        if all(row["State"].startswith(state) for row in found):
            return found
        assert time.time() < deadline, found
        time.sleep(1)
