"""The one hook layer: read (and edit) attention and the residual stream of any HF causal LM.

Every method that looks inside the model goes through this module: extraction reads the residual
stream and the query's attention to label tokens; saliency, isolation, re-weighting and anchor
compression (iclscope.methods.anchors) edit the same attention. The model's structure is read in
iclscope.model.blocks (blocks, input device) and iclscope.model.structure (final norm, unembedding).

How it works:
* `recording(model, recorder)` makes a `Recorder` the active one and installs its residual hooks.
* Attention: both attention paths (iclscope.model.attention: `interface` for the architectures that
  call transformers' `AttentionInterface`, `adapters` for those that compute it inline;
  iclscope.core.architectures says which) hand the reads to `Recorder.observe` and the edit to
  `attention.eager.eager_attention`, so every method sees the same three things on any architecture:
  - the *query row* of the attention matrix, softmax(q_q · Kᵀ · scaling [softcap] + bias + mask)
    over all keys (with sinks), at the label tokens' columns: O(T·d) per layer instead of the
    O(T²·d) of a full eager attention matrix (docs/benchmarks.md speed rules);
  - with `qk_layer`, that layer's query at the last position and keys at the label tokens;
  - with an `edit`, eager attention whose float32 post-softmax weights the edit changes.
* Residual stream: a pre-hook on the first block (its input = embeddings, index 0) and a hook on
  every block (index l+1) keep the positions stored; `ResidualPatch` writes into a block's input.

Batches are left-padded with explicit position ids (`left_pad`), so the query position is the last
column of every row; other positions arrive already shifted into padded coordinates.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch
from torch import nn

from iclscope.model.attention.eager import (
    AttentionEdit,
    additive_row_mask,
    attention_scores,
    layer_index,
    repeat_kv,
    softmax_with_sinks,
)
from iclscope.model.blocks import decoder_layers

ATTN_IMPLEMENTATION = "iclscope"
_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("iclscope_recorder", default=None)


def active_recorder() -> Recorder | None:
    """The Recorder of the `recording` block the current forward pass runs in (None outside one)."""
    return _ACTIVE.get()


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

    # -------------------------------------------------------------- one attention layer
    def observe(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        **modifiers,
    ) -> None:
        """The reads at one layer, called by both attention paths (iclscope.model.attention): the
        query row (`take_query_row`, with the path's score `modifiers`) and q/k at `qk_layer`.

        query [B, H, Tq, dh], key [B, Hkv, Tk, dh] as attention multiplies them (post-RoPE)."""
        layer = layer_index(module)
        self.seen_layers.add(layer)
        if self.read_attention:
            self.take_query_row(layer, query, key, attention_mask, scaling, **modifiers)
        if self.qk_layer is not None and self.qk_layer == layer:
            B, H, T, dh = query.shape
            q_proj, k_proj = self.projections.get("q"), self.projections.get("k")
            if (
                self.qk_source == "pre_rope"
                and q_proj is not None
                and k_proj is not None
                and q_proj.shape == (B, T, H * dh)
                and k_proj.shape == (B, T, key.shape[1] * dh)
            ):
                query = q_proj.view(B, T, H, dh).transpose(1, 2)
                key = k_proj.view(B, T, key.shape[1], dh).transpose(1, 2)
                self.qk_used = "pre_rope"
            else:
                self.qk_used = "post_rope"
            self.take_qk(query, key)

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
