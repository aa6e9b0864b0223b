"""Error diagnosis with anchor keys (docs/methods.md §3.9): predicted confusion on constructed keys, true
confusion against scikit-learn, the hook's q/k against q_proj/k_proj + a hand-written RoPE, the
whole run on a tiny model against independent computations, and the < 3 classes error."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from iclscope.methods.anchors.error_diagnosis import (
    ErrorDiagnosisSettings,
    check_classes,
    diagnose,
    key_features,
    label_probabilities,
    pair_correlations,
    predicted_confusion,
    query_directions,
    true_confusion,
)


def test_predicted_confusion_on_constructed_keys():
    feats = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # classes 0 and 1 share their key
    pred = predicted_confusion(feats)
    np.testing.assert_allclose(np.diag(pred), 1.0)
    assert pred[0, 1] == pred[1, 0] == 0.0  # identical keys: most confusable
    np.testing.assert_allclose(pred[0, 3], 1.0)  # the farthest pair is 1 ...
    np.testing.assert_allclose(pred[0, 2], 0.5)  # ... and the rest is relative to it: 5 / 10
    np.testing.assert_allclose(pred[2, 3], 0.5)
    off = pred[~np.eye(4, dtype=bool)]
    assert off.max() == 1.0 and off.min() == 0.0
    assert np.isnan(predicted_confusion(np.ones((3, 2)))[0, 1])  # all keys equal: no scale


def test_key_features_match_an_independent_svd():
    """σ_i · v_iᵀ k from scikit-learn's PCA equals the same from numpy's SVD of the centred queries
    (up to the sign of each direction, which no distance sees)."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 3.0
    keys = rng.normal(size=(4, 12))
    directions, spread = query_directions(queries, 5)
    _, s, vt = np.linalg.svd(queries - queries.mean(0), full_matrices=False)
    np.testing.assert_allclose(spread, s[:5], rtol=1e-8)
    ours = key_features(keys, directions, spread)
    ref = (keys @ vt[:5].T) * s[:5]
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), rtol=1e-7, atol=1e-9)
    ref_dist = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    expected = ref_dist / ref_dist.max()
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(predicted_confusion(ours), expected, rtol=1e-7)
    with pytest.raises(ValueError, match="n_components"):
        query_directions(queries[:3], 5)


def test_query_directions_are_the_exact_svd_at_a_real_models_size():
    """300 queries of dimension 576 (SmolLM2's default run): scikit-learn's default solver is
    randomized there, unseeded; the directions must be the exact SVD's, the same on every call."""
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(300, 576)) @ rng.normal(size=(576, 576))
    directions, spread = query_directions(queries, 10)
    _, s, vt = np.linalg.svd(queries - queries.mean(0), full_matrices=False)
    np.testing.assert_allclose(spread, s[:10], rtol=1e-9)
    np.testing.assert_allclose(np.abs(directions), np.abs(vt[:10]), atol=1e-9)
    again, _ = query_directions(queries, 10)
    np.testing.assert_array_equal(directions, again)


def test_true_confusion_matches_sklearn():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[gold] * rng.random((300, 1))
    probs = label_probabilities(logits)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    conf = true_confusion(probs, gold)
    for i in range(4):
        assert conf[i, i] == 1.0
        for j in range(4):
            if i == j:
                continue
            sel = (gold == i) | (gold == j)
            expected = roc_auc_score(gold[sel] == i, probs[sel, i] / (probs[sel, i] + probs[sel, j]))
            assert conf[i, j] == pytest.approx(expected)
    # a class absent from the gold labels leaves its pairs undefined
    assert np.isnan(true_confusion(probs[gold != 3], gold[gold != 3])[0, 3])


def test_pair_correlations_over_the_upper_triangle():
    pred = np.array([[1, 0.2, 0.9], [0.2, 1, 0.5], [0.9, 0.5, 1]])
    true = np.array([[1, 0.6, 0.95], [0.6, 1, 0.7], [0.95, 0.7, 1]])
    out = pair_correlations(pred, true)
    x, y = np.array([0.2, 0.9, 0.5]), np.array([0.6, 0.95, 0.7])
    assert out["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert out["spearman"] == pytest.approx(1.0) and out["pairs"] == 3


def test_fewer_than_three_classes_is_a_clear_error(prepared_tiny, tmp_path):
    from test_extract import prompts_file

    from iclscope.methods.anchors.error_diagnosis import run_error_diagnosis

    with pytest.raises(ValueError, match="at least 3 classes"):
        check_classes(2, "tweets")
    with pytest.raises(ValueError, match="at least 3 classes"):
        diagnose(np.zeros((5, 4)), np.zeros((2, 4)), np.full((5, 2), 0.5), np.zeros(5, dtype=int), 2)
    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=4)  # negative / positive
    with pytest.raises(ValueError, match=r"at least 3 classes, but dataset 'd' has 2"):
        run_error_diagnosis(ppath, tmp_path / "unused.h5", model_dir, spec, ErrorDiagnosisSettings(), dataset="d")
    with pytest.raises(ValueError, match="anchors.error_diagnosis.layer"):
        ErrorDiagnosisSettings(layer=0)
    with pytest.raises(ValueError, match="anchors.error_diagnosis.layer"):
        ErrorDiagnosisSettings(layer=9).resolve_layer(2)
    assert ErrorDiagnosisSettings().resolve_layer(48) == 33  # block 32 of 48, 1-based


def _rope(x, pos, theta):
    """Llama's rotary embedding by hand: x [B, H, T, dh], pos [B, T]."""
    import torch

    dh = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)
    ang = pos[:, None, :, None].float() * inv  # [B, 1, T, dh/2]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    rotated = torch.cat([-x[..., dh // 2 :], x[..., : dh // 2]], -1)
    return x * cos + rotated * sin


def test_hook_query_and_keys_equal_q_proj_k_proj_with_rope(tmp_path):
    """On a tiny GQA Llama (4 query heads, 2 KV heads), left-padded: the recorded last-position query
    and label-column keys equal q_proj / k_proj outputs (pre_rope), or those rotated by a hand-written RoPE at the real
    positions, the KV heads repeated to the query heads."""
    import torch

    from iclscope.core.config import ModelSpec
    from iclscope.methods.anchors.error_diagnosis import query_and_label_keys
    from iclscope.model.loading import load_model
    from iclscope.model.models import prepare_model
    from tiny_models import make_tiny_model

    source = make_tiny_model("llama", tmp_path / "llama")
    prepare_model(ModelSpec(name="tiny-llama", source="local", path=str(source)), tmp_path / "prepared")
    net, tok, _ = load_model(tmp_path / "prepared", attn_implementation="iclscope")
    cfg = net.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = cfg.hidden_size // H
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    assert Hkv < H
    batch = pd.DataFrame(
        {
            "input_ids": [[5, 17, 33, 8, 21, 40, 11, 9], [7, 30, 12, 21, 6]],
            "label_pos": [[1, 4], [3]],
            "n_tokens": [8, 5],
        }
    )
    layer = 1
    outs = {}
    attn = net.model.layers[layer].self_attn
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, a, o: outs.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, a, o: outs.__setitem__("k", o)),
    ]
    for qk in ("post_rope", "pre_rope"):  # pre_rope: the projections' outputs, no rotation
        q, k, used = query_and_label_keys(net, batch, layer, 2, tok.pad_token_id, qk)
        assert used == qk
        assert q.shape == (2, H * dh) and k.shape == (2, 2, H * dh)
        assert np.isnan(k[1, 1]).all()  # the second prompt has one demonstration
        for b, row in batch.iterrows():
            ids = torch.as_tensor([row.input_ids])  # unpadded, positions 0..T-1
            with torch.no_grad():
                net(input_ids=ids)
            T = ids.shape[1]
            pos = torch.arange(T)[None]
            rotate = (lambda x, pos=pos: _rope(x, pos, theta)) if qk == "post_rope" else (lambda x: x)
            q_ref = rotate(outs["q"].view(1, T, H, dh).transpose(1, 2))  # [1, H, T, dh]
            k_ref = rotate(outs["k"].view(1, T, Hkv, dh).transpose(1, 2))  # [1, Hkv, T, dh]
            np.testing.assert_allclose(q[b], q_ref[0, :, -1].reshape(-1).numpy(), rtol=1e-4, atol=1e-5)
            for slot, p in enumerate(row.label_pos):
                expected = k_ref[0, :, p].repeat_interleave(H // Hkv, dim=0).reshape(-1).numpy()
                np.testing.assert_allclose(k[b, slot], expected, rtol=1e-4, atol=1e-5)
    for h in hooks:
        h.remove()


def test_run_on_a_tiny_model_matches_independent_computations(prepared_tiny, tmp_path):
    """Three classes, two seeds: the table's true confusion equals sklearn on the activation file's
    label logits; the predicted confusion equals the pure functions on the hook's q/k; pooled rows."""
    from test_extract import WORDS

    from iclscope.core.config import DatasetSpec, PromptSpec
    from iclscope.core.store import open_activations
    from iclscope.core.tables import read_table, write_table
    from iclscope.methods.anchors.error_diagnosis import query_and_label_keys, run_error_diagnosis
    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.loading import load_model
    from iclscope.model.models import load_tokenizer
    from iclscope.model.prompts import build_prompts

    spec, model_dir = prepared_tiny
    tokenizer, manifest = load_tokenizer(model_dir)
    classes = ["negative", "neutral", "positive"]
    df = pd.DataFrame(
        [
            {
                "row_id": i,
                "text": f"I {WORDS[i % len(WORDS)]} it {i}",
                "label": classes[i % 3],
                "split": "train" if i < 9 else "test",
                "task": "t",
            }
            for i in range(9 + 36)
        ]
    )
    dspec = DatasetSpec(
        name="d3",
        source="local",
        path="x",
        classes={c: f" {c}" for c in classes},
        prompts=PromptSpec(template="Tweet: {text}\nSentiment:{label}", seeds=(1, 2), n_test=12),
    )
    table, meta = build_prompts(df, dspec, tokenizer, manifest["context_length"])
    ppath, apath = tmp_path / "prompts.parquet", tmp_path / "act.h5"
    write_table(table, ppath, meta)
    extract(ppath, model_dir, apath, spec, ExtractSettings(store_dtype="float32", max_new_tokens=0))
    settings = ErrorDiagnosisSettings(layer=2, n_components=3)
    out, info = run_error_diagnosis(ppath, apath, model_dir, spec, settings, dataset="d3")
    assert info["layer"] == 2 and info["classes"] == classes and (out.layer == 2).all()

    with open_activations(apath) as f:
        logits = f["logits/label"][()]
    net, tok, _ = load_model(model_dir, attn_implementation="iclscope")
    for seed in (1, 2, None):
        rows = table[(table.split == "test") & ((table.seed == seed) if seed else True)]
        got = out[out.seed.isna()] if seed is None else out[out.seed == seed]
        true = got[got.metric == "true_confusion"].set_index("variant")["value"]
        probs = label_probabilities(logits[rows.index])
        g = rows["gold"].to_numpy()
        sel = (g == 0) | (g == 2)
        assert true["negative|positive"] == pytest.approx(
            roc_auc_score(g[sel] == 0, probs[sel, 0] / (probs[sel, 0] + probs[sel, 2]))
        )
        assert true["neutral|neutral"] == 1.0 and true["positive|neutral"] == true["neutral|positive"]
        if seed is None:
            continue
        q, k, _ = query_and_label_keys(net, rows, 1, 2, tok.pad_token_id)
        lc = np.array(rows["label_class"].iloc[0])
        keys = k[0][np.argsort(lc)]  # one demonstration per class, identical for every prompt of a seed
        np.testing.assert_allclose(k[-1][np.argsort(lc)], keys, rtol=1e-4, atol=1e-5)
        d, s = query_directions(q, 3)
        pred = predicted_confusion(key_features(keys, d, s))
        table_pred = got[got.metric == "predicted_confusion"].set_index("variant")["value"]
        for i, ci in enumerate(classes):
            for j, cj in enumerate(classes):
                assert table_pred[f"{ci}|{cj}"] == pytest.approx(pred[i, j], rel=1e-3, abs=1e-4)
        corr = got.set_index("metric")["value"]
        assert corr["confusion_pairs"] == 3
    plot_path = tmp_path / "fig.png"
    from iclscope.report.plots import plot_error_diagnosis

    plot_error_diagnosis(read_table_roundtrip(out, tmp_path, write_table, read_table), plot_path)
    assert plot_path.stat().st_size > 0


def read_table_roundtrip(df, tmp_path, write_table, read_table):
    path = tmp_path / "ed.parquet"
    write_table(df, path)
    return read_table(path)
