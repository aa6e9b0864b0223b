"""`iclscope estimate`'s bytes of a classification activation file (report/estimate.py) against the
file extraction writes, in both label layouts: label states once per shared prefix (schema 2, what
`iclscope estimate` counts) and per prompt (schema 1). A random Llama of Llama-3-8B's width (d = 4096,
3 layers): lzf's 8 KiB window finds a prompt's copy of its seed's label states at d <= 1024 (rows of
K·d·2 bytes), never at d = 4096, where the copies cost their full size."""

from types import SimpleNamespace

import pytest
from test_extract import prompts_file

from iclscope.core.config import ModelSpec
from iclscope.model.extract import ExtractSettings, extract
from iclscope.model.models import prepare_model
from iclscope.report.estimate import activation_file_bytes, label_rows, per_prompt_rows
from tiny_models import make_tiny_arch, train_tokenizer

WIDE = {
    "hidden_size": 4096,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 32,
    "num_key_value_heads": 1,
}
CFG = {"extract": {"store_dtype": "float16", "topk": 10, "max_new_tokens": 6, "shards": 1, "compression": "lzf"}}
DATASET = {
    "kind": "classification",
    "classes": {"negative": " negative", "positive": " positive"},
    "prompts": {"seeds": [1, 2], "shots_per_class": 1, "n_test": 12, "n_train": 2},
}


def test_label_rows_once_per_prefix_and_per_shard_boundary():
    assert label_rows(1000, DATASET) == 2 * 2  # two seeds x two demonstrations
    assert label_rows(1000, DATASET, shards=3) == 4 * 2  # a shard boundary inside a seed stores it again
    assert label_rows(1000, DATASET, shared_prefixes=False) == 1000 * 2
    assert per_prompt_rows(CFG) == 3  # query, last input, content mean
    assert per_prompt_rows({"extract": {**CFG["extract"], "positions": ["query", "label"]}}) == 1


def test_estimated_bytes_match_the_extracted_file_in_both_layouts(tmp_path):
    tok = tmp_path / "tok"
    train_tokenizer("gpt2", tok)
    weights = make_tiny_arch("llama", tmp_path / "wide", tok, **WIDE)
    spec = ModelSpec(name="wide", source="local", path=str(weights), batch_size=8, device="cpu")
    model_dir = tmp_path / "prepared"
    prepare_model(spec, model_dir)
    ppath, table = prompts_file((spec, model_dir), tmp_path, n_test=24, n_train=2)
    n = len(table)
    assert n == 2 * (12 + 2)
    layout = SimpleNamespace(n_layers=WIDE["num_hidden_layers"], d_model=WIDE["hidden_size"], n_heads=32)
    measured, estimated = {}, {}
    for shared in (True, False):
        out = tmp_path / f"act-{shared}.h5"
        extract(ppath, model_dir, out, spec, ExtractSettings(), share_prefixes=shared)
        measured[shared] = out.stat().st_size
        estimated[shared] = activation_file_bytes(n, layout, DATASET, CFG, shared_prefixes=shared)
        print(f"shared={shared}: estimated {estimated[shared]} B, measured {measured[shared]} B")
        assert estimated[shared] == pytest.approx(measured[shared], rel=0.15)
    ratio = {k: v[True] / v[False] for k, v in (("measured", measured), ("estimated", estimated))}
    print("bytes per prompt, shared / per prompt:", ratio)
    assert ratio["estimated"] == pytest.approx(ratio["measured"], abs=0.05)


def test_example_configs_store_under_a_third_of_todays_classification_bytes_at_llama_scale():
    """The issue's basis (its 47 of 59 GB): every example config's classification activation files at
    Llama-3.1-8B (tests/data config.json), float16, as configured (seeds, test and train prompts,
    classes). Label states once per prefix leave the per-prompt rows: 3 / (3 + K) of the residual
    bytes, so 1 demonstration of 2 classes stays at 0.6 and the 32 classes of the empathetic
    config (half of all bytes) at 0.1; `make bench` prints the table (tests/benchmarks/shared_prefix.py)."""
    from benchmarks.shared_prefix import LLAMA, example_storage

    rows = example_storage(LLAMA)
    assert {r["config"] for r in rows} >= {"label-anchors-gpt2xl.yaml", "ib-empathetic-dialogues.yaml"}
    for r in rows:
        assert (r["layers"], r["d_model"]) == (32, 4096)
        ratio = r["per_prefix"] / r["per_prompt"]
        K = r["demos"]
        assert 3 / (3 + K) < ratio < 3 / (3 + K) + 0.03, r  # attention, logits and prompt metadata on top
    old, new = sum(r["per_prompt"] for r in rows), sum(r["per_prefix"] for r in rows)
    assert new / old <= 1 / 3
