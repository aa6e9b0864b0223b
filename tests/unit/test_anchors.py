"""AUCROC_l on constructed inputs matches scikit-learn; R_l; per-class attention sums."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from iclscope.methods.anchors.measures import aucroc, class_attention, cumulative_share


def test_class_attention_sums_heads_and_same_class_demos():
    attn = np.zeros((1, 2, 3, 3))  # N=1, L=2, H=3, K=3 demos of classes 0, 1, 0
    attn[0, 0, :, 0] = 0.1
    attn[0, 0, :, 1] = 0.2
    attn[0, 0, :, 2] = 0.05
    attn[0, 1, 0, 2] = np.nan  # a missing demonstration contributes nothing
    out = class_attention(attn, np.array([[0, 1, 0]]), 2)
    np.testing.assert_allclose(out[0, 0], [0.45, 0.6])
    np.testing.assert_allclose(out[0, 1], [0.0, 0.0])


def test_binary_and_multiclass_match_sklearn():
    rng = np.random.default_rng(0)
    feats = rng.random((200, 2))
    target = (feats[:, 1] + 0.3 * rng.random(200) > 0.6).astype(int)
    assert aucroc(feats, target) == pytest.approx(roc_auc_score(target, feats[:, 1]))
    feats3 = rng.random((300, 3))
    target3 = rng.integers(0, 3, 300)
    norm = feats3 / feats3.sum(1, keepdims=True)
    assert aucroc(feats3, target3) == pytest.approx(roc_auc_score(target3, norm, multi_class="ovo"))
    # a class that is never predicted is dropped: 3 features, predictions only of classes 0 and 2,
    # scored by the raw attention of class 2 (the reference analysis does not renormalise the pair)
    target2 = np.where(target3 == 1, 0, target3)
    assert aucroc(feats3, target2) == pytest.approx(roc_auc_score(target2 == 2, feats3[:, 2]))
    assert np.isnan(aucroc(feats, np.zeros(200, dtype=int)))


def pair_count_auc(score, positive) -> float:
    """AUC as the share of (positive, negative) pairs ranked the right way, ties half."""
    pos, neg = score[positive], score[~positive]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def test_two_of_three_classes_predicted_scores_the_raw_attention_by_hand():
    feats = np.array(
        [
            [0.10, 0.0, 0.20],  # predicted 2: raw 0.20, renormalised 0.667
            [0.50, 0.0, 0.30],  # predicted 2: raw 0.30, renormalised 0.375
            [0.05, 0.0, 0.25],  # predicted 0: raw 0.25, renormalised 0.833
            [0.90, 0.0, 0.10],
        ]
    )  # predicted 0: raw 0.10, renormalised 0.100
    target = np.array([2, 2, 0, 0])
    assert aucroc(feats, target) == pytest.approx(0.75)  # pairs: 0.2<0.25, 0.2>0.1, 0.3>0.25, 0.3>0.1
    assert pair_count_auc(feats[:, 2], target == 2) == 0.75
    renormalised = feats[:, 2] / feats[:, [0, 2]].sum(1)
    assert pair_count_auc(renormalised, target == 2) == 0.5  # what the renormalised pair would give


def test_cumulative_share():
    share = cumulative_share(np.array([0.5, 0.6, 0.9, 0.5]))
    np.testing.assert_allclose(share, [0.0, 0.2, 1.0, 1.0])


PER_SEED_AUC = np.array(
    [
        [0.50, 0.90, 0.90],  # gains 0, .4, .4: own share 0, .5, 1
        [0.60, 0.45, 0.50],  # gains .1, -.05, 0: own total .05, share 2, 1, 1
        [np.nan] * 3,
    ]
)  # a seed whose prompts were all predicted as one class


def test_r_l_is_the_share_of_the_seed_mean_auc_by_hand():
    # mean AUC over the two scored seeds: .55, .675, .70 -> gains .05, .175, .20, total .425
    expected = np.array([0.05, 0.225, 0.425]) / 0.425
    np.testing.assert_allclose(cumulative_share(PER_SEED_AUC), expected)
    mean_of_ratios = np.mean([cumulative_share(a) for a in PER_SEED_AUC[:2]], axis=0)
    np.testing.assert_allclose(mean_of_ratios, [1.0, 0.75, 1.0])  # the per-seed definition, far off
    assert np.isnan(cumulative_share(np.full((2, 3), np.nan))).all()


def test_aucroc_table_gives_per_seed_aucroc_and_one_r_l_from_the_seed_mean(tmp_path):
    import h5py

    from iclscope.methods.anchors.aucroc import aucroc_table

    rng = np.random.default_rng(3)
    n, L, H = 40, 3, 2
    seed = np.repeat([1, 2], n // 2)
    pred = rng.integers(0, 2, n)
    attn = rng.random((n, L, H, 2)).astype(np.float32)  # demo 0 of class 0, demo 1 of class 1
    attn[:, 2, :, 1] += 0.5 * pred[:, None]  # the last layer's attention to class 1 follows the prediction
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = True
        f.attrs["classes"] = ["neg", "pos"]
        f["prompts/split"] = np.array(["test"] * n, dtype=h5py.string_dtype())
        f["prompts/seed"] = seed
        f["prompts/label_class"] = np.tile([0, 1], (n, 1))
        f["attn/query_to_label"] = attn
        f["logits/label"] = np.eye(2, dtype=np.float32)[pred]
    table = aucroc_table(path, model="m", dataset="d")
    auc = table[table.metric == "aucroc"].pivot(index="seed", columns="layer", values="value")
    feats = attn.sum(2)  # [N, L, C]
    for s in (1, 2):
        for layer in range(L):
            sel = seed == s
            assert auc.loc[s, layer + 1] == pytest.approx(pair_count_auc(feats[sel, layer, 1], pred[sel] == 1))
    share = table[table.metric == "aucroc_cumulative_share"].sort_values("layer")
    assert share["seed"].isna().all() and list(share["layer"]) == [1, 2, 3]
    gain = auc.to_numpy().mean(0) - 0.5
    np.testing.assert_allclose(share["value"], np.cumsum(gain) / gain.sum())


def test_ones_multiplier_saliency_equals_attention_times_its_gradient(prepared_tiny):
    """The saliency from the ones-multiplier edit equals A ⊙ ∂L/∂A from autograd on HF's eager attention."""
    import torch
    import torch.nn.functional as F

    from iclscope.methods.anchors.saliency import saliency_matrices
    from iclscope.model.loading import load_model

    _, model_dir = prepared_tiny
    ours, _, manifest = load_model(model_dir, attn_implementation="iclscope")
    ref, _, _ = load_model(model_dir, attn_implementation="eager")
    ids, label_ids, gold = [5, 17, 33, 8, 21, 40, 11, 9], [21, 40], 1
    sal = saliency_matrices(ours, ids, gold, label_ids, manifest["n_layers"])
    out = ref(torch.as_tensor([ids]), output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    F.cross_entropy(out.logits[0, -1, label_ids][None], torch.as_tensor([gold])).backward()
    expected = torch.stack([(a * a.grad)[0].sum(0).abs() for a in out.attentions]).detach().numpy()
    assert sal.shape == (manifest["n_layers"], len(ids), len(ids))
    np.testing.assert_allclose(sal, expected, rtol=1e-4, atol=1e-7)


def test_saliency_flow_index_sets():
    from iclscope.methods.anchors.measures import relative_flows, saliency_flows

    T = 6
    sal = np.arange(T * T, dtype=float).reshape(1, T, T)  # value = 6 i + j
    flows = saliency_flows(sal, label_pos=[2], query_pos=5)
    assert flows["s_wp"][0] == pytest.approx(np.mean([12, 13]))  # row 2, columns 0-1
    assert flows["s_pq"][0] == pytest.approx(32)  # (5, 2)
    others = [6 * i + j for i in range(T) for j in range(i) if (i, j) not in [(2, 0), (2, 1), (5, 2)]]
    assert flows["s_ww"][0] == pytest.approx(np.mean(others))
    rel = relative_flows(flows)
    assert sum(v[0] for v in rel.values()) == pytest.approx(1.0)


def test_isolated_rows_attend_only_to_themselves_and_k0_changes_nothing():
    import torch

    from iclscope.methods.anchors.isolation import isolation_edit

    w = torch.rand(2, 3, 6, 6).tril()
    w = w / w.sum(-1, keepdim=True)
    rows = torch.zeros(2, 6, dtype=torch.bool)
    rows[0, 3] = True
    out = isolation_edit({1}, rows)(1, w)
    torch.testing.assert_close(out[0, :, 3], torch.eye(6)[3].expand(3, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3] = False
    torch.testing.assert_close(out[:, :, mask[0]][0], w[:, :, mask[0]][0])  # other rows untouched
    torch.testing.assert_close(isolation_edit({1}, rows)(0, w), w)  # a layer outside the window
    torch.testing.assert_close(isolation_edit(set(), rows)(1, w), w)  # k = 0


def test_isolation_run_on_a_tiny_model(prepared_tiny, tmp_path):
    from test_extract import prompts_file

    from iclscope.methods.anchors.isolation import run_isolation
    from iclscope.methods.anchors.measures import jaccard_topk

    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=8)
    table, meta, base = run_isolation(ppath, model_dir, spec, n_per_seed=4, ks=(1, 2), dataset="d")
    assert len(table) == 2 * 2 * 2 * 2 and meta["prompts"] == 8
    assert table["value"].between(0, 1).all()
    assert jaccard_topk(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]))[0] == pytest.approx(0.5)


def test_reweighting_scales_only_the_query_row_label_columns_without_renormalising():
    import torch

    from iclscope.methods.anchors.reweighting import reweighting_edit

    w = torch.rand(2, 3, 5, 7).softmax(-1)  # [B, H, Tq, Tk], Tq < Tk as with a KV cache
    beta = torch.randn(4, 3, 2)  # [L, H, K]
    label = torch.tensor([[1, 4], [2, -1]])  # the second prompt has one demonstration
    out = reweighting_edit(beta, label)(2, w)
    expected = w.clone()
    expected[0, :, -1, 1] *= beta[2, :, 0].exp()
    expected[0, :, -1, 4] *= beta[2, :, 1].exp()
    expected[1, :, -1, 2] *= beta[2, :, 0].exp()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(reweighting_edit(torch.zeros(4, 3, 2), label)(2, w), w)


def test_reweighting_with_beta_zero_reproduces_vanilla_icl(prepared_tiny, tmp_path):
    """β = 0 through the eager edit path equals the plain (SDPA) forward, batched and left-padded."""
    import torch
    from test_extract import prompts_file

    from iclscope.methods.anchors.prompts import anchor_prompts
    from iclscope.methods.anchors.reweighting import reweighted_label_logits
    from iclscope.model.capture import left_pad
    from iclscope.model.loading import load_model

    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=8)
    test, meta = anchor_prompts(ppath)
    net, tok, manifest = load_model(model_dir, attn_implementation="iclscope")
    L, H = manifest["n_layers"], manifest["n_heads"]
    K = int(test["label_pos"].map(len).max())
    with torch.inference_mode():
        ours = reweighted_label_logits(net, test, meta["label_token_ids"], torch.zeros(L, H, K), L, tok.pad_token_id)
        ids, mask, pos = left_pad(list(test["input_ids"]), tok.pad_token_id, "cpu")
        plain = net(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1, meta["label_token_ids"]]
        moved = reweighted_label_logits(
            net, test, meta["label_token_ids"], torch.full((L, H, K), 2.0), L, tok.pad_token_id
        )
    torch.testing.assert_close(ours, plain.float(), atol=1e-4, rtol=1e-4)
    assert (moved - plain).abs().max() > 1e-3  # the edit reaches the output


def test_reweighting_training_lowers_the_aux_loss_and_scores_both_arms(prepared_tiny, tmp_path):
    """Training lowers the auxiliary loss; both arms are scored on the same prompts; too few
    auxiliary prompts is an error that names the key to raise."""
    from test_extract import prompts_file

    from iclscope.methods.anchors.reweighting import run_reweighting

    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=8, n_train=4)
    table, betas, info = run_reweighting(
        ppath, model_dir, spec, aux_per_class=2, epochs=4, lr=0.1, n_test_per_seed=None, dataset="d"
    )
    for seed, losses in info["train_loss_per_epoch"].items():
        assert losses[-1] < losses[0], (seed, losses)
        assert betas[seed].shape == (spec_layers(model_dir), spec_heads(model_dir), 2)
        assert np.abs(betas[seed]).max() > 0
    acc = table[table.metric == "accuracy"].pivot(index="seed", columns="arm", values="value")
    assert list(acc.columns) == ["reweighted", "vanilla"] and acc.notna().all().all()
    assert info["test_prompts"] == 8
    gain = table[table.arm == "reweighted-vanilla"]
    per_seed = gain[gain.metric == "gain"].dropna(subset=["seed"]).set_index("seed")["value"]
    np.testing.assert_allclose(per_seed.sort_index(), (acc["reweighted"] - acc["vanilla"]).sort_index(), atol=1e-12)
    pooled = gain[gain.seed.isna()].set_index("metric")["value"]
    assert pooled["gain"] == pytest.approx((acc["reweighted"] - acc["vanilla"]).mean())
    assert pooled["n_paired"] == 8 and 0 <= pooled["p_value"] <= pooled["p_holm"] <= 1
    for seed, c in info["correct"].items():  # per-prompt correctness in the metadata (pooled claims)
        assert np.mean(c["vanilla"]) == pytest.approx(acc.loc[int(seed), "vanilla"])
        assert np.mean(c["reweighted"]) == pytest.approx(acc.loc[int(seed), "reweighted"])
    from iclscope.report.plots import plot_reweighting

    plot_reweighting(table, tmp_path / "reweighting.png")  # the pooled gain goes into the title
    assert (tmp_path / "reweighting.png").stat().st_size > 0
    with pytest.raises(ValueError, match="n_train"):
        run_reweighting(ppath, model_dir, spec, aux_per_class=3, epochs=1, lr=0.1, n_test_per_seed=2, dataset="d")


def test_reweighting_gain_rows_are_paired_differences_per_seed_and_pooled():
    from iclscope.core.stats import paired_difference
    from iclscope.methods.anchors.reweighting import reweighting_gain_rows

    rng = np.random.default_rng(0)
    correct = {s: (rng.random(40) < 0.55, rng.random(40) < 0.75) for s in (42, 43, 44)}
    rows = pd.DataFrame(reweighting_gain_rows(correct, n_boot=300))
    assert set(rows["arm"]) == {"reweighted-vanilla"}
    for seed, (vanilla, reweighted) in correct.items():
        one = rows[rows.seed == seed].set_index("metric")["value"]
        direct = paired_difference(reweighted, vanilla, n_boot=300, seed=0)
        assert (one["gain"], one["gain_lo"], one["gain_hi"], one["p_value"]) == pytest.approx(
            (direct.diff, direct.diff_lo, direct.diff_hi, direct.p_value)
        )
        assert (one["wins"], one["losses"]) == (direct.a_only, direct.b_only)
    pooled = rows[rows.seed.isna()].set_index("metric")
    direct = paired_difference(
        np.stack([r for _, r in correct.values()]), np.stack([v for v, _ in correct.values()]), n_boot=300, seed=0
    )
    assert pooled.loc["gain", "value"] == pytest.approx(direct.diff) and direct.test == "bootstrap"
    assert (pooled.loc["gain", "ci_low"], pooled.loc["gain", "ci_high"]) == pytest.approx(
        (direct.diff_lo, direct.diff_hi)
    )
    assert pooled.loc["p_value", "value"] == pytest.approx(direct.p_value) and pooled.loc["n_paired", "value"] == 120
    # seeds with different numbers of prompts are pooled as one flat set of pairs
    uneven = {42: correct[42], 43: (correct[43][0][:30], correct[43][1][:30])}
    flat = pd.DataFrame(reweighting_gain_rows(uneven, n_boot=0))
    flat = flat[flat.seed.isna()].set_index("metric")["value"]
    direct = paired_difference(
        np.concatenate([correct[42][1], correct[43][1][:30]]),
        np.concatenate([correct[42][0], correct[43][0][:30]]),
        n_boot=0,
    )
    assert flat["gain"] == pytest.approx(direct.diff) and flat["p_value"] == pytest.approx(direct.p_value)
    assert np.isnan(flat["gain_lo"])  # n_boot = 0: no interval


def spec_layers(model_dir):
    from iclscope.model.models import load_tokenizer

    return load_tokenizer(model_dir)[1]["n_layers"]


def spec_heads(model_dir):
    from iclscope.model.models import load_tokenizer

    return load_tokenizer(model_dir)[1]["n_heads"]
