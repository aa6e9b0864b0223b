"""`make bench` is not part of `make test`, so its harness runs here at the smallest sizes.

Found by running `make bench`: the lab-store benchmark still called the DAG benchmark's config
builder with its old signature, and the run died after 20 minutes of other benchmarks, keeping none
of their rows. A benchmark whose code drifts from the package now fails here, and the rows measured
before a failing benchmark are kept.
"""

import json
import sys

import pytest
from benchmarks import run, store
from benchmarks.common import row


def test_the_store_benchmark_links_every_product_at_a_small_size():
    [result] = store.run(n_models=2, n_datasets=1, repeats=1)
    assert result["benchmark"] == "store"
    assert result["note"] == "2 products linked, none computed"
    assert result["ratio"] > 0


def test_an_unknown_benchmark_is_refused_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run", "--only", "extraction,extracton"])
    monkeypatch.setattr(run, "pipeline_inputs", lambda *paths: pytest.fail("work started"))
    with pytest.raises(SystemExit):
        run.main()
    assert "extracton" in capsys.readouterr().err


def test_the_rows_before_a_failing_benchmark_are_written(monkeypatch, tmp_path):
    def broken():
        raise TypeError("a benchmark out of step with the package")

    monkeypatch.setattr(sys, "argv", ["run", "--only", "extraction,memory"])
    monkeypatch.setattr(run, "OUT", tmp_path)
    monkeypatch.setattr(run, "pipeline_inputs", lambda *paths: None)
    monkeypatch.setattr(run.extraction, "run", lambda: [row("extraction", "tokens/s", 1.0, "tokens/s")])
    monkeypatch.setattr(run.memory, "run", broken)
    with pytest.raises(TypeError):
        run.main()
    written = json.loads((tmp_path / "benchmarks.json").read_text())
    assert [r["benchmark"] for r in written["rows"]] == ["extraction"]
    assert "| extraction | tokens/s |" in (tmp_path / "benchmarks.md").read_text()
