"""IC-ICL's validation sweep: every tuned arm's candidate settings scored on the same train-split
inputs outside the pool, with the same budget (`tuning_budget`); no test input is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import pandas as pd

from iclscope.core.config import DatasetSpec, ModelSpec
from iclscope.core.stats import bootstrap_mean
from iclscope.methods.taskspace.icicl.anchor_kv import AnchorKV
from iclscope.methods.taskspace.icicl.arms import ICICLRun
from iclscope.methods.taskspace.icicl.settings import TUNED_ARMS, ICICLSettings, SweepGrid, tuning_budget
from iclscope.methods.taskspace.space import TaskSpace
from iclscope.model.prompts import balanced_sample
from iclscope.model.scoring import Prompt


def sweep_icicl(
    df: pd.DataFrame,
    spec: DatasetSpec,
    model_dir,
    model: ModelSpec,
    spaces: Mapping[str, Mapping[int, TaskSpace]],
    settings: ICICLSettings,
    grid: SweepGrid,
    *,
    var_threshold: float = 0.9,
    max_k: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The validation accuracy of every tuned arm's candidate settings (`tuning_budget`): icicl_soft
    over `grid` (injection layer × state × task space × label line), the task vector over layer ×
    state, anchor_kv over its kept sets, all on the same `grid.n_val` train-split inputs outside
    the pool: no test input is read. Cost: one batched pass over the inputs per setting. Returns
    (table, meta); per tuned arm the row marked `chosen` is its best (ties: fewer tokens, then grid
    order); meta["chosen_by_arm"] holds the chosen settings (the icicl config keys), meta["tuning"]
    the budget."""

    def layers_of(L: int) -> list[int]:
        return sorted(set(grid.layers(L)) | set(tuning_budget(grid, L)["task_vector"]["grid"]["layer"]))

    run = ICICLRun(df, spec, model_dir, model, settings, layers_of, var_threshold=var_threshold, max_k=max_k)
    budget = tuning_budget(grid, run.n_layers)
    val = balanced_sample(
        run.train_rest,
        run.classes,
        grid.n_val,
        settings.seed + 2,
        f"dataset '{spec.name}' train split outside the pool (icicl.sweep.n_val)",
    )
    inputs = run.inputs(val)

    def scored(prompts: list[Prompt], at: int | None, outs=None, **setting) -> dict:
        if outs is None:
            outs = run.scorer.score_many(prompts, at, desc=" ".join(map(str, setting.values())))
        correct = np.array([o.label_logits.argmax() for o in outs]) == inputs.gold
        lo, hi = bootstrap_mean(correct, settings.n_boot, settings.seed)
        return {
            **setting,
            "accuracy": correct.mean(),
            "ci_low": lo,
            "ci_high": hi,
            "tokens": float(np.mean([len(p.ids) for p in prompts])),
            "n_val": len(val),
        }

    rows = [
        scored(run.zero_shot_prompts(inputs), None, inputs.zero_shot, arm="zero_shot"),  # scored by `inputs`
        scored(run.full_prompts(inputs), None, arm="full_icl"),
    ]
    for layer in budget["icicl_soft"]["grid"]["layer"]:
        for state in grid.states:
            for variant in grid.task_spaces:
                vectors, space = run.compressed(layer, state, variant, spaces)
                for label_line in grid.label_line:
                    rows.append(
                        scored(
                            run.soft_prompts(inputs, vectors, label_line),
                            layer,
                            arm="icicl_soft",
                            layer=layer,
                            depth=round(layer / run.n_layers, 3),
                            state=state,
                            task_space=variant,
                            label_line=label_line,
                            space_k=int(space.k) if space else int(vectors.shape[1]),
                        )
                    )
    for layer in budget["task_vector"]["grid"]["layer"]:
        for state in grid.states:
            rows.append(
                scored(
                    run.task_vector_prompts(inputs, run.state_vectors(layer, state)),
                    layer,
                    arm="task_vector",
                    layer=layer,
                    depth=round(layer / run.n_layers, 3),
                    state=state,
                )
            )
    queries = run.query_ids(inputs)
    pairs = [(j, slot) for d in inputs.demos for slot, j in enumerate(d)]
    for keep in budget["anchor_kv"]["grid"]["keep"]:
        kv = AnchorKV(run.net, run.tokenizer, spec, run.pool_texts, run.pool_labels, 0, settings.seed, keep)
        kv.build(pairs, run.scorer.batch_size, run.scorer.max_batch_tokens)
        outs = kv.score_many(run.scorer, inputs.demos, queries, None, desc=f"anchor_kv {keep}")
        correct = np.array([o.label_logits.argmax() for o in outs]) == inputs.gold
        lo, hi = bootstrap_mean(correct, settings.n_boot, settings.seed)
        tokens = np.mean([len(q) + kv.kept_length(d) for q, d in zip(queries, inputs.demos, strict=True)])
        rows.append(
            {
                "arm": "anchor_kv",
                "keep": keep,
                "accuracy": correct.mean(),
                "ci_low": lo,
                "ci_high": hi,
                "tokens": float(tokens),
                "n_val": len(val),
            }
        )
    table = pd.DataFrame(rows)
    table["chosen"] = False
    keys = {
        "icicl_soft": ("layer", "state", "task_space", "label_line"),
        "task_vector": ("layer", "state"),
        "anchor_kv": ("keep",),
    }
    config_key = {
        ("task_vector", "layer"): "task_vector_layer",
        ("task_vector", "state"): "task_vector_state",
        ("anchor_kv", "keep"): "anchor_keep",
        ("icicl_soft", "layer"): "inject_layer",
    }
    chosen_by_arm = {}
    for arm in TUNED_ARMS:
        cands = table[table.arm == arm]
        best = cands.sort_values(["accuracy", "tokens"], ascending=[False, True], kind="stable").index[0]
        table.loc[best, "chosen"] = True
        # config values: a layer as its depth share (what config.yaml takes), the absolute layer beside it
        chosen_by_arm[arm] = {
            config_key.get((arm, k), k): (
                float(table.at[best, "depth"]) if k == "layer" else (v.item() if hasattr(v, "item") else v)
            )
            for k, v in ((k, table.at[best, k]) for k in keys[arm])
        }
        if "layer" in keys[arm]:
            chosen_by_arm[arm]["resid_index"] = int(table.at[best, "layer"])
        chosen_by_arm[arm]["validation_accuracy"] = float(table.at[best, "accuracy"])
    soft_best = table[(table.arm == "icicl_soft") & table.chosen].index[0]
    chosen = {k: table.at[soft_best, k] for k in ("layer", "state", "task_space", "label_line")}
    meta = {
        "grid": asdict(grid),
        "n_layers": run.n_layers,
        "validation_rows": len(val),
        "chosen": {k: (v.item() if hasattr(v, "item") else v) for k, v in chosen.items()},
        "chosen_by_arm": chosen_by_arm,
        "tuning": budget,
        "pool_states_seconds": round(run.pool_seconds, 3),
    }
    return table, meta
