"""The batched paths of the anchor stages equal batch 1 (issue 30): on the tiny Llama and GPT-2 models,
fp32, left-padded prompts of different lengths.

* saliency: one forward and backward pass over a padded batch, the loss summed over prompts, gives each
  prompt the saliency matrices of its own batch-1 pass (`saliency_matrices`), and run_saliency's rows do
  not depend on the batch size;
* anchor compression: Hidden_random's draws continued in one batch on their pruned caches give the
  logits of each draw continued alone;
* isolation: every prompt under every condition in one batch gives each one's logits run alone."""

import dataclasses

import numpy as np
import pytest
from test_extract import prompts_file

from iclscope.methods.anchors.prompts import anchor_prompts
from iclscope.methods.anchors.saliency import run_saliency, saliency_batch, saliency_matrices
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model

TOL = {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture
def prompts(prepared_tiny, tmp_path):
    path, table = prompts_file(prepared_tiny, tmp_path, n_test=12, n_train=2)
    assert table[table.split == "test"]["input_ids"].map(len).nunique() > 1  # left padding happens
    return path


def test_batched_saliency_equals_batch_1(prepared_tiny, prompts):
    spec, model_dir = prepared_tiny
    test, meta = anchor_prompts(prompts)
    net, tok, manifest = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    L, label_ids = manifest["n_layers"], meta["label_token_ids"]
    recs = list(test.head(5).itertuples())
    batched = saliency_batch(
        net, [list(r.input_ids) for r in recs], [int(r.gold) for r in recs], label_ids, L, tok.pad_token_id
    )
    for r, mine in zip(recs, batched, strict=True):
        alone = saliency_matrices(net, r.input_ids, int(r.gold), label_ids, L)
        assert mine.shape == alone.shape == (L, len(r.input_ids), len(r.input_ids))
        assert alone.max() > 0
        np.testing.assert_allclose(mine, alone, **TOL)


def test_saliency_rows_do_not_depend_on_the_batch(prepared_tiny, prompts):
    spec, model_dir = prepared_tiny
    runs = [
        run_saliency(
            prompts, model_dir, dataclasses.replace(spec, batch_size=bs, max_batch_tokens=1 << 20), 6, dataset="d"
        )
        for bs in (1, 16)
    ]
    (rows_1, table_1), (rows_16, table_16) = runs
    assert rows_16[["prompt_id", "seed", "layer"]].equals(rows_1[["prompt_id", "seed", "layer"]])
    np.testing.assert_allclose(rows_16[["s_wp", "s_pq", "s_ww"]], rows_1[["s_wp", "s_pq", "s_ww"]], **TOL)
    np.testing.assert_allclose(table_16["value"].to_numpy(float), table_1["value"].to_numpy(float), **TOL)


def test_hidden_random_draws_in_one_batch_equal_each_draw_alone(prepared_tiny, tmp_path):
    from test_anchor_compression import three_demo_prompts

    from iclscope.methods.anchors.compression import (
        continue_on_pruned,
        demo_end,
        random_kept_positions,
    )
    from iclscope.model.scoring import as_cache, continue_on_cache, prefix_kv, select_kv

    spec, model_dir = prepared_tiny
    _, table = three_demo_prompts(prepared_tiny, tmp_path)
    net, _, _ = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    rec = table.iloc[0].to_dict()
    ids, split = [int(t) for t in rec["input_ids"]], demo_end(rec)
    kv = prefix_kv(net, ids[:split])
    rng = np.random.default_rng(0)
    sets = [random_kept_positions(rec, rng)[0] for _ in range(7)]
    assert len({tuple(k) for k in sets}) > 1
    # batches of 3 rows (the last one short) and a token budget that allows 2 rows a pass
    for batch_size, budget in ((3, 1 << 20), (16, 2 * (len(sets[0]) + len(ids) - split))):
        batched = continue_on_pruned(net, kv, sets, ids[split:], split, batch_size, budget)
        for kept, mine in zip(sets, batched, strict=True):
            alone = continue_on_cache(net, as_cache(select_kv(kv, kept)), ids[split:], split)[-1]
            np.testing.assert_allclose(mine.numpy(), alone.numpy(), **TOL)


def test_anchor_compression_rows_do_not_depend_on_the_batch(prepared_tiny, tmp_path):
    from test_anchor_compression import three_demo_prompts

    from iclscope.methods.anchors.compression import AnchorCompressionSettings, run_anchor_compression

    spec, model_dir = prepared_tiny
    path, _ = three_demo_prompts(prepared_tiny, tmp_path, n_test=4)
    settings = AnchorCompressionSettings(
        prompts_per_seed=4, n_random_draws=5, timing_repeats=1, timing_warmup=0, timed_per_seed=1
    )
    runs = [
        run_anchor_compression(
            path,
            model_dir,
            dataclasses.replace(spec, batch_size=bs, max_batch_tokens=1 << 20),
            settings=settings,
            dataset="d3",
        )[2]
        for bs in (1, 16)
    ]
    key = ["seed", "prompt_id", "arm", "draw"]
    one, many = (r.sort_values(key).reset_index(drop=True) for r in runs)
    assert many[key + ["gold", "tokens", "context_tokens"]].equals(one[key + ["gold", "tokens", "context_tokens"]])
    assert many["pred"].tolist() == one["pred"].tolist()
    assert (many["top_ids"].map(tuple) == one["top_ids"].map(tuple)).mean() > 0.99  # ties at the k-th may swap
    assert many.seconds.notna().sum() == one.seconds.notna().sum() == 2 * 4  # two seeds x one timed prompt x 4 arms


def test_untimed_arms_batched_across_prompts_equal_batch_1(prepared_tiny, tmp_path):
    from test_anchor_compression import three_demo_prompts

    from iclscope.methods.anchors.compression import (
        demo_end,
        kept_positions,
        text_anchor_ids,
        untimed_arms,
        zero_shot_ids,
    )
    from iclscope.model.scoring import as_cache, continue_on_cache, last_logits, prefix_kv, select_kv

    spec, model_dir = prepared_tiny
    _, table = three_demo_prompts(prepared_tiny, tmp_path, n_test=5)
    recs = [r._asdict() for r in table[table.split == "test"].itertuples(index=False)]
    assert len({len(r["input_ids"]) for r in recs}) > 1 and len({int(r["seed"]) for r in recs}) == 2
    net, tok, _ = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    kv_of = {}
    for r in recs:
        key = tuple(int(t) for t in r["input_ids"][: demo_end(r)])
        kv_of.setdefault(key, prefix_kv(net, key))
    batched = untimed_arms(net, recs, kv_of, tok.pad_token_id, batch_size=4, max_batch_tokens=1 << 20)
    worst = 0.0
    for r, mine in zip(recs, batched, strict=True):
        ids, split = [int(t) for t in r["input_ids"]], demo_end(r)
        alone = {
            "full_icl": last_logits(net, ids)[-1],
            "text_anchor": last_logits(net, text_anchor_ids(r))[-1],
            "zero_shot": last_logits(net, zero_shot_ids(r))[-1],
            "hidden_anchor": continue_on_cache(
                net, as_cache(select_kv(kv_of[tuple(ids[:split])], kept_positions(r))), ids[split:], split
            )[-1],
        }
        assert set(mine) == set(alone)
        for arm in alone:
            np.testing.assert_allclose(mine[arm].numpy(), alone[arm].numpy(), **TOL, err_msg=arm)
            worst = max(worst, float((mine[arm] - alone[arm]).abs().max()))
    print(f"untimed arms batched vs batch 1: max abs diff {worst:.2e}")


def test_isolation_batched_across_prompts_and_conditions_equals_batch_1(prepared_tiny, prompts):
    """Isolation's work items (a prompt under one condition: its own isolated rows and layers) in one
    left-padded batch give each item's logits run alone, unpadded, with the plain isolation edit; the
    random control isolates the same rows whatever the batch (each prompt's own generator)."""
    import torch

    from iclscope.methods.anchors.isolation import (
        condition_layers,
        isolated_rows,
        isolation_edit,
        isolation_readouts,
        run_isolation,
    )
    from iclscope.model.capture import Recorder, no_positions, recording

    spec, model_dir = prepared_tiny
    test, meta = anchor_prompts(prompts)
    net, tok, manifest = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    L, label_ids = manifest["n_layers"], list(meta["label_token_ids"])
    items = [
        {
            "input_ids": list(r.input_ids),
            "label_ids": label_ids,
            "rows": isolated_rows(r.n_tokens, r.label_pos, condition_layers(side, k, L), kind, int(r.prompt_id)),
        }
        for side, k, kind in (
            ("none", 0, "label"),
            ("first", 1, "label"),
            ("last", 1, "random"),
            ("first", 2, "random"),
        )
        for r in test.sort_values("n_tokens", kind="stable").iloc[[0, -1, 1, -2]].itertuples()
    ]
    assert all(len(it["rows"]) for it in items[4:]) and len({len(it["input_ids"]) for it in items}) > 1
    logits, top = isolation_readouts(net, L, tok.pad_token_id, items, 16, 1 << 20, 5)
    for i, item in enumerate(items):
        T = len(item["input_ids"])
        rows = {layer: torch.zeros(1, T, dtype=torch.bool) for layer in item["rows"]}
        for layer, r in item["rows"].items():
            rows[layer][0, r] = True
        edit = lambda layer, w, rows=rows: isolation_edit({layer}, rows[layer])(layer, w) if layer in rows else w  # noqa: E731
        ids = torch.tensor([item["input_ids"]])
        with torch.inference_mode(), recording(net, Recorder(L, no_positions(1, ids.device), (), edit=edit)):
            alone = net(input_ids=ids, logits_to_keep=1).logits[0, -1]
        np.testing.assert_allclose(logits[i], alone[label_ids].numpy(), **TOL)
        np.testing.assert_array_equal(top[i], alone.topk(5).indices.numpy())
    assert not np.allclose(logits[4:8], logits[:4])  # the edit changes something
    tables = [
        run_isolation(
            prompts,
            model_dir,
            dataclasses.replace(spec, batch_size=bs, max_batch_tokens=1 << 20),
            n_per_seed=3,
            ks=(1, 2),
            dataset="d",
        )[0]
        for bs in (1, 16)
    ]
    assert tables[0].equals(tables[1])
