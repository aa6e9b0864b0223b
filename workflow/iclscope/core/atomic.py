"""Write-then-rename: the one way an output file (or checkpoint directory) reaches its path.

A job writes `<path>.partial` beside its target and renames it into place only once it is whole
(one rename on one filesystem is atomic), so a killed job never leaves a file that looks complete:
at worst a `.partial`, which a resumable writer (`store.ActivationWriter`) picks up again and
everything else overwrites.

* `written(path)` — the usual case: `with written(out) as tmp:` write `tmp`; it is renamed to
  `out` when the body finishes and removed when the body raises.
* `partial_path` / `commit` — for writers whose partial file outlives one process (resumable
  extraction), which must not delete it on an error.
* `removed_when_disk_full` — a full disk turns into an error that names the file and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def partial_path(path: str | Path) -> Path:
    """The sibling `<path>.partial` that `path` is written to before it is renamed into place."""
    return Path(f"{path}.partial")


def _fsync(path: Path) -> None:
    for file in (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def commit(tmp: str | Path, path: str | Path) -> None:
    """fsync `tmp` (a file, or every file of a directory) and rename it to `path`.

    A directory replaces the previous one; between its removal and the rename a kill leaves only
    `tmp`, which the next `written` for the same path overwrites."""
    tmp, path = Path(tmp), Path(path)
    _fsync(tmp)
    if tmp.is_dir() and path.exists():
        _remove(path)
    os.replace(tmp, path)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, as the OS raises it or as HDF5 reports it (a RuntimeError with errno = 28 in its text)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, OSError | RuntimeError) and "No space left on device" in str(exc)


def _disk_full_error(final: Path, exc: BaseException) -> OSError:
    parent = final.parent
    free = shutil.disk_usage(parent).free if parent.exists() else 0
    return OSError(
        errno.ENOSPC,
        f"disk full while writing {final} ({free / 1e6:.1f} MB free on the filesystem of "
        f"{parent}); the partial file was removed. Free space there, or run in a "
        "directory on a larger filesystem, then rerun",
    )


@contextlib.contextmanager
def removed_when_disk_full(partial: str | Path, final: str | Path) -> Iterator[None]:
    """Run the body that writes `partial`; if the disk fills up, delete `partial` and raise an error
    that names the file, the filesystem's free space and what to do. (A kill leaves `partial` for
    the next run to resume; a full disk may have left it torn, so it goes.)"""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        _remove(Path(partial))
        raise _disk_full_error(Path(final), exc) from exc


@contextlib.contextmanager
def written(path: str | Path) -> Iterator[Path]:
    """Yield `<path>.partial` to write (a file, or a directory the body creates); rename it to `path`
    when the body finishes, remove it when the body raises. Creates `path`'s parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    _remove(tmp)  # left by a killed earlier attempt
    try:
        yield tmp
    except BaseException as exc:
        _remove(tmp)
        if is_disk_full(exc):
            raise _disk_full_error(path, exc) from exc
        raise
    commit(tmp, path)
