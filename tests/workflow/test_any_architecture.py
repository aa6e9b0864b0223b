"""Tiny random GPT-J and Gemma-2 models (attention through an adapter / soft-capped eager attention)
through the whole default DAG on CPU, beside a tiny Llama at float32 and at bfloat16 whose tables
must agree within a stated tolerance. Toy models (which load no LM) are off to keep it short."""

import numpy as np
import pandas as pd
import pytest
import yaml

from snakemake_runner import REPO, snakemake, write_config
from tiny_models import make_tiny_arch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]
MODELS = {
    "tiny-gptj": ("gptj", {"n_positions": 1024}),
    "tiny-gemma2": ("gemma2", {"max_position_embeddings": 1024, "sliding_window": 16}),
    "tiny-llama": ("llama", {"max_position_embeddings": 1024}),
}


def small_config(model_dirs: dict) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["models"] = {name: {"source": "local", "path": str(path), "batch_size": 8} for name, path in model_dirs.items()}
    cfg["models"]["tiny-llama-bf16"] = {**cfg["models"]["tiny-llama"], "dtype": "bfloat16"}
    cfg["datasets"]["tweets"]["prompts"].update(seeds=[42], n_test=12, n_train=8)
    cfg["datasets"]["words"].update(n_per_task=30)
    cfg["datasets"]["words"]["prompts"].update(shots=[2], n_test=6)
    cfg["datasets"].pop("bitwise")
    cfg["datasets"]["tweets3"]["prompts"].update(n_test=9)
    cfg["anchors"]["error_diagnosis"].update(n_components=2)
    cfg["anchors"].update(isolation_k=[0.5], isolation_prompts_per_seed=4, saliency_prompts_per_seed=4)
    cfg["anchors"]["reweighting"].update(aux_per_class=3, epochs=1, test_prompts_per_seed=6)
    cfg["anchors"]["compression"].update(prompts_per_seed=4, n_random_draws=2, timing_repeats=1, timing_warmup=0)
    cfg["layer_lora"].update(steps=2, batch_size=2, n_train=8, n_monitor=4, checkpoint_every=1, n_layers=0.5)
    cfg["decodability"].update(k=3, n_boot=10)
    cfg["icl_accuracy"].update(n_boot=10)
    # inject_layer null: the middle of each tiny model (the default run's 10 is SmolLM2's chosen layer)
    cfg["icicl"].update(
        pool_size=12, n_test=6, n_timed=2, warmup=0, repeats=1, random_draws=1, inject_layer=None, n_boot=50
    )
    cfg["tsft"].update(steps=2, n_train=8, n_val=4, n_test=8, batch_size=4, seeds=[0], checkpoint_every=2)
    cfg["entropy"].update(max_tokens=300, n_bins=6)
    cfg["entropy"]["training"]["enabled"] = False
    cfg["toy_regression"]["enabled"] = False
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("any-arch")
    dirs = {name: make_tiny_arch(kind, root / name, **overrides) for name, (kind, overrides) in MODELS.items()}
    work = root / "run"
    work.mkdir()
    write_config(work, small_config(dirs))
    snakemake(work, "--profile", str(REPO / "profiles" / "local"), timeout=2400)
    return work


@pytest.mark.parametrize("model", ["tiny-gptj", "tiny-gemma2", "tiny-llama-bf16"])
def test_every_stage_produced_its_tables_and_figures(run_dir, model):
    for table in (
        "tweets/icl_accuracy",
        "tweets/saliency",
        "tweets/isolation",
        "tweets/reweighting",
        "tweets/aucroc",
        "tweets/anchor_compression",
        "tweets/compression",
        "tweets/icicl",
        "tweets/tsft",
        "tweets/entropy",
        "tweets3/error_diagnosis",
        "words/decodability",
        "words/patching",
        "words/layer_lora",
    ):
        frame = pd.read_parquet(run_dir / f"results/metrics/{model}/{table}.parquet")
        # AUCROC is undefined (NaN) when a random model predicts one class for every prompt
        assert len(frame) and (frame["value"].notna().any() or table.endswith("aucroc")), table
    figures = list((run_dir / "results/figures" / model).rglob("*.png"))
    assert len(figures) >= 15, figures


# bfloat16 against float32 (same weights): how far the tables move, and the tolerance allowed. Measured
# on 2026-12-01: saliency 1e-4, reweighting 8e-4, isolation 0, entropy 0.007, compression 0.083,
# decodability 0.167 (one of six
# 3-NN votes flipped: the test sets are tiny). AUCROC is NaN for a random model (one class predicted).
BF16_TOLERANCE = {
    "saliency": 0.01,
    "compression": 0.15,
    "entropy": 0.03,
    "decodability": 0.34,
    "isolation": 0.25,
    "reweighting": 0.05,
}


@pytest.mark.parametrize(("table", "tolerance"), list(BF16_TOLERANCE.items()))
def test_bfloat16_tables_are_within_tolerance_of_float32(run_dir, table, tolerance):
    dataset = "words" if table == "decodability" else "tweets"
    frames = [
        pd.read_parquet(run_dir / f"results/metrics/{m}/{dataset}/{table}.parquet")
        for m in ("tiny-llama", "tiny-llama-bf16")
    ]
    keys = [
        c
        for c in ("metric", "layer", "position", "arm", "variant", "n_layers", "task", "shots", "seed")
        if c in frames[0]
    ]
    merged = frames[0].merge(frames[1], on=keys, suffixes=("_fp32", "_bf16"))
    assert len(merged) == len(frames[0]) == len(frames[1])
    diff = (merged["value_fp32"] - merged["value_bf16"]).abs()
    print(f"{table}: max |bf16 - fp32| = {np.nanmax(diff):.4f} over {len(diff)} values")
    assert np.nanmax(diff) <= tolerance
