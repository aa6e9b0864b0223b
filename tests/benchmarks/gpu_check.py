"""`make gpu-check`: the GPU path of every model stage against the CPU float32 path, in one run.

One short script (about 5 minutes on one GPU): a reduced default pipeline with the default model
twice, `smollm2-cuda` (device cuda, dtype bfloat16: what `dtype: auto` means on a GPU) and
`smollm2-cpu` (device cpu, float32), then
  1. every metric table of the two compared value by value, with the tolerance stated below;
  2. extraction speed on the GPU against the body forward pass timed in the same run (best of 3).
Prints both as markdown tables and exits non-zero when a table is out of tolerance. Needs a CUDA
build of torch (requirements.txt's header says how to install one on a GPU machine).

    .venv/bin/python -m tests.benchmarks.gpu_check [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))

# bf16 against fp32: largest |difference| allowed per table (accuracies move by a few flipped prompts)
TOLERANCE = {"icl_accuracy": 0.1, "decodability": 0.15, "compression": 0.15, "saliency": 0.05, "aucroc": 0.1,
             "isolation": 0.15, "reweighting": 0.15, "entropy": 0.05, "icicl": 0.15, "patching": 0.15}
KEYS = ["metric", "layer", "position", "label_type", "task", "shots", "seed"]


def reduced_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    base = cfg["models"].pop("smollm2-135m")
    cfg["models"] = {"smollm2-cuda": {**base, "device": "cuda", "dtype": "bfloat16", "batch_size": 32},
                     "smollm2-cpu": {**base, "device": "cpu", "dtype": "float32"}}
    for name in ("bitwise", "tweets3"):
        cfg["datasets"].pop(name)
    cfg["datasets"]["tweets"]["prompts"].update(seeds=[42], n_test=40, n_train=12)
    cfg["datasets"]["words"].update(n_per_task=60)
    cfg["datasets"]["words"]["prompts"].update(shots=[1, 4], n_test=20)
    cfg["anchors"].update(isolation_k=[1, 3], isolation_prompts_per_seed=10, saliency_prompts_per_seed=10)
    cfg["anchors"]["reweighting"].update(aux_per_class=3, epochs=2, test_prompts_per_seed=20)
    cfg["icicl"].update(pool_size=40, n_test=20, warmup=1, random_draws=2)
    cfg["tsft"].update(steps=6, n_train=32, n_test=32, seeds=[0])
    cfg["layer_lora"].update(steps=4, n_train=16, n_monitor=8)
    cfg["entropy"].update(max_tokens=2000)
    cfg["entropy"]["training"]["enabled"] = False
    cfg["toy_regression"]["enabled"] = False
    return cfg


def compare_tables(work: Path) -> pd.DataFrame:
    rows = []
    for cpu in sorted((work / "results/metrics/smollm2-cpu").glob("*/*.parquet")):
        name, dataset = cpu.stem, cpu.parent.name
        gpu = work / "results/metrics/smollm2-cuda" / dataset / cpu.name
        if name not in TOLERANCE or not gpu.exists():
            continue
        a, b = pd.read_parquet(cpu), pd.read_parquet(gpu)
        keys = [k for k in KEYS if k in a]
        merged = a.merge(b, on=keys, suffixes=("_cpu", "_gpu"))
        timing = merged["metric"].str.contains("second|speedup|time_reduction|draw|tokens")
        diff = (merged.loc[~timing, "value_cpu"] - merged.loc[~timing, "value_gpu"]).abs()
        worst = float(np.nanmax(diff)) if len(diff) else 0.0
        rows.append({"table": f"{dataset}/{name}", "values": int((~timing).sum()), "max_abs_diff": round(worst, 4),
                     "tolerance": TOLERANCE[name], "ok": worst <= TOLERANCE[name] and len(merged) == len(a)})
    return pd.DataFrame(rows)


def extraction_speed(work: Path) -> pd.DataFrame:
    from iclscope.core.config import ModelSpec
    from iclscope.core.tables import read_table
    from iclscope.model.capture import left_pad
    from iclscope.model.extract import ExtractSettings, extract, make_batches
    from iclscope.model.loading import load_model

    cfg = reduced_config()
    spec = ModelSpec.from_config("smollm2-cuda", cfg["models"]["smollm2-cuda"])
    model_dir = work / "results/models/smollm2-cuda"
    prompts = work / "results/prompts/smollm2-cuda/tweets.parquet"
    table = read_table(prompts)
    model, tokenizer, _ = load_model(model_dir, spec)

    def body():
        with torch.inference_mode():
            for batch in make_batches(table["n_tokens"].to_numpy(), spec.batch_size, spec.max_batch_tokens):
                ids, mask, pos = left_pad([table["input_ids"].iat[i] for i in batch], tokenizer.pad_token_id, "cuda")
                model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        torch.cuda.synchronize()

    body()  # warm-up
    seconds = {"body forward": [], "iclscope extract": []}
    for rep in range(3):
        t0 = time.perf_counter()
        body()
        seconds["body forward"].append(time.perf_counter() - t0)
        out = work / f"speed{rep}.h5"
        seconds["iclscope extract"].append(extract(prompts, model_dir, out, spec, ExtractSettings())["seconds"])
    tokens = int(table["n_tokens"].sum())
    best = {k: min(v) for k, v in seconds.items()}
    return pd.DataFrame([{"measure": k, "tokens/s": round(tokens / s), "ratio to body forward":
                          round(best["body forward"] / s, 3)} for k, s in best.items()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible to torch (a CPU-only torch build, or no GPU); nothing to check")
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="iclscope-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(copy.deepcopy(reduced_config()), sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                    str(work), "--profile", str(REPO / "profiles/local"), "--cores", "8"],
                   check=True)
    print(f"\nreduced pipeline, both models: {time.perf_counter() - t0:.0f} s on {torch.cuda.get_device_name(0)}\n")
    tables = compare_tables(work)
    print(tables.to_markdown(index=False), "\n")
    print(extraction_speed(work).to_markdown(index=False))
    return 0 if len(tables) and tables["ok"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
