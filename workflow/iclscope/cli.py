"""`iclscope` command line: look inside activation files without writing code.

    iclscope inspect results/activations/smollm2-135m/tweets.h5
    iclscope inspect results/activations/smollm2-135m/tweets.h5.partial   # how far a killed job got
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from .store import IncompleteFileError, open_activations


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iclscope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="datasets, shapes, dtypes, provenance, complete or not")
    p.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return inspect(args.file)
    return 2


if __name__ == "__main__":
    sys.exit(main())
