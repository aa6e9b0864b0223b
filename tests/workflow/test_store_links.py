"""The lab store on the real workflow (tiny local model, three checkouts at different paths):
the first checkout computes and publishes; a second one plans only links and extracts nothing;
a comment-only edit of the capture code still links; a real edit computes again
(iclscope/core/lab_store.py, workflow/rules/store.smk)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from iclscope.cli import store_command
from iclscope.core import lab_store
from snakemake_runner import checkout_copy, planned_jobs, snakemake, write_config
from tiny_models import make_tiny_model

pytestmark = pytest.mark.timeout(900)
TARGET = "results/activations/tiny/toy.h5"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-store")
    make_tiny_model("llama", root / "tiny")
    rows = ["sentiment,text"] + [
        f"{['negative', 'positive'][i % 2]},tweet {i} was {['bad', 'good'][i % 2]} today" for i in range(60)
    ]
    (root / "tweets.csv").write_text("\n".join(rows) + "\n")
    checkout_copy(root / "base-repo")  # one snapshot: other edits to this checkout do not reach the members
    store = root / "store"
    store.mkdir()
    os.chmod(store, 0o2775)  # group-shared, setgid: docs/cluster.md
    return {"root": root, "store": store, "env": {**os.environ, lab_store.ENV: str(store)}}


def config(root: Path) -> dict:
    return {
        "models": {"tiny": {"source": "local", "path": str(root / "tiny"), "batch_size": 4}},
        "datasets": {
            "toy": {
                "source": "local",
                "path": str(root / "tweets.csv"),
                "label_column": "sentiment",
                "classes": {"negative": " negative", "positive": " positive"},
                "prompts": {"template": "Tweet: {text}\nSentiment:{label}", "seeds": [1], "n_test": 6},
            }
        },
        "anchors": {"reweighting": {"enabled": False}},
    }


def member(lab, name: str, edit=None) -> tuple[Path, Path]:
    """A member's own checkout of the workflow (capture.py optionally edited) and working directory."""
    repo = lab["root"] / f"{name}-repo"
    shutil.copytree(lab["root"] / "base-repo", repo)
    if edit:
        capture = repo / "workflow" / "iclscope" / "model" / "capture.py"
        capture.write_text(edit(capture.read_text()))
    work = lab["root"] / name
    work.mkdir()
    write_config(work, config(lab["root"]))
    return repo, work


def key_in(work: Path, repo: Path, path: str = TARGET) -> str:
    """`iclscope store key <path>` as that checkout's package computes it, in its working directory."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "iclscope.cli", "store", "key", path],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo / "workflow")},
    )
    return out.stdout.strip()


def extracted(work: Path) -> bool:
    log = work / "logs/extract/tiny/toy.log"
    return log.exists() and "extracted" in log.read_text()


def test_a_second_checkout_links_what_the_first_stored(lab):
    repo, alice = member(lab, "alice")
    snakemake(alice, TARGET, repo=repo, env=lab["env"])
    assert extracted(alice)
    stages = sorted(r["stage"] for r in lab_store.listing(lab["store"]))
    assert stages == ["extract", "prepare_dataset", "prepare_model"]
    assert all(lab_store.is_sealed(e) for e in lab_store.entries(lab["store"]))
    assert not [p for p in lab["store"].iterdir() if p.name.startswith(".tmp")]
    assert planned_jobs(alice, TARGET, repo=repo, env=lab["env"]) == {}  # publishing changed nothing Snakemake tracks

    repo_b, bob = member(lab, "bob")
    assert planned_jobs(bob, TARGET, repo=repo_b, env=lab["env"]) == {"link_extract": 1}
    snakemake(bob, TARGET, repo=repo_b, env=lab["env"])
    assert not extracted(bob) and not (bob / "results/models/tiny").exists()
    key = key_in(bob, repo_b)
    assert key == key_in(alice, repo) and (lab["store"] / key).is_dir()
    assert os.path.samefile(bob / TARGET, lab["store"] / key / "toy.h5")  # a hard link, same filesystem
    assert planned_jobs(bob, TARGET, repo=repo_b, env=lab["env"]) == {}
    # the whole rest of the pipeline needs the model and dataset: linked, not prepared again
    plan = planned_jobs(bob, repo=repo_b, env=lab["env"])
    assert plan.get("link_prepare_model") == 1 and plan.get("link_prepare_dataset") == 1
    assert "prepare_model" not in plan and "extract" not in plan and "prepare_dataset" not in plan
    buf = io.StringIO()
    assert store_command("verify", store=str(lab["store"]), out=buf) == 0, buf.getvalue()


def planned_with_store(lab, work, repo):
    out = snakemake(work, "-n", TARGET, repo=repo, env=lab["env"]).stdout
    return out


def test_a_comment_only_edit_links_and_a_code_edit_extracts_again(lab):
    def reword(text):
        first_doc = text.index('"""') + 3
        return text[:first_doc] + "Reworded docstring. " + text[first_doc:] + "\n# a comment only\n"

    repo, dave = member(lab, "dave", reword)
    before = set(lab_store.entries(lab["store"]))
    assert "link_extract" in planned_with_store(lab, dave, repo)
    snakemake(dave, TARGET, repo=repo, env=lab["env"])
    assert not extracted(dave) and set(lab_store.entries(lab["store"])) == before

    repo, carol = member(lab, "carol", lambda text: text + "\n_CHANGED_CODE = True\n")
    out = planned_with_store(lab, carol, repo)
    assert "link_extract" not in out and "rule extract:" in out and "link_prepare_model" in out
    snakemake(carol, TARGET, repo=repo, env=lab["env"])
    assert extracted(carol)
    new = set(lab_store.entries(lab["store"])) - before
    assert [lab_store.read_sidecar(e)["stage"] for e in new] == ["extract"]
    assert next(iter(new)).name == key_in(carol, repo) != key_in(lab["root"] / "alice", lab["root"] / "alice-repo")


def test_a_damaged_entry_is_named_and_recomputed_never_linked(lab):
    """A truncated activation file in the store: the plan names the entry and the command that
    removes it, and computes the product instead of linking it."""
    damaged = lab["root"] / "store-damaged"
    shutil.copytree(lab["store"], damaged, symlinks=True)
    key = key_in(lab["root"] / "alice", lab["root"] / "alice-repo")
    data = damaged / key / "toy.h5"
    (damaged / key).chmod(0o755)
    data.chmod(0o644)
    data.write_bytes(data.read_bytes()[:1000])
    repo, zed = member(lab, "zed")
    out = snakemake(zed, "-n", TARGET, repo=repo, env={**lab["env"], lab_store.ENV: str(damaged)}).stdout
    assert f"store entry {damaged / key} is damaged" in out and f"iclscope store rm {key}" in out
    assert "rule extract:" in out and "rule link_extract:" not in out
