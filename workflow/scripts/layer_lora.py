from iclscope.config import DatasetSpec, ModelSpec
from iclscope.layer_lora import LayerLoRASettings, train_layer_lora
from iclscope.logs import log_to
from iclscope.tables import read_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
settings = LayerLoRASettings(**{k: v for k, v in snakemake.config["layer_lora"].items() if k != "enabled"})
summary = train_layer_lora(read_table(snakemake.input.dataset),
                           DatasetSpec.from_config(wc.dataset, snakemake.config["datasets"][wc.dataset]),
                           snakemake.input.model, ModelSpec.from_config(wc.model, snakemake.config["models"][wc.model]),
                           settings, wc.arm, snakemake.output.run, merged_dir=snakemake.output.merged,
                           checkpoint_dir=snakemake.params.checkpoint)
log.info("layer LoRA %s: %s", wc.arm, summary)
