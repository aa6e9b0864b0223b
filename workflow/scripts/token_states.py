from iclscope.core.job import job_of
from iclscope.core.lab_store import publish_job
from iclscope.core.logs import log_to
from iclscope.model.token_states import extract_token_states

log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
cfg = job["corpus"]
extract_token_states(
    snakemake.input.dataset,
    snakemake.input.model,
    snakemake.output[0],
    job.model(),
    max_tokens=cfg["max_tokens"],
    max_sentence_tokens=cfg["max_sentence_tokens"],
    split=cfg["split"],
    seed=cfg["seed"],
)
publish_job(snakemake)  # into the lab store ($ICLSCOPE_STORE), when there is one
