"""Anchor-only context compression in the paper's setting (iclscope.methods.anchors.compression, docs/methods.md §3.7):
the query continuing the pruned demonstration cache equals a full forward pass of the whole prompt in
which the query's attention to the non-kept demonstration tokens is masked out (a hand-built 4-D mask,
eager attention); keeping every position gives the full prompt back; Text_anchor is exactly the
template / label / separator tokens; Hidden_random swaps exactly the label tokens' entries."""

import numpy as np
import pandas as pd
import pytest
import torch

from iclscope.core.config import DatasetSpec, PromptSpec
from iclscope.core.tables import write_table
from iclscope.methods.anchors.compression import (
    AnchorCompressionSettings,
    demo_end,
    kept_positions,
    random_kept_positions,
    run_anchor_compression,
    text_anchor_ids,
    text_positions,
)
from iclscope.methods.anchors.compression_tables import summarise
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model
from iclscope.model.models import load_tokenizer
from iclscope.model.prompts import build_prompts
from iclscope.model.scoring import as_cache, continue_on_cache, prefix_kv, select_kv

WORDS = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late", "love", "rude", "great", "flight"]
CLASSES = {"negative": " negative", "neutral": " neutral", "positive": " positive"}


def three_demo_prompts(prepared, tmp_path, n_test=3):
    """A prompts file with one demonstration per class, three classes: three demonstrations per prompt."""
    _, model_dir = prepared
    tokenizer, manifest = load_tokenizer(model_dir)
    names = list(CLASSES)
    # no digits (the tiny Llama tokenizer has no byte tokens and drops characters it never saw) and a
    # last word that its merges do not join with '\nSentiment:' (a token that holds both is text)
    rows = [
        {
            "text": f"I {WORDS[i % len(WORDS)]} the {WORDS[(i * 5 + 1) % len(WORDS)]} dog",
            "label": names[i % 3],
            "split": "train" if i < 6 else "test",
            "task": "t",
        }
        for i in range(6 + 3 * n_test)
    ]
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    spec = DatasetSpec(
        name="d3",
        source="local",
        path="x",
        classes=CLASSES,
        prompts=PromptSpec(template="Tweet: {text}\nSentiment:{label}", seeds=(1, 2), n_test=n_test),
    )
    table, meta = build_prompts(df, spec, tokenizer, manifest["context_length"])
    path = tmp_path / "prompts.parquet"
    write_table(table, path, meta)
    return path, table


def record(table, i=0) -> dict:
    rec = table.iloc[i].to_dict()
    assert len(rec["label_pos"]) == 3
    return rec


def models(model_dir):
    run, tok, _ = load_model(model_dir, attn_implementation=ATTN_IMPLEMENTATION)  # what the stage runs
    eager, _, _ = load_model(model_dir, attn_implementation="eager")
    return run, eager, tok


def masked_full_logits(net, ids, allowed: torch.Tensor) -> torch.Tensor:
    """Full forward of `ids` with a hand-built additive 4-D mask (allowed [T, T] bool)."""
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    with torch.inference_mode():
        return net(input_ids=torch.as_tensor([ids]), attention_mask=mask).logits[0]


def test_hidden_anchor_equals_the_full_prompt_with_the_query_masked_off_non_kept_tokens(prepared_tiny, tmp_path):
    _, model_dir = prepared_tiny
    _, table = three_demo_prompts(prepared_tiny, tmp_path)
    run, eager, _ = models(model_dir)
    rec = record(table)
    ids = [int(t) for t in rec["input_ids"]]
    split, keep = demo_end(rec), kept_positions(rec)
    T = len(ids)
    assert 0 < len(keep) < split < T
    got = continue_on_cache(
        run, as_cache(select_kv(prefix_kv(run, ids[:split]), keep)), ids[split:], split, logits_to_keep=0
    )
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    allowed[split:, :split] = False
    allowed[split:, keep] = True  # the query part sees the kept demonstration tokens and itself
    ref = masked_full_logits(eager, ids, allowed)[split:]
    diff = (got.float() - ref.float()).abs().max().item()
    print(f"hidden_anchor vs masked full forward: max |Δlogit| = {diff:.2e}")
    assert diff < 1e-5
    unmasked = masked_full_logits(eager, ids, torch.ones(T, T, dtype=torch.bool).tril())[split:]
    assert (unmasked - ref).abs().max().item() > 1e-3  # the masking is not a no-op on this prompt


def test_keeping_every_position_gives_the_full_prompt(prepared_tiny, tmp_path):
    _, model_dir = prepared_tiny
    _, table = three_demo_prompts(prepared_tiny, tmp_path)
    run, _, _ = models(model_dir)
    rec = record(table, 1)
    ids = [int(t) for t in rec["input_ids"]]
    split = demo_end(rec)
    got = continue_on_cache(
        run, as_cache(select_kv(prefix_kv(run, ids[:split]), range(split))), ids[split:], split, logits_to_keep=0
    )
    with torch.inference_mode():
        ref = run(input_ids=torch.as_tensor([ids])).logits[0, split:]
    diff = (got - ref).abs().max().item()
    print(f"all positions kept vs full prompt: max |Δlogit| = {diff:.2e}")
    assert diff < 1e-5


def test_text_anchor_is_exactly_the_template_label_and_separator_tokens(prepared_tiny, tmp_path):
    _, model_dir = prepared_tiny
    _, table = three_demo_prompts(prepared_tiny, tmp_path)
    tok = load_tokenizer(model_dir)[0]
    rec = record(table)
    ids = [int(t) for t in rec["input_ids"]]
    split = demo_end(rec)
    # independently: the tokens of the demonstration part whose characters touch no demonstration text
    enc = tok(rec["text"], return_offsets_mapping=True, add_special_tokens=True)
    assert enc["input_ids"] == ids
    demo_texts = table.iloc[0]["text"].split("\n")[:-2][0::2]  # 'Tweet: <text>' lines of the demonstrations
    spans, cursor = [], 0
    for line in demo_texts:
        start = rec["text"].index(line, cursor) + len("Tweet: ")
        spans.append((start, start + len(line) - len("Tweet: ")))
        cursor = start
    expected = [
        p for p, (a, b) in enumerate(enc["offset_mapping"][:split]) if not any(a < e and b > s for s, e in spans)
    ]
    assert kept_positions(rec) == expected
    assert text_anchor_ids(rec) == [ids[p] for p in expected] + ids[split:]
    assert set(rec["label_pos"]) <= set(expected) and set(rec["format_pos"]) - text_positions(rec) <= set(expected)
    words = [tok.convert_ids_to_tokens(ids[p]) for p in expected]
    squeezed = "".join("".join(tok.decode([ids[p]]) for p in expected).split()).replace(tok.bos_token or "\0", "")
    labels = [tok.decode([ids[p]]).strip() for p in rec["label_pos"]]
    assert squeezed == "".join(f"Tweet:Sentiment:{w}" for w in labels), (words, squeezed)
    assert not any(w in squeezed for w in WORDS)  # no input text survives


def test_hidden_random_replaces_exactly_the_label_tokens_entries(prepared_tiny, tmp_path):
    _, model_dir = prepared_tiny
    _, table = three_demo_prompts(prepared_tiny, tmp_path)
    run, _, _ = models(model_dir)
    rec = record(table)
    keep = kept_positions(rec)
    labels = sorted(int(p) for p in rec["label_pos"])
    rand, drawn = random_kept_positions(rec, np.random.default_rng(0))
    assert set(keep) - set(rand) == set(labels) and set(rand) - set(keep) == set(drawn) and len(rand) == len(keep)
    for i, (p, r) in enumerate(zip(labels, drawn, strict=True)):
        assert (labels[i - 1] if i else -1) < r < p and r in text_positions(rec)  # a text token of its own demo
    ids = [int(t) for t in rec["input_ids"]]
    kv = prefix_kv(run, ids[: demo_end(rec)])
    anchor, random = as_cache(select_kv(kv, keep)), as_cache(select_kv(kv, rand))
    for layer, (k, _) in enumerate(kv):
        a, r = anchor.layers[layer].keys[0], random.layers[layer].keys[0]  # [Hkv, n_kept, dh]
        for slot, p in enumerate(rand):
            torch.testing.assert_close(r[:, slot], k[0, :, p], rtol=0, atol=0)
            if p in keep:
                torch.testing.assert_close(r[:, slot], a[:, keep.index(p)], rtol=0, atol=0)
    draws = {tuple(random_kept_positions(rec, np.random.default_rng(s))[1]) for s in range(6)}
    assert len(draws) > 1  # the draws differ


def test_run_anchor_compression_table(prepared_tiny, tmp_path):
    spec, model_dir = prepared_tiny
    path, _ = three_demo_prompts(prepared_tiny, tmp_path)
    settings = AnchorCompressionSettings(prompts_per_seed=2, n_random_draws=3, timing_repeats=2, timing_warmup=0)
    table, info, per_example = run_anchor_compression(path, model_dir, spec, settings=settings, dataset="d3")
    timed_rows = per_example[per_example.seconds.notna()]
    assert set(timed_rows.arm) == {"full_icl", "hidden_anchor", "text_anchor", "zero_shot"}
    assert timed_rows["seconds_repeats"].map(len).eq(2).all()  # two interleaved rounds per prompt
    speed = table[(table.metric == "speedup_vs_full_icl") & table.seed.notna()]
    assert speed[["ci_low", "ci_high"]].notna().all().all() and (speed.ci_low <= speed.ci_high).all()
    assert table[table.metric == "tokens_per_second"]["value"].gt(0).all()
    # timed_per_seed: the first prompt of each seed timed, the other scored in one untimed pass, same predictions
    one = AnchorCompressionSettings(**{**settings.__dict__, "timed_per_seed": 1})
    _, _, part = run_anchor_compression(path, model_dir, spec, settings=one, dataset="d3")
    assert part[part.seconds.notna()].groupby("arm").size().eq(2).all()  # two seeds x one prompt
    assert part["pred"].tolist() == per_example["pred"].tolist()
    assert info["prompts"] == 4 and info["demonstration_passes"] == 2  # one demonstration pass per seed
    wide = table.pivot_table(index=["seed", "arm"], columns="metric", values="value")
    assert set(wide.index.get_level_values(1)) == {
        "full_icl",
        "hidden_anchor",
        "text_anchor",
        "hidden_random",
        "hidden_random_top",
        "zero_shot",
    }
    full = wide.xs("full_icl", level=1)
    assert (full["label_loyalty"] == 1).all() and (full["word_loyalty"] == 1).all()
    assert (full["speedup_vs_full_icl"] == 1).all()
    top, mean = wide.xs("hidden_random_top", level=1), wide.xs("hidden_random", level=1)
    assert (top["label_loyalty"] >= mean["label_loyalty"]).all() and top["draw"].between(0, 2).all()
    anchor = wide.xs("hidden_anchor", level=1)
    assert (anchor["tokens"] < full["tokens"]).all() and anchor["speedup_vs_full_icl"].gt(0).all()
    assert per_example.groupby("arm").size().to_dict() == {
        "full_icl": 4,
        "hidden_anchor": 4,
        "text_anchor": 4,
        "hidden_random": 12,
        "zero_shot": 4,
    }
    from iclscope.report.plots import plot_anchor_compression

    plot_anchor_compression(table, tmp_path / "anchor_compression.png")
    assert (tmp_path / "anchor_compression.png").stat().st_size > 0


def test_summarise_picks_the_most_loyal_draw():
    rows = []
    for pid, (gold, full_pred) in enumerate([(0, 0), (1, 0), (1, 1)]):
        base = {"prompt_id": pid, "seed": 1, "gold": gold, "top_ids": [1, 2], "tokens": 10, "context_tokens": 5}
        rows.append({**base, "arm": "full_icl", "draw": -1, "pred": full_pred, "seconds": 2.0})
        for d, preds in enumerate([(1, 1, 0), (0, 0, 1), (0, 1, 1)]):  # loyal on 0, 3, 2 prompts
            rows.append(
                {**base, "arm": "hidden_random", "draw": d, "pred": preds[pid], "seconds": np.nan, "top_ids": [1, 3]}
            )
    out = pd.DataFrame(summarise(pd.DataFrame(rows), 2)).set_index(["arm", "metric"])["value"]
    assert out["hidden_random_top", "draw"] == 1 and out["hidden_random_top", "label_loyalty"] == 1.0
    assert out["hidden_random", "label_loyalty"] == pytest.approx(5 / 9)
    assert out["hidden_random", "word_loyalty"] == pytest.approx(1 / 3)
    assert ("hidden_random", "speedup_vs_full_icl") not in out.index
