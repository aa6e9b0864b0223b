"""`iclscope` command line: look inside activation files, estimate a run, browse the lab cache.

    iclscope inspect results/activations/smollm2-135m/tweets.h5
    iclscope inspect results/activations/smollm2-135m/tweets.h5.partial   # how far a killed job got
    iclscope estimate [config.yaml]        # prompts, tokens, disk, GPU-hours before launching
    iclscope cache ls | du                 # what is in $SNAKEMAKE_OUTPUT_CACHE
    iclscope cache seal                    # make entries stored before iclscope sealed them read-only
    iclscope costs [logs]                 # wall / CPU seconds and memory per stage of a run
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np

from iclscope.core import lab_cache
from iclscope.core.store import IncompleteFileError, open_activations


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def inspect(path: str | Path, out=sys.stdout) -> int:
    """Print provenance, completeness and every dataset (shape, dtype, size) of an activation file."""
    path = Path(path)
    try:
        f = open_activations(path, require_complete=False)
    except IncompleteFileError as exc:
        print(f"error: {exc}", file=out)
        return 2
    with f:
        attrs = dict(f.attrs)
        complete = bool(attrs.get("complete", False))
        print(f"{path}  ({_fmt_bytes(path.stat().st_size)} on disk)", file=out)
        status = "complete" if complete else f"INCOMPLETE: {attrs.get('n_done', '?')} prompts written"
        print(f"status: {status}", file=out)
        for key in sorted(attrs):
            value = attrs[key]
            if isinstance(value, np.ndarray):
                value = value.tolist()
            print(f"  {key}: {value}", file=out)
        print("datasets:", file=out)

        def show(name, obj):
            if isinstance(obj, h5py.Dataset):
                virtual = " virtual" if obj.is_virtual else ""
                size = _fmt_bytes(obj.size * obj.dtype.itemsize) if obj.dtype.kind != "O" else "-"
                print(f"  /{name:<28} {str(obj.shape):<22} {str(obj.dtype):<10} {size:>10}{virtual}", file=out)

        f.visititems(show)
    return 0 if complete else 1


def prompt_count(spec: dict) -> int | None:
    """Prompts a dataset entry will produce (None when it depends on the data, e.g. a task column)."""
    from iclscope.core.config import TaggingSettings
    from iclscope.data.synthetic import BITWISE_TASKS, WORD_TASKS

    p = spec["prompts"]
    if spec["kind"] == "classification":
        return len(p["seeds"]) * (p["n_test"] + p["n_train"])
    tasks = {"bitwise": len(BITWISE_TASKS), "words": len(WORD_TASKS)}.get(spec["source"])
    if spec["source"] == "pos":
        tasks = len(TaggingSettings(**spec.get("tagging", {})).task_tags) + 1  # + Null
    return None if tasks is None else len(p["seeds"]) * len(p["shots"]) * tasks * p["n_test"]


def activation_bytes(n: int, manifest: dict, max_demos: int, n_classes: int, cfg: dict) -> int:
    """Uncompressed size of one activation file (iclscope.core.store layout)."""
    L, d, H = manifest["n_layers"], manifest["d_model"], manifest["n_heads"]
    itemsize = np.dtype(cfg["extract"]["store_dtype"]).itemsize
    resid = n * (L + 1) * d * itemsize * (3 + max_demos)  # query, last_input, content_mean + label per demo
    return resid + n * L * H * max_demos * 4 + n * n_classes * 4 + n * cfg["extract"]["topk"] * 8


def estimate(config_path: str | Path = "config.yaml", results: str | Path = "results", tflops: float = 50.0,
             out=sys.stdout) -> int:
    """Per model × dataset: prompts, tokens, disk of each HDF5 file, rough GPU-hours; printed before any work.

    Exact where the run's own files exist (prepared model manifest, built prompts), else from the
    config alone ('?' where that is not enough). GPU-hours = 2 · parameters · tokens FLOPs at
    `tflops` sustained (parameters ≈ 12 · L · d² + vocab · d).
    """
    import pandas as pd

    from iclscope.core.config import ConfigError, load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=out)
        return 2
    results = Path(results)
    print(f"{'model':<24} {'dataset':<16} {'prompts':>8} {'tokens':>10} {'activations':>12} {'GPU-h':>7}", file=out)
    total_bytes, total_hours = 0, 0.0
    for model in cfg["models"]:
        manifest_path = results / "models" / f"{model}.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
        for name, spec in cfg["datasets"].items():
            prompts = results / "prompts" / model / f"{name}.parquet"
            classes = len(spec.get("classes") or [])
            n, tokens, demos = prompt_count(spec), None, spec["prompts"]["shots_per_class"] * classes
            if prompts.exists():
                table = pd.read_parquet(prompts, columns=["n_tokens", "label_pos"])
                n, tokens, demos = len(table), int(table["n_tokens"].sum()), int(table["label_pos"].map(len).max())
            size = hours = None
            if manifest and n is not None:
                size = activation_bytes(n, manifest, demos, classes, cfg)
                total_bytes += size
                if tokens:
                    L, d = manifest["n_layers"], manifest["d_model"]
                    params = 12 * L * d**2 + manifest["vocab_size"] * d
                    hours = 2 * params * tokens / (tflops * 1e12) / 3600
                    total_hours += hours
            print(f"{model:<24} {name:<16} {n if n is not None else '?':>8} {tokens or '?':>10} "
                  f"{_fmt_bytes(size) if size is not None else '?':>12} "
                  f"{f'{hours:.2g}' if hours is not None else '?':>7}", file=out)
        if manifest and cfg["entropy"]["enabled"]:
            for name in cfg["entropy"]["datasets"]:
                size = cfg["entropy"]["max_tokens"] * (manifest["n_layers"] + 1) * manifest["d_model"] * 2
                total_bytes += size
                print(f"{model:<24} {name + ' (tokens)':<16} {'-':>8} {cfg['entropy']['max_tokens']:>10} "
                      f"{_fmt_bytes(size):>12} {'':>7}", file=out)
        if manifest is None:
            print(f"  ({model}: sizes need results/models/{model}.json; run `snakemake results/models/{model}.json`)",
                  file=out)
    print(f"total: {_fmt_bytes(total_bytes)} of HDF5 (uncompressed), ~{total_hours:.2f} GPU-hours of forward passes "
          f"at {tflops:g} TFLOP/s ('?' rows not counted)", file=out)
    return 0


def cache_entries(cache: str | Path) -> list[dict]:
    """What each entry of a Snakemake output cache holds, read from the entry itself."""
    rows = []
    for entry in lab_cache.entries(cache):
        files = [p for p in entry.rglob("*") if p.is_file()] if entry.is_dir() else [entry]
        size = sum(p.stat().st_size for p in files)
        kind, what = "other", ""
        if entry.is_dir() and (entry / "manifest.json").exists():
            manifest = json.loads((entry / "manifest.json").read_text())
            kind = "model"
            what = f"{manifest.get('name')} ({manifest.get('architecture')}, {manifest.get('n_layers')} layers)"
        elif entry.is_file() and h5py.is_hdf5(entry):
            with h5py.File(entry, "r") as f:
                a = f.attrs
                kind = "token states" if "resid/tokens" in f else "activations"
                what = f"{a.get('model_id', '?')} / {Path(str(a.get('dataset', '?'))).stem}"
                if not a.get("complete", False):
                    what += "  INCOMPLETE"
        elif entry.is_file() and entry.read_bytes()[:4] == b"PAR1":
            kind = "table"
        rows.append({"entry": entry.name, "kind": kind, "bytes": size, "what": what,
                     "modified": entry.stat().st_mtime, "read_only": lab_cache.is_sealed(entry)})
    return rows


def cache(command: str, cache_dir: str | None = None, out=sys.stdout) -> int:
    """`ls`: one line per cache entry (kind, size, what); `du`: totals per kind; `seal`: remove the
    write bits of every entry (entries stored by iclscope are sealed already; older ones are not)."""
    import datetime as dt
    import os

    cache_dir = cache_dir or os.environ.get("SNAKEMAKE_OUTPUT_CACHE")
    if not cache_dir or not Path(cache_dir).is_dir():
        print("error: no cache directory: set SNAKEMAKE_OUTPUT_CACHE or pass --dir", file=out)
        return 2
    if command == "seal":
        changed = {entry.name: lab_cache.seal(entry) for entry in lab_cache.entries(cache_dir)}
        print(f"sealed {sum(n > 0 for n in changed.values())} of {len(changed)} entries read-only "
              f"({sum(changed.values())} paths changed) in {cache_dir}", file=out)
        return 0
    rows = cache_entries(cache_dir)
    if command == "ls":
        for r in rows:
            when = dt.datetime.fromtimestamp(r["modified"]).strftime("%Y-%m-%d %H:%M")
            writable = "" if r["read_only"] else "  WRITABLE (iclscope cache seal)"
            print(f"{r['entry'][:16]}  {r['kind']:<13} {_fmt_bytes(r['bytes']):>10}  {when}  {r['what']}{writable}",
                  file=out)
        return 0
    kinds: dict[str, list[int]] = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r["bytes"])
    for kind, sizes in sorted(kinds.items()):
        print(f"{kind:<13} {len(sizes):>5} entries {_fmt_bytes(sum(sizes)):>12}", file=out)
    print(f"{'total':<13} {len(rows):>5} entries {_fmt_bytes(sum(r['bytes'] for r in rows)):>12}  ({cache_dir})",
          file=out)
    return 0


COST_LINE = re.compile(r"cost: wall ([\d.]+) s, cpu ([\d.]+) s, peak rss (\d+) MB")


def job_costs(logs_dir: str | Path) -> list[dict]:
    """The cost line each finished job wrote last in its log (iclscope.core.logs.log_cost), one row per log.

    'stage' is the log's first directory under logs/ (the rule, or 'figures'); a log with no cost
    line (a job still running, or killed) is left out.
    """
    rows = []
    for path in sorted(Path(logs_dir).rglob("*.log")):
        costs = COST_LINE.findall(path.read_text(errors="replace"))
        if costs:
            wall, cpu, rss = costs[-1]
            stage = path.relative_to(logs_dir).parts[0].removesuffix(".log")  # logs/summary.log: 'summary'
            rows.append({"stage": stage, "log": str(path), "wall_s": float(wall),
                         "cpu_s": float(cpu), "peak_rss_mb": int(rss)})
    return rows


def costs(logs_dir: str = "logs", out=None) -> int:
    """Wall and CPU seconds per stage, summed over its jobs, most expensive first."""
    out = out or sys.stdout
    rows = job_costs(logs_dir)
    if not rows:
        print(f"error: no job cost lines under {logs_dir}/ (written when a job finishes)", file=out)
        return 2
    stages: dict[str, list[dict]] = {}
    for r in rows:
        stages.setdefault(r["stage"], []).append(r)
    print(f"{'stage':<24} {'jobs':>4} {'wall s':>9} {'cpu s':>9} {'max rss MB':>11}", file=out)
    for stage, jobs in sorted(stages.items(), key=lambda kv: -sum(j["wall_s"] for j in kv[1])):
        print(f"{stage:<24} {len(jobs):>4} {sum(j['wall_s'] for j in jobs):>9.1f} "
              f"{sum(j['cpu_s'] for j in jobs):>9.1f} {max(j['peak_rss_mb'] for j in jobs):>11}", file=out)
    print(f"{'total':<24} {len(rows):>4} {sum(r['wall_s'] for r in rows):>9.1f} {sum(r['cpu_s'] for r in rows):>9.1f}",
          file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iclscope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="datasets, shapes, dtypes, provenance, complete or not")
    p.add_argument("file")
    p = sub.add_parser("estimate", help="prompts, tokens, disk and GPU-hours of a config, before running it")
    p.add_argument("config", nargs="?", default="config.yaml")
    p.add_argument("--results", default="results")
    p.add_argument("--tflops", type=float, default=50.0, help="sustained GPU throughput assumed (default 50)")
    p = sub.add_parser("cache", help="entries of the lab cache ($SNAKEMAKE_OUTPUT_CACHE)")
    p.add_argument("action", choices=["ls", "du", "seal"])
    p.add_argument("--dir", default=None)
    p = sub.add_parser("costs", help="wall / CPU seconds and peak memory per stage, from the jobs' logs")
    p.add_argument("logs", nargs="?", default="logs")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return inspect(args.file)
    if args.command == "estimate":
        return estimate(args.config, args.results, args.tflops)
    if args.command == "costs":
        return costs(args.logs)
    return cache(args.action, args.dir)


if __name__ == "__main__":
    sys.exit(main())
