"""Activation patching of task states (Han et al. 2024, docs/methods.md §4.5).

At one layer l, the residual state at the query position (where the answer starts) is replaced
by (or added to) a *task state*: the mean layer-l query state of other prompts of a task, read
from the activation file. Positive intervention = the prompt's own task, negative = the Null
task; the answer is then generated greedily and scored by exact match, against the unpatched
run of the same code path.

The paper averages the states after each demonstration input x_i; we average the query states
of the other prompts of the task (leave-one-out, same shot count), which are the states the
decodability k-NN separates, so the intervention moves a prompt towards the centre of its own
(or the Null) cluster at the layer where that cluster is measured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from iclscope.methods.decodability.knn import peak_layer
from iclscope.methods.icl import clean_generation, exact_match, predictions
from iclscope.model.blocks import input_device
from iclscope.model.capture import Recorder, ResidualPatch, left_pad, no_positions, recording
from iclscope.model.extract import greedy_continue

NULL_TASK = "Null"


def task_states(states: np.ndarray, tasks: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """states [N, d] (one layer), tasks [N] -> (leave-one-out own-task mean [N, d], {task: mean [d]}).

    The leave-one-out mean of row i is the mean over the other rows of its task (its own state
    never leaks into its patch); a task with a single row has no leave-one-out mean (NaN).
    """
    states = states.astype(np.float64)
    own = np.full_like(states, np.nan)
    means = {}
    for task in np.unique(tasks):
        rows = np.flatnonzero(tasks == task)
        total = states[rows].sum(0)
        means[str(task)] = total / len(rows)
        if len(rows) > 1:
            own[rows] = (total[None] - states[rows]) / (len(rows) - 1)
    return own, means


@torch.inference_mode()
def patched_generate(
    net,
    tokenizer,
    n_layers: int,
    input_ids: list,
    layer: int,
    values: torch.Tensor | None,
    mode: str,
    max_new_tokens: int,
) -> tuple[np.ndarray, list[str]]:
    """Greedy answers of a batch with the query state at the input of block `layer` patched.

    values [B, d] (None = no patch; NaN rows are left alone). The patch acts on the prompt pass
    only; the generated tokens then attend to the patched prompt through the KV cache.
    Returns (first-token logits [B, V], decoded answers).
    """
    device = input_device(net)
    ids, mask, pos = left_pad(input_ids, tokenizer.pad_token_id, device)
    B, T = ids.shape
    patches = ()
    if values is not None:
        keep = ~torch.isnan(values).any(-1)
        columns = torch.where(keep, T - 1, -1).to(device)[:, None]  # [B, 1] the query column
        patches = (ResidualPatch(layer, columns, torch.nan_to_num(values).to(device)[:, None], mode),)
    with recording(net, Recorder(n_layers, no_positions(B, device), (), patches=patches)):
        out = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=True)
    logits = out.logits[:, -1].float()
    tokens = greedy_continue(net, out.past_key_values, logits.argmax(-1), mask, pos, max_new_tokens)
    return logits.cpu().numpy(), [tokenizer.decode(t, skip_special_tokens=True) for t in tokens.cpu()]


def choose_layer(decodability: pd.DataFrame | None, shots: int, n_layers: int, layer: int | None) -> int:
    """The configured layer, or the peak of Euclidean decodability (task 'all') at `shots`, kept
    inside 1..n_layers-1 (a block input that exists and is not the embedding)."""
    if layer is None:
        if decodability is None:
            raise ValueError("patching.layer is null (= the peak decodability layer) but no decodability table")
        curve = decodability[
            (decodability.metric == "decodability_euclidean")
            & (decodability.task == "all")
            & (decodability.shots == shots)
        ]
        if curve.empty or curve["value"].isna().all():
            raise ValueError(
                f"no decodability curve at {shots} shots to choose the patching layer from; set patching.layer"
            )
        layer = peak_layer(curve)
    if not 0 <= layer <= n_layers:
        raise ValueError(f"patching.layer {layer} is outside the model's residual stream 0..{n_layers}")
    return min(max(layer, 1), n_layers - 1)


def run_patching(
    prompts_path,
    activations_path,
    decodability_path,
    model_dir,
    model,
    *,
    layer: int | None,
    shots: int | None,
    mode: str,
    max_new_tokens: int,
    dataset: str,
):
    """Accuracy per task with no patch, the own-task state (positive) and the Null state (negative;
    only when the dataset has a Null task).

    Returns (metric table: accuracy per task × condition in `arm`, plus delta_accuracy against
    'none'; per-prompt answers; meta: layer, shots, mode, prompts).
    """
    from tqdm import tqdm

    from iclscope.core.metrics import metric_frame
    from iclscope.core.store import open_activations, read_prompts
    from iclscope.core.tables import read_table
    from iclscope.model.capture import ATTN_IMPLEMENTATION
    from iclscope.model.loading import load_model

    prompts = read_table(prompts_path)
    prompts = prompts[prompts.split == "test"]
    shots = int(prompts["shots"].min()) if shots is None else shots
    if shots not in set(prompts["shots"]):
        raise ValueError(
            f"patching.shots {shots} is not a shot count of dataset '{dataset}' (have {sorted(set(prompts['shots']))})"
        )
    prompts = prompts[prompts.shots == shots].reset_index(drop=True)
    decodability = read_table(decodability_path) if decodability_path else None
    with open_activations(activations_path) as f:
        n_layers = f["resid/query"].shape[1] - 1
        layer = choose_layer(decodability, shots, n_layers, layer)
        ids = read_prompts(f)["prompt_id"]
        row_of = {int(p): i for i, p in enumerate(ids)}
        rows = np.array([row_of[int(p)] for p in prompts["prompt_id"]])
        order = np.argsort(rows)  # h5py reads need increasing indices
        states = np.empty((len(rows), f["resid/query"].shape[2]), dtype=np.float32)
        states[order] = f["resid/query"][rows[order], layer]
    tasks = prompts["task"].to_numpy()
    own, means = task_states(states, tasks)
    patches = {"positive": own}
    if NULL_TASK in means:  # the negative intervention patches the Null task's mean state
        null = np.broadcast_to(means[NULL_TASK], own.shape).copy()
        null[tasks == NULL_TASK] = np.nan  # patching Null with itself is the positive condition
        patches["negative"] = null

    # the unpatched arm is the extraction's own greedy answers (same prompts, same decoding)
    stored = predictions(activations_path)[0].set_index("prompt_id")["pred"]
    answers = {"none": stored.loc[prompts["prompt_id"]].tolist(), **{name: [] for name in patches}}
    net, tok, _ = load_model(model_dir, model, attn_implementation=ATTN_IMPLEMENTATION)
    for lo in tqdm(range(0, len(prompts), model.batch_size), desc=f"patching layer {layer}"):
        batch = prompts.iloc[lo : lo + model.batch_size]
        for name, values in patches.items():
            v = torch.as_tensor(values[lo : lo + len(batch)], dtype=torch.float32)
            _, text = patched_generate(net, tok, n_layers, list(batch["input_ids"]), layer, v, mode, max_new_tokens)
            answers[name] += [clean_generation(t) for t in text]
    conditions = list(answers)
    per_prompt = prompts[["prompt_id", "task", "seed", "answer"]].copy()
    table_rows = []
    for name in conditions:
        per_prompt[f"pred_{name}"] = answers[name]
        per_prompt[f"correct_{name}"] = exact_match(per_prompt[f"pred_{name}"], per_prompt["answer"])
    for task, g in per_prompt.groupby("task", sort=False):
        base = g["correct_none"].mean()
        for name in conditions:
            if name == "negative" and task == NULL_TASK:
                continue
            acc = float(g[f"correct_{name}"].mean())
            common = {"task": task, "arm": name, "layer": layer, "shots": shots, "position": "query"}
            table_rows.append({**common, "metric": "accuracy", "value": acc})
            if name != "none":
                table_rows.append({**common, "metric": "delta_accuracy", "value": acc - base})
    meta = {"layer": layer, "shots": shots, "mode": mode, "prompts": len(prompts)}
    return (metric_frame(table_rows, model=model.name, dataset=dataset, family="decodability"), per_prompt, meta)
