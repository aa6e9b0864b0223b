"""Where a model's transformer blocks are and where its inputs go: the part of a model's structure
that every model stage runs (the hook layer hooks the blocks; every stage places its inputs).

The rest of a model's structure, what a read-out needs (final norm, unembedding, the head applied
to a residual state), is in `iclscope.model.structure`, which no stage runs unless it reads out:
a change there reruns those stages only, never extraction (iclscope.core.jobs keys each job on the
code its script imports).
"""

from __future__ import annotations

import torch
from torch import nn


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


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, modules) of the model's transformer blocks: the first ModuleList, in module order, that
    holds num_hidden_layers modules (model.layers in Llama, transformer.h in GPT-2, …). The first is
    the outermost: a mixture-of-experts block's list of experts comes after the list that holds it.

    The one discovery of the blocks: the hook layer hooks these, LoRA names its targets by `name`."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise ValueError(f"could not find the {n} decoder layers of {type(model).__name__}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (model.model.layers, transformer.h, …)."""
    return transformer_blocks(model)[1]
