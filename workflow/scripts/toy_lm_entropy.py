import shutil
from pathlib import Path

import pandas as pd

from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.entropy.measures import EntropySettings
from iclscope.methods.entropy.toy_lm import ToySize, ToyTraining, token_stream, train_and_measure
from iclscope.model.models import load_tokenizer, model_dir_of, resolve_device

log = log_to(snakemake.log[0], threads=snakemake.threads)
job = job_of(snakemake).settings  # this size's settings (iclscope/core/jobs.py)
size = ToySize(**job["size"])
run = ToyTraining(**job["training"])
settings = EntropySettings(n_bins=job["n_bins"], min_labels=job["min_labels"], clip_quantile=job["clip_quantile"])
data = pd.read_parquet(snakemake.input.dataset)
if job["split"] is not None and job["split"] in set(data["split"]):
    data = data[data["split"] == job["split"]]
tokenizer, _ = load_tokenizer(model_dir_of(snakemake.input.tokenizer))
stream = token_stream(data["text"].astype(str).tolist(), tokenizer, run.vocab_size)
log.info(
    "corpus: %d texts, %d tokens, vocabulary %d (+UNK); UNK share %.3f",
    len(data),
    len(stream),
    run.vocab_size - 1,
    float((stream == 0).mean()),
)
# training states of a killed run; the weights move to the declared output once training is done
resume_dir = Path("results/toy") / snakemake.wildcards.dataset / "resume" / size.name
table = train_and_measure(
    stream, size, run, settings, resolve_device("auto"), resume_dir=resume_dir, weights_dir=resume_dir / "weights"
)
shutil.rmtree(snakemake.output.weights, ignore_errors=True)
(resume_dir / "weights" / size.name).rename(snakemake.output.weights)
write_table(table, snakemake.output.table, {"entropy": job, "tokens": int(len(stream))})
last = table[(table.range == "minmax") & (table.variant == "token")]
last = last[last.layer == last["layer"].max()]
log.info(
    "last-layer token measures of %s by step:\n%s",
    size.name,
    last.pivot_table(index="step", columns="metric", values="value")[
        ["information", "variation", "regularity", "disentanglement"]
    ]
    .round(4)
    .to_string(),
)
