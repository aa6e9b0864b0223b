"""The sparse-regression transformer: causal encoding, learning, decodability rows, resume."""

import numpy as np
import pandas as pd
import pytest
import torch

from iclscope.data.synthetic import SparseRegressionTask
from iclscope.methods.decodability.toy_regression import (
    RegressionTraining,
    RegressionTransformer,
    regression_table,
    train_regression,
)

TASK = SparseRegressionTask(dim=8, n_bases=2, basis_size=2, n_points=6, noise_var=0.01)
RUN = RegressionTraining(
    d_model=32,
    n_layers=2,
    n_heads=2,
    steps=120,
    batch_size=32,
    lr=3e-3,
    n_checkpoints=4,
    n_test_per_basis=40,
    knn_k=5,
    save_every=40,
)


@pytest.mark.parametrize("encoding", ["pairs", "interleaved"])
def test_prediction_of_y_i_sees_only_the_prefix_up_to_x_i(encoding):
    model = RegressionTransformer(TASK.dim, TASK.n_points, RegressionTraining(**{**RUN.__dict__, "encoding": encoding}))
    xs, ys, _ = TASK.sample(3, np.random.default_rng(0))
    xs, ys = torch.as_tensor(xs), torch.as_tensor(ys)
    with torch.no_grad():
        base = model(xs, ys)
        ys2 = ys.clone()
        ys2[:, 3] += 5.0  # changing y_4 may only move the predictions of y_5 and y_6
        moved = model(xs, ys2)
    torch.testing.assert_close(moved[:, :4], base[:, :4])
    assert (moved[:, 4:] - base[:, 4:]).abs().max() > 1e-4
    # the basis is read where every demonstration, y_K included, has been seen: the last token
    states = model.states_at_last_demonstration(xs, ys)
    assert states.shape == (3, RUN.n_layers + 1, RUN.d_model)
    ys3 = ys.clone()
    ys3[:, -1] += 5.0
    assert np.abs(model.states_at_last_demonstration(xs, ys3)[:, 0] - states[:, 0]).max() > 1e-4
    if encoding == "interleaved":
        tokens = RegressionTransformer.interleave(xs, ys)
        assert tokens.shape == (3, 12, 8) and torch.equal(tokens[:, 1, 0], ys[:, 0]) and (tokens[:, 1, 1:] == 0).all()
    else:
        tokens = RegressionTransformer.pairs(xs, ys)
        assert tokens.shape == (3, 12, 10) and torch.equal(tokens[:, 3, :8], xs[:, 1])
        assert torch.equal(tokens[:, 3, 8], ys[:, 1]) and (tokens[:, 3, 9] == 1).all()
        assert (tokens[:, 2, 8:] == 0).all() and torch.equal(tokens[:, 2, :8], xs[:, 1])


def test_training_lowers_the_mse_and_measures_every_layer():
    table = train_regression(TASK, RUN)
    mse = table[(table.metric == "mse") & (table.task == "all")].set_index("step")["value"]
    assert list(mse.index) == RUN.checkpoint_steps()
    # without the context E[y | x] = 0, so predicting 0 costs E[y²] = r + σ²: beating it needs the context
    assert mse.iloc[-1] < 0.9 * (TASK.basis_size + TASK.noise_var) < mse.iloc[0]
    dec = table[table.metric == "decodability"]
    assert set(dec["layer"]) == set(range(RUN.n_layers + 1)) and dec["value"].between(0, 1).all()
    assert set(dec["position"]) == {"last_demonstration"}
    assert set(table[(table.metric == "mse") & (table.task != "all")]["task"]) == {"basis 0", "basis 1"}
    assert set(table["arm"]) == {"transformer"}
    by_k = table[(table.metric == "mse_by_examples_seen") & (table.step == RUN.steps)]
    assert list(by_k["shots"]) == list(range(TASK.n_points))
    full = regression_table(table, TASK, n_sequences=200)
    refs = full[full.step.isna()]
    assert set(refs["arm"]) == {"least_squares_basis_known", "least_squares_basis_unknown"}
    assert set(refs["metric"]) == {"mse_by_examples_seen"} and set(refs["task"]) == {"all"}
    known = refs[refs.arm == "least_squares_basis_known"].set_index("shots")["value"]
    assert known[TASK.n_points - 1] < 0.1 < known[0]  # after > r examples the known-basis error is noise


def test_killed_training_resumes_to_the_same_numbers(tmp_path):
    run = RegressionTraining(**{**RUN.__dict__, "steps": 50, "save_every": 20})
    full = train_regression(TASK, run)
    weights = tmp_path / "weights"
    assert train_regression(TASK, run, resume_dir=tmp_path, weights_dir=weights, stop_after=45) is None
    assert (tmp_path / "regression.pt").exists()
    resumed = train_regression(TASK, run, resume_dir=tmp_path, weights_dir=weights)
    pd.testing.assert_frame_equal(resumed, full, rtol=1e-5)
    assert not (tmp_path / "regression.pt").exists()
    # the weights of every measured step are kept; the last ones reproduce the last measured MSE
    from safetensors.torch import load_file

    assert sorted(p.name for p in weights.iterdir()) == [f"step{s:06d}.safetensors" for s in run.checkpoint_steps()]
    model = RegressionTransformer(TASK.dim, TASK.n_points, run)
    model.load_state_dict(load_file(weights / f"step{run.steps:06d}.safetensors"))
    xs, ys, _ = TASK.sample(TASK.n_bases * run.n_test_per_basis, np.random.default_rng(run.seed + 1))
    xs, ys = torch.as_tensor(xs), torch.as_tensor(ys)
    with torch.no_grad():
        mse = float(((model(xs, ys) - ys) ** 2).mean())
    last = full[(full.metric == "mse") & (full.task == "all") & (full.step == run.steps)]["value"].item()
    assert mse == np.float32(last) or abs(mse - last) < 1e-5


def test_figure_draws_from_the_table_that_outputs_md_describes(tmp_path):
    from outputs_doc import undocumented

    from iclscope.core.tables import read_table, write_table
    from iclscope.report.plots import plot_toy_regression

    run = RegressionTraining(**{**RUN.__dict__, "steps": 20})
    path = tmp_path / "results/metrics/toy/regression/toy_regression.parquet"
    write_table(regression_table(train_regression(TASK, run), TASK, n_sequences=50), path)
    assert undocumented(tmp_path / "results") == []
    plot_toy_regression(read_table(path), tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 20_000
