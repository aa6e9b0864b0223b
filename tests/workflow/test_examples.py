"""Each example config, run with the exact command the docs give for it, plans exactly its own jobs.

The command is read from the docs (README.md, docs/*.md), not written here: what a lab copies is what
is tested. Its dry run (in a copy of the checkout, the paper models' config.json in an offline HF
cache, no weights) must plan exactly the example's models x datasets x method families, the plan
`iclscope.core.plan.Plan` makes of the config files the command names, and nothing of config.yaml
unless the command names it (an overlay names it explicitly).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hub_cache import config_only_cache

from iclscope.core.plan import Plan
from iclscope.core.validate import validate_config
from snakemake_runner import REPO, SNAKEMAKE

EXAMPLES = sorted(p.name for p in (REPO / "config" / "examples").glob("*.yaml"))
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands() -> dict[str, str]:
    """example file name -> the first `snakemake ... --configfile ...` line of the docs naming it."""
    commands = {}
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            line = line.strip().lstrip("$ ").strip()
            if line.startswith("snakemake ") and "--configfile" in line:
                for name in re.findall(r"config/examples/([\w.-]+\.yaml)", line):
                    commands.setdefault(name, line)
    return commands


def merged(files: list[Path]) -> dict:
    """The config the files make when named in this order (Snakemake's merge: later keys win, mappings merge)."""

    def update(base, new):
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                update(base[k], v)
            else:
                base[k] = v
        return base

    config = {}
    for path in files:
        update(config, yaml.safe_load(path.read_text()))
    return config


FAMILY_RULES = (
    "taskspace",
    "icicl",
    "tsft",
    "decodability",
    "patching",
    "layer_lora",
    "error_diagnosis",
    "aucroc",
    "saliency",
    "isolation",
    "reweighting",
    "anchor_compression",
)


def expected_families(plan: Plan) -> dict[str, set[str]]:
    """dataset -> the method-family rules the plan runs on it."""
    families = {d: set() for d in plan.datasets}
    for rule in ("taskspace", "icicl", "tsft", "decodability", "patching", "layer_lora", "error_diagnosis"):
        for d in getattr(plan, rule)():
            families[d].add(rule)
    for d in plan.datasets:
        families[d] |= set(plan.anchor_methods(d))
    return families


def planned(out: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job of a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", out):
        m = re.match(r"(?:local)?rule (\S+):\n", block)
        if not m:
            continue
        w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        jobs.append((m.group(1), wildcards))
    return jobs


def test_every_example_has_a_documented_command():
    missing = sorted(set(EXAMPLES) - set(documented_commands()))
    assert not missing, f"no `snakemake ... --configfile config/examples/<x>` line in the docs for {missing}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_documented_command_plans_exactly_the_example(tmp_path, name):
    command = documented_commands()[name]
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(REPO / "Snakefile", checkout)
    shutil.copy(REPO / "config.yaml", checkout)
    for folder in ("workflow", "profiles", "config"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    args = shlex.split(command)
    files = []
    for i, arg in enumerate(args):
        if arg == "--configfile":
            files = [checkout / a for a in args[i + 1 :] if not a.startswith("-")]
            break
    config = validate_config(merged(files))
    revisions = {}
    for spec in config["models"].values():
        if spec["source"] == "hub":
            revisions.setdefault(spec["id"], []).append(spec["revision"])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(config_only_cache(tmp_path / "hub", revisions)),
        "PYTHONPATH": str(REPO / "workflow"),
    }
    env.pop("ICLSCOPE_STORE", None)
    done = subprocess.run(
        [SNAKEMAKE, *args[1:], "-n"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    jobs = planned(done.stdout + done.stderr)
    plan = Plan(config)

    models = {w["model"] for _, w in jobs if "model" in w} - {"toy"}
    datasets = {w["dataset"] for r, w in jobs if "dataset" in w and w.get("model") != "toy"}
    assert models == set(config["models"]), command
    assert datasets == set(config["datasets"]), command
    extracts = {(w["model"], w["dataset"]) for r, w in jobs if r == "extract"}
    assert extracts == {(m, d) for m in config["models"] for d in config["datasets"]}
    want = expected_families(plan)
    for d in config["datasets"]:
        got = {r for r, w in jobs if r in FAMILY_RULES and w.get("dataset") == d}
        assert got == want[d], f"{command}: dataset {d} plans {sorted(got)}, its config {sorted(want[d])}"
        for family in got:
            assert {w["model"] for r, w in jobs if r == family and w.get("dataset") == d} == set(config["models"])
