"""Fixtures shared by every test tier. Helpers live in tests/tiny_models.py and
tests/snakemake_runner.py (tests/ and workflow/ are on sys.path via pyproject's pytest config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_model_dir(request, tmp_path_factory) -> Path:
    return make_tiny_model(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def prepared_tiny(tiny_model_dir, tmp_path_factory):
    """(ModelSpec, prepared model dir) of the tiny model, loaded through `source: local`."""
    from iclscope.core.config import ModelSpec
    from iclscope.model.models import prepare_model

    spec = ModelSpec(
        name=f"tiny-{tiny_model_dir.name}", source="local", path=str(tiny_model_dir), batch_size=3, max_batch_tokens=512
    )
    out = tmp_path_factory.mktemp("prepared")
    prepare_model(spec, out)
    return spec, out
