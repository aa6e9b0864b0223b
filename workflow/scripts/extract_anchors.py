from iclscope.core.job import job_of
from iclscope.core.lab_store import publish_job
from iclscope.core.logs import log_to
from iclscope.model.anchor_states import extract_anchor_states

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
summary = extract_anchor_states(
    snakemake.input.model, job.model(), job["label_words"], job["carriers"], snakemake.output[0]
)
log.info("anchor states: %s", summary)
publish_job(snakemake)  # into the lab store ($ICLSCOPE_STORE), when there is one
