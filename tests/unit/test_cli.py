"""`iclscope inspect` on a real small file, a partial one and a broken one."""

import io
import shutil

import h5py

from iclscope.cli import inspect
from iclscope.core.atomic import partial_path
from iclscope.model.extract import ExtractSettings, extract


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


def test_store_ls_and_verify_name_what_each_entry_holds(prepared_tiny, tmp_path):
    from test_extract import prompts_file

    from iclscope.cli import store_command
    from iclscope.core import lab_store

    spec, model_dir = prepared_tiny
    store = tmp_path / "store"
    store.mkdir()
    ppath, _ = prompts_file(prepared_tiny, tmp_path)
    extract(ppath, model_dir, tmp_path / "d.h5", spec, ExtractSettings())
    recipe = {
        "format": 1,
        "product": "extract",
        "wildcards": {"model": "tiny", "dataset": "d"},
        "settings": {},
        "code": "0",
        "script": "0",
        "upstream": {},
    }
    entry = lab_store.publish(store, recipe, tmp_path / "d.h5")
    lab_store.publish(store, {**recipe, "product": "prepare_model", "wildcards": {"model": "tiny"}}, model_dir)
    buf = io.StringIO()
    assert store_command("ls", store=str(store), out=buf) == 0
    lines = {line.split()[0]: line for line in buf.getvalue().splitlines()[1:-1]}
    assert lines[entry.name[:12]].split()[1:4] == ["extract", "tiny", "d"]
    assert "2 entries" in buf.getvalue() and "WRITABLE" not in buf.getvalue()
    assert store_command("verify", store=str(store), out=io.StringIO()) == 0
    assert store_command("ls", store=str(tmp_path / "missing"), out=io.StringIO()) == 2
    assert store_command("gc", store=str(store), out=io.StringIO()) == 2  # says what to remove


def test_open_reads_named_arrays_lazily(prepared_tiny, tmp_path):
    import numpy as np
    import pytest
    from test_extract import prompts_file

    import iclscope
    from iclscope.core.store import IncompleteFileError

    spec, model_dir = prepared_tiny
    ppath, table = prompts_file(prepared_tiny, tmp_path)
    extract(ppath, model_dir, tmp_path / "act.h5", spec, ExtractSettings())
    with iclscope.open(tmp_path / "act.h5") as act:
        assert "resid/query" in act.names and "logits/label" in act.names
        assert isinstance(act["resid/query"], h5py.Dataset)  # nothing read yet
        assert act["resid/query"][:, 1].shape == (len(table), 32)
        np.testing.assert_array_equal(act.prompts["prompt_id"], table["prompt_id"])
        assert act.attrs["model_id"] == spec.name
        with pytest.raises(KeyError, match="resid/query"):
            act["resid/queries"]
    partial = partial_path(tmp_path / "x.h5")
    shutil.copy(tmp_path / "act.h5", partial)
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(IncompleteFileError):
        iclscope.open(partial)
    assert iclscope.open(partial, require_complete=False).names


def test_costs_sums_what_each_finished_job_logged(tmp_path, capsys):
    """A job's log ends with its cost (atexit in log_to); `costs` sums them per stage, skipping unfinished jobs."""
    import subprocess
    import sys
    from pathlib import Path

    from iclscope.cli import job_costs
    from iclscope.cli import main as cli_main

    logs = tmp_path / "logs"
    job = (
        "import sys; sys.path.insert(0, {src!r}); from iclscope.core.logs import log_to; log_to({log!r}); "
        "sum(i * i for i in range(3_000_000))"
    )
    src = str(Path(__file__).resolve().parents[2] / "workflow")
    for log in ("extract/m/a.log", "extract/m/b.log", "figures/m/a/x.log", "summary.log"):
        subprocess.run([sys.executable, "-c", job.format(src=src, log=str(logs / log))], check=True)
    (logs / "extract/m/killed.log").write_text("2026 INFO iclscope: started at ...\n")

    rows = job_costs(logs)
    assert [r["stage"] for r in rows] == ["extract", "extract", "figures", "summary"]
    assert all(r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert cli_main(["costs", str(logs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["extract", "2"] or out[2].split()[:2] == ["extract", "2"]
    assert out[-1].split()[:2] == ["total", "4"]
    assert cli_main(["costs", str(tmp_path / "nothing")]) == 2


def test_a_job_uses_the_threads_its_rule_declares(tmp_path):
    """log_to(path, threads) caps torch's threads (Snakemake sets OMP_NUM_THREADS only for shell rules)."""
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "workflow")
    job = (
        f"import sys; sys.path.insert(0, {src!r}); import torch; torch.set_num_threads(2); "
        f"from iclscope.core.logs import log_to; log_to({str(tmp_path / 'job.log')!r}, threads=1); "
        "import os; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    )
    out = subprocess.run([sys.executable, "-c", job], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["1", "1"]
