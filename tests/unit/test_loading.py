"""load_model puts weights straight on their device: peak host memory while loading, `*.bin`-only
models, hub manifests that name no directory of the machine that prepared them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iclscope.core.config import ModelSpec
from iclscope.model.loading import load_model
from iclscope.model.models import prepare_model, read_manifest
from tiny_models import train_tokenizer

WORKFLOW = Path(__file__).resolve().parents[2] / "workflow"

# Run in a fresh interpreter: the baseline is the peak RSS after importing torch, transformers and
# the hook layer (VmHWM), the load's cost is the peak after load_model minus that baseline.
PROBE = """
import sys
sys.path.insert(0, sys.argv[2])
import torch, transformers  # noqa: F401
from iclscope.model.loading import load_model

def peak():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmHWM:")[1].split()[0]) * 1024

base = peak()
model, _, _ = load_model(sys.argv[1])
assert next(model.parameters()).dtype == torch.float32
# read every weight once: memory-mapped pages count only once touched, as the first forward pass would
assert all(bool(torch.isfinite(p.sum())) for p in model.parameters())
print(base, peak() - base)
"""


def save_random_llama(out: Path) -> int:
    """A random Llama of ~150 MB (float32) saved with save_pretrained; returns its weight files' bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = train_tokenizer("llama", out)
    cfg = LlamaConfig(vocab_size=16000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".safetensors", ".bin"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_host_memory_while_loading_is_about_the_weights(tmp_path):
    weights = tmp_path / "weights"
    size = save_random_llama(weights)
    prepare_model(ModelSpec(name="rss", source="local", path=str(weights)), tmp_path / "prepared")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "prepared"), str(WORKFLOW)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    base, load = int(out[-2]), int(out[-1])
    ratio = load / size
    print(f"load_model peak host RSS: {load / 1e6:.0f} MB over a {base / 1e6:.0f} MB baseline for "
          f"{size / 1e6:.0f} MB of weights: ratio {ratio:.2f}")
    assert ratio <= 1.3, ratio


def test_bin_only_model_prepares_and_loads(tmp_path):
    """A model published only as PyTorch `*.bin` (no safetensors) prepares and loads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    weights = tmp_path / "weights"
    tok = train_tokenizer("llama", weights)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
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
    prepare_model(ModelSpec(name="tiny-hub", source="hub", id="iclscope-test/tiny", revision="main"),
                  tmp_path / "prepared")
    text = (tmp_path / "prepared" / "manifest.json").read_text()
    assert str(tmp_path) not in text and "/alice" not in text
    stored = json.loads(text)
    assert stored["hub"] == {"id": "iclscope-test/tiny", "revision": "main", "commit": commit, "file": None}
    assert stored["weights_dir"] is None

    bob = hub_cache(tiny_model_dir, tmp_path / "bob", commit)  # the same commit in another user's cache
    use_cache(monkeypatch, tmp_path / "bob")
    assert read_manifest(tmp_path / "prepared")["weights_path"] == str(bob)
    load_model(tmp_path / "prepared")
