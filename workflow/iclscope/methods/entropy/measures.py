"""Representations as language (Conklin & Smith 2024, docs/methods.md §2): the dimension-wise entropy
estimator H_dw and the four measures built on it.

Every dimension of a set of states Y [N, d] is cut into `n_bins` equal-width bins between a lower
and an upper bound (the dimension's min / max over the analysed set, or its `q` / `1 - q`
quantiles with values outside clipped into the edge bins), so a state becomes d bin symbols.

A label type is either flat (token id: one value per token) or nested (left bigram: each value
(w_{i-1}, w_i) belongs to its token w_i, docs/methods.md §2.3). "Retained" values are those with
≥ min_labels tokens; tokens with any other value count only in H_dw(Y).

    H_dw(Y)    = (1/d) Σ_j H(b_j(Y))                                                    information
    H_dw(Y|X)  flat:   mean over retained x of H_dw(Y | X = x)
               nested: mean over tokens w of [mean over w's retained bigrams x of H_dw(Y | X = x)]
               (uniform, as the reference code; or Σ_x p(x) H_dw(Y | X = x) over the retained
               values: frequency, the same number for flat and nested)                   variation
    I(Y;X)     = H_dw(Y) − H_dw(Y|X)                                                     regularity
    D          flat:   mean over retained x and j of JSD(b_j(Y | X = x) ‖ b_j(Y | X = x', x' ≠ x))
               nested: mean over tokens w of the same, x' running over w's other retained bigrams
               (the same word in its other contexts), for tokens with ≥ 2 retained bigrams
                                                                                         disentanglement

The pool "x' ≠ x" holds only the retained values, as in the reference code: rare values are in
neither side of the divergence. A flat label type with a single retained value, or a token with a
single retained bigram, has nothing to be compared with and is left out of D (the reference code
would score it 0.5·ln 2 per dimension, the divergence from an empty histogram).

Two bigram conventions (docs/methods.md §2.3): "bigram" (iclscope's, for causal LMs) labels a token
by its left bigram only and leaves single-bigram tokens out of D; "bigram_h" is hcoxec/h's
(`get_token_labels`, `nested_conditional_counts`, `disentanglement`): a token is counted under every
bigram that contains it, left (w_{i−1}, w_i) and right (w_i, w_{i+1}), nested under the token, and
a token with a single retained bigram scores 0.5·ln 2.

Entropies are natural-log plug-in estimates; information, variation and regularity are reported
divided by log(n_bins) (the "efficiency" scale of the paper's figures, 1 = uniform use of all
bins), disentanglement in nats (range [0, ln 2]) and divided by ln 2.

Everything works from histograms, which add up over chunks of tokens: `Histograms.update` on
successive chunks gives exactly what one call on all tokens gives, so memory is bounded by the
chunk whatever N is. Cost: O(N·d) per layer and label type, plus O(K·d·n_bins) for K label values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class EntropySettings:
    """How states are discretised and which label values are measured."""

    n_bins: int = 20
    min_labels: int = 5
    clip_quantile: float = 0.001

    def __post_init__(self):
        if not 2 <= self.n_bins <= 255:
            raise ValueError(f"entropy.n_bins must be in [2, 255] (bins are stored as uint8), got {self.n_bins}")
        if self.min_labels < 1:
            raise ValueError(f"entropy.min_labels must be ≥ 1, got {self.min_labels}")
        if not 0 <= self.clip_quantile < 0.5:
            raise ValueError(f"entropy.clip_quantile must be in [0, 0.5), got {self.clip_quantile}")


def bin_ranges(states: np.ndarray, clip_quantile: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension bounds [d], [d] of states [N, d]: min / max, or the q / 1-q quantiles."""
    if clip_quantile == 0:
        return states.min(axis=0), states.max(axis=0)
    lo, hi = np.quantile(states, [clip_quantile, 1 - clip_quantile], axis=0)
    return lo, hi


def discretise(states: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_bins: int) -> np.ndarray:
    """States [N, d] -> bin indices [N, d] uint8 in [0, n_bins).

    Equal-width bins on [lo, hi] per dimension; a value outside is put in the nearest edge bin,
    and a constant dimension (hi == lo) in bin 0. Equal-width bins are the nearest-centre
    assignment of the reference code with centres in the middle of each interval.
    """
    width = np.where(hi > lo, hi - lo, 1.0).astype(np.float64)
    scaled = (states.astype(np.float64) - lo) / width * n_bins
    return np.clip(np.floor(scaled), 0, n_bins - 1).astype(np.uint8)


def entropy(counts: np.ndarray) -> np.ndarray:
    """Plug-in entropy (nats) over the last axis of a count array; 0 for an empty row."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=-1)


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Equal-weight Jensen–Shannon divergence (nats) between count vectors over the last axis."""
    p = p_counts / np.maximum(p_counts.sum(axis=-1, keepdims=True), 1)
    q = q_counts / np.maximum(q_counts.sum(axis=-1, keepdims=True), 1)
    return entropy(0.5 * (p + q)) - 0.5 * (entropy(p) + entropy(q))


class Histograms:
    """Bin counts of one layer's discretised states: overall [d, B] and per label value [K, d, B].

    `values` are the label values that are measured (those with ≥ min_labels tokens; known in
    advance because labels are token ids); tokens with other labels count only in the overall
    histogram. `parents` (aligned with `values`) makes the label type nested: value k belongs to
    the group parents[k] (a bigram to its token), and variation and disentanglement are taken
    within each group, then averaged over groups (docs/methods.md §2.3).
    """

    def __init__(
        self, d: int, n_bins: int, values: np.ndarray, parents: np.ndarray | None = None, score_singletons: bool = False
    ):
        self.n_bins, self.score_singletons = n_bins, score_singletons
        self.values, first = np.unique(np.asarray(values), return_index=True)  # sorted, for searchsorted
        self.parents = None if parents is None else np.asarray(parents)[first]
        self.total = np.zeros((d, n_bins), dtype=np.int64)
        self.by_label = np.zeros((len(self.values), d, n_bins), dtype=np.int64)
        self.n_tokens = 0

    def update(self, bins: np.ndarray, labels: np.ndarray) -> None:
        """Add bins [n, d] uint8 with their labels [n], or [n, m]: m labels per token (−1 = none), the
        token counted once in the overall histogram and once under each of its labels (twice under a
        label it holds twice, as the reference code's position lists do)."""
        n, d = bins.shape
        B = self.n_bins
        cell = np.arange(d, dtype=np.int64) * B + bins  # [n, d] flat (dim, bin) index
        self.total += np.bincount(cell.ravel(), minlength=d * B).reshape(d, B)
        for column in np.asarray(labels).reshape(n, -1).T:
            k = np.searchsorted(self.values, column)
            keep = (
                (k < len(self.values)) & (self.values[np.minimum(k, len(self.values) - 1)] == column)
                if len(self.values)
                else np.zeros(n, dtype=bool)
            )
            if keep.any():
                flat = (k[keep, None] * (d * B) + cell[keep]).ravel()
                self.by_label += np.bincount(flat, minlength=self.by_label.size).reshape(self.by_label.shape)
        self.n_tokens += n

    def groups(self) -> list[np.ndarray]:
        """Indices into `values` of each group: one group per parent, or one group of all values (flat)."""
        if self.parents is None:
            return [np.arange(len(self.values))]
        order = np.argsort(self.parents, kind="stable")
        return np.split(order, np.flatnonzero(np.diff(self.parents[order])) + 1)

    def measures(self) -> dict[str, float]:
        """The four measures (see the module docstring) and the bin occupancy."""
        log_b = np.log(self.n_bins)
        h_y = entropy(self.total)  # [d]
        n_k = self.by_label[:, 0, :].sum(axis=-1)  # [K] tokens per label value
        h_value = entropy(self.by_label).mean(axis=1)  # [K] H_dw(Y | X = x)
        out = {
            "information": float(h_y.mean() / log_b),
            "max_bin_share": float((self.total.max(axis=-1) / max(self.n_tokens, 1)).mean()),
            "occupied_bins": float((self.total > 0).sum(axis=-1).mean()),
            "n_tokens": float(self.n_tokens),
            "n_label_values": float(len(n_k)),
            "labelled_share": float(n_k.sum() / max(self.n_tokens, 1)),
        }
        if len(n_k) == 0:
            return out
        groups = self.groups()
        if self.parents is not None:
            out["n_label_groups"] = float(len(groups))
        # uniform: every retained value weighs the same within its group, every group the same
        # (flat: one group); frequency: Σ_x p(x) H(Y | X = x), which nesting does not change
        variation = {
            "uniform": float(np.mean([h_value[g].mean() for g in groups])),
            "frequency": float((n_k / n_k.sum()) @ h_value),
        }
        for name, value in variation.items():
            suffix = "" if name == "uniform" else "_frequency"
            out[f"variation{suffix}"] = float(value / log_b)
            out[f"regularity{suffix}"] = float((h_y.mean() - value) / log_b)
            out[f"regularity_ratio{suffix}"] = float((h_y.mean() - value) / h_y.mean()) if h_y.mean() > 0 else 0.0
        # each value against the pooled other retained values of its group
        jsd = []
        for g in groups:
            if len(g) < 2:
                if self.score_singletons:  # the reference code's divergence from an empty histogram
                    jsd.append(0.5 * LN2)
                continue
            own = self.by_label[g].astype(np.float64)  # [k, d, B]
            jsd.append(js_divergence(own, own.sum(axis=0) - own).mean())
        if jsd:
            out["disentanglement"] = float(np.mean(jsd))
            out["disentanglement_normalised"] = float(np.mean(jsd) / LN2)
        return out


def frequent_values(labels: np.ndarray, min_count: int) -> np.ndarray:
    """Label values that occur at least `min_count` times (negative values = no label, excluded)."""
    values, counts = np.unique(labels[labels >= 0], return_counts=True)
    return values[counts >= min_count]


# nested label types: how their values map to their group (a token). "bigram": pair_labels, the left
# bigram under its token (iclscope's convention for causal LMs); "bigram_h": neighbour_bigram_labels,
# each token under both its left and right bigram, as hcoxec/h computes it (docs/methods.md §2.3)
NESTED = {"bigram": lambda values: bigram_token(values), "bigram_h": lambda values: neighbour_bigram_token(values)}
SINGLETONS_SCORED = ("bigram_h",)  # a group with one retained value scores 0.5 ln 2, as in hcoxec/h


def layer_measures(
    states: np.ndarray, labels: dict[str, np.ndarray], settings: EntropySettings, chunk: int = 8192, nested=NESTED
) -> list[dict]:
    """All measures of one layer: states [N, d] (any float dtype), labels {label_type: [N] int}.

    Label types named in `nested` ({name: value -> token}) are measured nested under their token
    (docs/methods.md §2.3), the others flat; labels may be [N, m] (m labels per token,
    `Histograms.update`). Returns one dict per (range, label_type) with range ∈ {minmax, clipped}
    ("clipped" only when clip_quantile > 0). The ranges need the whole layer; binning and counting go
    chunk by chunk.
    """
    ranges = {"minmax": bin_ranges(states)}
    if settings.clip_quantile > 0:
        ranges["clipped"] = bin_ranges(states, settings.clip_quantile)
    retained = {name: frequent_values(lab, settings.min_labels) for name, lab in labels.items()}
    rows = []
    d = states.shape[1]
    for range_name, (lo, hi) in ranges.items():
        hists = {
            name: Histograms(
                d,
                settings.n_bins,
                values,
                nested[name](values) if name in nested else None,
                score_singletons=name in SINGLETONS_SCORED,
            )
            for name, values in retained.items()
        }
        for start in range(0, len(states), chunk):
            bins = discretise(states[start : start + chunk], lo, hi, settings.n_bins)
            for name, lab in labels.items():
                hists[name].update(bins, lab[start : start + chunk])
        rows += [{"range": range_name, "label_type": name, **h.measures()} for name, h in hists.items()]
    return rows


PAIR_SHIFT = 32  # a pair label is (previous token << 32) | token, so the token is its low 32 bits


def pair_labels(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Left-bigram labels: one int per (previous token, token) pair; -1 where there is no previous token.

    The encoding does not depend on the data (`bigram_token` reads the token back), so labels built
    from different chunks or corpora agree.
    """
    left = left.astype(np.int64)
    right = right.astype(np.int64)
    if max(left.max(initial=0), right.max(initial=0)) >= 2**31:
        raise ValueError("pair_labels: token ids must be below 2**31")
    return np.where((left >= 0) & (right >= 0), (left << PAIR_SHIFT) | right, -1)


def bigram_token(pairs: np.ndarray) -> np.ndarray:
    """The token of each `pair_labels` value (its right element); -1 where there is no pair."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return np.where(pairs >= 0, pairs & ((1 << PAIR_SHIFT) - 1), -1)


RIGHT = 1 << 31  # marks a right bigram (token, next) of neighbour_bigram_labels: token ids are below 2**31


def next_from_prev(ids: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The id of the token to the right of each token [N] (−1 at a sentence end), from tokens stored
    sentence by sentence in order with their left neighbour `prev` (−1 at a sentence start)."""
    ids, prev = np.asarray(ids, dtype=np.int64), np.asarray(prev, dtype=np.int64)
    nxt = np.full(len(ids), -1, dtype=np.int64)
    if len(ids) > 1:
        continues = prev[1:] >= 0
        if np.any(prev[1:][continues] != ids[:-1][continues]):
            raise ValueError("next_from_prev: tokens are not stored in sentence order (prev[i+1] != id[i])")
        nxt[:-1] = np.where(continues, ids[1:], -1)
    return nxt


def neighbour_bigram_labels(ids: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """[N, 2] the labels hcoxec/h gives a token w_i (`get_token_labels`, code/model.py): every bigram
    that contains it, nested under w_i: its left bigram (w_{i−1}, w_i) and its right bigram
    (w_i, w_{i+1}); −1 where there is no neighbour. A bigram is one value per (pair, token it is
    nested under): the left form is pair_labels(w_{i−1}, w_i); the right form sets bit 31
    (`RIGHT`) unless w_i = w_{i+1}, where (w, w) is the same value either way (the reference keys a
    token's bigrams by the pair, so a middle w of "w w w" is listed twice under (w, w))."""
    ids = np.asarray(ids, dtype=np.int64)
    left = pair_labels(np.asarray(prev), ids)
    right = pair_labels(ids, np.asarray(nxt))
    right = np.where((right >= 0) & (ids != np.asarray(nxt)), right | RIGHT, right)
    return np.stack([left, right], axis=1)


def neighbour_bigram_token(values: np.ndarray) -> np.ndarray:
    """The token each `neighbour_bigram_labels` value is nested under; −1 where there is no pair."""
    values = np.asarray(values, dtype=np.int64)
    right = (values & RIGHT) != 0
    token = np.where(right, values >> PAIR_SHIFT, values & (RIGHT - 1))
    return np.where(values >= 0, token, -1)
