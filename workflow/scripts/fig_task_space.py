from iclscope.logs import log_to
from iclscope.plots import task_space_figure
from iclscope.tables import read_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
layer = task_space_figure(snakemake.input.activations, snakemake.input.taskspace,
                          read_table(snakemake.input.compression), snakemake.output[0])
log.info("task space drawn at layer %d", layer)
