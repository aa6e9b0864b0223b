"""Planning and linking a fully stored plan (the lab store, iclscope/core/lab_store.py) against
the no-op plan of the same workflow, timed the same way in the same run.

A store holds the activation file of every model × dataset (entries published through
`lab_store.publish`, each a small stand-in file under the real recipe key); a fresh working
directory then runs `snakemake activations`: the DAG is built, every entry's sidecar is checked and
every activation file linked by a local rule, nothing computed. The baseline is `snakemake -n
activations` in that directory afterwards (nothing to be done): what a user pays on every call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .common import REPO, row
from .dag import _config

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 4,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 400,
}


def _snakemake(repo: Path, workdir: Path, store: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "-d", str(workdir), "-s", str(repo / "Snakefile")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ICLSCOPE_STORE": str(store), "PYTHONPATH": str(repo / "workflow")}
    done = subprocess.run([*cmd, *args], cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


FILL = """
import sys, yaml
from pathlib import Path
from iclscope.core import lab_store
from iclscope.core.validate import validate_config

store, config = Path(sys.argv[1]), yaml.safe_load(open(sys.argv[2]))
recipes = lab_store.Recipes(validate_config(config))
for model in config["models"]:
    for dataset in config["datasets"]:
        path = store.parent / "made" / f"{model}-{dataset}" / f"{dataset}.h5"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"stand-in activation file")
        lab_store.publish(store, recipes.recipe("extract", {"model": model, "dataset": dataset}), path)
"""


def _fill(repo: Path, store: Path, config_file: Path) -> int:
    """Publish a stand-in activation file under each model × dataset's real key (as `repo`'s
    package computes it); returns how many entries the store holds."""
    subprocess.run(
        [sys.executable, "-c", FILL, str(store), str(config_file)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(repo / "workflow")},
    )
    return len([p for p in store.iterdir() if not p.name.startswith(".")])


def run(n_models: int = 32, n_datasets: int = 32, repeats: int = 3) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"  # a snapshot: edits to this checkout during the run do not change keys
        repo.mkdir()
        shutil.copy(REPO / "Snakefile", repo / "Snakefile")
        shutil.copytree(REPO / "workflow", repo / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
        store = Path(tmp) / "store"
        store.mkdir()
        config = _config(n_models, n_datasets, Path(tmp) / "models")
        for spec in config["models"].values():  # a tiny Llama's config.json each: the layer settings read the depth
            (Path(spec["path"]) / "config.json").write_text(json.dumps(TINY_LLAMA))
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config))
        n = _fill(repo, store, Path(tmp) / "config.yaml")
        link_times, noop_times = [], []
        for i in range(repeats):
            work = Path(tmp) / f"member{i}"
            work.mkdir()
            (work / "config.yaml").write_text(yaml.safe_dump(config))
            t0 = time.perf_counter()
            out = _snakemake(repo, work, store, "activations").stdout + ""
            link_times.append(time.perf_counter() - t0)
            linked = sum(1 for _ in (work / "results" / "activations").rglob("*.h5"))
            if linked != n or any((work / "logs" / "extract").glob("**/*.log")):
                raise AssertionError(f"expected {n} linked files and no extraction, got {linked}:\n{out[-2000:]}")
            t0 = time.perf_counter()
            noop = _snakemake(repo, work, store, "-n", "activations").stdout
            noop_times.append(time.perf_counter() - t0)
            if "Nothing to be done" not in noop:
                raise AssertionError(f"the linked plan is not up to date:\n{noop[-2000:]}")
            shutil.rmtree(work)
    t_link, t_noop = sorted(link_times)[repeats // 2], sorted(noop_times)[repeats // 2]
    ratio = t_link / t_noop
    return [
        row(
            "store",
            f"plan + link a fully stored plan, {n_models} models × {n_datasets} datasets",
            t_link,
            "s",
            f"no-op plan of the same workflow ({t_noop:.2f} s)",
            ratio,
            note=f"{n} products linked, none computed",
        )
    ]


if __name__ == "__main__":
    m, d = (int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "32x32").split("x"))
    print(json.dumps(run(m, d), indent=1))
