"""Shared-prefix extraction (iclscope.model.extract: each seed's demonstration prefix runs once, its
KV cache serves every test input that continues it) equals full-prompt extraction, and the label
states it stores once per prefix read back per prompt through the one reader (core/store.py).

On tiny random models of the support matrix (tests/tiny_models.py) chosen to cover the attention
paths: Llama (GQA, RoPE), GPT-2 (learned positions), Mistral (sliding window shorter than the
prompts), Gemma-2 (soft-capping + sliding window: the eager path of the hook layer), GPT-J (an
adapter architecture) and Bloom (ALiBi from the attention mask). Batches of 3 prompts of different
lengths, so continuations are left-padded by different amounts.
"""

import dataclasses

import h5py
import numpy as np
import pytest
from test_extract import WORDS, prompts_file

from iclscope.core.config import ModelSpec
from iclscope.core.store import SCHEMA_VERSION, IncompleteFileError, label_states, open_activations, read_prompts
from iclscope.model.extract import ExtractSettings, extract
from iclscope.model.models import prepare_model
from iclscope.model.shared_prefix import shared_prefixes
from tiny_models import make_tiny_arch, train_tokenizer

ARCHS = ("llama", "gpt2", "mistral", "gemma2", "gptj", "bloom")
PER_PROMPT = (
    "resid/query",
    "resid/last_input",
    "resid/content_mean",
    "attn/query_to_label",
    "logits/label",
    "logits/topk_values",
)
FP32_ATOL = 1e-4  # measured: <= 7.2e-6 on every architecture here (fp32 rounding of other batch shapes)
# bf16: both paths round every activation to 8 mantissa bits, in batches of other shapes; differences
# are bf16 rounding noise, bounded relative to the array's scale (measured: <= 0.25 % of max |x|)
BF16_RTOL_OF_MAX = 0.01


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer("gpt2", out)
    return out


def prepared_arch(model_type, tokenizer_dir, tmp_path_factory, dtype="float32"):
    weights = make_tiny_arch(model_type, tmp_path_factory.mktemp(model_type), tokenizer_dir)
    spec = ModelSpec(
        name=f"tiny-{model_type}",
        source="local",
        path=str(weights),
        batch_size=3,
        max_batch_tokens=4096,
        dtype=dtype,
        device="cpu",
    )
    out = tmp_path_factory.mktemp(f"prepared-{model_type}")
    prepare_model(spec, out)
    return spec, out


def both_ways(prepared, tmp_path, n_test=12):
    """(full-prompt file, shared-prefix file, prompts table) of the same prompts."""
    spec, model_dir = prepared
    ppath, table = prompts_file(prepared, tmp_path, n_test=n_test, n_train=1)
    assert table["input_ids"].map(len).nunique() > 2  # continuations of different lengths in a batch
    settings = ExtractSettings(store_dtype="float32", topk=5)
    full, shared = tmp_path / "full.h5", tmp_path / "shared.h5"
    extract(ppath, model_dir, full, spec, settings, share_prefixes=False)
    summary = extract(ppath, model_dir, shared, spec, settings)
    assert summary["prefixes"] == 2  # one per seed: train-split queries continue their seed's prefix too
    return full, shared, table


def max_diffs(full, shared) -> dict[str, float]:
    out = {}
    with open_activations(full) as a, open_activations(shared) as b:
        assert "resid/label" in a and "resid/label" not in b and "prefix/resid/label" in b
        for name in PER_PROMPT:
            x, y = a[name][()], b[name][()]
            assert x.shape == y.shape and np.array_equal(np.isnan(x), np.isnan(y)), name
            out[name] = (float(np.nanmax(np.abs(x - y))), float(np.nanmax(np.abs(x))))
        x, y = label_states(a)[:], label_states(b)[:]
        assert x.shape == y.shape
        out["resid/label"] = (float(np.abs(x - y).max()), float(np.abs(x).max()))
        np.testing.assert_array_equal(a["logits/topk_ids"][()][:, 0], b["logits/topk_ids"][()][:, 0])
    return out


@pytest.mark.parametrize("model_type", ARCHS)
def test_shared_prefix_equals_full_prompts_fp32(model_type, tokenizer_dir, tmp_path_factory, tmp_path):
    prepared = prepared_arch(model_type, tokenizer_dir, tmp_path_factory)
    full, shared, table = both_ways(prepared, tmp_path)
    diffs = max_diffs(full, shared)
    print(model_type, "fp32 max abs diff", {k: f"{d:.1e}" for k, (d, _) in diffs.items()})
    for name, (diff, _) in diffs.items():
        assert diff <= FP32_ATOL, f"{model_type} {name}: {diff}"
    with open_activations(shared) as f:  # the label states are stored once per prefix, not per prompt
        index = read_prompts(f)["prefix_index"]
        assert f["prefix/resid/label"].shape[0] == 2 and sorted(set(index)) == [0, 1]
        assert f.attrs["schema_version"] == SCHEMA_VERSION == 2


@pytest.mark.parametrize("model_type", ("llama", "gemma2"))
def test_shared_prefix_equals_full_prompts_bf16(model_type, tokenizer_dir, tmp_path_factory, tmp_path):
    prepared = prepared_arch(model_type, tokenizer_dir, tmp_path_factory, dtype="bfloat16")
    full, shared, _ = both_ways(prepared, tmp_path)
    with h5py.File(shared) as f:
        assert f.attrs["dtype"] == "bfloat16"
    diffs = max_diffs(full, shared)
    print(model_type, "bf16 max abs diff / max |x|", {k: f"{d:.1e}/{m:.1e}" for k, (d, m) in diffs.items()})
    for name, (diff, scale) in diffs.items():
        assert diff <= BF16_RTOL_OF_MAX * scale, f"{model_type} {name}: {diff} vs max {scale}"


def test_prefixes_cover_the_label_tokens_and_stop_before_the_test_input():
    ids = [np.array([1, 2, 3, 4, 5, 9, 9]), np.array([1, 2, 3, 4, 5, 9, 8, 8]), np.array([1, 2, 7, 7])]
    prompts = {
        "seed": np.array([1, 1, 2]),
        "shots": np.array([4, 4, 4]),
        "n_tokens": np.array([7, 8, 4]),
        "label_pos": np.array([[1, 3], [1, 3], [1, -1]]),
        "query_span": np.array([[5, 6], [5, 7], [2, 3]]),
    }
    found = shared_prefixes(prompts, iter(ids))
    np.testing.assert_array_equal(found.index, [0, 0, 1])
    # group 0 shares 6 tokens, but its test input starts at 5: the prefix stops there
    assert [t.tolist() for t in found.tokens] == [[1, 2, 3, 4, 5], [1, 2]]
    # a label token past the common prefix: every prompt takes the full-prompt path
    late = {**prompts, "label_pos": np.array([[1, 6], [1, 6], [1, -1]])}
    assert shared_prefixes(late, iter(ids)) is None
    assert shared_prefixes({**prompts, "label_pos": np.zeros((3, 0), int)}, iter(ids)) is None  # zero-shot


def test_label_reader_indexes_like_an_array_and_schema_is_checked(prepared_tiny, tmp_path):
    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=6)
    full, shared = tmp_path / "full.h5", tmp_path / "shared.h5"
    extract(ppath, model_dir, full, dataclasses.replace(spec), ExtractSettings(), share_prefixes=False)
    extract(ppath, model_dir, shared, spec, ExtractSettings())
    with open_activations(full) as a, open_activations(shared) as b:
        ref, got = a["resid/label"][()], label_states(b)
        assert got.shape == ref.shape and len(got) == len(ref)
        rows = np.array([4, 0, 4, 2])  # unsorted, repeated
        for key in (3, slice(1, 5), rows, (rows, slice(None), 1), (slice(None), 0, -1), np.arange(6) % 2 == 0):
            np.testing.assert_allclose(got[key], ref[key], atol=2e-3, err_msg=str(key))
        assert got[np.array([], dtype=int)].shape == (0, *ref.shape[1:])
        np.testing.assert_array_equal(label_states(a)[rows], ref[rows])  # the per-prompt layout, same reader
    with h5py.File(shared, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(IncompleteFileError, match="newer than this iclscope reads"):
        open_activations(shared)


def test_a_partial_file_of_the_other_layout_is_not_resumed(prepared_tiny, tmp_path, monkeypatch):
    """A job killed while writing label states per prompt (an older iclscope, schema 1) must not be
    resumed by shared-prefix extraction, which would leave the early prompts' label states unread."""
    from iclscope.core.atomic import partial_path
    from iclscope.model import extract as extract_mod

    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=12)
    out = tmp_path / "act.h5"
    real, calls = extract_mod.run_batch, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "run_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        extract(ppath, model_dir, out, spec, ExtractSettings(window_batches=1), share_prefixes=False)
    with h5py.File(partial_path(out)) as f:
        assert f.attrs["n_done"] > 0 and "resid/label" in f
    monkeypatch.setattr(extract_mod, "run_batch", real)
    summary = extract(ppath, model_dir, out, spec, ExtractSettings(window_batches=1))
    assert summary["resumed_at"] == 0 and summary["prefixes"] == 2
    with open_activations(out) as f:
        assert "resid/label" not in f and "prefix/resid/label" in f


# ----------------------------------------------------------------- token states and anchor states
# The same prefix-KV path (iclscope.model.shared_prefix: prefix_pass, continuation_inputs) serves the token
# states of a corpus whose sentences begin alike and the carrier prompts of the anchors' extraction.
PREFIX_ARCHS = ("llama", "gpt2", "mistral", "gemma2", "bloom")
OPENING = "Tweet: I love the"  # every sentence of the test corpus begins with it


def corpus_of(model_dir, n=14):
    from iclscope.model.models import load_tokenizer

    tokenizer, _ = load_tokenizer(model_dir)
    texts = [f"{OPENING} {' '.join(WORDS[: 1 + i % 7])} {i}" for i in range(n)]
    return texts, [tokenizer(t)["input_ids"] for t in texts]


def token_state_batches(prepared, dtype_check=None):
    """(shared-prefix, full) states of every batch of a corpus, float32, [tokens, L+1, d] each."""
    import torch

    from iclscope.model.batching import make_batches
    from iclscope.model.capture import left_pad
    from iclscope.model.loading import load_model
    from iclscope.model.token_states import batch_states, corpus_prefix, run_corpus_prefix

    spec, model_dir = prepared
    net, tokenizer, _ = load_model(model_dir, spec)
    _, corpus = corpus_of(model_dir)
    lengths = np.array([len(c) for c in corpus])
    assert len(set(lengths)) > 2 and len(corpus_prefix(corpus)) >= 3
    prefix = run_corpus_prefix(net, corpus)
    out = []
    for batch in make_batches(lengths, 3, 4096):
        assert len({len(corpus[i]) for i in batch}) > 1 or len(batch) == 1
        ids, mask, pos = left_pad([corpus[i] for i in batch], tokenizer.pad_token_id, torch.device("cpu"))
        out.append((batch_states(net, ids, mask, pos, prefix), batch_states(net, ids, mask, pos)))
    assert sum(len({len(corpus[i]) for i in b}) > 1 for b in make_batches(lengths, 3, 4096)) >= 2  # left-padded
    return out


def anchor_states_both_ways(prepared, tmp_path):
    from iclscope.model.anchor_states import extract_anchor_states
    from iclscope.model.models import load_tokenizer
    from iclscope.model.prompts import carrier_prompts
    from iclscope.model.shared_prefix import carrier_groups

    spec, model_dir = prepared
    words, carriers = [" negative", " positive", " neutral"], ["{label}", "The answer is{label}.", "Tweet: I{label}"]
    tokenizer, _ = load_tokenizer(model_dir)
    groups = carrier_groups(carrier_prompts(tokenizer, carriers, words))
    assert [len(p) > 0 for _, p in groups] == [False, True, True]  # "{label}" shares nothing (no BOS)
    paths = {}
    for share in (True, False):
        paths[share] = tmp_path / f"anchors-{share}.h5"
        extract_anchor_states(model_dir, spec, words, carriers, paths[share], share_prefixes=share)
    with h5py.File(paths[True]) as a, h5py.File(paths[False]) as b:
        return a["anchors/resid"][()], b["anchors/resid"][()]


@pytest.mark.parametrize("model_type", PREFIX_ARCHS)
def test_token_and_anchor_states_through_a_shared_prefix_equal_full_passes_fp32(
    model_type, tokenizer_dir, tmp_path_factory, tmp_path
):
    prepared = prepared_arch(model_type, tokenizer_dir, tmp_path_factory)
    for shared, full in token_state_batches(prepared):
        assert shared.shape == full.shape
        diff = float(np.abs(shared - full).max())
        assert diff <= FP32_ATOL, f"{model_type} token states: {diff}"
    shared, full = anchor_states_both_ways(prepared, tmp_path)
    diff = float(np.abs(shared - full).max())
    print(model_type, f"anchor states fp32 max abs diff {diff:.1e}")
    assert shared.shape == full.shape and diff <= FP32_ATOL, f"{model_type} anchor states: {diff}"


@pytest.mark.parametrize("model_type", ("llama", "gemma2"))
def test_token_and_anchor_states_through_a_shared_prefix_bf16(model_type, tokenizer_dir, tmp_path_factory, tmp_path):
    prepared = prepared_arch(model_type, tokenizer_dir, tmp_path_factory, dtype="bfloat16")
    pairs = token_state_batches(prepared) + [anchor_states_both_ways(prepared, tmp_path)]
    for shared, full in pairs:
        diff, scale = float(np.abs(shared - full).max()), float(np.abs(full).max())
        print(model_type, f"bf16 max abs diff {diff:.1e} of max |x| {scale:.1e}")
        assert diff <= BF16_RTOL_OF_MAX * scale, f"{model_type}: {diff} vs max {scale}"


def test_token_state_files_equal_with_and_without_the_corpus_prefix(tokenizer_dir, tmp_path_factory, tmp_path):
    import pandas as pd

    from iclscope.core.store import open_token_states
    from iclscope.model.token_states import extract_token_states

    spec, model_dir = prepared = prepared_arch("llama", tokenizer_dir, tmp_path_factory)
    texts, _ = corpus_of(model_dir, n=40)
    data = tmp_path / "d.parquet"
    pd.DataFrame({"text": texts, "split": "train"}).to_parquet(data)
    out, summaries = {}, {}
    for share in (True, False):
        out[share] = tmp_path / f"tokens-{share}.h5"
        summaries[share] = extract_token_states(
            data, model_dir, out[share], spec, max_tokens=400, max_sentence_tokens=32, share_prefixes=share
        )
    assert summaries[True]["prefix_tokens"] >= 3 and summaries[False]["prefix_tokens"] == 0
    with open_token_states(out[True]) as a, open_token_states(out[False]) as b:
        for name in ("tokens/id", "tokens/prev", "tokens/sentence", "tokens/position"):
            np.testing.assert_array_equal(a[name][()], b[name][()])
        x, y = a["resid/tokens"][()].astype(np.float32), b["resid/tokens"][()].astype(np.float32)
        # float16 storage: equal up to one float16 rounding of fp32 values that agree to ~1e-6
        np.testing.assert_allclose(x, y, rtol=2e-3, atol=1e-3)
    assert prepared
