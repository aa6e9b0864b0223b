"""Compare every table two runs wrote: each parquet / csv under A's and B's results/ (or the folders
themselves), by relative path. Per table: rows, the largest absolute difference of the numeric
columns (where and which column), whether the other columns are equal, what was left out.

Timings differ from run to run and are left out: columns whose name says so (TIMING: seconds,
tokens_per_second, speedup, wall, elapsed, peak memory ...) and, in long tables, rows whose metric
or measure names one (e.g. icicl.parquet's seconds_per_example). Rows are compared in the order the
tables hold them; where the non-numeric columns differ in that order, both tables are sorted by
them first (a table written in a different but equivalent order is not a difference).

    python -m tests.benchmarks.compare_runs A B [--rtol 1e-5] [--atol 1e-6] [--exclude REGEX]

Exits 1 when a table is missing from either run, differs in shape or non-numeric columns, or
differs numerically beyond the tolerance (numpy.isclose: float32 rounding passes by default).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TIMING = (
    r"(^|_)(seconds?|secs?|time|timing|elapsed|wall|cpu_s|duration|speedup|speed_up|tokens_per_second|"
    r"per_second|throughput|rss|peak_mb|peak_rss|mem_mb|memory|runtime)($|_)"
)
LONG_KEYS = ("metric", "measure", "statistic", "quantity")


def tables(root: Path) -> dict[str, Path]:
    """Relative path -> file of every parquet / csv under `root`/results (or `root` itself)."""
    base = root / "results" if (root / "results").is_dir() else root
    return {
        str(p.relative_to(base)): p
        for p in sorted(base.rglob("*"))
        if p.suffix in (".parquet", ".csv") and p.is_file() and "benchmarks" not in p.relative_to(base).parts
    }


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


NAN = "<missing>"


def _plain(v):
    """A cell as nested lists of Python scalars, missing values as one marker (NaN != NaN otherwise)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return NAN
    return v


def _equal_objects(a: pd.Series, b: pd.Series) -> bool:
    """Element-wise equality of non-numeric columns; missing equals missing; arrays and lists by value."""
    return all(_plain(x) == _plain(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


def _leaves(v, out: list) -> bool:
    """Append the numbers of a nested cell to `out`; False where a leaf is not a number."""
    if isinstance(v, list):
        return all(_leaves(x, out) for x in v)
    if v == NAN:
        out.append(np.nan)
        return True
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out.append(float(v))
        return True
    return False


def _shape(v):
    return [_shape(x) for x in v] if isinstance(v, list) else None


def _array_diff(a: pd.Series, b: pd.Series) -> float | None:
    """Largest absolute difference of columns holding numeric arrays (None: not numeric arrays;
    inf: arrays of different shapes or a missing value on one side only)."""
    worst = 0.0
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        x, y = _plain(x), _plain(y)
        xs, ys = [], []
        if not (_leaves(x, xs) and _leaves(y, ys)):
            return None
        if _shape(x) != _shape(y):
            return float("inf")
        xa, ya = np.asarray(xs), np.asarray(ys)
        if (np.isnan(xa) != np.isnan(ya)).any():
            return float("inf")
        d = np.abs(xa - ya)[~np.isnan(xa)]
        worst = max(worst, float(d.max()) if d.size else 0.0)
    return worst


def compare(a: pd.DataFrame, b: pd.DataFrame, timing: str = TIMING, rtol: float = 1e-5, atol: float = 1e-6) -> dict:
    """One table of two runs: excluded columns and metric rows, shape, the largest numeric difference
    (column, row), whether the other columns are equal."""
    pattern = re.compile(timing, re.IGNORECASE)
    excluded = [c for c in a.columns if pattern.search(str(c))]
    out = {"rows": (len(a), len(b)), "excluded_columns": excluded, "excluded_rows": 0}
    if list(a.columns) != list(b.columns):
        return {**out, "error": f"columns differ: {sorted(set(a.columns) ^ set(b.columns))}"}
    a, b = a.drop(columns=excluded), b.drop(columns=excluded)
    for key in LONG_KEYS:
        if key in a.columns and not _is_numeric(a[key]):
            keep_a = ~a[key].astype(str).map(lambda v: bool(pattern.search(v)))
            keep_b = ~b[key].astype(str).map(lambda v: bool(pattern.search(v)))
            out["excluded_rows"] += int((~keep_a).sum())
            out.setdefault("excluded_metrics", []).extend(sorted(set(a[key][~keep_a].astype(str))))
            a, b = a[keep_a], b[keep_b]
    if len(a) != len(b):
        return {**out, "error": f"rows differ: {len(a)} vs {len(b)}"}
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    numeric = [c for c in a.columns if _is_numeric(a[c]) and _is_numeric(b[c])]
    other = [c for c in a.columns if c not in numeric]
    equal = all(_equal_objects(a[c], b[c]) for c in other)
    if not equal and other:  # the same rows in another order?
        hashable = [c for c in other if a[c].map(lambda v: isinstance(v, (str, int, float, bool, type(None)))).all()]
        if hashable:
            a = a.sort_values(hashable, kind="stable", key=lambda s: s.astype(str)).reset_index(drop=True)
            b = b.sort_values(hashable, kind="stable", key=lambda s: s.astype(str)).reset_index(drop=True)
            equal = all(_equal_objects(a[c], b[c]) for c in other)
            out["sorted_by"] = hashable
    out["other_equal"] = equal
    out["other_unequal"] = [c for c in other if not _equal_objects(a[c], b[c])]
    worst, where, beyond = 0.0, None, 0
    for c in numeric:
        x, y = a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float)
        beyond += int((~np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)).sum())
        nan_mismatch = np.isnan(x) != np.isnan(y)
        d = np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))
        d[nan_mismatch] = np.inf
        if d.size and d.max() > worst:
            i = int(np.argmax(d))
            worst, where = float(d[i]), {"column": c, "row": i, "a": x[i], "b": y[i]}
    for c in list(out["other_unequal"]):  # numeric arrays in object columns: a difference, not inequality
        d = _array_diff(a[c], b[c])
        if d is not None and np.isfinite(d):
            out["other_unequal"].remove(c)
            beyond += int(d > atol + rtol)  # arrays: counted once per column, against the absolute part
            if d > worst:
                worst, where = d, {"column": c, "row": None, "a": None, "b": None}
    out["other_equal"] = not out["other_unequal"]
    return {**out, "max_abs_diff": worst, "where": where, "beyond_tolerance": beyond}


def compare_runs(
    a: Path, b: Path, timing: str = TIMING, rtol: float = 1e-5, atol: float = 1e-6
) -> tuple[dict[str, dict], list[str], list[str]]:
    """Every table of two runs: {relative path: compare(...)}, and the paths only in A, only in B."""
    ta, tb = tables(a), tables(b)
    result = {}
    for rel in sorted(set(ta) & set(tb)):
        try:
            result[rel] = compare(read(ta[rel]), read(tb[rel]), timing, rtol, atol)
        except Exception as exc:  # a table one of the runs cannot read is a finding, not a crash
            result[rel] = {"error": f"{type(exc).__name__}: {exc}"}
    return result, sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))


def report(result: dict[str, dict], only_a: list[str], only_b: list[str], out=sys.stdout) -> int:
    """Print the comparison; 1 when a table is missing, unreadable, unequal in text or beyond tolerance."""
    bad = bool(only_a or only_b)
    print(f"{'table':<64} {'rows':>7} {'max |diff|':>11} {'column':<24} other  excluded", file=out)
    for rel, r in result.items():
        if "error" in r:
            bad = True
            print(f"{rel:<64} {'':>7} {'':>11} {'':<24} ERROR  {r['error']}", file=out)
            continue
        where = r["where"]["column"] if r["where"] else ""
        excl = ",".join(r["excluded_columns"])
        if r["excluded_rows"]:
            excl += f" {r['excluded_rows']} rows ({','.join(r['excluded_metrics'])})"
        other = "equal" if r["other_equal"] else "DIFF:" + ",".join(r["other_unequal"])
        bad |= not r["other_equal"] or r["beyond_tolerance"] > 0
        print(f"{rel:<64} {r['rows'][0]:>7} {r['max_abs_diff']:>11.3g} {where:<24} {other}  {excl}", file=out)
    for rel in only_a:
        print(f"only in A: {rel}", file=out)
    for rel in only_b:
        print(f"only in B: {rel}", file=out)
    numbers = {rel: r for rel, r in result.items() if "max_abs_diff" in r}
    if numbers:
        rel = max(numbers, key=lambda k: numbers[k]["max_abs_diff"])
        r = numbers[rel]
        print(f"largest difference: {r['max_abs_diff']:.3g} in {rel} ({r['where']})", file=out)
    print(f"{len(result)} tables compared; " + ("differences found" if bad else "all equal within tolerance"), file=out)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-5, help="numbers equal where |a - b| <= atol + rtol |b|")
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--exclude", default=TIMING, help="regex of timing columns / metric names left out")
    args = parser.parse_args(argv)
    result, only_a, only_b = compare_runs(args.a, args.b, args.exclude, args.rtol, args.atol)
    return report(result, only_a, only_b)


if __name__ == "__main__":
    sys.exit(main())
