"""IC-ICL and anchor compression give the outputs they gave before their KV and scoring code moved to
iclscope.model.scoring (issue 31): every arm's label logits, predictions and top-k vocabulary ids, the
sweep's accuracies and the anchor KV's bookkeeping, on the tiny Llama and GPT-2 models, against a
fixture captured from the implementation before the move (tests/data/golden/kv_<model>.json).

Label logits are compared within fp32 tolerance, everything else exactly. Timing columns are not
compared (wall clock). To recapture after an intended change of results: ICLSCOPE_WRITE_GOLDEN=1 (the
test then writes the fixture and skips; say in the commit why the results changed)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_anchor_compression import three_demo_prompts
from test_icicl_tsft import SPEC, frame

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _icicl(prepared):
    from iclscope.methods.taskspace.icicl.evaluate import evaluate_icicl
    from iclscope.methods.taskspace.icicl.settings import ICICLSettings, SweepGrid
    from iclscope.methods.taskspace.icicl.sweep import sweep_icicl

    spec_model, model_dir = prepared
    settings = ICICLSettings(
        k=2,
        pool_size=10,
        n_test=6,
        n_timed=1,
        inject_layer=1,
        embed_layer=1,
        warmup=0,
        repeats=1,
        random_draws=2,
        word_k=5,
        task_space="pool",
        n_boot=20,
    )
    per_example, _, meta = evaluate_icicl(frame(), SPEC, model_dir, spec_model, {}, settings)
    per_example = per_example.sort_values(["arm", "draw", "test_row"])
    grid = SweepGrid(depths=(0.5,), states=("last", "label"), task_spaces=("pool", "identity"), n_val=8)
    table, sweep_meta = sweep_icicl(frame(120), SPEC, model_dir, spec_model, {}, settings, grid)
    return {
        "icicl": {
            "keys": per_example[["arm", "draw", "test_row"]].values.tolist(),
            "pred": per_example["pred"].tolist(),
            "tokens": per_example["tokens"].tolist(),
            "top_ids": per_example["top_ids"].map(list).tolist(),
            "logits": per_example[["logit_negative", "logit_positive"]].to_numpy().tolist(),
            "demo_rows": per_example["demo_rows"].map(list).tolist(),
            "meta": {k: meta[k] for k in ("anchor_kv_entries", "anchor_kv_stride", "task_space_k")},
        },
        "sweep": {
            "arm": table["arm"].tolist(),
            "accuracy": table["accuracy"].tolist(),
            "tokens": table["tokens"].tolist(),
            "chosen": table["chosen"].tolist(),
            "chosen_by_arm": sweep_meta["chosen_by_arm"],
        },
    }


def _compression(prepared, tmp_path):
    from iclscope.methods.anchors.compression import AnchorCompressionSettings, run_anchor_compression

    spec_model, model_dir = prepared
    path, _ = three_demo_prompts(prepared, tmp_path, n_test=4)
    settings = AnchorCompressionSettings(
        prompts_per_seed=4, n_random_draws=3, timing_repeats=1, timing_warmup=0, timed_per_seed=1
    )
    _, info, rows = run_anchor_compression(path, model_dir, spec_model, settings=settings, dataset="d3")
    rows = rows.sort_values(["seed", "prompt_id", "arm", "draw"])
    return {
        "keys": rows[["seed", "prompt_id", "arm", "draw"]].values.tolist(),
        "pred": rows["pred"].tolist(),
        "top_ids": rows["top_ids"].map(list).tolist(),
        "tokens": rows["tokens"].tolist(),
        "context_tokens": rows["context_tokens"].tolist(),
        "demonstration_passes": info["demonstration_passes"],
    }


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def test_icicl_and_compression_equal_the_captured_outputs(prepared_tiny, tmp_path):
    got = _jsonable({**_icicl(prepared_tiny), "compression": _compression(prepared_tiny, tmp_path)})
    path = GOLDEN / f"kv_{'llama' if 'llama' in prepared_tiny[0].path else 'gpt2'}.json"
    if os.environ.get("ICLSCOPE_WRITE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=0))
        pytest.skip(f"recapture mode (ICLSCOPE_WRITE_GOLDEN set): wrote {path}, compared nothing; unset it to test")
    want = json.loads(path.read_text())
    for part in ("icicl", "sweep", "compression"):
        for key, value in want[part].items():
            if key in ("logits", "accuracy"):
                np.testing.assert_allclose(got[part][key], value, **TOL, err_msg=f"{part}.{key}")
            else:
                assert got[part][key] == value, f"{part}.{key}"
