"""Peak memory of extraction as the number of prompts grows (N = 200, 2,000, 10,000).

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
    rows = [{"row_id": i, "text": " ".join(rng.choice(WORDS, 12)), "label": ["negative", "positive"][i % 2],
             "split": "train" if i < 20 else "test", "task": "t"} for i in range(220)]
    classes = {"negative": " negative", "positive": " positive"}
    spec = DatasetSpec(name="bench", source="local", path="-", classes=classes,
                       prompts=PromptSpec(template="Review: {text}\nSentiment:{label}", seeds=(1,), n_test=100))
    base, meta = build_prompts(pd.DataFrame(rows), spec, tokenizer, manifest["context_length"])
    table = base.iloc[np.arange(n) % len(base)].reset_index(drop=True)
    table["prompt_id"] = np.arange(n)
    meta["prompts_sha256"] = prompts_digest(table)
    write_table(table, path, meta)


def run() -> list[dict]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, prepared, (tokenizer, manifest) = _prepared_tiny(tmp)
        for n in SIZES:
            prompts = tmp / f"prompts{n}.parquet"
            _prompts(tokenizer, manifest, n, prompts)
            code = CHILD.format(workflow=str(REPO / "workflow"), model=str(raw), prompts=str(prompts),
                                prepared=str(prepared), out=str(tmp / f"act{n}.h5"))
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            results[n] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results[SIZES[0]]["peak_rss_mb"]
    rows = []
    for n, r in results.items():
        ratio = r["peak_rss_mb"] / base
        rows.append(row("memory", f"peak RSS, N = {n:,} prompts", r["peak_rss_mb"], "MB", f"N = {SIZES[0]}",
                        ratio, "≤ 1.10", ratio <= 1.10,
                        note=f"tiny Llama, {r['tokens']:,} tokens in {r['seconds']} s"))
    return rows
