"""load_model puts weights straight on their device: peak host memory while loading, `*.bin`-only
models, hub manifests that name no directory of the machine that prepared them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from iclscope.core.config import ModelSpec
from iclscope.model.loading import load_model
from iclscope.model.models import prepare_model, read_manifest
from tiny_models import train_tokenizer


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_host_memory_while_loading_is_about_the_weights(tmp_path):
    """load_model's peak host RSS (a fresh interpreter, its torch + transformers baseline subtracted) is at
    most 1.3x the weight files of a ~147 MB random Llama (the benchmark `memory` reports the same)."""
    from benchmarks.memory import load_rss

    r = load_rss(tmp_path)
    print(
        f"load_model peak host RSS: {r['load_mb']:.0f} MB over a {r['baseline_mb']:.0f} MB baseline for "
        f"{r['weights_mb']:.0f} MB of weights: ratio {r['ratio']:.2f}"
    )
    assert r["ratio"] <= 1.3, r


def test_bin_only_model_prepares_and_loads(tmp_path):
    """A model published only as PyTorch `*.bin` (no safetensors) prepares and loads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    weights = tmp_path / "weights"
    tok = train_tokenizer("llama", weights)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    reference = LlamaForCausalLM(cfg).eval()
    cfg.save_pretrained(weights)  # transformers 5 saves safetensors only: write the pickle as older tools did
    torch.save(reference.state_dict(), weights / "pytorch_model.bin")
    assert not list(weights.glob("*.safetensors")) and list(weights.glob("*.bin"))
    manifest = prepare_model(ModelSpec(name="bin", source="local", path=str(weights)), tmp_path / "prepared")
    assert manifest["n_layers"] == 2
    model, _, _ = load_model(tmp_path / "prepared")
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def hub_cache(tiny_dir: Path, root: Path, commit: str) -> Path:
    repo = root / "models--iclscope-test--tiny"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def use_cache(monkeypatch, root: Path) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def test_hub_manifest_names_id_and_commit_not_a_path(tiny_model_dir, tmp_path, monkeypatch):
    """The manifest of a hub model holds its id, revision and commit and no directory of the machine
    that prepared it; another machine (another HF cache) resolves its own snapshot at load time."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_cache(tiny_model_dir, tmp_path / "alice", commit)
    use_cache(monkeypatch, tmp_path / "alice")
    prepare_model(
        ModelSpec(name="tiny-hub", source="hub", id="iclscope-test/tiny", revision="main"), tmp_path / "prepared"
    )
    text = (tmp_path / "prepared" / "manifest.json").read_text()
    assert str(tmp_path) not in text and "/alice" not in text
    stored = json.loads(text)
    assert stored["hub"] == {"id": "iclscope-test/tiny", "revision": "main", "commit": commit, "file": None}
    assert stored["weights_dir"] is None

    bob = hub_cache(tiny_model_dir, tmp_path / "bob", commit)  # the same commit in another user's cache
    use_cache(monkeypatch, tmp_path / "bob")
    assert read_manifest(tmp_path / "prepared")["weights_path"] == str(bob)
    load_model(tmp_path / "prepared")
