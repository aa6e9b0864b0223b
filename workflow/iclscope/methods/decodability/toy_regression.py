"""A small transformer trained from scratch on sparse linear regression (Han et al. 2024, docs/methods.md §4.3).

Each sequence hides one of `n_bases` disjoint coordinate blocks (the task, "basis"); the model sees
K pairs (x_i, y_i) and must predict every y_i from x_i and the pairs before it. Over training we
follow what the paper follows: the test MSE of each basis (does one basis separate first?), the MSE
after k in-context examples against the two least-squares references (basis known: r-dimensional
regression; basis unknown: D-dimensional), and the decodability of the basis from the residual
stream at the last demonstration's y (pair) token, where the paper reads it (docs/methods.md §4.3: the
y-token states at the K-th demonstration), per layer (leave-one-out k-NN, iclscope.methods.decodability.knn).

Two encodings, both 2K tokens read in linearly to d_model, a GPT-2 body with learned positions and
a linear read-out at every query token (cost per step: one forward and backward of
[batch, 2K, d_model]; per checkpoint one forward of the fixed test set):
- "interleaved" (Garg et al. 2022, the paper's presumed setup): x_1, y_1, …, x_K, y_K, each a
  `dim`-vector (y in the first coordinate, zeros elsewhere); the read-out is at x_i.
- "pairs" (the default): q_1, p_1, …, q_K, p_K with a query token q_i = [x_i, 0, 0] and a pair
  token p_i = [x_i, y_i, 1]. A demonstration is one token, so one attention layer can already
  weigh y_j by x_j·x_i (the first step of in-context gradient descent), where the interleaved
  encoding must first learn to copy x_j into y_j's token. Measured on one CPU core (D = 8, r = 2,
  K = 10, d_model 64, 4 layers, batch 32, lr 1e-3): "pairs" leaves the predict-zero plateau within
  a few hundred steps, "interleaved" is still on it after 3,000.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from iclscope.core.config import stable_hash
from iclscope.core.resume import log_spaced_steps
from iclscope.core.training import scratch_gpt2_config, train_from_scratch
from iclscope.data.synthetic import SparseRegressionTask, optimal_mse_reference
from iclscope.methods.decodability.knn import decodability
from iclscope.model.capture import residual_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegressionTraining:
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    n_checkpoints: int = 12
    n_test_per_basis: int = 200
    knn_k: int = 10
    seed: int = 0
    save_every: int = 200
    encoding: str = "pairs"  # or "interleaved" (module docstring)

    def __post_init__(self):
        if self.encoding not in ("pairs", "interleaved"):
            raise ValueError(f"toy_regression: encoding must be 'pairs' or 'interleaved', not {self.encoding!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"toy_regression: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    def checkpoint_steps(self) -> list[int]:
        return log_spaced_steps(self.steps, self.n_checkpoints)


class RegressionTransformer(nn.Module):
    """xs [B, K, D], ys [B, K] -> predictions of y_1..y_K [B, K] (each from the prefix up to x_i)."""

    def __init__(self, dim: int, n_points: int, run: RegressionTraining):
        from transformers import GPT2Model

        super().__init__()
        torch.manual_seed(run.seed)
        cfg = scratch_gpt2_config(
            vocab_size=1, n_positions=2 * n_points, d_model=run.d_model, n_layers=run.n_layers, n_heads=run.n_heads
        )
        self.tokens = self.pairs if run.encoding == "pairs" else self.interleave
        self.read_in = nn.Linear(dim + 2 if run.encoding == "pairs" else dim, run.d_model)
        self.body = GPT2Model(cfg)
        self.read_out = nn.Linear(run.d_model, 1)

    @staticmethod
    def interleave(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """[B, K, D], [B, K] -> tokens [B, 2K, D]: x_1, y_1, x_2, … (y in coordinate 0)."""
        y_tokens = torch.zeros_like(xs)
        y_tokens[..., 0] = ys
        return torch.stack([xs, y_tokens], dim=2).reshape(xs.shape[0], -1, xs.shape[-1])

    @staticmethod
    def pairs(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """[B, K, D], [B, K] -> tokens [B, 2K, D+2]: q_1, p_1, q_2, … (q_i = [x_i,0,0], p_i = [x_i,y_i,1])."""
        zeros = xs.new_zeros(*ys.shape, 1)
        queries = torch.cat([xs, zeros, zeros], dim=-1)
        pairs = torch.cat([xs, ys.unsqueeze(-1), torch.ones_like(zeros)], dim=-1)
        return torch.stack([queries, pairs], dim=2).reshape(xs.shape[0], -1, xs.shape[-1] + 2)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        hidden = self.body(inputs_embeds=self.read_in(self.tokens(xs, ys))).last_hidden_state
        return self.read_out(hidden[:, ::2]).squeeze(-1)

    @torch.no_grad()
    def states_at_last_demonstration(self, xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
        """Residual stream at the last token (y_K or the pair p_K), every layer (0 = read-in): [B, L+1, d_model].

        It has seen all K demonstrations, so the basis can be inferred there (the query tokens carry
        x only); at the default's 1,500 steps the last pair token read 0.27-0.30 against 0.24-0.28
        at the last query token (chance 0.25).
        """
        _, layers = residual_stream(self.body, inputs_embeds=self.read_in(self.tokens(xs, ys)))
        return torch.stack([h[:, -1] for h in layers], dim=1).float().cpu().numpy()


REGRESSION_COLUMNS = ["step", "metric", "layer", "position", "arm", "task", "shots", "value"]
MODEL_ARM = "transformer"  # the trained model's rows; the references' arms are least_squares_<reference>
STATE_POSITION = "last_demonstration"  # where decodability reads the state (states_at_last_demonstration)


def regression_frame(rows: list[dict]) -> pd.DataFrame:
    """The toy's table (docs/outputs.md): REGRESSION_COLUMNS, each meaning what it means in a metric
    table (iclscope.core.metrics): `arm` the predictor (the model, or a least-squares reference), `task`
    the basis a value is over (`basis <b>`, or `all`), `shots` the in-context examples seen before
    the predicted y, `position` where a state was read; `step` the training step (empty for the
    references)."""
    df = pd.DataFrame(rows, columns=REGRESSION_COLUMNS)
    for col in ("step", "layer", "shots"):
        df[col] = pd.array(df[col], dtype="Int64")
    df["value"] = df["value"].astype("float64")
    for col in ("metric", "position", "arm", "task"):
        df[col] = df[col].astype("object")
    return df


def evaluate(model: RegressionTransformer, test: tuple, task: SparseRegressionTask, k: int) -> list[dict]:
    """Per-basis MSE (mean over positions), MSE per number of examples seen, decodability per layer."""
    xs, ys, basis = test
    model.eval()
    with torch.no_grad():
        sq = ((model(xs, ys) - ys) ** 2).cpu().numpy()  # [N, K]
    states = model.states_at_last_demonstration(xs, ys)
    model.train()
    basis = basis.cpu().numpy()
    rows = [{"metric": "mse", "task": "all", "value": float(sq.mean())}]
    rows += [
        {"metric": "mse", "task": f"basis {b}", "value": float(sq[basis == b].mean())} for b in range(task.n_bases)
    ]
    rows += [
        {"metric": "mse_by_examples_seen", "task": "all", "shots": i, "value": float(sq[:, i].mean())}
        for i in range(sq.shape[1])
    ]
    rows += [
        {
            "metric": "decodability",
            "task": "all",
            "layer": layer,
            "position": STATE_POSITION,
            "value": decodability(states[:, layer], basis, k=k),
        }
        for layer in range(states.shape[1])
    ]
    return [{"arm": MODEL_ARM, **r} for r in rows]


def train_regression(
    task: SparseRegressionTask,
    run: RegressionTraining,
    device: str = "cpu",
    resume_dir: Path | None = None,
    weights_dir: Path | None = None,
    stop_after: int | None = None,
) -> pd.DataFrame | None:
    """Train from scratch; the rows of `regression_frame` at log-spaced steps.

    Resumable like iclscope.methods.entropy.toy_lm (state every `save_every` steps in `resume_dir`); `stop_after`
    (tests) returns None at that step, as a kill would. With `weights_dir`, the weights at every
    measured step are kept as `<weights_dir>/step<N>.safetensors` (a RegressionTransformer state dict).
    """
    # a fixed test set, about n_test_per_basis sequences of each basis (the basis is drawn uniformly)
    xs, ys, basis = task.sample(task.n_bases * run.n_test_per_basis, np.random.default_rng(run.seed + 1))
    test = tuple(torch.as_tensor(a).to(device) for a in (xs, ys, basis))
    model = RegressionTransformer(task.dim, task.n_points, run).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=run.lr, betas=(0.9, 0.9999))
    rng = np.random.default_rng(run.seed)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
        bx, by, _ = task.sample(run.batch_size, rng)
        bx, by = torch.as_tensor(bx).to(device), torch.as_tensor(by).to(device)
        return ((model(bx, by) - by) ** 2).mean(), {}

    def measure(step: int) -> list[dict]:
        if weights_dir is not None:
            from safetensors.torch import save_file

            Path(weights_dir).mkdir(parents=True, exist_ok=True)
            save_file(model.state_dict(), Path(weights_dir) / f"step{step:06d}.safetensors")
        return [{"step": step, **r} for r in evaluate(model, test, task, run.knn_k)]

    rows = train_from_scratch(
        model,
        optimiser,
        rng,
        loss_fn,
        measure,
        run,
        state_path=Path(resume_dir) / "regression.pt" if resume_dir is not None else None,
        # the rows' columns too: a state saved with rows of another layout is not resumed
        digest=stable_hash({"task": asdict(task), "run": asdict(run), "columns": REGRESSION_COLUMNS}),
        device=device,
        stop_after=stop_after,
        desc="toy regression",
    )
    return None if rows is None else regression_frame(rows)


def reference_rows(task: SparseRegressionTask, n_sequences: int = 1000) -> list[dict]:
    """Least-squares test MSE after k examples, basis known / unknown (arm `least_squares_basis_known` /
    `least_squares_basis_unknown`; no step: no training)."""
    rows = []
    for k in range(task.n_points):
        ref = optimal_mse_reference(task, k, n_sequences=n_sequences)
        rows += [
            {
                "metric": "mse_by_examples_seen",
                "arm": f"least_squares_{name}",
                "task": "all",
                "shots": k,
                "value": ref[name],
            }
            for name in ("basis_known", "basis_unknown")
        ]
    return rows


def regression_table(trained: pd.DataFrame, task: SparseRegressionTask, n_sequences: int = 1000) -> pd.DataFrame:
    """The trained model's rows and the least-squares references, one table (the rule's output)."""
    return pd.concat([trained, regression_frame(reference_rows(task, n_sequences))], ignore_index=True)
