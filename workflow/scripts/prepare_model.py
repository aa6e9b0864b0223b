from iclscope.core.jobs import job_of
from iclscope.core.logs import log_to
from iclscope.model.models import prepare_model

log_to(snakemake.log[0], threads=snakemake.threads)
prepare_model(job_of(snakemake).model(), snakemake.output[0])
