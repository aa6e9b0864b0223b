from iclscope.config import DatasetSpec
from iclscope.layer_lora import prompts_at_shots, train_shots
from iclscope.logs import log_to

log = log_to(snakemake.log[0], threads=snakemake.threads)
name = snakemake.wildcards.dataset
shots = train_shots(DatasetSpec.from_config(name, snakemake.config["datasets"][name]), snakemake.params.shots)
n = prompts_at_shots(snakemake.input[0], snakemake.output[0], shots)
log.info("%d prompts at %d shots (the count layer_lora trains at)", n, shots)
