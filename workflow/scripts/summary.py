from pathlib import Path

import pandas as pd

from iclscope.core.logs import log_to
from iclscope.report.atlas import headline

log = log_to(snakemake.log[0], threads=snakemake.threads)
# results/metrics/<model>/<dataset>/<family>.parquet: only this job's inputs, never a table left
# over from another configuration
pairs = sorted({(Path(p).parent.parent.name, Path(p).parent.name) for p in snakemake.input.tables})
tables = {pair: [p for p in snakemake.input.tables if (Path(p).parent.parent.name, Path(p).parent.name) == pair]
          for pair in pairs}
table = pd.DataFrame([headline(tables[m, d], m, d) for m, d in pairs])
table.to_csv(snakemake.output.headline, index=False, float_format="%.4g")
peaks = pd.concat([pd.read_parquet(p) for p in snakemake.input.peaks], ignore_index=True)
peaks.pivot_table(index=["model", "dataset"], columns="curve", values="layer").to_csv(
    snakemake.output.peaks, float_format="%.3g")
log.info("headline:\n%s\npeak layers:\n%s", table.to_string(index=False),
         peaks.pivot_table(index=["model", "dataset"], columns="curve", values="layer").to_string())
