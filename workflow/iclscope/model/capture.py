"""The one hook layer: read (and edit) attention and the residual stream of any HF causal LM.

Every method that looks inside the model goes through this module: extraction reads the
residual stream and the query's attention to label tokens; saliency, isolation, re-weighting
and anchor compression (iclscope.methods.anchors) use the same attention function with an edit.

How it works
------------
* Attention, one adapter layer for every architecture (`iclscope.core.architectures` says which
  path an architecture takes, or why it is refused):
  - "interface" architectures (Llama, GPT-2, Gemma, Qwen, … in transformers 5) call an attention
    function from transformers' `AttentionInterface`; iclscope registers one under the name
    "iclscope" (models are loaded with `attn_implementation="iclscope"`). It receives the
    post-RoPE query/key/value states of every layer plus the architecture's own score
    modifiers (`scaling`, `softcap`, attention sinks `s_aux`, `position_bias`; sliding windows
    arrive inside the mask).
  - "adapter" architectures (GPT-J, CodeGen, GPT-Neo, Falcon, Bloom, MPT, XGLM) compute attention inline in
    their attention module. `install_adapters` (run by `loading.load_model`) swaps that module's
    score/softmax step (`_attn`, or `forward` where the softmax is inline) for one that computes
    the same thing and calls the same reads and edits: the model is loaded with eager attention
    and ALiBi, local-window masks and the module's own scale are passed on as an additive bias.
  Both paths end in `_observe` (reads) and `eager_attention` (edits), so every method sees the
  same three things whatever the architecture:
  - the *query row* of the attention matrix, softmax(q_q · Kᵀ · scaling [softcap] + bias + mask)
    over all keys (with sinks when the model has them), keeping the columns of the label tokens:
    O(T·d) per layer instead of the O(T²·d) of a full eager attention matrix (docs/benchmarks.md speed
    rules);
  - with `qk_layer`, that layer's query at the last position and keys at the label tokens
    (error diagnosis);
  - with an `edit`, eager attention whose post-softmax weights (float32) the edit changes before
    they meet V.
  Without an active `Recorder` an interface model runs plain SDPA, or `eager_attention` when
  SDPA cannot compute what the model does (soft-capping, attention sinks); an adapter model runs
  its eager attention. Scores, softmax and edited weights are float32 whatever the model dtype;
  the weights are cast to V's dtype only to meet V, as the models' own eager code does.
* Residual stream: a forward pre-hook on the first decoder block (its input = embeddings,
  index 0) and a forward hook on every block (index l+1), gathering only the positions stored.

Batches are left-padded with explicit position ids, so the query position is the last column
of every row; other positions arrive already shifted into padded coordinates.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from iclscope.core.config import ConfigError

ATTN_IMPLEMENTATION = "iclscope"
_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("iclscope_recorder", default=None)

# edit(layer_idx, weights [B, H, Tq, Tk]) -> weights: a post-softmax change (isolation, re-weighting)
AttentionEdit = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class Positions:
    """Token positions of one batch in padded coordinates.

    label  [B, K] label-token columns (-1 = no such demonstration in this row)
    query_span [B, 2] [start, end) of the test input's text (start == end: none)
    The query position itself is the last column (left padding).
    """

    label: torch.Tensor
    query_span: torch.Tensor

    def to(self, device) -> Positions:
        return Positions(self.label.to(device), self.query_span.to(device))


def no_positions(batch: int, device) -> Positions:
    """Positions that record nothing (for runs that only edit attention or patch the residual stream)."""
    return Positions(
        torch.zeros(batch, 0, dtype=torch.long, device=device), torch.zeros(batch, 2, dtype=torch.long, device=device)
    )


@dataclass
class ResidualPatch:
    """Write into the residual stream at the input of block `layer` (= resid index `layer`).

    positions [B, S] columns in padded coordinates (-1 = leave that slot alone)
    values    [B, S, d] the states written there; mode "replace" or "add"
    Used by IC-ICL soft tokens, task vectors and activation patching.
    """

    layer: int
    positions: torch.Tensor
    values: torch.Tensor
    mode: str = "replace"

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        B, T, d = hidden.shape
        positions = self.positions.to(hidden.device)  # the block's device (a model over several devices)
        valid = positions >= 0
        rows = torch.arange(B, device=hidden.device)[:, None].expand_as(positions)[valid]
        cols = positions[valid]
        values = self.values.to(hidden.device, hidden.dtype)[valid]
        hidden = hidden.clone()
        if self.mode == "replace":
            hidden[rows, cols] = values
        elif self.mode == "add":
            hidden[rows, cols] = hidden[rows, cols] + values
        else:
            raise ValueError(f"unknown patch mode {self.mode!r}")
        return hidden


@dataclass
class Recorder:
    """What to read during one forward pass, and where the results land.

    resid names: "query", "last_input", "content_mean", "label". Results after the pass:
      resid[name]  [B, L+1, d] (label: [B, K, L+1, d]) float32, on the device of `positions`
      attn         [B, L, H, K] float32 (NaN where label == -1), on the device of `positions`
    A model over several devices (device_map, accelerate's dispatch) hands each block's states over
    on that block's device: positions go to it, results come back to the positions' device.
    """

    n_layers: int
    positions: Positions
    resid_names: tuple[str, ...] = ("query",)
    read_attention: bool = False
    edit: AttentionEdit | None = None
    patches: tuple[ResidualPatch, ...] = ()
    keep_grad: bool = False  # keep recorded states in the autograd graph (training losses on them)
    qk_layer: int | None = None  # 0-based block whose query/key states to keep (error diagnosis)
    # "pre_rope": q/k as the projections output them, before any rotary embedding mixes in position
    # (where the block has separate q/k projections); "post_rope": as attention multiplies them
    qk_source: str = "post_rope"
    qk_used: str | None = None  # which one was recorded ("pre_rope" | "post_rope"), set by the pass
    projections: dict = field(default_factory=dict, repr=False)  # q/k projection outputs [B, T, H·dh]
    resid: dict[str, torch.Tensor] = field(default_factory=dict)
    attn: torch.Tensor | None = None
    qk: tuple[torch.Tensor, torch.Tensor] | None = None  # (q [B, H, dh], k [B, K, H, dh]) of qk_layer
    # layers whose attention reached the hook layer, and forward passes seen (the no-op guard of `recording`)
    seen_layers: set = field(default_factory=set, repr=False)
    forwards: int = field(default=0, repr=False)

    @property
    def uses_attention(self) -> bool:
        return self.read_attention or self.edit is not None or self.qk_layer is not None

    # -------------------------------------------------------------- residual stream
    def take_resid(self, index: int, hidden: torch.Tensor) -> None:
        """hidden [B, T, d] is the residual stream after block index-1 (index 0 = embeddings)."""
        B, T, d = hidden.shape
        if not self.keep_grad:
            hidden = hidden.detach()
        positions = self.positions.to(hidden.device)
        for name in self.resid_names:
            if name == "query":
                value = hidden[:, -1, :]
            elif name == "last_input":
                col = (positions.query_span[:, 1] - 1).clamp(min=0)
                value = hidden[torch.arange(B, device=hidden.device), col]
            elif name == "content_mean":
                start, end = positions.query_span[:, :1], positions.query_span[:, 1:]
                cols = torch.arange(T, device=hidden.device)[None, :]
                mask = (cols >= start) & (cols < end)  # [B, T]; where() keeps NaNs of pad rows out
                value = torch.where(mask[:, :, None], hidden, 0).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            elif name == "label":
                label = positions.label
                if label.shape[1] == 0:
                    continue
                idx = label.clamp(min=0)
                value = torch.gather(hidden, 1, idx[:, :, None].expand(-1, -1, d))  # [B, K, d]
                value = value.masked_fill((label < 0)[:, :, None], 0.0)
            else:
                raise ValueError(f"unknown residual position set {name!r}")
            store = self.resid.get(name)
            if store is None:
                K = self.positions.label.shape[1]
                shape = (B, K, self.n_layers + 1, d) if name == "label" else (B, self.n_layers + 1, d)
                store = self.resid[name] = torch.zeros(shape, dtype=torch.float32, device=self.positions.label.device)
            if name == "label":
                store[:, :, index] = value.float().to(store.device)
            else:
                store[:, index] = value.float().to(store.device)

    # -------------------------------------------------------------- attention
    def take_query_row(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        *,
        softcap: float | None = None,
        bias: torch.Tensor | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        """query [B, H, Tq, dh], key [B, Hkv, Tk, dh] -> attention of the last query row to label columns.

        The row is computed as the model computes its attention (see `attention_scores`), in float32.
        """
        label = self.positions.label.to(query.device)
        B, H = query.shape[:2]
        K = label.shape[1]
        if self.attn is None:
            self.attn = torch.full((B, self.n_layers, H, K), float("nan"), device=self.positions.label.device)
        if K == 0:
            return
        k = repeat_kv(key, H // key.shape[1])  # [B, H, Tk, dh]
        row_bias = None if bias is None else bias[..., -1:, :]
        scores = attention_scores(query[:, :, -1:, :], k, scaling, softcap=softcap, bias=row_bias)[:, :, 0]
        scores = scores + additive_row_mask(attention_mask, scores)  # [B, H, Tk]
        probs = softmax_with_sinks(scores[:, :, None], sinks)[:, :, 0]
        cols = label.clamp(min=0)[:, None, :].expand(-1, H, -1)  # [B, H, K]
        rows = torch.gather(probs, 2, cols).masked_fill((label < 0)[:, None, :], float("nan"))
        self.attn[:, layer] = rows.to(self.attn.device)

    def take_qk(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """query [B, H, Tq, dh], key [B, Hkv, Tk, dh] (post-RoPE, as attention uses them) -> self.qk:
        the last position's query [B, H, dh] and the label columns' keys [B, K, H, dh], KV heads
        repeated to H as attention does (GQA); float32, NaN where label == -1."""
        label = self.positions.label.to(key.device)  # [B, K]
        H, dh = query.shape[1], query.shape[-1]
        q = query[:, :, -1, :].detach().float()
        cols = label.clamp(min=0)[:, None, :, None].expand(-1, key.shape[1], -1, dh)  # [B, Hkv, K, dh]
        k = repeat_kv(torch.gather(key.detach(), 2, cols), H // key.shape[1]).float()  # [B, H, K, dh]
        k = k.transpose(1, 2).masked_fill((label < 0)[:, :, None, None], float("nan"))
        self.qk = (q, k)


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


def _observe(
    rec: Recorder | None,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    **modifiers,
) -> None:
    """The reads of an active Recorder at one layer (query row; q/k at `qk_layer`)."""
    if rec is None:
        return
    layer = layer_index(module)
    rec.seen_layers.add(layer)
    if rec.read_attention:
        rec.take_query_row(layer, query, key, attention_mask, scaling, **modifiers)
    if rec.qk_layer is not None and rec.qk_layer == layer:
        B, H, T, dh = query.shape
        q_proj, k_proj = rec.projections.get("q"), rec.projections.get("k")
        if (
            rec.qk_source == "pre_rope"
            and q_proj is not None
            and k_proj is not None
            and q_proj.shape == (B, T, H * dh)
            and k_proj.shape == (B, T, key.shape[1] * dh)
        ):
            query = rec.projections["q"].view(B, T, H, dh).transpose(1, 2)
            key = rec.projections["k"].view(B, T, key.shape[1], dh).transpose(1, 2)
            rec.qk_used = "pre_rope"
        else:
            rec.qk_used = "post_rope"
        rec.take_qk(query, key)


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
    """The AttentionInterface path: SDPA, plus reads/edits when a Recorder is active (module docstring).

    `softcap` (Gemma-2), `s_aux` (attention sinks) and `position_bias` are applied as the
    architecture's own eager attention applies them; SDPA runs only when it computes the same."""
    rec = _ACTIVE.get()
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    softcap, sinks, position_bias = kwargs.get("softcap"), kwargs.get("s_aux"), kwargs.get("position_bias")
    _observe(rec, module, query, key, attention_mask, scaling, softcap=softcap, bias=position_bias, sinks=sinks)
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


# --------------------------------------------------------------------------- adapters
# Architectures whose attention does not go through AttentionInterface. Each adapter computes
# exactly the module's own eager attention (same scale, bias, mask; tests/unit/test_architectures.py
# checks it against `output_attentions` of the unadapted model) through `_adapted_attention`.
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
    rec = _ACTIVE.get()
    _observe(rec, module, query, key, attention_mask, scaling, bias=bias)
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


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs (token ids, masks, positions) go: the device its input embedding runs on.

    One device: that of its weights. A model over several devices (`device_map: auto`, accelerate's
    dispatch) runs each block where the map puts it and brings the outputs back to the inputs' device;
    an offloaded embedding (weights on "meta" until used) runs on its dispatch hook's execution device.
    Every model stage places its inputs here, never at `next(model.parameters()).device`."""
    embedding = model.get_input_embeddings()
    execution = getattr(getattr(embedding, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    return embedding.weight.device


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (model.model.layers, transformer.h, …)."""
    n = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"could not find the {n} decoder layers of {type(model).__name__}")


def residual_stream(model: nn.Module, **inputs) -> tuple[object, list[torch.Tensor]]:
    """One forward pass; (output, L+1 residual states [B, T, d], index 0 = embeddings).

    Hugging Face's `hidden_states[-1]` is the last block's output after the final norm; here it
    is the block's output itself, as in the /resid/* arrays of the activation file.
    """
    last = {}

    def keep_last(_module, _args, out) -> None:  # returns None: a hook's return value replaces the output
        last["h"] = out[0] if isinstance(out, tuple) else out

    handle = decoder_layers(model)[-1].register_forward_hook(keep_last)
    try:
        out = model(**inputs, output_hidden_states=True)
    finally:
        handle.remove()
    return out, [*out.hidden_states[:-1], last["h"]]


@contextlib.contextmanager
def recording(model: nn.Module, recorder: Recorder):
    """Install the residual hooks and make `recorder` the active one for the attention function.

    When the recorder reads or edits attention, a forward pass whose attention did not reach the
    hook layer in every block (a model loaded without `attn_implementation="iclscope"`, an
    attention module no adapter knows) raises instead of silently recording nothing / editing nothing.
    """
    layers = decoder_layers(model)
    handles = []
    if recorder.uses_attention:

        def count(_module, _args):
            recorder.forwards += 1

        handles.append(layers[0].register_forward_pre_hook(count))
    if recorder.resid_names:
        handles.append(
            layers[0].register_forward_pre_hook(
                lambda _m, args, kwargs: recorder.take_resid(0, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
        )
        for i, layer in enumerate(layers):
            handles.append(
                layer.register_forward_hook(
                    lambda _m, _a, out, i=i: recorder.take_resid(i + 1, out[0] if isinstance(out, tuple) else out)
                )
            )
    if recorder.qk_layer is not None and recorder.qk_source == "pre_rope":
        handles += _projection_hooks(layers[recorder.qk_layer], recorder.projections)
    for patch in recorder.patches:
        if not 0 <= patch.layer < len(layers):
            raise ValueError(f"patch layer {patch.layer} outside 0..{len(layers) - 1}")
        handles.append(layers[patch.layer].register_forward_pre_hook(_patch_hook(patch), with_kwargs=True))
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()
    missing = sorted(set(range(len(layers))) - recorder.seen_layers) if recorder.forwards else []
    if missing:
        raise RuntimeError(
            f"the attention of {type(model).__name__} blocks {missing} did not reach iclscope's hook layer, so "
            "attention reads/edits did nothing there: load the model with loading.load_model(..., "
            f"attn_implementation='{ATTN_IMPLEMENTATION}') (config._attn_implementation is "
            f"{getattr(model.config, '_attn_implementation', None)!r}); see iclscope.core.architectures"
        )


# separate query / key projections by name (Llama, Mistral, Qwen, Gemma, OLMo, GPT-J, …); a fused
# projection (GPT-2's c_attn, GPT-NeoX's query_key_value) has none, and q/k are then read post-RoPE
_PROJECTIONS = {"q": ("q_proj", "query", "q"), "k": ("k_proj", "key", "k")}


def _projection_hooks(block: nn.Module, store: dict) -> list:
    """Forward hooks keeping the outputs [B, T, H·dh] of one block's q and k projections in `store`."""
    attention = next(
        (
            m
            for m in block.children()
            if hasattr(m, "layer_idx") or "attn" in type(m).__name__.lower() or "attention" in type(m).__name__.lower()
        ),
        None,
    )
    found = {}
    for kind, names in _PROJECTIONS.items():
        module = next(
            (
                getattr(attention, n)
                for n in names
                if attention is not None and isinstance(getattr(attention, n, None), nn.Linear)
            ),
            None,
        )
        if module is not None:
            found[kind] = module
    if set(found) != {"q", "k"}:
        return []

    def keep(kind):
        def hook(_module, _args, out):
            store[kind] = out.detach()

        return hook

    return [module.register_forward_hook(keep(kind)) for kind, module in found.items()]


def _patch_hook(patch: ResidualPatch):
    """A forward pre-hook that rewrites a block's input hidden states (positional or keyword)."""

    def hook(_module, args, kwargs):
        if args:
            return (patch.apply(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": patch.apply(kwargs["hidden_states"])}

    return hook


def full_kv_cache():
    """An empty KV cache that keeps every position at every layer. Built from the model's config, a
    sliding-window layer's cache keeps only its last window, and anchor KV (entries kept by position,
    iclscope.methods.taskspace.icicl, iclscope.methods.anchors.compression) would lose the entries it keeps."""
    from transformers import DynamicCache

    return DynamicCache()


def left_pad(sequences: list, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token id lists -> input_ids, attention_mask, position_ids, each [B, T]."""
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, T - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[b, T - len(s) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), position_ids.to(device)
