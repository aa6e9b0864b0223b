"""`iclscope` command line: look inside activation files, estimate a run, browse the lab store.

iclscope inspect results/activations/smollm2-135m/tweets.h5
iclscope inspect results/activations/smollm2-135m/tweets.h5.partial   # how far a killed job got
iclscope estimate [config.yaml]        # bytes, GPU-hours, host / GPU memory per stage, before launching
iclscope store key results/activations/smollm2-135m/tweets.h5   # its key in the lab store
iclscope store ls | verify             # entries of $ICLSCOPE_STORE; checksums
iclscope store gc --older-than 90      # what removing old entries would orphan (--yes removes)
iclscope costs [logs]                 # wall / CPU seconds and memory per stage of a run
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import h5py
import numpy as np

from iclscope.core.store import IncompleteFileError, open_activations
from iclscope.report.estimate import format_bytes


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
        print(f"{path}  ({format_bytes(path.stat().st_size)} on disk)", file=out)
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
                size = format_bytes(obj.size * obj.dtype.itemsize) if obj.dtype.kind != "O" else "-"
                print(f"  /{name:<28} {str(obj.shape):<22} {str(obj.dtype):<10} {size:>10}{virtual}", file=out)

        f.visititems(show)
    return 0 if complete else 1


def estimate(
    config_path: str | Path = "config.yaml",
    results: str | Path = "results",
    model_configs: dict[str, str] | None = None,
    use_outputs: bool = True,
    out=sys.stdout,
) -> int:
    """Bytes, GPU-hours, host and GPU memory per model stage of a config (iclscope.report.estimate)."""
    from iclscope.report import estimate as planned

    return planned.estimate(config_path, results, model_configs, use_outputs, out)


def _parse_size(text: str) -> int:
    """'500G', '2T', '800M', '1024' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 500G)")
    unit = m.group(2).upper()
    return int(float(m.group(1)) * (1024 ** ("KMGT".index(unit) + 1) if unit else 1))


def store_command(
    action: str,
    store: str | None = None,
    path: str | None = None,
    config: str = "config.yaml",
    older_than_days: float | None = None,
    model: str | None = None,
    max_size: str | None = None,
    yes: bool = False,
    out=sys.stdout,
) -> int:
    """`iclscope store key|ls|verify|gc|rm` (iclscope.core.lab_store); returns the exit status."""
    import datetime as dt

    from iclscope.core import lab_store
    from iclscope.core.config import ConfigError
    from iclscope.core.validate import load_config

    if action == "key":
        try:
            recipes = lab_store.Recipes(load_config(config))
            kind, wc = recipes.product_of(path)
        except (ConfigError, lab_store.StoreError) as exc:
            print(f"error: {exc}", file=out)
            return 2
        print(recipes.key(kind, wc), file=out)
        return 0
    root = Path(store) if store else lab_store.configured_store()
    if root is None or not root.is_dir():
        print(f"error: no store directory: set {lab_store.ENV} or pass --store", file=out)
        return 2
    if action == "rm":
        entry = root / (path or "")
        if not path or not lab_store.KEY_RE.match(path) or not entry.is_dir():
            print(f"error: no entry {path!r} in {root}", file=out)
            return 2
        if not lab_store.remove(entry):
            print(f"error: {entry} is being linked right now; try again", file=out)
            return 1
        print(f"removed {entry}", file=out)
        return 0
    if action == "ls":
        rows = lab_store.listing(root)
        print(f"{'key':<12} {'stage':<18} {'model':<20} {'dataset':<16} {'size':>10}  {'last use':<16} user", file=out)
        for r in rows:
            when = dt.datetime.fromtimestamp(r["last_use"]).strftime("%Y-%m-%d %H:%M")
            flag = "" if r["sealed"] else "  WRITABLE"
            print(
                f"{r['key'][:12]} {r['stage']:<18} {r['model']:<20} {r['dataset']:<16} {format_bytes(r['bytes']):>10}"
                f"  {when:<16} {r['user']}{flag}",
                file=out,
            )
        print(f"{len(rows)} entries, {format_bytes(sum(r['bytes'] for r in rows))} in {root}", file=out)
        return 0
    if action == "verify":
        problems = [p for entry in lab_store.entries(root) for p in lab_store.verify(entry)]
        for p in problems:
            print(p, file=out)
        print(f"{len(lab_store.entries(root))} entries checked, {len(problems)} problems", file=out)
        return 1 if problems else 0
    if action == "gc":
        if older_than_days is None and model is None and max_size is None:
            print("error: say what to remove: --older-than DAYS, --model NAME and/or --max-size SIZE", file=out)
            return 2
        chosen = lab_store.gc_candidates(root, older_than_days, model, _parse_size(max_size) if max_size else None)
        freed = 0
        for r in chosen:
            verb = "removing" if yes else "would remove"
            print(
                f"{verb} {r['key']} ({r['stage']}, {r['model']} / {r['dataset']}, {format_bytes(r['bytes'])})", file=out
            )
            for result, how in r["orphans"]:
                effect = (
                    "keeps its bytes (hard link), recomputed when next planned"
                    if how == "hardlink"
                    else "becomes a dangling symlink"
                )
                print(f"    orphans {result}: {effect}", file=out)
            if yes:
                if lab_store.remove(r["entry"]):
                    freed += r["bytes"]
                else:
                    print(f"    skipped: a workflow is linking {r['key']} right now", file=out)
        print(
            f"{'freed' if yes else 'would free'} {format_bytes(freed if yes else sum(r['bytes'] for r in chosen))}"
            + ("" if yes else " (dry run: add --yes to remove)"),
            file=out,
        )
        return 0
    print(f"error: unknown store action {action!r}", file=out)
    return 2


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
            rows.append(
                {"stage": stage, "log": str(path), "wall_s": float(wall), "cpu_s": float(cpu), "peak_rss_mb": int(rss)}
            )
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
        print(
            f"{stage:<24} {len(jobs):>4} {sum(j['wall_s'] for j in jobs):>9.1f} "
            f"{sum(j['cpu_s'] for j in jobs):>9.1f} {max(j['peak_rss_mb'] for j in jobs):>11}",
            file=out,
        )
    print(
        f"{'total':<24} {len(rows):>4} {sum(r['wall_s'] for r in rows):>9.1f} {sum(r['cpu_s'] for r in rows):>9.1f}",
        file=out,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iclscope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="datasets, shapes, dtypes, provenance, complete or not")
    p.add_argument("file")
    p = sub.add_parser("estimate", help="bytes, GPU-hours, host and GPU memory per model stage, before running")
    p.add_argument("config", nargs="?", default="config.yaml")
    p.add_argument("--results", default="results")
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="a model's config.json when it is not downloaded yet (repeatable)",
    )
    p = sub.add_parser("store", help="the lab store ($ICLSCOPE_STORE): key, ls, verify, gc, rm")
    p.add_argument("action", choices=["key", "ls", "verify", "gc", "rm"])
    p.add_argument("path", nargs="?", help="key: an output path (results/...); rm: an entry's key")
    p.add_argument("--store", default=None, help="the store directory (default: $ICLSCOPE_STORE)")
    p.add_argument("--config", default="config.yaml", help="key: the config (default config.yaml)")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="gc: unused for DAYS")
    p.add_argument("--model", default=None, help="gc: every entry of this model")
    p.add_argument("--max-size", default=None, help="gc: least recently used first until the store holds SIZE")
    p.add_argument("--yes", action="store_true", help="gc: remove (default: only say what would go)")
    p = sub.add_parser("costs", help="wall / CPU seconds and peak memory per stage, from the jobs' logs")
    p.add_argument("logs", nargs="?", default="logs")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return inspect(args.file)
    if args.command == "estimate":
        return estimate(args.config, args.results, dict(item.split("=", 1) for item in args.model_config))
    if args.command == "costs":
        return costs(args.logs)
    return store_command(
        args.action, args.store, args.path, args.config, args.older_than, args.model, args.max_size, args.yes
    )


if __name__ == "__main__":
    sys.exit(main())
