"""docs/outputs.md names every column, dataset and attribute of the products a small run writes: the
dataset and prompt tables, the activation, anchor and task-space files, a metric table and the
task-space view, made on the tiny model by the package functions the rules run and laid out as the
workflow lays them out (tests/outputs_doc.py; the end-to-end test checks the files of the full run)."""

import numpy as np
import pandas as pd
import pytest
from outputs_doc import DOC, entry, names_in, undocumented, unlisted_products

from iclscope.core.config import DatasetSpec, PromptSpec
from iclscope.core.metrics import METRIC_COLUMNS
from iclscope.core.tables import read_table, write_table
from iclscope.data.datasets import prepare_dataset
from iclscope.methods.taskspace.compression import compression_table
from iclscope.methods.taskspace.space import build_task_spaces
from iclscope.methods.taskspace.view import VIEW_COLUMNS, task_space_view
from iclscope.model.anchor_states import extract_anchor_states
from iclscope.model.extract import ExtractSettings, extract
from iclscope.model.models import load_tokenizer
from iclscope.model.prompts import build_prompts
from iclscope.report.plots import plot_task_space

WORDS = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late", "love", "rude", "great", "flight"]


@pytest.fixture(scope="module")
def small_run(prepared_tiny, tmp_path_factory):
    """results/ of one model x one classification dataset through prompts, extraction, anchors, task
    spaces and compression (the tiny Llama or GPT-2)."""
    spec_model, model_dir = prepared_tiny
    results = tmp_path_factory.mktemp("run") / "results"
    csv = results.parent / "source.csv"
    rows = [(f"I {WORDS[i % len(WORDS)]} it {i}", ["negative", "positive"][i % 2]) for i in range(40)]
    pd.DataFrame(rows, columns=["text", "label"]).assign(extra=1).to_csv(csv, index=False)
    spec = DatasetSpec(
        name="d",
        source="local",
        path=str(csv),
        classes={"negative": " negative", "positive": " positive"},
        test_fraction=0.5,
        prompts=PromptSpec(template="Tweet: {text}\nSentiment:{label}", seeds=(1, 2), n_test=6, n_train=2),
    )
    m, d = spec_model.name, "d"
    table, meta = prepare_dataset(spec)
    write_table(table, results / f"datasets/{d}.parquet", meta)
    tokenizer, manifest = load_tokenizer(model_dir)
    prompts, pmeta = build_prompts(table, spec, tokenizer, manifest["context_length"])
    write_table(prompts, results / f"prompts/{m}/{d}.parquet", {**pmeta, "model": m})
    act = results / f"activations/{m}/{d}.h5"
    extract(results / f"prompts/{m}/{d}.parquet", model_dir, act, spec_model, ExtractSettings(max_new_tokens=2))
    anchors = results / f"activations/{m}/{d}.anchors.h5"
    extract_anchor_states(model_dir, spec_model, spec.label_words, ["It was{label}.", "A{label} day."], anchors)
    spaces = results / f"taskspace/{m}/{d}.h5"
    build_task_spaces(act, anchors, spaces, var_threshold=0.9)
    comp = compression_table(act, spaces, model=m, dataset=d)
    write_table(comp, results / f"metrics/{m}/{d}/compression.parquet")
    view = task_space_view(act, spaces, comp, model=m, dataset=d)
    write_table(view, results / f"taskspace/{m}/{d}.view.parquet")
    return results


def test_outputs_md_names_every_column_and_attribute_of_a_small_run(small_run):
    assert unlisted_products(small_run) == []
    missing = undocumented(small_run)
    assert missing == [], "\n".join(missing)


def test_the_check_finds_a_name_the_doc_leaves_out(small_run):
    """The comparison can fail: with `label_token_ids` and `/prompts/split` dropped from the doc it
    names both; the metric columns are the package's own list."""
    doc = DOC.read_text()
    cut = doc.replace("`label_token_ids`", "label_token_ids").replace("`split` (`test`, or", "split (`test`, or")
    cut = cut.replace("`/prompts/prompt_id`, `gold`, `task`", "`/prompts/prompt_id`, `task`")
    missing = undocumented(small_run, cut)
    assert any(p.endswith(": meta:label_token_ids") for p in missing), missing
    assert any(p.endswith(": /prompts/gold") for p in missing), missing
    metric_names = names_in(entry(doc, "### Metric tables"))
    assert [c for c in METRIC_COLUMNS if not any(p.fullmatch(c) for p in metric_names)] == []


def test_the_task_space_figure_draws_from_the_view(small_run, tmp_path):
    """The task_space figure reads the view table the compression job writes (no activation file)."""
    view = read_table(next(small_run.glob("taskspace/*/d.view.parquet")))
    assert list(view.columns) == VIEW_COLUMNS
    queries, protos = view[view.kind == "query"], view[view.kind == "prototype"]
    assert set(protos["class"]) == {"negative", "positive"} and len(queries) > 0
    assert np.isfinite(view[["x", "y"]].to_numpy()).all() and view["layer"].nunique() == 1
    plot_task_space(view, tmp_path / "task_space.png")
    assert (tmp_path / "task_space.png").stat().st_size > 10_000
