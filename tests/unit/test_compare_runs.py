"""tests/benchmarks/compare_runs.py: the table diff of two runs (issue 30's "every method's table
unchanged on the default run"): numeric differences, timings left out, reordered rows, unequal text."""

import io

import numpy as np
import pandas as pd
from benchmarks.compare_runs import compare, compare_runs, report


def write(root, rel, df):
    path = root / "results" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path) if path.suffix == ".parquet" else df.to_csv(path, index=False)


def test_timings_are_left_out_and_numbers_compared(tmp_path):
    a = pd.DataFrame({"arm": ["x", "y"], "metric": ["accuracy", "seconds_per_example"], "value": [0.5, 1.0]})
    b = a.assign(value=[0.5 + 1e-4, 9.0])
    r = compare(a, b)
    assert r["excluded_rows"] == 1 and r["excluded_metrics"] == ["seconds_per_example"]
    assert np.isclose(r["max_abs_diff"], 1e-4) and r["where"]["column"] == "value" and r["other_equal"]
    assert r["beyond_tolerance"] == 1 and compare(a, a.assign(value=[0.5 * (1 + 1e-7), 1.0]))["beyond_tolerance"] == 0
    t = pd.DataFrame({"layer": [0, 1], "acc": [0.1, 0.2], "seconds": [3.0, 4.0], "tokens_per_second": [1.0, 2.0]})
    r = compare(t, t.assign(seconds=[5.0, 6.0], tokens_per_second=[7.0, 8.0]))
    assert r["excluded_columns"] == ["seconds", "tokens_per_second"] and r["max_abs_diff"] == 0


def test_reordered_rows_nan_and_arrays_are_equal_but_text_is_not(tmp_path):
    a = pd.DataFrame({"k": ["a", "b"], "v": [1.0, np.nan], "ids": [np.array([1, 2]), np.array([3])]})
    b = a.iloc[::-1].reset_index(drop=True)
    r = compare(a, b)
    assert r["other_equal"] and r["max_abs_diff"] == 0 and r["sorted_by"] == ["k"]
    r = compare(a, a.assign(v=[1.0, 2.0]))
    assert r["max_abs_diff"] == np.inf  # missing on one side only
    r = compare(a, a.assign(k=["a", "c"]))
    assert not r["other_equal"] and r["other_unequal"] == ["k"]


def test_runs_report_missing_tables_and_the_largest_difference(tmp_path):
    A, B = tmp_path / "A", tmp_path / "B"
    t = pd.DataFrame({"layer": [0, 1], "score": [0.25, 0.75]})
    write(A, "metrics/m/d/x.parquet", t)
    write(B, "metrics/m/d/x.parquet", t.assign(score=[0.25, 0.5]))
    write(A, "summary/s.csv", t)
    write(B, "summary/s.csv", t)
    write(A, "metrics/only_a.parquet", t)
    result, only_a, only_b = compare_runs(A, B)
    assert set(result) == {"metrics/m/d/x.parquet", "summary/s.csv"} and only_a == ["metrics/only_a.parquet"]
    out = io.StringIO()
    assert report(result, only_a, only_b, out) == 1
    assert "largest difference: 0.25 in metrics/m/d/x.parquet" in out.getvalue()
    result, _, _ = compare_runs(A / "results" / "summary", B / "results" / "summary")
    assert report(result, [], [], io.StringIO()) == 0
