"""IC-ICL arms and TS-FT on tiny random models (mechanics, not accuracy)."""

import json

import numpy as np
import pandas as pd
import pytest

from iclscope.config import DatasetSpec, PromptSpec
from iclscope.icicl import ICICLSettings, evaluate_icicl, retrieve, soft_prompt
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
    settings = ICICLSettings(k=2, pool_size=10, n_test=6, inject_layer=1, embed_layer=1, warmup=1, repeats=1)
    per_example, summary, meta = evaluate_icicl(frame(), SPEC, model_dir, spec_model, spaces, settings)
    assert set(per_example["arm"]) == {"zero_shot", "full_icl", "icicl_soft", "icicl_identity", "task_vector",
                                       "anchor_kv"}
    soft = per_example[per_example.arm == "icicl_soft"].reset_index()
    ident = per_example[per_example.arm == "icicl_identity"].reset_index()
    np.testing.assert_allclose(soft[["logit_negative", "logit_positive"]], ident[["logit_negative", "logit_positive"]],
                               rtol=1e-5, atol=1e-5)
    tokens = summary.set_index("arm")["tokens"]
    assert tokens["icicl_soft"] < tokens["full_icl"] and tokens["task_vector"] == tokens["zero_shot"]
    assert meta["pool_states_seconds"] > 0 and len(per_example) == 6 * 6
    assert tokens["anchor_kv"] <= tokens["zero_shot"] and meta["anchor_kv_entries"] >= 2  # new tokens only


def test_anchor_kv_keeping_every_position_reproduces_the_full_prompt(prepared_tiny):
    """With all demonstration tokens kept (not only anchors) and one demonstration at slot 0, the
    cached continuation equals feeding demonstration + query as one prompt."""
    from iclscope.icicl import AnchorKV, PromptScorer
    from iclscope.models import load_model
    from iclscope.prompts import assemble, label_token_ids, tokenize_pieces

    spec_model, model_dir = prepared_tiny
    net, tok, manifest = load_model(model_dir, attn_implementation="iclscope")
    kv = AnchorKV(net, tok, SPEC, ["I love it"], ["positive"])
    kv.kept = lambda j, slot: list(range(len(kv.records[j]["input_ids"])))  # keep everything
    ids = label_token_ids(tok, SPEC.label_words, SPEC.prompts.template)
    scorer = PromptScorer(net, tok, ids, manifest["n_layers"])
    query = tok("Tweet: so rude\nSentiment:", add_special_tokens=False)["input_ids"]
    cache, _ = kv.cache_for([0])
    cached = scorer.label_logits_on_cache(query, cache, kv.stride)
    full = [int(t) for t in kv.records[0]["input_ids"]] + query  # the same tokens as one prompt
    np.testing.assert_allclose(cached, scorer.label_logits(full), rtol=1e-4, atol=1e-4)
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
