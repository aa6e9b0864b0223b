"""Paired accuracy statistics: McNemar's exact test by hand, the bootstrap interval, several seeds.

statsmodels (a test dependency in requirements.txt, not used by the package) is the public reference
for McNemar's exact test and Holm's adjustment; the hand-computed cases are the other oracle."""

from math import comb

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar
from statsmodels.stats.multitest import multipletests

from iclscope.core.stats import (
    bootstrap_mean,
    bootstrap_test,
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


@pytest.mark.parametrize("b, c", [(1, 0), (5, 5), (9, 2), (2, 9), (30, 12), (0, 17), (140, 97)])
def test_mcnemar_exact_matches_statsmodels(b, c):
    # statsmodels reads the discordant counts off the off-diagonal of the 2x2 table [[both, b], [c, neither]]
    reference = statsmodels_mcnemar(np.array([[50, b], [c, 7]]), exact=True).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(reference, rel=1e-9)


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


def test_several_seeds_use_the_two_level_bootstrap_and_widen_the_interval():
    rng = np.random.default_rng(3)
    base = (rng.random((3, 150)) < 0.7).astype(int)
    a = base.copy()
    a[0, :30] = 1  # the gain comes from one seed only
    r = paired_difference(a, base, n_boot=1000)
    assert r.n_seeds == 3 and r.test == "bootstrap"
    assert r.diff == pytest.approx((a - base).mean())
    one_seed = paired_difference(a[0], base[0], n_boot=1000)
    assert (r.diff_hi - r.diff_lo) > 0 and r.diff_lo < r.diff < r.diff_hi
    assert one_seed.diff > r.diff
    # no difference at all: every replicate is 0, the interval [0, 0], p = 1
    same = paired_difference(base, base, n_boot=50)
    assert (same.diff_lo, same.diff_hi, same.p_value) == (0.0, 0.0, 1.0)
    # no replicates: neither an interval nor a p-value for the two-level design
    none = paired_difference(a, base, n_boot=0)
    assert np.isnan(none.diff_lo) and np.isnan(none.p_value) and none.test == "none"


def one_seed_gain(n_seeds: int = 3, n: int = 100, gain: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """[n_seeds, n] arms that differ on seed 0 only: a right and b wrong on its first `gain` inputs (+gain/n
    there), the same answers on every other seed (difference exactly 0)."""
    b = np.zeros((n_seeds, n))
    b[:, n // 2 :] = 1
    a = b.copy()
    a[0, :gain] = 1
    return a, b


def test_seeds_that_disagree_give_an_interval_and_a_p_value_that_agree():
    """One seed +30 points, two seeds exactly 0: the old pair was inconsistent. Held fixed, the seeds'
    30 discordant inputs all point one way (sign flip: p = 2 · 2^-30 ≈ 2e-9), while the two-level
    interval covers 0. Now the p-value is the same bootstrap's: a replicate is exactly 0 whenever seed 0
    is not among the 3 seeds drawn, probability (2/3)^3 = 8/27, and never below 0, so p = 2 · 8/27."""
    a, b = one_seed_gain()
    r = paired_difference(a, b, n_boot=4000, seed=1)
    assert r.diff == pytest.approx(0.1) and r.test == "bootstrap"
    per_input = (a - b).mean(0)  # the old test's statistic: 30 inputs of +1/3, every flip but ±1 is smaller
    assert (per_input > 0).sum() == 30 and 2 * 0.5**30 < 0.05
    assert r.diff_lo == 0.0 and r.diff_hi > 0.1  # the interval covers 0 ...
    assert r.p_value == pytest.approx(16 / 27, abs=0.04)  # ... and p says the same (binomial sd 0.015)
    assert (r.diff_lo > 0 or r.diff_hi < 0) == (r.p_value < 0.05)


def test_seeds_that_agree_exclude_zero_with_a_small_p():
    """Every seed +30 points (on other inputs each): no replicate reaches 0, p is the floor 1/B."""
    a, b = one_seed_gain()
    for s in (1, 2):
        a[s] = np.roll(a[0] - b[0], 10 * s) + b[s]
    r = paired_difference(a, b, n_boot=1000, seed=2)
    assert r.diff == pytest.approx(0.3) and r.diff_lo > 0.15
    assert r.p_value == pytest.approx(1 / 1000) and r.p_value < 0.05


@pytest.mark.parametrize("below", [23, 24, 25, 26])
def test_bootstrap_test_excludes_zero_exactly_when_p_is_below_alpha(below):
    """B = 1000 replicates −below, …, 1000 − below − 1: `below` + 1 of them ≤ 0. k = ⌈1000 · 0.025⌉ = 25: the
    interval's ends are the 25th and 976th smallest; p = 2 · (below + 1) / 1000. At below = 24 (25
    replicates ≤ 0, p = 0.05) the lower end is 0 itself: not excluded, and p is not below 0.05."""
    x = np.random.default_rng(below).permutation(np.arange(1000.0) - below)
    lo, hi, p = bootstrap_test(x)
    assert (lo, hi) == (24 - below, 975 - below)
    assert p == pytest.approx(2 * (below + 1) / 1000)
    assert (lo > 0) == (p < 0.05) == (below < 24)
    nlo, nhi, np_ = bootstrap_test(-x)  # the mirror image: the upper end, the same p
    assert (nlo, nhi, np_) == (-hi, -lo, p) and (nhi < 0) == (np_ < 0.05)


def test_interval_and_p_value_agree_on_random_seeded_designs():
    """Random [seed, input] pairs with a seed-level effect of random size: whichever way each comes out,
    the two-level interval excludes 0 exactly when p < 0.05, pooled over strata as well."""
    rng = np.random.default_rng(11)
    outcomes = []
    for _ in range(30):
        S, N = int(rng.integers(2, 6)), int(rng.integers(20, 80))
        p_a = np.clip(0.6 + rng.normal(rng.uniform(-0.15, 0.15), 0.1, (S, 1)), 0, 1)
        a, b = (rng.random((S, N)) < p_a).astype(int), (rng.random((S, N)) < 0.6).astype(int)
        r = paired_difference(a, b, n_boot=400, seed=int(rng.integers(100)))
        outcomes.append(r.p_value < 0.05)
        assert (r.diff_lo > 0 or r.diff_hi < 0) == (r.p_value < 0.05), r
        pooled = stratified_paired_difference({"x": (a, b), "y": (b[:, ::-1], a[:, ::-1])}, n_boot=400)
        assert pooled.test == "stratified_bootstrap"
        assert (pooled.diff_lo > 0 or pooled.diff_hi < 0) == (pooled.p_value < 0.05), pooled
    assert 0 < sum(outcomes) < len(outcomes)  # both kinds of outcome were seen


def test_two_identical_seeds_give_the_one_seed_bootstrap():
    """The same pairs written as two identical seeds: resampling seeds changes nothing, so the replicates
    are the one-seed bootstrap's (the same input draws) and the interval its order statistics."""
    a = np.array([1] * 12 + [0] * 3 + [1] * 10)
    b = np.array([0] * 12 + [1] * 3 + [1] * 10)
    one = paired_difference(a, b, n_boot=1000, seed=5)
    two = paired_difference(np.stack([a, a]), np.stack([b, b]), n_boot=1000, seed=5)
    assert two.test == "bootstrap" and one.test == "mcnemar_exact"
    assert abs(two.diff_lo - one.diff_lo) <= 1 / 25 and abs(two.diff_hi - one.diff_hi) <= 1 / 25
    replicates = (a - b)[np.random.default_rng(5).integers(0, 25, (1000, 25))].mean(1)
    assert two.p_value == pytest.approx(max(1, 2 * min((replicates <= 0).sum(), (replicates >= 0).sum())) / 1000)


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
def test_holm_matches_statsmodels(raw, expected):
    raw = np.asarray(raw, dtype=float)
    ok = ~np.isnan(raw)
    np.testing.assert_allclose(holm(raw)[ok], multipletests(raw[ok], method="holm")[1], atol=1e-12)


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
