from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.methods.decodability.layer_lora import prompts_at_shots, train_shots

log = log_to(snakemake.log[0], threads=snakemake.threads)
job = job_of(snakemake)
shots = train_shots(job.dataset(), job["shots"])
n = prompts_at_shots(snakemake.input[0], snakemake.output[0], shots)
log.info("%d prompts at %d shots (the count layer_lora trains at)", n, shots)
