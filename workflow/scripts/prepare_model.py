from iclscope.core.job import job_of
from iclscope.core.lab_store import publish_job
from iclscope.core.logs import log_to
from iclscope.model.models import prepare_model

log_to(snakemake.log[0], threads=snakemake.threads)
prepare_model(job_of(snakemake).model(), snakemake.output[0])
publish_job(snakemake)  # into the lab store ($ICLSCOPE_STORE), when there is one
