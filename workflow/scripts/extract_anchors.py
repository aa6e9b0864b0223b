from iclscope.config import ModelSpec
from iclscope.extract import extract_anchor_states
from iclscope.logs import log_to

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
spec = ModelSpec.from_config(wc.model, snakemake.config["models"][wc.model])
dataset = snakemake.config["datasets"][wc.dataset]
summary = extract_anchor_states(snakemake.input.model, spec, list(dataset["classes"].values()),
                                snakemake.config["taskspace"]["carriers"], snakemake.output[0])
log.info("anchor states: %s", summary)
