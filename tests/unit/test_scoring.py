"""iclscope.model.scoring, the KV and scoring mechanics IC-ICL and anchor compression share: every
batched path equals its batch-1 path on the tiny Llama and GPT-2 models (fp32), with rows of
different lengths (padding happens)."""

import numpy as np
import pytest
import torch

from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model
from iclscope.model.scoring import (
    as_cache,
    cached_passes,
    concat_kv,
    continue_on_cache,
    last_logits,
    padded_passes,
    prefix_kv,
    prefix_kvs,
    select_kv,
    stack_kv,
)

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture
def net_tok(prepared_tiny):
    spec, model_dir = prepared_tiny
    net, tok, _ = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    return net, tok


def sequences(tok, n=5):
    words = ["I love this car", "the crew was rude and late", "great fun", "a plot", "so late again and again ok"]
    return [tok(f"Tweet: {words[i % len(words)]}\nSentiment:", add_special_tokens=False)["input_ids"] for i in range(n)]


def test_prefix_kvs_in_right_padded_batches_equal_each_prefix_alone(net_tok):
    net, tok = net_tok
    seqs = sequences(tok)
    assert len({len(s) for s in seqs}) > 1
    starts = [0, 7, 30, 0, 12]
    batched = prefix_kvs(net, seqs, starts, tok.pad_token_id, batch_size=3, max_batch_tokens=1 << 20)
    for seq, start, mine in zip(seqs, starts, batched, strict=True):
        alone = prefix_kv(net, seq, start)
        assert len(mine) == len(alone)
        for (k, v), (k1, v1) in zip(mine, alone, strict=True):
            assert k.shape == k1.shape and k.shape[2] == len(seq)
            np.testing.assert_allclose(k.numpy(), k1.numpy(), **TOL)
            np.testing.assert_allclose(v.numpy(), v1.numpy(), **TOL)


def test_cached_passes_equal_each_query_on_its_own_cache(net_tok):
    """Caches of different lengths (left-padded, masked) and queries of different lengths (left-padded
    behind them) give each row the logits of its query continuing its cache alone."""
    net, tok = net_tok
    seqs = sequences(tok)
    kv = prefix_kv(net, seqs[1] + seqs[4], 0)  # one prefix, pruned differently per row
    keeps = [[0, 1, 2], list(range(len(seqs[1]))), [0, 3, 5, 8, 9, 10], [2], [0, 1, 2, 3, 4, 5, 6]]
    queries = [s[:n] for s, n in zip(seqs, (3, 6, 2, 4, 5), strict=True)]
    start = len(seqs[1]) + len(seqs[4])
    rows = {}
    for idx, logits in cached_passes(
        net,
        lambda i: select_kv(kv, keeps[i]),
        [len(k) for k in keeps],
        queries,
        start,
        tok.pad_token_id,
        batch_size=3,
        max_batch_tokens=1 << 20,
    ):
        rows.update({int(i): logits[b] for b, i in enumerate(idx)})
    assert sorted(rows) == list(range(len(keeps)))
    for i, (keep, query) in enumerate(zip(keeps, queries, strict=True)):
        alone = continue_on_cache(net, as_cache(select_kv(kv, keep)), query, start)[-1]
        np.testing.assert_allclose(rows[i].numpy(), alone.numpy(), **TOL)


def test_padded_passes_equal_last_logits_and_kv_helpers_compose(net_tok):
    net, tok = net_tok
    seqs = sequences(tok)
    got = {}
    for idx, logits in padded_passes(net, seqs, tok.pad_token_id, batch_size=2, max_batch_tokens=1 << 20):
        got.update({int(i): logits[b] for b, i in enumerate(idx)})
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(got[i].numpy(), last_logits(net, s)[-1].numpy(), **TOL)
    # concat of two parts = selecting both ranges; stack_kv pads on the left and masks the padding
    kv = prefix_kv(net, seqs[0])
    a, b = select_kv(kv, [0, 1]), select_kv(kv, [2, 3, 4])
    for (k, _), (k2, _) in zip(concat_kv([a, b]), select_kv(kv, [0, 1, 2, 3, 4]), strict=True):
        assert torch.equal(k, k2)
    stacked, mask = stack_kv([a, b], "cpu")
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert torch.equal(stacked[0][0][0, :, 1:], a[0][0][0]) and not stacked[0][0][0, :, 0].any()
