"""Batch size is not a rerun key (iclscope/core/jobs.py passes it as a resource), so it must not change
a number: on the tiny Llama and GPT-2 models, left-padded batches of 1, 3 and 16 prompts give the
same activations (residual stream, query-to-label attention, label logits) and the same tables of
every model stage that batches (extraction, isolation, re-weighting, IC-ICL) within fp32 tolerance."""

import dataclasses

import h5py
import numpy as np
import pytest
from test_extract import prompts_file
from test_icicl_tsft import SPEC, frame, identity_space

from iclscope.core.store import label_states
from iclscope.methods.anchors.isolation import run_isolation
from iclscope.methods.anchors.reweighting import run_reweighting
from iclscope.methods.taskspace.icicl.evaluate import evaluate_icicl
from iclscope.methods.taskspace.icicl.settings import ICICLSettings
from iclscope.model.extract import ExtractSettings, extract

BATCHES = (1, 3, 16)
TOL = {"rtol": 1e-4, "atol": 1e-4}
ARRAYS = ("resid/query", "resid/label", "attn/query_to_label", "logits/label", "logits/topk_values")


def at_batch(spec, batch_size):
    return dataclasses.replace(spec, batch_size=batch_size, max_batch_tokens=1 << 20)


@pytest.fixture
def prompts(prepared_tiny, tmp_path):
    path, table = prompts_file(prepared_tiny, tmp_path, n_test=20, n_train=2)
    lengths = table["input_ids"].map(len)
    assert lengths.nunique() > 1  # prompts of different lengths: left padding happens
    return path


def test_activations_do_not_depend_on_the_batch(prepared_tiny, prompts, tmp_path):
    spec, model_dir = prepared_tiny
    arrays = {}
    for bs in BATCHES:
        out = tmp_path / f"act{bs}.h5"
        extract(prompts, model_dir, out, at_batch(spec, bs), ExtractSettings(store_dtype="float32", max_new_tokens=0))
        with h5py.File(out) as f:
            arrays[bs] = {name: (label_states(f) if name == "resid/label" else f[name])[:] for name in ARRAYS}
            ids = f["logits/topk_ids"][()]
        if bs == 1:
            ids_1 = ids
        else:
            assert (ids == ids_1).mean() > 0.99  # ties at the k-th logit may swap
    for bs in BATCHES[1:]:
        for name in ARRAYS:
            np.testing.assert_allclose(arrays[bs][name], arrays[1][name], **TOL, err_msg=f"{name} at batch {bs}")


def test_isolation_and_reweighting_tables_do_not_depend_on_the_batch(prepared_tiny, prompts):
    spec, model_dir = prepared_tiny
    tables = {}
    for bs in BATCHES:
        iso, _, _ = run_isolation(prompts, model_dir, at_batch(spec, bs), n_per_seed=10, ks=(1,), dataset="d")
        rew, _, _ = run_reweighting(
            prompts, model_dir, at_batch(spec, bs), aux_per_class=1, epochs=1, lr=0.1, n_test_per_seed=None, dataset="d"
        )
        tables[bs] = (iso, rew)
    for bs in BATCHES[1:]:
        for mine, base in zip(tables[bs], tables[1], strict=True):
            assert mine.drop(columns="value").equals(base.drop(columns="value"))
            np.testing.assert_allclose(mine["value"].to_numpy(float), base["value"].to_numpy(float), **TOL)


def test_icicl_arms_do_not_depend_on_the_batch(prepared_tiny):
    spec, model_dir = prepared_tiny
    settings = ICICLSettings(
        k=2,
        pool_size=12,
        n_test=8,
        n_timed=2,
        inject_layer=1,
        embed_layer=1,
        warmup=0,
        repeats=1,
        random_draws=1,
        word_k=3,
        task_space="class_mean",
        n_boot=0,
    )
    logits = {}
    for bs in BATCHES:
        spaces = {"class_mean": {1: identity_space(32, 1)}}
        per_example, _, _ = evaluate_icicl(frame(), SPEC, model_dir, at_batch(spec, bs), spaces, settings)
        per_example = per_example.sort_values(["arm", "test_row", "draw"], na_position="first").reset_index(drop=True)
        logits[bs] = per_example
    for bs in BATCHES[1:]:
        assert logits[bs]["arm"].tolist() == logits[1]["arm"].tolist()
        assert logits[bs]["demo_rows"].map(tuple).tolist() == logits[1]["demo_rows"].map(tuple).tolist()
        np.testing.assert_allclose(
            logits[bs][["logit_negative", "logit_positive"]].to_numpy(),
            logits[1][["logit_negative", "logit_positive"]].to_numpy(),
            **TOL,
        )
