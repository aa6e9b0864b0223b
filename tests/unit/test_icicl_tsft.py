"""IC-ICL arms and TS-FT on tiny random models (mechanics, not accuracy)."""

import json

import numpy as np
import pandas as pd
import pytest

from iclscope.config import DatasetSpec, PromptSpec
from iclscope.icicl import ICICLSettings, add_loyalty, evaluate_icicl, retrieve, soft_prompt, text_anchor_prompt
from iclscope.models import load_tokenizer
from iclscope.taskspace import TaskSpace
from iclscope.tsft import TSFTSettings, train_tsft

WORDS = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late", "love", "rude", "great", "flight"]


def frame(n=80):
    rows = [{"text": f"I {WORDS[i % 12]} {WORDS[(i * 5) % 12]} {i}", "label": ["negative", "positive"][i % 2],
             "split": "train" if i < n * 0.6 else "test", "task": "t"} for i in range(n)]
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    return df


SPEC = DatasetSpec(name="d", source="local", path="x", classes={"negative": " negative", "positive": " positive"},
                   prompts=PromptSpec(template="Tweet: {text}\nSentiment:{label}"))


def identity_space(d, layer):
    return TaskSpace(basis=np.eye(d), mean=np.zeros(d), prototypes=np.eye(2, d), explained_var=np.full(d, 1 / d),
                     classes=("negative", "positive"), variant="identity", layer=layer)


def test_retrieval_orders_most_similar_last_and_random_is_seeded():
    pool = np.eye(4)
    test = np.array([[1.0, 0.5, 0, 0]])
    assert retrieve(test, pool, 2, "similar", 0).tolist() == [[1, 0]]
    assert (retrieve(test, pool, 3, "random", 5) == retrieve(test, pool, 3, "random", 5)).all()


def test_soft_prompt_has_one_slot_per_demo(prepared_tiny):
    tok, _ = load_tokenizer(prepared_tiny[1])
    ids, slots = soft_prompt(tok, SPEC, ["negative", "positive"], "I love it")
    assert len(slots) == 2 and all(ids[s] == ids[slots[0]] for s in slots)
    assert tok.decode(ids[slots[1]:]).count("Sentiment") == 2  # label line of demo 2 + the query


def test_icicl_arms_identity_space_equals_uncompressed(prepared_tiny):
    spec_model, model_dir = prepared_tiny
    d = 32
    spaces = {1: identity_space(d, 1)}
    settings = ICICLSettings(k=2, pool_size=10, n_test=6, inject_layer=1, embed_layer=1, warmup=1, repeats=1,
                             random_draws=2, word_k=3)
    per_example, summary, meta = evaluate_icicl(frame(), SPEC, model_dir, spec_model, spaces, settings)
    assert set(per_example["arm"]) == {"zero_shot", "full_icl", "icicl_soft", "icicl_soft_pool", "icicl_identity",
                                       "task_vector", "anchor_kv", "text_anchor", "hidden_random"}
    assert set(summary["arm"]) == set(per_example["arm"]) | {"hidden_random_top"}
    soft = per_example[per_example.arm == "icicl_soft"].reset_index()
    ident = per_example[per_example.arm == "icicl_identity"].reset_index()
    np.testing.assert_allclose(soft[["logit_negative", "logit_positive"]], ident[["logit_negative", "logit_positive"]],
                               rtol=1e-5, atol=1e-5)
    tokens = summary.set_index("arm")["tokens"]
    assert tokens["icicl_soft"] < tokens["full_icl"] and tokens["task_vector"] == tokens["zero_shot"]
    assert meta["pool_states_seconds"] > 0 and len(per_example) == 6 * (8 + 2)
    assert meta["pool_task_space_k"] == 1  # fitted on the pool's own states: C - 1 directions
    assert tokens["anchor_kv"] <= tokens["zero_shot"] and meta["anchor_kv_entries"] >= 2  # new tokens only
    assert tokens["zero_shot"] < tokens["text_anchor"] < tokens["full_icl"]
    by_arm = summary.set_index("arm")
    assert by_arm.loc["full_icl", "label_loyalty"] == 1 and by_arm.loc["full_icl", "word_loyalty"] == 1
    assert (per_example["top_ids"].map(len) == 3).all()
    # hidden_random_top is the draw with the best label loyalty; hidden_random is the mean of the draws
    hr = per_example[per_example.arm == "hidden_random"]
    per_draw = hr.groupby("draw")["label_loyal"].mean()
    assert by_arm.loc["hidden_random_top", "label_loyalty"] == per_draw.max()
    assert per_draw[by_arm.loc["hidden_random_top", "draw"]] == per_draw.max()
    assert by_arm.loc["hidden_random", "accuracy"] == pytest.approx(hr.groupby("draw")["correct"].mean().mean())


def test_loyalty_against_full_icl_matches_a_direct_computation():
    rows = [{"test_row": t, "arm": arm, "pred": pred, "top_ids": top}
            for t, arm, pred, top in [(7, "full_icl", 1, [1, 2, 3, 4, 5]), (7, "x", 1, [1, 2, 3, 9, 8]),
                                      (8, "x", 0, [5, 6, 7, 8, 9]), (8, "full_icl", 1, [5, 6, 7, 8, 9])]]
    out = add_loyalty(pd.DataFrame(rows)).set_index(["test_row", "arm"])
    assert out.loc[(7, "x"), "word_loyalty"] == pytest.approx(3 / 7)  # {1,2,3} of {1,2,3,4,5,8,9}
    assert out.loc[(8, "x"), "word_loyalty"] == 1 and not out.loc[(8, "x"), "label_loyal"]
    assert out.loc[(7, "x"), "label_loyal"]
    assert (out.xs("full_icl", level="arm")[["label_loyal", "word_loyalty"]] == 1).all().all()


def test_text_anchor_is_the_template_and_labels_without_input_text(prepared_tiny):
    tok, _ = load_tokenizer(prepared_tiny[1])
    rec = text_anchor_prompt(tok, SPEC, [" negative", " positive"], "I love it")
    expected = "Tweet: \nSentiment: negative\nTweet: \nSentiment: positive\nTweet: I love it\nSentiment:"
    assert rec["text"] == expected
    assert rec["input_ids"].tolist() == tok(expected)["input_ids"]
    assert len(rec["label_pos"]) == 2 and rec["query_pos"] == len(rec["input_ids"]) - 1


def tiny_anchor_kv(prepared_tiny, texts, labels, draws):
    from iclscope.icicl import AnchorKV, PromptScorer
    from iclscope.loading import load_model
    from iclscope.prompts import label_token_ids

    net, tok, manifest = load_model(prepared_tiny[1], attn_implementation="iclscope")
    kv = AnchorKV(net, tok, SPEC, texts, labels, random_draws=draws, seed=3)
    scorer = PromptScorer(net, tok, label_token_ids(tok, SPEC.label_words, SPEC.prompts.template),
                          manifest["n_layers"], word_k=4)
    return kv, scorer, tok


def test_hidden_random_swaps_each_label_for_one_text_token(prepared_tiny):
    texts = ["great fun plot", "I love this car so much", "the flight was late again and the crew was rude"]
    kv, _, _ = tiny_anchor_kv(prepared_tiny, texts, ["negative", "positive", "positive"], draws=6)
    again, _, _ = tiny_anchor_kv(prepared_tiny, texts, ["negative", "positive", "positive"], draws=6)
    for j in range(3):
        rec = kv.records[j]
        start, end = rec["demo_spans"][0]
        anchor = set(kv.kept(j, 1))
        assert set(rec["label_pos"]) <= anchor
        drawn = set()
        for d in range(6):
            kept = set(kv.kept(j, 1, d))
            removed, added = anchor - kept, kept - anchor
            assert removed == set(rec["label_pos"]) and len(added) == 1  # label out, exactly one text token in
            (pos,) = added
            assert start <= pos < end and pos not in rec["label_pos"] and pos not in rec["format_pos"]
            assert kv.kept(j, 1, d) == again.kept(j, 1, d)  # seeded
            drawn.add(pos)
        candidates = set(range(start, end)) - set(rec["format_pos"])  # text tokens not merged with the template
        assert len(drawn) > 1 or len(candidates) == 1  # the draws differ
    assert len(drawn) > 1  # (the long last text has many candidates)


def test_hidden_random_forced_onto_the_label_reproduces_anchor_kv(prepared_tiny):
    import torch

    texts, labels = ["I love this car so much", "the crew was rude"], ["positive", "negative"]
    kv, scorer, tok = tiny_anchor_kv(prepared_tiny, texts, labels, draws=1)
    query = tok("Tweet: so late\nSentiment:", add_special_tokens=False)["input_ids"]
    random = scorer.score_anchor_kv(kv, [0, 1], query, 0)
    forced, _, _ = tiny_anchor_kv(prepared_tiny, texts, labels, draws=1)
    forced.random_position = lambda j, draw: forced.records[j]["label_pos"][0]
    anchor = scorer.score_anchor_kv(forced, [0, 1], query)
    same = scorer.score_anchor_kv(forced, [0, 1], query, 0)
    np.testing.assert_allclose(same.label_logits, anchor.label_logits, rtol=1e-5, atol=1e-6)
    assert same.top_ids.tolist() == anchor.top_ids.tolist()
    assert not np.allclose(random.label_logits, anchor.label_logits, atol=1e-6)  # an unforced draw differs
    # the top ids are those of the full vocabulary at the last position of an ordinary forward pass
    full = [int(t) for t in kv.records[0]["input_ids"]] + query
    with torch.inference_mode():
        logits = scorer.model(input_ids=torch.as_tensor([full])).logits[0, -1]
    assert scorer.score(full).top_ids.tolist() == logits.topk(4).indices.tolist()


def test_anchor_kv_keeping_every_position_reproduces_the_full_prompt(prepared_tiny):
    """With all demonstration tokens kept (not only anchors) and one demonstration at slot 0, the
    cached continuation equals feeding demonstration + query as one prompt."""
    from iclscope.icicl import AnchorKV, PromptScorer
    from iclscope.loading import load_model
    from iclscope.prompts import assemble, label_token_ids, tokenize_pieces

    spec_model, model_dir = prepared_tiny
    net, tok, manifest = load_model(model_dir, attn_implementation="iclscope")
    kv = AnchorKV(net, tok, SPEC, ["I love it"], ["positive"])
    kv.kept = lambda j, slot, draw=None: list(range(len(kv.records[j]["input_ids"])))  # keep everything
    ids = label_token_ids(tok, SPEC.label_words, SPEC.prompts.template)
    scorer = PromptScorer(net, tok, ids, manifest["n_layers"])
    query = tok("Tweet: so rude\nSentiment:", add_special_tokens=False)["input_ids"]
    cache, _ = kv.cache_for([0])
    cached = scorer.score_on_cache(query, cache, kv.stride).label_logits
    full = [int(t) for t in kv.records[0]["input_ids"]] + query  # the same tokens as one prompt
    np.testing.assert_allclose(cached, scorer.score(full).label_logits, rtol=1e-4, atol=1e-4)
    one_piece = tokenize_pieces(tok, assemble(SPEC.prompts.template, "\n", [("I love it", " positive")], "so rude"))
    assert one_piece["text"].endswith("so rude\nSentiment:")


def test_tsft_resumes_to_the_same_loss_curve(prepared_tiny, tmp_path):
    spec_model, model_dir = prepared_tiny
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 2)))[0].T[:1]
    space = TaskSpace(basis=basis, mean=np.zeros(32), prototypes=np.array([[1.0], [-1.0]]), explained_var=np.ones(1),
                      classes=("negative", "positive"), variant="class_mean", layer=1)
    settings = TSFTSettings(steps=6, batch_size=4, n_train=16, n_test=8, checkpoint_every=2, layer=1, lam=0.5)
    full = train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "full")
    assert train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "killed", stop_after=3) == {
        "stopped_at": 3}
    assert (tmp_path / "killed" / "checkpoint" / "trainer_state.pt").exists()  # step 2 checkpoint
    resumed = train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "killed")
    a = pd.read_parquet(tmp_path / "full" / "train_log.parquet")
    b = pd.read_parquet(tmp_path / "killed" / "train_log.parquet")
    assert list(b["step"]) == list(range(1, 7))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert resumed["accuracy"] == full["accuracy"]
    assert (tmp_path / "full" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["lam"] == 0.5
    assert a["space"].notna().all() and (a["space"] > 0).all()


@pytest.mark.parametrize("lam", [0.0])
def test_tsft_space_loss_gradient_flows(prepared_tiny, tmp_path, lam):
    """With λ = 0 the space loss is still logged but does not move training; λ > 0 changes the curve."""
    spec_model, model_dir = prepared_tiny
    space = TaskSpace(basis=np.eye(32)[:1], mean=np.zeros(32), prototypes=np.array([[1.0], [-1.0]]),
                      explained_var=np.ones(1), classes=("negative", "positive"), variant="class_mean", layer=1)
    base = TSFTSettings(steps=3, batch_size=4, n_train=16, n_test=8, layer=1, lam=lam, lr=1e-2)
    with_space = TSFTSettings(**{**base.__dict__, "lam": 5.0})
    a = train_tsft(frame(), SPEC, model_dir, spec_model, space, base, tmp_path / "a")
    b = train_tsft(frame(), SPEC, model_dir, spec_model, space, with_space, tmp_path / "b")
    la = pd.read_parquet(tmp_path / "a" / "train_log.parquet")
    lb = pd.read_parquet(tmp_path / "b" / "train_log.parquet")
    assert la["ce"].iloc[0] == pytest.approx(lb["ce"].iloc[0], rel=1e-5)  # same start
    assert not np.allclose(la["space"].iloc[1:], lb["space"].iloc[1:])  # the space loss steered training
    assert a["lam"] == 0.0 and b["lam"] == 5.0


def test_tsft_fits_its_space_on_the_zero_shot_training_states(prepared_tiny, tmp_path):
    """space=None: the class means of the base model's own layer-l* states of the training rows
    (what the loss shapes), computed here by a separate plain forward pass per row."""
    import torch

    from iclscope.loading import load_model
    from iclscope.prompts import label_token_ids
    from iclscope.taskspace import fit_task_space
    from iclscope.tsft import balanced_sample, fit_on_states, zero_shot_examples

    spec_model, model_dir = prepared_tiny
    net, tok, manifest = load_model(model_dir)
    rows = balanced_sample(frame()[frame().split == "train"], ["negative", "positive"], 12, 0, "t")
    examples = zero_shot_examples(tok, SPEC, rows)
    label_ids = torch.as_tensor(label_token_ids(tok, SPEC.label_words, SPEC.prompts.template))
    space = fit_on_states(net, tok, examples, label_ids, 1, manifest["n_layers"], ["negative", "positive"], 5, 0.9,
                          None)
    with torch.inference_mode():
        states = [net(input_ids=torch.as_tensor([x["input_ids"]]), output_hidden_states=True).hidden_states[1][0, -1]
                  for x in examples]
    naive = fit_task_space(torch.stack(states).numpy(), [["negative", "positive"][x["gold"]] for x in examples],
                           ["negative", "positive"], variant="naive", layer=1)
    np.testing.assert_allclose(space.mean, naive.mean, atol=1e-5)
    np.testing.assert_allclose(np.abs(space.basis), np.abs(naive.basis), atol=1e-4)  # up to sign
    summary = train_tsft(frame(), SPEC, model_dir, spec_model, None,
                         TSFTSettings(steps=1, batch_size=4, n_train=12, n_test=8, layer=1), tmp_path / "run")
    assert summary["task_space_variant"] == "train_zero_shot" and summary["task_space_k"] == 1
