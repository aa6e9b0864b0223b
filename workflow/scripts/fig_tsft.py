from pathlib import Path

from iclscope.logs import log_to
from iclscope.plots import plot_tsft
from iclscope.tables import read_table

log_to(snakemake.log[0], threads=snakemake.threads)
curves = {Path(d).name: read_table(Path(d) / "train_log.parquet") for d in snakemake.input.runs}
plot_tsft(curves, read_table(snakemake.input.summary), snakemake.output[0])
