import json
from pathlib import Path

from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.report.atlas import atlas_curves, peak_layers, read_tables
from iclscope.report.plots import plot_layer_atlas

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
n_layers = json.loads(Path(snakemake.input.manifest).read_text())["n_layers"]
curves = atlas_curves(read_tables(Path(snakemake.output.peaks).parent), n_layers)
peaks = peak_layers(curves)
peaks.insert(0, "dataset", wc.dataset)
peaks.insert(0, "model", wc.model)
write_table(peaks, snakemake.output.peaks, {"n_layers": n_layers})
plot_layer_atlas(curves, peaks, snakemake.output.figure, f"Layer atlas — {wc.model} / {wc.dataset}")
log.info("peak layers:\n%s", peaks.to_string(index=False))
