"""`iclscope estimate` against the bytes a real extraction writes, for each dataset kind.

A rehearsal on a tiny stand-in model (random Llama, d_model 128, 4 layers: the activation arrays
outweigh the per-prompt metadata as they do at 1-8B): the workflow extracts a classification and a
generation dataset; the estimate, made from the config alone (no prompts, no prepared model: what a
lab sees before its first job), must be within 1.5x of each file's size on disk.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from iclscope.core.validate import validate_config
from iclscope.report.estimate import estimate, estimate_rows
from snakemake_runner import snakemake, write_config
from tiny_models import make_tiny_arch

RATIO = 1.5
STAGES_MEASURED = ("saliency", "patching")  # besides extract: a backward pass, a pass per layer


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimate")
    model = make_tiny_arch(
        "llama",
        root / "tiny",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        max_position_embeddings=1024,
    )
    classes = ["negative", "positive"]  # single tokens of the tiny tokenizer, starting differently
    rows = ["mood,text"] + [f"{classes[i % 2]},day {i} felt {['bad', 'good'][i % 2]} and long" for i in range(240)]
    (root / "moods.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "models": {"tiny": {"source": "local", "path": str(model), "batch_size": 8}},
        "datasets": {
            "moods": {
                "source": "local",
                "path": str(root / "moods.csv"),
                "label_column": "mood",
                "classes": {c: f" {c}" for c in classes},
                "prompts": {
                    "template": "Text: {text}\nMood:{label}",
                    "shots_per_class": 2,
                    "seeds": [1, 2],
                    "n_test": 30,
                    "n_train": 8,
                },
            },
            "bits": {
                "source": "bitwise",
                "kind": "generation",
                "n_per_task": 60,
                "prompts": {"template": "{text} ->{label}", "shots": [2, 6], "seeds": [1], "n_test": 6},
            },
        },
    }
    cfg["anchors"] = {
        "saliency_prompts_per_seed": 4,
        "isolation_prompts_per_seed": 4,
        "reweighting": {"epochs": 1, "test_prompts_per_seed": 6},
    }
    work = root / "work"
    work.mkdir()
    write_config(work, cfg)
    targets = (
        ["results/activations/tiny/moods.h5", "results/activations/tiny/bits.h5"]
        + [f"results/metrics/tiny/moods/{name}.parquet" for name in STAGES_MEASURED if name != "patching"]
        + ["results/metrics/tiny/bits/patching.parquet"]
    )
    snakemake(work, *targets, timeout=600)
    return work, validate_config(cfg)


def test_estimate_is_within_1_5x_of_the_extracted_bytes_for_each_dataset_kind(rehearsal):
    work, cfg = rehearsal
    rows = {r["dataset"]: r for r in estimate_rows(cfg, work / "results", use_outputs=False) if r["stage"] == "extract"}
    ratios = {}
    for name, kind in (("moods", "classification"), ("bits", "generation")):
        measured = (work / "results" / "activations" / "tiny" / f"{name}.h5").stat().st_size
        assert rows[name]["kind"] == kind and rows[name]["bytes"] is not None
        ratios[kind] = rows[name]["bytes"] / measured
        print(f"{kind}: estimated {rows[name]['bytes']} B, measured {measured} B, ratio {ratios[kind]:.2f}")
    assert all(1 / RATIO <= r <= RATIO for r in ratios.values()), ratios


def test_estimate_prints_every_stage_and_says_unknown(rehearsal, tmp_path):
    work, cfg = rehearsal
    buf = io.StringIO()
    assert estimate(work / "config.yaml", work / "results", out=buf) == 0
    text = buf.getvalue()
    assert "unknown" not in text and " 0 B" not in text
    assert {line.split()[1] for line in text.splitlines()[1:-1]} >= {"extract", "patching"}

    hub = tmp_path / "hub.yaml"  # a hub model with no config.json anywhere here: unknown, never 0 B
    hub.write_text((work / "config.yaml").read_text().replace("source: local", "source: hub\n    id: nobody/none"))
    buf = io.StringIO()
    assert estimate(hub, tmp_path / "results", out=buf) == 0
    text = buf.getvalue()
    assert "unknown" in text and " 0 B" not in text and text.splitlines()[-1].startswith("total: unknown")


def test_peak_memory_of_each_measured_stage_is_within_what_its_job_asks_for(rehearsal):
    """The cost line each job logs (peak RSS, iclscope.core.logs) against the host memory the rule
    derives for that job on a CPU node (device cpu: the weights and the batch in host memory)."""
    from iclscope.cli import job_costs
    from iclscope.core import resources as res

    work, cfg = rehearsal
    arch = res.read_architecture(cfg["models"]["tiny"], work / "results" / "models" / "tiny.json")
    rows = [r for r in job_costs(work / "logs") if r["stage"] in ("extract", *STAGES_MEASURED)]
    assert {r["stage"] for r in rows} == {"extract", *STAGES_MEASURED}
    for row in rows:
        dataset = Path(row["log"]).stem
        import pyarrow.parquet as pq

        tokens = pq.read_table(work / "results" / "prompts" / "tiny" / f"{dataset}.parquet").column("n_tokens")
        spec = cfg["datasets"][dataset]
        job = res.Work(
            n_prompts=len(tokens),
            tokens_per_prompt=sum(tokens.to_pylist()) / len(tokens),
            max_tokens=max(tokens.to_pylist()),
            batch_size=8,
            n_classes=len(spec.get("classes") or {}),
            generation=spec["kind"] == "generation",
        )
        derived = res.model_stage(row["stage"], arch, "auto", job, cfg, spec, device="cpu").mem_mb
        print(
            f"{row['stage']}/{dataset}: peak RSS {row['peak_rss_mb']} MB, derived {derived} MB "
            f"({row['peak_rss_mb'] / derived:.2f})"
        )
        assert row["peak_rss_mb"] <= derived, row
