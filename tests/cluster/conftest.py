"""A real single-node SLURM cluster for the tests in this folder.

`slurm_cluster` (session) starts munge, MariaDB, slurmdbd, slurmctld and slurmd with
tests/cluster/slurm-local.sh (packages come from `make cluster-deps`), and stops exactly the
daemons it started, by pid, at the end. A session holds `<state dir>.lock` throughout, so two test
sessions on one machine take turns; a cold start cancels what a killed session left queued.
Without root or the packages it fails with the reason: a cluster test never silently skips.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "slurm-local.sh"
STATE_DIR = os.environ.get("ICLSCOPE_SLURM_DIR", "/tmp/iclscope-slurm")
CPU_PARTITION, GPU_PARTITION = "debug", "gpu"  # the tests' --default-resources; profiles/slurm's GPU partition


class Cluster:
    def __init__(self, env: dict):
        self.env = env

    def start(self) -> str:
        """Start the daemons not running (idempotent); fail with the script's log; its log lines."""
        started = _script("start", env=self.env)
        if started.returncode != 0:
            pytest.fail(
                f"could not start the local SLURM cluster (run `make cluster-deps` first):\n"
                f"{started.stdout[-3000:]}\n{started.stderr[-2000:]}"
            )
        return started.stdout

    def crash(self) -> None:
        """SIGKILL the jobs' processes and every daemon, leaving the saved state (a killed session)."""
        done = _script("crash", env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr

    def restart_slurmd(self) -> str:
        """Stop and start the node daemon (queued and running jobs stay); its log lines."""
        done = _script("restart-slurmd", env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def queue(self) -> list[tuple[str, str, str]]:
        """(job id, comment, state) of every job in the queue."""
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i|%k|%T"], env=self.env, capture_output=True, text=True, check=True
        ).stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def sacct(
        self,
        since: float,
        fields=("JobID", "JobName", "Comment", "State", "AllocTRES", "Start", "End", "ReqMem", "ExitCode", "Partition"),
    ) -> list[dict]:
        """Allocations (no steps) submitted since the epoch time `since`, one dict per job."""
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))
        out = subprocess.run(
            ["sacct", "-X", "--parsable2", "--noheader", "-S", start, "-o", ",".join(fields)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]

    def jobs_by_rule(self, since: float) -> dict[str, list[dict]]:
        """sacct rows grouped by rule (the snakemake slurm plugin writes 'rule_<name>_…' to Comment)."""
        groups: dict[str, list[dict]] = {}
        for row in self.sacct(since):
            rule = row["Comment"].removeprefix("rule_").split("_wildcards")[0] or row["JobName"]
            groups.setdefault(rule, []).append(row)
        return groups


def _script(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.fail("the cluster tests start slurmd/slurmctld and need root (make test runs as root in CI)")
    # two fake GPUs, so that two GPU jobs (extraction shards) can run side by side on 2 cores; a CPU
    # partition (debug, the default) and a GPU partition (gpu, profiles/slurm's set-resources) on the one node
    env = {
        **os.environ,
        "SLURM_LOCAL_DIR": STATE_DIR,
        "SLURM_LOCAL_INSTALL": "0",
        "SLURM_LOCAL_GPUS": "2",
        "SLURM_LOCAL_PARTITION": CPU_PARTITION,
        "SLURM_LOCAL_GPU_PARTITION": GPU_PARTITION,
        "SLURM_CONF": f"{STATE_DIR}/etc/slurm.conf",
    }
    # one test session on the cluster at a time: a second one (another checkout's `make test`) waits
    # here instead of sharing the queue that the first one counts jobs in
    with open(f"{STATE_DIR}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = Cluster(env)
        cluster.start()
        try:
            yield cluster
        finally:
            _script("stop", env=env)
