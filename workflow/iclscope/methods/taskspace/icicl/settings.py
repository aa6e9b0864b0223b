"""IC-ICL's settings: the evaluation's (ICICLSettings), the validation sweep's grid (SweepGrid) and
its budget per tuned arm (`tuning_budget`), and every arm's settings as it ran (`arm_settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from iclscope.core.config import ConfigError

STATES = ("last", "label", "mean")  # which state of a demonstration becomes its soft token
# anchor_kv's kept set: template + separator + label tokens (the paper's anchors), or the label tokens alone
ANCHOR_KEEP = ("anchors", "label")
TASK_SPACES = ("pool", "class_mean", "anchor")  # + "identity" in the sweep: no compression


@dataclass(frozen=True)
class ICICLSettings:
    k: int = 4
    pool_size: int = 200
    n_test: int | None = 400  # None = every test row
    n_timed: int = 40  # test inputs timed at batch 1 (a fixed random sample)
    retrieval: str = "similar"  # similar | random
    embed_layer: int | None = None  # None = middle layer
    inject_layer: int | None = None  # None = middle layer
    state: str = "last"  # last | label | mean
    task_space: str = "pool"  # pool | class_mean | anchor
    label_line: bool = True  # the soft token is followed by its label line as text
    warmup: int = 3
    repeats: int = 5  # interleaved timing rounds (iclscope.core.timing)
    seed: int = 42
    random_draws: int = 3  # Hidden_random draws (paper 20); each costs one short forward per test input
    word_k: int = 5  # word loyalty: top-k vocabulary tokens (the anchors.word_k config key)
    n_boot: int = 1000  # bootstrap resamples of the paired intervals
    # the other arms' own settings (chosen by `sweep_icicl` on the validation split, as IC-ICL's)
    task_vector_layer: int | None = None  # residual index the task vector is written at; None = inject_layer
    task_vector_state: str | None = None  # the demonstrations' state it averages; None = `state`
    anchor_keep: str = "anchors"  # anchor_kv's kept set (ANCHOR_KEEP)

    def __post_init__(self):
        if self.task_vector_state is not None and self.task_vector_state not in STATES:
            raise ConfigError(f"icicl.task_vector_state: {self.task_vector_state!r}; use one of {STATES} or null")
        if self.anchor_keep not in ANCHOR_KEEP:
            raise ConfigError(f"icicl.anchor_keep: {self.anchor_keep!r}; use one of {ANCHOR_KEEP}")
        if self.random_draws < 1:
            raise ConfigError(f"icicl.random_draws: {self.random_draws}; need at least one Hidden_random draw")
        if self.word_k < 1:
            raise ConfigError(f"anchors.word_k: {self.word_k}; need at least 1")
        if self.retrieval not in ("similar", "random"):
            raise ConfigError(f"icicl.retrieval: {self.retrieval!r}; use 'similar' or 'random'")
        if self.k < 1 or self.pool_size < self.k:
            raise ConfigError(f"icicl: need 1 <= k ({self.k}) <= pool_size ({self.pool_size})")
        if self.state not in STATES:
            raise ConfigError(f"icicl.state: {self.state!r}; use one of {STATES}")
        if self.task_space not in TASK_SPACES:
            raise ConfigError(f"icicl.task_space: {self.task_space!r}; use one of {TASK_SPACES}")
        if self.n_test is not None and self.n_test < 1 or self.n_timed < 1:
            raise ConfigError(f"icicl: n_test ({self.n_test}) and n_timed ({self.n_timed}) must be >= 1")


@dataclass(frozen=True)
class SweepGrid:
    """The reconstruction choices `sweep_icicl` scores on the validation split (the full grid)."""

    depths: tuple[float, ...] = (0.33, 0.5, 0.67)  # injection layers as a share of the depth
    states: tuple[str, ...] = STATES
    task_spaces: tuple[str, ...] = (*TASK_SPACES, "identity")
    label_line: tuple[bool, ...] = (True, False)
    n_val: int = 200  # balanced train-split inputs outside the pool

    def __post_init__(self):
        if not self.depths or any(not 0 < d < 1 for d in self.depths):
            raise ConfigError(f"icicl.sweep.depths: {self.depths}; need values strictly between 0 and 1")
        bad = set(self.states) - set(STATES) or set(self.task_spaces) - {*TASK_SPACES, "identity"}
        if bad or not self.states or not self.task_spaces or not self.label_line:
            raise ConfigError(f"icicl.sweep: unknown or empty choices {sorted(map(str, bad)) or ''}")

    def layers(self, n_layers: int) -> list[int]:
        """Residual indices round(depth · L), inside [1, L − 1], without repeats."""
        return sorted({min(max(round(d * n_layers), 1), n_layers - 1) for d in self.depths})


def arm_settings(
    settings: ICICLSettings, inject_layer: int, tv_layer: int, n_layers: int, tuned_on: str = "config"
) -> dict[str, dict]:
    """Every arm's settings as it ran (the table's metadata, docs/methods.md §1.4): the arms with
    settings (icicl_soft, icicl_identity, task_vector, anchor_kv, and hidden_random, anchor_kv's
    cache with its label KV swapped) and the shared retrieval of every arm. Each tuned arm
    (`TUNED_ARMS`) says where its settings were chosen in `tuned_on`: "validation" (this dataset's
    own sweep, icicl.settings_from: sweep) or "config" (the config's keys)."""
    shared = {"k": settings.k, "retrieval": settings.retrieval, "pool_size": settings.pool_size}
    soft = {
        "inject_layer": inject_layer,
        "depth": round(inject_layer / n_layers, 3),
        "state": settings.state,
        "label_line": settings.label_line,
    }
    if tuned_on not in ("config", "validation"):
        raise ValueError(f"tuned_on: {tuned_on!r}; 'config' or 'validation'")
    return {
        "zero_shot": {},
        "full_icl": shared,
        "icicl_soft": {**shared, **soft, "task_space": settings.task_space, "tuned_on": tuned_on},
        "icicl_identity": {**shared, **soft, "task_space": "identity"},
        "task_vector": {
            **shared,
            "layer": tv_layer,
            "depth": round(tv_layer / n_layers, 3),
            "state": settings.task_vector_state or settings.state,
            "tuned_on": tuned_on,
        },
        "anchor_kv": {**shared, "keep": settings.anchor_keep, "tuned_on": tuned_on},
        "text_anchor": shared,
        "hidden_random": {**shared, "keep": settings.anchor_keep, "draws": settings.random_draws},
    }


TUNED_ARMS = ("icicl_soft", "task_vector", "anchor_kv")  # the arms with settings, tuned alike by `sweep_icicl`
# per tuned arm, the icicl config keys its sweep chooses (the sweep meta's chosen_by_arm holds them; with
# icicl.settings_from: sweep they are not in the icicl job's params: iclscope.core.jobs.ICICL_TUNED_KEYS)
TUNED_KEYS = {
    "icicl_soft": ("inject_layer", "state", "task_space", "label_line"),
    "task_vector": ("task_vector_layer", "task_vector_state"),
    "anchor_kv": ("anchor_keep",),
}
LAYER_KEYS = ("inject_layer", "task_vector_layer")  # chosen as a depth share; applied as the sweep's resid_index


def chosen_settings(sweep_meta: Mapping) -> dict:
    """The ICICLSettings values a validation sweep chose per tuned arm, from its table's meta
    (`sweep_icicl`: meta["chosen_by_arm"]): a layer as the residual index the sweep scored
    (`resid_index`; the share beside it is rounded), every other key as chosen."""
    by_arm = sweep_meta.get("chosen_by_arm") or {}
    out = {}
    for arm, keys in TUNED_KEYS.items():
        chosen = by_arm.get(arm) or {}
        needed = (*keys, "resid_index") if set(keys) & set(LAYER_KEYS) else keys
        missing = [k for k in needed if k not in chosen]
        if missing:
            raise ConfigError(
                f"icicl.settings_from: sweep: the sweep table chose no {arm} setting {missing} "
                "(rerun icicl_sweep with this code)"
            )
        for key in keys:
            out[key] = int(chosen["resid_index"]) if key in LAYER_KEYS else chosen[key]
    return out


def evaluation_settings(icicl: Mapping, word_k: int, sweep_meta: Mapping | None = None) -> tuple[ICICLSettings, dict]:
    """The evaluation's settings from its job's icicl section, and where its tuned arms' settings come
    from (the metric table's meta["settings_source"]). icicl.settings_from "config": the section's keys;
    "sweep": the section holds no `TUNED_KEYS` and `sweep_meta` (this dataset's own sweep table's meta)
    gives them, each arm's chosen setting (`chosen_settings`), chosen on the validation split."""
    icicl = dict(icicl)
    source = icicl.pop("settings_from")
    if source == "config":
        return ICICLSettings(**icicl, word_k=word_k), {"settings_from": "config", "tuned_on": "config"}
    if source != "sweep":
        raise ConfigError(f"icicl.settings_from: {source!r}; use 'config' or 'sweep'")
    if sweep_meta is None:
        raise ConfigError("icicl.settings_from: sweep, but the job has no sweep table among its inputs")
    given = sorted({k for keys in TUNED_KEYS.values() for k in keys} & set(icicl))
    if given:
        raise ConfigError(f"icicl.settings_from: sweep, but the job's settings hold the tuned keys {given}")
    settings = ICICLSettings(**icicl, **chosen_settings(sweep_meta), word_k=word_k)
    return settings, {
        "settings_from": "sweep",
        "tuned_on": "validation",
        "split": "train rows outside the retrieval pool (icicl_sweep)",
        "validation_inputs": sweep_meta.get("validation_rows"),
        "n_layers": sweep_meta.get("n_layers"),
        "chosen_by_arm": sweep_meta["chosen_by_arm"],
        "tuning": sweep_meta.get("tuning"),
    }


def task_vector_layers(n_layers: int, budget: int, n_states: int) -> list[int]:
    """The task vector's candidate layers: every residual index 1..L−1, or, when layers × states would
    exceed `budget` settings, budget // n_states of them evenly spaced (first and last kept)."""
    every = list(range(1, n_layers))
    n = max(1, min(len(every), budget // max(n_states, 1)))
    if n >= len(every):
        return every
    return sorted({every[round(i)] for i in np.linspace(0, len(every) - 1, n)})


def tuning_budget(grid: SweepGrid, n_layers: int) -> dict[str, dict]:
    """Per tuned arm, its candidate grid and how many settings the sweep scores, all on the same
    `grid.n_val` validation inputs (train rows outside the pool): the budget B is IC-ICL's grid
    (layers × states × task spaces × label line); the task vector gets B settings of its own grid
    (layer × state; every layer while that fits), anchor_kv its whole grid (its kept sets, fewer than B)."""
    soft = {
        "layer": grid.layers(n_layers),
        "state": list(grid.states),
        "task_space": list(grid.task_spaces),
        "label_line": list(grid.label_line),
    }
    budget = int(np.prod([len(v) for v in soft.values()]))
    tv = {"layer": task_vector_layers(n_layers, budget, len(grid.states)), "state": list(grid.states)}
    anchor = {"keep": list(ANCHOR_KEEP)}
    out = {}
    for arm, candidates in (("icicl_soft", soft), ("task_vector", tv), ("anchor_kv", anchor)):
        out[arm] = {
            "grid": candidates,
            "settings_scored": int(np.prod([len(v) for v in candidates.values()])),
            "budget": budget,
            "validation_inputs": grid.n_val,
            "split": "train rows outside the retrieval pool",
        }
    return out
