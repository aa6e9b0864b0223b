"""Training-free task spaces and the compression diagnostics on them (Yang et al. 2025).

A reconstruction (docs/methods.md §1.2–1.3; the paper's construction is unknown, so every choice is
a parameter recorded with the space). Per layer:

  1. one vector per class: the mean of its *anchor* states (variant "anchor": the label word in
     neutral carrier prompts) or of its labelled query states (variant "class_mean");
  2. centre the C class vectors on their mean μ; SVD; keep the smallest k whose cumulative
     explained variance reaches `var_threshold` (k ≤ C−1, ≤ max_k): the PCA-denoised basis
     B [k, d] with orthonormal rows;
  3. prototypes â_c = B (a_c − μ).

Diagnostics of a state h: z = B (h − μ); energy ratio ρ = ||z||² / ||h − μ||²; decoded class
argmax_c cos(z, â_c); plug-in mutual information I(Ĉ; Y) from the confusion matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import h5py
import numpy as np


@dataclass(frozen=True)
class TaskSpace:
    """basis [k, d] (orthonormal rows), mean [d], prototypes [C, k], explained_var [k] (fractions)."""

    basis: np.ndarray
    mean: np.ndarray
    prototypes: np.ndarray
    explained_var: np.ndarray
    classes: tuple[str, ...]
    variant: str
    layer: int

    def __post_init__(self):
        k, d = self.basis.shape
        if self.mean.shape != (d,):
            raise ValueError(f"TaskSpace.mean has shape {self.mean.shape}, expected ({d},)")
        if self.prototypes.shape != (len(self.classes), k):
            raise ValueError(
                f"TaskSpace.prototypes has shape {self.prototypes.shape}, expected ({len(self.classes)}, {k})"
            )
        if self.explained_var.shape != (k,):
            raise ValueError(f"TaskSpace.explained_var has shape {self.explained_var.shape}, expected ({k},)")

    @property
    def k(self) -> int:
        return self.basis.shape[0]


def class_vectors(X: np.ndarray, labels, classes) -> np.ndarray:
    """Mean of X [n, d] per class, in `classes` order -> [C, d]."""
    labels = np.asarray(labels)
    missing = [c for c in classes if not np.any(labels == c)]
    if missing:
        raise ValueError(f"no states for class(es) {missing}")
    return np.stack([X[labels == c].mean(0) for c in classes])


def fit_task_space(
    X: np.ndarray, labels, classes, *, variant: str, layer: int, var_threshold: float = 0.9, max_k: int | None = None
) -> TaskSpace:
    """Fit the space of one layer from states X [n, d] with class `labels` (see module docstring)."""
    if not 0 < var_threshold <= 1:
        raise ValueError(f"var_threshold must be in (0, 1], got {var_threshold}")
    classes = tuple(str(c) for c in classes)
    if len(classes) < 2:
        raise ValueError("a task space needs at least two classes")
    A = class_vectors(np.asarray(X, dtype=np.float64), np.asarray(labels).astype(str), classes)  # [C, d]
    mu = A.mean(0)
    _, s, vt = np.linalg.svd(A - mu, full_matrices=False)  # vt [C, d]
    var = s**2 / max((s**2).sum(), 1e-300)
    limit = min(len(classes) - 1, max_k or len(classes), vt.shape[0])
    k = int(min(limit, np.searchsorted(np.cumsum(var), var_threshold - 1e-12) + 1))
    basis = vt[:k]
    return TaskSpace(
        basis=basis,
        mean=mu,
        prototypes=(A - mu) @ basis.T,
        explained_var=var[:k],
        classes=classes,
        variant=variant,
        layer=int(layer),
    )


def project(H: np.ndarray, space: TaskSpace) -> np.ndarray:
    """H [n, d] -> Z [n, k] coordinates in the task space."""
    return (np.asarray(H, dtype=np.float64) - space.mean) @ space.basis.T


def reconstruct(Z: np.ndarray, space: TaskSpace) -> np.ndarray:
    """Z [n, k] -> [n, d] points μ + Bᵀ z (the compressed states)."""
    return space.mean + np.asarray(Z) @ space.basis


def energy_ratio(H: np.ndarray, space: TaskSpace) -> np.ndarray:
    """||B(h−μ)||² / ||h−μ||² per row of H [n, d]; 0 where h = μ."""
    centred = np.asarray(H, dtype=np.float64) - space.mean
    total = (centred**2).sum(1)
    inside = (project(H, space) ** 2).sum(1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def decode(H: np.ndarray, space: TaskSpace) -> np.ndarray:
    """Class index [n] whose prototype is most cosine-similar to the projection of each row of H."""
    Z = project(H, space)
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True).clip(1e-12)
    P = space.prototypes / np.linalg.norm(space.prototypes, axis=1, keepdims=True).clip(1e-12)
    return np.argmax(Zn @ P.T, axis=1)


def plugin_mutual_information(pred, gold, n_classes: int) -> tuple[float, float]:
    """Plug-in I(Ĉ; Y) in nats from the confusion matrix, and I / H(Y) (0 when H(Y) = 0)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (gold, pred), 1)
    joint /= max(joint.sum(), 1)
    py, pc = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(py, pc)[nz])).sum())
    h = float(-(py[py > 0] * np.log(py[py > 0])).sum())
    return mi, (mi / h if h > 0 else 0.0)


def write_task_space(group: h5py.Group, space: TaskSpace) -> None:
    for name in ("basis", "mean", "prototypes", "explained_var"):
        group.create_dataset(name, data=np.asarray(getattr(space, name), dtype=np.float32))
    group.attrs.update(variant=space.variant, layer=space.layer, classes=json.dumps(list(space.classes)))


def read_task_space(group: h5py.Group) -> TaskSpace:
    return TaskSpace(
        **{n: group[n][()].astype(np.float64) for n in ("basis", "mean", "prototypes", "explained_var")},
        classes=tuple(json.loads(group.attrs["classes"])),
        variant=str(group.attrs["variant"]),
        layer=int(group.attrs["layer"]),
    )


def build_task_spaces(
    activations,
    anchors,
    out_path,
    *,
    var_threshold: float = 0.9,
    max_k: int | None = None,
    variants=("anchor", "class_mean"),
) -> dict:
    """Fit both variants at every layer and write `out_path` (HDF5: /<variant>/L<l>/...).

    anchor: from the anchor file's /anchors/resid [C, m, L+1, d] (label words in carriers);
    class_mean: from query states of the train-split prompts of the activation file (labelled
    prompts the evaluation never sees). Reads one layer at a time.
    """
    from iclscope.core.atomic import written
    from iclscope.core.store import open_activations, read_prompts

    out_path = str(out_path)
    summary = {}
    with open_activations(activations) as act:
        prompts = read_prompts(act)
        classes = [str(c) for c in act.attrs["classes"]]
        n_layers = int(act.attrs["n_layers"])
        train = np.flatnonzero(prompts["split"] == "train")
        if "class_mean" in variants and len(train) == 0:
            raise ValueError(
                f"{activations} has no train-split prompts; set prompts.n_train > 0 for the "
                "class_mean task space (or use only the anchor variant)"
            )
        gold = np.array(classes)[prompts["gold"][train]]
        anchor_states = None
        if "anchor" in variants:
            with h5py.File(anchors) as f:
                anchor_states = f["anchors/resid"][()]  # [C, m, L+1, d]
        with written(out_path) as tmp:
            with h5py.File(tmp, "w") as out:
                out.attrs.update(
                    var_threshold=var_threshold,
                    max_k=-1 if max_k is None else max_k,
                    classes=json.dumps(classes),
                    n_layers=n_layers,
                    source=str(activations),
                    reconstruction="P1-reconstruction (docs/methods.md §1.2)",
                )

                def fit(variant: str, layer: int, X: np.ndarray, labels) -> None:
                    space = fit_task_space(
                        X, labels, classes, variant=variant, layer=layer, var_threshold=var_threshold, max_k=max_k
                    )
                    write_task_space(out.create_group(f"{variant}/L{layer}"), space)
                    summary.setdefault(f"{variant}_k", []).append(space.k)

                for layer in range(n_layers + 1):
                    if anchor_states is not None:
                        C, m = anchor_states.shape[:2]
                        fit("anchor", layer, anchor_states[:, :, layer].reshape(C * m, -1), np.repeat(classes, m))
                    if "class_mean" in variants:
                        fit("class_mean", layer, act["resid/query"][np.sort(train), layer].astype(np.float64), gold)
    return summary


def read_task_spaces(path, variant: str) -> dict[int, TaskSpace]:
    """{layer: TaskSpace} of one variant from a task-space file."""
    with h5py.File(path) as f:
        if variant not in f:
            raise ValueError(f"{path} has no '{variant}' task spaces (has {list(f)})")
        return {int(name[1:]): read_task_space(g) for name, g in f[variant].items()}
