"""Activation patching of task states: leave-one-out task means, the own-state no-op, layer choice,
and a run on a tiny model over real prompts and activations."""

import numpy as np
import pandas as pd
import pytest
import torch

from iclscope.methods.decodability.patching import choose_layer, patched_generate, task_states


def test_task_states_are_leave_one_out_means():
    states = np.array([[1.0, 0], [3, 0], [5, 0], [0, 2], [0, 4]])
    tasks = np.array(["a", "a", "a", "b", "b"])
    own, means = task_states(states, tasks)
    np.testing.assert_allclose(own, [[4, 0], [3, 0], [2, 0], [0, 4], [0, 2]])
    np.testing.assert_allclose(means["a"], [3, 0])
    own1, _ = task_states(states[:4], tasks[:4])
    assert np.isnan(own1[3]).all()  # a task with one prompt has no leave-one-out mean


def test_patching_the_query_with_its_own_state_is_a_no_op(prepared_tiny):
    from iclscope.model.capture import left_pad, residual_stream
    from iclscope.model.loading import load_model

    _, model_dir = prepared_tiny
    net, tok, manifest = load_model(model_dir, attn_implementation="iclscope")
    L = manifest["n_layers"]
    prompts = [[5, 17, 33, 8, 21], [40, 11, 9, 30, 12, 7, 3], [2, 4, 6]]
    ids, mask, pos = left_pad(prompts, tok.pad_token_id, "cpu")
    with torch.inference_mode():
        _, hidden = residual_stream(net, input_ids=ids, attention_mask=mask, position_ids=pos)
    layer = L // 2
    own = hidden[layer][:, -1].float()  # [B, d] the query state at the input of block `layer`
    base_logits, base_text = patched_generate(net, tok, L, prompts, layer, None, "replace", 4)
    same_logits, same_text = patched_generate(net, tok, L, prompts, layer, own, "replace", 4)
    np.testing.assert_allclose(same_logits, base_logits, atol=1e-4, rtol=1e-4)
    assert same_text == base_text
    zero_logits, _ = patched_generate(net, tok, L, prompts, layer, torch.zeros_like(own), "add", 4)
    np.testing.assert_allclose(zero_logits, base_logits, atol=1e-4, rtol=1e-4)
    other = own.roll(1, dims=0)
    other_logits, _ = patched_generate(net, tok, L, prompts, layer, other, "replace", 4)
    assert np.abs(other_logits - base_logits).max() > 1e-3
    skipped = other.clone()
    skipped[:] = float("nan")  # NaN rows are left alone
    nan_logits, _ = patched_generate(net, tok, L, prompts, layer, skipped, "replace", 4)
    np.testing.assert_allclose(nan_logits, base_logits, atol=1e-4, rtol=1e-4)


def test_layer_is_the_decodability_peak_inside_the_blocks():
    table = pd.DataFrame(
        {
            "metric": "decodability_euclidean",
            "task": "all",
            "shots": 1,
            "layer": range(7),
            "value": [0.1, 0.3, 0.9, 0.5, 0.4, 0.3, 0.2],
        }
    )
    assert choose_layer(table, 1, 6, None) == 2
    assert choose_layer(table, 1, 6, 6) == 5 and choose_layer(table, 1, 6, 0) == 1
    with pytest.raises(ValueError, match="outside"):
        choose_layer(table, 1, 6, 9)
    with pytest.raises(ValueError, match="shots"):
        choose_layer(table, 4, 6, None)


def test_patching_run_on_tiny_activations(prepared_tiny, tmp_path):
    from test_extract import prompts_file

    from iclscope.core.tables import read_meta, read_table, write_table
    from iclscope.methods.decodability.patching import run_patching
    from iclscope.methods.icl import predictions
    from iclscope.model.extract import ExtractSettings, extract

    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, "generation")
    table = read_table(ppath)
    # the words fixture has no Null task: relabel one task as Null for the negative condition
    table["task"] = table["task"].replace({"first": "Null"})
    write_table(table, ppath, read_meta(ppath))
    h5 = tmp_path / "act.h5"
    extract(ppath, model_dir, h5, spec, ExtractSettings(store_dtype="float32", max_new_tokens=3))
    result, per_prompt, meta = run_patching(
        ppath, h5, None, model_dir, spec, layer=1, shots=None, mode="replace", max_new_tokens=3, dataset="d"
    )
    assert meta["shots"] == 1 and meta["layer"] == 1 and meta["prompts"] == len(per_prompt) > 0
    acc = result[result.metric == "accuracy"].set_index(["task", "arm"])["value"]
    assert set(acc.index) == {
        ("upper", "none"),
        ("upper", "positive"),
        ("upper", "negative"),
        ("Null", "none"),
        ("Null", "positive"),
    }
    delta = result[result.metric == "delta_accuracy"].set_index(["task", "arm"])["value"]
    assert delta[("upper", "positive")] == pytest.approx(acc[("upper", "positive")] - acc[("upper", "none")])
    # the unpatched arm reproduces the extraction's own greedy answers
    stored, _ = predictions(h5)
    stored = stored[stored.shots == 1].set_index("prompt_id")["pred"]
    assert (per_prompt.set_index("prompt_id")["pred_none"] == stored.loc[per_prompt["prompt_id"]]).all()
