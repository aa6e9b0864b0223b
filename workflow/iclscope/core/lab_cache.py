"""The lab cache ($SNAKEMAKE_OUTPUT_CACHE): entries are read-only once written.

Snakemake stores every cache entry world-writable (0666 files, 0777 directories, hard-coded in
snakemake.caching.local.OutputFileCache.set_permissions), so any lab member could change an
entry that everyone's results link to. iclscope removes every write bit from an entry right after
Snakemake has stored it. The cache directory itself stays group-writable (README: chmod 2775), so
new entries can still be added and an entry replaced as a whole (an atomic rename, as Snakemake
stores them); only the bytes of a stored entry are frozen. Output symlinks into the cache are not
affected: Snakemake never treats a symlink as protected, so reruns replace them as usual.

No torch / h5py / Snakemake here: imported at Snakefile parse time. The hook that calls `seal` on
every stored entry is in the workflow (workflow/rules/lab_cache.smk), not in this package.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _paths(entry: Path) -> list[Path]:
    """The entry and, for a directory, everything under it."""
    paths = [entry]
    if entry.is_dir() and not entry.is_symlink():
        for root, dirs, files in os.walk(entry):
            paths += [Path(root) / name for name in dirs + files]
    return paths


def seal(entry: str | Path) -> int:
    """Remove every write bit from a cache entry: a file, or a directory and everything in it.

    Symlinks are left alone (their mode means nothing on Linux). Returns how many paths changed,
    so sealing an already sealed entry returns 0. chmod needs ownership, not write permission,
    so the order of files and directories does not matter.
    """
    changed = 0
    for path in _paths(Path(entry)):
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and mode & WRITE_BITS:
            os.chmod(path, stat.S_IMODE(mode) & ~WRITE_BITS)
            changed += 1
    return changed


def is_sealed(entry: str | Path) -> bool:
    """Whether no path of the entry (file, or directory tree) has a write bit."""
    return all(stat.S_ISLNK(m) or not m & WRITE_BITS for m in (os.lstat(p).st_mode for p in _paths(Path(entry))))


def entries(cache_dir: str | Path) -> list[Path]:
    """The stored entries of a cache directory: everything but Snakemake's in-flight temp dirs and
    hidden files."""
    return sorted(p for p in Path(cache_dir).iterdir() if not p.name.startswith(("tmp", ".")))
