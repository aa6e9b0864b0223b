from iclscope.logs import log_to
from iclscope.plots import plot_tsft
from iclscope.tables import read_table
from iclscope.tsft_report import read_runs

log_to(snakemake.log[0], threads=snakemake.threads)
plot_tsft(read_runs(snakemake.input.runs), read_table(snakemake.input.summary), snakemake.output[0])
