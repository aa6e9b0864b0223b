"""AUCROC_l on constructed inputs matches scikit-learn; R_l; per-class attention sums."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from iclscope.anchors import aucroc, class_attention, cumulative_share


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
    # a class that is never predicted is dropped: 3 features, predictions only of classes 0 and 2
    target2 = np.where(target3 == 1, 0, target3)
    sub = feats3[:, [0, 2]] / feats3[:, [0, 2]].sum(1, keepdims=True)
    assert aucroc(feats3, target2) == pytest.approx(roc_auc_score(target2 == 2, sub[:, 1]))
    assert np.isnan(aucroc(feats, np.zeros(200, dtype=int)))


def test_cumulative_share():
    share = cumulative_share(np.array([0.5, 0.6, 0.9, 0.5]))
    np.testing.assert_allclose(share, [0.0, 0.2, 1.0, 1.0])
