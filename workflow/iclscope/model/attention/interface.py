"""The AttentionInterface path: architectures whose attention calls a function from transformers'
`AttentionInterface` (Llama, GPT-2, Gemma, Qwen, … in transformers 5).

Importing this module registers `iclscope_attention` under the name "iclscope"
(`capture.ATTN_IMPLEMENTATION`; `loading.load_model` imports it and loads models with
`attn_implementation="iclscope"`). It receives the post-RoPE query/key/value states of every layer
plus the architecture's own score modifiers (`scaling`, `softcap`, attention sinks `s_aux`,
`position_bias`; sliding windows arrive inside the mask). Without an active Recorder it runs plain
SDPA, or `eager.eager_attention` when SDPA cannot compute what the model does (soft-capping,
attention sinks).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from iclscope.model.attention.eager import eager_attention
from iclscope.model.capture import ATTN_IMPLEMENTATION, active_recorder


def iclscope_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """The AttentionInterface path: SDPA, plus reads/edits when a Recorder is active (iclscope.model.capture).

    `softcap` (Gemma-2), `s_aux` (attention sinks) and `position_bias` are applied as the
    architecture's own eager attention applies them; SDPA runs only when it computes the same."""
    rec = active_recorder()
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    softcap, sinks, position_bias = kwargs.get("softcap"), kwargs.get("s_aux"), kwargs.get("position_bias")
    if rec is not None:
        rec.observe(module, query, key, attention_mask, scaling, softcap=softcap, bias=position_bias, sinks=sinks)
    edit = rec.edit if rec is not None else None
    if edit is None and softcap is None and sinks is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    out, weights = eager_attention(
        module,
        query,
        key,
        value,
        attention_mask,
        scaling,
        softcap=softcap,
        bias=position_bias,
        sinks=sinks,
        dropout=dropout,
        edit=edit,
    )
    return out.transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTN_IMPLEMENTATION, iclscope_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
