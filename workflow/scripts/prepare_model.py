from iclscope.config import ModelSpec
from iclscope.logs import log_to
from iclscope.models import prepare_model

log_to(snakemake.log[0], threads=snakemake.threads)
name = snakemake.wildcards.model
prepare_model(ModelSpec.from_config(name, snakemake.config["models"][name]), snakemake.output[0])
