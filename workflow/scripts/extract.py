from iclscope.config import ModelSpec
from iclscope.extract import ExtractSettings, extract
from iclscope.logs import log_to

log_to(snakemake.log[0], threads=snakemake.threads)
name = snakemake.wildcards.model
shard = tuple(int(x) for x in snakemake.params.shard.split("-of-"))
extract(snakemake.input.prompts, snakemake.input.model, snakemake.output[0],
        ModelSpec.from_config(name, snakemake.config["models"][name]),
        ExtractSettings.from_config(snakemake.config["extract"]), shard=shard)
