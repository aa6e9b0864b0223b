"""The read-out side of a model's structure: final norm, unembedding, and the head that turns a
residual state into logits, for any HF causal LM that iclscope supports.

A method that reads the residual stream out through the model's own head (a logit lens, a
tuned lens's target, a direct-logit attribution) takes these from here instead of reaching into
`model.model.norm`, `transformer.ln_f` or `lm_head` itself. The blocks and the input device are in
`iclscope.model.blocks`, which the hook layer runs. This module is imported only by the stages that
read out, so adding an architecture's spelling here reruns those stages and never extraction
(iclscope.core.jobs keys each job on the code its script imports).
"""

from __future__ import annotations

import torch
from torch import nn

from iclscope.model.blocks import transformer_blocks


def _blocks_parent(model: nn.Module) -> nn.Module:
    """The module that holds the transformer blocks (LlamaModel, GPT2Model, OPTDecoder, …)."""
    name, _ = transformer_blocks(model)
    return model.get_submodule(name.rpartition(".")[0])


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last block's output before the unembedding (model.norm in Llama,
    transformer.ln_f in GPT-2, decoder.final_layer_norm in OPT, …): the one normalisation among the
    children of the blocks' parent that is not the embeddings' (Bloom's word_embeddings_layernorm)."""
    parent = _blocks_parent(model)
    norms = [
        (name, module)
        for name, module in parent.named_children()
        if "norm" in type(module).__name__.lower() and "emb" not in name.lower()
    ]
    if len(norms) != 1:
        raise ValueError(
            f"cannot tell the final norm of {type(model).__name__}: {len(norms)} candidate norms "
            f"({[name for name, _ in norms]}) beside its blocks"
        )
    return norms[0][1]


def unembedding(model: nn.Module) -> nn.Module:
    """The unembedding (lm_head): hidden [..., d] -> logits [..., V], before any logit scaling."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (not a causal-LM head)")
    return head


def head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] of residual states hidden [..., d] (a block's output, as the /resid/* arrays
    store it) computed as the model computes them from its last block: final norm, OPT's
    `project_out`, unembedding, then the config's logit scaling (Granite's `logits_scaling`, Cohere's
    `logit_scale`) and soft-capping (Gemma-2's `final_logit_softcapping`). In the model's dtype."""
    hidden = final_norm(model)(hidden)
    project_out = getattr(_blocks_parent(model), "project_out", None)
    if project_out is not None:
        hidden = project_out(hidden)
    logits = unembedding(model)(hidden)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
