"""The one hook layer: read (and edit) attention and the residual stream of any HF causal LM.

Every method that looks inside the model goes through this module: extraction reads the
residual stream and the query's attention to label tokens; saliency, isolation, re-weighting
and anchor compression (iclscope.anchors) use the same attention function with an edit.

How it works
------------
* Attention: an attention function registered with transformers' `AttentionInterface` under
  the name "iclscope" (models are loaded with `attn_implementation="iclscope"`). It receives the
  post-RoPE query/key/value states of every layer of every supported architecture (Llama, GPT-2,
  … in transformers 5). Without an active `Recorder` it is plain SDPA. With one, it
  additionally computes the *query row* of the attention matrix, softmax(q_q · Kᵀ / √d_head)
  over all keys, and keeps the columns of the label tokens: O(T·d) per layer instead of the
  O(T²·d) of a full eager attention matrix (DESIGN.md speed rules). With `qk_layer`, it keeps
  that layer's query at the last position and keys at the label tokens (error diagnosis). With
  an `edit`, the layer runs eager attention so the edit can change post-softmax weights before
  they meet V.
* Residual stream: a forward pre-hook on the first decoder block (its input = embeddings,
  index 0) and a forward hook on every block (index l+1), gathering only the positions stored.

Batches are left-padded with explicit position ids, so the query position is the last column
of every row; other positions arrive already shifted into padded coordinates.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

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
    return Positions(torch.zeros(batch, 0, dtype=torch.long, device=device),
                     torch.zeros(batch, 2, dtype=torch.long, device=device))


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
        valid = self.positions >= 0
        rows = torch.arange(B, device=hidden.device)[:, None].expand_as(self.positions)[valid]
        cols = self.positions[valid]
        values = self.values.to(hidden.dtype)[valid]
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
      resid[name]  [B, L+1, d] (label: [B, K, L+1, d]) float32, on the model's device
      attn         [B, L, H, K] float32 (NaN where label == -1)
    """

    n_layers: int
    positions: Positions
    resid_names: tuple[str, ...] = ("query",)
    read_attention: bool = False
    edit: AttentionEdit | None = None
    patches: tuple[ResidualPatch, ...] = ()
    keep_grad: bool = False  # keep recorded states in the autograd graph (training losses on them)
    qk_layer: int | None = None  # 0-based block whose query/key states to keep (error diagnosis)
    resid: dict[str, torch.Tensor] = field(default_factory=dict)
    attn: torch.Tensor | None = None
    qk: tuple[torch.Tensor, torch.Tensor] | None = None  # (q [B, H, dh], k [B, K, H, dh]) of qk_layer

    # -------------------------------------------------------------- residual stream
    def take_resid(self, index: int, hidden: torch.Tensor) -> None:
        """hidden [B, T, d] is the residual stream after block index-1 (index 0 = embeddings)."""
        B, T, d = hidden.shape
        if not self.keep_grad:
            hidden = hidden.detach()
        for name in self.resid_names:
            if name == "query":
                value = hidden[:, -1, :]
            elif name == "last_input":
                col = (self.positions.query_span[:, 1] - 1).clamp(min=0)
                value = hidden[torch.arange(B, device=hidden.device), col]
            elif name == "content_mean":
                start, end = self.positions.query_span[:, :1], self.positions.query_span[:, 1:]
                cols = torch.arange(T, device=hidden.device)[None, :]
                mask = (cols >= start) & (cols < end)  # [B, T]; where() keeps NaNs of pad rows out
                value = torch.where(mask[:, :, None], hidden, 0).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            elif name == "label":
                label = self.positions.label
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
                store = self.resid[name] = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
            if name == "label":
                store[:, :, index] = value.float()
            else:
                store[:, index] = value.float()

    # -------------------------------------------------------------- attention
    def take_query_row(self, layer: int, query: torch.Tensor, key: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float) -> None:
        """query [B, H, Tq, dh], key [B, Hkv, Tk, dh] -> attention of the last query row to label columns."""
        label = self.positions.label
        B, H = query.shape[:2]
        K = label.shape[1]
        if self.attn is None:
            self.attn = torch.full((B, self.n_layers, H, K), float("nan"), device=query.device)
        if K == 0:
            return
        q = query[:, :, -1, :].float()  # [B, H, dh]
        k = repeat_kv(key, H // key.shape[1]).float()  # [B, H, Tk, dh]
        scores = torch.einsum("bhd,bhtd->bht", q, k) * scaling  # [B, H, Tk]
        scores = scores + additive_row_mask(attention_mask, scores)
        probs = scores.softmax(-1)
        cols = label.clamp(min=0)[:, None, :].expand(-1, H, -1)  # [B, H, K]
        rows = torch.gather(probs, 2, cols).masked_fill((label < 0)[:, None, :], float("nan"))
        self.attn[:, layer] = rows

    def take_qk(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """query [B, H, Tq, dh], key [B, Hkv, Tk, dh] (post-RoPE, as attention uses them) -> self.qk:
        the last position's query [B, H, dh] and the label columns' keys [B, K, H, dh], KV heads
        repeated to H as attention does (GQA); float32, NaN where label == -1."""
        label = self.positions.label  # [B, K]
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


def iclscope_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs):
    """SDPA, plus reads/edits when a Recorder is active (see module docstring)."""
    rec = _ACTIVE.get()
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    layer = getattr(module, "layer_idx", None)
    if rec is not None and rec.read_attention:
        rec.take_query_row(layer, query, key, attention_mask, scaling)
    if rec is not None and rec.qk_layer is not None and rec.qk_layer == layer:
        rec.take_qk(query, key)
    if rec is None or rec.edit is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    # eager path so the edit sees post-softmax weights [B, H, Tq, Tk]
    n_rep = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query.float(), k.float().transpose(2, 3)) * scaling
    scores = scores + full_mask(attention_mask, query.shape[2], k.shape[2], query.device)
    weights = rec.edit(layer, scores.softmax(-1))
    out = torch.matmul(weights.to(v.dtype), v).transpose(1, 2).contiguous()
    return out, weights


AttentionInterface.register(ATTN_IMPLEMENTATION, iclscope_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


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
    handle = decoder_layers(model)[-1].register_forward_hook(
        lambda _m, _a, out: last.setdefault("h", out[0] if isinstance(out, tuple) else out))
    try:
        out = model(**inputs, output_hidden_states=True)
    finally:
        handle.remove()
    return out, [*out.hidden_states[:-1], last["h"]]


@contextlib.contextmanager
def recording(model: nn.Module, recorder: Recorder):
    """Install the residual hooks and make `recorder` the active one for the attention function."""
    layers = decoder_layers(model)
    handles = []
    if recorder.resid_names:
        handles.append(layers[0].register_forward_pre_hook(
            lambda _m, args, kwargs: recorder.take_resid(0, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(
                lambda _m, _a, out, i=i: recorder.take_resid(i + 1, out[0] if isinstance(out, tuple) else out)))
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


def _patch_hook(patch: ResidualPatch):
    """A forward pre-hook that rewrites a block's input hidden states (positional or keyword)."""

    def hook(_module, args, kwargs):
        if args:
            return (patch.apply(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": patch.apply(kwargs["hidden_states"])}

    return hook


def left_pad(sequences: list, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token id lists -> input_ids, attention_mask, position_ids, each [B, T]."""
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[b, T - len(s):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), position_ids.to(device)
