"""Paired accuracy statistics: McNemar's exact test by hand, the bootstrap interval, several seeds."""

from math import comb

import numpy as np
import pytest

from iclscope.core.stats import (
    bootstrap_mean,
    holm,
    mcnemar_exact,
    paired_difference,
    pooled_rows,
    stratified_paired_difference,
    with_holm,
)


def naive_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar, written out: 2 · Σ_{i ≤ min(b, c)} C(n, i) / 2^n, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (5, 5), (9, 2), (2, 9), (30, 12), (0, 17)])
def test_mcnemar_exact_matches_the_binomial_sum(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(naive_mcnemar(b, c), rel=1e-9)


def test_paired_difference_counts_discordant_pairs_and_tests_them():
    # 20 inputs: both right on 8, a only on 9, b only on 2, both wrong on 1
    a = np.array([1] * 8 + [1] * 9 + [0] * 2 + [0])
    b = np.array([1] * 8 + [0] * 9 + [1] * 2 + [0])
    r = paired_difference(a, b, n_boot=2000, seed=1)
    assert (r.a_only, r.b_only, r.n_inputs, r.n_seeds) == (9, 2, 20, 1)
    assert r.accuracy_a == pytest.approx(17 / 20) and r.accuracy_b == pytest.approx(10 / 20)
    assert r.diff == pytest.approx(7 / 20)
    assert r.p_value == pytest.approx(naive_mcnemar(9, 2)) and r.test == "mcnemar_exact"
    assert r.diff_lo < r.diff < r.diff_hi
    # the interval resamples inputs: its width is about 4 standard errors of the mean difference
    d = a - b
    se = d.std() / np.sqrt(len(d))
    assert 2.5 * se < r.diff_hi - r.diff_lo < 5.5 * se


def test_identical_arms_have_no_difference():
    a = np.array([1, 0, 1, 1, 0])
    r = paired_difference(a, a, n_boot=100)
    assert r.diff == 0 and r.diff_lo == 0 and r.diff_hi == 0 and r.p_value == 1.0


def test_pairing_is_what_makes_a_small_difference_resolvable():
    # b is a right on 196 of 200 inputs, plus 4 more; a paired test sees 4 discordant pairs, all one way
    rng = np.random.default_rng(0)
    b = (rng.random(200) < 0.6).astype(int)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:8]] = 1  # a fixes 8 of b's errors and breaks none
    r = paired_difference(a, b, n_boot=2000)
    assert r.diff == pytest.approx(8 / 200)
    assert r.diff_lo > 0  # the paired interval excludes 0 ...
    lo_a, _ = bootstrap_mean(a, 2000)
    _, hi_b = bootstrap_mean(b, 2000)
    assert lo_a < hi_b  # ... although the two unpaired intervals overlap
    assert r.p_value == pytest.approx(naive_mcnemar(8, 0))


def test_several_seeds_use_the_sign_flip_test_and_widen_the_interval():
    rng = np.random.default_rng(3)
    base = (rng.random((3, 150)) < 0.7).astype(int)
    a = base.copy()
    a[0, :30] = 1  # the gain comes from one seed only
    r = paired_difference(a, base, n_boot=1000, n_perm=4000)
    assert r.n_seeds == 3 and r.test == "sign_flip"
    assert r.diff == pytest.approx((a - base).mean())
    one_seed = paired_difference(a[0], base[0], n_boot=1000)
    assert (r.diff_hi - r.diff_lo) > 0 and r.diff_lo < r.diff < r.diff_hi
    assert one_seed.diff > r.diff
    # no difference at all: the randomisation p-value is 1
    assert paired_difference(base, base, n_boot=10, n_perm=200).p_value == 1.0


def test_sign_flip_with_one_seed_agrees_with_mcnemar():
    a = np.array([1] * 12 + [0] * 3 + [1] * 10)
    b = np.array([0] * 12 + [1] * 3 + [1] * 10)
    exact = paired_difference(a, b, n_boot=0).p_value
    # the same pairs written as two identical seeds go through the randomisation test
    flip = paired_difference(np.stack([a, a]), np.stack([b, b]), n_boot=0, n_perm=20_000, seed=5).p_value
    assert flip == pytest.approx(exact, abs=0.01)


def test_mismatched_arms_are_refused():
    with pytest.raises(ValueError, match="different shapes"):
        paired_difference(np.ones(3), np.ones(4))


# Holm by hand: sort ascending, multiply the i-th smallest (1-based) by m − i + 1, cap at 1, running maximum.
# [0.01, 0.04, 0.03, 0.005]: sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005 = 0.02, 3·0.01 = 0.03,
# 2·0.03 = 0.06, 1·0.04 = 0.04 -> running max 0.02, 0.03, 0.06, 0.06 (back in input order below).
HOLM_CASES = [
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    ([0.6, 0.3, 0.9], [1.0, 0.9, 1.0]),  # 3·0.3 = 0.9, 2·0.6 = 1.2 -> 1, 0.9 -> max 1
    ([0.5, np.nan, 0.2], [0.5, np.nan, 0.4]),  # NaN = not tested: m = 2
    ([0.034], [0.034]),  # a family of one is not adjusted
    ([0.02, 0.02, 0.5], [0.06, 0.06, 0.5]),  # ties: 3·0.02, max(0.06, 2·0.02), max(0.06, 0.5)
]


@pytest.mark.parametrize("raw, expected", HOLM_CASES)
def test_holm_matches_hand_computed_values(raw, expected):
    np.testing.assert_allclose(holm(raw), expected, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("raw, expected", HOLM_CASES)
def test_holm_matches_statsmodels_when_installed(raw, expected):
    multitest = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels is not a dependency")
    raw = np.asarray(raw, dtype=float)
    ok = ~np.isnan(raw)
    np.testing.assert_allclose(holm(raw)[ok], multitest.multipletests(raw[ok], method="holm")[1], atol=1e-12)


def test_holm_is_never_below_the_raw_p_and_keeps_the_order():
    raw = np.random.default_rng(0).uniform(0, 0.2, 12)
    adj = holm(raw)
    assert (adj >= raw).all() and (adj <= 1).all()
    order = np.argsort(raw)
    assert (np.diff(adj[order]) >= 0).all()


def test_holm_refuses_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match="p-values"):
        holm([0.5, 1.2])


def test_with_holm_adds_one_adjusted_row_per_p_value_row():
    rows = [
        {"metric": "gain", "value": 0.1, "seed": 1},
        {"metric": "p_value", "value": 0.01, "seed": 1},
        {"metric": "p_value", "value": 0.04, "seed": None},
    ]
    out = with_holm(rows)
    adjusted = [r for r in out if r["metric"] == "p_holm"]
    assert [(r["seed"], r["value"]) for r in adjusted] == [(1, 0.02), (None, 0.04)]
    prefixed = with_holm(
        [
            {"metric": "p_value_vs_full_icl", "value": 0.01, "task": "a"},
            {"metric": "p_value_vs_zero_shot", "value": 0.03, "task": "a"},
        ],
        "p_value_",
        "p_holm_",
    )
    assert {r["metric"]: r["value"] for r in prefixed if r["metric"].startswith("p_holm_")} == pytest.approx(
        {"p_holm_vs_full_icl": 0.02, "p_holm_vs_zero_shot": 0.03}
    )


def test_stratified_pooling_by_hand():
    """Dataset A: a right and b wrong on 5 of 6 inputs (+5/6); dataset B: b right and a wrong on 1 of 2 (−1/2).
    Pooled over inputs: (5 − 1) / 8 = 0.5; equal weights: (5/6 − 1/2) / 2 = 1/6. McNemar on the summed
    discordant pairs 5 and 1: 2 · P[Bin(6, ½) ≤ 1] = 2 · 7/64 = 0.21875."""
    strata = {"A": ([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]), "B": ([0, 1], [1, 1])}
    pooled = stratified_paired_difference(strata, n_boot=200)
    assert pooled.diff == pytest.approx(0.5) and (pooled.a_only, pooled.b_only, pooled.n_inputs) == (5, 1, 8)
    assert pooled.p_value == pytest.approx(14 / 64) and pooled.test == "mcnemar_exact"
    assert pooled.accuracy_a == pytest.approx(6 / 8) and pooled.accuracy_b == pytest.approx(2 / 8)
    equal = stratified_paired_difference(strata, weights="equal", n_boot=200, n_perm=2000)
    assert equal.diff == pytest.approx(1 / 6) and equal.test == "stratified_sign_flip"


def test_stratified_bootstrap_keeps_each_dataset_whole():
    """Dataset A: every difference +1 (3 inputs); B: every difference 0 (1 input). Resampling within each
    dataset, every replicate is exactly 3/4; an unstratified bootstrap over the 4 inputs would spread."""
    strata = {"A": ([1, 1, 1], [0, 0, 0]), "B": ([1], [1])}
    pooled = stratified_paired_difference(strata, n_boot=500, seed=3)
    assert pooled.diff == pooled.diff_lo == pooled.diff_hi == pytest.approx(0.75)
    flat = paired_difference([1, 1, 1, 1], [0, 0, 0, 1], n_boot=500, seed=3)
    assert flat.diff == pytest.approx(0.75) and flat.diff_hi - flat.diff_lo > 0.2


def test_one_stratum_is_the_plain_paired_difference():
    rng = np.random.default_rng(5)
    a, b = rng.random(60) < 0.7, rng.random(60) < 0.6
    one = stratified_paired_difference({"x": (a, b)}, n_boot=0)
    plain = paired_difference(a, b, n_boot=0)
    assert (one.diff, one.p_value, one.a_only, one.b_only) == (plain.diff, plain.p_value, plain.a_only, plain.b_only)


def test_pooled_rows_are_per_dataset_and_pooled_with_holm():
    rng = np.random.default_rng(6)
    strata = {name: (rng.random(40) < 0.75, rng.random(40) < 0.6) for name in ("tweets", "tweets3", "words")}
    rows = pooled_rows(strata, n_boot=100, task="icicl_soft-full_icl")
    p = {r["dataset"]: r["value"] for r in rows if r["metric"] == "p_value"}
    adj = {r["dataset"]: r["value"] for r in rows if r["metric"] == "p_holm"}
    assert set(p) == set(adj) == {"tweets", "tweets3", "words", "pooled"}
    np.testing.assert_allclose([adj[k] for k in p], holm([p[k] for k in p]))
    with pytest.raises(ValueError, match="stratum 'bad'"):
        stratified_paired_difference({"bad": ([1, 0], [1])})
