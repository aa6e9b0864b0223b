"""The lab cache keys on code: a change to the package code an extraction runs misses the cache
and stores a new entry; a comment- or docstring-only change hits the old one (iclscope/core/jobs.py).
The real workflow with Snakemake's --cache, on a tiny local model, three checkouts of one lab."""

import os
from pathlib import Path

import pytest

from iclscope.core.lab_cache import entries
from snakemake_runner import checkout_copy, snakemake, write_config
from tiny_models import make_tiny_model

pytestmark = pytest.mark.timeout(900)
TARGET = "results/activations/tiny/toy.h5"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-code")
    make_tiny_model("llama", root / "tiny")
    rows = ["sentiment,text"] + [f"{['negative', 'positive'][i % 2]},tweet {i} was {['bad', 'good'][i % 2]} today"
                                 for i in range(60)]
    (root / "tweets.csv").write_text("\n".join(rows) + "\n")
    (root / "cache").mkdir()
    return root


def config(root: Path) -> dict:
    return {"models": {"tiny": {"source": "local", "path": str(root / "tiny"), "batch_size": 4}},
            "datasets": {"toy": {"source": "local", "path": str(root / "tweets.csv"), "label_column": "sentiment",
                                 "classes": {"negative": " negative", "positive": " positive"},
                                 "prompts": {"template": "Tweet: {text}\nSentiment:{label}", "seeds": [1],
                                             "n_test": 6}}},
            "anchors": {"reweighting": {"enabled": False}}}


def extract_in(root: Path, name: str, edit=None) -> Path:
    """A checkout (optionally with its capture.py edited) extracts TARGET with --cache extract."""
    repo = checkout_copy(root / f"{name}-repo")
    if edit:
        capture = repo / "workflow" / "iclscope" / "model" / "capture.py"
        capture.write_text(edit(capture.read_text()))
    work = root / name
    work.mkdir()
    write_config(work, config(root))
    snakemake(work, TARGET, "--cache", "extract", repo=repo,
              env={**os.environ, "SNAKEMAKE_OUTPUT_CACHE": str(root / "cache")})
    return work


def activation_entries(root: Path) -> list:
    """The cache's activation files (the model and the dataset are cached too, once: no attention code)."""
    return [e for e in entries(root / "cache") if e.name.endswith(".h5")]


def ran_a_forward_pass(work: Path) -> bool:
    log = work / "logs/extract/tiny/toy.log"
    return log.exists() and "extracted" in log.read_text()


def test_code_changes_miss_the_lab_cache_and_comments_hit_it(lab):
    first = extract_in(lab, "alice")
    assert ran_a_forward_pass(first) and len(activation_entries(lab)) == 1

    def reword(text):
        first_doc = text.index('"""') + 3
        return text[:first_doc] + "Reworded docstring. " + text[first_doc:] + "\n# a comment\n"

    second = extract_in(lab, "bob", reword)
    stored = entries(lab / "cache")
    assert not ran_a_forward_pass(second) and len(activation_entries(lab)) == 1
    assert os.path.realpath(second / TARGET) == os.path.realpath(first / TARGET)
    assert entries(lab / "cache") == stored

    third = extract_in(lab, "carol", lambda text: text + "\n_CHANGED_CODE = True\n")
    assert ran_a_forward_pass(third) and len(activation_entries(lab)) == 2
    assert len(entries(lab / "cache")) == len(stored) + 1  # the prepared model and dataset were hits
    assert os.path.realpath(third / TARGET) != os.path.realpath(first / TARGET)
