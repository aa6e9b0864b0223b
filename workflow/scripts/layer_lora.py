from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.resume import checkpoint_dir
from iclscope.core.tables import read_table
from iclscope.methods.decodability.layer_lora import LayerLoRASettings, train_layer_lora

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
settings = LayerLoRASettings(**job["layer_lora"])
summary = train_layer_lora(
    read_table(snakemake.input.dataset),
    job.dataset(),
    snakemake.input.model,
    job.model(),
    settings,
    wc.arm,
    snakemake.output.run,
    merged_dir=snakemake.output.merged,
    # outside the output directories, keyed by settings + code: a retry resumes,
    # a change of settings starts over
    checkpoint_dir=checkpoint_dir("layer_lora", job.wildcards, snakemake.params.settings, snakemake.params.code),
)
log.info("layer LoRA %s: %s", wc.arm, summary)
