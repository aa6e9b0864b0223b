"""`make gpu-check` (tests/benchmarks/gpu_check.py) cannot run its GPU sections here; its CPU parts
must: the reduced config validates, the multi-device section runs on the CPU (cpu + disk dispatch) and
its rows are parsed into the PASS/FAIL table, the table comparison passes and fails as stated."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from benchmarks import gpu_check


def test_cpu_self_check_runs_and_passes(capsys):
    assert gpu_check.main(["--device", "cpu", "--sections", "config,multi", "--select", "token_states"]) == 0
    out = capsys.readouterr().out
    assert "gpu-check: PASS" in out and "reduced config validates" in out and "plans every model stage" in out
    assert "token_states" in out and "over cpu+disk" in out


def write(root, side, dataset, name, values):
    path = root / "results/metrics" / side / dataset / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"metric": ["accuracy", "seconds", "accuracy"], "layer": [0, 0, 1], "value": values}).to_parquet(path)


def test_table_comparison_passes_within_tolerance_and_fails_outside(tmp_path):
    write(tmp_path, "smollm2-cpu", "tweets", "saliency", [0.50, 1.0, 0.70])
    write(tmp_path, "smollm2-cuda", "tweets", "saliency", [0.52, 9.0, 0.69])  # timings are not compared
    write(tmp_path, "smollm2-cpu", "tweets", "isolation", [0.5, 1.0, 0.5])
    write(tmp_path, "smollm2-cuda", "tweets", "isolation", [0.9, 1.0, 0.5])  # 0.4 > 0.15
    write(tmp_path, "smollm2-cpu", "tweets", "tsft", [0.5, 1.0, 0.5])  # no bf16 table
    rows = gpu_check.compare_tables(tmp_path).set_index("check")
    assert rows.loc["tweets/saliency", "result"] == "PASS"
    assert rows.loc["tweets/saliency", "max_abs_diff"] == pytest.approx(0.02)
    assert rows.loc["tweets/isolation", "result"] == "FAIL" and rows.loc["tweets/tsft", "result"] == "FAIL"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_so(capsys):
    assert gpu_check.main([]) == 2
    assert "--device cpu" in capsys.readouterr().out
