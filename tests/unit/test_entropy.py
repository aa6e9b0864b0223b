"""Representations as language: H_dw against brute force, the limits of each measure, chunked
(streaming) counting equal to one pass, and per-token state extraction on tiny models."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from iclscope.core.atomic import partial_path
from iclscope.core.store import IncompleteFileError, open_token_states
from iclscope.methods.entropy.measures import (
    EntropySettings,
    Histograms,
    bigram_token,
    discretise,
    frequent_values,
    js_divergence,
    layer_measures,
    neighbour_bigram_labels,
    neighbour_bigram_token,
    next_from_prev,
    pair_labels,
)
from iclscope.methods.entropy.table import entropy_table
from iclscope.model.loading import load_model
from iclscope.model.token_states import extract_token_states


def measures(states, labels, n_bins=4, min_labels=1, **kw):
    lo, hi = states.min(0), states.max(0)
    bins = discretise(states, lo, hi, n_bins)
    h = Histograms(states.shape[1], n_bins, frequent_values(labels, min_labels))
    h.update(bins, labels)
    return h.measures()


def brute_entropy(symbols) -> float:
    counts = Counter(symbols)
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def test_information_equals_brute_force_histogram_entropy():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(57, 3)) * [1, 5, 0.1]
    n_bins = 6
    m = measures(states, np.zeros(57, dtype=int), n_bins=n_bins)
    expected = []
    for j in range(3):
        col = states[:, j]
        width = (col.max() - col.min()) / n_bins
        symbols = [min(int((v - col.min()) / width), n_bins - 1) for v in col]
        expected.append(brute_entropy(symbols))
    assert m["information"] == pytest.approx(np.mean(expected) / math.log(n_bins), rel=1e-12)


def test_information_is_one_for_uniform_and_zero_for_constant_states():
    n_bins = 5
    uniform = np.tile(np.arange(n_bins) + 0.5, 4)[:, None].repeat(3, axis=1)  # every bin equally often
    assert (np.bincount(discretise(uniform, uniform.min(0), uniform.max(0), n_bins)[:, 0]) == 4).all()
    assert measures(uniform, np.zeros(len(uniform), dtype=int), n_bins)["information"] == pytest.approx(1.0)
    constant = np.full((30, 4), 2.5)
    assert measures(constant, np.zeros(30, dtype=int), n_bins)["information"] == 0.0


def test_regularity_is_zero_when_labels_are_independent_of_states():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 6))
    states = np.concatenate([base, base, base])  # each label value sees the same multiset of states
    labels = np.repeat([7, 8, 9], 40)
    m = measures(states, labels, n_bins=8)
    assert m["regularity"] == pytest.approx(0.0, abs=1e-12)
    assert m["regularity_frequency"] == pytest.approx(0.0, abs=1e-12)
    assert m["disentanglement"] == pytest.approx(0.0, abs=1e-12)
    assert m["variation"] == pytest.approx(m["information"])


def test_regularity_equals_information_when_states_are_a_function_of_the_label():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(6), [5, 9, 5, 12, 7, 5])
    codebook = rng.normal(size=(6, 4))
    m = measures(codebook[labels], labels, n_bins=10)
    assert m["variation"] == 0.0 and m["variation_frequency"] == 0.0
    assert m["regularity"] == pytest.approx(m["information"]) and m["regularity_ratio"] == pytest.approx(1.0)
    assert 0 < m["disentanglement"] <= math.log(2) + 1e-12


def test_variation_weighting_and_disentanglement_against_a_hand_count():
    # one dimension, 2 bins: label 0 -> bins [0, 0, 0, 1], label 1 -> bins [1, 1]
    states = np.array([[0.0], [0.0], [0.0], [1.0], [1.0], [1.0]])
    labels = np.array([0, 0, 0, 0, 1, 1])
    m = measures(states, labels, n_bins=2)
    h0, h1 = brute_entropy([0, 0, 0, 1]), 0.0
    assert m["variation"] == pytest.approx((h0 + h1) / 2 / math.log(2))
    assert m["variation_frequency"] == pytest.approx((4 * h0 + 2 * h1) / 6 / math.log(2))
    jsd0 = jensenshannon([3, 1], [0, 2]) ** 2  # label 0 against the rest (scipy: sqrt of JSD, nats)
    jsd1 = jensenshannon([0, 2], [3, 1]) ** 2
    assert m["disentanglement"] == pytest.approx((jsd0 + jsd1) / 2)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.log(2))


def test_chunked_counting_equals_one_pass_and_rare_labels_are_left_out():
    rng = np.random.default_rng(3)
    states = rng.standard_t(df=3, size=(500, 16)).astype(np.float32)
    ids = rng.integers(0, 120, size=500)  # ~4 tokens per value: some values below min_labels
    prev = np.concatenate([[-1], ids[:-1]])
    labels = {"token": ids, "bigram": pair_labels(prev, ids)}
    settings = EntropySettings(n_bins=12, min_labels=5, clip_quantile=0.01)
    streamed = layer_measures(states, labels, settings, chunk=37)
    whole = layer_measures(states, labels, settings, chunk=10_000)
    assert streamed == whole
    assert {(r["range"], r["label_type"]) for r in whole} == {
        (r, t) for r in ("minmax", "clipped") for t in ("token", "bigram")
    }
    token = next(r for r in whole if r["label_type"] == "token" and r["range"] == "minmax")
    assert token["n_label_values"] == len(frequent_values(ids, 5)) and 0 < token["labelled_share"] < 1


def test_pair_labels_are_distinct_per_pair_and_missing_at_sentence_starts():
    prev = np.array([-1, 3, 5, -1, 3])
    ids = np.array([3, 5, 3, 3, 5])
    pairs = pair_labels(prev, ids)
    assert pairs[0] == -1 and pairs[3] == -1
    assert pairs[1] == pairs[4] and len({pairs[1], pairs[2]}) == 2


def test_pair_labels_read_back_their_token():
    prev = np.array([-1, 0, 7, 50_000, 3])
    ids = np.array([4, 0, 50_000, 7, 3])
    pairs = pair_labels(prev, ids)
    np.testing.assert_array_equal(bigram_token(pairs), [-1, 0, 50_000, 7, 3])
    assert len(set(pairs[1:].tolist())) == 4  # (0,0), (7,50000), (50000,7), (3,3) all distinct


# The 10-token corpus x a y a x a y a x b (x=1, a=3, y=2, b=4), one dimension, 2 bins; the state
# of each token is its bin. Left bigrams: xa ay ya ax xa ay ya ax xb (each twice, xb once).
CORPUS_IDS = np.array([1, 3, 2, 3, 1, 3, 2, 3, 1, 4])
CORPUS_PREV = np.array([-1, 1, 3, 2, 3, 1, 3, 2, 3, 1])
CORPUS_BINS = np.array([0, 0, 1, 1, 0, 0, 0, 1, 1, 1], dtype=float)[:, None]


def corpus_measures(min_labels=2):
    labels = {"token": CORPUS_IDS, "bigram": pair_labels(CORPUS_PREV, CORPUS_IDS)}
    rows = layer_measures(CORPUS_BINS, labels, EntropySettings(n_bins=2, min_labels=min_labels, clip_quantile=0))
    return {r["label_type"]: r for r in rows}


def test_bigram_measures_are_nested_under_the_token_by_hand():
    """min_labels=2 keeps xa, ya (token a), ay (token y), ax (token x); xb (once) is dropped.
    Bins: xa -> [0, 0], ya -> [1, 1], ay -> [1, 0], ax -> [0, 1]; overall five 0s and five 1s."""
    m = corpus_measures()["bigram"]
    assert m["information"] == pytest.approx(1.0)  # ln 2 / ln 2
    assert m["n_label_values"] == 4 and m["n_label_groups"] == 3 and m["labelled_share"] == pytest.approx(0.8)
    # H within token: a: mean(H(xa), H(ya)) = 0; y: H(ay) = ln 2; x: H(ax) = ln 2 -> mean over tokens 2/3 ln 2
    # (the flat mean over the four bigrams would be 1/2 ln 2)
    assert m["variation"] == pytest.approx(2 / 3)
    assert m["regularity"] == pytest.approx(1 / 3)
    assert m["regularity_ratio"] == pytest.approx(1 / 3)
    # frequency weighting: Σ_x p(x) H(Y|x) = (2·0 + 2·0 + 2·ln 2 + 2·ln 2) / 8 — nesting does not change it
    assert m["variation_frequency"] == pytest.approx(0.5)
    assert m["regularity_frequency"] == pytest.approx(0.5)
    # only token a has two bigrams: xa [2, 0] against ya [0, 2] is the full ln 2; y and x, with one
    # bigram each, have nothing to be compared with and are left out
    assert m["disentanglement"] == pytest.approx(math.log(2))
    assert m["disentanglement_normalised"] == pytest.approx(1.0)


def test_token_disentanglement_pools_only_the_retained_tokens_by_hand():
    """min_labels=2 keeps x (bins 0 0 1), a (0 1 0 1), y (1 0); b (bin 1, once) is in neither side."""
    m = corpus_measures()["token"]
    assert "n_label_groups" not in m
    hist = {"x": [2, 1], "a": [2, 2], "y": [1, 1]}
    h = {k: brute_entropy([0] * v[0] + [1] * v[1]) for k, v in hist.items()}
    assert m["variation"] == pytest.approx(np.mean(list(h.values())) / math.log(2))
    retained = {"x": [3, 3], "a": [3, 2], "y": [4, 3]}  # the other retained tokens, pooled
    expected = np.mean([jensenshannon(hist[k], retained[k]) ** 2 for k in hist])
    assert m["disentanglement"] == pytest.approx(expected)
    with_rare = {"x": [3, 4], "a": [3, 3], "y": [4, 4]}  # what pooling every other token would give
    assert m["disentanglement"] != pytest.approx(np.mean([jensenshannon(hist[k], with_rare[k]) ** 2 for k in hist]))


def test_a_single_retained_value_has_no_disentanglement():
    states = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    m = measures(states, np.array([5, 5, 5, 6, 7]), n_bins=2, min_labels=2)  # only 5 is retained
    assert m["n_label_values"] == 1 and "disentanglement" not in m and "variation" in m


def naive_measures(bins: np.ndarray, ids, prev, n_bins: int, min_labels: int) -> dict:
    """The measures from dictionaries of token positions, one dimension at a time, without
    iclscope's histograms: token labels flat; bigrams grouped as {token: {previous token: positions}}."""

    def H(pos, j):
        return brute_entropy([bins[i, j] for i in pos])

    def hist(pos, j):
        return np.bincount([bins[i, j] for i in pos], minlength=n_bins)

    def jsd(a, b):
        return jensenshannon(a, b) ** 2 if a.sum() and b.sum() else float("nan")

    d = bins.shape[1]
    info = np.mean([H(range(len(ids)), j) for j in range(d)])
    tokens, nested = {}, {}
    for i, (w, v) in enumerate(zip(ids, prev, strict=True)):
        tokens.setdefault(w, []).append(i)
        if v >= 0:
            nested.setdefault(w, {}).setdefault(v, []).append(i)
    flat_groups = [[pos for pos in tokens.values() if len(pos) >= min_labels]]
    nested_groups = [[pos for pos in subs.values() if len(pos) >= min_labels] for subs in nested.values()]
    out = {}
    for name, groups in (("token", flat_groups), ("bigram", nested_groups)):
        groups = [g for g in groups if g]
        variation = np.mean([np.mean([np.mean([H(pos, j) for j in range(d)]) for pos in g]) for g in groups])
        dis = []
        for g in groups:
            if len(g) < 2:
                continue
            per_value = []
            for pos in g:
                others = [i for other in g if other is not pos for i in other]
                per_value.append(np.mean([jsd(hist(pos, j), hist(others, j)) for j in range(d)]))
            dis.append(np.mean(per_value))
        out[name] = {
            "information": info / math.log(n_bins),
            "variation": variation / math.log(n_bins),
            "regularity": (info - variation) / math.log(n_bins),
            "disentanglement": np.mean(dis),
        }
    return out


def test_measures_equal_a_naive_nested_implementation():
    rng = np.random.default_rng(7)
    ids = rng.choice(6, size=400, p=[0.3, 0.25, 0.2, 0.15, 0.07, 0.03])
    ids[[10, 200, 333]] = 6  # a token below min_labels: in neither side of the token divergences
    prev = np.concatenate([[-1], ids[:-1]])
    prev[::25] = -1  # sentence starts: no left bigram
    states = rng.normal(size=(400, 3)) + ids[:, None] * [0.5, 0.0, 0.2] + prev[:, None] * [0.0, 0.4, 0.2]
    n_bins, min_labels = 5, 4
    bins = discretise(states, states.min(0), states.max(0), n_bins)
    expected = naive_measures(bins, ids, prev, n_bins, min_labels)
    got = {
        r["label_type"]: r
        for r in layer_measures(
            states,
            {"token": ids, "bigram": pair_labels(prev, ids)},
            EntropySettings(n_bins=n_bins, min_labels=min_labels, clip_quantile=0),
        )
    }
    for label_type in ("token", "bigram"):
        for name, value in expected[label_type].items():
            assert got[label_type][name] == pytest.approx(value, rel=1e-10), (label_type, name)


# Four sentences "A B" | "C B" | "A B" | "B A" (A=1, B=2, C=3), one dimension, 2 bins, each token's
# state its bin: A 0 | C 1, B 1 | A 0, B 1 | B 0, A 1 (the first B is bin 0).
H_IDS = np.array([1, 2, 3, 2, 1, 2, 2, 1])
H_PREV = np.array([-1, 1, -1, 3, -1, 1, -1, 2])
H_BINS = np.array([0, 0, 1, 1, 0, 1, 0, 1], dtype=float)[:, None]


def test_bigram_disentanglement_as_hcoxec_h_computes_it_by_hand():
    """min_labels = 1, so every bigram is retained. ln 2 = 0.693147, H(1/3, 2/3) = ln 3 − 2/3 ln 2.

    iclscope's left bigrams ("bigram"): token B has (A,B) bins {0, 1} -> [1, 1] and (C,B) -> [0, 1];
    JSD([½, ½], [0, 1]) = H(¼, ¾) − ½ ln 2 = 0.215762 for each; A has only (B,A) and C none, so they are
    left out: D = 0.215762.
    hcoxec/h ("bigram_h", every bigram containing the token, nested under it):
      B: (A,B) [1, 1], (C,B) [0, 1], right (B,A) [1, 0]. (A,B) against [1, 1] -> 0; (C,B) against [2, 1]
         and (B,A) against [1, 2] -> H(1/3, 2/3) − ½ H(1/3, 2/3) = ½ H(1/3, 2/3) = 0.318257 each;
         mean 2/3 · 0.318257 = 0.212171.
      A: right (A,B) bins {0, 0} -> [2, 0], left (B,A) -> [0, 1]: disjoint, ln 2 each: 0.693147.
      C: only (C,B): a single bigram, which the reference scores ½ ln 2 = 0.346574.
      D = (0.212171 + 0.693147 + 0.346574) / 3 = 0.417297.
    """
    nxt = next_from_prev(H_IDS, H_PREV)
    np.testing.assert_array_equal(nxt, [2, -1, 2, -1, 2, -1, 1, -1])
    labels = {"bigram": pair_labels(H_PREV, H_IDS), "bigram_h": neighbour_bigram_labels(H_IDS, H_PREV, nxt)}
    rows = layer_measures(H_BINS, labels, EntropySettings(n_bins=2, min_labels=1, clip_quantile=0))
    got = {r["label_type"]: r for r in rows}
    ln2, h13 = math.log(2), math.log(3) - 2 / 3 * math.log(2)
    left = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) - 0.5 * ln2
    assert got["bigram"]["disentanglement"] == pytest.approx(left) == pytest.approx(0.215762, abs=1e-6)
    reference = (2 / 3 * 0.5 * h13 + ln2 + 0.5 * ln2) / 3
    assert got["bigram_h"]["disentanglement"] == pytest.approx(reference) == pytest.approx(0.417297, abs=1e-6)
    assert got["bigram_h"]["n_label_groups"] == 3 and got["bigram"]["n_label_groups"] == 2
    # the two conventions differ by 0.2015 nats on this corpus
    assert got["bigram_h"]["disentanglement"] - got["bigram"]["disentanglement"] == pytest.approx(0.201535, abs=1e-6)


@pytest.mark.parametrize("min_labels, reference", [(1, 0.2256256), (2, 0.1780062)])
def test_bigram_h_on_the_ten_token_corpus_matches_the_reference_code(min_labels, reference):
    """The values hcoxec/h's get_token_labels + conditional_counts + disentanglement give on the corpus
    above (one-hot bins as its soft_bin output; run once outside the repository, 2026-12-06); the
    left-bigram convention gives ln 2 on both."""
    labels = {
        "bigram": pair_labels(CORPUS_PREV, CORPUS_IDS),
        "bigram_h": neighbour_bigram_labels(CORPUS_IDS, CORPUS_PREV, next_from_prev(CORPUS_IDS, CORPUS_PREV)),
    }
    got = {
        r["label_type"]: r
        for r in layer_measures(CORPUS_BINS, labels, EntropySettings(n_bins=2, min_labels=min_labels, clip_quantile=0))
    }
    assert got["bigram_h"]["disentanglement"] == pytest.approx(reference, abs=1e-6)
    assert got["bigram"]["disentanglement"] == pytest.approx(math.log(2))


def test_bigram_h_counts_a_repeated_pair_twice_as_the_reference_lists_it():
    """'C C C': the middle C is in (C,C) as its left and as its right bigram, so (C,C) holds 4 entries
    from 3 tokens (the reference appends the position once per bigram): retained at min_labels = 4, the
    single bigram of C scores ½ ln 2; bins 0, 1, 0 -> entries [2, 2] -> variation H = ln 2 (1 in units of ln B)."""
    ids, prev = np.array([3, 3, 3]), np.array([-1, 3, 3])
    labels = neighbour_bigram_labels(ids, prev, next_from_prev(ids, prev))
    assert labels[1, 0] == labels[1, 1] == labels[0, 1] == labels[2, 0]
    np.testing.assert_array_equal(neighbour_bigram_token(labels), [[-1, 3], [3, 3], [3, -1]])
    m = layer_measures(
        np.array([[0.0], [1.0], [0.0]]), {"bigram_h": labels}, EntropySettings(n_bins=2, min_labels=4, clip_quantile=0)
    )[0]
    assert m["disentanglement"] == pytest.approx(0.5 * math.log(2)) and m["variation"] == pytest.approx(1.0)
    assert m["labelled_share"] == pytest.approx(4 / 3)  # entries per token, not tokens


def test_right_bigrams_are_nested_under_their_left_token():
    ids, prev = np.array([5, 7, 7, 2**31 - 1]), np.array([-1, 5, 7, 7])
    labels = neighbour_bigram_labels(ids, prev, next_from_prev(ids, prev))
    np.testing.assert_array_equal(neighbour_bigram_token(labels), [[-1, 5], [7, 7], [7, 7], [2**31 - 1, -1]])
    assert len({int(v) for v in labels.ravel() if v >= 0}) == 5  # (5,7)R, (5,7)L, (7,7), (7,big)R, (7,big)L
    with pytest.raises(ValueError, match="sentence order"):
        next_from_prev(np.array([1, 2]), np.array([-1, 9]))


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="entropy.n_bins"):
        EntropySettings(n_bins=1)
    with pytest.raises(ValueError, match="entropy.clip_quantile"):
        EntropySettings(clip_quantile=0.5)


def test_token_states_equal_unbatched_hidden_states(prepared_tiny, tmp_path):
    spec, model_dir = prepared_tiny
    texts = [f"the {w} sat on the mat {i} times" for i, w in enumerate(["cat", "dog", "bird", "crew"] * 8)]
    data = pd.DataFrame({"text": texts, "label": "x", "split": "train"})
    data.to_parquet(tmp_path / "d.parquet")
    out = tmp_path / "states.tokens.h5"
    summary = extract_token_states(
        tmp_path / "d.parquet", model_dir, out, spec, max_tokens=200, max_sentence_tokens=12, seed=1
    )
    assert summary["tokens"] == 200 and not partial_path(out).exists()
    model, _, _ = load_model(model_dir)
    with open_token_states(out) as f:
        sentence, position, ids = f["tokens/sentence"][()], f["tokens/position"][()], f["tokens/id"][()]
        assert (f["tokens/prev"][()][position == 0] == -1).all()
        for s in np.unique(sentence)[:5]:
            rows = np.flatnonzero(sentence == s)
            assert (position[rows] == np.arange(len(rows))).all()
            with torch.no_grad():
                hidden = model(torch.as_tensor(ids[rows])[None], output_hidden_states=True).hidden_states
            expected = torch.stack(hidden, dim=2)[0].numpy()  # [T, L+1, d], the last one after the final norm
            stored = f["resid/tokens"][rows]
            np.testing.assert_allclose(stored[:, :-1], expected[:, :-1], rtol=1e-2, atol=1e-2)
            final_norm = model.get_decoder().norm if hasattr(model.get_decoder(), "norm") else model.transformer.ln_f
            with torch.no_grad():
                normed = final_norm(torch.as_tensor(stored[:, -1], dtype=torch.float32)).numpy()
            np.testing.assert_allclose(normed, expected[:, -1], rtol=2e-2, atol=2e-2)
    table = entropy_table(out, model="tiny", dataset="d", settings=EntropySettings(n_bins=8, min_labels=3))
    info = table[(table.metric == "information") & (table.variant == "token")]
    assert len(info) == f_layers(out) and info["value"].between(0, 1).all()
    assert set(table["variant"]) == {"token", "bigram", "bigram_h"}  # both bigram conventions (§2.3)
    dis = table[table.metric == "disentanglement"].pivot_table(index="layer", columns="variant", values="value")
    assert dis["bigram_h"].between(0, np.log(2)).all()


def f_layers(path) -> int:
    with open_token_states(path) as f:
        return int(f.attrs["n_layers"]) + 1


def test_partial_token_state_file_is_refused(tmp_path):
    import h5py

    path = tmp_path / "x.tokens.h5"
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = False
    with pytest.raises(IncompleteFileError, match="x.tokens.h5"):
        open_token_states(path)


def test_toy_lm_learns_the_corpus_and_is_measured_at_log_spaced_steps(prepared_tiny, tmp_path):
    """…and its table is the one docs/outputs.md describes and the entropy_training figure draws."""
    from outputs_doc import undocumented

    from iclscope.core.tables import read_table, write_table
    from iclscope.methods.entropy.toy_lm import TOY_LM_COLUMNS, ToySize, ToyTraining, token_stream, train_and_measure
    from iclscope.model.models import load_tokenizer
    from iclscope.report.plots import plot_entropy_training

    tokenizer, _ = load_tokenizer(prepared_tiny[1])
    texts = [f"the {w} sat on the {v} mat" for w in ("cat", "dog", "bird", "crew") for v in ("red", "big")] * 40
    stream = token_stream(texts, tokenizer, vocab_size=24)
    assert stream.min() == 0 and stream.max() <= 23 and (stream == 0).any()  # separators / rare tokens -> UNK
    run = ToyTraining(steps=60, batch_size=8, seq_len=16, vocab_size=24, lr=3e-3, eval_windows=8, n_checkpoints=5)
    assert run.checkpoint_steps()[0] == 0 and run.checkpoint_steps()[-1] == 60
    table = train_and_measure(stream, ToySize("s", 16, 1, 2), run, EntropySettings(n_bins=8, min_labels=3))
    loss = table[table.metric == "eval_loss"].set_index("step")["value"]
    assert list(loss.index) == run.checkpoint_steps() and loss.iloc[-1] < loss.iloc[0] - 0.5
    assert list(table.columns) == TOY_LM_COLUMNS and set(table["variant"].dropna()) == {"token", "bigram"}
    info = table[(table.metric == "information") & (table.range == "minmax") & (table.variant == "token")]
    assert set(info["layer"]) == {0, 1} and info["value"].between(0, 1).all()
    path = tmp_path / "results/metrics/toy/d/entropy_training.parquet"
    write_table(table, path)
    assert undocumented(tmp_path / "results") == []
    plot_entropy_training(read_table(path), tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="d_model 10 is not divisible by n_heads 4"):
        ToySize("bad", 10, 1, 4)


def test_toy_lm_training_killed_midway_resumes_to_the_same_numbers(prepared_tiny, tmp_path):
    from iclscope.methods.entropy.toy_lm import ToySize, ToyTraining, token_stream, train_and_measure
    from iclscope.model.models import load_tokenizer

    tokenizer, _ = load_tokenizer(prepared_tiny[1])
    texts = [f"a {w} saw the {v} one" for w in ("cat", "dog", "owl") for v in ("red", "big", "old")] * 30
    stream = token_stream(texts, tokenizer, vocab_size=20)
    run = ToyTraining(
        steps=30, batch_size=4, seq_len=12, vocab_size=20, lr=3e-3, eval_windows=4, n_checkpoints=6, save_every=10
    )
    size, settings = ToySize("s", 16, 1, 2), EntropySettings(n_bins=6, min_labels=3)
    full = train_and_measure(stream, size, run, settings, weights_dir=tmp_path / "uninterrupted")
    weights = tmp_path / "weights"
    assert (
        train_and_measure(stream, size, run, settings, resume_dir=tmp_path, weights_dir=weights, stop_after=25) is None
    )
    assert (tmp_path / "s.pt").exists()  # the state at step 20
    resumed = train_and_measure(stream, size, run, settings, resume_dir=tmp_path, weights_dir=weights)
    assert not (tmp_path / "s.pt").exists()
    pd.testing.assert_frame_equal(resumed.drop(columns="n_params"), full.drop(columns="n_params"), rtol=1e-5)
    # the weights of every measured step are kept, loadable, equal to the uninterrupted run's
    from transformers import GPT2LMHeadModel

    steps = sorted(p.name for p in (weights / "s").iterdir())
    assert steps == [f"step{s:06d}" for s in run.checkpoint_steps()]
    last = GPT2LMHeadModel.from_pretrained(weights / "s" / steps[-1])
    reference = GPT2LMHeadModel.from_pretrained(tmp_path / "uninterrupted" / "s" / steps[-1])
    for (name, a), (_, b) in zip(last.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    first = GPT2LMHeadModel.from_pretrained(weights / "s" / steps[0])  # the random initialisation
    ids = torch.as_tensor(stream[:12][None]).long()
    assert last(ids, labels=ids).loss < first(ids, labels=ids).loss - 0.3
    other = ToyTraining(**{**run.__dict__, "lr": 1e-2})  # a state from other settings is not resumed
    train_and_measure(stream, size, other, settings, resume_dir=tmp_path, stop_after=25)
    fresh = train_and_measure(stream, size, run, settings, resume_dir=tmp_path)
    pd.testing.assert_frame_equal(fresh.drop(columns="n_params"), full.drop(columns="n_params"), rtol=1e-5)
