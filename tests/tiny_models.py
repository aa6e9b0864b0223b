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
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(CORPUS, trainer)
        fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
        tok.train_from_iterator(CORPUS, trainer)
        fast = LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  add_bos_token=True)
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_model(kind: str, out_dir: Path) -> Path:
    """Save a random 2-layer model + tokenizer of `kind` ('llama' | 'gpt2') to out_dir."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = train_tokenizer("gpt2" if kind == "gpt2" else "llama", out_dir)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)
    return out_dir


