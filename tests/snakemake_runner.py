"""Helpers to run the real workflow with Snakemake as a subprocess, under a hard timeout."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(
    workdir: Path,
    *args: str,
    timeout: int = 900,
    check: bool = True,
    env: dict | None = None,
    launcher: list[str] | None = None,
    repo: Path = REPO,
) -> subprocess.CompletedProcess:
    """Run the Snakefile of `repo` (this repository, or a copy from `checkout_copy`) in `workdir` (its
    config.yaml, results/, logs/); kill after `timeout` s.

    `launcher` replaces the `snakemake` command (tests/cluster/snakemake_fast_status.py)."""
    cmd = [
        *(launcher or [SNAKEMAKE]),
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    env = {**(env or os.environ), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo / "workflow")}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"snakemake {' '.join(args)} timed out after {timeout} s:\n{out[-4000:]}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}")
    return result


def checkout_copy(dest: Path) -> Path:
    """A copy of the workflow (Snakefile, workflow/, profiles/) whose package a test may edit: a second
    checkout of the lab, or the same one after a code change."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return dest


def planned_jobs(workdir: Path, *args: str, repo: Path = REPO, env: dict | None = None) -> dict[str, int]:
    """Dry run; {rule: job count} from Snakemake's 'Job stats' table ({} when nothing to do)."""
    out = snakemake(workdir, "-n", *args, repo=repo, env=env).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
