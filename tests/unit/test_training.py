"""The one training loop (iclscope.core.training): the same numbers as a plain loop, its boundaries, and a
killed from-scratch run resuming to the bits of an uninterrupted one. The four trainers built on it keep
their own resume tests (test_toy_regression, test_entropy, test_layer_lora, test_icicl_tsft)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from iclscope.core.training import train_from_scratch, train_steps

X = torch.linspace(-1, 1, 64).reshape(16, 4)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.Adam(model.parameters(), lr=0.05), np.random.default_rng(seed)


def loss_of(model, rng):
    def loss_fn(step: int):
        idx = torch.as_tensor(rng.choice(16, 4, replace=False))
        return ((model(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean(), {"n": len(idx)}

    return loss_fn


def test_train_steps_equals_a_plain_loop_and_calls_every_boundary():
    model, opt, rng = setup()
    seen, rows = [], []
    end = train_steps(opt, loss_of(model, rng), steps=7, at_step=seen.append, log_rows=rows)
    ref, ref_opt, ref_rng = setup()
    losses = []
    for _ in range(7):
        idx = torch.as_tensor(ref_rng.choice(16, 4, replace=False))
        loss = ((ref(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()
        losses.append(loss.item())
    assert end == 7 and seen == list(range(8))  # boundaries 0..7: before the first update and after the last
    assert [r["step"] for r in rows] == list(range(1, 8)) and [r["loss"] for r in rows] == losses
    assert all(r["n"] == 4 for r in rows)
    assert torch.equal(model.weight, ref.weight) and torch.equal(model.bias, ref.bias)


def test_stop_after_ends_at_that_boundary_and_start_resumes_there():
    model, opt, rng = setup()
    seen = []
    assert train_steps(opt, loss_of(model, rng), steps=7, start=2, stop_after=5, at_step=seen.append) == 5
    assert seen == [2, 3, 4, 5]


@dataclass(frozen=True)
class Run:  # the fields of a from-scratch trainer's settings the loop reads
    steps: int = 9
    save_every: int = 4

    def checkpoint_steps(self) -> list[int]:
        return [0, 1, 3, 9]


def run_scratch(tmp_path, stop_after=None, state=True):
    model, opt, rng = setup()
    measured = []

    def measure(step):
        measured.append(step)
        return [{"step": step, "w": model.weight.detach().clone().numpy().tolist()}]

    rows = train_from_scratch(
        model,
        opt,
        rng,
        loss_of(model, rng),
        measure,
        Run(),
        state_path=tmp_path / "state.pt" if state else None,
        digest="d",
        stop_after=stop_after,
    )
    return rows, model, measured


def test_a_killed_scratch_run_resumes_to_the_bits_of_an_uninterrupted_one(tmp_path):
    full, full_model, measured = run_scratch(tmp_path, state=False)
    assert [r["step"] for r in full] == measured == [0, 1, 3, 9]
    assert run_scratch(tmp_path, stop_after=6)[0] is None
    assert (tmp_path / "state.pt").exists()  # written at step 4
    resumed, model, measured = run_scratch(tmp_path)
    assert measured == [9]  # steps 0..4 are not redone: their rows come from the state
    assert resumed == full and torch.equal(model.weight, full_model.weight)
    assert not (tmp_path / "state.pt").exists()  # removed once the run is whole
