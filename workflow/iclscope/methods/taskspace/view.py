"""A 2-D view of the test queries in a task space (docs/methods.md §1.2), for the task_space figure:
the compression job writes it beside its table, so the figure reads a small table, not the activations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iclscope.core.store import open_activations, read_prompts
from iclscope.methods.taskspace.space import TaskSpace, project, read_task_spaces

VIEW_COLUMNS = ["model", "dataset", "variant", "layer", "kind", "class", "x", "y", "y_axis"]


def plane(states: np.ndarray, space: TaskSpace) -> tuple[np.ndarray, np.ndarray, str]:
    """States [n, d] and the prototypes in 2-D: x = the first task-space coordinate, y = the second
    (k >= 2) or the first principal direction outside the space (k = 1; prototypes at y = 0).
    Returns (xy [n, 2], prototypes [C, 2], what y is)."""
    Z = project(states, space)
    if space.k >= 2:
        return Z[:, :2], space.prototypes[:, :2], "task-space coordinate 2"
    centred = np.asarray(states, dtype=np.float64) - space.mean
    rest = centred - (centred @ space.basis.T) @ space.basis
    _, _, vt = np.linalg.svd(rest - rest.mean(0), full_matrices=False)
    prototypes = np.column_stack([space.prototypes[:, 0], np.zeros(len(space.prototypes))])
    return np.column_stack([Z[:, 0], rest @ vt[0]]), prototypes, "first principal direction outside the space"


def task_space_view(
    activations, task_spaces, compression: pd.DataFrame, *, model: str, dataset: str, variant: str = "class_mean"
) -> pd.DataFrame:
    """The test queries (`kind` query, their gold `class`) and the class prototypes (`kind` prototype) of
    `variant` in 2-D (`plane`), at the layer where `variant` decodes the task best at the query
    (`compression`: the compression table of the same files). One row per point, columns VIEW_COLUMNS."""
    dec = compression[
        (compression.metric == "decoding_accuracy")
        & (compression.variant == variant)
        & (compression.position == "query")
    ]
    layer = int(dec.loc[dec["value"].idxmax(), "layer"])
    space = read_task_spaces(task_spaces, variant)[layer]
    with open_activations(activations) as f:
        prompts = read_prompts(f)
        test = np.sort(np.flatnonzero(prompts["split"] == "test"))
        states = f["resid/query"][test, layer].astype(np.float64)  # [N_test, d]
        gold = prompts["gold"][test]
        classes = [str(c) for c in f.attrs["classes"]]
    xy, protos, y_axis = plane(states, space)
    points = pd.DataFrame({"kind": "query", "class": [classes[g] for g in gold], "x": xy[:, 0], "y": xy[:, 1]})
    centres = pd.DataFrame({"kind": "prototype", "class": classes, "x": protos[:, 0], "y": protos[:, 1]})
    view = pd.concat([points, centres], ignore_index=True)
    view = view.assign(model=model, dataset=dataset, variant=variant, layer=layer, y_axis=y_axis)
    return view[VIEW_COLUMNS]
