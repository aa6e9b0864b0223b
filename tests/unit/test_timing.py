"""The shared timing protocol (iclscope.core.timing): interleaved rounds, the median speed-up over
prompts with its bootstrap interval, tokens per second. No test depends on wall-clock speed."""

import numpy as np
import pytest

from iclscope.core.timing import interleaved, speedup, tokens_per_second

CPU = type("Device", (), {"type": "cpu"})()


def test_interleaved_runs_the_arms_round_by_round_and_prepares_outside_the_clock():
    calls = []

    def arm(name):
        def prepare():
            calls.append(f"prepare {name}")
            return lambda: calls.append(name) or name

        return prepare

    results, seconds = interleaved({"A": arm("A"), "B": arm("B")}, 3, CPU)
    assert [c for c in calls if not c.startswith("prepare")] == ["A", "B", "A", "B", "A", "B"]
    assert calls[:2] == ["prepare A", "A"]  # each call prepared just before it, fresh every round
    assert results == {"A": "A", "B": "B"}
    assert {k: len(v) for k, v in seconds.items()} == {"A": 3, "B": 3} and min(seconds["A"]) >= 0
    with pytest.raises(ValueError, match="at least one round"):
        interleaved({"A": arm("A")}, 0, CPU)


def test_speedup_is_the_median_over_prompts_of_the_per_round_ratios():
    # prompt 1: ratios 2, 4, 3 -> 3; prompt 2: 1, 1, 5 -> 1; prompt 3: 2, 2, 2 -> 2; median over prompts 2
    ref = np.array([[2.0, 4.0, 3.0], [1.0, 1.0, 5.0], [2.0, 2.0, 2.0]])
    arm = np.ones_like(ref)
    est, lo, hi = speedup(ref, arm, n_boot=500, seed=1)
    assert est == 2.0 and 1.0 <= lo <= est <= hi <= 3.0
    # the ratio is taken within each round: a slow round for both arms cancels
    ref, arm = np.array([[1.0, 10.0]]), np.array([[0.5, 5.0]])
    assert speedup(ref, arm, n_boot=0)[0] == 2.0  # medians of the seconds alone would give 5.5 / 2.75 = 2 too
    assert speedup(np.array([[1.0, 10.0, 1.0]]), np.array([[0.5, 10.0, 0.5]]), n_boot=0)[0] == 2.0
    assert np.isnan(speedup(ref, arm, n_boot=100)[1])  # one prompt: no interval
    with pytest.raises(ValueError, match="shapes"):
        speedup(np.ones((2, 3)), np.ones((2, 2)))


def test_tokens_per_second_sums_tokens_over_per_prompt_median_seconds():
    assert tokens_per_second([100, 300], [[1.0, 3.0, 2.0], [2.0, 2.0, 9.0]]) == pytest.approx(400 / 4)
    assert tokens_per_second([10], [0.5]) == 20
