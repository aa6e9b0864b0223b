"""The one model loader of every model stage: a prepared model (iclscope.model.models) onto its device.

Apart from `models` (resolving and preparing weights, which no attention code changes) because
loading for a reading or editing stage goes through the hook layer: a change to `model/capture.py` or
`model/attention/` reruns what loads a model, not what prepares one (iclscope.core.jobs keys each job on the code its
script imports).
"""

from __future__ import annotations

from pathlib import Path

from iclscope.core.architectures import attention_hook
from iclscope.core.config import ConfigError, ModelSpec
from iclscope.model.attention import interface  # noqa: F401  (registers the "iclscope" attention function)
from iclscope.model.attention.adapters import install_adapters
from iclscope.model.models import read_manifest, resolve_device, resolve_dtype


def load_model(
    model_dir: str | Path,
    spec: ModelSpec | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str = "none",
    attn_implementation: str = "sdpa",
):
    """Load a prepared model and its tokenizer for inference: (model, tokenizer, manifest).

    The one model loader of every model stage: `load_model(model_dir, spec)` takes device, dtype and
    device_map from the job's ModelSpec (CUDA when present and `device: auto`, the same code on CPU);
    the keywords serve tests and tools that have no spec.

    The tokenizer gets a pad token (EOS when it has none, as GPT-2 needs) and left padding:
    iclscope batches prompts left-padded with explicit position ids, so the query position
    is the last column of every row.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec is not None:
        device, dtype, device_map = spec.device, spec.dtype, spec.device_map
    manifest = read_manifest(model_dir)
    adapt = attn_implementation == "iclscope" and attention_hook(manifest["architecture"]) == "adapter"
    if attn_implementation == "iclscope":
        if adapt:  # attention outside AttentionInterface: eager attention + the hook layer's adapters
            attn_implementation = "eager"
    elif attn_implementation == "sdpa" and not _supports_sdpa(manifest["weights_path"]):
        attn_implementation = "eager"  # GPT-J, Bloom, Gemma-2 (soft-capping), …: eager is what they compute
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    # weights go straight from the (memory-mapped) files to their device, in the config's dtype: the
    # model is built on the meta device and each tensor is materialised where the map puts it, so a
    # GPU node never holds a whole-model copy in host RAM (never `model.to(device)` after loading)
    kwargs = {
        "dtype": torch_dtype,
        "attn_implementation": attn_implementation,
        "device_map": "auto" if device_map == "auto" else {"": device},
    }
    model = AutoModelForCausalLM.from_pretrained(manifest["weights_path"], **kwargs)
    if adapt and install_adapters(model) == 0:
        raise ConfigError(
            f"model '{manifest['name']}' ({manifest['architecture']}): no attention module to "
            "adapt was found; see iclscope.core.architectures"
        )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(manifest["weights_path"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer, manifest


def _supports_sdpa(weights_path: str) -> bool:
    """Whether transformers offers SDPA for this model's class (GPT-J, Bloom, Gemma-2 … do not)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(weights_path)
    try:
        return bool(getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], "_supports_sdpa", False))
    except KeyError:
        return True  # let from_pretrained say what is wrong
