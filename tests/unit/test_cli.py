"""`iclscope inspect` on a real small file, a partial one and a broken one."""

import io
import shutil

import h5py

from iclscope.cli import inspect
from iclscope.extract import ExtractSettings, extract
from iclscope.store import partial_path


def test_inspect_complete_partial_and_broken(prepared_tiny, tmp_path):
    from test_extract import prompts_file

    spec, model_dir = prepared_tiny
    ppath, table = prompts_file(prepared_tiny, tmp_path)
    out = tmp_path / "act.h5"
    extract(ppath, model_dir, out, spec, ExtractSettings())
    buf = io.StringIO()
    assert inspect(out, buf) == 0
    text = buf.getvalue()
    assert "status: complete" in text and "/resid/query" in text
    assert f"({len(table)}, 3, 32)" in text  # [N, L+1, d]

    partial = partial_path(tmp_path / "other.h5")
    shutil.copy(out, partial)
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = False
        f.attrs["n_done"] = 2
    buf = io.StringIO()
    assert inspect(partial, buf) == 1
    assert "INCOMPLETE: 2 prompts written" in buf.getvalue()

    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5")
    buf = io.StringIO()
    assert inspect(broken, buf) == 2 and "broken.h5" in buf.getvalue()
