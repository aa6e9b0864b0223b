"""Task decodability: equals scikit-learn's leave-one-out k-NN, and behaves at the extremes."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from iclscope.core.stats import bootstrap_mean
from iclscope.methods.decodability.knn import (
    decodability,
    decodability_by_layer,
    decodability_per_class,
    knn_loo_predict,
    pairwise_decodability,
    peak_layer,
)


def sklearn_loo(X, y, k, metric):
    pred = []
    for i in range(len(X)):
        keep = np.arange(len(X)) != i
        clf = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(X[keep], y[keep])
        pred.append(clf.predict(X[i : i + 1])[0])
    return np.array(pred)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_equals_sklearn_leave_one_out(metric):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)) + np.repeat(np.eye(8)[:2] * 0.8, 60, axis=0)
    y = np.repeat(["a", "b"], 60)
    np.testing.assert_array_equal(knn_loo_predict(X, y, k=7, metric=metric), sklearn_loo(X, y, 7, metric))


def test_separated_clusters_give_one_and_identical_points_give_chance():
    rng = np.random.default_rng(1)
    centres = np.eye(5)[:3] * 100
    X = np.concatenate([c + rng.normal(size=(30, 5)) for c in centres])
    y = np.repeat([0, 1, 2], 30)
    assert decodability(X, y, k=10) == 1.0
    same = np.zeros((60, 4))
    y2 = np.repeat(["p", "q"], 30)
    # all distances equal: neighbours are the k lowest indices; a point of 'p' (indices 0-29) sees 10
    # 'p's except itself, so every 'p' is predicted 'p' and every 'q' too: exactly 0.5, chance level
    assert decodability(same, y2, k=10) == 0.5


def test_tie_breaking_is_deterministic_by_summed_distance():
    X = np.array([[0.0], [1.0], [-3.0], [10.0], [11.0]])
    y = np.array(["x", "x", "z", "z", "x"])
    # point 0: neighbours (k=2) are 1 ('x', d=1) and 2 ('z', d=3): one vote each, 'x' is closer
    assert knn_loo_predict(X, y, k=2)[0] == "x"


def test_cosine_ignores_scale_euclidean_does_not():
    rng = np.random.default_rng(2)
    direction = rng.normal(size=(40, 6))
    X = np.concatenate([direction, direction * 50])
    y = np.repeat([0, 1], 40)  # same directions, different norms
    assert decodability(X, y, k=5, metric="euclidean") > 0.75
    assert decodability(X, y, k=5, metric="cosine") < 0.6


def test_pairwise_per_class_and_layer_table():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(loc=i * 3, size=(20, 4)) for i in range(3)])
    y = np.repeat(["t0", "t1", "t2"], 20)
    labels, M = pairwise_decodability(X, y, k=5)
    assert list(labels) == ["t0", "t1", "t2"] and np.allclose(M, M.T, equal_nan=True)
    assert np.isnan(np.diag(M)).all()
    assert set(decodability_per_class(X, y, k=5)) == {"t0", "t1", "t2"}
    H = np.stack([rng.normal(size=X.shape), X], axis=1)  # layer 0 noise, layer 1 separable
    table = decodability_by_layer(H, y, k=5, metrics=("euclidean",), n_boot=50)
    assert peak_layer(table) == 1
    overall = table[table.task == "all"].set_index("layer")
    assert (overall["ci_low"] <= overall["value"]).all() and (overall["value"] <= overall["ci_high"]).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="two classes"):
        decodability(np.zeros((5, 2)), [0] * 5, k=2)
    with pytest.raises(ValueError, match="k=5"):
        decodability(np.zeros((5, 2)), [0, 1, 0, 1, 0], k=5)
    assert np.isnan(bootstrap_mean([], 10)[0])


def test_decodability_accuracy_fit_reads_the_peak_layer_and_drops_null():
    import pandas as pd

    from iclscope.methods.decodability.fit import decodability_accuracy_fit

    dec, acc = [], []
    for layer in range(3):
        for task, td in {"all": 0.5 + 0.2 * (layer == 1), "a": 0.2, "b": 0.5, "c": 0.9, "Null": 0.9}.items():
            dec.append(
                {
                    "metric": "decodability_euclidean",
                    "layer": layer,
                    "task": task,
                    "shots": 4,
                    "value": td + (0.05 if layer == 1 else 0),
                }
            )
    for task, a in {"a": 0.1, "b": 0.4, "c": 0.8, "Null": 0.0, "all": 0.4}.items():
        acc.append({"metric": "accuracy", "task": task, "shots": 4, "value": a})
    points, fit = decodability_accuracy_fit(pd.DataFrame(dec), pd.DataFrame(acc), model="m", dataset="d")
    assert list(points["task"]) == ["a", "b", "c"] and (points["layer"] == 1).all()
    r2 = fit.set_index("metric")["value"]["fit_r2"]
    assert 0.99 < r2 <= 1.0  # accuracy is (almost) linear in TD here
