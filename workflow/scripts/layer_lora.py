from iclscope.core.jobs import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import read_table
from iclscope.methods.decodability.layer_lora import LayerLoRASettings, train_layer_lora

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
settings = LayerLoRASettings(**job["layer_lora"])
summary = train_layer_lora(read_table(snakemake.input.dataset),
                           job.dataset(),
                           snakemake.input.model, job.model(),
                           settings, wc.arm, snakemake.output.run, merged_dir=snakemake.output.merged,
                           checkpoint_dir=snakemake.params.checkpoint)
log.info("layer LoRA %s: %s", wc.arm, summary)
