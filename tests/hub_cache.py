"""An offline Hugging Face cache holding only the config.json of the papers' models (tests/data/*.config.json).

What a lab's login node has after `hf download <id> config.json`: enough for iclscope to plan a paper
configuration (every layer setting is checked against each model's depth, resources are sized from
its config) without any weights and without the network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

# hub id -> the config.json shipped in tests/data (published numbers of the real models)
PAPER_MODELS = {
    "openai-community/gpt2-xl": "gpt2-xl",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "EleutherAI/pythia-160m": "pythia-160m",
    "EleutherAI/pythia-1.4b": "pythia-1.4b",
}


def config_only_cache(root: Path, revisions: dict[str, list[str]] | None = None) -> Path:
    """A cache under `root` (use it as HF_HUB_CACHE) with config.json of every paper model at each of
    `revisions[id]` (default: main)."""
    for repo_id, name in PAPER_MODELS.items():
        repo = root / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        for revision in (revisions or {}).get(repo_id, ["main"]):
            commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
            snapshot = repo / "snapshots" / commit
            snapshot.mkdir(parents=True, exist_ok=True)
            (snapshot / "config.json").write_text((DATA / f"{name}.config.json").read_text())
            (repo / "refs" / revision).write_text(commit)
    return root
