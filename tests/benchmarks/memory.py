"""Peak memory of extraction as the number of prompts grows (N = 200, 2,000, 10,000), and of loading
a model against its weight files (`load_rss`, target <= 1.3).

Each N runs `iclscope.model.extract.extract` in a fresh process (peak RSS: VmHWM), on a tiny
random Llama model so that 10,000 prompts take seconds on CPU: what grows with N is the
prompt table, the HDF5 writer and the batching, not the model. The ratio to N = 200 must stay
within 10 %.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .common import REPO, row

SIZES = (200, 2_000, 10_000)
WORDS = "good bad fine awful great poor lovely dull happy sad".split()

CHILD = """
import json, sys
sys.path.insert(0, {workflow!r})
from iclscope.core.config import ModelSpec
from iclscope.model.extract import ExtractSettings, extract
spec = ModelSpec(name="tiny", source="local", path={model!r}, batch_size=16, max_batch_tokens=4096)
summary = extract({prompts!r}, {prepared!r}, {out!r}, spec, ExtractSettings())
# VmHWM: this process's peak RSS (getrusage's ru_maxrss would include the parent's, inherited over fork)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
summary["peak_rss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(summary))
"""


def _prepared_tiny(tmp: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from iclscope.core.config import ModelSpec
    from iclscope.model.models import load_tokenizer, prepare_model
    from tiny_models import make_tiny_model

    raw = make_tiny_model("llama", tmp / "tiny")
    prepared = tmp / "prepared"
    prepare_model(ModelSpec(name="tiny", source="local", path=str(raw)), prepared)
    return raw, prepared, load_tokenizer(prepared)


def _prompts(tokenizer, manifest, n: int, path: Path) -> None:
    from iclscope.core.config import DatasetSpec, PromptSpec
    from iclscope.core.tables import write_table
    from iclscope.model.prompts import build_prompts, prompts_digest

    rng = np.random.default_rng(0)
    rows = [
        {
            "row_id": i,
            "text": " ".join(rng.choice(WORDS, 12)),
            "label": ["negative", "positive"][i % 2],
            "split": "train" if i < 20 else "test",
            "task": "t",
        }
        for i in range(220)
    ]
    classes = {"negative": " negative", "positive": " positive"}
    spec = DatasetSpec(
        name="bench",
        source="local",
        path="-",
        classes=classes,
        prompts=PromptSpec(template="Review: {text}\nSentiment:{label}", seeds=(1,), n_test=100),
    )
    base, meta = build_prompts(pd.DataFrame(rows), spec, tokenizer, manifest["context_length"])
    table = base.iloc[np.arange(n) % len(base)].reset_index(drop=True)
    table["prompt_id"] = np.arange(n)
    meta["prompts_sha256"] = prompts_digest(table)
    write_table(table, path, meta)


# load_model's peak host memory, in a fresh interpreter: the baseline is the peak RSS after importing
# torch, transformers and the hook layer (VmHWM), the load's cost the peak after load_model (every
# weight read once: memory-mapped pages count only once touched, as the first forward pass would)
LOAD_CHILD = """
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
assert all(bool(torch.isfinite(p.sum())) for p in model.parameters())
print(base, peak() - base)
"""


def load_rss(tmp: Path) -> dict:
    """Peak host RSS of `load_model` on a random Llama of ~147 MB (float32 safetensors) against its
    weight files: {"weights_mb", "baseline_mb", "load_mb", "ratio"}."""
    import os

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    from iclscope.core.config import ModelSpec
    from iclscope.model.models import prepare_model
    from tiny_models import train_tokenizer

    weights = tmp / "rss-weights"
    torch.manual_seed(0)
    tok = train_tokenizer("llama", weights)
    cfg = LlamaConfig(
        vocab_size=16000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(weights)
    size = sum(p.stat().st_size for p in weights.iterdir() if p.suffix in (".safetensors", ".bin"))
    prepare_model(ModelSpec(name="rss", source="local", path=str(weights)), tmp / "rss-prepared")
    out = subprocess.run(
        [sys.executable, "-c", LOAD_CHILD, str(tmp / "rss-prepared"), str(REPO / "workflow")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    base, load = int(out[-2]), int(out[-1])
    return {"weights_mb": size / 1e6, "baseline_mb": base / 1e6, "load_mb": load / 1e6, "ratio": load / size}


def run() -> list[dict]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, prepared, (tokenizer, manifest) = _prepared_tiny(tmp)
        for n in SIZES:
            prompts = tmp / f"prompts{n}.parquet"
            _prompts(tokenizer, manifest, n, prompts)
            code = CHILD.format(
                workflow=str(REPO / "workflow"),
                model=str(raw),
                prompts=str(prompts),
                prepared=str(prepared),
                out=str(tmp / f"act{n}.h5"),
            )
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            results[n] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results[SIZES[0]]["peak_rss_mb"]
    rows = []
    for n, r in results.items():
        ratio = r["peak_rss_mb"] / base
        rows.append(
            row(
                "memory",
                f"peak RSS, N = {n:,} prompts",
                r["peak_rss_mb"],
                "MB",
                f"N = {SIZES[0]}",
                ratio,
                "≤ 1.10",
                ratio <= 1.10,
                note=f"tiny Llama, {r['tokens']:,} tokens in {r['seconds']} s",
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        r = load_rss(Path(tmp))
    rows.append(
        row(
            "memory",
            "load_model peak host RSS / weight files",
            r["ratio"],
            "x",
            None,
            None,
            "≤ 1.3",
            r["ratio"] <= 1.3,
            note=f"{r['load_mb']:.0f} MB over the interpreter's {r['baseline_mb']:.0f} MB "
            f"for {r['weights_mb']:.0f} MB of float32 safetensors (random Llama)",
        )
    )
    return rows
