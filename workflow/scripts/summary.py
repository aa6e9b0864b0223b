from collections import defaultdict
from pathlib import Path

import pandas as pd

from iclscope.core.atomic import written
from iclscope.core.logs import log_to
from iclscope.report.atlas import headline

log = log_to(snakemake.log[0], threads=snakemake.threads)
# results/metrics/<model>/<dataset>/<family>.parquet: only this job's inputs, never a table left
# over from another configuration
tables = defaultdict(list)
for path in snakemake.input.tables:
    tables[Path(path).parent.parent.name, Path(path).parent.name].append(path)
table = pd.DataFrame([headline(tables[m, d], m, d) for m, d in sorted(tables)])
peaks = pd.concat([pd.read_parquet(p) for p in snakemake.input.peaks], ignore_index=True)
peak_layers = peaks.pivot_table(index=["model", "dataset"], columns="curve", values="layer")
with written(snakemake.output.headline) as tmp:
    table.to_csv(tmp, index=False, float_format="%.4g")
with written(snakemake.output.peaks) as tmp:
    peak_layers.to_csv(tmp, float_format="%.3g")
log.info("headline:\n%s\npeak layers:\n%s", table.to_string(index=False), peak_layers.to_string())
