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


def test_estimate_matches_the_real_file_and_works_from_the_config_alone(prepared_tiny, tmp_path):
    import json

    import yaml
    from test_extract import prompts_file

    from iclscope.cli import activation_bytes, estimate
    from iclscope.core.config import load_config

    spec, model_dir = prepared_tiny
    ppath, table = prompts_file(prepared_tiny, tmp_path)
    settings = ExtractSettings(compression="none")
    extract(ppath, model_dir, tmp_path / "act.h5", spec, settings)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    cfg = {"models": {"tiny": {"source": "local", "path": "x"}},
           "datasets": {"d": {"source": "local", "path": "x.csv", "classes": {"negative": " negative",
                                                                               "positive": " positive"},
                              "prompts": {"template": "Tweet: {text}\nSentiment:{label}", "seeds": [1, 2],
                                          "n_test": 4}}},
           "extract": {"compression": "none"}, "anchors": {"reweighting": {"enabled": False}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    K = int(table["label_pos"].map(len).max())
    predicted = activation_bytes(len(table), manifest, K, 2, load_config(tmp_path / "config.yaml"))
    with h5py.File(tmp_path / "act.h5") as f:
        stored = sum(f[n].size * f[n].dtype.itemsize for n in ("resid/query", "resid/last_input",
                                                                  "resid/content_mean", "resid/label",
                                                                  "attn/query_to_label", "logits/label",
                                                                  "logits/topk_ids", "logits/topk_values"))
    assert predicted == stored

    buf = io.StringIO()  # no prepared model or prompts under results/: counts from the config, sizes '?'
    assert estimate(tmp_path / "config.yaml", tmp_path / "results", out=buf) == 0
    line = next(row for row in buf.getvalue().splitlines() if row.startswith("tiny"))
    assert line.split()[2] == "8" and "?" in line and "results/models/tiny.json" in buf.getvalue()

    results = tmp_path / "results"
    (results / "models").mkdir(parents=True)
    (results / "models" / "tiny.json").write_text(json.dumps(manifest))
    (results / "prompts" / "tiny").mkdir(parents=True)
    shutil.copy(ppath, results / "prompts" / "tiny" / "d.parquet")
    buf = io.StringIO()
    assert estimate(tmp_path / "config.yaml", results, out=buf) == 0
    line = next(row for row in buf.getvalue().splitlines() if row.startswith("tiny"))
    assert line.split()[3] == str(int(table["n_tokens"].sum())) and "?" not in line

    (tmp_path / "bad.yaml").write_text("models: {}\n")
    buf = io.StringIO()
    assert estimate(tmp_path / "bad.yaml", out=buf) == 2 and "datasets" in buf.getvalue()


def test_cache_ls_and_du_name_what_each_entry_holds(prepared_tiny, tmp_path):
    from test_extract import prompts_file

    from iclscope.cli import cache

    spec, model_dir = prepared_tiny
    store = tmp_path / "cache"
    store.mkdir()
    ppath, _ = prompts_file(prepared_tiny, tmp_path)
    extract(ppath, model_dir, store / "a1b2c3", spec, ExtractSettings())
    shutil.copytree(model_dir, store / "d4e5f6")
    shutil.copy(ppath, store / "0a0b0c")
    partial = store / "ffee00"
    shutil.copy(store / "a1b2c3", partial)
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = False
    buf = io.StringIO()
    assert cache("ls", str(store), out=buf) == 0
    lines = {line.split()[0]: line for line in buf.getvalue().splitlines()}
    assert "activations" in lines["a1b2c3"] and spec.name in lines["a1b2c3"]
    assert "model" in lines["d4e5f6"] and "table" in lines["0a0b0c"] and "INCOMPLETE" in lines["ffee00"]
    buf = io.StringIO()
    assert cache("du", str(store), out=buf) == 0
    assert "activations       2 entries" in buf.getvalue() and "total             4 entries" in buf.getvalue()
    assert cache("ls", str(tmp_path / "missing"), out=io.StringIO()) == 2


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
    job = ("import sys; sys.path.insert(0, {src!r}); from iclscope.core.logs import log_to; log_to({log!r}); "
           "sum(i * i for i in range(3_000_000))")
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
    job = (f"import sys; sys.path.insert(0, {src!r}); import torch; torch.set_num_threads(2); "
           f"from iclscope.core.logs import log_to; log_to({str(tmp_path / 'job.log')!r}, threads=1); "
           "import os; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", job], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["1", "1"]
