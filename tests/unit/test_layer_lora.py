"""First-n vs last-n layer LoRA (iclscope.methods.decodability.layer_lora) on tiny random models: which blocks get
adapters, the answer-token loss mask, training, merging, resume, and the summary table."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from iclscope.core.config import ConfigError, DatasetSpec, ModelSpec, PromptSpec
from iclscope.core.tables import write_table
from iclscope.methods.decodability.layer_lora import (
    LayerLoRASettings,
    adapter_layers,
    answer_loss,
    n_adapted,
    prompts_at_shots,
    summary_table,
    train_layer_lora,
    train_shots,
    training_examples,
)
from iclscope.model.extract import ExtractSettings, extract
from iclscope.model.loading import load_model
from iclscope.model.lora import attach_lora, trainable_parameters
from iclscope.model.models import load_tokenizer, prepare_model
from iclscope.model.prompts import build_prompts

WORDS = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late", "love", "rude", "great", "flight", "movie", "so"]
TASKS = {
    "reverse": lambda w: w[::-1],
    "first": lambda w: w[0],
    "repeat": lambda w: f"{w} {w}",
    "Null": lambda w: WORDS[(WORDS.index(w) + 5) % len(WORDS)],
}
SPEC = DatasetSpec(
    name="w",
    source="words",
    kind="generation",
    prompts=PromptSpec(template="{text} ->{label}", shots=(2, 1), seeds=(3,), n_test=4),
)


def frame():
    rows = [
        {"text": w, "label": fn(w), "split": "test" if i >= 9 else "train", "task": task}
        for task, fn in TASKS.items()
        for i, w in enumerate(WORDS)
    ]
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    return df


@pytest.fixture(scope="module")
def deep_tiny(tiny_model_dir, tmp_path_factory):
    """The tiny model's tokenizer with a random 5-block model of the same kind, prepared. Weights are
    drawn 10x wider than the default 0.02: the default random head caps the logits (after the final
    norm) at a fraction of a nat, so no adapter could lower the answer loss much."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("deep")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 5  # GPT-2's n_layer is an alias
    config.initializer_range = 0.2
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "src")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out / "src")
    spec = ModelSpec(
        name=f"deep-{tiny_model_dir.name}", source="local", path=str(out / "src"), batch_size=4, max_batch_tokens=512
    )
    prepare_model(spec, out / "prepared")
    return spec, out / "prepared"


def lora_blocks(net) -> dict[int, int]:
    """Block index -> number of LoRA-adapted modules, read from the parameter names."""
    counts = {}
    for name, _ in net.named_parameters():
        if "lora_A" in name:
            block = int(re.search(r"\.(?:layers|h)\.(\d+)\.", name).group(1))
            counts[block] = counts.get(block, 0) + 1
    return counts


def test_arms_adapt_exactly_the_first_or_last_blocks_with_equal_budget(deep_tiny):
    spec, model_dir = deep_tiny
    settings = LayerLoRASettings(n_layers=2)
    assert n_adapted(LayerLoRASettings(), 32) == 10 and n_adapted(LayerLoRASettings(), 5) == 1
    assert adapter_layers("first", 2, 5) == [0, 1] and adapter_layers("last", 2, 5) == [3, 4]
    counts = {}
    for arm in ("first", "last"):
        base, _, manifest = load_model(model_dir)
        r = 4
        block0 = [
            m
            for name, m in base.named_modules()
            if re.search(r"\.(?:layers|h)\.0\.", name) and type(m).__name__ in ("Linear", "Conv1D")
        ]
        linear_per_block = len(block0)  # Llama 7 (q k v o gate up down), GPT-2 4 (c_attn c_proj c_fc c_proj)
        expected = sum(r * (m.weight.shape[0] + m.weight.shape[1]) for m in block0)
        net = attach_lora(
            base,
            r=r,
            alpha=4,
            dropout=0.1,
            layers=adapter_layers(arm, n_adapted(settings, manifest["n_layers"]), manifest["n_layers"]),
        )
        blocks = lora_blocks(net)
        assert sorted(blocks) == ([0, 1] if arm == "first" else [3, 4])
        assert set(blocks.values()) == {linear_per_block}  # every projection of those blocks, no other
        counts[arm] = trainable_parameters(net)
        assert counts[arm] == 2 * expected
    assert counts["first"] == counts["last"]
    with pytest.raises(ValueError, match="n_layers"):
        n_adapted(LayerLoRASettings(n_layers=6), 5)


def test_loss_mask_covers_exactly_the_answer_tokens(prepared_tiny):
    spec_model, model_dir = prepared_tiny
    tokenizer, _ = load_tokenizer(model_dir)
    examples = training_examples(frame(), SPEC, tokenizer, n=9, shots=1, seed=0)
    assert {x["task"] for x in examples} == {"reverse", "first", "repeat"}  # Null left out, tasks in turn
    df = frame().set_index("row_id")
    for x in examples:
        row = df.loc[x["row_id"]]
        assert row["split"] == "train"
        ids = x["input_ids"]
        # the prompt part is exactly what the tokenizer gives for the prompt text alone ...
        prompt_text = tokenizer.decode(ids[: x["answer_start"]], skip_special_tokens=True)
        assert prompt_text.endswith(f"\n{row['text']} ->")
        assert tokenizer(prompt_text)["input_ids"] == ids[: x["answer_start"]]
        # ... and the scored tokens spell the answer and the separator that ends it
        assert tokenizer.decode(ids, skip_special_tokens=True) == prompt_text + f" {row['label']}\n"
        assert x["n_answer"] == len(ids) - x["answer_start"]
    # the batched, left-padded loss equals the CE over those tokens from unpadded full forward passes
    net, padded, _ = load_model(model_dir)  # load_model gives the tokenizer a pad token
    total, count = 0.0, 0
    with torch.no_grad():
        for x in examples:
            logits = net(input_ids=torch.tensor([x["input_ids"]])).logits[0]
            a = x["answer_start"]
            targets = torch.tensor(x["input_ids"][a:])
            total += F.cross_entropy(logits[a - 1 : -1], targets, reduction="sum").item()
            count += len(targets)
        loss, n = answer_loss(net, examples, padded.pad_token_id)
    assert n == count
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_training_lowers_answer_loss_and_merged_model_matches_adapter(deep_tiny, tmp_path):
    from peft import PeftModel

    spec_model, model_dir = deep_tiny
    settings = LayerLoRASettings(steps=12, batch_size=4, n_train=24, n_monitor=12, lr=1e-2, checkpoint_every=5)
    summary = train_layer_lora(
        frame(), SPEC, model_dir, spec_model, settings, "last", tmp_path / "run", merged_dir=tmp_path / "merged"
    )
    assert summary["layers"] == [4] and summary["shots"] == 1  # 5 blocks: n = 5 // 3
    assert summary["answer_loss_after"] < 0.8 * summary["answer_loss_before"]
    assert not (tmp_path / "run" / "checkpoint").exists()
    merged, tok, manifest = load_model(tmp_path / "merged")
    assert manifest["name"].endswith("-lora-last") and manifest["source"]["layer_lora"]["layers"] == [4]
    base, _, base_manifest = load_model(model_dir)
    assert manifest["weights_sha256"] != base_manifest["weights_sha256"]
    ids = torch.tensor([training_examples(frame(), SPEC, tok, 1, 1, 5)[0]["input_ids"]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()(input_ids=ids).logits
        merged_logits = merged(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=1e-4)
    assert (merged_logits - plain).abs().max() > 1e-2  # the adapter changed the model


def test_resume_after_a_kill_reproduces_the_run(prepared_tiny, tmp_path):
    from safetensors.torch import load_file

    spec_model, model_dir = prepared_tiny
    settings = LayerLoRASettings(steps=6, batch_size=4, n_train=16, n_monitor=8, lr=1e-2, checkpoint_every=2)
    full = train_layer_lora(frame(), SPEC, model_dir, spec_model, settings, "first", tmp_path / "full")
    ckpt = tmp_path / "resume"
    assert train_layer_lora(
        frame(), SPEC, model_dir, spec_model, settings, "first", tmp_path / "killed", checkpoint_dir=ckpt, stop_after=3
    ) == {"stopped_at": 3}
    assert json.loads((ckpt / "train_log.json").read_text())[-1]["step"] == 2
    resumed = train_layer_lora(
        frame(), SPEC, model_dir, spec_model, settings, "first", tmp_path / "killed", checkpoint_dir=ckpt
    )
    a = pd.read_parquet(tmp_path / "full" / "train_log.parquet")
    b = pd.read_parquet(tmp_path / "killed" / "train_log.parquet")
    assert list(b["step"]) == list(range(1, 7))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert resumed["answer_loss_after"] == pytest.approx(full["answer_loss_after"], rel=1e-5)
    wa = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    assert not ckpt.exists()


def test_summary_table_compares_arms_with_base(prepared_tiny, tmp_path):
    from iclscope.report.plots import plot_layer_lora

    spec_model, model_dir = prepared_tiny
    tokenizer, manifest = load_tokenizer(model_dir)
    table, meta = build_prompts(frame(), SPEC, tokenizer, manifest["context_length"])
    prompts = tmp_path / "prompts.parquet"
    write_table(table, prompts, meta)
    settings = LayerLoRASettings(steps=4, batch_size=4, n_train=8, n_monitor=4, lr=1e-3)
    extract_settings = ExtractSettings(max_new_tokens=4)
    extract(prompts, model_dir, tmp_path / "base.h5", spec_model, extract_settings)
    # the arms see the training shot count only (rule layer_lora_prompts)
    trained = tmp_path / "trained_shots.parquet"
    assert prompts_at_shots(prompts, trained, train_shots(SPEC)) == (table["shots"] == 1).sum() > 0
    with pytest.raises(ConfigError, match="no 7-shot prompts"):
        prompts_at_shots(prompts, tmp_path / "none.parquet", 7)
    runs = {}
    for arm in ("first", "last"):
        train_layer_lora(
            frame(), SPEC, model_dir, spec_model, settings, arm, tmp_path / arm, merged_dir=tmp_path / f"{arm}.model"
        )
        extract(trained, tmp_path / f"{arm}.model", tmp_path / f"{arm}.h5", spec_model, extract_settings)
        runs[arm] = (tmp_path / arm, tmp_path / f"{arm}.h5")
    out = summary_table(
        tmp_path / "base.h5", runs, model="m", dataset="w", decodability={"k": 3, "metrics": ["euclidean"], "n_boot": 0}
    )
    assert set(out.arm) == {"base", "first", "last"} and set(out.family) == {"layer_lora"}
    acc = out[out.metric == "accuracy"].set_index(["arm", "seed", "shots", "task"])["value"]
    delta = out[out.metric == "delta_accuracy"]
    assert len(delta) == 2 * (len(TASKS) + 1) and set(delta.shots) == {1}  # 2 arms x (tasks + 'all'), 1 shot
    for r in delta.itertuples():
        assert r.value == pytest.approx(acc[(r.arm, r.seed, r.shots, r.task)] - acc[("base", r.seed, r.shots, r.task)])
    dec = out[(out.metric == "decodability_euclidean") & (out.task == "all")]
    assert dec.groupby(["arm", "shots"]).size().eq(manifest["n_layers"] + 1).all()
    peak = out[out.metric == "decodability_euclidean_peak"].set_index(["arm", "shots"])["value"]
    assert peak[("base", 1)] == pytest.approx(dec[(dec.arm == "base") & (dec.shots == 1)]["value"].max())
    assert sorted(out[out.metric == "adapted_block"]["layer"]) == [1, 2]  # residual indices written by blocks 0, 1
    plot_layer_lora(out, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
