"""`snakemake -n` on an up-to-date DAG of many models × datasets, against a trivial workflow of
`touch` rules with the same number of jobs, timed the same way in the same run.

Both are made up to date without running a job: every output is created empty and, for iclscope,
dated after its inputs (rule-graph order). What is left is Snakefile parsing, config validation,
target building and the DAG: the overhead a user pays on every call. Target: ≤ 1.5 × the trivial workflow.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .common import REPO, row, timed

DIRECTORY_OUTPUTS = {"prepare_model", "tsft"}  # rules whose output is a directory()
TRIVIAL = """
N = {n}
rule all:
    input: expand("out/{{i}}.txt", i=range(N))
rule make:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""


def _snakemake(workdir: Path, *args: str, snakefile: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "-d", str(workdir)]
    if snakefile:
        cmd += ["-s", str(snakefile)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*cmd, *args], cwd=workdir, env=env, check=True, capture_output=True, text=True)


def _config(n_models: int, n_datasets: int, models_dir: Path) -> dict:
    """`n_models` local models (a config.json each: the layer settings resolve against its depth
    before any job) × `n_datasets` copies of the default's tweets."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    tweets = base["datasets"]["tweets"]
    config_json = (REPO / "tests" / "data" / "pythia-160m.config.json").read_text()
    models = {}
    for i in range(n_models):
        (models_dir / f"m{i:02d}").mkdir(parents=True, exist_ok=True)
        (models_dir / f"m{i:02d}" / "config.json").write_text(config_json)
        models[f"m{i:02d}"] = {"source": "local", "path": str(models_dir / f"m{i:02d}")}
    datasets = {
        f"d{j:02d}": {**tweets, "source": "local", "path": f"/data/d{j:02d}.csv", "label_column": "label"}
        for j in range(n_datasets)
    }
    for spec in datasets.values():
        spec.pop("package", None)
    return {**base, "models": models, "datasets": datasets, "entropy": {**base["entropy"], "datasets": ["d00"]}}


def _rule_order(work: Path) -> dict[str, int]:
    """Rule name -> rank in a topological order of the rule graph (every producer before its consumers)."""
    from graphlib import TopologicalSorter

    dot = _snakemake(work, "--rulegraph").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    graph = {name: set() for name in names.values()}
    for source, target in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        graph[names[target]].add(names[source])
    return {name: rank for rank, name in enumerate(TopologicalSorter(graph).static_order())}


def _create_outputs(work: Path) -> None:
    """Create every output of the DAG empty, dated in the rule graph's topological order.

    Costs two DAG builds (--summary, --rulegraph) and one utime per file. `snakemake --touch`
    does the same job but took over 14 minutes for the 25,000 jobs of 50 models × 20 datasets.
    """
    order = _rule_order(work)
    summary = _snakemake(work, "--summary").stdout.splitlines()
    header = summary.index(next(line for line in summary if line.startswith("output_file")))
    start = time.time() - len(order) - 10
    for line in filter(str.strip, summary[header + 1 :]):
        name, _, rule = line.split("\t")[:3]
        path = work / name
        if rule in DIRECTORY_OUTPUTS:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        os.utime(path, (start + order[rule], start + order[rule]))


def _jobs(dry_run_output: str) -> int:
    match = re.search(r"^total\s+(\d+)", dry_run_output, re.M)
    return int(match.group(1)) if match else 0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (the `snakemake -n` calls)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(fn, repeats: int = 3) -> tuple[float, float]:
    """(median wall seconds, mean CPU seconds) of `fn()`: the CPU time holds on a loaded machine."""
    cpu = _cpu_seconds()
    wall = timed(fn, repeats)
    return wall, (_cpu_seconds() - cpu) / repeats


def run(n_models: int = 10, n_datasets: int = 10, target: bool = True) -> list[dict]:
    """The benchmark's row at `n_models` × `n_datasets`; `target` False for a size reported in
    seconds only (the 4-model × 7-dataset plan)."""
    with tempfile.TemporaryDirectory() as tmp:
        work, trivial = Path(tmp) / "iclscope", Path(tmp) / "trivial"
        work.mkdir()
        trivial.mkdir()
        for name in ("Snakefile", "workflow"):
            os.symlink(REPO / name, work / name)
        (work / "config.yaml").write_text(yaml.safe_dump(_config(n_models, n_datasets, Path(tmp) / "models")))
        n_jobs = _jobs(_snakemake(work, "-n", "--quiet=rules").stdout)
        _create_outputs(work)
        if left := _jobs(_snakemake(work, "-n", "--quiet=rules").stdout):
            raise AssertionError(f"iclscope DAG not up to date after dating its outputs: {left} jobs left")
        (trivial / "Snakefile").write_text(TRIVIAL.format(n=n_jobs - 1))
        (trivial / "out").mkdir()
        for i in range(n_jobs - 1):  # what running its jobs would leave, without 25,000 job launches
            (trivial / "out" / f"{i}.txt").touch()
        if left := _jobs(_snakemake(trivial, "-n", "--quiet=rules").stdout):
            raise AssertionError(f"trivial workflow not up to date: {left} jobs left")
        t_ours, cpu_ours = _timed(lambda: _snakemake(work, "-n"))
        t_floor, cpu_floor = _timed(lambda: _snakemake(trivial, "-n"))
    ratio = t_ours / t_floor
    return [
        row(
            "dag",
            f"snakemake -n, up to date, {n_models} models × {n_datasets} datasets",
            t_ours,
            "s",
            f"trivial touch workflow, {n_jobs} jobs",
            ratio,
            "≤ 1.5" if target else None,
            ratio <= 1.5 if target else None,
            note=f"{n_jobs} jobs; CPU {cpu_ours:.1f} s vs {cpu_floor:.1f} s ({cpu_ours / cpu_floor:.2f}×)",
        )
    ]
