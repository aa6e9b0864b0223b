from iclscope.core.logs import log_to
from iclscope.report.plots import draw

log = log_to(snakemake.log[0], threads=snakemake.threads)
draw(snakemake.params.figure, dict(snakemake.input.items()), snakemake.output[0])
log.info("drew %s from %s", snakemake.params.figure, dict(snakemake.input.items()))
