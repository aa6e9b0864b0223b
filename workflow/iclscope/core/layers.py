"""Layer settings that mean the same on every model: depth shares, resolved per model before any job.

A layer-valued setting (`icicl.inject_layer`, `tsft.layer`, `anchors.isolation_k`, ...) is written
in config.yaml as a **share of the depth** (a number in 0..1, `0.33` = a third of the way up), or
`null` for the method's own rule, so one configuration means the same on a 6-layer Pythia and a
32-layer Llama. Where a paper names an absolute layer, a model takes it as an **override**:
`models.<name>.layers: {anchors.error_diagnosis.layer: 32}`.

`resolve(config, model, depth)` turns every setting into the absolute layer (or layer count) of
one model; `check_all(config, depths)` does it for every configured model at validation, before
the first job, and refuses an impossible value naming the key, the model and its depth. The
resolved values are what enter each job's settings (iclscope.core.jobs) and so its tables: two
settings that resolve to the same layer share their results.

Rounding: share x depth rounded half up (0.33 x 30 = 9.9 -> 10; 0.5 x 31 = 15.5 -> 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from iclscope.core.config import ConfigError, ModelSpec
from iclscope.core.model_config import model_depth


@dataclass(frozen=True)
class LayerSetting:
    """One layer-valued setting: where it is in the config, what its numbers index, and its null rule.

    kind: "residual" = a residual-stream index 0..L (0 = the embeddings, l = the output of block l);
    "block" = a 1-based block index 1..L; "count" = a number of blocks 1..L.
    lowest / highest(L): the range the method accepts; when_null(L): the method's own rule, or None
    when null is resolved from data inside the job (patching: the peak decodability layer)."""

    key: str
    kind: str
    lowest: int
    highest: Callable[[int], int]
    when_null: Callable[[int], int] | None
    many: bool = False  # a list of values (isolation's k)
    meaning: str = ""

    def section(self, config: dict) -> dict:
        *path, _ = self.key.split(".")
        node = config
        for part in path:
            node = node[part]
        return node

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[1]

    def configured(self, config: dict):
        return self.section(config)[self.name]


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def share_to_layer(share: float, depth: int, kind: str) -> int:
    """A share of the depth as an absolute layer: round(share x depth); a count or a 1-based block is
    at least 1."""
    layer = round_half_up(share * depth)
    return max(layer, 1) if kind in ("count", "block") else layer


LAYER_SETTINGS: tuple[LayerSetting, ...] = (
    LayerSetting(
        "icicl.inject_layer",
        "residual",
        1,
        lambda L: L - 1,
        lambda L: L // 2,
        meaning="residual index where soft tokens / task vectors are written",
    ),
    LayerSetting(
        "icicl.embed_layer",
        "residual",
        0,
        lambda L: L,
        lambda L: L // 2,
        meaning="residual index of the retrieval embedding",
    ),
    LayerSetting(
        "icicl.task_vector_layer",
        "residual",
        1,
        lambda L: L - 1,
        None,
        meaning="residual index the task vector is written at; null = icicl.inject_layer",
    ),
    LayerSetting(
        "tsft.layer", "residual", 1, lambda L: L, lambda L: L // 2, meaning="l*, the residual index of the space loss"
    ),
    LayerSetting(
        "patching.layer",
        "residual",
        1,
        lambda L: L - 1,
        None,
        meaning="block input patched; null = the peak decodability layer (from the data)",
    ),
    LayerSetting(
        "layer_lora.n_layers",
        "count",
        1,
        lambda L: L,
        lambda L: max(1, L // 3),
        meaning="blocks adapted per arm (first n vs last n)",
    ),
    LayerSetting(
        "anchors.isolation_k",
        "count",
        1,
        lambda L: L,
        None,
        many=True,
        meaning="numbers of first / last blocks in which label words are isolated",
    ),
    LayerSetting(
        "anchors.error_diagnosis.layer",
        "block",
        1,
        lambda L: L,
        lambda L: 2 * L // 3 + 1,
        meaning="attention block (1-based) whose query and keys are read",
    ),
)
BY_KEY = {s.key: s for s in LAYER_SETTINGS}
SWEEP_DEPTHS = "icicl.sweep.depths"  # shares already; resolved by the sweep itself into 1..L-1


def check_shares(config: dict) -> list[str]:
    """Problems with the shares themselves (no model needed): a global layer setting is a share in 0..1."""
    problems = []
    for setting in LAYER_SETTINGS:
        values = setting.configured(config)
        for value in values if setting.many else [values]:
            if value is None:
                continue
            if isinstance(value, bool) or not 0 <= value <= 1:
                problems.append(
                    f"config key '{setting.key}' is {value!r}: layer settings are shares of the depth in 0..1 "
                    f"(0.33 = a third of the way up), so they mean the same on every model; an absolute layer "
                    f"for one model goes in models.<name>.layers, e.g. {{{setting.key}: "
                    f"{[int(value)] if setting.many else int(value) if isinstance(value, (int, float)) else 10}}}"
                )
    for name, spec in config["models"].items():
        for key in spec.get("layers") or {}:
            if key not in BY_KEY:
                problems.append(
                    f"config key 'models.{name}.layers.{key}': not a layer setting; these are: {', '.join(BY_KEY)}"
                )
    return problems


def _resolve_one(setting: LayerSetting, value, depth: int, override: bool) -> int | None:
    if value is None:
        return setting.when_null(depth) if setting.when_null else None
    return int(value) if override else share_to_layer(value, depth, setting.kind)


def resolve(config: dict, model: str, depth: int) -> dict:
    """{setting key: absolute layer (or list, or None for a data-chosen layer)} of `model`, whose depth
    is `depth` blocks. Raises ConfigError naming the key, the model and its depth when one is out of
    the method's range."""
    overrides = config["models"][model].get("layers") or {}
    resolved, problems = {}, []
    for setting in LAYER_SETTINGS:
        override = setting.key in overrides
        value = overrides[setting.key] if override else setting.configured(config)
        where = f"models.{model}.layers.{setting.key}" if override else setting.key
        if setting.many:
            layers = sorted({_resolve_one(setting, v, depth, override) for v in value})
        else:
            layers = [_resolve_one(setting, value, depth, override)]
        high = setting.highest(depth)
        if not config[setting.key.split(".")[0]].get("enabled", True):
            resolved[setting.key] = layers if setting.many else layers[0]
            continue  # a family switched off: its settings are not checked
        for layer, raw in zip(layers, value if setting.many else [value], strict=False):
            if layer is not None and not setting.lowest <= layer <= high:
                share = "" if override or raw is None else f" (share {raw} of {depth})"
                problems.append(
                    f"config key '{where}' resolves to {layer}{share} on model '{model}', which has "
                    f"{depth} layers: {setting.meaning} must be in {setting.lowest}..{high}"
                )
        resolved[setting.key] = layers if setting.many else layers[0]
    sweep = config["icicl"]["sweep"]
    sweeps = sweep.get("enabled") or config["icicl"].get("settings_from") == "sweep"  # the icicl jobs need it
    if config["icicl"].get("enabled", True) and sweeps and depth < 2:
        problems.append(
            f"config key '{SWEEP_DEPTHS}': model '{model}' has {depth} layer(s); the sweep injects "
            "in 1..L-1, which needs at least 2"
        )
    if problems:
        raise ConfigError("invalid layer settings:\n  - " + "\n  - ".join(problems))
    return resolved


def check_all(config: dict, depths: dict[str, int] | None = None) -> dict[str, dict]:
    """Every layer setting resolved for every model ({model: {key: layer}}), each model's depth read from
    its config.json (or given in `depths`); every problem of every model reported at once."""
    resolved, problems = {}, []
    for model, spec in config["models"].items():
        try:
            depth = depths[model] if depths is not None else model_depth(ModelSpec.from_config(model, spec))
            resolved[model] = resolve(config, model, depth)
        except ConfigError as exc:
            lines = str(exc).splitlines()
            problems += (
                [line.removeprefix("  - ") for line in lines[1:]] if len(lines) > 1 else [f"model '{model}': {exc}"]
            )
    if problems:
        raise ConfigError(
            "invalid layer settings (checked against every model's depth before any job):\n  - "
            + "\n  - ".join(problems)
        )
    return resolved
