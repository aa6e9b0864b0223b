import json
from pathlib import Path

from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.report.atlas import model_atlas, peak_layers, read_tables
from iclscope.report.plots import plot_layer_atlas

log = log_to(snakemake.log[0], threads=snakemake.threads)
model = snakemake.wildcards.model
n_layers = json.loads(Path(snakemake.input.manifest).read_text())["n_layers"]
curves = model_atlas(read_tables(snakemake.input.tables), n_layers)  # only this job's inputs
peaks = peak_layers(curves)
peaks.insert(0, "model", model)
write_table(peaks, snakemake.output.peaks, {"n_layers": n_layers})
plot_layer_atlas(curves, peaks, snakemake.output.figure, f"Layer atlas — {model}")
log.info("peak layers:\n%s", peaks.to_string(index=False))
