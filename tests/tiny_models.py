"""Tiny randomly initialised Llama and GPT-2 models with their own tokenizers, for tests.

Nothing here reaches a hub: the tokenizers are trained on the spot (byte-level BPE as GPT-2
uses, and a Metaspace '▁' BPE as SentencePiece/Llama tokenizers use) and saved with a random
model into a local directory, which iclscope then loads as `source: local`.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Tweet: I love this car so much\nSentiment: positive",
    "Tweet: the flight was late again and the crew was rude\nSentiment: negative",
    "Review: great movie, fun plot\nSentiment: neutral",
    "cat -> c\ndog -> DOG\nbird -> bird bird\n01011 10010 -> 00010",
    "Question: what is the capital of France?\nAnswer Type: Location",
] * 20


def train_tokenizer(kind: str, out_dir: Path):
    """A small BPE tokenizer of the GPT-2 (byte-level) or Llama (metaspace) kind, saved to out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast, LlamaTokenizerFast

    if kind == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(CORPUS, trainer)
        fast = GPT2TokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
        tok.train_from_iterator(CORPUS, trainer)
        fast = LlamaTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
        )
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_model(kind: str, out_dir: Path) -> Path:
    """Save a random 2-layer model + tokenizer of `kind` ('llama' | 'gpt2') to out_dir."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = train_tokenizer("gpt2" if kind == "gpt2" else "llama", out_dir)
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- the support matrix
# Tiny random configs (2 layers, d_model 32, vocab 400) of every architecture in the support
# matrix (tests/unit/test_architectures.py). Sliding windows are shorter than the test prompts so
# that they matter; soft-capping and scale overrides are set where an architecture has them.
_COMMON = {
    "vocab_size": 400,
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 400},
    "gptj": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "rotary_dim": 4, "vocab_size": 400},
    "codegen": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 128,
        "n_ctx": 128,
        "rotary_dim": 4,
        "vocab_size": 400,
    },
    "gpt_neo": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "max_position_embeddings": 128,
        "attention_types": [[["global", "local"], 1]],
        "window_size": 4,
        "vocab_size": 400,
    },
    "gpt_neox": {**_COMMON},
    "llama": {**_COMMON, "num_key_value_heads": 2},
    "mistral": {**_COMMON, "num_key_value_heads": 2, "sliding_window": 4},
    "mixtral": {
        **_COMMON,
        "num_key_value_heads": 2,
        "num_local_experts": 2,
        "num_experts_per_tok": 1,
        "sliding_window": 4,
    },
    "qwen2": {**_COMMON, "num_key_value_heads": 2},
    "qwen3": {**_COMMON, "num_key_value_heads": 2, "head_dim": 8},
    "gemma": {**_COMMON, "num_key_value_heads": 2, "head_dim": 8},
    "gemma2": {
        **_COMMON,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 4,
        "attn_logit_softcapping": 0.5,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 4,
        "initializer_range": 0.5,
    },
    "gemma3_text": {
        **_COMMON,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 4,
        "initializer_range": 0.2,
    },
    "phi3": {**_COMMON, "num_key_value_heads": 2},
    "olmo2": {**_COMMON, "num_key_value_heads": 2},
    "opt": {
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "word_embed_proj_dim": 32,
        "max_position_embeddings": 128,
        "vocab_size": 400,
    },
    "falcon": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 400,
        "max_position_embeddings": 128,
    },
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 400, "initializer_range": 0.3},
    "stablelm": {**_COMMON, "num_key_value_heads": 2},
    "granite": {
        **_COMMON,
        "num_key_value_heads": 2,
        "attention_multiplier": 0.3,
        "residual_multiplier": 0.5,
        "embedding_multiplier": 2.0,
        "logits_scaling": 1.5,
    },
    "mpt": {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "expansion_ratio": 2,
        "max_seq_len": 128,
        "vocab_size": 400,
        "attn_config": {"clip_qkv": 0.3, "softmax_scale": 0.4},
    },
    "xglm": {
        "d_model": 32,
        "num_layers": 2,
        "attention_heads": 4,
        "ffn_dim": 64,
        "max_position_embeddings": 128,
        "vocab_size": 400,
        "init_std": 0.3,
    },
    # the AttentionInterface decoders that need nothing beyond the common sizes (and a few extras)
    **{
        mt: {**_COMMON, "num_key_value_heads": 2}
        for mt in (
            "phi",
            "olmo",
            "olmo3",
            "cohere",
            "gpt_bigcode",
            "persimmon",
            "smollm3",
            "granitemoe",
            "granitemoeshared",
            "glm",
            "glm4",
            "nemotron",
            "arcee",
            "apertus",
            "seed_oss",
            "exaone4",
            "biogpt",
        )
    },
    **{mt: {**_COMMON, "num_key_value_heads": 2, "head_dim": 8} for mt in ("helium", "hunyuan_v1_dense")},
    "ministral": {**_COMMON, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4},
    "cohere2": {**_COMMON, "num_key_value_heads": 2, "sliding_window": 4},
    "starcoder2": {**_COMMON, "num_key_value_heads": 2, "sliding_window": 4},
    "vaultgemma": {
        **_COMMON,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 4,
        "attn_logit_softcapping": 0.5,
        "initializer_range": 0.5,
    },
    "qwen2_moe": {
        **_COMMON,
        "num_key_value_heads": 2,
        "num_experts": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
        "num_experts_per_tok": 1,
    },
    "qwen3_moe": {
        **_COMMON,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_experts": 2,
        "moe_intermediate_size": 32,
        "num_experts_per_tok": 1,
    },
    "olmoe": {**_COMMON, "num_key_value_heads": 2, "num_experts": 2, "num_experts_per_tok": 1},
    "phimoe": {**_COMMON, "num_key_value_heads": 2, "num_local_experts": 2, "num_experts_per_tok": 1},
    **{
        mt: {
            **_COMMON,
            "num_key_value_heads": 4,
            "kv_lora_rank": 16,
            "q_lora_rank": None,
            "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4,
            "v_head_dim": 8,
            "n_routed_experts": 2,
            "num_experts_per_tok": 1,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
            "n_group": 1,
            "topk_group": 1,
        }
        for mt in ("deepseek_v2", "deepseek_v3")
    },  # multi-head latent attention: q/k 8 wide, v 8 wide
    "dbrx": {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "max_seq_len": 128,
        "vocab_size": 400,
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 2, "moe_top_k": 1},
    },
    "gpt_oss": {
        **_COMMON,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_local_experts": 2,
        "num_experts_per_tok": 1,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "initializer_range": 0.2,
    },
}


def tiny_config(model_type: str, **overrides):
    """A transformers config of `model_type` with the tiny sizes above (plus overrides)."""
    from transformers import AutoConfig

    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}
    return AutoConfig.for_model(model_type, **{**ids, **TINY_CONFIGS[model_type], **overrides})


def make_tiny_arch(
    model_type: str, out_dir: Path, tokenizer_dir: Path | None = None, seed: int = 0, **overrides
) -> Path:
    """Save a random tiny causal LM of `model_type` (a key of TINY_CONFIGS) to out_dir, with the
    tokenizer files of `tokenizer_dir` copied next to it (a GPT-2 kind one is trained when None)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        train_tokenizer("gpt2", out_dir)
    else:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy(f, out_dir / f.name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=torch.float32)
    model.save_pretrained(out_dir)
    return out_dir
