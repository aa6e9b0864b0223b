"""Intervals and paired tests for accuracies (docs/methods.md §0.4).

Everything here is numpy/scipy over 0/1 correctness arrays, so it is cheap (microseconds to a
few milliseconds per call) and can be recomputed from any predictions table.

- `bootstrap_mean`: percentile interval of one arm's accuracy (resampling inputs).
- `paired_difference`: two arms scored on the *same* inputs: the accuracy difference a − b, a
  percentile bootstrap interval and a p-value from one resampling design (docs/methods.md §0.4).
  One seed (inputs only): the interval resamples inputs, the p-value is McNemar's exact test (the
  two-sided binomial test on the discordant pairs, as
  `statsmodels.stats.contingency_tables.mcnemar(exact=True)` computes it). Several seeds ([seed,
  input] arrays): the interval resamples seeds and inputs (two levels) and the p-value is that same
  bootstrap distribution's two-sided tail at 0 (`bootstrap_test`), so the interval excludes 0
  exactly when p < alpha.
- `paired_rows`: a paired difference as rows of a long-format metric table (docs/outputs.md).
- `stratified_paired_difference`: the same comparison on several datasets (strata) pooled: the
  bootstrap resamples inputs (and seeds) within each dataset (each keeps its size); one seed
  everywhere: McNemar's exact test on the summed discordant pairs (equal weights: signs flipped
  within each dataset), several seeds: the stratified two-level bootstrap's own tail at 0.
- `holm` / `with_holm`: Holm's step-down adjustment of a family of p-values (family-wise error
  rate, valid under any dependence between the tests); the family is the paired tests of one
  comparison table (docs/methods.md §0.4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest


def bootstrap_mean(values, n_boot: int, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` [n] (nan, nan when n_boot == 0 or n == 0)."""
    values = np.asarray(values, dtype=float)
    if n_boot <= 0 or len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (a right, b wrong) and c (a wrong, b right):
    min(1, 2 · P[Binomial(b + c, 1/2) ≤ min(b, c)]); 1.0 when there is no discordant pair."""
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    return float(binomtest(min(int(b), int(c)), n, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedDifference:
    """Arm a against arm b on the same inputs (accuracies in [0, 1])."""

    accuracy_a: float
    accuracy_b: float
    diff: float  # accuracy_a − accuracy_b
    diff_lo: float  # percentile bootstrap interval of diff (nan when n_boot == 0)
    diff_hi: float
    p_value: float  # McNemar exact (one seed) or the two-level bootstrap's tail at 0 (several seeds)
    test: str  # "mcnemar_exact" | "bootstrap" | "stratified_sign_flip" | "stratified_bootstrap" | "none"
    n_inputs: int
    n_seeds: int
    a_only: int  # discordant pairs: a right and b wrong (summed over seeds)
    b_only: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_test(replicates, alpha: float = 0.05) -> tuple[float, float, float]:
    """Percentile interval and two-sided p-value of "no difference" from one set of bootstrap replicates
    [B] of a difference: (lo, hi, p).

    With the replicates sorted, θ*_(1) ≤ … ≤ θ*_(B), and k = ⌈B·alpha/2⌉, the interval is
    [θ*_(k), θ*_(B+1−k)] (the percentile interval by order statistics) and
    p = min(1, 2 · min(#{θ* ≤ 0}, #{θ* ≥ 0}) / B), floored at 1/B (the resolution of B replicates; a
    replicate within 1e-12 of 0 counts as 0). The interval excludes 0 exactly when p < alpha (for
    B > 1/alpha): lo > 0 iff fewer than k replicates are ≤ 0, hi < 0 iff fewer than k are ≥ 0.
    """
    x = np.sort(np.asarray(replicates, dtype=float))
    B = len(x)
    if B == 0:
        return float("nan"), float("nan"), float("nan")
    x = np.where(np.abs(x) < 1e-12, 0.0, x)
    k = max(1, int(np.ceil(B * alpha / 2 - 1e-9)))
    lo, hi = float(x[k - 1]), float(x[B - k])
    tail = min(int((x <= 0).sum()), int((x >= 0).sum()))
    return lo, hi, float(min(1.0, max(2 * tail, 1) / B))


def _boot_two_level(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot] bootstrap means of the differences d [S, N]: inputs resampled, and seeds too when S > 1
    (a two-level bootstrap: each replicate draws S seed rows and N input columns with replacement)."""
    S, N = d.shape
    cols = rng.integers(0, N, (n_boot, N))
    if S == 1:
        return d[0][cols].mean(1)
    rows = rng.integers(0, S, (n_boot, S))
    return np.array([d[r][:, c].mean() for r, c in zip(rows, cols, strict=True)])


def paired_difference(a, b, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> PairedDifference:
    """a, b: correctness of two arms on the same inputs, [n_inputs] or [n_seeds, n_inputs] (0/1 or bool).

    The interval and the p-value come from one resampling design (docs/methods.md §0.4):

    - one seed: the interval resamples inputs (percentile bootstrap), the p-value is McNemar's exact
      test; both treat the inputs as the only random draw.
    - several seeds (or random draws): the interval resamples seeds *and* inputs (a two-level
      bootstrap, so seed-to-seed variation widens it) and the p-value is the two-sided tail of that
      same bootstrap distribution at 0 (`bootstrap_test`): the interval excludes 0 exactly when
      p < alpha. With n_boot == 0 there is neither interval nor p-value (nan, test "none").
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: arms have different shapes {a.shape} and {b.shape}")
    S, N = a.shape
    if N == 0:
        raise ValueError("paired_difference: no inputs")
    d = a - b  # [S, N]
    a_only, b_only = int((d > 0).sum()), int((d < 0).sum())
    lo = hi = float("nan")
    rng = np.random.default_rng(seed)
    if S == 1:
        if n_boot > 0:
            diffs = _boot_two_level(d, n_boot, rng)
            lo, hi = float(np.quantile(diffs, alpha / 2)), float(np.quantile(diffs, 1 - alpha / 2))
        p, test = mcnemar_exact(a_only, b_only), "mcnemar_exact"
    elif n_boot > 0:
        (lo, hi, p), test = bootstrap_test(_boot_two_level(d, n_boot, rng), alpha), "bootstrap"
    else:
        p, test = float("nan"), "none"
    return PairedDifference(float(a.mean()), float(b.mean()), float(d.mean()), lo, hi, p, test, N, S, a_only, b_only)


def stratified_paired_difference(
    strata: dict,
    *,
    weights: str = "inputs",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_perm: int = 10_000,
) -> PairedDifference:
    """Arms a and b pooled over several datasets: strata {name: (a, b)}, each pair as `paired_difference`
    takes it ([n_inputs] or [n_seeds, n_inputs], the seeds of one stratum shared by both arms).

    The pooled difference is Σ_s w_s · diff_s with w_s ∝ the stratum's inputs (`weights="inputs"`: the
    difference over all inputs together) or w_s = 1 / #strata (`"equal"`: every dataset counts alike).
    The interval is a stratified paired bootstrap: each replicate resamples inputs (and seeds) *within*
    each stratum, keeping its size, so the mix of datasets never changes. The p-value tests "no
    difference" in the same design (docs/methods.md §0.4): with one seed everywhere, over inputs only,
    McNemar's exact test on the summed discordant pairs (input weights) or signs flipped within strata
    (equal weights); with several seeds in any stratum, the two-sided tail at 0 of the same stratified
    two-level bootstrap (`bootstrap_test`: the interval excludes 0 exactly when p < alpha; n_boot == 0:
    neither, test "none").
    accuracy_a / accuracy_b are weighted the same way; n_inputs is the total, n_seeds the largest.
    """
    if not strata:
        raise ValueError("stratified_paired_difference: no strata")
    if weights not in ("inputs", "equal"):
        raise ValueError(f"stratified_paired_difference: weights {weights!r}; use 'inputs' or 'equal'")
    ds, accs = [], []
    for name, (a, b) in strata.items():
        a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
        if a.shape != b.shape or a.shape[1] == 0:
            raise ValueError(f"stratified_paired_difference: stratum {name!r} has arms of shapes {a.shape}, {b.shape}")
        ds.append(a - b)
        accs.append((a.mean(), b.mean()))
    n = np.array([d.shape[1] for d in ds], dtype=float)
    w = n / n.sum() if weights == "inputs" else np.full(len(ds), 1 / len(ds))
    diff = float(sum(wi * d.mean() for wi, d in zip(w, ds, strict=True)))
    a_only, b_only = int(sum((d > 0).sum() for d in ds)), int(sum((d < 0).sum() for d in ds))
    rng = np.random.default_rng(seed)
    lo = hi = float("nan")
    one_seed = all(d.shape[0] == 1 for d in ds)
    boots = sum(wi * _boot_two_level(d, n_boot, rng) for wi, d in zip(w, ds, strict=True)) if n_boot > 0 else None
    if not one_seed:  # seeds resampled within each stratum: the p-value is that same bootstrap's tail at 0
        if boots is None:
            p, test = float("nan"), "none"
        else:
            (lo, hi, p), test = bootstrap_test(boots, alpha), "stratified_bootstrap"
    else:  # inputs only
        if boots is not None:
            lo, hi = float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))
        if weights == "inputs":
            p, test = mcnemar_exact(a_only, b_only), "mcnemar_exact"
        else:
            coef = np.concatenate([np.full(d.shape[1], wi / d.shape[1]) * d[0] for wi, d in zip(w, ds, strict=True)])
            observed = abs(coef.sum())
            signs = rng.choice((-1.0, 1.0), (n_perm, len(coef)))
            extreme = (np.abs(signs @ coef) >= observed - 1e-12).sum()
            p, test = float((extreme + 1) / (n_perm + 1)), "stratified_sign_flip"
    acc_a = float(sum(wi * x for wi, (x, _) in zip(w, accs, strict=True)))
    acc_b = float(sum(wi * y for wi, (_, y) in zip(w, accs, strict=True)))
    return PairedDifference(
        acc_a, acc_b, diff, lo, hi, p, test, int(n.sum()), max(d.shape[0] for d in ds), a_only, b_only
    )


def pooled_rows(strata: dict, n_boot: int = 1000, weights: str = "inputs", adjust: bool = True, **common) -> list[dict]:
    """Metric rows (`paired_rows`) of a − b per dataset (column `dataset` = the stratum's name) and pooled
    over them (`dataset` "pooled", `stratified_paired_difference`), each p-value with its Holm-adjusted
    value (the family: these per-dataset and pooled tests; `adjust=False` leaves the adjustment to a
    caller whose table holds more tests)."""
    rows = []
    for name, (a, b) in strata.items():
        rows += paired_rows(paired_difference(a, b, n_boot=n_boot, seed=0), **common, dataset=name)
    pooled = stratified_paired_difference(strata, weights=weights, n_boot=n_boot, seed=0)
    rows += paired_rows(pooled, **common, dataset="pooled")
    return with_holm(rows) if adjust else rows


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values [m] of a family of raw p-values [m] (NaN = not tested: kept NaN, not counted).

    With the m tested p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
    max_{j ≤ i} min(1, (m − j + 1) · p_(j)) (Holm 1979; as statsmodels' multipletests(method="holm")).
    Rejecting where the adjusted value is ≤ α controls the family-wise error rate at α whatever the
    dependence between the tests. Ties share one adjusted value.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"holm: need a 1-D array of p-values, got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)]}")
    out = np.full(len(p), np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(stepped)
    return out


def with_holm(rows: list[dict], p_metric: str = "p_value", adjusted: str = "p_holm") -> list[dict]:
    """`rows` (long-format metric rows) plus, for every row whose metric is `p_metric` (or, when
    `p_metric` ends in "_", starts with it), a copy with metric `adjusted` (+ the same suffix) holding
    its Holm-adjusted value; the family is every such row of `rows` (one comparison table)."""
    prefix = p_metric.endswith("_")
    picked = [r for r in rows if (r["metric"].startswith(p_metric) if prefix else r["metric"] == p_metric)]
    adj = holm([r["value"] for r in picked])
    extra = [
        {**r, "metric": adjusted + r["metric"][len(p_metric) :] if prefix else adjusted, "value": float(v)}
        for r, v in zip(picked, adj, strict=True)
    ]
    return list(rows) + extra


PAIRED_METRICS = ("gain", "gain_lo", "gain_hi", "p_value", "wins", "losses", "n_paired")


def paired_rows(pair: PairedDifference, **common) -> list[dict]:
    """Metric-table rows of `pair` (arm a − arm b), each with the columns `common`: `gain` = diff (its
    interval also in ci_low / ci_high), `gain_lo`, `gain_hi`, `p_value`, `wins` (a right, b wrong),
    `losses` (a wrong, b right) and `n_paired` (inputs × seeds)."""
    values = (
        pair.diff,
        pair.diff_lo,
        pair.diff_hi,
        pair.p_value,
        pair.a_only,
        pair.b_only,
        pair.n_inputs * pair.n_seeds,
    )
    return [
        {
            **common,
            "metric": name,
            "value": float(v),
            **({"ci_low": pair.diff_lo, "ci_high": pair.diff_hi} if name == "gain" else {}),
        }
        for name, v in zip(PAIRED_METRICS, values, strict=True)
    ]
