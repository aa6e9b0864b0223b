"""`make gpu-check`: the one script a lab runs first on a GPU node. Prints one PASS/FAIL table.

Sections (each a block of rows in the table; exit status 0 only when every row passes):

  pipeline  a reduced default pipeline with the default model (the SmolLM2 wheel) twice:
            `smollm2-cuda` (device cuda, dtype bfloat16: what `dtype: auto` means on a GPU) and
            `smollm2-cpu` (device cpu, float32); every metric table of every model stage (extraction,
            token states, saliency, isolation, re-weighting, anchor compression, error diagnosis,
            IC-ICL, TS-FT, layer LoRA, patching) compared value by value within the stated tolerance.
  multi     every model stage on a tiny model dispatched over several devices against the one-device
            CPU run (tests/unit/test_multi_device.py): over cuda:0 and cuda:1 when two GPUs are
            visible, over cuda:0 and the CPU with one GPU (each block runs where it lies, so every
            tensor the hook layer touches crosses devices), over the CPU and disk offload without one.
  speed     extraction on the GPU against the body forward pass timed in the same run (best of 3;
            reported, not judged).

About 5-10 minutes on one GPU. Needs a CUDA build of torch (requirements.txt's header says how).

    .venv/bin/python -m tests.benchmarks.gpu_check [--keep DIR]
    .venv/bin/python -m tests.benchmarks.gpu_check --device cpu   # no GPU: bf16 on the CPU, cpu+disk dispatch
    .venv/bin/python -m tests.benchmarks.gpu_check --device cpu --sections config,multi --select token_states
                                                                  # the quick self-check of the script itself
"""

from __future__ import annotations

import argparse
import copy
import os
import re
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

# bf16 against fp32: largest |difference| allowed per table (accuracies move by a few flipped prompts;
# trained arms (re-weighting, TS-FT, layer LoRA) follow another optimisation path in bf16)
TOLERANCE = {
    "icl_accuracy": 0.1,
    "decodability": 0.15,
    "compression": 0.15,
    "saliency": 0.05,
    "aucroc": 0.1,
    "isolation": 0.15,
    "reweighting": 0.15,
    "entropy": 0.05,
    "icicl": 0.15,
    "patching": 0.15,
    "anchor_compression": 0.15,
    "error_diagnosis": 0.25,
    "tsft": 0.2,
    "layer_lora": 0.3,
}
KEYS = ["metric", "layer", "position", "arm", "variant", "n_layers", "task", "shots", "seed"]
SECTIONS = ("config", "pipeline", "multi", "speed")
MODEL_STAGES = (
    "extract",
    "token_states",
    "saliency",
    "isolation",
    "reweighting",
    "anchor_compression",
    "error_diagnosis",
    "icicl",
    "tsft",
    "layer_lora",
    "patching",
)
MULTI_LINE = re.compile(
    r"multi-device (?P<stage>.+?): max \|one device - dispatched over (?P<where>.+?)\| = "
    r"(?P<diff>\S+) \(tolerance (?P<tol>\S+)\)"
)


def reduced_config(device: str = "cuda") -> dict:
    """The default config cut to minutes: the default model as `smollm2-<device>` in bfloat16 and as
    `smollm2-cpu` in float32, every model stage on a few prompts."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    base = cfg["models"].pop("smollm2-135m")
    half = "smollm2-cuda" if device == "cuda" else "smollm2-bf16"
    cfg["models"] = {
        half: {**base, "device": device, "dtype": "bfloat16", "batch_size": 32},
        "smollm2-cpu": {**base, "device": "cpu", "dtype": "float32"},
    }
    cfg["datasets"].pop("bitwise", None)
    cfg["datasets"]["tweets"]["prompts"].update(seeds=[42], n_test=40, n_train=12)
    if "tweets3" in cfg["datasets"]:  # three classes: error diagnosis
        cfg["datasets"]["tweets3"]["prompts"].update(n_test=24)
    cfg["datasets"]["words"].update(n_per_task=60)
    cfg["datasets"]["words"]["prompts"].update(shots=[1, 4], n_test=20)
    cfg["anchors"].update(isolation_k=[0.03, 0.1], isolation_prompts_per_seed=10, saliency_prompts_per_seed=10)
    cfg["anchors"]["reweighting"].update(aux_per_class=3, epochs=2, test_prompts_per_seed=20)
    cfg["icicl"].update(pool_size=40, n_test=20, warmup=1, random_draws=2)
    cfg["tsft"].update(steps=6, n_train=32, n_test=32, seeds=[0])
    cfg["layer_lora"].update(steps=4, n_train=16, n_monitor=8)
    cfg["entropy"].update(max_tokens=2000)
    cfg["entropy"]["training"]["enabled"] = False
    cfg["toy_regression"]["enabled"] = False
    return cfg


def check_config(device: str) -> pd.DataFrame:
    """The reduced config validates against the schema (a renamed key fails here, not minutes in)."""
    from iclscope.core.validate import validate_config

    try:
        validate_config(copy.deepcopy(reduced_config(device)))
        ok, note = True, ""
    except Exception as exc:  # noqa: BLE001 - reported as a FAIL row
        ok, note = False, f"{type(exc).__name__}: {exc}"[:200]
    rows = [
        {
            "section": "config",
            "check": "reduced config validates",
            "max_abs_diff": None,
            "tolerance": None,
            "result": "PASS" if ok else "FAIL",
            "note": note,
        }
    ]
    if ok:  # the plan: every model stage of both models, no stage refused before its first job
        with tempfile.TemporaryDirectory(prefix="iclscope-gpu-check-plan-") as work:
            (Path(work) / "config.yaml").write_text(yaml.safe_dump(reduced_config(device), sort_keys=False))
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "snakemake",
                    "--snakefile",
                    str(REPO / "Snakefile"),
                    "--directory",
                    work,
                    "--profile",
                    str(REPO / "profiles/local"),
                    "--cores",
                    "2",
                    "-n",
                ],
                capture_output=True,
                text=True,
            )
        planned = set(re.findall(r"^(\w+)\s+\d+$", run.stdout, re.M))  # the "Job stats" rows: rule, count
        missing = sorted(set(MODEL_STAGES) - planned)
        ok = run.returncode == 0 and not missing
        rows.append(
            {
                "section": "config",
                "check": "dry run plans every model stage",
                "max_abs_diff": None,
                "tolerance": None,
                "result": "PASS" if ok else "FAIL",
                "note": f"missing {missing}" if missing else (run.stderr[-200:] if run.returncode else ""),
            }
        )
    return pd.DataFrame(rows)


def compare_tables(work: Path, half: str = "smollm2-cuda") -> pd.DataFrame:
    """Every metric table of `half` (bfloat16) against `smollm2-cpu` (float32): one row per table.
    A table missing on either side, or with rows that do not pair, is a FAIL."""
    rows = []
    expected = {
        f"{f.parent.name}/{f.stem}"
        for side in ("smollm2-cpu", half)
        for f in (work / "results/metrics" / side).glob("*/*.parquet")
        if f.stem in TOLERANCE
    }
    for table in sorted(expected):
        dataset, name = table.split("/")
        cpu, gpu = (work / "results/metrics" / side / dataset / f"{name}.parquet" for side in ("smollm2-cpu", half))
        if not (cpu.exists() and gpu.exists()):
            rows.append(
                {
                    "section": "pipeline",
                    "check": table,
                    "max_abs_diff": None,
                    "tolerance": TOLERANCE[name],
                    "result": "FAIL",
                    "note": f"only on {'cpu' if cpu.exists() else half}",
                }
            )
            continue
        a, b = pd.read_parquet(cpu), pd.read_parquet(gpu)
        keys = [k for k in KEYS if k in a]
        merged = a.merge(b, on=keys, suffixes=("_cpu", "_gpu"))
        timing = merged["metric"].astype(str).str.contains("second|speedup|time_reduction|draw|tokens")
        diff = (merged.loc[~timing, "value_cpu"] - merged.loc[~timing, "value_gpu"]).abs()
        worst = float(np.nanmax(diff)) if diff.notna().any() else 0.0
        paired = len(merged) == len(a) == len(b)
        ok = worst <= TOLERANCE[name] and paired
        rows.append(
            {
                "section": "pipeline",
                "check": table,
                "max_abs_diff": round(worst, 4),
                "tolerance": TOLERANCE[name],
                "result": "PASS" if ok else "FAIL",
                "note": f"{int((~timing).sum())} values" + ("" if paired else "; rows do not pair"),
            }
        )
    return pd.DataFrame(rows)


def multi_devices(device: str) -> str:
    """The devices the multi-device section dispatches over ("" = the CPU and disk offload)."""
    if device != "cuda" or not torch.cuda.is_available():
        return ""
    return "cuda:0,cuda:1" if torch.cuda.device_count() >= 2 else "cuda:0,cpu"


def multi_device(devices: str, select: str | None = None) -> pd.DataFrame:
    """Run tests/unit/test_multi_device.py over `devices`; one row per stage comparison it prints,
    plus a row for the test run itself (a refusal or an error fails it)."""
    env = {**os.environ, "ICLSCOPE_TEST_DEVICES": devices}
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(REPO / "tests/unit/test_multi_device.py"),
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        *(["-k", select] if select else []),
    ]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    rows = []
    for m in MULTI_LINE.finditer(run.stdout):
        diff, tol = float(m["diff"]), float(m["tol"])
        rows.append(
            {
                "section": "multi",
                "check": m["stage"],
                "max_abs_diff": diff,
                "tolerance": tol,
                "result": "PASS" if diff <= tol else "FAIL",
                "note": f"over {m['where']}",
            }
        )
    tail = (run.stdout.strip().splitlines() or [""])[-1][:160]
    rows.append(
        {
            "section": "multi",
            "check": "test_multi_device.py",
            "max_abs_diff": None,
            "tolerance": None,
            "result": "PASS" if run.returncode == 0 and len(rows) else "FAIL",
            "note": tail if run.returncode == 0 else f"exit {run.returncode}: {tail} {run.stderr[-300:]}",
        }
    )
    return pd.DataFrame(rows)


def run_pipeline(work: Path, device: str) -> None:
    (work / "config.yaml").write_text(yaml.safe_dump(copy.deepcopy(reduced_config(device)), sort_keys=False))
    cores = str(os.cpu_count() or 2) if device == "cpu" else "8"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--profile",
            str(REPO / "profiles/local"),
            "--cores",
            cores,
        ],
        check=True,
    )


def extraction_speed(work: Path) -> pd.DataFrame:
    from iclscope.core.config import ModelSpec
    from iclscope.core.tables import read_table
    from iclscope.model.batching import make_batches
    from iclscope.model.capture import left_pad
    from iclscope.model.extract import ExtractSettings, extract
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
    return pd.DataFrame(
        [
            {"measure": k, "tokens/s": round(tokens / s), "ratio to body forward": round(best["body forward"] / s, 3)}
            for k, s in best.items()
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: no GPU needed (bfloat16 on the CPU against float32; cpu + disk dispatch)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--select", help="pytest -k expression restricting the multi-device stages")
    args = parser.parse_args(argv)
    sections = [x for x in args.sections.split(",") if x]
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device visible to torch (a CPU-only torch build, or no GPU); run with "
            "--device cpu to check everything else"
        )
        return 2
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"gpu-check on {where} ({gpus} GPU(s) visible), sections {sections}")
    frames = []
    if "config" in sections:
        frames.append(check_config(args.device))
    work = args.keep or Path(tempfile.mkdtemp(prefix="iclscope-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if "pipeline" in sections:
        t0 = time.perf_counter()
        run_pipeline(work, args.device)
        print(f"reduced pipeline, both models: {time.perf_counter() - t0:.0f} s on {where}")
        frames.append(compare_tables(work, "smollm2-cuda" if args.device == "cuda" else "smollm2-bf16"))
    if "multi" in sections:
        devices = multi_devices(args.device)
        if args.device == "cuda" and gpus < 2:
            print("multi-device: one GPU visible; the two-GPU section runs over cuda:0 and the CPU instead")
        frames.append(multi_device(devices, args.select))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    print()
    print(table.to_markdown(index=False) if len(table) else "(nothing checked)")
    if "speed" in sections and args.device == "cuda" and "pipeline" in sections:
        print()
        print(extraction_speed(work).to_markdown(index=False))
    ok = len(table) > 0 and (table["result"] == "PASS").all()
    failed = [] if ok else table.loc[table["result"] != "PASS", "check"].tolist()
    print(f"\ngpu-check: {'PASS' if ok else 'FAIL'}" + ("" if ok else f" ({', '.join(failed)})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
