"""Synthetic task families: every answer right, inputs shared across tasks, references sane."""

import numpy as np
import pytest

from iclscope.data.synthetic import (
    BITWISE_TASKS,
    WORD_TASKS,
    SparseRegressionTask,
    apply_bitwise,
    bitwise_examples,
    optimal_mse_reference,
    vocabulary_from_texts,
    word_examples,
)

PY_OPS = {
    "AND": lambda a, b: a & b,
    "NAND": lambda a, b: ~(a & b),
    "OR": lambda a, b: a | b,
    "NOR": lambda a, b: ~(a | b),
    "XOR": lambda a, b: a ^ b,
    "XNOR": lambda a, b: ~(a ^ b),
}


@pytest.mark.parametrize("op", list(PY_OPS))
def test_every_bitwise_answer_is_right_on_all_pairs(op):
    for a in range(32):
        for b in range(32):
            got = apply_bitwise(op, format(a, "05b"), format(b, "05b"))
            assert got == format(PY_OPS[op](a, b) & 31, "05b")


def test_bitwise_family_shares_inputs_and_is_correct():
    df = bitwise_examples(50, seed=3)
    assert list(df["task"].unique()) == list(BITWISE_TASKS)
    inputs = [tuple(g["text"]) for _, g in df.groupby("task", sort=False)]
    assert all(i == inputs[0] for i in inputs) and len(set(inputs[0])) == 50
    for r in df[df.task != "Null"].itertuples():
        a, b = r.text.split()
        assert r.label == apply_bitwise(r.task, a, b)
    null = df[df.task == "Null"]["label"]
    assert null.str.fullmatch("[01]{5}").all()
    assert df.equals(bitwise_examples(50, seed=3))


def test_word_tasks_exact_answers_and_null_differs():
    vocab = ["cat", "dog", "bird", "lamp", "tree", "road", "sun"]
    df = word_examples(vocab, 5, seed=1)
    expected = {
        "first_letter": "c",
        "last_letter": "t",
        "uppercase": "CAT",
        "repeat": "cat cat",
        "reverse": "tac",
        "capitalise": "Cat",
    }
    for task, answer in expected.items():
        from iclscope.data.synthetic import apply_word_task

        assert apply_word_task(task, "cat") == answer
    assert list(df["task"].unique()) == list(WORD_TASKS)
    null = df[df.task == "Null"]
    assert (null["label"] != null["text"]).all() and null["label"].isin(vocab).all()
    inputs = [tuple(g["text"]) for _, g in df.groupby("task", sort=False)]
    assert all(i == inputs[0] for i in inputs)
    with pytest.raises(ValueError, match="fewer than n_per_task"):
        word_examples(vocab, 50, seed=1)


def test_vocabulary_filters_and_is_deterministic():
    texts = ["The cat sat on the mat, the cat!", "A dog and a cat", "@user #tag don't 42abc dog dog"]
    vocab = vocabulary_from_texts(texts, min_len=3, max_len=5, min_count=2)
    assert vocab == ["cat", "dog", "the"]
    assert vocabulary_from_texts(texts * 3, max_words=2, min_count=1) == vocabulary_from_texts(
        texts * 3, max_words=2, min_count=1
    )
    with pytest.raises(ValueError, match="no word"):
        vocabulary_from_texts(texts, min_len=9)


def test_sparse_regression_weights_live_in_the_chosen_basis():
    task = SparseRegressionTask(noise_var=0.0)
    xs, ys, basis, w = task.sample(256, np.random.default_rng(0), return_weights=True)
    assert xs.shape == (256, 20, 16) and ys.shape == (256, 20)
    np.testing.assert_allclose(ys, np.einsum("bnd,bd->bn", xs, w), rtol=1e-5, atol=1e-5)
    for b in range(256):
        assert set(np.flatnonzero(w[b])) <= set(task.bases[basis[b]])
    assert np.bincount(basis, minlength=4).min() > 40  # roughly uniform over 4 bases
    with pytest.raises(ValueError):
        SparseRegressionTask(dim=8, n_bases=4, basis_size=4)


def test_optimal_error_references():
    task = SparseRegressionTask()
    few = optimal_mse_reference(task, 2, n_sequences=400)
    known = optimal_mse_reference(task, 12, n_sequences=400)
    many = optimal_mse_reference(task, 24, n_sequences=400)
    assert known["basis_known"] < 3 * task.noise_var  # basis known: OLS in r=4 dims, σ²(1 + 4/7) at n=12
    assert known["basis_unknown"] > 0.5  # all 16 coordinates: still far from it
    assert few["basis_known"] > known["basis_known"]
    assert many["basis_unknown"] < 10 * task.noise_var < known["basis_unknown"]  # OLS: σ²(1 + d/(n-d-1))
