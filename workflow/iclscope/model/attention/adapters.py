"""The adapter path: architectures that compute attention inline in their attention module
(GPT-J, CodeGen, GPT-Neo, Falcon, Bloom, MPT, XGLM), outside transformers' AttentionInterface.

`install_adapters` (run by `loading.load_model`, which loads these models with eager attention)
swaps that module's score/softmax step (`_attn`, or `forward` where the softmax is inline) for one
that computes the same thing and calls the same reads and edits as the interface path: ALiBi,
local-window masks and the module's own scale are passed on as an additive bias or a scaling.
Each adapter computes exactly the module's own eager attention (same scale, bias, mask;
tests/unit/test_architectures.py checks it against `output_attentions` of the unadapted model)
through `_adapted_attention`. `iclscope.core.architectures` says which architecture takes this path.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import torch
from torch import nn

from iclscope.core.config import ConfigError
from iclscope.model.attention.eager import eager_attention, full_mask
from iclscope.model.capture import active_recorder


def _adapted_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    bias: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads of the active Recorder, then the one eager attention with its edit: ([B, H, Tq, dv], weights)."""
    rec = active_recorder()
    if rec is not None:
        rec.observe(module, query, key, attention_mask, scaling, bias=bias)
    out, weights = eager_attention(
        module,
        query,
        key,
        value,
        attention_mask,
        scaling,
        bias=bias,
        dropout=dropout,
        edit=rec.edit if rec is not None else None,
    )
    return out, weights.to(value.dtype)


def _rotary_attn(self, query, key, value, attention_mask=None):
    """GPT-J / CodeGen `_attn`: softmax(q·kᵀ / √dh + mask) (CodeGen divides the mask too: masked
    entries stay masked, kept ones get 0 either way)."""
    return _adapted_attention(
        self, query, key, value, attention_mask, 1.0 / float(self.scale_attn), dropout=self.attn_dropout.p
    )


def _gpt_neo_attn(self, query, key, value, attention_mask=None):
    """GPT-Neo `_attn`: unscaled q·kᵀ, the module's causal (global) or banded (local window) mask, + mask."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    allowed = self.bias[:, :, k_len - q_len : k_len, :k_len]
    window = torch.zeros(allowed.shape, device=query.device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    mask = window if attention_mask is None else window + full_mask(attention_mask, q_len, k_len, query.device)
    return _adapted_attention(self, query, key, value, mask, 1.0, dropout=self.attn_dropout.p)


def _falcon_forward(
    self,
    hidden_states,
    alibi,
    attention_mask,
    position_ids=None,
    layer_past=None,
    use_cache=False,
    output_attentions=False,
    position_embeddings=None,
    **kwargs,
):
    """FalconAttention.forward of transformers 5 (rotary; ALiBi Falcons are refused, see
    iclscope.core.architectures) with the score/softmax step through `_adapted_attention`."""
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    if alibi is not None:
        # unreachable through load_model: architectures.check_supported refuses ALiBi Falcons up front
        raise ConfigError("ALiBi Falcon (config.alibi=True) is refused: see iclscope.core.architectures")
    fused_qkv = self.query_key_value(hidden_states)
    num_kv_heads = self.num_heads if self.new_decoder_architecture else self.num_kv_heads
    query, key, value = self._split_heads(fused_qkv)
    batch_size, query_length, _, _ = query.shape
    query = query.transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
    key = key.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
    value = value.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    out, weights = _adapted_attention(self, query, key, value, attention_mask, 1.0 / math.sqrt(self.head_dim))
    out = out.permute(0, 2, 1, 3).reshape(batch_size, query_length, self.num_heads * self.head_dim)
    return self.dense(out), weights


def _bloom_forward(
    self,
    hidden_states,
    residual,
    alibi,
    attention_mask,
    layer_past=None,
    use_cache=False,
    output_attentions=False,
    **kwargs,
):
    """BloomAttention.forward of transformers 5 with the score/softmax step through `_adapted_attention`:
    scores = β·ALiBi + q·kᵀ/√dh (+ mask), ALiBi passed on as the additive bias [B, H, 1, Tk]."""
    from transformers.models.bloom.modeling_bloom import dropout_add

    batch_size, q_length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    bias = alibi.view(batch_size, self.num_heads, 1, -1) * self.beta
    out, weights = _adapted_attention(
        self, query, key, value, attention_mask, self.inv_norm_factor, bias=bias, dropout=self.attention_dropout.p
    )
    context = self._merge_heads(out.flatten(0, 1))
    if self.pretraining_tp > 1 and self.slow_but_exact:
        slices = self.hidden_size / self.pretraining_tp
        output = torch.zeros_like(context)
        for i in range(self.pretraining_tp):
            output = output + nn.functional.linear(
                context[:, :, int(i * slices) : int((i + 1) * slices)],
                self.dense.weight[:, int(i * slices) : int((i + 1) * slices)],
            )
    else:
        output = self.dense(context)
    return dropout_add(output, residual, self.hidden_dropout, self.training), weights


def _mpt_forward(self, hidden_states, position_bias, past_key_values=None, attention_mask=None, **kwargs):
    """MptAttention.forward of transformers 5: clip_qkv, softmax_scale, ALiBi `position_bias` [H, 1, S]
    (sliced as MPT slices it) as the additive bias; MPT's boolean mask (True = masked) made additive."""
    batch_size, seq_length = hidden_states.shape[:2]
    mixed_qkv = self.Wqkv(hidden_states)
    if self.clip_qkv:
        mixed_qkv = mixed_qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
    query, key, value = (
        x.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
        for x in mixed_qkv.chunk(3, dim=2)
    )
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    query_length = seq_length if past_key_values is None else seq_length + past_key_values.get_seq_length()
    bias = None
    if position_bias is not None:
        q0 = max(0, position_bias.size(1) - query_length)
        k0 = max(0, position_bias.size(2) - key.shape[-2])
        bias = position_bias[:, q0:, k0:][None]  # [1, H, 1|Tq, Tk]
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, device=query.device).masked_fill(
            attention_mask, torch.finfo(torch.float32).min
        )
    out, weights = _adapted_attention(
        self, query, key, value, attention_mask, self.softmax_scale, bias=bias, dropout=self.attn_dropout_p
    )
    out = out.permute(0, 2, 1, 3).reshape(batch_size, seq_length, -1)
    return self.out_proj(out), weights


def _xglm_forward(self, hidden_states, key_value_states=None, past_key_values=None, attention_mask=None, **kwargs):
    """XGLMAttention.forward of transformers 5 (self-attention: XGLMForCausalLM has no cross-attention)
    with the score/softmax step through `_adapted_attention`; the query scale passed as `scaling`."""
    from transformers.cache_utils import EncoderDecoderCache

    if key_value_states is not None:
        # XGLMForCausalLM builds no cross-attention; a module that does is not a causal LM's
        raise ConfigError("iclscope adapts XGLM self-attention only (XGLMForCausalLM has no cross-attention)")
    bsz, tgt_len, _ = hidden_states.shape
    query = self.q_proj(hidden_states).view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)
    key = self.k_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim).transpose(1, 2)
    value = self.v_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim).transpose(1, 2)
    if past_key_values is not None:
        cache = (
            past_key_values.self_attention_cache
            if isinstance(past_key_values, EncoderDecoderCache)
            else past_key_values
        )
        key, value = cache.update(key, value, self.layer_idx)
    out, weights = _adapted_attention(self, query, key, value, attention_mask, self.scaling, dropout=self.dropout)
    return self.out_proj(out.transpose(1, 2).reshape(bsz, tgt_len, self.embed_dim)), weights


# attention module class -> (method replaced on each instance, its adapted version)
ADAPTERS: dict[str, tuple[str, Callable]] = {
    "GPTJAttention": ("_attn", _rotary_attn),
    "CodeGenAttention": ("_attn", _rotary_attn),
    "GPTNeoSelfAttention": ("_attn", _gpt_neo_attn),
    "FalconAttention": ("forward", _falcon_forward),
    "BloomAttention": ("forward", _bloom_forward),
    "MptAttention": ("forward", _mpt_forward),
    "XGLMAttention": ("forward", _xglm_forward),
}


def install_adapters(model: nn.Module) -> int:
    """Route the attention of an adapter architecture (loaded with eager attention) through the hook
    layer; returns the number of attention modules adapted (0 for AttentionInterface models)."""
    n = 0
    for module in model.modules():
        spec = ADAPTERS.get(type(module).__name__)
        if spec is not None:
            setattr(module, spec[0], types.MethodType(spec[1], module))
            n += 1
    return n
