"""The one eager attention and its pieces, in float32 whatever the model dtype.

Scores, masks, sinks and softmax as the models' own eager code computes them; the weights are cast
to V's dtype only to meet V. The query-row read of `capture.Recorder` and both attention paths
(`interface`, `adapters`) compute through these functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# edit(layer_idx, weights [B, H, Tq, Tk]) -> weights: a post-softmax change (isolation, re-weighting)
AttentionEdit = Callable[[int, torch.Tensor], torch.Tensor]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, T, dh] -> [B, Hkv * n_rep, T, dh] (each KV head serves n_rep query heads)."""
    if n_rep == 1:
        return x
    B, Hkv, T, dh = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, T, dh).reshape(B, Hkv * n_rep, T, dh)


def additive_row_mask(attention_mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """The last query row of a 4-D mask as an additive float mask broadcastable to [B, H, Tk].

    None means plain causal attention: the last row sees every key.
    """
    if attention_mask is None:
        return torch.zeros_like(scores[:, :1, :])
    row = attention_mask[:, :, -1, : scores.shape[-1]]  # [B, 1|H, Tk]
    if row.dtype == torch.bool:
        return torch.zeros(row.shape, device=scores.device).masked_fill(~row, float("-inf"))
    return row.float()


def full_mask(attention_mask: torch.Tensor | None, q_len: int, k_len: int, device) -> torch.Tensor:
    """A 4-D additive mask [B|1, 1, Tq, Tk] for eager attention (None -> causal).

    Masked entries get the most negative finite float, not -inf: a padding row masked
    everywhere then softmaxes to finite weights instead of NaNs that would leak through V.
    """
    low = torch.finfo(torch.float32).min
    if attention_mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        return torch.zeros(1, 1, q_len, k_len, device=device).masked_fill(~causal, low)
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, device=device).masked_fill(~attention_mask, low)
    return attention_mask.float().clamp(min=low)


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    *,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pre-mask scores, float32: (q · kᵀ) · scaling, soft-capped (softcap · tanh(s / softcap), Gemma-2),
    plus an additive bias (ALiBi, position bias) broadcastable to [B, H, Tq, Tk].

    query [B, H, Tq, dh], key [B, H, Tk, dh] (KV heads already repeated)."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias.float()
    return scores


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 softmax over the last axis of masked scores [B, H, Tq, Tk]; with attention sinks
    (one logit per head that takes probability mass and meets no value, GPT-OSS) the sink column
    is appended before and dropped after the softmax."""
    scores = scores.float()
    if sinks is None:
        return scores.softmax(-1)
    sink = sinks.float().reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
    return torch.cat([scores, sink], dim=-1).softmax(-1)[..., :-1]


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    dropout: float = 0.0,
    edit: AttentionEdit | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one eager attention: (output [B, H, Tq, dv], weights [B, H, Tq, Tk]).

    Scores and softmax in float32, then `edit` (when given) on the float32 post-softmax weights,
    dropout as the module does in training, and the weights cast to V's dtype to meet V."""
    n_rep = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = attention_scores(query, k, scaling, softcap=softcap, bias=bias)
    scores = scores + full_mask(attention_mask, query.shape[2], k.shape[2], query.device)
    weights = softmax_with_sinks(scores, sinks)
    if edit is not None:
        weights = edit(layer_index(module), weights)
    if dropout:
        weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights.to(v.dtype), v), weights


def layer_index(module: nn.Module) -> int | None:
    """The 0-based block index an attention module was built with (`layer_idx`; GPT-Neo: `layer_id`)."""
    layer = getattr(module, "layer_idx", None)
    return getattr(module, "layer_id", None) if layer is None else layer
