"""IC-ICL arms and TS-FT on tiny random models (mechanics, not accuracy)."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from iclscope.core.config import ConfigError, DatasetSpec, PromptSpec
from iclscope.core.stats import paired_difference
from iclscope.methods.taskspace.icicl.arms import retrieve, soft_prompt, text_anchor_prompt
from iclscope.methods.taskspace.icicl.evaluate import evaluate_icicl
from iclscope.methods.taskspace.icicl.settings import ICICLSettings, SweepGrid
from iclscope.methods.taskspace.icicl.sweep import sweep_icicl
from iclscope.methods.taskspace.icicl.tables import add_loyalty, paired_table
from iclscope.methods.taskspace.space import TaskSpace
from iclscope.methods.taskspace.tsft import TSFTSettings, train_tsft
from iclscope.model.models import load_tokenizer
from iclscope.model.scoring import Prompt

WORDS = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late", "love", "rude", "great", "flight"]


def frame(n=80):
    rows = [
        {
            "text": f"I {WORDS[i % 12]} {WORDS[(i * 5) % 12]} {i}",
            "label": ["negative", "positive"][i % 2],
            "split": "train" if i < n * 0.6 else "test",
            "task": "t",
        }
        for i in range(n)
    ]
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    return df


SPEC = DatasetSpec(
    name="d",
    source="local",
    path="x",
    classes={"negative": " negative", "positive": " positive"},
    prompts=PromptSpec(template="Tweet: {text}\nSentiment:{label}"),
)


def identity_space(d, layer):
    return TaskSpace(
        basis=np.eye(d),
        mean=np.zeros(d),
        prototypes=np.eye(2, d),
        explained_var=np.full(d, 1 / d),
        classes=("negative", "positive"),
        variant="identity",
        layer=layer,
    )


def test_retrieval_orders_most_similar_last_and_random_is_seeded():
    pool = np.eye(4)
    test = np.array([[1.0, 0.5, 0, 0]])
    assert retrieve(test, pool, 2, "similar", 0).tolist() == [[1, 0]]
    assert (retrieve(test, pool, 3, "random", 5) == retrieve(test, pool, 3, "random", 5)).all()


def test_soft_prompt_has_one_slot_per_demo(prepared_tiny):
    tok, _ = load_tokenizer(prepared_tiny[1])
    ids, slots = soft_prompt(tok, SPEC, ["negative", "positive"], "I love it")
    assert len(slots) == 2 and all(ids[s] == ids[slots[0]] for s in slots)
    assert tok.decode(ids[slots[1] :]).count("Sentiment") == 2  # label line of demo 2 + the query


def test_soft_prompt_without_label_line_is_slots_then_query(prepared_tiny):
    tok, _ = load_tokenizer(prepared_tiny[1])
    ids, slots = soft_prompt(tok, SPEC, ["negative", "positive"], "I love it", label_line=False)
    with_line, _ = soft_prompt(tok, SPEC, ["negative", "positive"], "I love it")
    assert slots == [slots[0], slots[0] + 1] and tok.decode(ids[slots[1] + 1 :]).count("Sentiment") == 1
    assert len(ids) < len(with_line)


def test_icicl_arms_identity_space_equals_uncompressed(prepared_tiny):
    spec_model, model_dir = prepared_tiny
    d = 32
    spaces = {"class_mean": {1: identity_space(d, 1)}}
    settings = ICICLSettings(
        k=2,
        pool_size=10,
        n_test=6,
        n_timed=3,
        inject_layer=1,
        embed_layer=1,
        warmup=1,
        repeats=2,
        random_draws=2,
        word_k=3,
        task_space="class_mean",
        n_boot=50,
    )
    per_example, summary, meta = evaluate_icicl(
        frame(), SPEC, model_dir, spec_model, spaces, settings, grid=SweepGrid(depths=(0.5,), n_val=8)
    )
    from comparisons import assert_arm_settings

    assert_arm_settings(meta, set(per_example["arm"]))
    assert set(per_example["arm"]) == {
        "zero_shot",
        "full_icl",
        "icicl_soft",
        "icicl_identity",
        "task_vector",
        "anchor_kv",
        "text_anchor",
        "hidden_random",
    }
    assert set(summary["arm"]) == set(per_example["arm"]) | {"hidden_random_top"}
    soft = per_example[per_example.arm == "icicl_soft"].reset_index()
    ident = per_example[per_example.arm == "icicl_identity"].reset_index()
    np.testing.assert_allclose(
        soft[["logit_negative", "logit_positive"]], ident[["logit_negative", "logit_positive"]], rtol=1e-5, atol=1e-5
    )
    tokens = summary.set_index("arm")["tokens"]
    assert tokens["icicl_soft"] < tokens["full_icl"] and tokens["task_vector"] == tokens["zero_shot"]
    assert meta["pool_states_seconds"] > 0 and len(per_example) == 6 * (7 + 2)
    assert meta["n_test"] == 6 and meta["n_timed"] == 3
    # accuracy on every input, seconds on the timed sample only (the same inputs in every arm)
    # (hidden_random's draws share one cost: draw 0 is timed), each in `repeats` interleaved rounds
    assert per_example.groupby("arm")["timed"].sum().eq(3).all()
    assert per_example[per_example.timed]["seconds_repeats"].map(len).eq(2).all() and meta["timing"]["rounds"] == 2
    assert summary.set_index("arm").loc["full_icl", "speedup_vs_full_icl"] == 1
    assert summary["tokens_per_second"].gt(0).all()
    assert per_example["seconds"].notna().eq(per_example["timed"]).all()
    timed_rows = per_example[per_example.timed].groupby("arm")["test_row"].apply(frozenset)
    assert timed_rows.nunique() == 1
    assert tokens["anchor_kv"] <= tokens["zero_shot"] and meta["anchor_kv_entries"] >= 2  # new tokens only
    assert tokens["zero_shot"] < tokens["text_anchor"] < tokens["full_icl"]
    by_arm = summary.set_index("arm")
    assert by_arm.loc["full_icl", "label_loyalty"] == 1 and by_arm.loc["full_icl", "word_loyalty"] == 1
    assert (by_arm["accuracy_lo"] <= by_arm["accuracy"]).all() and (by_arm["accuracy"] <= by_arm["accuracy_hi"]).all()
    assert (per_example["top_ids"].map(len) == 3).all()
    # hidden_random_top is the draw with the best label loyalty; hidden_random is the mean of the draws
    hr = per_example[per_example.arm == "hidden_random"]
    per_draw = hr.groupby("draw")["label_loyal"].mean()
    assert by_arm.loc["hidden_random_top", "label_loyalty"] == per_draw.max()
    assert per_draw[by_arm.loc["hidden_random_top", "draw"]] == per_draw.max()
    assert by_arm.loc["hidden_random", "accuracy"] == pytest.approx(hr.groupby("draw")["correct"].mean().mean())
    # the pool space is fitted on the pool's own states: C - 1 directions
    pooled = ICICLSettings(**{**settings.__dict__, "task_space": "pool", "random_draws": 1})
    _, _, pool_meta = evaluate_icicl(frame(), SPEC, model_dir, spec_model, {}, pooled)
    assert pool_meta["task_space_k"] == 1 and pool_meta["task_space_variant"] == "pool_last"


def test_batched_arms_equal_one_prompt_at_a_time(prepared_tiny):
    """score_many (left padding, soft-token slots shifted) and AnchorKV.score_many (padded, masked
    caches) give the readouts of the batch-1 path the timing uses, for prompts of different lengths."""
    from iclscope.methods.taskspace.icicl.anchor_kv import AnchorKV
    from iclscope.methods.taskspace.icicl.arms import ICICLRun

    spec_model, model_dir = prepared_tiny
    settings = ICICLSettings(k=2, pool_size=10, inject_layer=1, embed_layer=1, random_draws=1, word_k=3)
    run = ICICLRun(frame(), SPEC, model_dir, spec_model, settings)
    rows = run.test_rows.iloc[:7]
    inputs = run.inputs(rows)
    h = run.state_vectors(1, "label")
    kv = AnchorKV(run.net, run.tokenizer, SPEC, run.pool_texts, run.pool_labels, 1, 0)
    queries = run.query_ids(inputs)
    run.scorer.batch_size = 3
    for prompts in (run.full_prompts(inputs), run.soft_prompts(inputs, h, True), run.task_vector_prompts(inputs, h)):
        assert len({len(p.ids) for p in prompts}) > 1  # padding happens
        batched = run.scorer.score_many(prompts, 1)
        for p, b in zip(prompts, batched, strict=True):
            one = run.scorer.score(p, 1)
            np.testing.assert_allclose(b.label_logits, one.label_logits, rtol=1e-4, atol=1e-4)
    for draw in (None, 0):
        batched = kv.score_many(run.scorer, inputs.demos, queries, draw)
        for demos, q, b in zip(inputs.demos, queries, batched, strict=True):
            one = kv.score(run.scorer, demos, q, draw)
            np.testing.assert_allclose(b.label_logits, one.label_logits, rtol=1e-4, atol=1e-4)
            assert b.top_ids.tolist() == one.top_ids.tolist()


def test_sweep_scores_every_setting_on_train_rows_only(prepared_tiny):
    spec_model, model_dir = prepared_tiny
    df = frame(120)
    df = df[df.split == "train"]  # no test split at all: the sweep cannot read a test input
    settings = ICICLSettings(k=2, pool_size=10, embed_layer=1, n_boot=20)
    grid = SweepGrid(
        depths=(0.5,),
        states=("last", "label"),
        task_spaces=("pool", "class_mean", "identity"),
        label_line=(True, False),
        n_val=8,
    )
    spaces = {"class_mean": {1: identity_space(32, 1)}}
    table, meta = sweep_icicl(df, SPEC, model_dir, spec_model, spaces, settings, grid)
    soft = table[table.arm == "icicl_soft"]
    assert len(soft) == 1 * 2 * 3 * 2 and set(table.arm) == {
        "zero_shot",
        "full_icl",
        "icicl_soft",
        "task_vector",
        "anchor_kv",
    }
    # every tuned arm: its whole grid within IC-ICL's budget (12), on the same validation inputs, one chosen
    # (the tiny model has 2 layers: the task vector's only candidate layer is 1, with 2 states)
    assert meta["tuning"]["icicl_soft"]["settings_scored"] == 12 == meta["tuning"]["task_vector"]["budget"]
    assert len(table[table.arm == "task_vector"]) == meta["tuning"]["task_vector"]["settings_scored"] == 2
    assert set(table[table.arm == "anchor_kv"]["keep"]) == {"anchors", "label"}
    assert table.groupby("arm")["chosen"].sum().to_dict() == {
        "zero_shot": 0,
        "full_icl": 0,
        "icicl_soft": 1,
        "task_vector": 1,
        "anchor_kv": 1,
    }
    assert (table["n_val"] == 8).all()
    assert set(meta["chosen_by_arm"]["task_vector"]) == {
        "task_vector_layer",
        "task_vector_state",
        "resid_index",
        "validation_accuracy",
    }
    assert meta["chosen_by_arm"]["task_vector"]["task_vector_layer"] == 0.5  # layer 1 of 2, as a depth share
    assert meta["chosen_by_arm"]["anchor_kv"]["anchor_keep"] in ("anchors", "label")
    kv = table[table.arm == "anchor_kv"].set_index("keep")["tokens"]
    assert kv["label"] < kv["anchors"]  # the label token alone keeps fewer cache entries
    best = soft[soft.chosen].iloc[0]
    assert best["accuracy"] == soft["accuracy"].max()
    assert best["tokens"] == soft[soft.accuracy == best["accuracy"]]["tokens"].min()
    assert (table["n_val"] == 8).all() and meta["chosen"]["layer"] == 1
    # identity and the identity-basis class_mean space give the same soft tokens
    a = soft[(soft.task_space == "identity")].set_index(["state", "label_line"])["accuracy"]
    b = soft[(soft.task_space == "class_mean")].set_index(["state", "label_line"])["accuracy"]
    pd.testing.assert_series_equal(a, b)


def test_paired_table_is_paired_difference_per_arm():
    rng = np.random.default_rng(0)
    rows = []
    for arm, draws in (("full_icl", [-1]), ("zero_shot", [-1]), ("icicl_soft", [-1]), ("hidden_random", [0, 1])):
        for d in draws:
            for t in range(30):
                rows.append(
                    {
                        "test_row": t,
                        "arm": arm,
                        "draw": d,
                        "correct": bool(rng.random() < 0.7),
                        "label_loyal": bool(rng.random() < 0.5),
                    }
                )
    pe = pd.DataFrame(rows)
    table = paired_table(pe, n_boot=200, seed=3).set_index(["arm", "reference"])
    col = lambda arm, draw=-1: pe[(pe.arm == arm) & (pe.draw == draw)].sort_values("test_row")["correct"]  # noqa: E731
    direct = paired_difference(col("zero_shot"), col("full_icl"), n_boot=200, seed=3)
    assert table.loc[("zero_shot", "full_icl"), "diff"] == direct.diff
    assert table.loc[("zero_shot", "full_icl"), "p_value"] == direct.p_value
    assert table.loc[("icicl_soft", "zero_shot"), "diff"] == pytest.approx(
        col("icicl_soft").mean() - col("zero_shot").mean()
    )
    both = table.loc[("hidden_random", "full_icl")]
    assert both["n_seeds"] == 2 and both["test"] == "bootstrap"
    top = pe[pe.arm == "hidden_random"].groupby("draw")["label_loyal"].mean().idxmax()
    assert table.loc[("hidden_random_top", "full_icl"), "diff"] == pytest.approx(
        col("hidden_random", top).mean() - col("full_icl").mean()
    )


def test_loyalty_against_full_icl_matches_a_direct_computation():
    rows = [
        {"test_row": t, "arm": arm, "pred": pred, "top_ids": top}
        for t, arm, pred, top in [
            (7, "full_icl", 1, [1, 2, 3, 4, 5]),
            (7, "x", 1, [1, 2, 3, 9, 8]),
            (8, "x", 0, [5, 6, 7, 8, 9]),
            (8, "full_icl", 1, [5, 6, 7, 8, 9]),
        ]
    ]
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
    from iclscope.methods.taskspace.icicl.anchor_kv import AnchorKV
    from iclscope.model.loading import load_model
    from iclscope.model.prompts import label_token_ids
    from iclscope.model.scoring import PromptScorer

    net, tok, manifest = load_model(prepared_tiny[1], attn_implementation="iclscope")
    kv = AnchorKV(net, tok, SPEC, texts, labels, random_draws=draws, seed=3)
    scorer = PromptScorer(
        net, tok, label_token_ids(tok, SPEC.label_words, SPEC.prompts.template), manifest["n_layers"], word_k=4
    )
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
    random = kv.score(scorer, [0, 1], query, 0)
    forced, _, _ = tiny_anchor_kv(prepared_tiny, texts, labels, draws=1)
    forced.random_position = lambda j, draw: forced.records[j]["label_pos"][0]
    anchor = forced.score(scorer, [0, 1], query)
    same = forced.score(scorer, [0, 1], query, 0)
    np.testing.assert_allclose(same.label_logits, anchor.label_logits, rtol=1e-5, atol=1e-6)
    assert same.top_ids.tolist() == anchor.top_ids.tolist()
    assert not np.allclose(random.label_logits, anchor.label_logits, atol=1e-6)  # an unforced draw differs
    # the top ids are those of the full vocabulary at the last position of an ordinary forward pass
    full = [int(t) for t in kv.records[0]["input_ids"]] + query
    with torch.inference_mode():
        logits = scorer.model(input_ids=torch.as_tensor([full])).logits[0, -1]
    assert scorer.score(Prompt(full)).top_ids.tolist() == logits.topk(4).indices.tolist()


def test_anchor_kv_keeping_every_position_reproduces_the_full_prompt(prepared_tiny):
    """With all demonstration tokens kept (not only anchors) and one demonstration at slot 0, the
    cached continuation equals feeding demonstration + query as one prompt."""
    from iclscope.methods.taskspace.icicl.anchor_kv import AnchorKV
    from iclscope.model.loading import load_model
    from iclscope.model.prompts import assemble, label_token_ids, tokenize_pieces
    from iclscope.model.scoring import PromptScorer

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
    np.testing.assert_allclose(cached, scorer.score(Prompt(full)).label_logits, rtol=1e-4, atol=1e-4)
    one_piece = tokenize_pieces(tok, assemble(SPEC.prompts.template, "\n", [("I love it", " positive")], "so rude"))
    assert one_piece["text"].endswith("so rude\nSentiment:")


def test_tsft_resumes_to_the_same_loss_curve(prepared_tiny, tmp_path):
    spec_model, model_dir = prepared_tiny
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 2)))[0].T[:1]
    space = TaskSpace(
        basis=basis,
        mean=np.zeros(32),
        prototypes=np.array([[1.0], [-1.0]]),
        explained_var=np.ones(1),
        classes=("negative", "positive"),
        variant="class_mean",
        layer=1,
    )
    settings = TSFTSettings(
        steps=7,
        batch_size=4,
        n_train=16,
        n_val=6,
        n_test=8,
        checkpoint_every=2,
        eval_every=3,
        layer=1,
        lam=0.5,
        lr=1e-2,
    )
    full = train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "full")
    assert train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "killed", stop_after=5) == {
        "stopped_at": 5
    }
    assert (tmp_path / "killed" / "checkpoint" / "trainer_state.pt").exists()  # step 4 checkpoint
    resumed = train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "killed")
    a = pd.read_parquet(tmp_path / "full" / "train_log.parquet")
    b = pd.read_parquet(tmp_path / "killed" / "train_log.parquet")
    assert list(b["step"]) == list(range(1, 8))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert resumed["accuracy"] == full["accuracy"]
    assert (tmp_path / "full" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["lam"] == 0.5
    assert a["space"].notna().all() and (a["space"] > 0).all()
    # the held-out curve: step 0, every eval_every steps and the last step; the resumed run reproduces it
    ea = pd.read_parquet(tmp_path / "full" / "eval_log.parquet")
    eb = pd.read_parquet(tmp_path / "killed" / "eval_log.parquet")
    assert list(ea["step"]) == list(eb["step"]) == [0, 3, 6, 7]
    np.testing.assert_allclose(ea[["ce", "space", "accuracy"]], eb[["ce", "space", "accuracy"]], rtol=1e-5)
    assert not np.allclose(ea["ce"].iloc[0], ea["ce"].iloc[-1])  # the adapter moved the held-out loss
    assert full["heldout_ce_start"] == ea["ce"].iloc[0] and full["heldout_ce_end"] == ea["ce"].iloc[-1]


def test_tsft_held_out_losses_are_those_of_the_validation_rows(prepared_tiny, tmp_path):
    """Step 0 of the eval log is the base model (LoRA B = 0) on the n_val validation rows, computed
    here one prompt at a time with a plain forward pass; the validation rows are train-split rows
    that are not training rows."""
    import torch
    import torch.nn.functional as F

    from iclscope.methods.taskspace.tsft import tsft_rows, zero_shot_examples
    from iclscope.model.loading import load_model
    from iclscope.model.prompts import label_token_ids

    spec_model, model_dir = prepared_tiny
    space = identity_space(32, 1)
    settings = TSFTSettings(steps=2, batch_size=4, n_train=16, n_val=6, n_test=8, layer=1, eval_every=1, lam=0.5)
    summary = train_tsft(frame(), SPEC, model_dir, spec_model, space, settings, tmp_path / "run")
    log = pd.read_parquet(tmp_path / "run" / "eval_log.parquet")
    assert list(log["step"]) == [0, 1, 2]
    train_rows, val_rows, _ = tsft_rows(frame(), SPEC, settings)
    assert set(val_rows["split"]) == {"train"} and not set(val_rows["row_id"]) & set(train_rows["row_id"])
    assert sorted(summary["val_rows"]) == sorted(val_rows["row_id"])
    net, tok, _ = load_model(model_dir)
    ids = torch.as_tensor(label_token_ids(tok, SPEC.label_words, SPEC.prompts.template))
    with torch.inference_mode():
        ce = [
            F.cross_entropy(
                net(input_ids=torch.as_tensor([x["input_ids"]])).logits[0, -1, ids][None], torch.as_tensor([x["gold"]])
            ).item()
            for x in zero_shot_examples(tok, SPEC, val_rows)
        ]
    assert log["ce"].iloc[0] == pytest.approx(np.mean(ce), rel=1e-4)


def test_tsft_test_and_validation_prompts_do_not_depend_on_the_run_seed():
    from iclscope.methods.taskspace.tsft import tsft_rows

    rows = {seed: tsft_rows(frame(), SPEC, TSFTSettings(n_train=12, n_val=6, n_test=8, seed=seed)) for seed in (0, 7)}
    (train0, val0, test0), (train7, val7, test7) = rows[0], rows[7]
    assert list(test0["row_id"]) == list(test7["row_id"]) and list(val0["row_id"]) == list(val7["row_id"])
    assert list(train0["row_id"]) != list(train7["row_id"])  # training rows follow the seed
    other = dataclasses.replace(SPEC, seed=1)
    assert list(tsft_rows(frame(), other, TSFTSettings(n_train=12, n_val=6, n_test=8))[2]["row_id"]) != list(
        test0["row_id"]
    )  # ... the test rows the dataset's seed
    with pytest.raises(ConfigError, match="n_val"):
        tsft_rows(frame(), SPEC, TSFTSettings(n_val=1))


def _fake_run(directory, arm, seed, correct, test_rows, steps=(0, 5, 10)):
    directory.mkdir(parents=True)
    summary = {
        "lam": 0.5 if arm == "space" else 0.0,
        "seed": seed,
        "layer": 3,
        "accuracy": float(np.mean(correct)),
        "macro_f1": 0.5,
        "test_ce": 0.6,
        "train_seconds": 12.0,
        "eval_seconds": 2.0,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame(
        {
            "step": list(steps),
            "ce": np.linspace(0.9, 0.4, len(steps)) + seed,
            "space": np.linspace(2.0, 1.0, len(steps)),
            "accuracy": np.linspace(0.5, 0.7, len(steps)),
            "seconds": 0.5,
        }
    ).to_parquet(directory / "eval_log.parquet")
    pd.DataFrame({"step": range(1, steps[-1] + 1), "loss": 1.0, "ce": 0.5, "space": 1.0}).to_parquet(
        directory / "train_log.parquet"
    )
    pd.DataFrame({"test_row": test_rows, "gold": 0, "pred": 0, "correct": np.asarray(correct, bool)}).to_parquet(
        directory / "eval.parquet"
    )
    return directory


def test_tsft_summary_table_pairs_the_arms_over_prompts_and_seeds(tmp_path):
    from iclscope.core.stats import paired_difference
    from iclscope.methods.taskspace.tsft_report import summary_table

    rng = np.random.default_rng(3)
    test_rows = np.arange(100, 130)
    correct = {(arm, seed): rng.random(30) < p for arm, p in (("space", 0.75), ("baseline", 0.55)) for seed in (0, 1)}
    dirs = []
    for (arm, seed), c in correct.items():
        order = rng.permutation(30) if arm == "space" else np.arange(30)  # the pairing goes by test row
        dirs.append(_fake_run(tmp_path / f"{arm}-seed{seed}", arm, seed, c[order], test_rows[order]))
    table = summary_table(dirs, model="m", dataset="d", n_boot=500)
    gain = table[table.arm == "space-baseline"]
    pooled = gain[gain.seed.isna()].set_index("metric")
    direct = paired_difference(
        np.stack([correct[("space", s)] for s in (0, 1)]),
        np.stack([correct[("baseline", s)] for s in (0, 1)]),
        n_boot=500,
        seed=0,
    )
    assert pooled.loc["gain", "value"] == pytest.approx(direct.diff)
    assert (pooled.loc["gain_lo", "value"], pooled.loc["gain_hi", "value"]) == pytest.approx(
        (direct.diff_lo, direct.diff_hi)
    )
    assert (pooled.loc["gain", "ci_low"], pooled.loc["gain", "ci_high"]) == pytest.approx(
        (direct.diff_lo, direct.diff_hi)
    )
    assert pooled.loc["p_value", "value"] == pytest.approx(direct.p_value)
    # Holm over the table's three paired tests (two seeds and the pooled one)
    from iclscope.core.stats import holm

    raw = gain[gain.metric == "p_value"]["value"].to_numpy()
    np.testing.assert_allclose(gain[gain.metric == "p_holm"]["value"].to_numpy(), holm(raw))
    assert (pooled.loc["wins", "value"], pooled.loc["losses", "value"], pooled.loc["n_paired", "value"]) == (
        direct.a_only,
        direct.b_only,
        60,
    )
    for seed in (0, 1):
        one = gain[gain.seed == seed].set_index("metric")["value"]
        d = paired_difference(correct[("space", seed)], correct[("baseline", seed)], n_boot=500, seed=0)
        assert one["gain"] == pytest.approx(d.diff) and one["p_value"] == pytest.approx(d.p_value)
        assert d.test == "mcnemar_exact"
    per_arm = table[table.arm == "space"].set_index(["metric", "seed"])["value"]
    assert per_arm[("heldout_ce_start", 1)] == pytest.approx(1.9) and per_arm[("heldout_ce_end", 1)] == pytest.approx(
        1.4
    )
    assert per_arm[("accuracy", 0)] == pytest.approx(correct[("space", 0)].mean())
    from iclscope.core.runs import read_runs
    from iclscope.report.plots import plot_tsft

    plot_tsft(read_runs(dirs), table, tmp_path / "tsft.png")  # the figure renders from these tables
    assert (tmp_path / "tsft.png").stat().st_size > 0
    # a run that scored other test prompts cannot be paired
    _fake_run(tmp_path / "odd", "space", 2, correct[("space", 0)], test_rows + 1)
    _fake_run(tmp_path / "odd-base", "baseline", 2, correct[("baseline", 0)], test_rows)
    with pytest.raises(ValueError, match="other test prompts"):
        summary_table(dirs + [tmp_path / "odd", tmp_path / "odd-base"], model="m", dataset="d", n_boot=10)


@pytest.mark.parametrize("lam", [0.0])
def test_tsft_space_loss_gradient_flows(prepared_tiny, tmp_path, lam):
    """With λ = 0 the space loss is still logged but does not move training; λ > 0 changes the curve."""
    spec_model, model_dir = prepared_tiny
    space = TaskSpace(
        basis=np.eye(32)[:1],
        mean=np.zeros(32),
        prototypes=np.array([[1.0], [-1.0]]),
        explained_var=np.ones(1),
        classes=("negative", "positive"),
        variant="class_mean",
        layer=1,
    )
    base = TSFTSettings(steps=3, batch_size=4, n_train=16, n_val=6, n_test=8, layer=1, lam=lam, lr=1e-2)
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

    from iclscope.methods.taskspace.space import fit_task_space
    from iclscope.methods.taskspace.tsft import balanced_sample, fit_on_states, zero_shot_examples
    from iclscope.model.loading import load_model
    from iclscope.model.prompts import label_token_ids

    spec_model, model_dir = prepared_tiny
    net, tok, manifest = load_model(model_dir)
    rows = balanced_sample(frame()[frame().split == "train"], ["negative", "positive"], 12, 0, "t")
    examples = zero_shot_examples(tok, SPEC, rows)
    label_ids = torch.as_tensor(label_token_ids(tok, SPEC.label_words, SPEC.prompts.template))
    space = fit_on_states(
        net, tok, examples, label_ids, 1, manifest["n_layers"], ["negative", "positive"], 5, 0.9, None
    )
    with torch.inference_mode():
        states = [
            net(input_ids=torch.as_tensor([x["input_ids"]]), output_hidden_states=True).hidden_states[1][0, -1]
            for x in examples
        ]
    naive = fit_task_space(
        torch.stack(states).numpy(),
        [["negative", "positive"][x["gold"]] for x in examples],
        ["negative", "positive"],
        variant="naive",
        layer=1,
    )
    np.testing.assert_allclose(space.mean, naive.mean, atol=1e-5)
    np.testing.assert_allclose(np.abs(space.basis), np.abs(naive.basis), atol=1e-4)  # up to sign
    summary = train_tsft(
        frame(),
        SPEC,
        model_dir,
        spec_model,
        None,
        TSFTSettings(steps=1, batch_size=4, n_train=12, n_val=6, n_test=8, layer=1),
        tmp_path / "run",
    )
    assert summary["task_space_variant"] == "train_zero_shot" and summary["task_space_k"] == 1


ARM_SETTINGS = {  # the shape of settings.arm_settings, as evaluate_icicl's meta holds it
    "zero_shot": {},
    "full_icl": {"k": 4},
    "icicl_soft": {"k": 4, "inject_layer": 3, "state": "last", "task_space": "pool"},
    "icicl_identity": {"k": 4, "inject_layer": 3, "state": "last", "task_space": "identity"},
    "task_vector": {"k": 4, "layer": 5, "state": "last"},
    "anchor_kv": {"k": 4, "keep": "anchors"},
    "hidden_random": {"k": 4, "keep": "anchors", "draws": 2},
}


def test_icicl_table_and_figures_from_constructed_results(tmp_path):
    """The metric table carries every arm's accuracy interval and paired rows; both figures render."""
    from iclscope.methods.taskspace.icicl.tables import metric_table, summarise
    from iclscope.report.plots import plot_icicl, plot_icicl_sweep

    rng = np.random.default_rng(1)
    rows = []
    for arm, draws in (
        ("full_icl", [-1]),
        ("zero_shot", [-1]),
        ("icicl_soft", [-1]),
        ("icicl_identity", [-1]),
        ("task_vector", [-1]),
        ("anchor_kv", [-1]),
        ("hidden_random", [0, 1]),
    ):
        for d in draws:
            for t in range(40):
                gold = t % 2
                pred = gold if rng.random() < 0.75 else 1 - gold
                rows.append(
                    {
                        "test_row": t,
                        "arm": arm,
                        "draw": d,
                        "gold": gold,
                        "pred": pred,
                        "correct": pred == gold,
                        "tokens": 10,
                        "timed": t < 5,
                        "seconds": 0.01 * (1 + (arm == "full_icl")) if t < 5 else np.nan,
                        "top_ids": [1, 2, 3 + pred],
                    }
                )
    per_example = add_loyalty(pd.DataFrame(rows))
    table = metric_table(
        summarise(per_example, ["negative", "positive"], 100),
        paired_table(per_example, 100),
        model="m",
        dataset="d",
        arm_settings=ARM_SETTINGS,
    )
    acc = table[table.metric == "accuracy"].set_index("arm")
    assert (acc["ci_low"] <= acc["value"]).all() and (acc["value"] <= acc["ci_high"]).all()
    assert table[table.metric == "speedup_vs_full_icl"].set_index("arm").at["icicl_soft", "value"] == 2
    assert set(table[table.metric == "accuracy_diff"]["arm"]) == {
        f"{arm}-full_icl"
        for arm in (
            "zero_shot",
            "icicl_soft",
            "icicl_identity",
            "task_vector",
            "anchor_kv",
            "hidden_random",
            "hidden_random_top",
        )
    } | {"icicl_soft-icicl_identity", "icicl_soft-task_vector", "icicl_soft-anchor_kv", "icicl_soft-zero_shot"}
    # each column means one thing: an arm's own layer and task space, none where it has none or for a pair
    by_arm = acc[["layer", "variant"]]
    assert by_arm.loc["icicl_soft"].tolist() == [3, "pool"] and by_arm.loc["icicl_identity"].tolist() == [3, "identity"]
    assert by_arm.loc["task_vector", "layer"] == 5 and pd.isna(by_arm.loc["task_vector", "variant"])
    assert by_arm.drop(["icicl_soft", "icicl_identity", "task_vector"]).isna().all().all()
    assert table[table.arm.str.contains("-")][["layer", "variant"]].isna().all().all()
    assert set(table["position"]) == {"query"} and table["task"].isna().all()
    plot_icicl(table, tmp_path / "icicl.png")
    sweep = pd.DataFrame(
        [{"arm": "zero_shot", "accuracy": 0.6, "n_val": 8}, {"arm": "full_icl", "accuracy": 0.9}]
        + [
            {
                "arm": "icicl_soft",
                "layer": layer,
                "state": st,
                "task_space": sp,
                "label_line": ll,
                "accuracy": rng.random(),
                "tokens": 20 - 5 * (not ll),
                "n_val": 8,
                "chosen": False,
            }
            for layer in (2, 3)
            for st in ("last", "label")
            for sp in ("pool", "identity")
            for ll in (True, False)
        ]
    )
    sweep.loc[5, "chosen"] = True
    plot_icicl_sweep(sweep, tmp_path / "sweep.png")
    assert (tmp_path / "icicl.png").stat().st_size > 10_000 and (tmp_path / "sweep.png").stat().st_size > 10_000
