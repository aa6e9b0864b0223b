"""Model sources: local directory, hub id (from an offline Hugging Face cache), errors."""

import json
import shutil

import pytest

from iclscope.core.config import ConfigError, ModelSpec
from iclscope.model.loading import load_model
from iclscope.model.models import prepare_model, read_manifest


def test_local_directory_manifest(prepared_tiny):
    spec, out = prepared_tiny
    manifest = read_manifest(out)
    assert manifest["n_layers"] == 2 and manifest["d_model"] == 32 and manifest["n_heads"] == 4
    assert len(manifest["weights_sha256"]) == 64 and manifest["source"]["source"] == "local"
    model, tok, _ = load_model(out)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert str(next(model.parameters()).dtype) == "torch.float32"  # dtype auto on CPU


def test_hub_id_from_offline_cache(tiny_model_dir, tmp_path, monkeypatch):
    """A hub id + revision resolves through the HF cache layout (what a login-node download leaves)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--iclscope-test--tiny"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    spec = ModelSpec(name="tiny-hub", source="hub", id="iclscope-test/tiny", revision="main")
    manifest = prepare_model(spec, tmp_path / "prepared")
    assert manifest["hub"]["commit"] == commit and manifest["revision"] == "main"
    assert read_manifest(tmp_path / "prepared")["weights_path"] == str(snapshot)
    assert json.loads((tmp_path / "prepared" / "manifest.json").read_text())["n_layers"] == 2
    load_model(tmp_path / "prepared")

    missing = ModelSpec(name="nope", source="hub", id="iclscope-test/absent")
    with pytest.raises(ConfigError, match="could not be found on the hub or in the local cache"):
        prepare_model(missing, tmp_path / "nope")


def test_local_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        prepare_model(ModelSpec(name="x", source="local", path=str(tmp_path / "absent")), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        prepare_model(ModelSpec(name="x", source="local", path=str(tmp_path / "empty")), tmp_path / "o")
    with pytest.raises(ConfigError, match="not installed"):
        prepare_model(ModelSpec(name="x", source="wheel", package="no_such_model_pkg"), tmp_path / "o")
