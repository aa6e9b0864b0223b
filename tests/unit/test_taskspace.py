"""Task spaces: known directions recovered, energy ratio bounds, decoding, MI, HDF5 round trip."""

import h5py
import numpy as np
import pytest

from iclscope.methods.taskspace.space import (
    decode,
    energy_ratio,
    fit_task_space,
    plugin_mutual_information,
    project,
    read_task_space,
    reconstruct,
    write_task_space,
)


def clustered(n_per=50, d=20, C=3, scale=10.0, noise=0.1, seed=0):
    """Classes at scale * e_c + offset, so the span of the centred class means is known."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(size=d)
    X = np.concatenate([offset + scale * np.eye(d)[c] + noise * rng.normal(size=(n_per, d)) for c in range(C)])
    return X, np.repeat([f"c{c}" for c in range(C)], n_per), offset


def test_basis_recovers_known_orthogonal_directions():
    X, y, _ = clustered()
    space = fit_task_space(X, y, ["c0", "c1", "c2"], variant="class_mean", layer=3, var_threshold=0.999)
    assert space.k == 2  # C - 1 directions span the centred means of 3 classes
    np.testing.assert_allclose(space.basis @ space.basis.T, np.eye(2), atol=1e-10)
    # the true span: differences of e_0, e_1, e_2 -> projector onto that plane
    true = np.eye(20)[:3] - np.eye(20)[:3].mean(0)
    q, _ = np.linalg.qr(true.T)
    P_true = q[:, :2] @ q[:, :2].T
    np.testing.assert_allclose(space.basis.T @ space.basis, P_true, atol=0.02)


def test_energy_ratio_is_one_in_the_span_and_zero_orthogonal():
    X, y, _ = clustered()
    space = fit_task_space(X, y, ["c0", "c1", "c2"], variant="class_mean", layer=0, var_threshold=0.999)
    inside = reconstruct(np.random.default_rng(1).normal(size=(10, space.k)), space)
    np.testing.assert_allclose(energy_ratio(inside, space), 1.0, atol=1e-10)
    np.testing.assert_allclose(reconstruct(project(inside, space), space), inside, atol=1e-10)
    v = np.random.default_rng(2).normal(size=(5, 20))
    ortho = space.mean + v - (v @ space.basis.T) @ space.basis  # the span's orthogonal complement
    np.testing.assert_allclose(energy_ratio(ortho, space), 0.0, atol=1e-10)
    assert energy_ratio(space.mean[None], space)[0] == 0.0


def test_decode_recovers_classes_and_variance_threshold_picks_k():
    X, y, _ = clustered(noise=1.0)
    space = fit_task_space(X, y, ["c0", "c1", "c2"], variant="class_mean", layer=0)
    assert (np.array(["c0", "c1", "c2"])[decode(X, space)] == y).mean() > 0.95
    one = fit_task_space(X, y, ["c0", "c1", "c2"], variant="class_mean", layer=0, var_threshold=0.5)
    assert one.k == 1 and one.explained_var[0] >= 0.5
    binary = fit_task_space(X[:100], y[:100], ["c0", "c1"], variant="anchor", layer=0)
    assert binary.k == 1


def test_mutual_information_extremes():
    gold = np.repeat([0, 1, 2], 30)
    mi, norm = plugin_mutual_information(gold, gold, 3)
    assert mi == pytest.approx(np.log(3)) and norm == pytest.approx(1.0)
    independent = np.tile([0, 1, 2], 30)  # each gold class predicted uniformly
    mi, norm = plugin_mutual_information(independent, gold, 3)
    assert mi == pytest.approx(0.0, abs=1e-12) and norm == pytest.approx(0.0, abs=1e-12)


def test_hdf5_round_trip(tmp_path):
    X, y, _ = clustered()
    space = fit_task_space(X, y, ["c0", "c1", "c2"], variant="anchor", layer=7)
    with h5py.File(tmp_path / "ts.h5", "w") as f:
        write_task_space(f.create_group("L7"), space)
    with h5py.File(tmp_path / "ts.h5") as f:
        back = read_task_space(f["L7"])
    assert back.classes == space.classes and back.variant == "anchor" and back.layer == 7
    np.testing.assert_allclose(back.basis, space.basis, atol=1e-6)
    with pytest.raises(ValueError, match="no states"):
        fit_task_space(X, y, ["c0", "zz"], variant="anchor", layer=0)
